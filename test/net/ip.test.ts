/**
 * The one IP/CIDR parser (src/net/ip.ts) as the config, the rules and the login guard use it:
 * a range with host bits set is refused everywhere with the network it probably means, single
 * addresses become /32 or /128 in canonical text, and IPv4-mapped entries match IPv4 clients.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { compileCidrs, isIp, isIpv4, isIpv6, normalizeCidr, parseRange } from '../../src/net/ip.ts';

describe('net/ip: CIDR ranges', () => {
    it('refuses host bits with the corrected network, in rules and config alike', () => {
        for (const [text, network] of [
            ['10.0.0.1/8', '10.0.0.0/8'],
            ['192.0.2.7/24', '192.0.2.0/24'],
            ['2001:db8::1/32', '2001:db8::/32'],
        ] as const) {
            const expected = `"${text}" has host bits set (write ${network})`;
            assert.deepEqual(parseRange(text), { error: expected });
            assert.deepEqual(normalizeCidr(text), { error: expected });
            assert.throws(() => compileCidrs([text]), { message: expected });
        }
    });

    it('writes ranges in canonical text', () => {
        assert.deepEqual(normalizeCidr('192.0.2.7'), { cidr: '192.0.2.7/32' });
        assert.deepEqual(normalizeCidr('2001:DB8:0:0::7'), { cidr: '2001:db8::7/128' });
        assert.deepEqual(normalizeCidr('10.0.0.0/8'), { cidr: '10.0.0.0/8' });
        assert.deepEqual(normalizeCidr('::/0'), { cidr: '::/0' });
        assert.deepEqual(normalizeCidr('0.0.0.0/0'), { cidr: '0.0.0.0/0' });
        assert.deepEqual(normalizeCidr('::ffff:10.0.0.0/104'), { cidr: '10.0.0.0/8' });
    });

    it('matches IPv4-mapped clients against IPv4 entries and the reverse', () => {
        const trusted = compileCidrs(['10.0.0.0/8', '::ffff:192.0.2.0/120', '2001:db8::/32']);
        assert.equal(trusted('10.1.2.3'), true);
        assert.equal(trusted('::ffff:10.1.2.3'), true);
        assert.equal(trusted('192.0.2.9'), true);
        assert.equal(trusted('2001:db8::5'), true);
        assert.equal(trusted('11.0.0.1'), false);
        assert.equal(trusted('2001:db9::5'), false);
        assert.equal(trusted('not-an-address'), false);
    });

    it('tells the address families apart by their text', () => {
        assert.equal(isIp('192.0.2.1'), true);
        assert.equal(isIp('192.0.2.01'), false);
        assert.equal(isIp('127.1'), false);
        assert.equal(isIp('fe80::1%eth0'), false);
        assert.equal(isIpv4('192.0.2.1'), true);
        assert.equal(isIpv4('::ffff:192.0.2.1'), false);
        assert.equal(isIpv6('::ffff:192.0.2.1'), true);
        assert.equal(isIpv6('2001:db8::1'), true);
        assert.equal(isIpv6('192.0.2.1'), false);
    });
});
