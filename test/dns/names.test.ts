// Unit tests for the DNS layer's pure parts: query-name validation, reverse names, server
// address syntax, resolv.conf parsing and the LRU map. No sockets.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { Lru } from '../../src/dns/lru.ts';
import { normalizeName, parseServer, reverseName } from '../../src/dns/names.ts';
import { parseResolvConf, systemServers } from '../../src/dns/system.ts';

describe('normalizeName', () => {
    it('lower-cases and strips one trailing dot', () => {
        assert.equal(normalizeName('Sel1._DomainKey.Example.COM.', 'queryTxt'), 'sel1._domainkey.example.com');
        assert.equal(normalizeName('_dmarc.example.com', 'queryTxt'), '_dmarc.example.com');
    });

    it('enforces RFC 1035 limits with EBADNAME', () => {
        const label63 = 'a'.repeat(63);
        assert.equal(normalizeName(`${label63}.test`, 'queryA'), `${label63}.test`);
        const name253 = `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(61)}`;
        assert.equal(name253.length, 253);
        assert.equal(normalizeName(name253, 'queryA'), name253);
        for (const bad of [
            '',
            '.',
            '..',
            'a..b',
            '.a',
            `${'a'.repeat(64)}.test`,
            `${name253}x`,
            'tab\there',
            'back\\slash',
        ]) {
            assert.throws(
                () => normalizeName(bad, 'queryA'),
                (err: Error & { code?: string; syscall?: string }) =>
                    err.code === 'EBADNAME' && err.syscall === 'queryA',
                JSON.stringify(bad),
            );
        }
    });
});

describe('reverseName', () => {
    it('builds in-addr.arpa and ip6.arpa names', () => {
        assert.equal(reverseName('192.0.2.1'), '1.2.0.192.in-addr.arpa');
        assert.equal(
            reverseName('2001:db8::1'),
            '1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa',
        );
        assert.equal(reverseName('fe80::1%eth0')?.endsWith('.0.8.e.f.ip6.arpa'), true);
        assert.equal(reverseName('example.com'), null);
        assert.equal(reverseName('300.1.1.1'), null);
    });
});

describe('parseServer', () => {
    it('accepts IP, IPv4:PORT, IPv6, [IPv6] and [IPv6]:PORT', () => {
        assert.deepEqual(parseServer('127.0.0.1'), { host: '127.0.0.1', port: 53, family: 4 });
        assert.deepEqual(parseServer('127.0.0.1:5353'), { host: '127.0.0.1', port: 5353, family: 4 });
        assert.deepEqual(parseServer('::1'), { host: '::1', port: 53, family: 6 });
        assert.deepEqual(parseServer('[::1]'), { host: '::1', port: 53, family: 6 });
        assert.deepEqual(parseServer('[2001:DB8::53]:5300'), { host: '2001:db8::53', port: 5300, family: 6 });
    });

    it('writes the address in its canonical form, the form answers come from', () => {
        for (const text of ['[0:0:0:0:0:0:0:1]:53', '[::0001]:53', '0:0:0:0:0:0:0:1', '[0000::1]']) {
            assert.deepEqual(parseServer(text), { host: '::1', port: 53, family: 6 }, text);
        }
        assert.deepEqual(parseServer('[2001:DB8:0:0:0:0:0:53]:5300'), { host: '2001:db8::53', port: 5300, family: 6 });
        assert.deepEqual(parseServer('[::ffff:127.0.0.1]:5353'), { host: '127.0.0.1', port: 5353, family: 4 });
    });

    it('keeps the zone of a link-local address, as written, after the canonical address', () => {
        // the kernel reports an answer from a link-local server as fe80::…%interface
        for (const text of ['[FE80:0:0:0:0:0:0:1%eth0]:53', '[fe80::0001%eth0]', 'fe80:0::1%eth0']) {
            assert.deepEqual(parseServer(text), { host: 'fe80::1%eth0', port: 53, family: 6 }, text);
        }
        assert.deepEqual(parseServer('[FEBF::53%Br-LAN]:5353'), { host: 'febf::53%Br-LAN', port: 5353, family: 6 });
        // any other address's answers come without a zone: the address alone
        assert.deepEqual(parseServer('[0:0::1%lo]:53'), { host: '::1', port: 53, family: 6 });
        assert.deepEqual(parseServer('[FEC0::1%eth0]:53'), { host: 'fec0::1', port: 53, family: 6 });
    });

    it('rejects names and bad ports', () => {
        for (const bad of ['dns.example.com', 'localhost:53', '127.0.0.1:0', '127.0.0.1:70000', '[127.0.0.1]:53', '']) {
            assert.throws(() => parseServer(bad), /not a DNS server address/, bad);
        }
    });
});

