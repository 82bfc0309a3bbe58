/**
 * Runs the one store contract against the memory store and against a real redis-server,
 * then feeds both stores the same long random sequence of operations and requires identical
 * answers (the Lua scripts and the TypeScript must agree everywhere, not only on the cases
 * written down). Must not sleep: time is the nowMs argument.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
    createMemoryStore,
    createRedisStore,
    type GreylistOptions,
    type LimitStore,
    type StageOp,
    type Window,
} from '../../src/limits/index.ts';
import { startRedis, type RedisInstance } from '../helpers/redis.ts';
import { storeContract, T0 } from './contract.ts';

describe('memory store: contract', () => {
    const store = createMemoryStore();
    after(() => store.close());
    storeContract(() => store);
});

describe('redis store: contract', () => {
    let redis: RedisInstance;
    let store: LimitStore;
    before(async () => {
        redis = await startRedis();
        const s = createRedisStore({ url: redis.url, commandTimeoutMs: 1_000 });
        store = s;
        await s.waitUntilReady(5_000);
    });
    after(async () => {
        await store?.close();
        await redis?.stop();
    });
    storeContract(() => store);
});

/** Deterministic pseudo-random numbers (mulberry32), so a failure can be replayed. */
function prng(seed: number): () => number {
    let a = seed >>> 0;
    return () => {
        a = (a + 0x6d2b79f5) >>> 0;
        let t = a;
        t = Math.imul(t ^ (t >>> 15), t | 1);
        t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
        return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
    };
}

