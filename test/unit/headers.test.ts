/**
 * Header parsing, filtering and building. The parser reads field names as Postfix's is_header()
 * and DKIM relaxed canonicalisation do (`name *WSP ":"`, RFC 5322 sections 3.6.8 and 4.5.8) and
 * refuses, with the line number, every line that is neither a field nor a continuation; forged
 * own headers and A-R fields with our authserv-id in any spelling (RFC 8601 sections 2.2, 2.5
 * and 5) are removed; folding keeps lines short; values never carry CR/LF.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
    authservIdOf,
    filterIncomingFields,
    formatField,
    MAX_HEADER_FIELDS,
    parseHeaderSection,
    receivedField,
    rfc5322Date,
    sameAuthservId,
    verdictField,
    type RawField,
} from '../../src/headers.ts';
import { messageFacts } from '../../src/message-facts.ts';

const OUR_ID = 'mx.example.com';

/** The fields of a section that must parse. */
function fieldsOf(text: string | Buffer): readonly RawField[] {
    const parsed = parseHeaderSection(Buffer.isBuffer(text) ? text : Buffer.from(text, 'utf8'));
    assert.ok(parsed.ok, `parses: ${JSON.stringify(parsed)}`);
    return parsed.fields;
}

/** Names of the fields kept by the filter. */
function keptNames(text: string): string[] {
    return filterIncomingFields(fieldsOf(text), OUR_ID).kept.map((f) => f.name);
}

const section = Buffer.from(
    [
        'Received: from a by b;',
        '\tSun, 1 Nov 2026 00:00:00 +0000',
        'X-Mailwarden-Verdict: accept; rules=; score=0; id=forged',
        'x-mailwarden-quarantine: no',
        'Authentication-Results: mx.example.com; dmarc=pass',
        'Authentication-Results: (comment) MX.EXAMPLE.COM (c2); spf=pass',
        'Authentication-Results: other.example; spf=pass',
        'From: Alice <alice@example.org>',
        '',
    ].join('\r\n'),
);

describe('headers', () => {
    it('parses folded fields byte for byte', () => {
        const fields = fieldsOf(section);
        assert.equal(fields.length, 7);
        assert.equal(fields[0]!.name, 'Received');
        assert.deepEqual(
            fields.map((f) => f.line),
            [1, 3, 4, 5, 6, 7, 8],
        );
        assert.equal(Buffer.concat(fields.map((f) => f.raw)).toString(), section.toString());
    });
    it('finds the RFC 8601 authserv-id past comments and quoting', () => {
        assert.equal(authservIdOf(' (c) MX.Example.COM (x); spf=pass'), 'MX.Example.COM');
        assert.equal(authservIdOf(' mx.example.com 1; none'), 'mx.example.com');
        assert.equal(authservIdOf(' "mx\\.example.com" ; none'), 'mx.example.com');
        assert.equal(authservIdOf('\r\n (a (nested) comment)\r\n\t"mx.example.com."; none'), 'mx.example.com.');
        assert.equal(authservIdOf(' "open; none'), null);
        assert.equal(authservIdOf(' (open; none'), null);
        assert.equal(authservIdOf(' ; none'), null);
    });
    it('compares authserv-ids as host names: case, a trailing dot and U-labels do not matter', () => {
        assert.ok(sameAuthservId('MX.Example.COM.', 'mx.example.com'));
        assert.ok(sameAuthservId('mx.example.com', 'mx.example.com.'));
        assert.ok(sameAuthservId('mx\u3002example\u3002com', 'mx.example.com'));
        assert.ok(sameAuthservId('mx.example.com\u3002', 'mx.example.com'));
        assert.ok(sameAuthservId('mx.example.com\uff0e\uff0e', 'mx.example.com'));
        assert.ok(!sameAuthservId('mx.example.com.evil', 'mx.example.com'));
        assert.ok(!sameAuthservId('sub.mx.example.com', 'mx.example.com'));
    });
    it('removes our own headers and A-R fields with our authserv-id only', () => {
        const { kept, removed } = filterIncomingFields(fieldsOf(section), OUR_ID);
        assert.deepEqual(
            kept.map((f) => f.name),
            ['Received', 'Authentication-Results', 'From'],
        );
        assert.match(kept[1]!.raw.toString(), /other\.example/);
        assert.equal(removed.length, 4);
    });
    it('folds long values and strips CR/LF from values', () => {
        const text = formatField({ name: 'X-Test', value: `${'word '.repeat(40)}\r\nInjected: yes` });
        for (const line of text.split('\r\n').slice(0, -1)) assert.ok(line.length <= 78, line);
        assert.doesNotMatch(text, /\r\nInjected/);
        assert.ok(text.endsWith('\r\n'));
    });
    it('builds Received and verdict fields', () => {
        const r = receivedField({
            helo: 'client.example',
            ip: '192.0.2.1',
            ptr: null,
            hostname: 'mx.example.com',
            protocol: 'ESMTPS',
            id: 'abc',
            recipient: 'bob@example.com',
            tlsCipher: null,
            date: new Date(Date.UTC(2026, 10, 29, 1, 2, 3)),
        });
        assert.equal(
            r.value,
            'from client.example (unknown [192.0.2.1]) by mx.example.com (mailwarden) with ESMTPS id abc for <bob@example.com>; Sun, 29 Nov 2026 01:02:03 +0000',
        );
        assert.equal(verdictField('tag', ['a', 'b'], 3, 'xyz').value, 'tag; rules=a,b; score=3; id=xyz');
        assert.equal(rfc5322Date(new Date(Date.UTC(2026, 0, 5, 9, 8, 7))), 'Mon, 5 Jan 2026 09:08:07 +0000');
    });
    it('writes IPv6 client addresses with the IPv6: prefix', () => {
        const r = receivedField({
            helo: null,
            ip: '2001:db8::1',
            ptr: null,
            hostname: 'mx',
            protocol: 'SMTP',
            id: 'i',
            recipient: null,
            tlsCipher: null,
            date: new Date(0),
        });
        assert.match(r.value, /^from unknown \(unknown \[IPv6:2001:db8::1\]\) by mx/);
    });
});

