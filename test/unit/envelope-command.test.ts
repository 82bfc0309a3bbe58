/**
 * The MAIL/RCPT argument parser (src/envelope/command.ts): the RFC 5321 section 4.1.2 path
 * grammar with the RFC 6531 extensions, read from octets, and its canonical form. Table cases
 * for what Postfix accepts and what it does not, then properties checked with fast-check
 * (fixed seed, logged, bounded runs): the parser never throws, accepts only valid UTF-8, gives
 * a canonical address that parses to itself, and reads quoted strings exactly as the grammar says.
 */
import assert from 'node:assert/strict';
import { isUtf8 } from 'node:buffer';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
    isCanonicalAddress,
    parseEnvelopeCommand,
    quoteLocalPart,
    type CommandKind,
    type EnvelopeParse,
} from '../../src/envelope/command.ts';

const SEED = Number(process.env.MAILWARDEN_FC_SEED ?? 5321);
const RUNS = 3000;

function parse(kind: CommandKind, line: string | Buffer): EnvelopeParse {
    return parseEnvelopeCommand(kind, typeof line === 'string' ? Buffer.from(line, 'utf8') : line);
}

function address(kind: CommandKind, line: string): string {
    const p = parse(kind, line);
    assert.ok(p.ok, `${line}: ${p.ok ? '' : `${p.part}: ${p.reason}`}`);
    return p.mailbox.address;
}

function failure(kind: CommandKind, line: string | Buffer): { part: string; reason: string } {
    const p = parse(kind, line);
    assert.ok(!p.ok, `${String(line)} parsed as ${p.ok ? p.mailbox.address : ''}`);
    return { part: p.part, reason: p.reason };
}

