/**
 * End-to-end fuzzing of header sections (fast-check; seed and budget from test/helpers/fuzz.ts:
 * MW_FUZZ_SEED=<n> replays, MW_FUZZ_RUNS scales). The pure-level fuzz of the same parser is
 * test/unit/headers-property.test.ts; this one sends the generated sections through the real
 * listeners into a recording upstream. Sections mix ordinary fields with the forgeries of the
 * security review and their generalisations: X-Mailwarden-* and Authentication-Results with our
 * authserv-id in any spelling (case, spaces or tabs before the colon, quoted, escaped, trailing
 * dot, comments, folded), encoded words, a leading continuation line, lines without a colon,
 * names with 8-bit or control bytes, several From fields, foreign From addresses.
 * Invariants, reading what the upstream received as Postfix does (`name *WSP ":"`, continuation
 * lines, the section ending at the first other line):
 *   - mx: a message is refused with 550 5.6.0 exactly when a line of its section is neither a
 *     field nor a continuation (an oracle written here, independent of src/), and then nothing
 *     reaches the upstream; otherwise it is accepted (or refused by a shipped rule, nothing
 *     forwarded: 550 5.7.1 for several From senders, 550 5.6.0 for a field RFC 5322 allows once
 *     written twice), our fields are on top, exactly once, and
 *     no other X-Mailwarden-* field nor any A-R field whose authserv-id a loose reader takes
 *     for ours (encoded-words decoded) follows them; every other field the client wrote arrives, in order;
 *   - submission (logged in as alice): a message is accepted only with exactly one From field
 *     holding alice's address, at most one Sender, and a section that parses; it then reaches
 *     the upstream with exactly one From (Postfix's reading) and a DKIM signature; any other
 *     is refused with 550 5.6.0 or 553 5.7.1 and nothing reaches the upstream.
 * Budget: 400 messages on mx, 150 on submission (about 10 s on a busy 2-core machine).
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { hash } from '@node-rs/argon2';
import fc from 'fast-check';

/** Fields RFC 5322 section 3.6 and RFC 2045 allow once (From aside), as a reader names them: lower case. */
const ONCE = [
    'date',
    'sender',
    'reply-to',
    'to',
    'cc',
    'bcc',
    'message-id',
    'in-reply-to',
    'references',
    'subject',
    'mime-version',
    'content-type',
    'content-transfer-encoding',
];
import { startApp, type TestApp } from '../helpers/app.ts';
import { startDnsServer, type DnsTestServer } from '../helpers/dns-server.ts';
import { fuzzSettings } from '../helpers/fuzz.ts';
import { startScriptedUpstream, unstuff, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { smtpConnect, type SmtpClient, type SmtpReply } from '../helpers/smtp-client.ts';
import { createTestCertificate, type TestCertificate } from '../helpers/tls-cert.ts';

const MX_RUNS = 400;
const SUBMISSION_RUNS = 150;
const OUR_ID = 'mx.example.test';

// ---- generators (latin1 strings, one character per byte) ----

const wsp = (min: number, max: number): fc.Arbitrary<string> =>
    fc.array(fc.constantFrom(' ', '\t'), { minLength: min, maxLength: max }).map((a) => a.join(''));
const ourIdSpelling = fc
    .record({
        id: fc.mixedCase(fc.constant(OUR_ID)),
        dot: fc.boolean(),
        quoting: fc.constantFrom('none', 'quoted', 'escaped', 'encoded'),
        before: fc.constantFrom('', ' ', '\t', ' (c) ', '(a (b)) ', '\r\n ', ' (x)\r\n\t'),
        after: fc.constantFrom('', ' ', ' 1', ' (c)', '\r\n '),
    })
    .map(({ id, dot, quoting, before, after }) => {
        const host = dot ? `${id}.` : id;
        const written =
            quoting === 'quoted'
                ? `"${host}"`
                : quoting === 'escaped'
                  ? `"${host.replace(/\./g, '\\.')}"`
                  : quoting === 'encoded'
                    ? `=?utf-8?q?${host}?=`
                    : host;
        return `${before}${written}${after}`;
    });
const text = fc.string({
    unit: fc.oneof(
        { weight: 8, arbitrary: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)) },
        { weight: 1, arbitrary: fc.constantFrom('\t', '=?utf-8?b?w6k=?=', '\xc3\xa9') },
    ),
    maxLength: 16,
});
const ownName = fc.mixedCase(fc.constantFrom('X-Mailwarden-Verdict', 'X-Mailwarden-Quarantine', 'X-Mailwarden-Score'));
const fieldLine = fc.oneof(
    fc.tuple(ownName, wsp(0, 2), text).map(([n, w, v]) => `${n}${w}: ${v}`),
    fc
        .tuple(fc.mixedCase(fc.constant('Authentication-Results')), wsp(0, 2), ourIdSpelling)
        .map(([n, w, id]) => `${n}${w}:${id}; dmarc=pass`),
    fc.tuple(wsp(0, 1), text).map(([w, v]) => `Authentication-Results${w}: other.example; spf=pass ${v}`),
    fc
        .tuple(fc.constantFrom('Subject', 'To', 'Received', 'X-Other', 'Comments'), wsp(0, 1), text)
        .map(([n, w, v]) => `${n}${w}: ${v}`),
    fc.constantFrom('=?utf-8?q?X-Mailwarden-Verdict?=: accept', 'X-Mailwarden-Verdict:', 'Authentication-Results:'),
);
const fromLine = fc
    .tuple(
        fc.mixedCase(fc.constant('From')),
        wsp(0, 2),
        fc.constantFrom(
            'alice@example.test',
            'Alice <alice@example.test>',
            'ceo@victim.test',
            'alice@example.test, ceo@victim.test',
            '',
            'not an address <',
        ),
    )
    .map(([n, w, a]) => `${n}${w}: ${a}`);
