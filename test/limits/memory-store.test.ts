/**
 * What only the memory store has to show: it stays within maxKeys (least recently used
 * dropped first) kind by kind, so records a client makes at will (greylisting, counters per
 * sender) never push out a limit's counters or a live lease, and a live lease is never
 * dropped; and it sweeps expired entries as calls come in, without timers or the wall clock.
 * The shared behaviour is in store-contract.test.ts.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createMemoryStore } from '../../src/limits/index.ts';
import { PASS_KEY_PREFIX } from '../../src/limits/keys.ts';
import { GREY, T0 } from './contract.ts';

const W = [{ limit: 3, periodMs: 60_000 }];

describe('memory store: bounds', () => {
    it('keeps at most maxKeys entries and forgets the least recently used first', async () => {
        const store = createMemoryStore({ maxKeys: 100 });
        await store.take('hot', W, 3, T0);
        for (let i = 0; i < 1_000; i++) {
            await store.take(`k${i}`, W, 1, T0);
            if (i % 50 === 0) await store.take('hot', W, 0, T0); // a read keeps it recent
            assert.ok(store.size() <= 100);
        }
        assert.equal(store.size(), 100);
        assert.equal((await store.take('hot', W, 1, T0)).allowed, false); // still remembered
        assert.equal((await store.take('k0', W, 0, T0)).remaining, 3); // evicted: full again
        assert.equal((await store.take('k999', W, 0, T0)).remaining, 2);
        await store.close();
        assert.equal(store.size(), 0);
    });

    it('sweeps expired entries a few per call', async () => {
        const store = createMemoryStore();
        for (let i = 0; i < 200; i++) await store.take(`short${i}`, [{ limit: 1, periodMs: 1_000 }], 1, T0);
        for (let i = 0; i < 50; i++) await store.acquire(`lease${i}`, 'h', 1, 1_000, T0);
        for (let i = 0; i < 50; i++) await store.greylist(`t${i}`, `c${i}`, GREY, T0);
        assert.equal(store.size(), 300);
        // Much later, traffic on one key clears the expired rest.
        const later = T0 + GREY.retryWindowMs + 10;
        for (let i = 0; i < 100; i++) await store.take('busy', W, 0, later);
        assert.equal(store.size(), 0); // a read of 'busy' writes nothing
        await store.take('busy', W, 1, later);
        assert.equal(store.size(), 1);
    });

    it('greylisting records made at will push out neither counters nor leases', async () => {
        const store = createMemoryStore({ maxKeys: 40 });
        await store.take('client-net', W, 3, T0);
        assert.equal((await store.acquire('client-ip', 'a', 1, 600_000, T0)).acquired, true);
        // one record per recipient, far more than the bound
        for (let i = 0; i < 500; i++) await store.greylist(`t${i}`, `c${i % 7}`, GREY, T0 + 1);
        assert.equal((await store.take('client-net', W, 1, T0 + 2)).allowed, false, 'the counter was forgotten');
        assert.equal(
            (await store.acquire('client-ip', 'b', 1, 600_000, T0 + 2)).acquired,
            false,
            'the lease was dropped',
        );
        assert.ok(store.size() <= 40 + 40 + 10 + 10, String(store.size()));
    });

    it('pregreet passes remembered at will (a new address each) do not push out the counters', async () => {
        const store = createMemoryStore({ maxKeys: 40 }); // 10 passes
        await store.take('client-net', W, 3, T0);
        const pass = [{ limit: 1, periodMs: 86_400_000 }];
        for (let i = 0; i < 500; i++)
            await store.take(`${PASS_KEY_PREFIX}2001:db8:${i.toString(16)}::/64`, pass, 1, T0 + 1);
        assert.equal((await store.take('client-net', W, 1, T0 + 2)).allowed, false, 'the counter was forgotten');
        assert.ok(store.size() <= 1 + 10, String(store.size()));
        // the newest passes are kept
        assert.equal((await store.take(`${PASS_KEY_PREFIX}2001:db8:1f3::/64`, pass, 0, T0 + 3)).remaining, 0);
    });

    it('never drops a live lease: when every lease is live a new one fails (onError decides), an expired one makes room', async () => {
        const store = createMemoryStore({ maxKeys: 40 }); // 10 leases
        for (let i = 0; i < 10; i++) assert.equal((await store.acquire(`ip${i}`, 'h', 1, 1_000, T0)).acquired, true);
        await assert.rejects(store.acquire('ip10', 'h', 1, 1_000, T0), (err: Error) => err.name === 'StoreError');
        // each of the ten still holds its slot
        for (let i = 0; i < 10; i++) assert.equal((await store.acquire(`ip${i}`, 'x', 1, 1_000, T0)).acquired, false);
        // a lease that ran out makes room, even behind live ones: ip0..ip8 renewed for longer
        for (let i = 0; i < 9; i++) assert.equal(await store.renew(`ip${i}`, 'h', 5_000, T0 + 500), true);
        // ip9 (to expire at T0 + 1000) read last: the newest, behind nine live leases
        assert.equal((await store.acquire('ip9', 'x', 1, 1_000, T0 + 600)).acquired, false);
        await assert.rejects(store.acquire('ip10', 'h', 1, 1_000, T0 + 900), (err: Error) => err.name === 'StoreError');
        assert.equal((await store.acquire('ip10', 'h', 1, 1_000, T0 + 1_001)).acquired, true, 'ip9 had expired');
        await assert.rejects(
            store.acquire('ip11', 'h', 1, 1_000, T0 + 1_001),
            (err: Error) => err.name === 'StoreError',
        );
        // then every lease is given back
        for (let i = 0; i < 9; i++) await store.release(`ip${i}`, 'h');
        await store.release('ip10', 'h');
        for (let i = 11; i < 21; i++) {
            assert.equal((await store.acquire(`ip${i}`, 'h', 1, 1_000, T0 + 1_001)).acquired, true);
        }
        // full of live leases again: in a batch the failure is that op's answer alone
        const answers = await store.stage(
            [
                { op: 'acquire', key: 'ip21', holder: 'h', max: 1, ttlMs: 1_000 },
                { op: 'take', key: 'other', windows: W, cost: 1 },
            ],
            T0 + 1_001,
        );
        assert.equal(answers[0]!.ok, false);
        assert.equal(answers[1]!.ok, true);
    });

    it('refuses a bad maxKeys', () => {
        assert.throws(() => createMemoryStore({ maxKeys: 0 }), RangeError);
    });
});