describe('header section parser: field names as Postfix reads them', () => {
    for (const [line, name] of [
        ['From: a@example.org', 'From'],
        ['From : a@example.org', 'From'],
        ['From\t: a@example.org', 'From'],
        ['From \t  \t: a@example.org', 'From'],
        ['fROM:a@example.org', 'fROM'],
        ['X-Mailwarden-Verdict\t: accept', 'X-Mailwarden-Verdict'],
        ['Subject: Gr\u00fc\u00dfe \u2014 8-bit values are RFC 6532 text', 'Subject'],
        ["Odd!#$%&'*+-/=?^_`{|}~Name: x", "Odd!#$%&'*+-/=?^_`{|}~Name"],
    ] as const) {
        it(`${JSON.stringify(line)} is a ${name} field`, () => {
            const fields = fieldsOf(Buffer.from(`${line}\r\n continued\r\n`, 'utf8'));
            assert.equal(fields.length, 1);
            assert.equal(fields[0]!.name, name);
        });
    }

    const refused: readonly [string, string, number, string][] = [
        [
            'a section starting with a space',
            ' ; rules=allow; score=-100\r\nFrom: a@example.org\r\n',
            1,
            'leading-whitespace',
        ],
        ['a section starting with a tab', '\tx\r\nFrom: a@example.org\r\n', 1, 'leading-whitespace'],
        ['a section starting with white space only', ' \r\nFrom: a@example.org\r\n', 1, 'leading-whitespace'],
        [
            'a line without a colon between two From fields',
            'From : ceo@victim.test\r\nnot a header\r\nFrom: alice@example.com\r\n',
            2,
            'no-colon',
        ],
        ['a fold between name and colon', 'Subject: x\r\nFrom\r\n : a@example.org\r\n', 2, 'no-colon'],
        ['a name with a space inside', 'X Mailwarden-Verdict: accept\r\n', 1, 'invalid-name'],
        ['a name with text after white space', 'From x: a@example.org\r\n', 1, 'invalid-name'],
        ['an empty name', ': value\r\n', 1, 'invalid-name'],
        ['a name with an 8-bit byte', 'Subject: x\r\nX-Mailwarden-Verdict\u00a0: accept\r\n', 2, 'invalid-name'],
        ['a name with UTF-8', 'Subject: x\r\nFr\u00c3\u00b6m: a@example.org\r\n', 2, 'invalid-name'],
        ['a name with a control character', 'X-Mail\u0001warden-Verdict: accept\r\n', 1, 'invalid-name'],
        ['a name with DEL', 'From\u007f: a@example.org\r\n', 1, 'invalid-name'],
        // Postfix reads a line as a field from its first 2,048 bytes: past them, its section ends
        [
            'a name of 2,100 bytes',
            `From: a@example.org\r\nX-${'a'.repeat(2_100)}: v\r\nSubject: x\r\n`,
            2,
            'invalid-name',
        ],
        ['a colon past the 998th byte', `X-${'a'.repeat(994)}  : v\r\n`, 1, 'invalid-name'],
        ['an empty line inside', 'Subject: x\r\n\r\nFrom: a@example.org\r\n', 2, 'empty-line'],
        ['a bare LF', 'Subject: x\nFrom: a@example.org\r\n', 1, 'invalid-character'],
        ['a bare CR', 'Subject: x\rFrom: a@example.org\r\n', 1, 'invalid-character'],
        ['a NUL in a value', 'Subject: x\u0000y\r\n', 1, 'invalid-character'],
        [
            'a field folded past 100,000 bytes',
            `Subject: x\r\nFrom: a@example.org${'\r\n (comment)'.repeat(8500)}\r\nTo: b@example.org\r\n`,
            2,
            'field-too-long',
        ],
        ['a last Reply-To over 100,000 bytes', `Subject: x\r\nReply-To: ${'y'.repeat(100_000)}`, 2, 'field-too-long'],
        ['a Sender over 100,000 bytes', `sEnDeR: ${'y'.repeat(100_000)}\r\nSubject: x\r\n`, 1, 'field-too-long'],
    ];
    it(`takes ${MAX_HEADER_FIELDS} fields, folded ones counted once, and refuses at the first field past them`, () => {
        const fields = (n: number) => 'To: x\r\n continued\r\n'.repeat(n);
        const full = parseHeaderSection(Buffer.from(fields(MAX_HEADER_FIELDS), 'latin1'));
        assert.ok(full.ok);
        assert.equal(full.fields.length, MAX_HEADER_FIELDS);
        assert.deepEqual(parseHeaderSection(Buffer.from(`${fields(MAX_HEADER_FIELDS)}a:\r\n`, 'latin1')), {
            ok: false,
            line: 2 * MAX_HEADER_FIELDS + 1,
            problem: 'too-many-fields',
        });
        // a million bytes of four-byte fields: refused at the cap, the rest never read
        assert.deepEqual(parseHeaderSection(Buffer.from('a:\r\n'.repeat(250_000), 'latin1')), {
            ok: false,
            line: MAX_HEADER_FIELDS + 1,
            problem: 'too-many-fields',
        });
    });
    it('takes a name whose colon is the 998th byte of its line', () => {
        const parsed = parseHeaderSection(Buffer.from(`X-${'a'.repeat(994)} : v\r\n`, 'latin1'));
        assert.ok(parsed.ok);
        assert.equal(parsed.fields[0]!.name.length, 996);
    });
    for (const [what, text, line, problem] of refused) {
        it(`refuses ${what} (line ${line}: ${problem})`, () => {
            assert.deepEqual(parseHeaderSection(Buffer.from(text, 'latin1')), { ok: false, line, problem });
        });
    }

    it('takes a From of exactly 100,000 bytes, CRLF included, and longer fields other than the author fields', () => {
        const field = `From: ${'y'.repeat(100_000 - 8)}\r\n`;
        assert.equal(field.length, 100_000);
        assert.equal(fieldsOf(`${field}Subject: x\r\n`).length, 2);
        // a To of thousands of names, a long References: Postfix's cut judges nothing
        const to = `To: ${Array.from({ length: 9000 }, (_, i) => `n${i}@example.org`).join(',\r\n ')}\r\n`;
        assert.ok(to.length > 150_000);
        assert.equal(fieldsOf(`${to}X-Long: ${'y'.repeat(200_000)}\r\nSubject: x\r\n`).length, 3);
    });

    it('reads the empty section and a last line without CRLF', () => {
        assert.deepEqual(parseHeaderSection(Buffer.alloc(0)), { ok: true, fields: [] });
        assert.equal(fieldsOf('Subject: x\r\nFrom: a@example.org').length, 2);
    });
});

