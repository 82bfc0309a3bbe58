// Session ids: the same 16 base-32 digits smtp-server makes from 80 random bits (checked against
// its BigInt conversion for every byte value at every position and for random ids), and new
// ones across refills of the random pool.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { formatSessionId, sessionId } from '../../src/smtp-server/session-id.ts';

/** smtp-server's own formatting of a session id. */
function reference(bytes: Buffer): string {
    return BigInt('0x' + bytes.toString('hex'))
        .toString(32)
        .padStart(16, '0');
}

describe('session ids', () => {
    it('are formatted exactly as smtp-server formats the same 80 bits', () => {
        const cases = [Buffer.alloc(10, 0), Buffer.alloc(10, 0xff), Buffer.from('00000000000000000001', 'hex')];
        for (let position = 0; position < 10; position++) {
            for (let value = 1; value < 256; value++) {
                const b = Buffer.alloc(10);
                b[position] = value;
                cases.push(b);
            }
        }
        for (let i = 0; i < 2000; i++) cases.push(randomBytes(10));
        for (const bytes of cases) assert.equal(formatSessionId(bytes), reference(bytes), bytes.toString('hex'));
        // read at an offset, as from the pool
        const pool = randomBytes(30);
        assert.equal(formatSessionId(pool, 10), reference(pool.subarray(10, 20)));
    });

    it('are 16 base-32 digits and do not repeat across refills of the pool', () => {
        const seen = new Set<string>();
        for (let i = 0; i < 5000; i++) {
            const id = sessionId();
            assert.match(id, /^[0-9a-v]{16}$/);
            seen.add(id);
        }
        assert.equal(seen.size, 5000);
    });
});
