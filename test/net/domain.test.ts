/**
 * The one domain normaliser (src/net/domain.ts): lower case, no trailing dot, U-labels as
 * A-labels, names with white space or control characters refused; and the config, the rules,
 * the envelope, the sender binding and the public suffix list read a name the same way through it.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { normalizeHostname } from '../../src/config/net.ts';
import { foldEnvelopeDomain } from '../../src/envelope/command.ts';
import { foldDomain, parseDomain, someDomainOrParent, toALabel, withoutTrailingDot } from '../../src/net/domain.ts';
import { heloDomain } from '../../src/reputation/names.ts';
import { normalizeDomain } from '../../src/submission/sender-policy.ts';

describe('net/domain', () => {
    it('lower-cases ASCII names and writes U-labels as A-labels', () => {
        assert.equal(toALabel('Mail.EXAMPLE.com'), 'mail.example.com');
        assert.equal(toALabel('BÜCHER.example'), 'xn--bcher-kva.example');
        assert.equal(toALabel('XN--BCHER-KVA.example'), 'xn--bcher-kva.example');
    });

    it('refuses what cannot be a name', () => {
        assert.equal(toALabel(''), null);
        assert.equal(toALabel('a b.example'), null);
        assert.equal(toALabel('bü\tcher.example'), null);
        assert.equal(toALabel('bücher\u0000.example'), null);
    });

    it('removes one trailing dot', () => {
        assert.equal(withoutTrailingDot('example.com.'), 'example.com');
        assert.equal(withoutTrailingDot('example.com'), 'example.com');
        assert.equal(foldDomain('Example.COM.'), 'example.com');
        assert.equal(foldDomain('bücher.example.'), 'xn--bcher-kva.example');
        assert.equal(foldDomain('not a name'), 'not a name');
    });

    it('converts label by label when IDNA refuses the whole name, as DMARC reads it', () => {
        assert.equal(foldDomain('xn--zz.évil.com'), 'xn--zz.xn--vil-9la.com');
        assert.equal(foldDomain('x|y.Évil.com'), 'x|y.xn--vil-9la.com');
        assert.equal(foldDomain('a%b.évil\u3002com'), 'a%b.xn--vil-9la.com');
        assert.equal(foldDomain('x|y.example.com'), 'x|y.example.com', 'ASCII names are only lower-cased');
        // every trailing dot, also one written as an IDNA full stop, as mailauth reads the author domain
        assert.equal(foldDomain('Evil.com...'), 'evil.com');
        assert.equal(foldDomain('évil.com\u3002\u3002'), 'xn--vil-9la.com');
        // a long name: only the labels a name of 253 characters could end with are converted
        const long = foldDomain(`${'é.'.repeat(33_000)}Évil.com`);
        assert.ok(long.endsWith('.xn--vil-9la.com'));
        assert.ok(long.startsWith('é.é.'));
    });

    it('asks a long name only for the parents a list entry could be (at most 253 characters)', () => {
        const asked: string[] = [];
        const has = (d: string): boolean => {
            asked.push(d);
            return d === 'bank.example';
        };
        const long = `${'a.'.repeat(8000)}bank.example`;
        assert.equal(someDomainOrParent(long, has), true);
        assert.ok(asked.length <= 128, `${asked.length} names asked`);
        assert.ok(asked.every((d) => d.length <= 253));
        asked.length = 0;
        assert.equal(someDomainOrParent(`${'a.'.repeat(8000)}x`, has), false);
        assert.ok(asked.length <= 128);
        assert.equal(someDomainOrParent('a'.repeat(300), has), false, 'no dot within reach: nothing to ask');
        assert.equal(someDomainOrParent('mail.bank.example', has), true);
        assert.equal(someDomainOrParent('bank.example.evil', has), false);
    });

    it('reads an operator-written name strictly', () => {
        assert.equal(parseDomain('_dmarc.Example.com'), '_dmarc.example.com');
        assert.equal(parseDomain('-bad.example'), null);
        assert.equal(parseDomain('a..b'), null);
        assert.equal(parseDomain(`${'a'.repeat(64)}.example`), null);
    });

    it('gives every reader the same A-label form', () => {
        const name = 'Bücher.Example';
        const expected = 'xn--bcher-kva.example';
        assert.equal(normalizeHostname(`${name}.`), expected);
        assert.equal(parseDomain(name), expected);
        assert.deepEqual(foldEnvelopeDomain(name), { ascii: expected });
        assert.equal(heloDomain(name), expected);
        assert.equal(normalizeDomain(name), expected);
    });
});