describe('authserv-ids longer than a host name', () => {
    const cjk = (n: number, from: number): string =>
        Array.from({ length: n }, (_, i) => String.fromCodePoint(from + i)).join('');

    it('are removed without IDNA, at once: 61 fields of 5,000 distinct CJK characters', () => {
        const fields = Array.from(
            { length: 61 },
            (_, i) => `Authentication-Results: ${cjk(5000, 0x4e00 + i * 10)}; spf=pass\r\n`,
        ).join('');
        const started = performance.now();
        const { kept, removed } = filterIncomingFields(fieldsOf(fields + 'From: a@example.org\r\n'), OUR_ID);
        const ms = performance.now() - started;
        // IDNA took 30 to 90 ms for each (2.3 s in all); one that long cannot name a host
        assert.ok(ms < 500, `${ms.toFixed(0)} ms`);
        assert.equal(removed.length, 61);
        assert.deepEqual(
            kept.map((f) => f.name),
            ['From'],
        );
    });

    it('ignored characters cannot hide our authserv-id in a long one: removed too', () => {
        const padded = `mx.${'\u00ad'.repeat(300)}example.com`;
        assert.deepEqual(keptNames(`Authentication-Results: ${padded}; spf=pass\r\nFrom: a@example.org\r\n`), ['From']);
    });

    it('a short non-ASCII authserv-id of another host is kept', () => {
        assert.deepEqual(keptNames('Authentication-Results: mx.bücher.example; spf=pass\r\n'), [
            'Authentication-Results',
        ]);
    });
});

