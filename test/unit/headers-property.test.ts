/**
 * Property-based fuzzing of the header section parser and the forged-field filter (fast-check,
 * fixed seed, logged; replay another with MW_FUZZ_SEED=<n>). Generated sections mix valid
 * fields, obsolete `name *WSP ":"` names, continuation lines, lines without a colon, names with
 * 8-bit or control bytes, empty lines, bare line endings, our own field names in random case and
 * spacing, and Authentication-Results fields carrying our authserv-id in random spellings.
 * Invariants:
 *   - the parser never throws; it refuses exactly at the first line that is neither a field nor
 *     a continuation (a regular-expression oracle of RFC 5322 sections 2.2, 3.6.8 and 4.5.8),
 *     or returns fields whose raw bytes concatenate back to the input;
 *   - after filtering, with our fields prepended, a model of Postfix's header reader (cleanup's
 *     is_header() and mime_state) sees every kept field as a header and the header section end
 *     exactly where ours does; none of its headers after ours is an X-Mailwarden-* field or an
 *     A-R field whose authserv-id a loose reader takes for ours; our fields keep exactly the
 *     values we wrote (nothing continues them);
 *   - mailauth's own header parser (what DKIM and DMARC read) sees the same fields, by name.
 */
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
    filterIncomingFields,
    formatField,
    parseHeaderSection,
    receivedField,
    verdictField,
} from '../../src/headers.ts';
import type { HeaderField } from '../../src/types.ts';

const SEED = Number(process.env.MW_FUZZ_SEED ?? 20261206);
const RUNS = 5000;
const OUR_ID = 'mx.example.com';

const require = createRequire(import.meta.url);
// mailauth's header parser, to compare its reading with ours (test code only)
const { parseHeaders } = require('mailauth/lib/tools.js') as {
    parseHeaders: (buf: Buffer) => { parsed: { key: string | null }[] };
};

// ---- generators (strings of latin1 characters, one per byte) ----

const wsp = (min: number, max: number): fc.Arbitrary<string> =>
    fc.array(fc.constantFrom(' ', '\t'), { minLength: min, maxLength: max }).map((a) => a.join(''));
const ftextChar = fc
    .integer({ min: 0x21, max: 0x7e })
    .filter((c) => c !== 0x3a)
    .map((c) => String.fromCharCode(c));
const randomName = fc.string({ unit: ftextChar, minLength: 1, maxLength: 10 });
const fieldName = fc.oneof(
    fc.mixedCase(fc.constantFrom('x-mailwarden-verdict', 'x-mailwarden-quarantine', 'x-mailwarden-x')),
    fc.mixedCase(fc.constant('authentication-results')),
    fc.constantFrom('From', 'Subject', 'Received', 'DKIM-Signature', 'To'),
    randomName,
);
/** Our authserv-id as a writer may spell it: case, a trailing dot, quoting, quoted-pairs, comments. */
const ourIdSpelling = fc
    .record({
        id: fc.mixedCase(fc.constant(OUR_ID)),
        dot: fc.boolean(),
        quoting: fc.constantFrom('none', 'quoted', 'escaped'),
        before: fc.constantFrom('', ' ', '\t', ' (c) ', '(a (b))', '\r\n ', ' (x)\r\n\t'),
        after: fc.constantFrom('', ' ', ' 1', ' (c)', '\r\n '),
    })
    .map(({ id, dot, quoting, before, after }) => {
        const host = dot ? `${id}.` : id;
        const written =
            quoting === 'quoted' ? `"${host}"` : quoting === 'escaped' ? `"${host.replace(/\./g, '\\.')}"` : host;
        return `${before}${written}${after}`;
    });
const valueChar = fc.oneof(
    { weight: 6, arbitrary: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)) },
    { weight: 2, arbitrary: fc.constantFrom('\t', ';', '"', '(', ')', '\\', ':', ' ') },
    { weight: 1, arbitrary: fc.integer({ min: 0x80, max: 0xff }).map((c) => String.fromCharCode(c)) },
);
const text = fc.string({ unit: valueChar, maxLength: 20 });
const value = fc.oneof(
    text,
    ourIdSpelling.map((id) => `${id}; dmarc=pass`),
    fc.constant(' ; rules=allow; score=-100'),
);
/** A field value as it continues on later lines: with CRLF WSP folds only. */
const foldedValue = fc
    .tuple(value, fc.array(fc.tuple(wsp(1, 2), text), { maxLength: 2 }))
    .map(([v, folds]) => v + folds.map(([w, t]) => `\r\n${w}${t}`).join(''));

