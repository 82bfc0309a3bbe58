/**
 * Fuzzing of SMTP command lines and envelopes through the real mx listener (fast-check; seed
 * and budget from test/helpers/fuzz.ts: set MW_FUZZ_SEED=<n> to replay, MW_FUZZ_RUNS to scale).
 * Each run is one connection from its own loopback address that sends a generated sequence of
 * commands, lock-step: EHLO/HELO, MAIL and RCPT built from the RFC 5321 section 4.1.2 path
 * grammar (dot-strings, quoted local parts, source routes, IPv4/IPv6 literals, U-labels, the
 * null sender and Postmaster) with ESMTP parameters offered or not, DATA with a small message,
 * RSET, NOOP, VRFY, unknown verbs; then hostile mutations of the bytes: odd case, NUL, bare CR,
 * bare LF (which ends a command line, as in Postfix), 8-bit bytes, tabs, long and overlong lines.
 * Invariants:
 *   - every reply is well formed (`NNN-`/`NNN ` lines, one code, printable) and carries an
 *     RFC 3463 enhanced code of its class, except the replies to EHLO/HELO (RFC 2034 section 4)
 *     and the 354;
 *   - after a 421 the connection closes; otherwise the session stays usable (RSET gets 250,
 *     QUIT gets 221); nothing is logged at error level (our own failure) and nothing throws;
 *   - the upstream receives exactly the MAIL and RCPT commands the client got a 2xx for, in
 *     order, each with the canonical form of the address our envelope parser read from the
 *     client's line; every line it receives is printable and every address canonical;
 *   - a message reaches the upstream only for a 250 at the end of data.
 * Budget: 100 sessions (about 15 s on a busy 2-core machine).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { isCanonicalAddress, parseEnvelopeCommand, type CommandKind } from '../../src/envelope/command.ts';
import { startApp, type TestApp } from '../helpers/app.ts';
import { fuzzSettings } from '../helpers/fuzz.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { smtpConnect, type SmtpClient, type SmtpReply } from '../helpers/smtp-client.ts';

const RUNS = 100;

// ---- the grammar (strings of latin1 characters, one per byte) ----

const atom = fc.stringMatching(/^[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,8}$/);
const dotString = fc.array(atom, { minLength: 1, maxLength: 3 }).map((a) => a.join('.'));
const quotedLocal = fc
    .array(
        fc.oneof(
            fc.stringMatching(/^[a-zA-Z0-9 .@,:;<>()[\]-]{1,6}$/),
            fc.constantFrom('\\"', '\\\\', '\\ ', '"', '\\'),
        ),
        { minLength: 0, maxLength: 4 },
    )
    .map((parts) => `"${parts.join('')}"`);
const utf8Local = fc.constantFrom('j\u00f6rg', '\u7528\u6237', 'caf\u00e9.x').map((s) => latin1OfUtf8(s));
const localPart = fc.oneof({ weight: 8, arbitrary: dotString }, quotedLocal, utf8Local);
const label = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?$/);
const domain = fc.oneof(
    { weight: 10, arbitrary: fc.mixedCase(fc.constantFrom('example.test', 'sub.example.test', 'example.org')) },
    fc.array(label, { minLength: 1, maxLength: 4 }).map((l) => l.join('.')),
    fc.constantFrom('[192.0.2.1]', '[IPv6:2001:db8::1]', '[IPv6:::ffff:192.0.2.1]', '[300.1.1.1]', '[tag:x]'),
    fc.constantFrom('b\u00fccher.example.test', 'xn--bcher-kva.example.test').map((s) => latin1OfUtf8(s)),
    fc.constantFrom('example.test.', '-bad.example', 'a..b', ''),
);
const mailbox = fc.tuple(localPart, domain).map(([l, d]) => `${l}@${d}`);
const sourceRoute = fc
    .array(domain, { minLength: 1, maxLength: 2 })
    .map((ds) => ds.map((d) => `@${d}`).join(',') + ':');
const path = fc.oneof(
    { weight: 12, arbitrary: mailbox.map((m) => `<${m}>`) },
    fc.tuple(sourceRoute, mailbox).map(([r, m]) => `<${r}${m}>`),
    fc.constantFrom('<>', '<Postmaster>', '<postmaster>', '<POSTMASTER@example.test>'),
    mailbox, // without angle brackets
    fc.constantFrom(
        '<a@example.test',
        'a@example.test>',
        '<<a@example.test>>',
        '<a@b@example.test>',
        '< a@example.test >',
    ),
);
const param = fc.oneof(
    fc.nat(2_000_000).map((n) => `SIZE=${n}`),
    fc.constantFrom('BODY=8BITMIME', 'BODY=7BIT', 'BODY=BINARYMIME', 'BODY=', 'SMTPUTF8', 'SMTPUTF8=yes'),
    fc.constantFrom('RET=FULL', 'RET=HDRS', 'RET=NONE', 'ENVID=abc+2Bdef', 'ENVID=a b'),
    fc.constantFrom('NOTIFY=SUCCESS,FAILURE', 'NOTIFY=NEVER', 'NOTIFY=NEVER,SUCCESS', 'ORCPT=rfc822;a@example.test'),
    fc.constantFrom('REQUIRETLS', 'AUTH=<>', 'AUTH=a+40example.org', 'MT-PRIORITY=3', 'HOLDFOR=60'),
    fc
        .tuple(fc.stringMatching(/^[A-Za-z0-9-]{1,8}$/), fc.stringMatching(/^[!-<>-~]{0,8}$/))
        .map(([k, v]) => (v ? `${k}=${v}` : k)),
);
const params = fc.oneof(
    { weight: 3, arbitrary: fc.constant('') },
    fc.array(param, { minLength: 1, maxLength: 3 }).map((ps) => ps.map((p) => ` ${p}`).join('')),
);
const helo = fc.oneof(
    domain.map((d) => `EHLO ${d}`),
    domain.map((d) => `HELO ${d}`),
    fc.constantFrom('EHLO', 'HELO', 'EHLO [127.0.0.1]', 'EHLO a b c', 'EHLO <script>'),
);
const mailCmd = fc
    .tuple(fc.constantFrom('MAIL FROM:', 'MAIL FROM: ', 'MAIL FROM :', 'MAIL  FROM:', 'MAIL TO:'), path, params)
    .map(([v, p, ps]) => `${v}${p}${ps}`);
const rcptCmd = fc
    .tuple(fc.constantFrom('RCPT TO:', 'RCPT TO: ', 'RCPT TO :', 'RCPT FROM:'), path, params)
    .map(([v, p, ps]) => `${v}${p}${ps}`);
const otherCmd = fc.constantFrom(
    'RSET',
    'NOOP',
    'NOOP hello',
    'VRFY postmaster',
    'EXPN staff',
    'HELP',
    'DATA',
    'BDAT 10 LAST',
    'ETRN example.test',
    'XCLIENT ADDR=192.0.2.1',
    'XFORWARD ADDR=192.0.2.1',
    'GET / HTTP/1.0',
    'STARTTLS',
    'AUTH PLAIN AGFAAGI=',
    'TURN',
    '',
    ' ',
);

/** A mutation of one command line's bytes (as a latin1 string). */
type Mutation =
    | { kind: 'none' }
    | { kind: 'case' }
    | { kind: 'insert'; at: number; bytes: string }
    | { kind: 'repeat'; times: number }
    | { kind: 'pad'; length: number };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
    { weight: 12, arbitrary: fc.constant<Mutation>({ kind: 'none' }) },
    fc.constant<Mutation>({ kind: 'case' }),
    fc
        .record({
            at: fc.nat(300),
            bytes: fc.oneof(
                fc.constantFrom('\0', '\r', '\n', '\t', '\x7f', '\x1b', '\xff', '\xc3', '\xc3\xa9', '\xe2\x80\xae'),
                fc.string({ unit: fc.integer({ min: 0, max: 255 }).map((c) => String.fromCharCode(c)), maxLength: 4 }),
            ),
        })
        .map(({ at, bytes }): Mutation => ({ kind: 'insert', at, bytes })),
    fc.integer({ min: 2, max: 40 }).map((times): Mutation => ({ kind: 'repeat', times })),
    fc.constantFrom(500, 513, 1000, 2100, 5000, 70_000).map((length): Mutation => ({ kind: 'pad', length })),
);

