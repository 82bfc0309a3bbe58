/**
 * One table of GCRA cases run against the TypeScript arithmetic (gcra.ts) and against the
 * Lua copy (the `take` operation of limits.lua) on a real redis-server, so that the two
 * implementations cannot drift apart; the same for the counters step (gcraCounters and the
 * `charge` operation: several counters charged together, each with its own verdict, refunds
 * included). Also pins the stored format
 * and the TTL the scripts set. Must not sleep.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { decodeState, divmod, encodeState, gcra, gcraCounters, type GcraState } from '../../src/limits/gcra.ts';
import type { Window } from '../../src/limits/index.ts';
import { startRedis, type RedisInstance } from '../helpers/redis.ts';
import { T0 } from './contract.ts';

const LUA = readFileSync(new URL('../../src/limits/limits.lua', import.meta.url), 'utf8');
const DAY = 86_400_000;

interface Case {
    readonly name: string;
    readonly windows: readonly Window[];
    /** at: ms after T0; expect: [allowed, retryAfterMs, remaining]. */
    readonly steps: readonly { at: number; cost: number; expect: [boolean, number, number] }[];
}

const repeat = (n: number, step: Case['steps'][number]): Case['steps'] => Array.from({ length: n }, () => step);

const CASES: readonly Case[] = [
    {
        name: 'limit 1',
        windows: [{ limit: 1, periodMs: 1_000 }],
        steps: [
            { at: 0, cost: 1, expect: [true, 0, 0] },
            { at: 0, cost: 1, expect: [false, 1_000, 0] },
            { at: 999, cost: 1, expect: [false, 1, 0] },
            { at: 1_000, cost: 1, expect: [true, 0, 0] },
        ],
    },
    {
        name: 'burst of 3 per 3 s, then one per second',
        windows: [{ limit: 3, periodMs: 3_000 }],
        steps: [
            ...repeat(3, { at: 0, cost: 1, expect: [true, 0, -1] }),
            { at: 0, cost: 1, expect: [false, 1_000, 0] },
            { at: 1_000, cost: 1, expect: [true, 0, 0] },
            { at: 1_500, cost: 1, expect: [false, 500, 0] },
            { at: 2_000, cost: 1, expect: [true, 0, 0] },
            { at: 10_000, cost: 0, expect: [true, 0, 3] },
        ],
    },
    {
        // a fractional emission interval (1/3 ms), with a period long enough that Redis's own
        // expiry of the key (wall clock) cannot strike between two steps of the test
        name: 'emission interval of a third of a millisecond',
        windows: [{ limit: 3_000, periodMs: 1_000 }],
        steps: [
            { at: 0, cost: 1_000, expect: [true, 0, 2_000] },
            { at: 0, cost: 1_000, expect: [true, 0, 1_000] },
            { at: 0, cost: 1_000, expect: [true, 0, 0] },
            { at: 0, cost: 1_000, expect: [false, 334, 0] },
            { at: 1_000, cost: 3_000, expect: [true, 0, 0] },
        ],
    },
    {
        name: 'seven per minute (T = 8571.43 ms)',
        windows: [{ limit: 7, periodMs: 60_000 }],
        steps: [
            ...repeat(7, { at: 0, cost: 1, expect: [true, 0, -1] }),
            { at: 0, cost: 1, expect: [false, 8_572, 0] },
            { at: 8_571, cost: 1, expect: [false, 1, 0] },
            { at: 8_572, cost: 1, expect: [true, 0, 0] },
            { at: 17_143, cost: 1, expect: [true, 0, 0] },
            { at: 17_143, cost: 1, expect: [false, 8_572, 0] },
        ],
    },
    {
        name: 'large numbers: 100 000 per 360 days',
        windows: [{ limit: 100_000, periodMs: 360 * DAY }],
        steps: [
            { at: 0, cost: 99_999, expect: [true, 0, 1] },
            { at: 0, cost: 2, expect: [false, 311_040, 1] },
            { at: 311_039, cost: 2, expect: [false, 1, 1] },
            { at: 311_040, cost: 2, expect: [true, 0, 0] },
        ],
    },
    {
        name: 'three windows, the middle one refuses',
        windows: [
            { limit: 10, periodMs: 10_000 },
            { limit: 2, periodMs: 60_000 },
            { limit: 100, periodMs: DAY },
        ],
        steps: [
            { at: 0, cost: 1, expect: [true, 0, 1] },
            { at: 0, cost: 1, expect: [true, 0, 0] },
            { at: 0, cost: 1, expect: [false, 30_000, 0] },
            { at: 30_000, cost: 2, expect: [false, 30_000, 1] },
            { at: 30_000, cost: 1, expect: [true, 0, 0] },
        ],
    },
    {
        name: 'cost above the limit never fits',
        windows: [{ limit: 2, periodMs: 1_000 }],
        steps: [
            { at: 0, cost: 3, expect: [false, 500, 2] },
            { at: 5_000, cost: 3, expect: [false, 500, 2] },
            { at: 5_000, cost: 2, expect: [true, 0, 0] },
        ],
    },
];

