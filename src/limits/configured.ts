/**
 * The limit store a running proxy uses: Redis in the form the config's `redis:` section
 * names (one server, Cluster or Sentinel), or the in-memory store when there is none. Also
 * the bounded wait for Redis at start. It must not fail the start when Redis is away (limits
 * then apply their onError until it answers) and must never log a password or a URL.
 */
import type { RedisConfig } from '../config/types.ts';
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics.ts';
import { createMemoryStore } from './memory-store.ts';
import { createRedisStore, type RedisLimitStore } from './redis-store.ts';
import type { LimitStore } from './types.ts';

export function createConfiguredStore(
    redis: RedisConfig | null,
    deps: {
        metrics: Pick<Metrics, 'redisErrors' | 'redisCommandDuration' | 'redisLateReplies'>;
        logger: Pick<Logger, 'warn' | 'info'> & Partial<Pick<Logger, 'debug'>>;
    },
): LimitStore {
    if (redis === null) return createMemoryStore();
    return createRedisStore({
        ...(redis.url !== undefined ? { url: redis.url } : {}),
        ...(redis.cluster !== undefined ? { cluster: redis.cluster } : {}),
        ...(redis.sentinels !== undefined ? { sentinels: redis.sentinels, sentinelName: redis.name } : {}),
        username: redis.username,
        password: redis.password,
        commandTimeoutMs: redis.commandTimeoutMs,
        connectTimeoutMs: redis.connectTimeoutMs,
        metrics: deps.metrics,
        logger: deps.logger,
    });
}

/** The form of the Redis set-up, for logs (no host names, no secrets). */
export function describeRedis(redis: RedisConfig): string {
    if (redis.cluster !== undefined) return `Redis Cluster (${redis.cluster.length} seed nodes)`;
    if (redis.sentinels !== undefined) return `Redis through Sentinel (${redis.sentinels.length} sentinels)`;
    return 'Redis (one server)';
}

/**
 * Waits up to `timeoutMs` for a Redis store to be connected, so the first decisions after a
 * start are shared ones; logs and goes on when it is not (the store reconnects by itself).
 */
export async function waitForStore(
    store: LimitStore,
    redis: RedisConfig | null,
    timeoutMs: number,
    log: Pick<Logger, 'warn' | 'info'>,
): Promise<void> {
    if (redis === null || store.kind !== 'redis' || !('waitUntilReady' in store)) return;
    try {
        await (store as RedisLimitStore).waitUntilReady(timeoutMs);
        log.info({ store: describeRedis(redis) }, 'limit store connected');
    } catch {
        log.warn(
            { store: describeRedis(redis), waitedMs: timeoutMs },
            'limit store not reachable yet; limits apply their onError setting until it answers',
        );
    }
}