const continuation = fc.tuple(wsp(1, 2), text).map(([w, t]) => `${w}${t}`);
const brokenLine = fc.oneof(
    fc.constantFrom(
        ' ; rules=allow; score=-100',
        '\t; rules=allow',
        'this line has no colon',
        'From',
        'X Mailwarden-Verdict: a',
    ),
    fc
        .tuple(fc.constantFrom('\x01', '\x7f', '\xa0', '\xc3\xb6'), text)
        .map(([b, v]) => `X-Mailwarden${b}Verdict: ${v}`),
);
const section = fc
    .tuple(
        fc.oneof(
            { weight: 9, arbitrary: fc.constant<string[]>([]) },
            brokenLine.map((l) => [l]),
        ),
        fc.array(
            fc.oneof(
                { weight: 6, arbitrary: fieldLine },
                { weight: 2, arbitrary: fromLine },
                { weight: 2, arbitrary: continuation },
                { weight: 1, arbitrary: brokenLine },
            ),
            { minLength: 1, maxLength: 8 },
        ),
    )
    .map(([first, rest]) => [...first, ...rest]);

// ---- oracles, written independently of src/ ----

/** True when a line of the section is neither a field nor a continuation (RFC 5322 sections 2.2, 3.6.8, 4.5.8). */
function malformed(lines: readonly string[]): boolean {
    return lines.some((l, i) => (/^[ \t]/.test(l) ? i === 0 : !/^[\x21-\x39\x3b-\x7e]+[ \t]*:/.test(l)));
}

interface Field {
    readonly name: string;
    value: string;
}

/** Postfix's reading of a header section (cleanup's is_header() and continuation lines). */
function postfixView(message: string): Field[] {
    const out: Field[] = [];
    for (const line of message.split('\r\n')) {
        const last = out.at(-1);
        if (last && /^[ \t]/.test(line)) {
            last.value += `\r\n${line}`;
            continue;
        }
        const m = /^([\x21-\x39\x3b-\x7e]+)[ \t]*:(.*)$/s.exec(line);
        if (!m) break;
        out.push({ name: m[1]!.toLowerCase(), value: m[2]! });
    }
    return out;
}