interface CountersCase {
    readonly name: string;
    readonly windows: readonly Window[];
    /** at: ms after T0; expect: [allowed, then per counter [allowed, retryAfterMs, remaining]]. */
    readonly steps: readonly { at: number; cost: number; expect: [boolean, ...[boolean, number, number][]] }[];
}

const COUNTER_CASES: readonly CountersCase[] = [
    {
        name: 'two counters: the second refuses, nothing is charged, each reports its own verdict',
        windows: [
            { limit: 3, periodMs: 900_000 },
            { limit: 2, periodMs: 3_600_000 },
        ],
        steps: [
            { at: 0, cost: 1, expect: [true, [true, 0, 2], [true, 0, 1]] },
            { at: 0, cost: 1, expect: [true, [true, 0, 1], [true, 0, 0]] },
            { at: 0, cost: 1, expect: [false, [true, 0, 1], [false, 1_800_000, 0]] },
            { at: 0, cost: 0, expect: [true, [true, 0, 1], [true, 0, 0]] },
            // a refund gives one unit back to each counter
            { at: 1_000, cost: -1, expect: [true, [true, 0, 2], [true, 0, 1]] },
            { at: 1_000, cost: 1, expect: [true, [true, 0, 1], [true, 0, 0]] },
        ],
    },
    {
        name: 'a refund never fills a bucket beyond its limit',
        windows: [{ limit: 2, periodMs: 60_000 }],
        steps: [
            { at: 0, cost: -1, expect: [true, [true, 0, 2]] },
            { at: 0, cost: 1, expect: [true, [true, 0, 1]] },
            { at: 45_000, cost: -1, expect: [true, [true, 0, 2]] },
            { at: 45_000, cost: 2, expect: [true, [true, 0, 0]] },
            { at: 45_000, cost: 1, expect: [false, [false, 30_000, 0]] },
        ],
    },
    {
        name: 'a fractional emission interval, charged and refunded exactly',
        windows: [
            { limit: 7, periodMs: 60_000 },
            { limit: 10, periodMs: 900_000 },
        ],
        steps: [
            ...Array.from({ length: 7 }, (_, i) => ({
                at: 0,
                cost: 1,
                expect: [true, [true, 0, 6 - i], [true, 0, 9 - i]] as [boolean, ...[boolean, number, number][]],
            })),
            { at: 0, cost: 1, expect: [false, [false, 8_572, 0], [true, 0, 3]] },
            { at: 100, cost: -3, expect: [true, [true, 0, 3], [true, 0, 6]] },
            { at: 100, cost: 3, expect: [true, [true, 0, 0], [true, 0, 3]] },
            { at: 8_672, cost: 1, expect: [true, [true, 0, 0], [true, 0, 2]] },
        ],
    },
];