const fieldLine = fc.tuple(fieldName, wsp(0, 3), foldedValue).map(([n, w, v]) => `${n}${w}:${v}`);
const continuation = fc.tuple(wsp(1, 3), text).map(([w, t]) => `${w}${t}`);
const noColon = fc
    .string({ unit: fc.oneof(ftextChar, fc.constantFrom(' ', '\u00e9')), minLength: 1, maxLength: 12 })
    .map((s) => s.replace(/:/g, ''))
    .filter((s) => s !== '' && s[0] !== ' ');
const badName = fc
    .tuple(
        randomName,
        fc.constantFrom('\u00a0', '\u00c3\u00b6', '\u0001', '\u007f', ' x', '\u001b'),
        randomName,
        wsp(0, 1),
        text,
    )
    .map(([a, bad, b, w, v]) => `${a}${bad}${b}${w}:${v}`);
const brokenLine = fc.oneof(
    noColon,
    badName,
    fc.constant(''),
    fc.tuple(fieldLine, fc.constantFrom('\n', '\r', '\u0000'), text).map(([l, c, t]) => `${l}${c}${t}`),
);
const anyLine = fc.oneof(
    { weight: 6, arbitrary: fieldLine },
    { weight: 3, arbitrary: continuation },
    { weight: 1, arbitrary: brokenLine },
);
/** Sections that should parse (a field first, then fields and continuations) and sections of anything. */
const section = fc
    .oneof(
        fc
            .tuple(fieldLine, fc.array(fc.oneof(fieldLine, continuation), { maxLength: 8 }))
            .map(([first, rest]) => [first, ...rest]),
        fc.array(anyLine, { minLength: 1, maxLength: 8 }),
    )
    .map((lines) => Buffer.from(lines.map((l) => `${l}\r\n`).join(''), 'latin1'));

// ---- oracles, written independently of src/ ----

/** The first line (from 1) that is neither a field line nor a continuation, or null. */
function firstBadLine(buf: Buffer): number | null {
    const lines = buf.toString('latin1').split('\r\n');
    if (lines.at(-1) === '') lines.pop();
    for (let i = 0; i < lines.length; i++) {
        const line = lines[i]!;
        if (/[\r\n\0]/.test(line) || line === '') return i + 1;
        if (/^[ \t]/.test(line)) {
            if (i === 0) return i + 1;
            continue;
        }
        if (!/^[\x21-\x39\x3b-\x7e]+[ \t]*:/.test(line)) return i + 1;
    }
    return null;
}

interface PostfixHeader {
    readonly name: string;
    readonly value: string;
}

/**
 * Postfix's reading of a message's primary header section: a line is a header when
 * is_header() says so (printable ASCII but ':' and white space, then optional white space, then
 * ':'); the name is normalised ("name space colon" becomes "name colon"); a line starting with
 * white space continues the header being collected; any other line (the empty line, or garbage)
 * ends the header section.
 */
function postfixHeaders(message: Buffer): PostfixHeader[] {
    const out: { name: string; value: string }[] = [];
    let current: { name: string; value: string } | null = null;
    for (const line of message.toString('latin1').split('\r\n')) {
        if (current && /^[ \t]/.test(line)) {
            current.value += `\r\n${line}`;
            continue;
        }
        if (current) out.push(current);
        current = null;
        const m = /^([\x21-\x39\x3b-\x7e]+)[ \t]*:(.*)$/s.exec(line);
        if (!m) break;
        current = { name: m[1]!, value: m[2]! };
    }
    if (current) out.push(current);
    return out;
}

