// Sender binding: the mayUse matrix (exact addresses, @domain, case, IDN, quoting, subaddresses,
// the null sender), header From:/Sender: parsing (RFC 5322 section 3.4) and checkHeaderSenders
// (Resent-From:/Resent-Sender: included).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
    checkHeaderSenders,
    compileSenderPolicy,
    mayUse,
    normalizeAddress,
    parseAddresses,
    parseSendAsEntry,
} from '../../src/submission/sender-policy.ts';
import { mailauthAddresses } from '../../src/sender-auth/mailauth-addresses.ts';

describe('mayUse', () => {
    const alice = compileSenderPolicy('alice@example.com', [
        'alice@example.com',
        'Alice.Smith@Example.COM',
        '@example.org',
        'sales@bücher.example',
    ]);
    const matrix: [string, boolean, string][] = [
        ['alice@example.com', true, 'exact'],
        ['ALICE@EXAMPLE.COM', true, 'case of local part and domain'],
        ['alice.smith@example.com', true, 'entry written in mixed case'],
        ['alice@example.com.', true, 'trailing dot of the domain'],
        ['<alice@example.com>', true, 'angle brackets'],
        ['"alice"@example.com', true, 'quoted local part'],
        ['alice+news@example.com', true, 'subaddress of an allowed address'],
        ['alice+a+b@example.com', true, 'subaddress with a second delimiter'],
        ['alice.smith+x@example.com', true, 'subaddress of the second address'],
        ['anyone@example.org', true, '@domain wildcard'],
        ['x+y@EXAMPLE.org', true, '@domain wildcard, any case'],
        ['sales@xn--bcher-kva.example', true, 'IDN entry, A-label address'],
        ['sales@BÜCHER.example', true, 'IDN entry, U-label address'],
        ['bob@example.com', false, 'another user at the same domain'],
        ['alice@sub.example.org', false, '@domain does not cover subdomains'],
        ['alice@example.net', false, 'same local part, other domain'],
        ['+alice@example.com', false, 'a leading delimiter is not a subaddress'],
        ['alicex@example.com', false, 'prefix only'],
        ['', false, 'null sender'],
        ['<>', false, 'null sender in brackets'],
        ['alice', false, 'no domain'],
        ['alice@', false, 'empty domain'],
        ['@example.org', false, 'no local part'],
        ['al ice@example.com', false, 'not an address'],
        ['alice@exa mple.com', false, 'bad domain'],
    ];
    for (const [address, expected, why] of matrix) {
        it(`${expected ? 'allows' : 'refuses'} ${JSON.stringify(address)}: ${why}`, () => {
            assert.equal(mayUse('alice@example.com', address, alice), expected);
        });
    }

    it('takes the login case-insensitively but refuses a policy of another login', () => {
        assert.equal(mayUse('ALICE@example.com', 'alice@example.com', alice), true);
        assert.equal(mayUse('bob@example.com', 'alice@example.com', alice), false);
    });

    it('without a sendAs list, the login itself (and its subaddresses) only', () => {
        const p = compileSenderPolicy('carol@example.com', null);
        assert.equal(mayUse('carol@example.com', 'carol@example.com', p), true);
        assert.equal(mayUse('carol@example.com', 'carol+x@example.com', p), true);
        assert.equal(mayUse('carol@example.com', 'dave@example.com', p), false);
        const plain = compileSenderPolicy('carol', null);
        assert.equal(mayUse('carol', 'carol@example.com', plain), false, 'a login that is no address allows nothing');
    });

    it('an empty sendAs list allows nothing', () => {
        const p = compileSenderPolicy('eve@example.com', []);
        assert.equal(mayUse('eve@example.com', 'eve@example.com', p), false);
    });

    it('honours the recipient delimiter setting', () => {
        const none = compileSenderPolicy('alice@example.com', ['alice@example.com'], { recipientDelimiter: '' });
        assert.equal(mayUse('alice@example.com', 'alice+x@example.com', none), false);
        const dash = compileSenderPolicy('alice@example.com', ['alice@example.com'], { recipientDelimiter: '-+' });
        assert.equal(mayUse('alice@example.com', 'alice-x@example.com', dash), true);
        assert.equal(mayUse('alice@example.com', 'alice+x@example.com', dash), true);
        assert.equal(mayUse('alice@example.com', 'alice_x@example.com', dash), false);
    });

    it('address literals compare as written', () => {
        const p = compileSenderPolicy('ops', ['root@[192.0.2.1]']);
        assert.equal(mayUse('ops', 'root@[192.0.2.1]', p), true);
        assert.equal(mayUse('ops', 'root@[192.0.2.2]', p), false);
    });
});

