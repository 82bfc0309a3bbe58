/**
 * Fuzzing of message structure through the data stage of the mx listener (fast-check; seed and
 * budget from test/helpers/fuzz.ts: MW_FUZZ_SEED=<n> replays, MW_FUZZ_RUNS scales). Generated
 * messages: nested multiparts (boundaries missing, duplicated, unterminated, overlong, quoted or
 * not, parts that never close), base64 and quoted-printable garbage, 8-bit text, many header
 * fields (within the header size limit), and up to 40 DKIM-Signature fields with random tags
 * (distinct d=/s=, l=, bad bh=/b=, unknown algorithms), ARC sets and From fields of several
 * domains. The loopback DNS server answers NXDOMAIN and counts every query.
 * Invariants: no crash and nothing logged at error level; a reply with an enhanced code within
 * the check timeout (`authentication.timeout`, 5 s here); the DNS queries made for one message
 * stay within `authentication.maxDnsQueries` (10 here, the lowest allowed, while the SPF record of spf.example
 * alone asks for 11, and may spend all but DMARC's half) plus the connection's own (the client's
 * PTR and its forward check); a 250 only when the upstream has the message.
 * Budget: 60 messages (about 10 s on a busy 2-core machine).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { DMARC_RESERVE } from '../../src/sender-auth/mailauth.ts';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startDnsServer, type DnsTestServer } from '../helpers/dns-server.ts';
import { fuzzSettings } from '../helpers/fuzz.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { smtpConnect, type SmtpClient } from '../helpers/smtp-client.ts';

const RUNS = 60;
const MAX_DNS = 10;
/** Queries of the connection itself, outside the per-message budget: PTR, then A and AAAA of its name. */
const CONNECTION_DNS = 3;
const CHECK_TIMEOUT_S = 5;

