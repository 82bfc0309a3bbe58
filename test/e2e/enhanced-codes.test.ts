/**
 * Enhanced status codes (RFC 2034, RFC 3463) on the wire: EHLO advertises
 * ENHANCEDSTATUSCODES; every reply carries exactly one enhanced code of its class, `250` to
 * MAIL (2.1.0) and RCPT (2.1.5) included, except the greeting and the replies to HELO/EHLO
 * (none, RFC 2034 section 4) and `3xx` (RFC 3463 has no class 3); AUTH answers `235 2.7.0`.
 * A property test sends random command sequences and checks every reply the same way. Also:
 * a listener without TLS refuses STARTTLS instead of upgrading with a built-in certificate.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { hash } from '@node-rs/argon2';
import fc from 'fast-check';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { smtpConnect, type SmtpClient, type SmtpReply } from '../helpers/smtp-client.ts';
import { createTestCertificate, type TestCertificate } from '../helpers/tls-cert.ts';

const ENHANCED = /^([245])\.\d{1,3}\.\d{1,3}(?: |$)/;

/** Replies that must carry exactly one enhanced code of their class on every line. */
function assertOneCode(reply: SmtpReply, what: string): void {
    for (const line of reply.lines) {
        const m = ENHANCED.exec(line);
        assert.ok(m, `${what}: "${reply.code} ${line}" has an enhanced code`);
        assert.equal(m[1], String(reply.code)[0], `${what}: the class matches the reply code`);
        assert.doesNotMatch(line.slice(m[0].length), /^[245]\.\d{1,3}\.\d{1,3}\b/, `${what}: only one code`);
    }
}

function assertNoCode(reply: SmtpReply, what: string): void {
    for (const line of reply.lines) assert.doesNotMatch(line, /^[245]\.\d{1,3}\.\d{1,3}\b/, `${what}: ${line}`);
}