const messages = [
    'From: a@example.org\r\nTo: b@example.test\r\nSubject: fuzz\r\n\r\nHello.\r\n',
    'Subject: bare\nlf\r\n\r\nbody\r\n',
    'Subject: nul\r\n\r\nbo\0dy\r\n',
    ' leading: continuation\r\nSubject: x\r\n\r\nbody\r\n',
    'Subject: 8bit \xe9\r\n\r\n\xff\xfe\r\n',
];

interface Step {
    readonly line: string;
    readonly mutation: Mutation;
    readonly message: number;
}

const step: fc.Arbitrary<Step> = fc.record({
    line: fc.oneof(
        { weight: 3, arbitrary: mailCmd },
        { weight: 8, arbitrary: rcptCmd },
        { weight: 2, arbitrary: fc.constant('DATA') },
        helo,
        otherCmd,
    ),
    mutation,
    message: fc.nat(messages.length - 1),
});
const session = fc.tuple(
    fc.oneof({ weight: 5, arbitrary: fc.constant('EHLO client.example') }, helo),
    fc.oneof({ weight: 4, arbitrary: fc.constant(true) }, fc.constant(false)), // a valid MAIL first, so that RCPTs are tried in a transaction
    fc.array(step, { minLength: 1, maxLength: 10 }),
);

