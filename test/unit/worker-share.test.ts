/**
 * With several workers, each serves its share of a listener's `maxClients`, rounded down, so
 * that the instance as a whole holds at most what is configured (and the Postfix process limit sized for it in
 * docs/deploy-postfix.md); of `maxClientsPerNetwork` each allows twice its even share, so that a
 * network's connections, which do not spread evenly over the workers, are rarely refused below
 * the cap.
 */
import assert from 'node:assert/strict';
import { it } from 'node:test';
import { networkShareOf, workerShareOf } from '../../src/listener.ts';

it('splits a cap among workers, rounding down, never below 1', () => {
    assert.equal(workerShareOf(100, 1), 100);
    assert.equal(workerShareOf(100, 2), 50);
    assert.equal(workerShareOf(100, 3), 33);
    assert.equal(workerShareOf(50, 4), 12);
    // 2 each (rounded up) let 6 sessions into an instance capped at 4
    assert.equal(workerShareOf(4, 3), 1);
    assert.equal(workerShareOf(1, 8), 1);
    assert.equal(workerShareOf(10, 0), 10);
    for (const workers of [1, 2, 3, 4, 7, 16]) {
        for (const cap of [1, 4, 5, 50, 100, 2000]) {
            const share = workerShareOf(cap, workers);
            // the instance holds at most the cap (one per worker when the cap is below their number)
            assert.ok(share * workers <= Math.max(cap, workers), `${cap} over ${workers}: ${share} each`);
            // and loses less than one slot per worker to the rounding
            assert.ok(cap < workers || share * workers > cap - workers, `${cap} over ${workers}: ${share} each`);
            assert.ok(share >= 1);
        }
    }
});

it('gives each worker twice its even share of a network cap, at most the cap', () => {
    assert.equal(networkShareOf(50, 1), 50);
    assert.equal(networkShareOf(50, 2), 50);
    assert.equal(networkShareOf(50, 8), 13);
    assert.equal(networkShareOf(4, 2), 4);
    assert.equal(networkShareOf(1, 8), 1);
    // a network's cap connections handed to workers at random: the even share (7 of 50 over 8
    // workers) refused one of them nearly every time, twice the share seldom
    let seed = 7;
    const random = (): number => (seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31) / 2 ** 31;
    const refusedSome = (perWorker: number, cap: number, workers: number): number => {
        let runs = 0;
        for (let trial = 0; trial < 2_000; trial++) {
            const load = new Array<number>(workers).fill(0);
            for (let i = 0; i < cap; i++) load[Math.floor(random() * workers)]!++;
            if (load.some((n) => n > perWorker)) runs++;
        }
        return runs / 2_000;
    };
    assert.ok(refusedSome(workerShareOf(50, 8), 50, 8) > 0.9);
    assert.ok(refusedSome(networkShareOf(50, 8), 50, 8) < 0.05);
    assert.ok(refusedSome(networkShareOf(25, 4), 25, 4) < 0.05);
});