describe('forged own fields in every spelling', () => {
    for (const name of [
        'X-Mailwarden-Verdict',
        'X-Mailwarden-Verdict ',
        'X-Mailwarden-Verdict\t',
        'X-Mailwarden-Verdict \t \t',
        'x-mailwarden-verdict',
        'X-MAILWARDEN-VERDICT  ',
        'x-MailWarden-Quarantine',
        'X-Mailwarden-Anything-Else',
    ]) {
        it(`removes ${JSON.stringify(`${name}:`)}`, () => {
            assert.deepEqual(keptNames(`Subject: s\r\n${name}: accept; rules=allow; score=-100\r\n\tfolded\r\n`), [
                'Subject',
            ]);
        });
    }

    const ours = [
        'mx.example.com; dmarc=pass',
        ' mx.example.com; dmarc=pass',
        'MX.Example.COM; dmarc=pass',
        ' mx.example.com.; dmarc=pass',
        ' MX.EXAMPLE.COM. 1; dmarc=pass',
        ' "mx.example.com"; dmarc=pass',
        '\t"MX.example.com." ; dmarc=pass',
        ' "mx\\.example\\.com"; dmarc=pass',
        ' (comment) mx.example.com (another); dmarc=pass',
        ' (nested (comment)) "mx.example.com"(c);dmarc=pass',
        '\r\n (folded)\r\n\t"MX.Example.Com."\r\n ; spf=pass',
        ' mx.example.com',
        ' mx.example.com; none',
        ' mx\u3002example\u3002com; dmarc=pass',
        ' =?us-ascii?Q?mx.example.com?=; dmarc=pass',
        ' =?utf-8?B?bXguZXhhbXBsZS5jb20=?=; dmarc=pass',
        ' =?x-unknown?q?MX.example.com?= ; dmarc=pass',
        // the root dot written as an IDNA full stop, which the A-label conversion turns into "."
        ' mx.example.com\u3002; dmarc=pass',
        ' mx.example.com\uff0e; dmarc=pass',
        ' mx.example.com\uff61; dmarc=pass',
        ' "mx.example.com\u3002"; dmarc=pass',
        ' mx.example.com.\u00ad; dmarc=pass',
        ' =?utf-8?q?mx.example.com=E3=80=82?=; dmarc=pass',
        // padding that JavaScript's \s does not take for white space and other readers do
        // (Python's str.split and strip: U+0085 and U+001C-U+001F; Go's TrimSpace: U+0085)
        ' \u0085mx.example.com; dmarc=pass',
        ' mx.example.com\u0085; dmarc=pass',
        ' \x1cmx.example.com; dmarc=pass',
        ' \x1fmx.example.com\x1f; dmarc=pass',
        ' \u200emx.example.com; dmarc=pass',
        ' \u00a0mx.example.com\u00a0; dmarc=pass',
        // brackets and quotes a reader strips
        " 'mx.example.com'; dmarc=pass",
        ' \u2039mx.example.com>; dmarc=pass',
        ' [mx.example.com]; dmarc=pass',
        ' <mx.example.com>; dmarc=pass',
        // the id as the second word of a loose reading
        ' by mx.example.com; dmarc=pass',
    ];
    for (const value of ours) {
        for (const colon of [':', ' :', '\t:', ' \t :']) {
            it(`removes Authentication-Results${JSON.stringify(colon)}${JSON.stringify(value)}`, () => {
                for (const name of ['Authentication-Results', 'authentication-RESULTS']) {
                    const text = `Subject: s\r\n${name}${colon}${value}\r\nFrom: a@example.org\r\n`;
                    assert.deepEqual(keptNames(text), ['Subject', 'From'], text);
                }
            });
        }
    }

    it('removes an A-R whose id is padded with raw bytes that are not UTF-8 (0x85, 0xA0: white space in Latin-1)', () => {
        for (const byte of [0x85, 0xa0]) {
            const text = Buffer.concat([
                Buffer.from('Authentication-Results: '),
                Buffer.from([byte]),
                Buffer.from('mx.example.com; dmarc=pass\r\nFrom: a@example.org\r\n'),
            ]);
            assert.deepEqual(
                filterIncomingFields(fieldsOf(text), OUR_ID).kept.map((f) => f.name),
                ['From'],
            );
        }
    });

    for (const value of [
        ' other.example; dmarc=pass',
        ' mx.example.com.evil; dmarc=pass',
        ' mx.example.community; dmarc=pass',
        ' sub.mx.example.com; dmarc=pass',
        ' "other.example"; dkim=pass header.d=mx.example.com',
        ' other.example; spf=pass smtp.helo=mx.example.com',
        ' =?us-ascii?Q?other.example?=; dmarc=pass',
    ]) {
        it(`keeps the A-R of another server: ${JSON.stringify(value)}`, () => {
            assert.deepEqual(keptNames(`Authentication-Results :${value}\r\n`), ['Authentication-Results']);
        });
    }
});

