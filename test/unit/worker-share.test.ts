/**
 * With several workers, each serves its share of a listener's client caps, so that the
 * instance as a whole holds `maxClients` and `maxClientsPerNetwork` as configured (and the
 * Postfix process limit sized for them in docs/deploy-postfix.md).
 */
import assert from 'node:assert/strict';
import { it } from 'node:test';
import { workerShareOf } from '../../src/listener.ts';

it('splits a cap among workers, rounding up, never below 1', () => {
    assert.equal(workerShareOf(100, 1), 100);
    assert.equal(workerShareOf(100, 2), 50);
    assert.equal(workerShareOf(100, 3), 34);
    assert.equal(workerShareOf(50, 4), 13);
    assert.equal(workerShareOf(1, 8), 1);
    assert.equal(workerShareOf(10, 0), 10);
    for (const workers of [1, 2, 3, 4, 7, 16]) {
        for (const cap of [1, 5, 50, 100, 2000]) {
            const share = workerShareOf(cap, workers);
            // the instance holds at most the cap plus the rounding of each worker's share
            assert.ok(share * workers < cap + workers, `${cap} over ${workers}: ${share} each`);
            assert.ok(share >= 1);
        }
    }
});
