/**
 * The shared-state layer of rate limits, concurrency limits and greylisting: the store
 * contract and its two implementations (Redis, memory). Callers import from here. Must not
 * decide policy: which keys, which windows and what to do on a StoreError belong to the rules.
 */
export * from './types.ts';
export { keyNames, KEY_VERSION, type KeyNames } from './keys.ts';
export { createMemoryStore, type MemoryLimitStore, type MemoryStoreOptions } from './memory-store.ts';
export { createRedisStore, type RedisLimitStore, type RedisStoreOptions } from './redis-store.ts';