function runCountersTs(c: CountersCase): unknown[] {
    let states: (GcraState | null)[] = c.windows.map(() => null);
    return c.steps.map((s) => {
        const out = gcraCounters(states, c.windows, s.cost, T0 + s.at);
        if (out.writes) states = out.writes.map((w) => w?.state ?? null);
        return [out.allowed, ...out.results.map((r) => [r.allowed, r.retryAfterMs, r.remaining])];
    });
}

/** Fills in the remaining count of leading "-1" steps: a burst counts down. */
function expected(c: Case): [boolean, number, number][] {
    let burst = 0;
    return c.steps.map((s, i) => {
        if (s.expect[2] !== -1) return s.expect;
        burst = i === 0 || c.steps[i - 1]!.expect[2] !== -1 ? 1 : burst + 1;
        const limit = Math.min(...c.windows.map((w) => w.limit));
        return [true, 0, limit - burst];
    });
}

function runTs(c: Case): [boolean, number, number][] {
    let states: (GcraState | null)[] = c.windows.map(() => null);
    return c.steps.map((s) => {
        const out = gcra(states, c.windows, s.cost, T0 + s.at);
        if (out.writes) states = out.writes.map((w) => w.state);
        return [out.result.allowed, out.result.retryAfterMs, out.result.remaining];
    });
}

describe('GCRA arithmetic', () => {
    it('divmod is exact near 2^53', () => {
        assert.deepEqual(divmod(2 ** 52 - 1, 3), [Math.floor((2 ** 52 - 1) / 3), (2 ** 52 - 1) % 3]);
        assert.deepEqual(divmod(-7, 3), [-3, 2]);
        assert.deepEqual(divmod(9, 3), [3, 0]);
    });

    it('state encodes as whole:frac and anything else reads as empty', () => {
        assert.equal(encodeState({ whole: T0, frac: 2 }), `${T0}:2`);
        assert.deepEqual(decodeState(`${T0}:2`), { whole: T0, frac: 2 });
        assert.equal(decodeState('garbage'), null);
        assert.equal(decodeState(null), null);
    });

    for (const c of CASES) {
        it(`TypeScript: ${c.name}`, () => {
            assert.deepEqual(runTs(c), expected(c));
        });
    }

    for (const c of COUNTER_CASES) {
        it(`TypeScript counters: ${c.name}`, () => {
            assert.deepEqual(
                runCountersTs(c),
                c.steps.map((s) => s.expect),
            );
        });
    }

    it('a counter back to a full bucket is dropped, not stored', () => {
        const w = [{ limit: 2, periodMs: 60_000 }];
        const charged = gcraCounters([null], w, 1, T0);
        assert.deepEqual(charged.writes, [{ state: { whole: T0 + 30_000, frac: 0 }, ttlMs: 30_000 }]);
        assert.deepEqual(gcraCounters([charged.writes[0]!.state], w, -1, T0 + 5).writes, [null]);
        assert.equal(gcraCounters([null], w, 0, T0).writes, null, 'a read writes nothing');
    });
});

