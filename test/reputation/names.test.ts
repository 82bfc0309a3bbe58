/**
 * HELO facts (syntax, an address literal that is not the client's, a stranger claiming to be
 * us) and generic reverse names (built from the client's address), on the kinds of names seen
 * in real traffic.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { genericPtr, heloFacts, heloSyntax } from '../../src/reputation/names.ts';

const OWN = { hostname: 'mx.example.com', domains: ['example.com'], addresses: ['198.51.100.25', '2001:db8::25'] };

describe('HELO', () => {
    it('tells domains, address literals and invalid names apart', () => {
        for (const d of ['mail.example.org', 'MAIL.Example.ORG.', 'a-b.c-d.example', 'bücher.example']) {
            assert.equal(heloSyntax(d), 'domain', d);
        }
        for (const l of ['[192.0.2.1]', '[IPv6:2001:db8::1]', '[ipv6:::1]'])
            assert.equal(heloSyntax(l), 'address-literal', l);
        for (const bad of [
            '',
            'localhost',
            '192.0.2.1',
            '[192.0.2.256]',
            '[2001:db8::1]',
            'mail_server.example',
            '-mail.example',
            'mail..example',
            'example.123',
            'a b.example',
            'x'.repeat(64) + '.example',
        ]) {
            assert.equal(heloSyntax(bad), 'invalid', bad);
        }
    });

    it('flags a literal that is not the client, and strangers claiming to be us', () => {
        assert.equal(heloFacts('[192.0.2.1]', '192.0.2.1', OWN).literalMismatch, false);
        assert.equal(heloFacts('[192.0.2.1]', '::ffff:192.0.2.1', OWN).literalMismatch, false);
        assert.equal(heloFacts('[192.0.2.9]', '192.0.2.1', OWN).literalMismatch, true);
        assert.equal(heloFacts('[IPv6:2001:db8:0::7]', '2001:db8::7', OWN).literalMismatch, false);
        assert.equal(heloFacts('mail.example.org', '192.0.2.1', OWN).literalMismatch, false);
        for (const claim of [
            'mx.example.com',
            'EXAMPLE.COM.',
            '[198.51.100.25]',
            '198.51.100.25',
            '[IPv6:2001:db8::25]',
        ]) {
            assert.equal(heloFacts(claim, '192.0.2.1', OWN).claimsUs, true, claim);
        }
        assert.equal(heloFacts('mail.example.org', '192.0.2.1', OWN).claimsUs, false);
        assert.equal(heloFacts('sub.example.com', '192.0.2.1', OWN).claimsUs, false);
        assert.equal(heloFacts('mail.example.org', '192.0.2.1', OWN).domain, 'mail.example.org');
    });
});

describe('generic reverse names', () => {
    it('recognises names built from the address', () => {
        const ip = '203.0.113.7';
        for (const name of [
            '203-0-113-7.dyn.isp.example',
            'c-203-0-113-7.hsd1.ca.comcast.example',
            '7.113.0.203.in-addr.isp.example',
            'ip203-0-113-7.broadband.example',
            'host203000113007.isp.example',
            'cb007107.pool.isp.example',
            'dsl-113-7.pool.isp.example',
            'ppp-203.0.113.7.isp.example',
        ]) {
            assert.equal(genericPtr(name, ip), true, name);
        }
    });

    it('leaves mail servers and unrelated numbers alone', () => {
        const ip = '203.0.113.7';
        for (const name of [
            'mail.example.com',
            'mx7.example.com',
            'smtp-out-113.example.net',
            'o7.email.example.net',
            'mail203.example.com',
            'outbound.mail.example',
        ]) {
            assert.equal(genericPtr(name, ip), false, name);
        }
    });

    it('recognises an IPv6 address spelled into the name', () => {
        assert.equal(genericPtr('2001-0db8-0000-0000-0000-0000-0000-0007.dyn.isp.example', '2001:db8::7'), true);
        assert.equal(genericPtr('mail.example.com', '2001:db8::7'), false);
    });
});
