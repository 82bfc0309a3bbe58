/**
 * The opening-bytes classifier: PROXY v1 and v2, HTTP request lines and TLS ClientHellos are
 * named as soon as enough bytes arrived, SMTP commands (whatever their case) never are, and
 * any prefix of a foreign opening is undecided, never SMTP.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { classifyOpening, OPENING_BYTES } from '../../src/net/opening-bytes.ts';
import { V2_SIGNATURE } from '../../src/net/proxy-protocol.ts';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');

describe('classifyOpening', () => {
    it('names foreign openings', () => {
        assert.equal(classifyOpening(b('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n')), 'proxy');
        assert.equal(classifyOpening(V2_SIGNATURE), 'proxy');
        for (const m of ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH']) {
            assert.equal(classifyOpening(b(`${m} / HTTP/1.1\r\n`)), 'http', m);
        }
        assert.equal(classifyOpening(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00])), 'tls');
    });

    it('leaves SMTP commands alone, in any case', () => {
        for (const c of [
            'EHLO x',
            'HELO x',
            'ehlo x',
            'MAIL FROM:<a@b>',
            'QUIT',
            'NOOP',
            'STARTTLS',
            'DATA',
            'HELP',
            'get / HTTP/1.1',
            'RSET',
        ]) {
            assert.equal(classifyOpening(b(`${c}\r\n`)), 'smtp', c);
        }
    });

    it('is undecided on a prefix of a foreign opening, and decides within OPENING_BYTES', () => {
        assert.equal(classifyOpening(b('GE')), null);
        assert.equal(classifyOpening(b('PROX')), null);
        assert.equal(classifyOpening(V2_SIGNATURE.subarray(0, 5)), null);
        assert.equal(classifyOpening(Buffer.from([0x16])), null);
        const seed = Date.now() % 2 ** 31;
        console.log(`opening-bytes property seed ${seed}`);
        fc.assert(
            fc.property(fc.uint8Array({ minLength: OPENING_BYTES, maxLength: 64 }), (bytes) => {
                assert.notEqual(classifyOpening(Buffer.from(bytes)), null);
            }),
            { seed, numRuns: 2000 },
        );
    });
});