describe('message facts read the author as RFC 5322 and the parser do', () => {
    const summary = {
        receivedBytes: 0,
        size: 0,
        bareLf: 0,
        bareCr: 0,
        nul: 0,
        tooBig: false,
        headerLength: 0,
        longestLine: 0,
        spilled: false,
    };
    const facts = (text: string) => messageFacts(fieldsOf(text), summary);

    it('takes the address, not one hidden in a comment or a display name', () => {
        assert.equal(facts('From: (alice@good.example) ceo@victim.test\r\n')['header.from'], 'ceo@victim.test');
        assert.equal(facts('From: "alice@good.example" <ceo@victim.test>\r\n')['header.from'], 'ceo@victim.test');
        assert.equal(facts('From\t: ceo@victim.test\r\n')['header.from.domain'], 'victim.test');
    });
    it('counts the mailboxes of every From field', () => {
        assert.equal(facts('From: a@example.org\r\nFrom : b@example.org, c@example.org\r\n')['header.from.count'], 3);
        assert.equal(facts('From: a@example.org\r\nFrom : b@example.org\r\n')['header.from'], 'a@example.org');
        assert.equal(facts('Subject: none\r\n')['header.from.count'], 0);
    });
    it('falls back to a loose reading for a From that does not parse', () => {
        assert.equal(facts('From: Alice <alice@example.org\r\n')['header.from'], 'alice@example.org');
    });
    it('reads what the first From field shows besides its address (header.from.name_domain), folded or not', () => {
        const got = facts('From: "ceo@bank.example"\r\n <a@evil.example>\r\nSubject: x\r\n');
        assert.equal(got['header.from.domain'], 'evil.example');
        assert.equal(got['header.from.name_domain'], 'bank.example');
        assert.equal(
            facts('From: "ceo@bänk.example" <a@evil.example>\r\n')['header.from.name_domain'],
            'xn--bnk-qla.example',
        );
        assert.equal(facts('From: Bank <ceo@bank.example>\r\n')['header.from.name_domain'], null);
        assert.equal(facts('Subject: x\r\n')['header.from.name_domain'], null);
    });
    it('reports an address in the first From name written with right-to-left controls (header.from.name_bidi)', () => {
        const got = facts('From: "\u2067example\u200f.\u200fbank\u200f@\u200fceo\u2069" <a@evil.example>\r\n');
        assert.equal(got['header.from.name_domain'], null);
        assert.equal(got['header.from.name_bidi'], true);
        assert.equal(
            facts('From: =?utf-8?Q?=E2=80=8F=D7=93=D7=A0=D7=94?= <dana@example.co.il>\r\n')['header.from.name_bidi'],
            false,
        );
        assert.equal(facts('From: "ceo@bank.example" <a@evil.example>\r\n')['header.from.name_bidi'], false);
        assert.equal(facts('Subject: x\r\n')['header.from.name_bidi'], false);
    });
});