function latin1OfUtf8(s: string): string {
    return Buffer.from(s, 'utf8').toString('latin1');
}

/** Verbs that change the dialog's mode: a fragment of a split line may never start with one. */
const MODAL = /^\s*(DATA|BDAT|STARTTLS|AUTH|QUIT)/i;

function mutate(line: string, m: Mutation): string {
    switch (m.kind) {
        case 'none':
            return line;
        case 'case':
            return [...line].map((c, i) => (i % 2 ? c.toLowerCase() : c.toUpperCase())).join('');
        case 'insert': {
            const at = Math.min(m.at, line.length);
            const out = line.slice(0, at) + m.bytes + line.slice(at);
            // a bare LF ends the command line: never let the second half be a mode-changing verb
            return out
                .split('\n')
                .map((part, i) => (i > 0 && MODAL.test(part) ? `x${part}` : part))
                .join('\n');
        }
        case 'repeat':
            return line + ' ' + 'x'.repeat(m.times * 30);
        case 'pad':
            return line + ' ' + 'a'.repeat(Math.max(0, m.length - line.length));
    }
}

const ENHANCED = /^([245])\.\d{1,3}\.\d{1,3}(?: |$)/;

function assertWellFormed(reply: SmtpReply, line: string): void {
    const what = JSON.stringify(line.length > 80 ? `${line.slice(0, 80)}…` : line);
    const raw = reply.raw.split('\r\n');
    assert.equal(raw.pop(), '', `${what}: the reply ends with CRLF: ${JSON.stringify(reply.raw)}`);
    raw.forEach((l, i) => {
        const sep = i === raw.length - 1 ? ' ' : '-';
        assert.ok(l.startsWith(`${reply.code}${sep}`) || (l === String(reply.code) && sep === ' '), `${what}: ${l}`);
        assert.match(l, /^[\x20-\x7e]*$/, `${what}: printable reply`);
    });
    assert.ok(reply.code >= 200 && reply.code < 600, `${what}: code ${reply.code}`);
    // RFC 2034 section 4: the replies to HELO and EHLO carry no enhanced code (nor does 354)
    if (/^(EHLO|HELO)(\s|$)/i.test(line) || reply.code === 354) return;
    for (const l of reply.lines) {
        const m = ENHANCED.exec(l);
        assert.ok(m, `${what}: "${reply.code} ${l}" carries an enhanced status code`);
        assert.equal(m[1], String(reply.code)[0], `${what}: the enhanced code's class matches ${reply.code}`);
    }
}

