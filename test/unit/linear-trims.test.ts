/**
 * The linear trims that replace quadratic regular expressions on values a client writes
 * (src/trim.ts, withoutTrailingDots in src/net/domain.ts) and the RFC 7208 section 7.3 cut of SPF
 * macro expansions (src/sender-auth/mailauth-bounds.ts): property-based, each gives exactly what the
 * regular expression it replaces gave (or, for the cut, what section 7.3 asks), on any text of the
 * characters that matter; and each stays linear on the shapes that made the regular expressions
 * quadratic (100,000 spaces or dots inside the text).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { withoutTrailingDots } from '../../src/net/domain.ts';
import {
    boundedAddressParser,
    boundedToASCII,
    cutExpansion,
    MAX_ADDRESS_COLONS,
    UNREADABLE_ADDRESSES,
} from '../../src/sender-auth/mailauth-bounds.ts';
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

describe('the IDNA and address bounds put into mailauth', () => {
    it('punycode: a label of more than 63 code points is refused before encoding, shorter ones encode as before', () => {
        const encode = (s: string): string => `encoded:${s}`;
        const bounded = boundedToASCII(encode);
        assert.equal(bounded('bücher.example'), 'encoded:bücher.example');
        assert.equal(bounded(`a@${'ü'.repeat(63)}.example`), `encoded:a@${'ü'.repeat(63)}.example`);
        // 63 astral characters are 126 code units, still one DNS label's worth of code points
        assert.equal(bounded(`${'\u{20000}'.repeat(63)}.example`), `encoded:${'\u{20000}'.repeat(63)}.example`);
        assert.throws(() => bounded(`${'ü'.repeat(64)}.example`), RangeError);
        assert.throws(() => bounded(`x.${'ü'.repeat(64)}\u3002example`), RangeError);
    });

    it('addresses: a value with more colons than groups allow reads as two .invalid mailboxes, others as before', () => {
        const calls: string[] = [];
        const parse = (v: string) => {
            calls.push(v);
            return [{ name: '', address: v }];
        };
        const bounded = boundedAddressParser(parse);
        const group = `team: a@example.org, b@example.org;`;
        assert.deepEqual(bounded(group), [{ name: '', address: group }]);
        const colons = 'a:'.repeat(MAX_ADDRESS_COLONS);
        assert.deepEqual(bounded(colons), [{ name: '', address: colons }]);
        assert.deepEqual(bounded(`${colons}a:`), UNREADABLE_ADDRESSES);
        assert.equal(calls.length, 2);
        calls.length = 0;
        // colons in quoted strings, comments and domain literals open no group, as the parser reads them
        const many = 'a:'.repeat(MAX_ADDRESS_COLONS + 1);
        assert.equal(bounded(`"${many}" <x@example.org>`).length, 1);
        assert.equal(bounded(`x@example.org (${many})`).length, 1);
        assert.equal(bounded(`x@[IPv6:${many}]`).length, 1);
        // the parser ends a comment at its first ")": a nested one hides nothing
        assert.deepEqual(bounded(`((x) ${many})`), UNREADABLE_ADDRESSES);
        // a value longer than an author field may be
        assert.deepEqual(bounded(`x@example.org, ${'y'.repeat(100_000)}`), UNREADABLE_ADDRESSES);
        // the answer is a copy: a caller that changes it changes nothing for the next
        assert.notEqual(bounded(`${colons}a:`)[0], UNREADABLE_ADDRESSES[0]);
    });
});
