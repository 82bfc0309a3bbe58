/**
 * The behaviour every LimitStore must show, as node:test cases that any test file can run
 * against a store of its own (memory, one Redis server, a Redis Cluster). Time is the
 * `nowMs` argument only: nothing here sleeps. Must not depend on how a store keeps its state.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { it } from 'node:test';
import type { GreylistOptions, LimitStore, StageOp } from '../../src/limits/index.ts';

/** A fixed, realistic clock origin (2027); stores must not care about the real time. */
export const T0 = 1_800_000_000_000;
const MIN = 60_000;
const HOUR = 3_600_000;

/** A key no other case uses (all cases share one store). */
export const fresh = (label: string): string => `${label}:${randomUUID()}`;

export const GREY: GreylistOptions = {
    delayMs: 5 * MIN,
    retryWindowMs: 4 * HOUR,
    passTtlMs: 36 * 24 * HOUR,
    autoAllowAfter: 3,
};

/** The cases also run against a Redis Cluster. */
export function coreContract(store: () => LimitStore): void {
    it('a limit of N per window admits exactly N, then refuses with the emission interval as retryAfterMs', async () => {
        const s = store();
        const key = fresh('n');
        const w = [{ limit: 5, periodMs: MIN }];
        for (let i = 1; i <= 5; i++)
            assert.deepEqual(await s.take(key, w, 1, T0), { allowed: true, retryAfterMs: 0, remaining: 5 - i });
        assert.deepEqual(await s.take(key, w, 1, T0), { allowed: false, retryAfterMs: 12_000, remaining: 0 });
        assert.deepEqual(await s.take(key, w, 1, T0 + 11_999), { allowed: false, retryAfterMs: 1, remaining: 0 });
        assert.deepEqual(await s.take(key, w, 1, T0 + 12_000), { allowed: true, retryAfterMs: 0, remaining: 0 });
    });

    it('an emission interval that is not a whole number of ms still admits exactly N and rounds the wait up', async () => {
        const s = store();
        const key = fresh('frac');
        const w = [{ limit: 7, periodMs: MIN }]; // T = 8571.43 ms
        for (let i = 1; i <= 7; i++) assert.equal((await s.take(key, w, 1, T0)).allowed, true, `take ${i}`);
        assert.deepEqual(await s.take(key, w, 1, T0), { allowed: false, retryAfterMs: 8_572, remaining: 0 });
        assert.equal((await s.take(key, w, 1, T0 + 8_571)).allowed, false);
        assert.equal((await s.take(key, w, 1, T0 + 8_572)).allowed, true);
    });

    it('refills with time: one unit per emission interval, the whole burst after one period', async () => {
        const s = store();
        const key = fresh('refill');
        const w = [{ limit: 4, periodMs: MIN }]; // T = 15 s
        for (let i = 0; i < 4; i++) await s.take(key, w, 1, T0);
        assert.equal((await s.take(key, w, 1, T0)).allowed, false);
        // Two intervals later: exactly two more.
        assert.deepEqual(await s.take(key, w, 1, T0 + 30_000), { allowed: true, retryAfterMs: 0, remaining: 1 });
        assert.deepEqual(await s.take(key, w, 1, T0 + 30_000), { allowed: true, retryAfterMs: 0, remaining: 0 });
        assert.equal((await s.take(key, w, 1, T0 + 30_000)).allowed, false);
        // A full period after the last charge: the whole burst again, never more.
        const later = T0 + 30_000 + MIN;
        for (let i = 1; i <= 4; i++) assert.equal((await s.take(key, w, 1, later)).remaining, 4 - i);
        assert.equal((await s.take(key, w, 1, later)).allowed, false);
        // Idle for ten periods: still only the burst.
        const idle = later + 10 * MIN;
        assert.equal((await s.take(key, w, 0, idle)).remaining, 4);
    });

    it('several windows: all or nothing (the hour window refuses, the minute window is not charged)', async () => {
        const s = store();
        const key = fresh('multi');
        const minute = { limit: 10, periodMs: MIN };
        const hour = { limit: 3, periodMs: HOUR };
        for (let i = 1; i <= 3; i++)
            assert.deepEqual(await s.take(key, [minute, hour], 1, T0), {
                allowed: true,
                retryAfterMs: 0,
                remaining: 3 - i,
            });
        for (let i = 0; i < 5; i++)
            assert.deepEqual(await s.take(key, [minute, hour], 1, T0 + i), {
                allowed: false,
                retryAfterMs: HOUR / 3 - i,
                remaining: 0,
            });
        // The minute window was charged 3 times, not 8: 7 left.
        assert.deepEqual(await s.take(key, [minute], 0, T0), { allowed: true, retryAfterMs: 0, remaining: 7 });
        // And the other way round: the minute window refuses, the hour window is not charged.
        const key2 = fresh('multi2');
        const tight = { limit: 2, periodMs: MIN };
        const wide = { limit: 100, periodMs: HOUR };
        await s.take(key2, [tight, wide], 2, T0);
        const refused = await s.take(key2, [tight, wide], 1, T0);
        assert.equal(refused.allowed, false);
        assert.equal(refused.retryAfterMs, 30_000);
        assert.equal((await s.take(key2, [wide], 0, T0)).remaining, 98);
    });

    it('cost above 1 charges that many units; cost 0 only reads', async () => {
        const s = store();
        const key = fresh('cost');
        const w = [{ limit: 10, periodMs: MIN }]; // T = 6 s
        assert.deepEqual(await s.take(key, w, 4, T0), { allowed: true, retryAfterMs: 0, remaining: 6 });
        assert.deepEqual(await s.take(key, w, 4, T0), { allowed: true, retryAfterMs: 0, remaining: 2 });
        assert.deepEqual(await s.take(key, w, 4, T0), { allowed: false, retryAfterMs: 12_000, remaining: 2 });
        assert.deepEqual(await s.take(key, w, 0, T0), { allowed: true, retryAfterMs: 0, remaining: 2 });
        assert.deepEqual(await s.take(key, w, 2, T0), { allowed: true, retryAfterMs: 0, remaining: 0 });
        // A cost above the limit never fits.
        const big = await s.take(fresh('big'), w, 11, T0);
        assert.equal(big.allowed, false);
        assert.equal(big.remaining, 10);
    });

    it('counters of one group: charged together or not at all, each with its own verdict, refunded exactly', async () => {
        const s = store();
        const group = fresh('grp')
            .replace(/[^A-Za-z0-9._:-]/g, '')
            .slice(0, 60);
        const ip = { key: 'ip:192.0.2.1', window: { limit: 3, periodMs: 15 * MIN } };
        const login = { key: 'login:abc', window: { limit: 2, periodMs: HOUR } };
        const both = [ip, login];
        assert.deepEqual(await s.charge(group, both, 1, T0), {
            allowed: true,
            counters: [
                { allowed: true, retryAfterMs: 0, remaining: 2 },
                { allowed: true, retryAfterMs: 0, remaining: 1 },
            ],
        });
        await s.charge(group, both, 1, T0);
        // the login counter is spent: nothing is charged, the IP counter still has one
        assert.deepEqual(await s.charge(group, both, 1, T0), {
            allowed: false,
            counters: [
                { allowed: true, retryAfterMs: 0, remaining: 1 },
                { allowed: false, retryAfterMs: 30 * MIN, remaining: 0 },
            ],
        });
        assert.equal((await s.charge(group, [ip], 1, T0)).allowed, true, 'the IP counter was not charged above');
        assert.equal((await s.charge(group, [ip], 1, T0)).allowed, false);
        // a refund gives one unit back to each counter, never more than the limit
        assert.deepEqual((await s.charge(group, both, -1, T0)).counters, [
            { allowed: true, retryAfterMs: 0, remaining: 1 },
            { allowed: true, retryAfterMs: 0, remaining: 1 },
        ]);
        assert.deepEqual((await s.charge(group, both, -5, T0)).counters, [
            { allowed: true, retryAfterMs: 0, remaining: 3 },
            { allowed: true, retryAfterMs: 0, remaining: 2 },
        ]);
        await s.charge(group, both, 2, T0);
        assert.equal(await s.reset(group, [login], T0), 1, 'reset reports a counter that held something');
        assert.equal(await s.reset(group, [login], T0), 0);
        assert.deepEqual((await s.charge(group, both, 0, T0)).counters, [
            { allowed: true, retryAfterMs: 0, remaining: 1 },
            { allowed: true, retryAfterMs: 0, remaining: 2 },
        ]);
    });

    it('concurrency: acquire up to max, release frees a slot, re-acquire by the same holder renews', async () => {
        const s = store();
        const key = fresh('cc');
        assert.deepEqual(await s.acquire(key, 'h1', 2, 30_000, T0), { acquired: true, active: 1 });
        assert.deepEqual(await s.acquire(key, 'h2', 2, 30_000, T0), { acquired: true, active: 2 });
        assert.deepEqual(await s.acquire(key, 'h3', 2, 30_000, T0), { acquired: false, active: 2 });
        assert.deepEqual(await s.acquire(key, 'h2', 2, 30_000, T0 + 1), { acquired: true, active: 2 });
        await s.release(key, 'h1');
        await s.release(key, 'h1'); // twice is harmless
        assert.deepEqual(await s.acquire(key, 'h3', 2, 30_000, T0 + 2), { acquired: true, active: 2 });
        await s.release(key, 'h2');
        await s.release(key, 'h3');
        assert.deepEqual(await s.acquire(key, 'h4', 1, 30_000, T0 + 3), { acquired: true, active: 1 });
        assert.deepEqual(await s.acquire(fresh('zero'), 'h', 0, 30_000, T0), { acquired: false, active: 0 });
    });

    it('concurrency: the lease of a dead holder expires after its TTL; renew keeps a live one', async () => {
        const s = store();
        const key = fresh('lease');
        assert.equal((await s.acquire(key, 'dead', 1, 10_000, T0)).acquired, true);
        assert.equal((await s.acquire(key, 'alive', 1, 10_000, T0 + 9_999)).acquired, false);
        // The dead holder never renews or releases: at its expiry the slot is free.
        assert.deepEqual(await s.acquire(key, 'alive', 1, 10_000, T0 + 10_000), { acquired: true, active: 1 });
        assert.equal(await s.renew(key, 'alive', 10_000, T0 + 15_000), true);
        assert.deepEqual(await s.acquire(key, 'other', 1, 10_000, T0 + 24_999), { acquired: false, active: 1 });
        assert.equal(await s.renew(key, 'dead', 10_000, T0 + 24_999), false);
        assert.equal(await s.renew(key, 'alive', 10_000, T0 + 25_000), false); // expired at 25 000
        assert.deepEqual(await s.acquire(key, 'other', 1, 10_000, T0 + 25_000), { acquired: true, active: 1 });
    });

    it("greylisting: 'new', then 'early' with the remaining delay, then 'pass', and 'pass' while passTtl lasts", async () => {
        const s = store();
        const client = fresh('192.0.2.0/24');
        const triplet = `${client}|a@example.org|b@example.net`;
        assert.deepEqual(await s.greylist(triplet, client, GREY, T0), { verdict: 'new', retryAfterMs: 5 * MIN });
        assert.deepEqual(await s.greylist(triplet, client, GREY, T0 + MIN), {
            verdict: 'early',
            retryAfterMs: 4 * MIN,
        });
        assert.deepEqual(await s.greylist(triplet, client, GREY, T0 + 5 * MIN), {
            verdict: 'pass',
            retryAfterMs: 0,
            passedNow: true,
        });
        const later = T0 + 10 * 24 * HOUR;
        assert.deepEqual(await s.greylist(triplet, client, GREY, later), { verdict: 'pass', retryAfterMs: 0 });
        // Each pass extends the record; after passTtl without mail the triplet starts over.
        assert.equal((await s.greylist(triplet, client, GREY, later + GREY.passTtlMs - 1)).verdict, 'pass');
        assert.equal((await s.greylist(triplet, client, GREY, later + 2 * GREY.passTtlMs)).verdict, 'new');
    });

    it('greylisting: a retry after the retry window starts over', async () => {
        const s = store();
        const client = fresh('198.51.100.7');
        const triplet = `${client}|x@example.org|y@example.net`;
        assert.equal((await s.greylist(triplet, client, GREY, T0)).verdict, 'new');
        assert.deepEqual(await s.greylist(triplet, client, GREY, T0 + GREY.retryWindowMs + 1), {
            verdict: 'new',
            retryAfterMs: GREY.delayMs,
        });
        assert.equal(
            (await s.greylist(triplet, client, GREY, T0 + GREY.retryWindowMs + 1 + GREY.delayMs)).verdict,
            'pass',
        );
        // The last moment of the window still counts.
        const t2 = `${triplet}2`;
        assert.equal((await s.greylist(t2, client, GREY, T0)).verdict, 'new');
        assert.equal((await s.greylist(t2, client, GREY, T0 + GREY.retryWindowMs)).verdict, 'pass');
    });

    it('greylisting: after autoAllowAfter credited passes the client is known, until passTtl passes without mail', async () => {
        const s = store();
        const client = fresh('203.0.113.9');
        let t = T0;
        for (let i = 1; i <= GREY.autoAllowAfter; i++) {
            const triplet = `${client}|s${i}@example.org|r@example.net`;
            // 'new' here also shows that the repeated passes below were not counted.
            assert.equal((await s.greylist(triplet, client, GREY, t)).verdict, 'new');
            // the pass that ends the delay says so; the caller credits it
            assert.deepEqual(await s.greylist(triplet, client, GREY, t + GREY.delayMs), {
                verdict: 'pass',
                retryAfterMs: 0,
                passedNow: true,
            });
            await s.greylistCredit(client, GREY.passTtlMs, t + GREY.delayMs);
            if (i < GREY.autoAllowAfter)
                assert.deepEqual(await s.greylist(triplet, client, GREY, t + GREY.delayMs + 1), {
                    verdict: 'pass',
                    retryAfterMs: 0,
                });
            t += GREY.delayMs + HOUR;
        }
        const unseen = `${client}|never@example.org|r@example.net`;
        assert.deepEqual(await s.greylist(unseen, client, GREY, t), { verdict: 'known-client', retryAfterMs: 0 });
        // Known-client hits keep the client known...
        t += GREY.passTtlMs - 1;
        assert.equal((await s.greylist(unseen, client, GREY, t)).verdict, 'known-client');
        // ...and it lapses after passTtl of silence.
        t += GREY.passTtlMs;
        assert.equal((await s.greylist(unseen, client, GREY, t)).verdict, 'new');
        // autoAllowAfter 0 never allowlists.
        const other = fresh('203.0.113.10');
        const off = { ...GREY, autoAllowAfter: 0 };
        assert.equal((await s.greylist(`${other}|a|b`, other, off, T0)).verdict, 'new');
        assert.equal((await s.greylist(`${other}|a|b`, other, off, T0 + GREY.delayMs)).verdict, 'pass');
        assert.equal((await s.greylist(`${other}|c|d`, other, off, T0 + GREY.delayMs)).verdict, 'new');
    });

    it('greylisting: passes never credited never make the client known (its recipients may be refused)', async () => {
        const s = store();
        const client = fresh('203.0.113.11');
        let t = T0;
        for (let i = 1; i <= GREY.autoAllowAfter + 2; i++) {
            const triplet = `${client}|s@example.org|nobody${i}@example.net`;
            assert.equal((await s.greylist(triplet, client, GREY, t)).verdict, 'new');
            assert.equal((await s.greylist(triplet, client, GREY, t + GREY.delayMs)).verdict, 'pass');
            t += GREY.delayMs + 1;
        }
        assert.equal((await s.greylist(`${client}|s@example.org|alice@example.net`, client, GREY, t)).verdict, 'new');
    });

    it('greylisting: a network makes at most its cap of new records; past it a new triplet is not recorded', async () => {
        const s = store();
        const client = fresh('2001:db8:1:2::/64');
        const cap = { key: fresh('2001:db8:1::/48'), window: { limit: 3, periodMs: HOUR } };
        const opts = { ...GREY, cap };
        const triplet = (n: number) => `${client}|s@example.org|r${n}@example.net`;
        for (let n = 1; n <= 3; n++)
            assert.deepEqual(await s.greylist(triplet(n), client, opts, T0), { verdict: 'new', retryAfterMs: 5 * MIN });
        // The fourth is refused with the cap's wait (one record per 20 minutes), and not recorded.
        assert.deepEqual(await s.greylist(triplet(4), client, opts, T0), { verdict: 'capped', retryAfterMs: 20 * MIN });
        assert.deepEqual(await s.greylist(triplet(4), client, opts, T0 + 5 * MIN), {
            verdict: 'capped',
            retryAfterMs: 15 * MIN,
        });
        // Recorded triplets go on as before (an early retry or a pass costs nothing)...
        assert.equal((await s.greylist(triplet(1), client, opts, T0 + MIN)).verdict, 'early');
        assert.equal((await s.greylist(triplet(1), client, opts, T0 + 5 * MIN)).verdict, 'pass');
        // ...another network has a cap of its own...
        const other = { ...GREY, cap: { key: fresh('2001:db8:2::/48'), window: cap.window } };
        assert.equal((await s.greylist(`${client}|s@example.org|x@example.net`, client, other, T0)).verdict, 'new');
        // ...and once the cap has room the fourth is recorded: it is new then, not a retry that passes.
        assert.deepEqual(await s.greylist(triplet(4), client, opts, T0 + 20 * MIN), {
            verdict: 'new',
            retryAfterMs: 5 * MIN,
        });
        assert.equal((await s.greylist(triplet(5), client, opts, T0 + 20 * MIN)).verdict, 'capped');
        assert.equal((await s.greylist(triplet(4), client, opts, T0 + 25 * MIN)).verdict, 'pass');
        // The same through a stage batch (the RCPT stage's one call).
        assert.deepEqual(await s.stage([{ op: 'greylist', triplet: triplet(6), client, opts }], T0 + 25 * MIN), [
            { ok: true, value: { verdict: 'capped', retryAfterMs: 15 * MIN } },
        ]);
    });

    it('greylisting: a provisional record counts for provisionalMs only, unless kept; keeping leaves other records alone', async () => {
        const s = store();
        const client = fresh('192.0.2.0/24');
        const opts = { ...GREY, provisionalMs: GREY.delayMs };
        const triplet = (n: string) => `${client}|s@example.org|${n}@example.net`;
        // not kept: early while it lasts, then new again (no pass)
        assert.deepEqual(await s.greylist(triplet('a'), client, opts, T0), { verdict: 'new', retryAfterMs: 5 * MIN });
        assert.deepEqual(await s.greylist(triplet('a'), client, opts, T0 + 4 * MIN), {
            verdict: 'early',
            retryAfterMs: MIN,
        });
        assert.equal((await s.greylist(triplet('a'), client, opts, T0 + 5 * MIN)).verdict, 'new');
        // kept before it lapsed: a waiting record like enforce mode's, passing after the delay
        assert.equal((await s.greylist(triplet('b'), client, opts, T0)).verdict, 'new');
        await s.greylistKeep([{ triplet: triplet('b'), firstSeenMs: T0, retryWindowMs: GREY.retryWindowMs }], T0 + MIN);
        assert.deepEqual(await s.greylist(triplet('b'), client, opts, T0 + 5 * MIN), {
            verdict: 'pass',
            retryAfterMs: 0,
            passedNow: true,
        });
        // kept after it lapsed (a long transaction): written again, from its first sighting
        assert.equal((await s.greylist(triplet('c'), client, opts, T0)).verdict, 'new');
        await s.greylistKeep(
            [{ triplet: triplet('c'), firstSeenMs: T0, retryWindowMs: GREY.retryWindowMs }],
            T0 + 6 * MIN,
        );
        assert.equal((await s.greylist(triplet('c'), client, opts, T0 + 7 * MIN)).verdict, 'pass');
        // ...until its retry window is over, like any waiting record
        assert.equal((await s.greylist(triplet('d'), client, opts, T0)).verdict, 'new');
        await s.greylistKeep([{ triplet: triplet('d'), firstSeenMs: T0, retryWindowMs: GREY.retryWindowMs }], T0);
        assert.equal((await s.greylist(triplet('d'), client, opts, T0 + GREY.retryWindowMs + 1)).verdict, 'new');
        // a passed record, or one first seen at another time, is left as it is
        await s.greylistKeep(
            [
                { triplet: triplet('b'), firstSeenMs: T0, retryWindowMs: GREY.retryWindowMs },
                { triplet: triplet('a'), firstSeenMs: T0, retryWindowMs: GREY.retryWindowMs },
            ],
            T0 + 6 * MIN,
        );
        assert.deepEqual(await s.greylist(triplet('b'), client, opts, T0 + 7 * MIN), {
            verdict: 'pass',
            retryAfterMs: 0,
        });
        assert.equal((await s.greylist(triplet('a'), client, opts, T0 + 9 * MIN)).verdict, 'early');
        assert.equal((await s.greylist(triplet('a'), client, opts, T0 + 10 * MIN)).verdict, 'new');
    });

    it('greylisting: all networks together make at most the entry cap of new records; past it none is recorded', async () => {
        const s = store();
        const all = { key: fresh('grey|all'), window: { limit: 4, periodMs: HOUR } };
        const net = (n: number) => ({ key: fresh(`2001:db8:${n}::/48`), window: { limit: 3, periodMs: HOUR } });
        const [a, b, c, d] = [net(1), net(2), net(3), net(4)];
        const grey = (cap: typeof a, r: string, t: number) =>
            s.greylist(`${cap.key}|s@example.org|${r}@example.net`, cap.key, { ...GREY, cap, capAll: all }, t);
        for (let n = 1; n <= 3; n++) assert.equal((await grey(a, `r${n}`, T0)).verdict, 'new');
        // the network's own cap is told first
        assert.equal((await grey(a, 'r4', T0)).verdict, 'capped');
        assert.equal((await grey(b, 'r1', T0)).verdict, 'new');
        // four records in all: every network is refused now, with the entry cap's wait (15 minutes a record)
        assert.deepEqual(await grey(b, 'r2', T0), { verdict: 'capped_global', retryAfterMs: 15 * MIN });
        assert.deepEqual(await grey(c, 'r1', T0), { verdict: 'capped_global', retryAfterMs: 15 * MIN });
        // not recorded: after the delay it is not a pass
        assert.equal((await grey(c, 'r1', T0 + 5 * MIN)).verdict, 'capped_global');
        // recorded triplets go on as before
        assert.equal((await grey(b, 'r1', T0 + 5 * MIN)).verdict, 'pass');
        // once the entry cap has room, a new record is made again
        assert.equal((await grey(c, 'r1', T0 + 15 * MIN)).verdict, 'new');
        assert.deepEqual(
            await s.stage(
                [{ op: 'greylist', triplet: `${d.key}|x|y`, client: d.key, opts: { ...GREY, cap: d, capAll: all } }],
                T0 + 15 * MIN,
            ),
            [{ ok: true, value: { verdict: 'capped_global', retryAfterMs: 15 * MIN } }],
        );
    });

    it('stage: one batch answers each op as its own method would, greylisting after the limits', async () => {
        const s = store();
        const [a, b, lease, client] = [fresh('sa'), fresh('sb'), fresh('sl'), fresh('192.0.2.0/24')];
        const w = [{ limit: 1, periodMs: MIN }];
        const gate = { onRefusal: true, onFailure: true };
        const grey = (n: string): StageOp => ({ op: 'greylist', triplet: `${client}|${n}`, client, opts: GREY });
        const acquire = (holder: string): StageOp => ({
            op: 'acquire',
            key: lease,
            holder,
            max: 1,
            ttlMs: MIN,
            gate,
        });
        assert.deepEqual(
            await s.stage(
                [
                    grey('x'),
                    { op: 'take', key: a, windows: w, cost: 1, gate },
                    acquire('h1'),
                    { op: 'take', key: b, windows: w, cost: 1 },
                ],
                T0,
            ),
            [
                { ok: true, value: { verdict: 'new', retryAfterMs: 5 * MIN } },
                { ok: true, value: { allowed: true, retryAfterMs: 0, remaining: 0 } },
                { ok: true, value: { acquired: true, active: 1 } },
                { ok: true, value: { allowed: true, retryAfterMs: 0, remaining: 0 } },
            ],
        );
        // A refusal without a gate (a limit in monitor mode) does not stop greylisting.
        assert.deepEqual(await s.stage([{ op: 'take', key: b, windows: w, cost: 1 }, grey('y')], T0 + 1), [
            { ok: true, value: { allowed: false, retryAfterMs: MIN - 1, remaining: 0 } },
            { ok: true, value: { verdict: 'new', retryAfterMs: 5 * MIN } },
        ]);
        // A refused acquire or take with a gate does: the triplet is not even recorded.
        assert.deepEqual(await s.stage([grey('z'), acquire('h2')], T0 + 2), [
            { ok: true, value: { verdict: 'skipped' } },
            { ok: true, value: { acquired: false, active: 1 } },
        ]);
        assert.deepEqual((await s.stage([{ op: 'take', key: a, windows: w, cost: 1, gate }, grey('z')], T0 + 3))[1], {
            ok: true,
            value: { verdict: 'skipped' },
        });
        assert.equal((await s.greylist(`${client}|z`, client, GREY, T0 + 6 * MIN)).verdict, 'new');
        // An acquire by the holder renews its lease.
        assert.deepEqual(await s.stage([acquire('h1')], T0 + MIN - 1), [
            { ok: true, value: { acquired: true, active: 1 } },
        ]);
        assert.equal((await s.acquire(lease, 'h3', 1, MIN, T0 + MIN)).acquired, false, 'the renewed lease still holds');
        assert.deepEqual(await s.stage([], T0), []);
    });
}

