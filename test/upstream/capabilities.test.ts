/**
 * What the upstream offers, from its EHLO keywords (src/upstream/capabilities.ts): SIZE,
 * 8BITMIME, SMTPUTF8, DSN, REQUIRETLS only over TLS; which transaction needs what; and the
 * tracker that keeps the latest answer and warns when the upstream's SIZE is below a listener's.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
    CapabilityTracker,
    NO_CAPABILITIES,
    capabilitiesFromEhlo,
    missingCapability,
    type UpstreamCapabilities,
} from '../../src/upstream/capabilities.ts';

const keywords = (...lines: string[]): Map<string, string[]> =>
    new Map(lines.map((l) => [l.split(' ')[0]!.toUpperCase(), l.split(' ').slice(1)]));

describe('upstream capabilities', () => {
    it('reads SIZE (none, bare or 0: no limit declared), 8BITMIME, SMTPUTF8, DSN', () => {
        assert.deepEqual(capabilitiesFromEhlo(keywords('SIZE 10240000', '8BITMIME', 'SMTPUTF8', 'DSN'), false), {
            size: 10240000,
            eightBitMime: true,
            smtputf8: true,
            dsn: true,
            requireTls: false,
        });
        assert.equal(capabilitiesFromEhlo(keywords('SIZE'), false).size, null);
        assert.equal(capabilitiesFromEhlo(keywords('SIZE 0'), false).size, null);
        assert.equal(capabilitiesFromEhlo(keywords('SIZE lots'), false).size, null);
        assert.deepEqual(capabilitiesFromEhlo(new Map(), false), NO_CAPABILITIES);
    });

    it('counts REQUIRETLS only on an encrypted connection (RFC 8689 section 4)', () => {
        assert.equal(capabilitiesFromEhlo(keywords('REQUIRETLS'), false).requireTls, false);
        assert.equal(capabilitiesFromEhlo(keywords('REQUIRETLS'), true).requireTls, true);
    });

    it('names the first extension a transaction needs and the upstream lacks; SIZE never', () => {
        assert.equal(missingCapability(NO_CAPABILITIES, { size: 10, body: '7BIT' }), null);
        assert.equal(missingCapability(NO_CAPABILITIES, { body: '8BITMIME' }), '8BITMIME');
        assert.equal(missingCapability(NO_CAPABILITIES, { smtputf8: true }), 'SMTPUTF8');
        assert.equal(missingCapability(NO_CAPABILITIES, { envid: 'x' }), 'DSN');
        assert.equal(missingCapability(NO_CAPABILITIES, { requireTls: true }), 'REQUIRETLS');
        assert.equal(missingCapability(NO_CAPABILITIES, null, { notify: 'NEVER' }), 'DSN');
        assert.equal(
            missingCapability({ ...NO_CAPABILITIES, dsn: true }, { ret: 'FULL' }, { orcpt: 'rfc822;a@b' }),
            null,
        );
    });
});

describe('capability tracker', () => {
    function logger() {
        const lines: { level: string; obj: Record<string, unknown>; msg: string }[] = [];
        const at =
            (level: string) =>
            (obj: object, msg = ''): void => {
                lines.push({ level, obj: obj as Record<string, unknown>, msg });
            };
        return { lines, log: { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') } };
    }

    it('keeps the latest answer, logs changes only, and warns once per SIZE below a listener limit', () => {
        const { lines, log } = logger();
        const tracker = new CapabilityTracker({
            log,
            listeners: [
                { name: 'mx', maxMessageSize: 52_428_800 },
                { name: 'small', maxMessageSize: 1_000_000 },
            ],
        });
        const latest = (): UpstreamCapabilities | null => tracker.current;
        assert.equal(latest(), null);
        const postfix = { ...NO_CAPABILITIES, size: 10_240_000, dsn: true };
        tracker.update(postfix);
        tracker.update({ ...postfix });
        assert.deepEqual(latest(), postfix);
        assert.equal(lines.filter((l) => l.level === 'info').length, 1, 'an unchanged answer is not logged again');
        const warnings = lines.filter((l) => l.level === 'warn');
        assert.deepEqual(
            warnings.map((w) => [w.obj.listener, w.obj.maxMessageSize, w.obj.upstreamSize]),
            [['mx', 52_428_800, 10_240_000]],
        );
        tracker.update({ ...postfix, dsn: false });
        assert.equal(latest()?.dsn, false);
        assert.equal(lines.filter((l) => l.level === 'warn').length, 1, 'same SIZE: no new warning');
        assert.match(lines.at(-1)!.msg, /changed/);
    });
});
