import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { formatDuration, formatSize, parseDuration, parseSize } from '../../src/config/units.ts';

describe('parseDuration', () => {
    it('reads each unit', () => {
        assert.equal(parseDuration('500ms'), 500);
        assert.equal(parseDuration('5s'), 5000);
        assert.equal(parseDuration('10m'), 600_000);
        assert.equal(parseDuration('1h'), 3_600_000);
        assert.equal(parseDuration('2d'), 172_800_000);
        assert.equal(parseDuration('0s'), 0);
    });

    it('accepts decimals and rounds to whole milliseconds', () => {
        assert.equal(parseDuration('1.5s'), 1500);
        assert.equal(parseDuration('0.5ms'), 1);
    });

    it('returns null for bad input instead of throwing', () => {
        for (const bad of ['5', '', 's', '5 sec', '-5s', '5S', '1h30m', '5x', 'abc', '1e3s']) {
            assert.equal(parseDuration(bad), null, bad);
        }
        for (const bad of [5, null, undefined, true, {}, []]) assert.equal(parseDuration(bad), null);
    });
});

describe('parseSize', () => {
    it('reads plain byte counts', () => {
        assert.equal(parseSize(1234), 1234);
        assert.equal(parseSize(0), 0);
        assert.equal(parseSize('1234'), 1234);
        assert.equal(parseSize('512B'), 512);
    });

    it('uses binary multiples (KB = 1024 bytes)', () => {
        assert.equal(parseSize('100KB'), 102_400);
        assert.equal(parseSize('50MB'), 52_428_800);
        assert.equal(parseSize('1GB'), 1_073_741_824);
        assert.equal(parseSize('1.5KB'), 1536);
        assert.equal(parseSize('10mb'), 10 * 1024 * 1024);
        assert.equal(parseSize('10 MB'), 10 * 1024 * 1024);
    });

    it('returns null for bad input instead of throwing', () => {
        for (const bad of [
            -1,
            1.5,
            NaN,
            Infinity,
            '-1',
            '1.5B',
            '10XB',
            'MB',
            '',
            '10 M',
            '1TB',
            null,
            undefined,
            true,
        ]) {
            assert.equal(parseSize(bad), null, String(bad));
        }
    });
});

describe('formatting', () => {
    it('writes durations and sizes back in config notation', () => {
        assert.equal(formatDuration(300_000), '5m');
        assert.equal(formatDuration(1500), '1500ms');
        assert.equal(formatDuration(0), '0ms');
        assert.equal(formatSize(52_428_800), '50MB');
        assert.equal(formatSize(1000), '1000B');
    });
});