/** Everything: the core cases plus argument checks. */
export function storeContract(store: () => LimitStore): void {
    coreContract(store);

    it('refuses malformed arguments with a RangeError', async () => {
        const s = store();
        const w = [{ limit: 1, periodMs: 1_000 }];
        await assert.rejects(s.take('', w, 1, T0), RangeError);
        await assert.rejects(s.take('k', [], 1, T0), RangeError);
        await assert.rejects(s.take('k', [{ limit: 0, periodMs: 1_000 }], 1, T0), RangeError);
        await assert.rejects(s.take('k', [{ limit: 1.5, periodMs: 1_000 }], 1, T0), RangeError);
        await assert.rejects(s.take('k', [...w, ...w], 1, T0), RangeError);
        await assert.rejects(s.take('k', w, -1, T0), RangeError);
        await assert.rejects(s.take('k', w, 1, Number.NaN), RangeError);
        const c = { key: 'k', window: { limit: 1, periodMs: 1_000 } };
        await assert.rejects(s.charge('bad{tag}', [c], 1, T0), RangeError);
        await assert.rejects(s.charge('g', [], 1, T0), RangeError);
        await assert.rejects(s.charge('g', [c, c], 1, T0), RangeError);
        await assert.rejects(s.charge('g', [c], 0.5, T0), RangeError);
        await assert.rejects(s.reset('g', [{ key: '', window: c.window }], T0), RangeError);
        await assert.rejects(s.acquire('k', '', 1, 1_000, T0), RangeError);
        await assert.rejects(s.acquire('k', 'h', 1, 0, T0), RangeError);
        await assert.rejects(s.release('', 'h'), RangeError);
        await assert.rejects(s.greylist('t', 'c', { ...GREY, retryWindowMs: GREY.delayMs }, T0), RangeError);
    });

    it('stage: a malformed op answers a RangeError on its own; with a failure gate it stops greylisting', async () => {
        const s = store();
        const w = [{ limit: 2, periodMs: MIN }];
        const client = fresh('192.0.2.0/24');
        const answers = await s.stage(
            [
                { op: 'take', key: '', windows: w, cost: 1, gate: { onRefusal: false, onFailure: true } },
                { op: 'take', key: fresh('ok'), windows: w, cost: 1 },
                { op: 'greylist', triplet: `${client}|t`, client, opts: GREY },
            ],
            T0,
        );
        assert.ok(!answers[0]!.ok && answers[0]!.error instanceof RangeError);
        assert.deepEqual(answers.slice(1), [
            { ok: true, value: { allowed: true, retryAfterMs: 0, remaining: 1 } },
            { ok: true, value: { verdict: 'skipped' } },
        ]);
    });

    it('answers ping', async () => {
        assert.equal(await store().ping(), true);
    });
}
