// The shipped Public Suffix List is read and parsed once per process: every DMARC evaluation
// (one per message) shares the same parsed list, and its answers follow the list's rules.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { organizationalDomain, publicSuffixList } from '../../src/sender-auth/psl.ts';

describe('public suffix list', () => {
    it('is parsed once: every caller gets the same list', () => {
        const first = publicSuffixList();
        assert.equal(organizationalDomain('mail.example.co.uk'), 'example.co.uk');
        assert.equal(publicSuffixList(), first);
    });

    it('answers with the exact, wildcard and exception rules of the shipped list', () => {
        const list = publicSuffixList();
        assert.equal(list.publicSuffix('a.b.example.com'), 'com');
        assert.equal(list.registrableDomain('a.b.example.com'), 'example.com');
        assert.equal(list.registrableDomain('www.ck'), 'www.ck');
        assert.equal(list.publicSuffix('x.y.ck'), 'y.ck');
        assert.equal(list.registrableDomain('com'), null);
    });
});