describe('parseSendAsEntry and normalizeAddress', () => {
    it('reads addresses and @domain entries', () => {
        assert.deepEqual(parseSendAsEntry('Alice@Example.COM'), { kind: 'address', address: 'alice@example.com' });
        assert.deepEqual(parseSendAsEntry('@Example.ORG.'), { kind: 'domain', domain: 'example.org' });
        assert.equal(parseSendAsEntry('example.org'), null);
        assert.equal(parseSendAsEntry('@'), null);
        assert.equal(parseSendAsEntry('a@@b'), null);
    });

    it('normalises quoting and case', () => {
        assert.equal(normalizeAddress('"John.Doe"@Example.com'), 'john.doe@example.com');
        assert.equal(normalizeAddress('"john doe"@example.com'), 'john doe@example.com');
        assert.equal(normalizeAddress('"a\\"b"@example.com'), 'a"b@example.com');
        assert.equal(normalizeAddress('a..b@example.com'), null);
    });

    it('writes an address literal in one form, IPv4-mapped IPv6 as IPv4', () => {
        for (const a of ['a@[IPv6:2001:db8::1]', 'a@[IPv6:2001:DB8:0:0::1]', 'a@[ipv6:2001:db8:0:0:0:0:0:1]']) {
            assert.equal(normalizeAddress(a), 'a@[ipv6:2001:db8::1]', a);
        }
        for (const a of ['b@[192.0.2.1]', 'b@[IPv6:::ffff:192.0.2.1]', 'b@[IPv6:::FFFF:c000:201]']) {
            assert.equal(normalizeAddress(a), 'b@[192.0.2.1]', a);
        }
        const policy = compileSenderPolicy('b', ['b@[IPv6:::ffff:192.0.2.1]']);
        assert.equal(mayUse('b', 'b@[192.0.2.1]', policy), true);
    });
});

describe('parseAddresses (RFC 5322 section 3.4)', () => {
    const cases: [string, string[] | null][] = [
        ['alice@example.com', ['alice@example.com']],
        ['Alice <alice@example.com>', ['alice@example.com']],
        ['"Smith, Alice" <alice@example.com>', ['alice@example.com']],
        ['=?utf-8?q?Al=C3=AFce?= <alice@example.com>', ['alice@example.com']],
        ['John Q. Public <jqp@example.com>', ['jqp@example.com']],
        ['alice@example.com (Alice (the first))', ['alice@example.com']],
        ['(comment) Alice (x) <alice(y)@(z)example.com>', ['alice@example.com']],
        ['alice@example.com, Bob <bob@example.net>', ['alice@example.com', 'bob@example.net']],
        ['a@example.com,, b@example.com', ['a@example.com', 'b@example.com']],
        ['Team: a@example.com, B <b@example.com>;', ['a@example.com', 'b@example.com']],
        ['undisclosed-recipients:;', []],
        ['Team: a@example.com;, c@example.com', ['a@example.com', 'c@example.com']],
        ['"john doe"@example.com', ['"john doe"@example.com']],
        ['"john"@example.com', ['john@example.com']],
        ['<@relay.example:alice@example.com>', ['alice@example.com']],
        ['Alice\r\n <alice@example.com>', ['alice@example.com']],
        ['alice@[192.0.2.1]', ['alice@[192.0.2.1]']],
        ['Jörg <jörg@bücher.example>', ['jörg@bücher.example']],
        ['alice@example.com <bob@evil.example>', ['bob@evil.example']],
        ['', []],
        ['Alice', null],
        ['Alice <alice@example.com', null],
        ['<alice@example.com> trailing', null],
        ['Smith, Alice <alice@example.com>', null],
        ['alice@example.com;', null],
        ['"unterminated <alice@example.com>', null],
        ['(unclosed alice@example.com', null],
        ['<>', null],
        ['a@b@c', null],
        ['Team: a@example.com', null],
        ['Outer: Inner: a@example.com;;', null],
        ['<@a.example,@b.example:alice@example.com>', ['alice@example.com']],
        ['<@a.example,,@[192.0.2.1]:alice@example.com>', ['alice@example.com']],
        ['<@a.example, bob@example.net>, <:alice@example.com>', null],
        ['<@a.example>, <:alice@example.com>', null],
        ['<@:alice@example.com>', null],
        ['[x, bob@example.net, y] <alice@example.com>', null],
        ['Alice [x] <alice@example.com>', null],
    ];
    for (const [value, expected] of cases) {
        it(`${JSON.stringify(value)} → ${JSON.stringify(expected)}`, () => {
            assert.deepEqual(parseAddresses(value), expected);
        });
    }
});