describe('system resolvers', () => {
    it('reads nameserver lines from resolv.conf', () => {
        const text = [
            '# generated',
            'search example.com',
            'nameserver 10.0.0.53',
            'nameserver   2001:db8::53   # v6',
            '; nameserver 10.9.9.9',
            'nameserver bogus',
            'options ndots:2',
        ].join('\n');
        assert.deepEqual(parseResolvConf(text), ['10.0.0.53', '[2001:db8::53]:53']);
    });

    it('reads the first word after nameserver and ignores the rest of the line, as glibc', () => {
        assert.deepEqual(parseResolvConf('nameserver 10.0.0.2 extra\nnameserver\t10.0.0.3\tmore words\n'), [
            '10.0.0.2',
            '10.0.0.3',
        ]);
    });

    it('takes at most three servers, as glibc', () => {
        // MAXNS (resolv.conf(5)): six servers that do not answer would cost 6 × timeout × tries
        const six = [1, 2, 3, 4, 5, 6].map((n) => `nameserver 10.0.0.${n}`);
        assert.deepEqual(parseResolvConf(six.join('\n')), ['10.0.0.1', '10.0.0.2', '10.0.0.3']);
        // a line glibc cannot read does not count
        const withBad = ['nameserver bogus', 'nameserver 10.0.0.1', 'nameserver ::1', 'nameserver 10.0.0.3'];
        assert.deepEqual(parseResolvConf([...withBad, 'nameserver 10.0.0.4'].join('\n')), [
            '10.0.0.1',
            '[::1]:53',
            '10.0.0.3',
        ]);
    });

    it('falls back to node:dns servers when resolv.conf is missing or empty', () => {
        const dir = mkdtempSync(join(tmpdir(), 'mailwarden-resolv-'));
        try {
            const empty = join(dir, 'resolv.conf');
            writeFileSync(empty, '# nothing\n');
            for (const path of [empty, join(dir, 'missing')]) {
                const servers = systemServers(path);
                assert.ok(servers.length > 0);
            }
            writeFileSync(empty, 'nameserver 127.0.0.53\n');
            assert.deepEqual(systemServers(empty), ['127.0.0.53']);
        } finally {
            rmSync(dir, { recursive: true, force: true });
        }
    });
});

describe('Lru', () => {
    it('evicts the least recently used entry and expires by the given clock', () => {
        const lru = new Lru<number>(2);
        lru.set('a', 1, 100);
        lru.set('b', 2, 100);
        assert.equal(lru.get('a', 0), 1);
        lru.set('c', 3, 100);
        assert.equal(lru.has('b'), false);
        assert.equal(lru.get('a', 99), 1);
        assert.equal(lru.get('a', 100), undefined);
        assert.equal(lru.size, 1);
    });

    it('tells when an entry expires while it is fresh, without changing which entry goes first', () => {
        const lru = new Lru<number>(2);
        lru.set('a', 1, 100);
        lru.set('b', 2, 50);
        assert.equal(lru.expiresAt('a', 0), 100);
        assert.equal(lru.expiresAt('b', 49), 50);
        assert.equal(lru.expiresAt('b', 50), undefined);
        assert.equal(lru.expiresAt('c', 0), undefined);
        // reading the expiry of 'a' did not make it the most recent: it still goes first
        lru.set('c', 3, 100);
        assert.equal(lru.has('a'), false);
        assert.equal(lru.has('b'), true);
    });

    it('keeps the sum of sizes under the byte bound and refuses a value over 1/64 of it', () => {
        const lru = new Lru<string>(100, 6400);
        for (let i = 0; i < 80; i++) lru.set(`k${i}`, 'v', 1000, 100);
        assert.equal(lru.size, 64);
        assert.equal(lru.bytes, 6400);
        assert.equal(lru.has('k15'), false);
        assert.equal(lru.has('k16'), true);
        lru.set('k79', 'w', 1000, 50); // a new value under a key already held replaces its size
        assert.equal(lru.bytes, 6350);
        lru.set('k79', 'x', 1000, 101); // over 6400 / 64: not kept, and the old value goes
        assert.equal(lru.has('k79'), false);
        assert.equal(lru.bytes, 6300);
        assert.equal(lru.get('k16', 1000), undefined); // expired on read
        assert.equal(lru.bytes, 6200);
        lru.clear();
        assert.equal(lru.bytes, 0);
    });

    it('sweep() drops expired entries, a few per call, going round all of them', () => {
        const lru = new Lru<number>(100, 1e6);
        for (let i = 0; i < 30; i++) lru.set(`k${i}`, i, i % 2 === 0 ? 10 : 1000, 10);
        lru.sweep(10, 8);
        assert.equal(lru.size, 26);
        for (let round = 0; round < 4; round++) lru.sweep(10, 8);
        assert.equal(lru.size, 15);
        assert.equal(lru.bytes, 150);
        assert.equal(lru.has('k1'), true);
    });

    it('keeps nothing with a bound of 0', () => {
        const lru = new Lru<number>(0);
        lru.set('a', 1, 100);
        assert.equal(lru.size, 0);
    });
});
