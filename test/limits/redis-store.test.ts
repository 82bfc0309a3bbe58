/**
 * The Redis store against a real redis-server: key layout and TTLs, one limit shared by two
 * instances, exactness under parallel load, the script cache being flushed, and the failure
 * modes an operator meets (server killed, restarted, hung, absent, our own event loop stalled
 * past the deadline), and a call that timed out
 * leaving no effect once its late reply comes. Every server a case
 * starts is stopped by that case; a paused server is always resumed.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { readFileSync } from 'node:fs';
import { Redis } from 'ioredis';
import { parse } from 'yaml';
import { GREYLIST_NEW_PER_ENTRY, GREYLIST_NEW_PER_NETWORK } from '../../src/rules/limits.ts';
import {
    createRedisStore,
    StoreError,
    type RedisLimitStore,
    type StageOp,
    type TakeResult,
} from '../../src/limits/index.ts';
import { createMetrics, type Metrics } from '../../src/metrics.ts';
import { freePort } from '../helpers/smtp-client.ts';
import { startRedis, type RedisInstance } from '../helpers/redis.ts';
import { until } from '../helpers/until.ts';
import { fresh, GREY, T0 } from './contract.ts';

const TIMEOUT = 200;
const MINUTE = [{ limit: 10, periodMs: 60_000 }];

async function counter(m: Metrics['redisErrors']): Promise<number> {
    return (await m.get()).values[0]?.value ?? 0;
}

async function histogramCount(m: Metrics['redisCommandDuration'], command: string): Promise<number> {
    const v = (await m.get()).values.find((x) => x.labels.command === command && x.metricName?.endsWith('_count'));
    return v?.value ?? 0;
}

interface LogLine {
    level: 'warn' | 'info';
    obj: unknown;
    msg: string;
}

function fakeLogger(lines: LogLine[]) {
    return {
        warn: (obj: unknown, msg: string) => lines.push({ level: 'warn', obj, msg }),
        info: (obj: unknown, msg: string) => lines.push({ level: 'info', obj, msg }),
    } as unknown as Parameters<typeof createRedisStore>[0]['logger'];
}

/** Awaits `p` and returns how long it took and how it settled. */
async function timed<T>(p: Promise<T>): Promise<{ ms: number; value?: T; error?: unknown }> {
    const start = performance.now();
    try {
        const value = await p;
        return { ms: performance.now() - start, value };
    } catch (error) {
        return { ms: performance.now() - start, error };
    }
}