describe('checkHeaderSenders', () => {
    const policy = compileSenderPolicy('alice@example.com', ['alice@example.com', '@example.org']);
    const check = (from: string[], sender: string[] = []) =>
        checkHeaderSenders('alice@example.com', { from, sender }, policy);

    it('passes when every From mailbox (and Sender) is owned', () => {
        assert.deepEqual(check(['Alice <alice@example.com>']), { ok: true });
        assert.deepEqual(check(['alice@example.com, team@example.org']), { ok: true });
        assert.deepEqual(check(['a@example.org'], ['alice+x@example.com']), { ok: true });
    });

    it('names the first address that is not owned', () => {
        assert.deepEqual(check(['alice@example.com, boss@example.com']), {
            ok: false,
            reason: 'not-owned',
            field: 'From',
            address: 'boss@example.com',
        });
        assert.deepEqual(check(['alice@example.com'], ['bob@example.com']), {
            ok: false,
            reason: 'not-owned',
            field: 'Sender',
            address: 'bob@example.com',
        });
    });

    it('binds every Resent-From and Resent-Sender mailbox too, of every resent block', () => {
        const resent = (resentFrom: string[], resentSender: string[] = []) =>
            checkHeaderSenders(
                'alice@example.com',
                { from: ['alice@example.com'], sender: [], resentFrom, resentSender },
                policy,
                mailauthAddresses,
            );
        assert.deepEqual(resent(['Alice <alice@example.com>'], ['a@example.org']), { ok: true });
        assert.deepEqual(resent(['alice@example.com', 'alice+x@example.com, team@example.org']), { ok: true });
        assert.deepEqual(resent(['CEO <ceo@example.com>']), {
            ok: false,
            reason: 'not-owned',
            field: 'Resent-From',
            address: 'ceo@example.com',
        });
        assert.deepEqual(resent(['alice@example.com', 'alice@example.com, ceo@example.com']), {
            ok: false,
            reason: 'not-owned',
            field: 'Resent-From',
            address: 'ceo@example.com',
        });
        assert.deepEqual(resent(['alice@example.com'], ['bob@example.com']), {
            ok: false,
            reason: 'not-owned',
            field: 'Resent-Sender',
            address: 'bob@example.com',
        });
        assert.deepEqual(resent(['<alice@example.com']), { ok: false, reason: 'malformed', field: 'Resent-From' });
        assert.deepEqual(resent([], ['alice@example.com (x\\) <boss@example.com>)']), {
            ok: false,
            reason: 'malformed',
            field: 'Resent-Sender',
        });
    });

    it('refuses more than one From field, or more than one Sender field, even when every address is owned', () => {
        assert.deepEqual(check(['alice@example.com', 'bob@example.com']), {
            ok: false,
            reason: 'several',
            field: 'From',
            count: 2,
        });
        assert.deepEqual(check(['alice@example.com', 'alice@example.com', 'a@example.org']), {
            ok: false,
            reason: 'several',
            field: 'From',
            count: 3,
        });
        assert.deepEqual(check(['alice@example.com'], ['alice@example.com', 'a@example.org']), {
            ok: false,
            reason: 'several',
            field: 'Sender',
            count: 2,
        });
    });

    it('refuses a field the other parser reads as other mailboxes', () => {
        const checked = (from: string, sender: string[] = []) =>
            checkHeaderSenders('alice@example.com', { from: [from], sender }, policy, mailauthAddresses);
        for (const from of [
            'alice@example.com (x\\) <boss@example.com>)',
            'alice@example.com (x (y) <boss@example.com>)',
        ]) {
            assert.deepEqual(mailauthAddresses(from).length > 0, true);
            assert.deepEqual(checked(from), { ok: false, reason: 'malformed', field: 'From' }, from);
        }
        assert.deepEqual(checked('alice@example.com', ['alice@example.com (x\\) <boss@example.com>)']), {
            ok: false,
            reason: 'malformed',
            field: 'Sender',
        });
        for (const from of [
            'Alice <alice@example.com>',
            '"Smith, Alice" <ALICE@example.com>',
            '=?utf-8?q?Al=C3=AFce?= <alice@example.com>',
            'alice@example.com (Alice)',
            '"john doe"@example.org',
            'Team: alice@example.com, a@example.org;',
            '<@relay.example:alice@example.com>',
        ]) {
            assert.deepEqual(checked(from), { ok: true }, from);
        }
    });

    it('fails closed on missing or malformed fields', () => {
        assert.deepEqual(check([]), { ok: false, reason: 'no-from', field: 'From' });
        assert.deepEqual(check(['undisclosed:;']), { ok: false, reason: 'no-from', field: 'From' });
        assert.deepEqual(check(['Alice <alice@example.com']), { ok: false, reason: 'malformed', field: 'From' });
    });
});
