/**
 * The linear trims that replace quadratic regular expressions on values a client writes
 * (src/trim.ts, withoutTrailingDots in src/net/domain.ts) and the RFC 7208 section 7.3 cut of SPF
 * macro expansions (src/sender-auth/spf-bounds.ts): property-based, each gives exactly what the
 * regular expression it replaces gave (or, for the cut, what section 7.3 asks), on any text of the
 * characters that matter; and each stays linear on the shapes that made the regular expressions
 * quadratic (100,000 spaces or dots inside the text).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { withoutTrailingDots } from '../../src/net/domain.ts';
import { cutExpansion } from '../../src/sender-auth/spf-bounds.ts';
import { trimWsp, trimWspEnd } from '../../src/trim.ts';
import { fuzzSettings } from '../helpers/fuzz.ts';

const text = fc.string({ unit: fc.constantFrom(' ', '\t', '\r', '\n', '.', 'a', 'b', '\u00a0'), maxLength: 40 });

describe('linear trims', () => {
    it('give what the regular expressions they replace gave', (t) => {
        fc.assert(
            fc.property(text, (s) => {
                assert.equal(trimWsp(s), s.replace(/^[ \t]+|[ \t]+$/g, ''));
                assert.equal(trimWsp(s, true), s.replace(/^[ \t\r\n]+|[ \t\r\n]+$/g, ''));
                assert.equal(trimWspEnd(s), s.replace(/[ \t]+$/, ''));
                assert.equal(withoutTrailingDots(s), s.replace(/\.+$/, ''));
            }),
            fuzzSettings(t, 2000),
        );
    });

    it('stay linear on 100,000 spaces or dots inside the text', () => {
        const spaces = `a${' '.repeat(100_000)}b`;
        const dots = `a${'.'.repeat(100_000)}b`;
        const started = performance.now();
        assert.equal(trimWsp(spaces), spaces);
        assert.equal(trimWsp(spaces, true), spaces);
        assert.equal(trimWspEnd(spaces), spaces);
        assert.equal(withoutTrailingDots(dots), dots);
        const ms = performance.now() - started;
        assert.ok(ms < 100, `${ms.toFixed(0)} ms`);
    });
});

describe('the cut of an SPF macro expansion (RFC 7208 section 7.3)', () => {
    const label = fc.string({ unit: fc.constantFrom('a', 'b', '-'), minLength: 1, maxLength: 70 });
    const name = fc.array(label, { minLength: 1, maxLength: 12 }).map((l) => l.join('.'));

    it('keeps names up to 253 characters; cuts longer ones to their last whole labels, or their last 253 characters', (t) => {
        fc.assert(
            fc.property(name, (n) => {
                const cut = cutExpansion(n);
                assert.ok(n.endsWith(cut));
                if (n.length <= 253) return assert.equal(cut, n);
                assert.ok(cut.length <= 253);
                const rest = n.slice(0, n.length - cut.length);
                if (rest.endsWith('.')) {
                    // whole labels were removed, as few as possible
                    const oneMore = rest.slice(0, -1).lastIndexOf('.');
                    assert.ok(n.length - (oneMore + 1) > 253);
                } else {
                    // no dot left to cut at within 253 characters: the last 253 characters
                    assert.equal(cut.length, 253);
                }
            }),
            fuzzSettings(t, 2000),
        );
    });

    it('examples', () => {
        assert.equal(cutExpansion('a.example'), 'a.example');
        assert.equal(cutExpansion(`${'x'.repeat(250)}.b.example`), 'b.example');
        assert.equal(cutExpansion('y'.repeat(300)), 'y'.repeat(253));
        assert.equal(cutExpansion(`a.${'y'.repeat(300)}`), 'y'.repeat(253));
    });
});