/** The path between the angle brackets of an upstream MAIL/RCPT line, and the kind. */
function upstreamEnvelope(line: string): { kind: CommandKind; address: string } | null {
    const m = /^(MAIL FROM|RCPT TO):<(.*)>(?: .*)?$/.exec(line);
    if (!m) return null;
    // the address cannot contain '>' unquoted; find the closing bracket the parser would
    const kind: CommandKind = m[1] === 'MAIL FROM' ? 'mail' : 'rcpt';
    const p = parseEnvelopeCommand(kind, Buffer.from(line, 'utf8'));
    assert.ok(p.ok, `the upstream received an envelope command our parser refuses: ${line}`);
    return { kind, address: p.mailbox.address };
}

describe('SMTP command and envelope fuzzing through the mx listener', () => {
    let up: ScriptedUpstream;
    let mw: TestApp;
    before(async () => {
        up = await startScriptedUpstream({
            ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN', 'SIZE 1000000', '8BITMIME', 'SMTPUTF8', 'DSN'],
        });
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'relayDomains: [.example.test]',
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

    it('answers every command well, forwards only what it accepted, and survives', async (t) => {
        const settings = fuzzSettings(t, RUNS);
        let run = 0;
        const stats = { commands: 0, accepted: 0, recipients: 0, closed421: 0, messages: 0, delivered: 0 };
        await fc.assert(
            fc.asyncProperty(session, async ([hello, validMail, steps]) => {
                run++;
                // one network per session: the per-network and per-/24 limits are not what is fuzzed here
                const localAddress = `127.9.${run % 250}.${(Math.floor(run / 250) % 250) + 1}`;
                const c: SmtpClient = await smtpConnect(mw.port(), { localAddress, timeoutMs: 10_000 });
                const port = c.socket.localPort;
                /** What the client got a 2xx for, in order: the canonical address our parser reads. */
                const accepted: { kind: CommandKind; address: string }[] = [];
                let delivered = 0;
                let last: SmtpReply | null = null;
                const send = async (line: string): Promise<SmtpReply[] | null> => {
                    if (c.closed) return null;
                    c.write(Buffer.from(`${line}\r\n`, 'latin1'));
                    stats.commands++;
                    // a bare LF ends a command line: one reply per line the server reads
                    const lines = line.split('\n').map((l) => l.replace(/\r$/, ''));
                    const replies: SmtpReply[] = [];
                    for (const l of lines) {
                        let r: SmtpReply;
                        try {
                            r = await c.reply();
                        } catch (err) {
                            if (c.closed) {
                                assert.equal(last?.code, 421, `closed without 421 after ${JSON.stringify(l)}`);
                                return null;
                            }
                            throw err;
                        }
                        last = r;
                        replies.push(r);
                        assertWellFormed(r, l);
                        if (r.code === 421) {
                            stats.closed421++;
                            await c.waitClosed(5_000);
                            return replies;
                        }
                        const kind: CommandKind | null = /^MAIL FROM:/i.test(l)
                            ? 'mail'
                            : /^RCPT TO:/i.test(l)
                              ? 'rcpt'
                              : null;
                        if (kind && r.code >= 200 && r.code < 300) {
                            const p = parseEnvelopeCommand(kind, Buffer.from(l, 'latin1'));
                            assert.ok(p.ok, `${JSON.stringify(l)} got ${r.code} but does not parse`);
                            accepted.push({ kind, address: p.mailbox.address });
                            stats.accepted++;
                            if (kind === 'rcpt') stats.recipients++;
                        }
                    }
                    return replies;
                };
                try {
                    const greeting = await c.greeting();
                    assert.equal(greeting.code, 220);
                    await send(hello);
                    if (validMail) await send('MAIL FROM:<sender@example.org>');
                    for (const s of steps) {
                        const line = mutate(s.line, s.mutation);
                        const replies = await send(line);
                        if (!replies) break;
                        if (replies.at(-1)?.code === 354) {
                            const body = messages[s.message]!.replace(/(^|\r\n)\./g, '$1..');
                            c.write(Buffer.from(`${body}.\r\n`, 'latin1'));
                            const r = await c.reply();
                            last = r;
                            assertWellFormed(r, '(end of data)');
                            if (r.code === 250) {
                                delivered++;
                                stats.delivered++;
                            }
                            stats.messages++;
                            if (r.code === 421) {
                                await c.waitClosed(5_000);
                                break;
                            }
                        }
                    }
                    if (!c.closed) {
                        const rset = await send('RSET');
                        if (rset) assert.equal(rset[0]!.code, 250, 'the session stays usable');
                        const quit = await send('QUIT');
                        if (quit) assert.equal(quit[0]!.code, 221);
                    }
                } finally {
                    c.close();
                }
                // what the upstream received on this session's connection(s)
                const mine = up.connections.filter((u) =>
                    u.xclient.some((x) => x.ADDR === localAddress && x.PORT === String(port)),
                );
                const forwarded = mine
                    .flatMap((u) => u.commands)
                    .map((line) => {
                        assert.match(line, /^[\x20-\x7e\x80-\xff]*$/, `printable upstream line: ${line}`);
                        return upstreamEnvelope(line);
                    })
                    .filter((e) => e !== null);
                for (const f of forwarded) assert.ok(isCanonicalAddress(f.address, f.kind), f.address);
                assert.deepEqual(forwarded, accepted, 'the upstream got exactly the accepted MAIL and RCPT');
                const sent = up.transactions.filter(
                    (tx) => tx.completed && mine.some((u) => u.id === tx.connection),
                ).length;
                assert.equal(sent, delivered, 'a message reaches the upstream only with our 250');
            }),
            settings,
        );
        const errors = mw.logs.filter((l) => typeof l.level === 'number' && l.level >= 50);
        assert.deepEqual(errors, [], 'nothing logged at error level');
        t.diagnostic(JSON.stringify(stats));
        assert.ok(stats.recipients >= settings.numRuns / 10, 'the grammar produces enough accepted recipients');
        assert.ok(stats.messages > 0, 'and some messages');
    });
});

describe('regressions found by the command fuzzer', () => {
    let up: ScriptedUpstream;
    let mw: TestApp;
    before(async () => {
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN', 'SMTPUTF8'] });
        mw = await startApp(
            [
                'hostname: mx.example.test',
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

    // seed 2: `EHLO \xffexample.test` was decoded into U+FFFD by smtp-server, accepted, and the
    // rewritten name went upstream in XCLIENT HELO= and the EHLO after it
    it('refuses an EHLO or HELO name that is not valid UTF-8, and never forwards it', async () => {
        for (const verb of ['EHLO', 'HELO']) {
            const c = await smtpConnect(mw.port(), { localAddress: '127.9.251.1' });
            try {
                await c.greeting();
                c.write(Buffer.from(`${verb} \xffexample.test\r\n`, 'latin1'));
                const r = await c.reply();
                assert.equal(r.code, 501, r.raw);
                assert.match(r.text, /^5\.5\.4 Syntax error: .*UTF-8/);
                assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 503, 'no greeting was accepted');
                assert.equal((await c.cmd(`${verb} client.example`)).code, 250, 'the session stays usable');
                assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
            } finally {
                c.close();
            }
        }
        for (const line of up.commands) assert.doesNotMatch(line, /\ufffd|[\x80-\xff]/, line);
        assert.ok(up.commands.some((l) => l === 'EHLO client.example'));
    });

    it('still accepts a host name in UTF-8 (RFC 6531 U-labels) and passes it on as written', async () => {
        const c = await smtpConnect(mw.port(), { localAddress: '127.9.252.1' });
        try {
            await c.greeting();
            c.write(Buffer.from('EHLO b\u00fccher.example\r\n', 'utf8'));
            assert.equal((await c.reply()).code, 250);
            assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
        } finally {
            c.close();
        }
        assert.ok(up.commands.includes('EHLO b\u00fccher.example'), up.commands.join('\n'));
    });
});