describe('redis store: keys, sharing, exactness', () => {
    let redis: RedisInstance;
    let a: RedisLimitStore;
    let b: RedisLimitStore;
    let raw: Redis;
    let metrics: Metrics;
    before(async () => {
        redis = await startRedis();
        metrics = createMetrics('test');
        a = createRedisStore({ url: redis.url, commandTimeoutMs: 1_000, metrics });
        b = createRedisStore({ url: redis.url, commandTimeoutMs: 1_000 });
        raw = new Redis(redis.url, { maxRetriesPerRequest: 0 });
        await Promise.all([a.waitUntilReady(5_000), b.waitUntilReady(5_000)]);
    });
    after(async () => {
        await a?.close();
        await b?.close();
        raw?.disconnect();
        await redis?.stop();
    });

    it('every key carries the version and a hash tag, and has a TTL, after a mixed workload', async () => {
        await raw.flushall();
        const windows = [
            { limit: 10, periodMs: 60_000 },
            { limit: 100, periodMs: 3_600_000 },
        ];
        for (let i = 0; i < 30; i++) await a.take(`ip:192.0.2.${i % 7}`, windows, 1 + (i % 3), T0 + i * 100);
        await a.take('user:alice', windows, 0, T0); // a read writes nothing
        for (let i = 0; i < 6; i++) await a.acquire('conn:192.0.2.1', `h${i}`, 4, 30_000, T0);
        await a.renew('conn:192.0.2.1', 'h1', 60_000, T0 + 1_000);
        await a.release('conn:192.0.2.1', 'h2');
        await a.acquire('conn:192.0.2.2', 'solo', 1, 30_000, T0);
        await a.release('conn:192.0.2.2', 'solo'); // last lease gone: key gone
        const cap = { key: '192.0.2.0/24', window: { limit: 100, periodMs: 3_600_000 } };
        for (let i = 0; i < 3; i++) {
            const triplet = `192.0.2.0/24|s${i}@example.org|r@example.net`;
            await a.greylist(triplet, '192.0.2.0/24', { ...GREY, cap }, T0);
            await a.greylist(triplet, '192.0.2.0/24', GREY, T0 + GREY.delayMs);
            await a.greylistCredit('192.0.2.0/24', GREY.passTtlMs, T0 + GREY.delayMs);
        }
        assert.equal(
            (await a.greylist('192.0.2.0/24|x|y', '192.0.2.0/24', GREY, T0 + GREY.delayMs)).verdict,
            'known-client',
        );

        const keys: string[] = [];
        let cursor = '0';
        do {
            const [next, batch] = await raw.scan(cursor, 'COUNT', 100);
            cursor = next;
            keys.push(...batch);
        } while (cursor !== '0');
        const kinds = new Set(keys.map((k) => k.split(':')[1]));
        assert.deepEqual([...kinds].sort(), ['cc', 'glc', 'gln', 'glt', 'rl']);
        assert.equal(keys.length, 7 * 2 + 1 + 3 + 1 + 1, keys.join('\n'));
        assert.ok(keys.includes('mw:gln:v1:{192.0.2.0/24}:100:3600000'), 'the cap on new records of the network');
        for (const key of keys) {
            assert.match(key, /^mw:(rl|cc|glt|glc|gln):v1:\{[^{}]+\}(:\d+:\d+)?$/);
            if (key.startsWith('mw:rl:')) assert.match(key, /:(10:60000|100:3600000)$/);
            const pttl = await raw.pttl(key);
            assert.ok(pttl > 0, `${key} has PTTL ${pttl}`);
        }
        assert.ok(keys.includes('mw:rl:v1:{ip:192.0.2.3}:10:60000'));
        assert.ok(keys.includes('mw:cc:v1:{conn:192.0.2.1}'));
        assert.equal(await raw.zcard('mw:cc:v1:{conn:192.0.2.1}'), 3);
        // The lease set lives as long as its longest lease (h1, renewed to T0 + 61 000).
        const pttl = await raw.pttl('mw:cc:v1:{conn:192.0.2.1}');
        assert.ok(pttl > 55_000 && pttl <= 60_000, `lease set PTTL ${pttl}`);
    });

    it('honours another prefix', async () => {
        const other = createRedisStore({ url: redis.url, commandTimeoutMs: 1_000, prefix: 'edge1' });
        try {
            await other.waitUntilReady(5_000);
            await other.take('k', MINUTE, 1, T0);
            assert.equal(await raw.exists('edge1:rl:v1:{k}:10:60000'), 1);
        } finally {
            await other.close();
        }
    });

    it('two instances on one Redis enforce one shared limit', async () => {
        const key = fresh('shared');
        let admitted = 0;
        for (let i = 0; i < 30; i++) {
            const r = await (i % 2 ? a : b).take(key, MINUTE, 1, T0 + i);
            if (r.allowed) admitted++;
        }
        assert.equal(admitted, 10);
        // One instance's leases count against the other's.
        const cc = fresh('cc-shared');
        assert.equal((await a.acquire(cc, 'a1', 2, 30_000, T0)).acquired, true);
        assert.equal((await b.acquire(cc, 'b1', 2, 30_000, T0)).acquired, true);
        assert.deepEqual(await a.acquire(cc, 'a2', 2, 30_000, T0), { acquired: false, active: 2 });
        // Greylisting seen by one instance is known to the other.
        const t = fresh('198.51.100.1|a|b');
        assert.equal((await a.greylist(t, 'c', GREY, T0)).verdict, 'new');
        assert.equal((await b.greylist(t, 'c', GREY, T0 + GREY.delayMs)).verdict, 'pass');
    });

    it('20 parallel takes (10 per instance) against a limit of 10: exactly 10 admitted', async () => {
        for (let round = 0; round < 5; round++) {
            const key = fresh('parallel');
            const results = await Promise.all(
                Array.from({ length: 20 }, (_, i) => (i % 2 ? a : b).take(key, MINUTE, 1, T0)),
            );
            assert.equal(results.filter((r) => r.allowed).length, 10);
            const remaining = results.filter((r) => r.allowed).map((r) => r.remaining);
            assert.deepEqual(
                remaining.sort((x, y) => x - y),
                [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            );
        }
    });

    it('50 parallel acquires against max 5: exactly 5 leases', async () => {
        const key = fresh('cc-parallel');
        const results = await Promise.all(
            Array.from({ length: 50 }, (_, i) => (i % 2 ? a : b).acquire(key, `h${i}`, 5, 30_000, T0)),
        );
        assert.equal(results.filter((r) => r.acquired).length, 5);
        assert.ok(results.every((r) => r.active === 5 || r.acquired));
    });

    it('40 new triplets of one network in parallel (20 per instance) against a cap of 10: exactly 10 recorded', async () => {
        const net = fresh('2001:db8:7::/48');
        const cap = { key: net, window: { limit: 10, periodMs: 3_600_000 } };
        const results = await Promise.all(
            Array.from({ length: 40 }, (_, i) => {
                const client = `grey|2001:db8:7:${i}::/64`;
                const op = { op: 'greylist' as const, triplet: `${client}|s@x|r${i}@y-${net}`, client };
                return (i % 2 ? a : b).stage([{ ...op, opts: { ...GREY, cap } }], T0);
            }),
        );
        const verdicts = results.map(([r]) => (r!.ok && 'verdict' in r!.value ? r!.value.verdict : 'failed'));
        assert.equal(verdicts.filter((v) => v === 'new').length, 10, verdicts.join(' '));
        assert.equal(verdicts.filter((v) => v === 'capped').length, 30, verdicts.join(' '));
        const records = await raw.keys(`mw:glt:v1:{*y-${net}}`);
        assert.equal(records.length, 10, records.join('\n'));
    });

    it('keeps working after SCRIPT FLUSH (EVALSHA falls back to EVAL)', async () => {
        const key = fresh('flush');
        assert.equal((await a.take(key, MINUTE, 1, T0)).remaining, 9);
        await raw.script('FLUSH');
        assert.equal((await a.take(key, MINUTE, 1, T0)).remaining, 8);
        await raw.script('FLUSH');
        assert.equal((await a.acquire(key, 'h', 1, 1_000, T0)).acquired, true);
        await raw.script('FLUSH');
        assert.equal((await a.greylist(`${key}|x`, key, GREY, T0)).verdict, 'new');
    });

    it('times every operation in mailwarden_redis_command_duration_seconds', async () => {
        await a.take(fresh('m'), MINUTE, 1, T0);
        assert.ok((await histogramCount(metrics.redisCommandDuration, 'take')) > 0);
        assert.ok((await histogramCount(metrics.redisCommandDuration, 'greylist')) > 0);
        assert.equal(await counter(metrics.redisErrors), 0);
    });
});

describe('redis store: failures', () => {
    it('at maxmemory with the policy docker-compose.yml ships (noeviction): a flood of new triplets from 40,000 networks evicts no used-up counter and no lease, and the limit still refuses', async () => {
        const compose = parse(readFileSync(new URL('../../docker-compose.yml', import.meta.url), 'utf8')) as {
            services: { redis: { command: string[] } };
        };
        const command = compose.services.redis.command;
        const setting = (name: string): string | undefined => {
            const at = command.indexOf(`--${name}`);
            return at < 0 ? undefined : command[at + 1];
        };
        assert.ok(setting('maxmemory'), 'docker-compose.yml gives Redis a memory limit');
        // limit counters and leases must never be evicted: one evicted when used up is a fresh burst
        assert.equal(setting('maxmemory-policy'), 'noeviction');
        // The shipped policy under a memory limit small enough for a test, yet above what the caps
        // let greylisting hold (10,000 records an hour of about 254 bytes, 2.5 MB); 40,000 records
        // uncapped would not fit.
        const redis = await startRedis({ settings: { maxmemory: '8mb', 'maxmemory-policy': 'noeviction' } });
        const store = createRedisStore({ url: redis.url, commandTimeoutMs: 2_000 });
        const raw = new Redis(redis.url, { maxRetriesPerRequest: 0 });
        try {
            await store.waitUntilReady(5_000);
            const limit = fresh('sender');
            const lease = fresh('conns');
            const window = [{ limit: 5, periodMs: 86_400_000 }];
            const admitted: boolean[] = [];
            for (let i = 0; i < 6; i++) admitted.push((await store.take(limit, window, 1, T0)).allowed);
            assert.deepEqual(admitted, [true, true, true, true, true, false]);
            for (let i = 0; i < 3; i++) assert.ok((await store.acquire(lease, `h${i}`, 3, 600_000, T0)).acquired);
            // The counter and the leases are left idle while the flood runs: each triplet from a
            // /24 of its own (every one under its network's cap), as a botnet writes them.
            const all = { key: fresh('grey|all'), window: GREYLIST_NEW_PER_ENTRY };
            const pad = 'a'.repeat(60);
            const verdicts = new Map<string, number>();
            for (let batch = 0; batch < 40; batch++) {
                const results = await Promise.all(
                    Array.from({ length: 1_000 }, (_, j) => {
                        const i = batch * 1_000 + j;
                        const client = `grey|10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;
                        const cap = { key: client, window: GREYLIST_NEW_PER_NETWORK };
                        const triplet = `${client}|${pad}${i}@spam.example|${pad}${i}@example.test`;
                        return store.greylist(triplet, client, { ...GREY, cap, capAll: all }, T0 + batch * 1_000);
                    }),
                );
                for (const r of results) verdicts.set(r.verdict, (verdicts.get(r.verdict) ?? 0) + 1);
            }
            // no write refused (a full Redis would answer OOM), nothing evicted
            // no write refused (a full Redis would answer OOM): 10,000 at once, then one every 360 ms of
            // the flood's 39 s; the rest let through unrecorded
            assert.deepEqual(Object.fromEntries(verdicts), { new: 10_108, capped_global: 29_892 });
            assert.equal(Number(/evicted_keys:(\d+)/.exec(await raw.info('stats'))![1]), 0);
            // the used-up counter is still used up, the leases still held
            assert.equal((await store.take(limit, window, 1, T0 + 40_000)).allowed, false);
            assert.equal((await store.acquire(lease, 'h3', 3, 600_000, T0 + 40_000)).acquired, false);
            assert.equal(await raw.zcard(`mw:cc:v1:{${lease}}`), 3);
        } finally {
            raw.disconnect();
            await store.close();
            await redis.stop();
        }
    });

    it('Redis killed: fails within the timeout, counts and logs once, recovers on restart without a new store', async () => {
        let redis = await startRedis();
        const metrics = createMetrics('test');
        const lines: LogLine[] = [];
        const store = createRedisStore({
            url: redis.url,
            commandTimeoutMs: TIMEOUT,
            metrics,
            logger: fakeLogger(lines),
        });
        try {
            await store.waitUntilReady(5_000);
            const key = fresh('kill');
            assert.equal((await store.take(key, MINUTE, 1, T0)).allowed, true);

            // Operations in flight when the server dies all settle, quickly.
            const inFlight = Array.from({ length: 20 }, () => timed(store.take(key, MINUTE, 1, T0)));
            process.kill(redis.pid, 'SIGKILL');
            for (const r of await Promise.all(inFlight)) {
                assert.ok(r.ms < 1_000, `settled after ${r.ms} ms`);
                if (r.error) assert.ok(r.error instanceof StoreError, (r.error as Error).message);
            }
            await redis.stop(); // reaps the killed process, removes its folder

            const failed = await timed(store.take(key, MINUTE, 1, T0));
            assert.ok(failed.error instanceof StoreError, String(failed.error));
            assert.equal(failed.error.kind, 'unavailable');
            assert.ok(failed.ms < 1_000, `rejected after ${failed.ms} ms`);
            const failures = await timed(
                Promise.allSettled(Array.from({ length: 10 }, () => store.acquire(key, 'h', 1, 1_000, T0))),
            );
            assert.ok(failures.ms < 1_000);
            assert.ok((await counter(metrics.redisErrors)) >= 11);
            assert.equal(await store.ping(), false);
            assert.equal(lines.filter((l) => l.level === 'warn').length, 1, JSON.stringify(lines));

            // Same port, new process: the store reconnects by itself.
            redis = await startRedis({ port: redis.port });
            const deadline = Date.now() + 10_000;
            let recovered = false;
            while (!recovered && Date.now() < deadline) {
                try {
                    recovered = (await store.take(fresh('back'), MINUTE, 1, T0)).allowed;
                } catch (error) {
                    assert.ok(error instanceof StoreError);
                    await sleep(50);
                }
            }
            assert.ok(recovered, 'no recovery within 10 s');
            assert.equal(await store.ping(), true);
            assert.ok(lines.some((l) => l.level === 'info' && /ready again/.test(l.msg)));
        } finally {
            await store.close();
            await redis.stop();
        }
    });

    it("Redis hung (SIGSTOP): StoreError 'timeout' within the command timeout; fine again after SIGCONT", async () => {
        const redis = await startRedis();
        const metrics = createMetrics('test');
        const store = createRedisStore({ url: redis.url, commandTimeoutMs: TIMEOUT, metrics });
        try {
            await store.waitUntilReady(5_000);
            const key = fresh('hang');
            await store.take(key, MINUTE, 1, T0);
            process.kill(redis.pid, 'SIGSTOP');
            try {
                const results = await Promise.all([
                    timed(store.take(key, MINUTE, 1, T0)),
                    timed(store.greylist(`${key}|g`, key, GREY, T0)),
                    timed(store.acquire(key, 'h', 1, 1_000, T0)),
                ]);
                for (const r of results) {
                    assert.ok(r.error instanceof StoreError, String(r.error));
                    assert.equal(r.error.kind, 'timeout');
                    assert.ok(r.ms >= TIMEOUT - 5 && r.ms < 1_000, `rejected after ${r.ms} ms`);
                }
                assert.equal(await counter(metrics.redisErrors), 3);
            } finally {
                process.kill(redis.pid, 'SIGCONT');
            }
            // The late take is given back once Redis answers it: only the first take counts.
            await until(
                'the late take is refunded',
                async () => (await store.take(key, MINUTE, 0, T0)).remaining === 9,
            );
            assert.deepEqual(await store.take(key, MINUTE, 1, T0), { allowed: true, retryAfterMs: 0, remaining: 8 });
        } finally {
            await store.close();
            await redis.stop();
        }
    });

    it('our own event loop blocked past the deadline is no Redis timeout: a reply that came is read; a Redis that does not answer still times out', async () => {
        const redis = await startRedis({ settings: { 'enable-debug-command': 'yes' } });
        const metrics = createMetrics('test');
        const store = createRedisStore({ url: redis.url, commandTimeoutMs: TIMEOUT, metrics });
        const admin = new Redis(redis.url);
        /** Keeps this thread busy (as another session's work would) for three command timeouts. */
        const block = (): void => {
            const end = performance.now() + 3 * TIMEOUT;
            while (performance.now() < end);
        };
        try {
            await store.waitUntilReady(5_000);
            const ops: StageOp[] = [
                { op: 'take', key: fresh('stall'), windows: [{ limit: 1, periodMs: 3_600_000 }], cost: 1 },
            ];
            assert.equal(((await store.stage(ops, T0))[0] as { value: TakeResult }).value.allowed, true);

            // The call is written at once and Redis answers it while this thread is busy.
            const asking = store.stage(ops, T0);
            block();
            const answer = (await asking)[0]!;
            assert.ok(
                answer.ok,
                `a reply waiting in the socket was taken for a timeout: ${String(!answer.ok && answer.error)}`,
            );
            assert.equal((answer.value as TakeResult).allowed, false, 'the limit is enforced');
            assert.equal(await counter(metrics.redisErrors), 0);

            // Redis asleep as well: no reply is there when the deadline is called, so it times out.
            const sleeping = admin.debug('SLEEP', '2');
            await until('Redis is asleep', async () => !(await store.ping()));
            const unanswered = store.stage(ops, T0);
            block();
            const late = (await unanswered)[0]!;
            assert.ok(!late.ok && late.error instanceof StoreError, 'a Redis that does not answer times out');
            assert.equal(late.error.kind, 'timeout');
            await sleeping;
        } finally {
            admin.disconnect();
            await store.close();
            await redis.stop();
        }
    });

    it('Redis hung past the timeout: what the late calls did is undone (charges refunded, granted leases released), renewals kept', async () => {
        const redis = await startRedis();
        const metrics = createMetrics('test');
        const debug: unknown[] = [];
        const store = createRedisStore({
            url: redis.url,
            commandTimeoutMs: TIMEOUT,
            metrics,
            logger: { warn: () => undefined, info: () => undefined, debug: (obj: unknown) => debug.push(obj) },
        });
        const raw = new Redis(redis.url);
        try {
            await store.waitUntilReady(5_000);
            const rate = fresh('late-take');
            const staged = fresh('late-stage');
            const leases = fresh('late-lease');
            const stagedLeases = fresh('late-stage-lease');
            const counters = [{ key: fresh('late-charge'), window: MINUTE[0]! }];
            assert.equal((await store.take(rate, MINUTE, 1, T0)).allowed, true);
            assert.equal((await store.acquire(leases, 'held', 3, 60_000, T0)).acquired, true);

            process.kill(redis.pid, 'SIGSTOP');
            let results;
            try {
                results = await Promise.all([
                    timed(store.take(rate, MINUTE, 2, T0)),
                    timed(store.acquire(leases, 'late', 3, 60_000, T0)),
                    timed(store.acquire(leases, 'held', 3, 60_000, T0 + 1)),
                    timed(store.charge('late', counters, 3, T0)),
                    timed(
                        store.stage(
                            [
                                { op: 'take', key: staged, windows: MINUTE, cost: 1 },
                                { op: 'acquire', key: stagedLeases, holder: 'staged', max: 1, ttlMs: 60_000 },
                            ],
                            T0,
                        ),
                    ),
                ]);
            } finally {
                process.kill(redis.pid, 'SIGCONT');
            }
            for (const r of results.slice(0, 4)) {
                assert.ok(r.error instanceof StoreError && r.error.kind === 'timeout', String(r.error));
            }
            const stage = results[4].value!;
            assert.ok(stage.every((a) => !a.ok && a.error instanceof StoreError && a.error.kind === 'timeout'));

            // Redis runs the calls once it resumes; their effects are then taken back.
            await until('the late calls are undone', async () => {
                const holders = await raw.zrange(`mw:cc:v1:{${leases}}`, '0', '-1');
                const staging = await raw.exists(`mw:rl:v1:{${staged}}:10:60000`, `mw:cc:v1:{${stagedLeases}}`);
                const charged = await raw.exists(`mw:gc:v1:{late}:${counters[0]!.key}:10:60000`);
                const left = (await store.take(rate, MINUTE, 0, T0)).remaining;
                return holders.join() === 'held' && staging === 0 && charged === 0 && left === 9;
            });
            // The renewal by the holder that had the lease is not undone.
            assert.equal(Number(await raw.zscore(`mw:cc:v1:{${leases}}`, 'held')), T0 + 1 + 60_000);
            const late = async (result: string) =>
                (await metrics.redisLateReplies.get()).values.find((v) => v.labels.result === result)?.value ?? 0;
            assert.equal(await late('undone'), 4);
            assert.equal(await late('unchanged'), 1);
            assert.equal(await late('failed'), 0);
            assert.equal(debug.length, 5);
        } finally {
            raw.disconnect();
            await store.close();
            await redis.stop();
        }
    });

    it('Redis hung while calls keep coming: past 1,000 waiting for a late answer the connection is dropped, they end as lost, and it recovers', async () => {
        const redis = await startRedis();
        const metrics = createMetrics('test');
        const lines: LogLine[] = [];
        const store = createRedisStore({ url: redis.url, commandTimeoutMs: 50, metrics, logger: fakeLogger(lines) });
        const late = async (result: string) =>
            (await metrics.redisLateReplies.get()).values.find((v) => v.labels.result === result)?.value ?? 0;
        try {
            await store.waitUntilReady(5_000);
            const key = fresh('stuck');
            process.kill(redis.pid, 'SIGSTOP');
            try {
                const results = await Promise.all(
                    Array.from({ length: 1_200 }, (_, i) => timed(store.take(`${key}-${i}`, MINUTE, 1, T0))),
                );
                assert.ok(results.every((r) => r.error instanceof StoreError));
                await until('the waiting calls end', async () => (await late('lost')) > 1_000, 5_000, 20);
                const dropped = lines.filter((l) => l.msg.startsWith('Redis answers nothing'));
                assert.equal(dropped.length, 1, JSON.stringify(lines.map((l) => l.msg)));
                assert.ok((dropped[0]!.obj as { waiting: number }).waiting > 1_000);
            } finally {
                process.kill(redis.pid, 'SIGCONT');
            }
            await until('the store answers again', async () => {
                try {
                    return (await store.take(key, MINUTE, 1, T0)).allowed;
                } catch {
                    return false;
                }
            });
        } finally {
            await store.close();
            await redis.stop();
        }
    });

    it('no Redis at start: operations fail fast as unavailable, waitUntilReady gives up, close works', async () => {
        const port = await freePort();
        const store = createRedisStore({ url: `redis://127.0.0.1:${port}`, commandTimeoutMs: TIMEOUT });
        try {
            const r = await timed(store.take('k', MINUTE, 1, T0));
            assert.ok(r.error instanceof StoreError && r.error.kind === 'unavailable', String(r.error));
            assert.ok(r.ms < 100, `${r.ms} ms`);
            const w = await timed(store.waitUntilReady(300));
            assert.ok(w.error instanceof StoreError && w.error.kind === 'unavailable');
            assert.equal(await store.ping(), false);
        } finally {
            await store.close();
        }
        await assert.rejects(store.take('k', MINUTE, 1, T0), StoreError);
    });

    it('refuses an ambiguous or empty connection setting', () => {
        assert.throws(() => createRedisStore({ commandTimeoutMs: 100 }), TypeError);
        assert.throws(() => createRedisStore({ url: 'redis://x', cluster: ['x:1'], commandTimeoutMs: 100 }), TypeError);
        assert.throws(
            () => createRedisStore({ sentinels: [{ host: 'x', port: 1 }], commandTimeoutMs: 100 }),
            TypeError,
        );
    });
});