describe('memory and redis stores agree on a random workload', () => {
    let redis: RedisInstance;
    let remote: LimitStore;
    const local = createMemoryStore();
    before(async () => {
        redis = await startRedis();
        const s = createRedisStore({ url: redis.url, commandTimeoutMs: 1_000, prefix: 'diff' });
        remote = s;
        await s.waitUntilReady(5_000);
    });
    after(async () => {
        await remote?.close();
        await local.close();
        await redis?.stop();
    });

    it('gives identical answers for 3000 mixed operations', async () => {
        // Every duration is at least a minute of the caller's clock, so Redis' own (real-time)
        // key expiry can never act before the stored times say so during this short test.
        const windowSets: Window[][] = [
            [{ limit: 5, periodMs: 600_000 }],
            [{ limit: 7, periodMs: 1_000_000 }],
            [
                { limit: 3, periodMs: 300_000 },
                { limit: 11, periodMs: 3_600_000 },
            ],
            [
                { limit: 13, periodMs: 1_300_001 },
                { limit: 2, periodMs: 120_000 },
                { limit: 50, periodMs: 86_400_000 },
            ],
        ];
        const plain: GreylistOptions = {
            delayMs: 300_000,
            retryWindowMs: 1_800_000,
            passTtlMs: 3_600_000,
            autoAllowAfter: 2,
        };
        // half the greylisting capped per network: 3 new records per 40 minutes for all its clients
        const capped = { ...plain, cap: { key: 'net', window: { limit: 3, periodMs: 2_400_000 } } };
        // and some provisional (monitor mode), half of those kept as a delivered message's are
        const provisional = { ...plain, provisionalMs: plain.delayMs };
        const rnd = prng(20_260_101);
        const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
        let now = T0;
        const seen: Record<string, number> = {};
        for (let i = 0; i < 3_000; i++) {
            now += pick([0, 0, 0, 1, 1_000, 30_000, 60_000, 120_000, 400_000, 1_000_000]);
            const r = rnd();
            let op: string;
            let a: unknown;
            let b: unknown;
            if (r < 0.15) {
                const group = `g${Math.floor(rnd() * 2)}`;
                const counters = [
                    { key: `ip${Math.floor(rnd() * 3)}`, window: { limit: 4, periodMs: 3_600_000 } },
                    { key: `login${Math.floor(rnd() * 3)}`, window: { limit: 6, periodMs: 86_400_000 } },
                ].slice(0, pick([1, 2]));
                const cost = pick([-1, 0, 1, 1, 2, 3]);
                op = `charge ${group} ${counters.map((c) => c.key).join(',')} cost ${cost}`;
                [a, b] = await Promise.all([local, remote].map((s) => s.charge(group, counters, cost, now)));
                const all = (a as { allowed: boolean }).allowed;
                seen[`charge:${all}`] = (seen[`charge:${all}`] ?? 0) + 1;
            } else if (r < 0.5) {
                const set = Math.floor(rnd() * windowSets.length);
                const key = `k${Math.floor(rnd() * 3)}:${set}`;
                const cost = pick([0, 1, 1, 1, 2, 3, 6]);
                op = `take ${key} cost ${cost}`;
                [a, b] = await Promise.all([local, remote].map((s) => s.take(key, windowSets[set]!, cost, now)));
            } else if (r < 0.75) {
                const key = `c${Math.floor(rnd() * 2)}`;
                const holder = `h${Math.floor(rnd() * 5)}`;
                const what = pick(['acquire', 'acquire', 'renew', 'release'] as const);
                op = `${what} ${key} ${holder}`;
                [a, b] = await Promise.all(
                    [local, remote].map((s) =>
                        what === 'acquire'
                            ? s.acquire(key, holder, 3, 90_000, now)
                            : what === 'renew'
                              ? s.renew(key, holder, 90_000, now)
                              : s.release(key, holder),
                    ),
                );
            } else if (r < 0.85) {
                // A stage batch: a few takes and acquires (some gated), then perhaps greylisting.
                const ops: StageOp[] = [];
                for (let n = pick([1, 2, 3]); n > 0; n--) {
                    const gate = pick([undefined, { onRefusal: true, onFailure: true }]);
                    if (rnd() < 0.6) {
                        const set = Math.floor(rnd() * windowSets.length);
                        const key = `k${Math.floor(rnd() * 3)}:${set}`;
                        ops.push({ op: 'take', key, windows: windowSets[set]!, cost: pick([0, 1, 2, 6]), gate });
                    } else {
                        const key = `c${Math.floor(rnd() * 2)}`;
                        ops.push({
                            op: 'acquire',
                            key,
                            holder: `h${Math.floor(rnd() * 5)}`,
                            max: 3,
                            ttlMs: 90_000,
                            gate,
                        });
                    }
                }
                if (rnd() < 0.5) {
                    const client = `ip${Math.floor(rnd() * 3)}`;
                    const triplet = `${client}|s${Math.floor(rnd() * 3)}|r${Math.floor(rnd() * 2)}`;
                    ops.push({ op: 'greylist', triplet, client, opts: pick([plain, capped, provisional]) });
                }
                op = `stage ${JSON.stringify(ops.map((o) => ('key' in o ? `${o.op} ${o.key}` : o.op)))}`;
                [a, b] = await Promise.all([local, remote].map((s) => s.stage(ops, now)));
                for (const x of a as { ok: boolean; value?: { verdict?: string } }[]) {
                    const v = x.value?.verdict;
                    if (v) seen[`stage:${v}`] = (seen[`stage:${v}`] ?? 0) + 1;
                }
            } else {
                const client = `ip${Math.floor(rnd() * 3)}`;
                const triplet = `${client}|s${Math.floor(rnd() * 3)}|r${Math.floor(rnd() * 2)}`;
                const grey = pick([plain, plain, capped, provisional]);
                op = `greylist ${triplet}${grey.cap ? ' capped' : ''}${grey.provisionalMs ? ' provisional' : ''}`;
                [a, b] = await Promise.all([local, remote].map((s) => s.greylist(triplet, client, grey, now)));
                if ((a as { verdict: string }).verdict === 'new' && grey.provisionalMs && i % 2 === 0) {
                    const kept = [{ triplet, firstSeenMs: now, retryWindowMs: grey.retryWindowMs }];
                    const later = now + [0, 1_000, 400_000][i % 3]!;
                    await Promise.all([local, remote].map((s) => s.greylistKeep(kept, later)));
                    seen.kept = (seen.kept ?? 0) + 1;
                }
                // the caller credits the pass that ended the delay (the session does at DATA)
                if ((a as { passedNow?: true }).passedNow)
                    await Promise.all([local, remote].map((s) => s.greylistCredit(client, grey.passTtlMs, now)));
            }
            const verdict = (a as { verdict?: string } | undefined)?.verdict;
            if (verdict) seen[verdict] = (seen[verdict] ?? 0) + 1;
            const allowed = (a as { allowed?: boolean } | undefined)?.allowed;
            if (allowed !== undefined) seen[`take:${allowed}`] = (seen[`take:${allowed}`] ?? 0) + 1;
            assert.deepEqual(b, a, `operation ${i} at ${now - T0} ms: ${op}`);
        }
        // The workload reached every branch.
        for (const k of [
            'new',
            'early',
            'pass',
            'known-client',
            'capped',
            'kept',
            'take:true',
            'take:false',
            'charge:true',
            'charge:false',
            'stage:new',
            'stage:pass',
            'stage:skipped',
        ])
            assert.ok((seen[k] ?? 0) > 0, `never saw ${k}: ${JSON.stringify(seen)}`);
    });
});
