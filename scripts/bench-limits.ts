/**
 * Measures the shared-state store: rate-limit takes per second against a throw-away local
 * redis-server (sequentially and with many operations in flight from one client) and
 * against the memory store, plus the latency percentiles of the Redis runs. Every answer must
 * be a decision (no error), or the run fails. It must not touch the system's Redis; the
 * server it starts is stopped before it exits.
 *
 * Usage: node scripts/bench-limits.ts [--ops 20000] [--concurrency 50] [--keys 1000]
 */
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { createMemoryStore, createRedisStore, type LimitStore } from '../src/limits/index.ts';
import { startRedis } from '../test/helpers/redis.ts';

const { values } = parseArgs({
    options: {
        ops: { type: 'string', default: '20000' },
        concurrency: { type: 'string', default: '50' },
        keys: { type: 'string', default: '1000' },
    },
});
const OPS = Number(values.ops);
const CONCURRENCY = Number(values.concurrency);
const KEYS = Number(values.keys);
// Two windows per key, roomy enough that most takes are admitted (and so write).
const WINDOWS = [
    { limit: 60, periodMs: 60_000 },
    { limit: 1_000, periodMs: 3_600_000 },
];

interface Run {
    store: string;
    mode: string;
    ops: number;
    opsPerSecond: number;
    p50Ms: number;
    p99Ms: number;
    allowed: number;
}

async function measure(store: LimitStore, name: string, concurrency: number): Promise<Run> {
    const latencies: number[] = [];
    let next = 0;
    let allowed = 0;
    const worker = async (): Promise<void> => {
        while (next < OPS) {
            const i = next++;
            const t = performance.now();
            const r = await store.take(`${name}:${concurrency}:ip:${i % KEYS}`, WINDOWS, 1, Date.now());
            latencies.push(performance.now() - t);
            if (r.allowed) allowed++;
        }
    };
    const start = performance.now();
    await Promise.all(Array.from({ length: concurrency }, worker));
    const seconds = (performance.now() - start) / 1000;
    latencies.sort((a, b) => a - b);
    const pct = (p: number): number => Number(latencies[Math.floor((latencies.length - 1) * p)]!.toFixed(3));
    return {
        store: name,
        mode: concurrency === 1 ? 'sequential' : `concurrency ${concurrency}`,
        ops: OPS,
        opsPerSecond: Math.round(OPS / seconds),
        p50Ms: pct(0.5),
        p99Ms: pct(0.99),
        allowed,
    };
}

const redis = await startRedis();
const remote = createRedisStore({ url: redis.url, commandTimeoutMs: 1_000 });
const local = createMemoryStore();
try {
    await remote.waitUntilReady(5_000);
    await measure(remote, 'warm-up', 10);
    const runs = [
        await measure(remote, 'redis', 1),
        await measure(remote, 'redis', CONCURRENCY),
        await measure(local, 'memory', 1),
        await measure(local, 'memory', CONCURRENCY),
    ];
    console.table(runs);
} finally {
    await remote.close();
    await local.close();
    await redis.stop();
}
