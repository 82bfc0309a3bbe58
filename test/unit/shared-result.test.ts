/**
 * sharedResult: callers that ask while a run is in flight share it; its answer is given again
 * until it is `ttlMs` old; a rejected run is not kept. A settable clock stands for time.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { sharedResult } from '../../src/shared-result.ts';

describe('sharedResult', () => {
    it('runs once for callers in flight and again once the answer is older than its ttl', async () => {
        let clock = 0;
        let runs = 0;
        let release: (v: string) => void = () => {};
        const ask = sharedResult(
            () =>
                new Promise<string>((resolve) => {
                    runs++;
                    release = resolve;
                }),
            1000,
            () => clock,
        );
        const first = [ask(), ask(), ask()];
        release('up');
        assert.deepEqual(await Promise.all(first), ['up', 'up', 'up']);
        assert.equal(runs, 1);
        clock = 999;
        assert.equal(await ask(), 'up');
        assert.equal(runs, 1);
        clock = 1000;
        const again = ask();
        release('down');
        assert.equal(await again, 'down');
        assert.equal(runs, 2);
    });

    it('does not keep a run that rejected', async () => {
        let runs = 0;
        const ask = sharedResult(
            () => {
                runs++;
                return runs === 1 ? Promise.reject(new Error('boom')) : Promise.resolve('ok');
            },
            1000,
            () => 0,
        );
        await assert.rejects(ask(), /boom/);
        assert.equal(await ask(), 'ok');
        assert.equal(runs, 2);
    });
});