/**
 * A loose downstream reader's authserv-id: Q encoded-words decoded (as readers that decode every
 * field do), comments, quotes and backslashes gone, first word, no root dot.
 */
function looseAuthservId(v: string): string {
    let s = v.replace(/\r\n/g, '').replace(/=\?[^?\s]+\?q\?([^?\s]*)\?=/gi, '$1');
    for (let prev = ''; prev !== s; ) {
        prev = s;
        s = s.replace(/\([^()]*\)/g, ' ');
    }
    const first = s.replace(/["\\]/g, '').split(';')[0]!.trim().split(/\s+/)[0] ?? '';
    return first.toLowerCase().replace(/\.+$/, '');
}

function isOursByName(f: Field): boolean {
    return (
        f.name.startsWith('x-mailwarden-') ||
        (f.name === 'authentication-results' && looseAuthservId(f.value) === OUR_ID)
    );
}

const BODY = '\r\nHello.\r\n';

function dataOf(lines: readonly string[]): string {
    return `${lines.map((l) => `${l}\r\n`).join('')}${BODY}`.replace(/(^|\r\n)\./g, '$1..');
}

async function sendData(c: SmtpClient, from: string, lines: readonly string[]): Promise<SmtpReply> {
    for (const cmd of ['RSET', `MAIL FROM:<${from}>`, 'RCPT TO:<bob@example.test>', 'DATA']) {
        const r = await c.cmd(cmd);
        const want = cmd === 'DATA' ? 354 : 250;
        assert.equal(r.code, want, `${cmd}: ${r.raw}`);
    }
    c.write(Buffer.from(`${dataOf(lines)}.\r\n`, 'latin1'));
    return c.reply();
}

function completed(up: ScriptedUpstream): number {
    return up.transactions.filter((t) => t.completed).length;
}

describe('header section fuzzing through the mx listener', () => {
    let up: ScriptedUpstream;
    let mw: TestApp;
    before(async () => {
        up = await startScriptedUpstream({
            ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN', 'SIZE 1000000', '8BITMIME'],
        });
        mw = await startApp(
            [
                `hostname: ${OUR_ID}`,
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}", xclient: true }`,
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw.stop();
        await up.close();
    });

    it('forwards exactly our own fields under those names, or refuses with 550 5.6.0', async (t) => {
        const settings = fuzzSettings(t, MX_RUNS);
        let c: SmtpClient | null = null;
        let run = 0;
        let used = 0;
        const stats = { accepted: 0, refused: 0, ruled: 0, forgeriesSent: 0 };
        // our own fields, from a clean message
        const clean = async (): Promise<Field[]> => {
            const before = completed(up);
            c = await smtpConnect(mw.port(), { localAddress: '127.10.0.1' });
            await c.greeting();
            await c.cmd('EHLO client.example');
            const r = await sendData(c, 'a@example.org', ['From: a@example.org', 'Subject: clean']);
            assert.equal(r.code, 250, r.raw);
            assert.equal(completed(up), before + 1);
            const view = postfixView(unstuff(up.transactions.at(-1)!.data!).toString('latin1'));
            // the client's From and Subject come last
            return view.slice(0, view.length - 2);
        };
        const ours = await clean();
        assert.ok(ours.some((f) => f.name === 'x-mailwarden-verdict'));
        try {
            await fc.assert(
                fc.asyncProperty(section, async (generated) => {
                    run++;
                    // a From of our own domain is refused by the shipped rules on mx: not what is fuzzed here
                    const lines = generated.map((l) => l.replace(/@example\.test/g, '@example.org'));
                    // a From for three sections in four that have none (the shipped rules refuse a message
                    // without one), added last so that it changes how no other line reads
                    if (run % 4 !== 0 && !lines.some((l) => /^from[ \t]*:/i.test(l))) lines.push('From: a@example.org');
                    // a new connection every few messages: refused messages count towards the session's
                    // error limit (20, as Postfix smtpd_hard_error_limit), which is not what is fuzzed here
                    if (!c || c.closed || used >= 10) {
                        c?.close();
                        c = await smtpConnect(mw.port(), { localAddress: `127.10.${run % 250}.1` });
                        await c.greeting();
                        await c.cmd('EHLO client.example');
                        used = 0;
                    }
                    used++;
                    const before = completed(up);
                    // a sender per message: the shipped per-sender rate limits are not what is fuzzed here
                    const r = await sendData(c, `a${run}@example.org`, lines);
                    const bad = malformed(lines);
                    if (r.code !== 250) {
                        assert.equal(completed(up), before, 'nothing reaches the upstream');
                        if (bad) {
                            stats.refused++;
                            assert.equal(r.code, 550, r.raw);
                            assert.match(r.text, /^5\.6\.0 Message refused: line \d+ of the header section/);
                        } else {
                            // a section that parses may still be refused by a shipped rule: several
                            // From senders, no From, or a field RFC 5322 allows once written twice
                            stats.ruled++;
                            assert.equal(r.code, 550, r.raw);
                            if (r.text.startsWith('5.6.0 Message refused: it has no From field')) {
                                const names = postfixView(dataOf(lines)).map((f) => f.name);
                                assert.ok(!names.includes('from'), `a From field: ${JSON.stringify(lines)}`);
                            } else if (r.text.startsWith('5.6.0')) {
                                assert.match(r.text, /^5\.6\.0 Message refused: it has more than one .* field/);
                                const names = postfixView(dataOf(lines)).map((f) => f.name);
                                const twice = ONCE.filter((n) => names.filter((m) => m === n).length > 1);
                                assert.ok(twice.length > 0, `no field twice: ${JSON.stringify(lines)}`);
                            } else {
                                assert.match(r.text, /^5\.7\.1 Message refused: .*\(id \w+\)$/);
                            }
                        }
                        return;
                    }
                    stats.accepted++;
                    assert.ok(!bad, `accepted a section that does not parse: ${JSON.stringify(lines)}`);
                    assert.equal(completed(up), before + 1);
                    const view = postfixView(unstuff(up.transactions.at(-1)!.data!).toString('latin1'));
                    const sent = postfixView(dataOf(lines));
                    stats.forgeriesSent += sent.filter(isOursByName).length;
                    assert.deepEqual(
                        view.slice(0, ours.length).map((f) => f.name),
                        ours.map((f) => f.name),
                        'our fields on top',
                    );
                    const verdict = view.find((f) => f.name === 'x-mailwarden-verdict')!;
                    assert.match(verdict.value, /^ accept; rules=[^\r\n]*; score=-?\d+; id=\w+$/, 'our verdict intact');
                    const rest = view.slice(ours.length);
                    for (const f of rest) assert.ok(!isOursByName(f), `a forged ${f.name}:${f.value} survived`);
                    assert.deepEqual(
                        rest.map((f) => `${f.name}:${f.value}`),
                        sent.filter((f) => !isOursByName(f)).map((f) => `${f.name}:${f.value}`),
                        'every other field arrives, in order',
                    );
                }),
                settings,
            );
        } finally {
            (c as SmtpClient | null)?.close();
        }
        t.diagnostic(JSON.stringify(stats));
        assert.ok(stats.accepted > settings.numRuns / 4 && stats.refused > 0 && stats.forgeriesSent > 0);
    });
});

describe('header section fuzzing through a submission listener', () => {
    let cert: TestCertificate;
    let up: ScriptedUpstream;
    let dns: DnsTestServer;
    let mw: TestApp;
    before(async () => {
        cert = await createTestCertificate();
        up = await startScriptedUpstream({
            ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN', 'SIZE 1000000', '8BITMIME'],
        });
        const users = join(cert.dir, 'users.yaml');
        writeFileSync(users, `users:\n  - login: alice@example.test\n    password: '${await hash('correct horse')}'\n`);
        const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
        const keyFile = join(cert.dir, 'dkim.key');
        writeFileSync(keyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
        dns = await startDnsServer({});
        // no rule files: the shipped per-login rate limits are not what is fuzzed here
        const rules = join(cert.dir, 'rules');
        mkdirSync(rules);
        // no rules on purpose: an empty folder is refused
        writeFileSync(join(rules, '00-none.yaml'), 'rules: []\n');
        mw = await startApp(
            [
                `rules: "${rules}"`,
                `hostname: ${OUR_ID}`,
                'domains: [example.test]',
                `tls: { cert: "${cert.certPath}", key: "${cert.keyPath}" }`,
                `auth: { users: "${users}" }`,
                `dkim: { sign: [ { domain: example.test, selector: mw, key: "${keyFile}" } ] }`,
                'listeners: [{ name: submissions, host: 127.0.0.1, port: 0, mode: submission, tls: implicit }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                `dns: { servers: ["${dns.address}"], timeout: 1s }`,
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw.stop();
        await up.close();
        await dns.close();
        cert.cleanup();
    });

    it('accepts and signs only one From with the login’s address, else refuses and forwards nothing', async (t) => {
        const settings = fuzzSettings(t, SUBMISSION_RUNS);
        let c: SmtpClient | null = null;
        let used = 0;
        const stats = { accepted: 0, refused: 0 };
        const login = async (): Promise<SmtpClient> => {
            const s = await smtpConnect(mw.port(), { tls: 'implicit', ca: cert.cert, servername: 'localhost' });
            await s.greeting();
            await s.cmd('EHLO laptop.example');
            const auth = Buffer.from('\0alice@example.test\0correct horse').toString('base64');
            assert.equal((await s.cmd(`AUTH PLAIN ${auth}`)).code, 235);
            return s;
        };
        try {
            await fc.assert(
                fc.asyncProperty(section, fc.boolean(), async (generated, withFrom) => {
                    const lines = withFrom ? ['From: alice@example.test', ...generated] : generated;
                    // a new login every few messages: refusals count towards the session's error limit
                    if (!c || c.closed || used >= 10) {
                        c?.close();
                        c = await login();
                        used = 0;
                    }
                    used++;
                    const before = completed(up);
                    const r = await sendData(c, 'alice@example.test', lines);
                    const sent = postfixView(dataOf(lines));
                    const froms = sent.filter((f) => f.name === 'from');
                    const senders = sent.filter((f) => f.name === 'sender');
                    const good =
                        !malformed(lines) &&
                        froms.length === 1 &&
                        senders.length === 0 &&
                        // folding white space (a continuation line of blanks included) is no part of the address
                        /^[ \t]*(Alice )?<?alice@example\.test>?[ \t]*$/.test(froms[0]!.value.replace(/\r\n/g, ''));
                    if (r.code !== 250) {
                        stats.refused++;
                        assert.ok(
                            (r.code === 550 && /^5\.6\.0 /.test(r.text)) ||
                                (r.code === 553 && /^5\.7\.1 /.test(r.text)),
                            r.raw,
                        );
                        assert.ok(!good, `refused a good message: ${JSON.stringify(lines)}: ${r.raw}`);
                        assert.equal(completed(up), before, 'nothing reaches the upstream');
                        return;
                    }
                    stats.accepted++;
                    assert.ok(good, `accepted: ${JSON.stringify(lines)}`);
                    const view = postfixView(unstuff(up.transactions.at(-1)!.data!).toString('latin1'));
                    const upFroms = view.filter((f) => f.name === 'from');
                    assert.equal(upFroms.length, 1, 'Postfix reads exactly one From');
                    assert.match(upFroms[0]!.value, /alice@example\.test/);
                    assert.ok(
                        view.some((f) => f.name === 'dkim-signature'),
                        'signed',
                    );
                    for (const f of view)
                        assert.ok(!f.name.startsWith('x-mailwarden-') || f.name === 'x-mailwarden-verdict');
                }),
                settings,
            );
        } finally {
            (c as SmtpClient | null)?.close();
        }
        t.diagnostic(JSON.stringify(stats));
        assert.ok(stats.accepted > 0 && stats.refused > 0);
    });
});
