/**
 * Connection slots per client network: IPv4 counts per /24 and IPv6 per /48 (IPv4-mapped IPv6
 * as IPv4), a network gets at most `limit` slots, a release gives one back exactly once.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { clientNetwork, createNetworkSlots } from '../../src/net/network-slots.ts';

describe('client networks', () => {
    it('are the /24 of an IPv4 address and the /48 of an IPv6 address', () => {
        assert.equal(clientNetwork('192.0.2.77'), '192.0.2.0/24');
        assert.equal(clientNetwork('::ffff:192.0.2.77'), '192.0.2.0/24');
        assert.equal(clientNetwork('2001:db8:1:2:3::9'), '2001:db8:1::/48');
        assert.equal(clientNetwork('2001:DB8:1:ffff::1'), '2001:db8:1::/48');
        assert.notEqual(clientNetwork('2001:db8:2::1'), clientNetwork('2001:db8:1::1'));
    });
});

describe('network slots', () => {
    it('give a network at most `limit` slots and leave other networks alone', () => {
        const slots = createNetworkSlots(2);
        const a = slots.acquire('192.0.2.1');
        const b = slots.acquire('192.0.2.200');
        assert.ok(a && b);
        assert.equal(slots.acquire('192.0.2.3'), null);
        assert.equal(slots.acquire('::ffff:192.0.2.4'), null, 'IPv4-mapped counts as IPv4');
        assert.ok(slots.acquire('192.0.3.1'), 'the next /24 is another network');
        assert.equal(slots.count('192.0.2.9'), 2);
        assert.equal(slots.networks, 2);
    });

    it('count IPv6 clients per /48', () => {
        const slots = createNetworkSlots(1);
        assert.ok(slots.acquire('2001:db8:1:1::1'));
        assert.equal(slots.acquire('2001:db8:1:ffff::2'), null, 'another /64 of the same /48');
        assert.ok(slots.acquire('2001:db8:2::1'));
    });

    it('take a slot back once per release, however often release is called', () => {
        const slots = createNetworkSlots(2);
        const a = slots.acquire('198.51.100.1')!;
        const b = slots.acquire('198.51.100.2')!;
        a.release();
        a.release();
        assert.equal(slots.count('198.51.100.3'), 1);
        const c = slots.acquire('198.51.100.3');
        assert.ok(c);
        assert.equal(slots.acquire('198.51.100.4'), null, 'the double release did not free a second slot');
        b.release();
        c.release();
        assert.equal(slots.networks, 0, 'an empty network is forgotten');
    });
});