describe('GCRA in Lua on redis-server', () => {
    let redis: RedisInstance;
    let client: Redis;
    before(async () => {
        redis = await startRedis();
        client = new Redis(redis.url, { maxRetriesPerRequest: 0 });
    });
    after(async () => {
        client?.disconnect();
        await redis?.stop();
    });

    /** One operation of limits.lua; its answer. */
    const evalOp = async (
        op: 'take' | 'charge',
        keys: readonly string[],
        now: number,
        cost: number,
        windows: readonly Window[],
    ): Promise<number[]> => {
        const head = op === 'take' ? ['take', windows.length, cost, 0] : ['charge', windows.length, cost];
        const pairs = windows.flatMap((w) => [w.limit, w.periodMs]);
        const reply = (await client.eval(LUA, keys.length, ...keys, now, ...head, ...pairs)) as unknown[][];
        assert.equal(reply.length, 1);
        return reply[0]!.map(Number);
    };
    const take = (key: string, now: number, cost: number, limit: number, periodMs: number) =>
        evalOp('take', [key], now, cost, [{ limit, periodMs }]);
    const charge = (key: string, now: number, cost: number, limit: number, periodMs: number) =>
        evalOp('charge', [key], now, cost, [{ limit, periodMs }]);

    const evalCase = async (c: Case, tag: string): Promise<[boolean, number, number][]> => {
        const keys = c.windows.map((w) => `t:{${tag}}:${w.limit}:${w.periodMs}`);
        const out: [boolean, number, number][] = [];
        for (const s of c.steps) {
            const reply = await evalOp('take', keys, T0 + s.at, s.cost, c.windows);
            out.push([reply[0] === 1, reply[1]!, reply[2]!]);
        }
        return out;
    };

    for (const [i, c] of CASES.entries()) {
        it(`Lua: ${c.name}`, async () => {
            assert.deepEqual(await evalCase(c, `case${i}`), expected(c));
        });
    }

    const evalCounters = async (c: CountersCase, tag: string): Promise<unknown[]> => {
        const keys = c.windows.map((w, i) => `c:{${tag}}:${i}:${w.limit}:${w.periodMs}`);
        const out: unknown[] = [];
        for (const s of c.steps) {
            const reply = await evalOp('charge', keys, T0 + s.at, s.cost, c.windows);
            out.push([
                reply[0] === 1,
                ...c.windows.map((_, i) => [reply[1 + 3 * i] === 1, reply[2 + 3 * i], reply[3 + 3 * i]]),
            ]);
        }
        return out;
    };

    for (const [i, c] of COUNTER_CASES.entries()) {
        it(`Lua counters: ${c.name}`, async () => {
            assert.deepEqual(
                await evalCounters(c, `counters${i}`),
                c.steps.map((s) => s.expect),
            );
        });
    }

    it('counters: stores what TypeScript stores, and deletes a counter a refund makes full', async () => {
        const w = [{ limit: 7, periodMs: 60_000 }];
        await charge('c:{st}', T0, 3, 7, 60_000);
        const ts = gcraCounters([null], w, 3, T0);
        assert.equal(await client.get('c:{st}'), encodeState(ts.writes![0]!.state));
        const pttl = await client.pttl('c:{st}');
        assert.ok(pttl > 25_000 && pttl <= 25_715, `PTTL ${pttl}`);
        await charge('c:{st}', T0, -3, 7, 60_000);
        assert.equal(await client.exists('c:{st}'), 0);
        await charge('c:{st}', T0, 0, 7, 60_000);
        assert.equal(await client.exists('c:{st}'), 0, 'a read writes nothing');
    });

    it('stores the same state as TypeScript, with a TTL that ends when the bucket is full again', async () => {
        const w = [{ limit: 7, periodMs: 60_000 }];
        await take('t:{ttl}', T0, 3, 7, 60_000);
        const ts = gcra([null], w, 3, T0);
        assert.equal(await client.get('t:{ttl}'), encodeState(ts.writes![0]!.state));
        assert.equal(ts.writes![0]!.ttlMs, 25_715); // 3 x 8571.43 ms, rounded up
        const pttl = await client.pttl('t:{ttl}');
        assert.ok(pttl > 25_000 && pttl <= 25_715, `PTTL ${pttl}`);
    });

    it('a malformed stored value reads as an empty bucket; a refusal and a cost of 0 write nothing', async () => {
        await client.set('t:{bad}', 'not-a-state');
        const reply = await take('t:{bad}', T0, 1, 2, 1_000);
        assert.deepEqual(reply, [1, 0, 1]);
        await take('t:{peek}', T0, 0, 2, 1_000);
        assert.equal(await client.exists('t:{peek}'), 0);
        await take('t:{no}', T0, 3, 2, 1_000);
        assert.equal(await client.exists('t:{no}'), 0);
    });
});
