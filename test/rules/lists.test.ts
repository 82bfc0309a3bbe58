/**
 * List files at scale: 100,000-entry ip, domain and address lists generated in a temporary
 * folder load quickly (the time is printed, not asserted) and answer membership correctly;
 * pattern lists are bounded, and a list over the bound is refused cleanly. Also the IP
 * parser and the range set on their own.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { loadRuleSet } from '../../src/rules/index.ts';
import { IpSet, formatIp, parseIp, parseRange, type IpRange } from '../../src/net/ip.ts';
import { MAX_PATTERN_ENTRIES, buildList, unbalanced } from '../../src/rules/lists.ts';
import { cleanup, folderWith, seeded } from './helpers.ts';

after(cleanup);

const N = 100_000;

function timed<T>(fn: () => T): { value: T; ms: number } {
    const start = process.hrtime.bigint();
    const value = fn();
    return { value, ms: Number(process.hrtime.bigint() - start) / 1e6 };
}

function v4(n: number): string {
    return `${(n >>> 24) & 255}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
}

describe('100k-entry lists', () => {
    const rand = seeded(42);

    it('ip: IPv4 addresses, IPv4 /24 ranges and IPv6 /64 ranges', (t) => {
        const singles = new Set<number>();
        const nets24 = new Set<number>();
        const nets64 = new Set<string>();
        const lines: string[] = ['# generated'];
        while (lines.length <= N) {
            const k = lines.length % 4;
            if (k < 2) {
                const n = (0x0b000000 + Math.floor(rand() * 0x00ffffff)) >>> 0; // 11.0.0.0/8
                singles.add(n);
                lines.push(v4(n));
            } else if (k === 2) {
                const n = (0x0c000000 + Math.floor(rand() * 0xffff) * 256) >>> 0; // 12.0.0.0/8 in /24s
                nets24.add(n >>> 8);
                lines.push(`${v4(n)}/24`);
            } else {
                const a = Math.floor(rand() * 0xffff).toString(16);
                const b = Math.floor(rand() * 0xffff).toString(16);
                nets64.add(`${a}:${b}`);
                lines.push(`2001:db8:${a}:${b}::/64`);
            }
        }
        const { value, ms } = timed(() => buildList('ip', lines.join('\n')));
        t.diagnostic(`ip list: ${N} entries built in ${ms.toFixed(0)} ms`);
        assert.deepEqual(value.problems, []);
        assert.equal(value.matcher.size, N);
        const list = value.matcher;
        let checked = 0;
        for (const n of [...singles].slice(0, 2000)) {
            assert.equal(list.has(v4(n)), true);
            assert.equal(list.has(`::ffff:${v4(n)}`), true, 'IPv4-mapped form');
            checked++;
        }
        for (let i = 0; i < 5000; i++) {
            const n = (0x0b000000 + Math.floor(rand() * 0x00ffffff)) >>> 0;
            assert.equal(list.has(v4(n)), singles.has(n), v4(n));
            const m = (0x0c000000 + Math.floor(rand() * 0x00ffffff)) >>> 0;
            assert.equal(list.has(v4(m)), nets24.has(m >>> 8), v4(m));
            const a = Math.floor(rand() * 0xffff).toString(16);
            const b = Math.floor(rand() * 0xffff).toString(16);
            assert.equal(list.has(`2001:db8:${a}:${b}:1:2:3:4`), nets64.has(`${a}:${b}`));
            checked += 3;
        }
        for (const [a, b] of [...nets64].slice(0, 500).map((s) => s.split(':'))) {
            assert.equal(list.has(`2001:DB8:${a}:${b}:ffff:ffff:ffff:ffff`), true);
        }
        assert.equal(list.has('13.0.0.1'), false);
        assert.equal(list.has('not an ip'), false);
        t.diagnostic(`ip list: ${checked} lookups checked against a reference`);
    });

    it('domain: an entry matches itself and its subdomains', (t) => {
        const domains = new Set<string>();
        const lines: string[] = [];
        while (domains.size < N) {
            const d = `d${Math.floor(rand() * 1e9).toString(36)}.zone${domains.size % 97}.example`;
            if (domains.has(d)) continue;
            domains.add(d);
            lines.push(domains.size % 10 === 0 ? `${d.toUpperCase()}.` : d);
        }
        const { value, ms } = timed(() => buildList('domain', lines.join('\n')));
        t.diagnostic(`domain list: ${N} entries built in ${ms.toFixed(0)} ms`);
        assert.deepEqual(value.problems, []);
        assert.equal(value.matcher.size, N);
        const list = value.matcher;
        for (const d of [...domains].slice(0, 3000)) {
            assert.equal(list.has(d), true);
            assert.equal(list.has(`mail.${d}`), true);
            assert.equal(list.has(`a.b.c.${d.toUpperCase()}.`), true);
            assert.equal(list.has(`x${d}`), false, 'a longer label is not a subdomain');
            assert.equal(list.has(d.slice(d.indexOf('.') + 1)), false, 'a parent is not covered');
        }
        assert.equal(list.has(''), false);
    });

    it('domain: an IDN entry covers a subdomain whose other labels IDNA refuses, and a very long one', () => {
        const list = buildList('domain', 'évil.example\nbank.example\n').matcher;
        assert.equal(list.has('mail.évil.example'), true);
        assert.equal(list.has('xn--zz.évil.example'), true, 'read as xn--zz.xn--vil-9la.example');
        assert.equal(list.has('x|y.ÉVIL.example'), true);
        assert.equal(list.has(`${'a.'.repeat(8000)}bank.example`), true);
        assert.equal(list.has(`${'a.'.repeat(8000)}other.example`), false);
    });

    it('address: exact addresses and @domain entries', (t) => {
        const addresses: string[] = [];
        const lines: string[] = [];
        for (let i = 0; i < N; i++) {
            if (i % 10 === 0) {
                lines.push(`@whole${i}.example`);
            } else {
                const a = `user${i}@host${i % 1000}.example`;
                addresses.push(a);
                lines.push(i % 7 === 0 ? a.toUpperCase() : a);
            }
        }
        const { value, ms } = timed(() => buildList('address', lines.join('\n')));
        t.diagnostic(`address list: ${N} entries built in ${ms.toFixed(0)} ms`);
        assert.deepEqual(value.problems, []);
        assert.equal(value.matcher.size, N);
        const list = value.matcher;
        for (const a of addresses.slice(0, 5000)) {
            assert.equal(list.has(a), true);
            assert.equal(list.has(a.toUpperCase()), true);
            assert.equal(list.has(`x${a}`), false);
        }
        assert.equal(list.has('anyone@whole10.example'), true);
        assert.equal(list.has('anyone@WHOLE990.example.'), true);
        assert.equal(list.has('anyone@sub.whole10.example'), false, '@domain is exact');
        assert.equal(list.has('user1@host2.example'), false);
    });

    it('loads a rules folder declaring all three through loadRuleSet in under a second each', (t) => {
        const ips = Array.from({ length: N }, (_, i) => v4((0x0b000000 + i * 7) >>> 0));
        const doms = Array.from({ length: N }, (_, i) => `n${i}.example`);
        const addrs = Array.from({ length: N }, (_, i) => `u${i}@example.com`);
        const dir = folderWith({
            'lists/ips.txt': ips.join('\n'),
            'lists/domains.txt': doms.join('\n'),
            'lists/addresses.txt': addrs.join('\n'),
            '10-lists.yaml': [
                'lists:',
                '  ips: { type: ip, file: lists/ips.txt }',
                '  domains: { type: domain, file: lists/domains.txt }',
                '  addresses: { type: address, file: lists/addresses.txt }',
                'rules:',
                '  - { id: ip, stage: connect, when: { client.ip: { list: ips } }, action: reject }',
                '  - { id: sender, stage: mail, when: { mail.from: { list: addresses } }, action: reject }',
                '  - { id: domain, stage: mail, when: { mail.from.domain: { list: domains } }, action: tempfail }',
            ].join('\n'),
        });
        const { value: set, ms } = timed(() => loadRuleSet(dir, { softReject: false }));
        t.diagnostic(`rules folder with 3 × ${N} list entries loaded in ${ms.toFixed(0)} ms`);
        assert.deepEqual(
            set.lists.map((l) => [l.name, l.type, l.entries]),
            [
                ['ips', 'ip', N],
                ['domains', 'domain', N],
                ['addresses', 'address', N],
            ],
        );
        assert.equal(set.decide('connect', { 'client.ip': ips[99_999]! }).action, 'reject');
        assert.equal(set.decide('connect', { 'client.ip': '11.0.0.1' }).action, 'accept');
        assert.equal(set.decide('mail', { 'mail.from': 'U77@Example.com' }).action, 'reject');
        assert.equal(
            set.decide('mail', { 'mail.from': 'x@y', 'mail.from.domain': 'mx.n5.example' }).action,
            'tempfail',
        );
        const lookups = timed(() => {
            for (let i = 0; i < 100_000; i++) set.decide('connect', { 'client.ip': ips[i]! });
        });
        t.diagnostic(`100000 connect decisions against the 100k ip list in ${lookups.ms.toFixed(0)} ms`);
    });
});

describe('pattern lists', () => {
    it(`load ${MAX_PATTERN_ENTRIES} entries and match correctly`, (t) => {
        const lines = Array.from({ length: MAX_PATTERN_ENTRIES }, (_, i) =>
            i % 2 === 0 ? `^dsl-${i}-[0-9]+\\.isp\\.example$` : `spam${i}(?:casino|pills)`,
        );
        const { value, ms } = timed(() => buildList('pattern', lines.join('\n')));
        t.diagnostic(`pattern list: ${MAX_PATTERN_ENTRIES} entries compiled in ${ms.toFixed(0)} ms`);
        assert.deepEqual(value.problems, []);
        const list = value.matcher;
        assert.equal(list.size, MAX_PATTERN_ENTRIES);
        assert.equal(list.has('DSL-1998-42.ISP.example'), true);
        assert.equal(list.has('dsl-1998-42.isp.example.org'), false);
        assert.equal(list.has('dsl-1999-42.isp.example'), false);
        assert.equal(list.has('buy SPAM1999CASINO now'), true);
        assert.equal(list.has('spam1998casino'), false);
        const m = timed(() => {
            for (let i = 0; i < 2000; i++) list.has(`host-${i}.customers.example.net`);
        });
        t.diagnostic(`2000 non-matching lookups in ${m.ms.toFixed(0)} ms`);
    });

    it(`refuse more than ${MAX_PATTERN_ENTRIES} entries at once, without compiling them`, (t) => {
        const lines = Array.from({ length: N }, (_, i) => `^p${i}$`);
        const { value, ms } = timed(() => buildList('pattern', lines.join('\n')));
        t.diagnostic(`a ${N}-entry pattern list refused in ${ms.toFixed(0)} ms`);
        assert.deepEqual(value.problems, [
            {
                line: MAX_PATTERN_ENTRIES + 1,
                message: `a pattern list holds at most ${MAX_PATTERN_ENTRIES} entries (this one has ${N}); use a domain, address or ip list for plain values`,
            },
        ]);
    });

    it('cannot be joined across lines by unbalanced parentheses or a trailing backslash', () => {
        assert.equal(unbalanced('a)|(b'), 'unexpected )');
        assert.equal(unbalanced('(a'), 'missing )');
        assert.equal(unbalanced('a\\'), 'trailing backslash');
        assert.equal(unbalanced('[)(]'), null);
        assert.equal(unbalanced('[]()]x'), null);
        assert.equal(unbalanced('[^]()]x'), null);
        assert.equal(unbalanced('[[:alpha:])]'), null);
        assert.equal(unbalanced('\\Q(((\\E(x)'), null);
        assert.equal(unbalanced('\\(\\)'), null);
        const built = buildList('pattern', 'a)|(b\nok\n');
        assert.deepEqual(built.problems, [{ line: 1, message: '"a)|(b" is not a valid RE2 pattern: unexpected )' }]);
        assert.equal(built.matcher.has('ok'), true);
        assert.equal(built.matcher.has('b'), false);
    });

    it('refuse an entry that matches every value, naming it, and keep one that matches the empty value only', () => {
        const built = buildList('pattern', '^spam@x\\.example$\n@partner\\.example$|\n^$\n');
        assert.deepEqual(built.problems, [
            {
                line: 2,
                message: '"@partner\\.example$|" matches every value (an empty alternative, or everything optional)',
            },
        ]);
        const fine = buildList('pattern', '^spam@x\\.example$\n^$\n');
        assert.deepEqual(fine.problems, []);
        assert.equal(fine.matcher.has(''), true);
        assert.equal(fine.matcher.has('ham@x.example'), false);
    });

    it('keep entries that together, not one by one, match every value', () => {
        // ^$ matches the empty value, . every other one: each is what the operator wrote
        const built = buildList('pattern', '^$\n.\n');
        assert.deepEqual(built.problems, []);
        assert.equal(built.matcher.has(''), true);
        assert.equal(built.matcher.has('anyone@example.org'), true);
    });

    it('report at most 20 bad entries, then how many more', () => {
        const built = buildList('ip', Array.from({ length: 30 }, (_, i) => `bad${i}`).join('\n'));
        assert.equal(built.problems.length, 21);
        assert.deepEqual(built.problems[20], { line: 20, message: '…and 10 more bad entries' });
    });
});

describe('IP parsing and ranges', () => {
    it('parses IPv4 strictly', () => {
        assert.deepEqual(parseIp('192.0.2.1'), { family: 4, value: 0xc0000201 });
        for (const bad of [
            '192.0.2',
            '192.0.2.1.5',
            '192.0.2.256',
            '192.0.02.1',
            '1.2.3.',
            '',
            ' 1.2.3.4',
            '1.2.3.4/32',
        ]) {
            assert.equal(parseIp(bad), null, bad);
        }
    });

    it('parses every IPv6 text form and formats it per RFC 5952', () => {
        const forms: [string, string][] = [
            ['2001:db8::1', '2001:db8::1'],
            ['2001:DB8:0:0:0:0:0:1', '2001:db8::1'],
            ['::', '::'],
            ['::1', '::1'],
            ['1::', '1::'],
            ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'],
            ['2001:0db8:0000:0001:0001:0001:0001:0001', '2001:db8:0:1:1:1:1:1'],
            ['64:ff9b::192.0.2.33', '64:ff9b::c000:221'],
        ];
        for (const [text, canonical] of forms) {
            const ip = parseIp(text);
            assert.ok(ip, text);
            assert.equal(formatIp(ip), canonical, text);
        }
        for (const bad of [
            '2001:db8::1::2',
            ':1',
            '1:',
            '12345::',
            '1:2:3:4:5:6:7:8:9',
            'fe80::1%eth0',
            'g::1',
            '::ffff:1.2.3',
        ]) {
            assert.equal(parseIp(bad), null, bad);
        }
        assert.deepEqual(parseIp('::ffff:192.0.2.1'), { family: 4, value: 0xc0000201 });
        assert.deepEqual(parseIp('::FFFF:c000:0201'), { family: 4, value: 0xc0000201 });
    });

    it('parses ranges and refuses host bits', () => {
        assert.deepEqual(parseRange('10.0.0.0/8'), { family: 4, lo: 0x0a000000, hi: 0x0affffff });
        assert.deepEqual(parseRange('0.0.0.0/0'), { family: 4, lo: 0, hi: 0xffffffff });
        assert.deepEqual(parseRange('::ffff:10.0.0.0/104'), { family: 4, lo: 0x0a000000, hi: 0x0affffff });
        assert.deepEqual(parseRange('10.0.0.1/8'), { error: '"10.0.0.1/8" has host bits set (write 10.0.0.0/8)' });
        assert.deepEqual(parseRange('2001:db8::1/32'), {
            error: '"2001:db8::1/32" has host bits set (write 2001:db8::/32)',
        });
        assert.ok('error' in parseRange('::ffff:10.0.0.0/90'));
        assert.ok('error' in parseRange('10.0.0.0/'));
    });

    it('merges overlapping and adjacent ranges', () => {
        const ranges = ['10.0.0.0/25', '10.0.0.128/25', '10.0.0.64/26', '10.0.2.0/24', '::/0'].map(
            (r) => parseRange(r) as IpRange,
        );
        const set = new IpSet(ranges);
        for (const [ip, want] of [
            ['10.0.0.0', true],
            ['10.0.0.255', true],
            ['10.0.1.0', false],
            ['10.0.2.9', true],
            ['9.255.255.255', false],
            ['2001:db8::1', true],
            ['::ffff:10.0.1.1', false],
        ] as const) {
            assert.equal(set.has(ip), want, ip);
        }
    });
});
