/**
 * The shared-state layer of rate limits, concurrency limits and greylisting: the store
 * contract and its two implementations (Redis, memory), the store a config asks for, and the
 * `ratelimit` check that applies the limits rule files declare. Callers import from here.
 * The stores must not decide policy: keys, windows and onError belong to the rules and the check.
 */
export * from './types.ts';
export { keyNames, KEY_VERSION, type KeyNames } from './keys.ts';
export { createMemoryStore, type MemoryLimitStore, type MemoryStoreOptions } from './memory-store.ts';
export { createRedisStore, type RedisLimitStore, type RedisStoreOptions } from './redis-store.ts';
export { createConfiguredStore, describeRedis, waitForStore } from './configured.ts';
export { createRateLimiter, type LimitDeclarations, type RateLimitCheckOptions } from './check.ts';
export { greylistSender, greylistTriplet, ipNetwork, limitKeys } from './limit-keys.ts';
