/**
 * What only the memory store has to show: it stays within maxKeys (least recently used
 * dropped first) and sweeps expired entries as calls come in, without timers or the wall
 * clock. The shared behaviour is in store-contract.test.ts.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createMemoryStore } from '../../src/limits/index.ts';
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

    it('refuses a bad maxKeys', () => {
        assert.throws(() => createMemoryStore({ maxKeys: 0 }), RangeError);
    });
});
