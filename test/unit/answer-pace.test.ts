/**
 * AnswerPace (src/submission/answer-pace.ts): the pace an answer is held to is the second
 * highest of the last measurements, so nearly every real answer ends before it while one stall
 * does not slow every later answer; bounded by its cap; the initial value until something was
 * measured.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { AnswerPace } from '../../src/submission/answer-pace.ts';

describe('AnswerPace', () => {
    it('starts at its initial value, bounded by the cap', () => {
        assert.equal(new AnswerPace(2000, 5000).ms, 2000);
        assert.equal(new AnswerPace(9000, 5000).ms, 5000);
        assert.equal(new AnswerPace(2000, 5000).measured, false);
    });
    it('is the second highest of the last measurements: one stall moves it once, not for good', () => {
        const p = new AnswerPace(0, 5000, 5);
        p.record(100);
        assert.equal(p.ms, 100, 'the only one');
        p.record(4000);
        assert.equal(p.ms, 100, 'the lower of two');
        p.record(110);
        assert.equal(p.ms, 110);
        for (const ms of [120, 90]) p.record(ms);
        assert.equal(p.ms, 120, 'the stall is left out while it is among the last five');
        for (const ms of [100, 105]) p.record(ms);
        assert.equal(p.ms, 110, 'and gone once it has left them');
    });

    it('never exceeds its cap', () => {
        const p = new AnswerPace(0, 2000);
        for (let i = 0; i < 5; i++) p.record(60_000);
        assert.equal(p.ms, 2000);
    });
});