describe('enhanced status codes on an mx listener', () => {
    let up: ScriptedUpstream;
    let mw: TestApp;
    before(async () => {
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN', 'SIZE 1000000'] });
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw.stop();
        await up.close();
    });

    it('advertises them and puts exactly one on every reply but the greeting and HELO/EHLO', async () => {
        const c = await smtpConnect(mw.port(), { localAddress: '127.2.0.1' });
        try {
            const greeting = await c.greeting();
            assert.equal(greeting.raw, '220 mx.example.test ESMTP mailwarden\r\n');
            const ehlo = await c.cmd('EHLO client.example');
            assert.ok(ehlo.lines.includes('ENHANCEDSTATUSCODES'), ehlo.raw);
            assertNoCode(ehlo, 'EHLO');
            const helo = await c.cmd('HELO client.example');
            assert.equal(helo.code, 250);
            assertNoCode(helo, 'HELO');
            const syntax = await c.cmd('EHLO');
            assertNoCode(syntax, 'a syntax error in EHLO');
            // the text of the reply table, not smtp-server's own
            assert.equal(syntax.raw, '501 Syntax error: EHLO takes exactly one host name\r\n');
            assert.equal((await c.cmd('HELO')).raw, '501 Syntax error: HELO takes exactly one host name\r\n');
            assert.equal((await c.cmd('EHLO a b')).raw, '501 Syntax error: EHLO takes exactly one host name\r\n');
            const dialog: [string, string][] = [
                ['EHLO client.example', ''],
                ['NOOP', '250 2.0.0 OK\r\n'],
                // every text from the reply table, none of smtp-server's own (src/smtp-server/replies.ts)
                ['HELP', '214 2.0.0 This is an SMTP server (RFC 5321); ask the postmaster of this domain for help\r\n'],
                // commands for a proxy in front of an MTA, or sendmail's jokes: unknown here, not a policy refusal
                ['XCLIENT NAME=spoofed.example ADDR=192.0.2.1', '500 5.5.2 Command not recognized\r\n'],
                ['XFORWARD NAME=spoofed.example', '500 5.5.2 Command not recognized\r\n'],
                ['WIZ secret', '500 5.5.2 Command not recognized\r\n'],
                ['SHELL', '500 5.5.2 Command not recognized\r\n'],
                ['KILL', '500 5.5.2 Command not recognized\r\n'],
                ['VRFY someone', '252 2.0.0 '],
                ['FROBNICATE', '500 5.5.2 Command not recognized\r\n'],
                ['STARTTLS', '500 5.5.2 '],
                ['AUTH PLAIN AGFAYg==', '500 5.5.2 '],
                ['RCPT TO:<b@example.test>', '503 5.5.1 Bad sequence of commands: send MAIL FROM first\r\n'],
                ['MAIL FROM:<not an address', '553 5.1.7 '],
                ['MAIL FROM:<a@example.org>', '250 2.1.0 Sender accepted\r\n'],
                [
                    'MAIL FROM:<a@example.org>',
                    '503 5.5.1 Bad sequence of commands: a mail transaction is already open; finish it or send RSET\r\n',
                ],
                ['DATA', '503 5.5.1 Bad sequence of commands: send RCPT TO first\r\n'],
                ['RCPT TO:<no address', '553 5.1.3 '],
                ['RCPT TO:<b@example.test>', '250 2.1.5 Recipient accepted\r\n'],
                ['DATA', '354 End data with <CR><LF>.<CR><LF>'],
            ];
            for (const [command, expected] of dialog) {
                const r = await c.cmd(command);
                if (!expected) continue;
                assert.ok(r.raw.startsWith(expected), `${command}: ${r.raw}`);
                if (r.code < 300 || r.code >= 400) assertOneCode(r, command);
            }
            c.write('From: a@example.org\r\nSubject: t\r\n\r\nbody\r\n.\r\n');
            const accepted = await c.reply();
            assert.match(accepted.raw, /^250 2\.0\.0 Message accepted for delivery /);
            assertOneCode(accepted, 'end of data');
            assert.equal((await c.cmd('RSET')).raw, '250 2.0.0 Reset: no mail transaction is open\r\n');
            assert.equal((await c.cmd('QUIT')).raw, '221 2.0.0 Goodbye; closing the connection\r\n');
        } finally {
            c.close();
        }
    });

    it('closes on an overlong command line with 421 4.5.2, in our words', async () => {
        const c = await smtpConnect(mw.port(), { localAddress: '127.2.0.3' });
        try {
            await c.greeting();
            c.write(`NOOP ${'x'.repeat(20_000)}\r\n`);
            const r = await c.reply();
            assert.equal(r.raw, '421 4.5.2 Command line too long; closing the connection\r\n');
            await c.waitClosed(2000);
        } finally {
            c.close();
        }
    });

    it('holds for any sequence of commands (property)', async (t) => {
        const seed = Number(process.env.MW_FC_SEED ?? Date.now() % 2 ** 31);
        t.diagnostic(`fast-check seed ${seed} (rerun with MW_FC_SEED=${seed})`);
        const command = fc.constantFrom(
            'EHLO client.example',
            'HELO client.example',
            'EHLO',
            'MAIL FROM:<a@example.org>',
            'MAIL FROM:<>',
            'MAIL FROM:garbage',
            'MAIL FROM:<a@example.org> SIZE=abc',
            'MAIL FROM:<a@example.org> BODY=BINARYMIME',
            'RCPT TO:<b@example.test>',
            'RCPT TO:<postmaster>',
            'RCPT TO:garbage',
            'DATA',
            'RSET',
            'NOOP',
            'VRFY x',
            'HELP',
            'STARTTLS',
            'AUTH LOGIN',
            'XCLIENT ADDR=192.0.2.1',
            'BDAT 5 LAST',
            '',
            'frobnicate',
            'QUIT',
        );
        let run = 0;
        await fc.assert(
            fc.asyncProperty(fc.array(command, { minLength: 1, maxLength: 12 }), async (commands) => {
                run++;
                const c: SmtpClient = await smtpConnect(mw.port(), { localAddress: `127.3.${run % 250}.1` });
                try {
                    assertNoCode(await c.greeting(), 'greeting');
                    for (const cmd of commands) {
                        if (c.closed) break;
                        let r: SmtpReply;
                        try {
                            r = await c.cmd(cmd);
                        } catch (err) {
                            if (c.closed) break; // the server closed the connection (QUIT, 421)
                            throw err;
                        }
                        if (r.code === 354) {
                            c.write('From: a@example.org\r\nSubject: p\r\n\r\nproperty\r\n.\r\n');
                            r = await c.reply();
                        }
                        if (/^(EHLO|HELO)\b/i.test(cmd)) assertNoCode(r, cmd);
                        else if (r.code < 300 || r.code >= 400) assertOneCode(r, cmd || '(empty line)');
                    }
                } finally {
                    c.close();
                }
            }),
            { numRuns: 30, seed },
        );
    });
});

describe('enhanced status codes of AUTH on a submission listener', () => {
    let cert: TestCertificate;
    let up: ScriptedUpstream;
    let mw: TestApp;
    before(async () => {
        cert = await createTestCertificate();
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'] });
        const users = join(cert.dir, 'users.yaml');
        writeFileSync(users, `users:\n  - login: alice@example.test\n    password: '${await hash('correct horse')}'\n`);
        mw = await startApp(
            [
                'hostname: mx.example.test',
                `tls: { cert: "${cert.certPath}", key: "${cert.keyPath}" }`,
                `auth: { users: "${users}" }`,
                'listeners: [{ name: submissions, host: 127.0.0.1, port: 0, mode: submission, tls: implicit }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw.stop();
        await up.close();
        cert.cleanup();
    });

    it('answers 334 without and 235 with an enhanced code', async () => {
        const c = await smtpConnect(mw.port(), { tls: 'implicit', localAddress: '127.2.1.1' });
        try {
            await c.greeting();
            assert.ok((await c.cmd('EHLO laptop.example')).lines.includes('ENHANCEDSTATUSCODES'));
            const user = await c.cmd('AUTH LOGIN');
            assert.equal(user.raw, '334 VXNlcm5hbWU6\r\n');
            const pass = await c.cmd(Buffer.from('alice@example.test').toString('base64'));
            assert.equal(pass.raw, '334 UGFzc3dvcmQ6\r\n');
            const ok = await c.cmd(Buffer.from('correct horse').toString('base64'));
            assert.equal(ok.raw, '235 2.7.0 Authentication succeeded\r\n');
            assert.equal((await c.cmd('MAIL FROM:<alice@example.test>')).raw.slice(0, 10), '250 2.1.0 ');
        } finally {
            c.close();
        }
    });
});