const token = fc.stringMatching(/^[a-zA-Z0-9'()+_,./:=?-]{1,20}$/);
const base64ish = fc.string({
    unit: fc.constantFrom(...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=!*\t -'),
    maxLength: 120,
});
const dkimSignature = fc
    .record({
        v: fc.constantFrom('1', '2', ''),
        a: fc.constantFrom('rsa-sha256', 'ed25519-sha256', 'rsa-sha1', 'x'),
        d: fc.oneof(
            fc.constantFrom('example.org', 'example.net'),
            fc.nat(1000).map((n) => `d${n}.example`),
        ),
        s: fc.oneof(
            fc.constant('s'),
            fc.nat(1000).map((n) => `s${n}`),
        ),
        l: fc.option(fc.oneof(fc.nat(5000).map(String), fc.constantFrom('-1', '99999999999999999999', 'x'))),
        h: fc.constantFrom('from:to:subject', 'from', 'from:from:from:from:from:from', '', 'x-a:'.repeat(50)),
        c: fc.constantFrom('relaxed/relaxed', 'simple/simple', 'relaxed', 'bogus/bogus'),
        bh: base64ish,
        b: base64ish,
    })
    .map(
        ({ v, a, d, s, l, h, c, bh, b }) =>
            `DKIM-Signature: v=${v}; a=${a}; c=${c}; d=${d}; s=${s};${l === null ? '' : ` l=${l};`}\r\n h=${h}; bh=${bh};\r\n b=${b}`,
    );
const arcSet = fc
    .nat(12)
    .map(
        (i) =>
            `ARC-Seal: i=${i}; a=rsa-sha256; cv=pass; d=arc${i}.example; s=s; b=AAAA\r\nARC-Message-Signature: i=${i}; a=rsa-sha256; d=arc${i}.example; s=s; h=from; bh=AAAA; b=AAAA\r\nARC-Authentication-Results: i=${i}; arc${i}.example; spf=pass`,
    );
const fromField = fc.constantFrom(
    'From: a@example.org',
    'From: b@example.net',
    'From: a@example.org, c@example.com',
    'From: =?utf-8?b?w6k=?= <a@d1.example>',
    'From: <>',
);
const extraField = fc.tuple(fc.stringMatching(/^X-[A-Za-z]{1,8}$/), token).map(([n, v]) => `${n}: ${v}`);

interface Part {
    readonly headers: readonly string[];
    readonly body: string;
}

const leafBody = fc.oneof(
    fc.string({ maxLength: 200 }).map((s) =>
        s
            .replace(/\r?\n/g, '\r\n')
            .replace(/\r(?!\n)/g, '')
            .replace(/(?<!\r)\n/g, ''),
    ),
    base64ish,
    fc.constantFrom('=\r\n=4=\r\n=ZZ soft break =', '\xff\xfe\x00'.replace('\x00', ''), ''),
);
const boundary = fc.oneof(
    fc.stringMatching(/^[a-zA-Z0-9'()+_,./:=?-]{1,30}$/),
    fc.constantFrom('', 'b'.repeat(80), 'same', 'has space'),
);

const leaf: fc.Arbitrary<Part> = fc
    .record({
        type: fc.constantFrom(
            'text/plain',
            'text/html; charset=utf-8',
            'application/octet-stream',
            'message/rfc822',
            'image/png',
        ),
        cte: fc.constantFrom('7bit', 'base64', 'quoted-printable', '8bit', 'x-uuencode', 'binary'),
        body: leafBody,
    })
    .map(({ type, cte, body }) => ({
        headers: [`Content-Type: ${type}`, `Content-Transfer-Encoding: ${cte}`],
        body,
    }));

const { part } = fc.letrec<{ part: Part; multipart: Part }>((tie) => ({
    part: fc.oneof({ depthSize: 'small', withCrossShrink: true }, leaf, tie('multipart')),
    multipart: fc
        .record({
            sub: fc.constantFrom('mixed', 'alternative', 'related', 'digest', 'signed'),
            boundary,
            quoted: fc.boolean(),
            parts: fc.array(tie('part'), { maxLength: 4 }),
            close: fc.constantFrom('close', 'none', 'twice', 'wrong'),
            preamble: fc.constantFrom('', 'preamble\r\n', '--not-the-boundary\r\n'),
        })
        .map(({ sub, boundary: b, quoted, parts, close, preamble }) => {
            const param = quoted ? `"${b}"` : b;
            let body = preamble;
            for (const p of parts) body += `--${b}\r\n${p.headers.join('\r\n')}\r\n\r\n${p.body}\r\n`;
            if (close === 'close') body += `--${b}--\r\n`;
            if (close === 'twice') body += `--${b}--\r\n--${b}--\r\n`;
            if (close === 'wrong') body += `--${b}x--\r\n`;
            return { headers: [`Content-Type: multipart/${sub}; boundary=${param}`], body };
        }),
}));

const message = fc
    .record({
        froms: fc.array(fromField, { minLength: 1, maxLength: 2 }),
        signatures: fc.array(dkimSignature, { maxLength: 40 }),
        arc: fc.array(arcSet, { maxLength: 3 }),
        extra: fc.array(extraField, { maxLength: 200 }),
        root: part,
    })
    .map(({ froms, signatures, arc, extra, root }) => {
        const headers = [
            ...arc,
            ...signatures,
            ...froms,
            'To: bob@example.test',
            'Subject: mime',
            'MIME-Version: 1.0',
            ...extra,
            ...root.headers,
        ];
        const text = `${headers.join('\r\n')}\r\n\r\n${root.body}`;
        return text.replace(/(^|\r\n)\./g, '$1..');
    });

describe('MIME message fuzzing through the data stage', () => {
    let up: ScriptedUpstream;
    let dns: DnsTestServer;
    let mw: TestApp;
    before(async () => {
        up = await startScriptedUpstream({
            ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN', 'SIZE 10000000', '8BITMIME'],
        });
        // spf.example's SPF record needs 11 lookups: more than the per-message budget
        const hosts = Array.from({ length: 10 }, (_, i) => `h${i}.spf.example`);
        dns = await startDnsServer({
            'spf.example': { TXT: [`v=spf1 ${hosts.map((h) => `a:${h}`).join(' ')} -all`] },
            ...Object.fromEntries(hosts.map((h) => [h, { A: ['192.0.2.1'] }])),
        });
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}", xclient: true }`,
                `authentication: { timeout: ${CHECK_TIMEOUT_S}s, maxDnsQueries: ${MAX_DNS} }`,
                `dns: { servers: ["${dns.address}"], timeout: 1s }`,
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw.stop();
        await up.close();
        await dns.close();
    });

    it('answers every message within the check timeout and its DNS budget, without a crash', async (t) => {
        const settings = fuzzSettings(t, RUNS);
        const stats = { accepted: 0, refused: 0, tempfailed: 0, maxQueries: 0, spfQueries: 0 };
        let run = 0;
        await fc.assert(
            fc.asyncProperty(
                message,
                fc.constantFrom('example.org', 'example.net', 'spf.example'),
                async (data, domain) => {
                    run++;
                    const c: SmtpClient = await smtpConnect(mw.port(), {
                        localAddress: `127.12.${run % 250}.1`,
                        timeoutMs: (CHECK_TIMEOUT_S + 5) * 1000,
                    });
                    try {
                        const queriesBefore = dns.queries.length;
                        await c.greeting();
                        await c.cmd('EHLO client.example');
                        assert.equal((await c.cmd(`MAIL FROM:<s${run}@${domain}>`)).code, 250);
                        assert.equal((await c.cmd('RCPT TO:<bob@example.test>')).code, 250);
                        assert.equal((await c.cmd('DATA')).code, 354);
                        const before = up.transactions.filter((tx) => tx.completed).length;
                        c.write(Buffer.from(`${data}\r\n.\r\n`, 'latin1'));
                        // the reply must come within the check timeout (the client's own timeout fails the test)
                        const r = await c.reply();
                        assert.match(r.raw, /^(\d{3}[ -][\x20-\x7e]*\r\n)+$/);
                        assert.match(r.text, new RegExp(`^${String(r.code)[0]}\\.\\d{1,3}\\.\\d{1,3} `), r.raw);
                        const after = up.transactions.filter((tx) => tx.completed).length;
                        if (r.code === 250) {
                            stats.accepted++;
                            assert.equal(after, before + 1, 'a 250 only when the upstream has it');
                        } else {
                            if (r.code >= 500) stats.refused++;
                            else stats.tempfailed++;
                            assert.equal(after, before, 'nothing upstream without our 250');
                        }
                        const queries = dns.queries.length - queriesBefore;
                        stats.maxQueries = Math.max(stats.maxQueries, queries);
                        if (domain === 'spf.example') stats.spfQueries = Math.max(stats.spfQueries, queries);
                        assert.ok(
                            queries <= MAX_DNS + CONNECTION_DNS,
                            `${queries} DNS queries for one message: ${JSON.stringify(dns.queries.slice(queriesBefore).map((q) => `${q.type} ${q.name}`))}`,
                        );
                    } finally {
                        c.close();
                    }
                },
            ),
            settings,
        );
        const errors = mw.logs.filter((l) => typeof l.level === 'number' && l.level >= 50);
        assert.deepEqual(errors, [], 'nothing logged at error level');
        t.diagnostic(JSON.stringify(stats));
        // SPF spends the budget but for the part kept for DMARC (half of it here)
        const dmarcPart = Math.min(DMARC_RESERVE.queries, Math.floor(MAX_DNS / 2));
        assert.ok(stats.spfQueries >= MAX_DNS - dmarcPart, 'the budget was reached');
    });
});