describe('envelope command parser: paths', () => {
    it('reads dot-strings, domains, address literals, <> and <Postmaster>', () => {
        assert.equal(address('mail', 'MAIL FROM:<alice@example.com>'), 'alice@example.com');
        assert.equal(address('mail', 'mail from: <Alice.B+tag@Mail.Example.COM>'), 'Alice.B+tag@Mail.Example.COM');
        assert.equal(address('mail', 'MAIL FROM:<>'), '');
        assert.equal(address('rcpt', 'RCPT TO:<Postmaster>'), 'Postmaster');
        assert.equal(address('rcpt', 'RCPT TO:<bob@[192.0.2.1]>'), 'bob@[192.0.2.1]');
        assert.equal(address('rcpt', 'RCPT TO:<bob@[IPv6:2001:db8::1]>'), 'bob@[IPv6:2001:db8::1]');
        assert.equal(address('rcpt', "RCPT TO:<!#$%&'*+-/=?^_`{|}~@example.com>"), "!#$%&'*+-/=?^_`{|}~@example.com");
    });

    it('drops a source route (RFC 5321 appendix C) after checking its domains', () => {
        assert.equal(address('rcpt', 'RCPT TO:<@relay.example,@b.example:bob@example.com>'), 'bob@example.com');
        assert.equal(failure('rcpt', 'RCPT TO:<@relay..example:bob@example.com>').part, 'address');
    });

    it('reads quoted local parts and writes them canonically (quotes only where needed)', () => {
        const cases: [string, string, string][] = [
            ['"john doe"@example.net', '"john doe"@example.net', 'john doe'],
            ['"john"@example.net', 'john@example.net', 'john'],
            ['"jo\\hn"@example.net', 'john@example.net', 'john'],
            ['"a\\"b"@example.net', '"a\\"b"@example.net', 'a"b'],
            ['"a\\\\b"@example.net', '"a\\\\b"@example.net', 'a\\b'],
            ['"a@b"@example.net', '"a@b"@example.net', 'a@b'],
            ['"x>y<z"@example.net', '"x>y<z"@example.net', 'x>y<z'],
            ['".dot"@example.net', '".dot"@example.net', '.dot'],
            ['"a..b"@example.net', '"a..b"@example.net', 'a..b'],
            ['""@example.net', '""@example.net', ''],
        ];
        for (const [written, canonical, local] of cases) {
            const p = parse('rcpt', `RCPT TO:<${written}>`);
            assert.ok(p.ok, written);
            assert.equal(p.mailbox.address, canonical, written);
            assert.equal(p.mailbox.local, local, written);
            assert.equal(isCanonicalAddress(canonical, 'rcpt'), true, canonical);
        }
        // a quoted Postmaster is an ordinary local part and needs a domain
        assert.equal(failure('rcpt', 'RCPT TO:<"Postmaster">').part, 'address');
    });

    it('reads UTF-8 addresses (RFC 6531) and marks them non-ASCII; keeps A-labels as A-labels', () => {
        const p = parse('mail', 'MAIL FROM:<jörg@bücher.example>');
        assert.ok(p.ok);
        assert.equal(p.mailbox.address, 'jörg@bücher.example');
        assert.equal(p.mailbox.asciiDomain, 'xn--bcher-kva.example');
        assert.equal(p.mailbox.nonAscii, true);
        const a = parse('mail', 'MAIL FROM:<jorg@XN--BCHER-KVA.example>');
        assert.ok(a.ok);
        assert.equal(a.mailbox.address, 'jorg@XN--BCHER-KVA.example');
        assert.equal(a.mailbox.asciiDomain, 'xn--bcher-kva.example');
        assert.equal(a.mailbox.nonAscii, false);
        assert.equal(parse('rcpt', 'RCPT TO:<"jörg müller"@example.com>').ok, true);
    });

    it('refuses what is not an address, saying where', () => {
        const cases: [CommandKind, string, string, RegExp][] = [
            ['mail', 'MAIL FROM:<a..b@example.com>', 'address', /misplaced dot/],
            ['mail', 'MAIL FROM:<.a@example.com>', 'address', /misplaced dot/],
            ['mail', 'MAIL FROM:<a.@example.com>', 'address', /misplaced dot/],
            ['mail', 'MAIL FROM:<john doe@example.com>', 'address', /unexpected a space/],
            ['mail', 'MAIL FROM:<a@b@example.com>', 'address', /unexpected "@"/],
            ['mail', 'MAIL FROM:<alice>', 'address', /no domain/],
            ['mail', 'MAIL FROM:<alice@>', 'address', /domain is missing/],
            ['mail', 'MAIL FROM:<alice@example.com.>', 'address', /empty label/],
            ['mail', 'MAIL FROM:<alice@exa_mple.com>', 'address', /unexpected "_"/],
            ['mail', 'MAIL FROM:<alice@-x.example>', 'address', /not a valid domain name/],
            ['mail', 'MAIL FROM:<alice@[300.1.1.1]>', 'address', /not an IPv4 or IPv6 address literal/],
            ['mail', 'MAIL FROM:<alice@[tag:content]>', 'address', /not an IPv4 or IPv6 address literal/],
            ['mail', 'MAIL FROM:<alice@example.com', 'address', /not closed/],
            ['mail', 'MAIL FROM:<"open@example.com>', 'address', /not closed/],
            ['mail', 'MAIL FROM:<"a\tb"@example.com>', 'address', /control character/],
            ['mail', 'MAIL FROM:<a@example.com>>', 'parameter', /space must separate/],
            ['rcpt', 'RCPT TO:<>', 'address', /recipient address is needed/],
            ['rcpt', 'RCPT TO:<postmaster@>', 'address', /domain is missing/],
            ['mail', 'MAIL FROM:alice@example.com', 'command', /angle brackets/],
            ['mail', 'MAIL TO:<alice@example.com>', 'command', /write MAIL FROM:<address>/],
            ['rcpt', 'RCPT FROM:<alice@example.com>', 'command', /write RCPT TO:<address>/],
        ];
        for (const [kind, line, part, reason] of cases) {
            const f = failure(kind, line);
            assert.equal(f.part, part, line);
            assert.match(f.reason, reason, line);
        }
        assert.match(failure('mail', `MAIL FROM:<${'a'.repeat(250)}@example.com>`).reason, /longer than 256 octets/);
    });

    it('refuses invalid UTF-8 anywhere in the address, and never repairs it', () => {
        const bad = [
            [0xff],
            [0xc3], // a lead byte without its continuation
            [0xc0, 0xaf], // overlong "/"
            [0xed, 0xa0, 0x80], // a UTF-16 surrogate
            [0xf4, 0x90, 0x80, 0x80], // beyond U+10FFFF
        ];
        for (const bytes of bad) {
            for (const [before, after] of [
                ['MAIL FROM:<a', '@example.com>'],
                ['MAIL FROM:<"a ', '"@example.com>'],
                ['MAIL FROM:<a@b', '.example>'],
            ] as const) {
                const f = failure('mail', Buffer.concat([Buffer.from(before), Buffer.from(bytes), Buffer.from(after)]));
                assert.equal(f.part, 'address');
                assert.match(f.reason, /not valid UTF-8|not a valid domain name/);
            }
        }
    });

    it('refuses C1 controls, line separators and invisible or direction-changing characters', () => {
        for (const ch of ['\u0085', '\u009b', '\u200b', '\u200e', '\u2028', '\u202e', '\u2066', '\ufeff']) {
            const f = failure('mail', `MAIL FROM:<pay${ch}pal@example.com> SMTPUTF8`);
            assert.equal(f.reason, 'the address holds an invisible or control character', JSON.stringify(ch));
            assert.equal(failure('mail', `MAIL FROM:<"a${ch}b"@example.com>`).part, 'address');
            assert.equal(failure('rcpt', `RCPT TO:<a@b.example> ORCPT=rfc822;x${ch}@y`).part, 'parameter');
        }
    });

    it('reads parameters: keyword[=value], upper-cased keywords, values as written', () => {
        const p = parse('mail', 'MAIL FROM:<a@example.com> size=100 Body=8bitmime SMTPUTF8 ENVID=a+2Bb  RET=HDRS ');
        assert.ok(p.ok);
        assert.deepEqual(
            p.params.map((x) => [x.keyword, x.value]),
            [
                ['SIZE', '100'],
                ['BODY', '8bitmime'],
                ['SMTPUTF8', null],
                ['ENVID', 'a+2Bb'],
                ['RET', 'HDRS'],
            ],
        );
        for (const [line, reason] of [
            ['MAIL FROM:<a@example.com> SIZE=1 size=2', /SIZE is given twice/],
            ['MAIL FROM:<a@example.com> SIZE=', /needs a value/],
            ['MAIL FROM:<a@example.com> -X=1', /not a parameter keyword/],
            ['MAIL FROM:<a@example.com> X=a=b', /not allowed there/],
            ['MAIL FROM:<a@example.com> X=a\tb', /not allowed there/],
        ] as const) {
            const f = failure('mail', line);
            assert.equal(f.part, 'parameter', line);
            assert.match(f.reason, reason, line);
        }
        assert.match(
            failure('mail', Buffer.concat([Buffer.from('MAIL FROM:<a@example.com> ENVID=x'), Buffer.from([0xfe])]))
                .reason,
            /value of ENVID is not valid UTF-8/,
        );
    });

    it('quoteLocalPart quotes exactly what is not a dot-string', () => {
        assert.equal(quoteLocalPart('john.doe'), 'john.doe');
        assert.equal(quoteLocalPart('jörg'), 'jörg');
        assert.equal(quoteLocalPart('john doe'), '"john doe"');
        assert.equal(quoteLocalPart('a"b\\c'), '"a\\"b\\\\c"');
        assert.equal(quoteLocalPart(''), '""');
        assert.equal(quoteLocalPart('a..b'), '"a..b"');
    });
});