/** A loose reading of an A-R authserv-id: comments, quotes and backslashes gone, first word before ';'. */
function looseAuthservId(v: string): string {
    let s = v;
    for (let prev = ''; prev !== s; ) {
        prev = s;
        s = s.replace(/\([^()]*\)/g, ' ');
    }
    const first = s.replace(/["\\]/g, '').split(';')[0]!.trim().split(/\s+/)[0] ?? '';
    return first.toLowerCase().replace(/\.+$/, '');
}

const OUR_FIELDS: readonly HeaderField[] = [
    receivedField({
        helo: 'client.example',
        ip: '192.0.2.1',
        ptr: null,
        hostname: OUR_ID,
        protocol: 'ESMTP',
        id: 'S1',
        recipient: null,
        tlsCipher: null,
        date: new Date(0),
    }),
    { name: 'Authentication-Results', value: `${OUR_ID}; spf=none smtp.mailfrom=a@example.org` },
    verdictField('accept', [], 0, 'S1'),
];

describe('header section fuzzing', () => {
    it(`parses, filters and forwards as Postfix and mailauth read it (seed ${SEED}, ${RUNS} runs)`, (t) => {
        t.diagnostic(`fast-check seed ${SEED} (set MW_FUZZ_SEED to replay another)`);
        let parsed = 0;
        fc.assert(
            fc.property(section, (buf) => {
                const result = parseHeaderSection(buf);
                const bad = firstBadLine(buf);
                if (!result.ok) {
                    assert.equal(result.line, bad, 'refused at the first bad line');
                    return;
                }
                parsed++;
                assert.equal(bad, null, 'an accepted section has no bad line');
                assert.ok(Buffer.concat(result.fields.map((f) => f.raw)).equals(buf), 'raw bytes concatenate back');
                for (const f of result.fields) assert.ok(f.raw[0] !== 0x20 && f.raw[0] !== 0x09);

                const { kept } = filterIncomingFields(result.fields, OUR_ID);
                const head = Buffer.from(OUR_FIELDS.map(formatField).join(''), 'latin1');
                const headerSection = Buffer.concat([head, ...kept.map((f) => f.raw)]);
                const message = Buffer.concat([headerSection, Buffer.from('\r\nbody: not a header\r\n')]);

                const postfix = postfixHeaders(message);
                assert.equal(postfix.length, OUR_FIELDS.length + kept.length, 'Postfix reads every kept field');
                OUR_FIELDS.forEach((f, i) => {
                    assert.equal(postfix[i]!.name, f.name);
                    assert.equal(`${postfix[i]!.name}:${postfix[i]!.value}\r\n`, formatField(f), 'our field is intact');
                });
                for (const h of postfix.slice(OUR_FIELDS.length)) {
                    const name = h.name.toLowerCase();
                    assert.ok(!name.startsWith('x-mailwarden-'), `a forged ${h.name} survived`);
                    if (name === 'authentication-results') {
                        assert.notEqual(looseAuthservId(h.value), OUR_ID, `a forged A-R survived: ${h.value}`);
                    }
                }

                const mailauth = parseHeaders(headerSection).parsed.map((r) => r.key);
                assert.deepEqual(
                    mailauth,
                    postfix.map((h) => h.name.toLowerCase()),
                    'mailauth reads the same fields',
                );
            }),
            { seed: SEED, numRuns: RUNS },
        );
        t.diagnostic(`${parsed} of ${RUNS} generated sections parsed`);
        assert.ok(parsed > RUNS / 4, 'the generator produces enough valid sections');
    });

    it(`removes A-R fields with our authserv-id in every spelling, and keeps other ids (seed ${SEED})`, (t) => {
        t.diagnostic(`fast-check seed ${SEED}`);
        const label = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?$/);
        const otherHost = fc
            .array(label, { minLength: 1, maxLength: 4 })
            .map((l) => l.join('.'))
            .filter((h) => h !== OUR_ID);
        fc.assert(
            fc.property(
                fc.mixedCase(fc.constant('authentication-results')),
                wsp(0, 2),
                ourIdSpelling,
                otherHost,
                (name, w, ours, other) => {
                    const forged = Buffer.from(`${name}${w}:${ours}; dmarc=pass\r\n`, 'latin1');
                    const fields = parseHeaderSection(forged);
                    assert.ok(fields.ok);
                    assert.equal(filterIncomingFields(fields.fields, OUR_ID).kept.length, 0, forged.toString());
                    const foreign = Buffer.from(`${name}${w}: ${other}; dmarc=pass\r\n`, 'latin1');
                    const kept = parseHeaderSection(foreign);
                    assert.ok(kept.ok);
                    assert.equal(filterIncomingFields(kept.fields, OUR_ID).kept.length, 1, foreign.toString());
                },
            ),
            { seed: SEED, numRuns: RUNS },
        );
    });
});