describe('envelope command parser: properties', () => {
    const interesting = fc.constantFrom(
        ...['a', 'Z', '0', '.', '@', '"', '\\', ' ', '<', '>', '[', ']', ':', ',', '(', '=', '+', '-', '_'],
        ...['é', 'ü', '中', '\u200b', '\u0085', '\u202e', '\x00', '\t', '\r', '\n', '\x7f'],
    );
    const bytes = fc.uint8Array({ maxLength: 80 });

    it(`never throws, and accepts only valid UTF-8, giving a canonical address (seed ${SEED}, ${RUNS} runs)`, (t) => {
        t.diagnostic(`fast-check seed ${SEED} (set MAILWARDEN_FC_SEED to replay another)`);
        const tail = fc.oneof(
            bytes,
            fc.array(interesting, { maxLength: 40 }).map((chars) => Buffer.from(chars.join(''), 'utf8')),
        );
        fc.assert(
            fc.property(fc.constantFrom<CommandKind>('mail', 'rcpt'), tail, (kind, rest) => {
                const head = Buffer.from(kind === 'mail' ? 'MAIL FROM:<' : 'RCPT TO:<');
                const line = Buffer.concat([head, rest]);
                const p = parseEnvelopeCommand(kind, line);
                if (!p.ok) {
                    assert.ok(['command', 'address', 'parameter'].includes(p.part));
                    // eslint-disable-next-line no-control-regex
                    assert.doesNotMatch(p.reason, /[\x00-\x1f\x7f]/, 'reasons are safe to put in a reply');
                    return;
                }
                assert.ok(isUtf8(line), 'accepted input is valid UTF-8');
                // eslint-disable-next-line no-control-regex
                assert.doesNotMatch(p.mailbox.address, /[\x00-\x1f\x7f]/);
                assert.ok(isCanonicalAddress(p.mailbox.address, kind), p.mailbox.address);
                assert.equal(
                    p.mailbox.nonAscii,
                    [...p.mailbox.address].some((ch) => ch.charCodeAt(0) > 0x7f),
                );
            }),
            { seed: SEED, numRuns: RUNS },
        );
    });

    it('reads a quoted local part exactly when the RFC 5321 grammar matches it, and round-trips its value', (t) => {
        t.diagnostic(`fast-check seed ${SEED}`);
        // Quoted-string = DQUOTE *QcontentSMTP DQUOTE, with UTF8-non-ascii in qtext (RFC 6531),
        // less the invisible and C1 control characters the parser refuses on purpose
        const grammar = /^"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\u{10ffff}]|\\[\x20-\x7e])*"$/u;
        const invisible = /[\u0080-\u009f\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff]/;
        fc.assert(
            fc.property(fc.array(interesting, { maxLength: 24 }), (chars) => {
                const quoted = `"${chars.join('')}"`;
                const p = parse('rcpt', `RCPT TO:<${quoted}@example.com>`);
                assert.equal(p.ok, grammar.test(quoted) && !invisible.test(quoted), quoted);
                if (!p.ok) return;
                const again = parse('rcpt', `RCPT TO:<${p.mailbox.address}>`);
                assert.ok(again.ok);
                assert.equal(again.mailbox.local, p.mailbox.local);
                assert.equal(again.mailbox.address, p.mailbox.address);
            }),
            { seed: SEED, numRuns: RUNS },
        );
    });

    it('writes any local part value so that it reads back the same', (t) => {
        t.diagnostic(`fast-check seed ${SEED}`);
        const printable = fc.oneof(
            fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)),
            fc.constantFrom('é', '中', '😀'),
        );
        fc.assert(
            fc.property(fc.array(printable, { maxLength: 30 }), (chars) => {
                const local = chars.join('');
                const p = parse('rcpt', `RCPT TO:<${quoteLocalPart(local)}@example.com>`);
                assert.ok(p.ok, local);
                assert.equal(p.mailbox.local, local);
            }),
            { seed: SEED, numRuns: RUNS },
        );
    });
});
