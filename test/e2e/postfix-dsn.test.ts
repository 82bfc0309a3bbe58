/**
 * Delivery status notifications (RFC 3461) through mailwarden into a real Postfix: mailwarden
 * learns from Postfix's EHLO that it offers DSN (and its SIZE limit), offers the same to its
 * clients, and passes RET, ENVID, NOTIFY and ORCPT on exactly, so Postfix sends the success
 * notice that NOTIFY=SUCCESS asked for, back into the sender's own mailbox. The SIZE offered
 * leaves room under Postfix's message_size_limit for the fields added on the way: a message of
 * exactly that size, DKIM-signed, with the longest HELO name in the trace fields, is delivered.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { hash } from '@node-rs/argon2';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startPostfix, type PostfixInstance } from '../helpers/postfix.ts';
import { smtpConnect } from '../helpers/smtp-client.ts';
import { createTestCertificate, type TestCertificate } from '../helpers/tls-cert.ts';

/** Postfix's message_size_limit in these tests, and the SIZE mailwarden offers under it (32 KiB less). */
const POSTFIX_LIMIT = 1_000_000;
const OFFERED = POSTFIX_LIMIT - 32 * 1024;

/** `head` and lines of text up to exactly `size` octets, ending with CRLF (no line starts with a dot). */
function exactly(size: number, head: string): string {
    const line = `${'z'.repeat(76)}\r\n`;
    const lines = Math.floor((size - head.length - 2) / line.length);
    const text = head + line.repeat(lines);
    const out = text + 'y'.repeat(size - text.length - 2) + '\r\n';
    assert.equal(out.length, size);
    return out;
}

describe('DSN through mailwarden into Postfix', () => {
    let postfix: PostfixInstance;
    let cert: TestCertificate;
    let mw: TestApp;
    before(async () => {
        // a limit small enough to send a message of that size quickly
        postfix = await startPostfix({
            users: ['alice', 'bob'],
            mainCf: { message_size_limit: String(POSTFIX_LIMIT) },
        });
        cert = await createTestCertificate();
        const users = join(cert.dir, 'users.yaml');
        writeFileSync(
            users,
            `users:\n  - login: alice@example.test\n    password: '${await hash('correct horse')}'\n    sendAs: [alice@example.test]\n`,
        );
        const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 4096 });
        const keyFile = join(cert.dir, 'dkim.key');
        writeFileSync(keyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
        mw = await startApp(
            [
                'hostname: mx.test',
                'domains: [example.test]',
                `tls: { cert: "${cert.certPath}", key: "${cert.keyPath}" }`,
                `auth: { users: "${users}" }`,
                `dkim: { sign: [ { domain: example.test, selector: mw, key: "${keyFile}" } ] }`,
                'listeners: [{ name: submissions, host: 127.0.0.1, port: 0, mode: submission, tls: implicit }]',
                `upstream: { url: "smtp://127.0.0.1:${postfix.port}", xclient: true }`,
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw?.stop();
        await postfix?.stop();
        cert?.cleanup();
    });

    it("offers DSN and Postfix's own SIZE limit less the room for our fields, learnt from Postfix's EHLO", async () => {
        const direct = await smtpConnect(postfix.port);
        await direct.greeting();
        const postfixEhlo = await direct.cmd('EHLO probe.example');
        direct.close();
        assert.ok(postfixEhlo.lines.includes(`SIZE ${POSTFIX_LIMIT}`), postfixEhlo.text);
        assert.ok(postfixEhlo.lines.includes('DSN'), postfixEhlo.text);

        const c = await smtpConnect(mw.port(), { tls: 'implicit', ca: cert.cert, servername: 'localhost' });
        await c.greeting();
        const ehlo = await c.cmd('EHLO laptop.example');
        c.close();
        assert.ok(ehlo.lines.includes('DSN'), ehlo.text);
        assert.ok(ehlo.lines.includes(`SIZE ${OFFERED}`), ehlo.text);
    });

    it("delivers a message of exactly the SIZE offered, DKIM-signed, with our fields and Postfix's on top", async () => {
        const bobBefore = (await postfix.messages('bob')).length;
        // a HELO name of 253 octets, the longest a trace field takes, in our Received and in Postfix's
        const helo = `${'h'.repeat(63)}.${'e'.repeat(63)}.${'l'.repeat(63)}.${'o'.repeat(53)}.example`;
        const c = await smtpConnect(mw.port(), { tls: 'implicit', ca: cert.cert, servername: 'localhost' });
        try {
            await c.greeting();
            const ehlo = await c.cmd(`EHLO ${helo}`);
            const offered = Number(ehlo.lines.find((l) => l.startsWith('SIZE '))?.slice(5));
            assert.ok(offered > 0, ehlo.text);
            const auth = await c.cmd(
                `AUTH PLAIN ${Buffer.from('\0alice@example.test\0correct horse').toString('base64')}`,
            );
            assert.equal(auth.code, 235, auth.raw);
            const over = await c.cmd(`MAIL FROM:<alice@example.test> SIZE=${offered + 1}`);
            assert.equal(over.code, 552, over.raw);
            assert.equal((await c.cmd(`MAIL FROM:<alice@example.test> SIZE=${offered}`)).code, 250);
            assert.equal((await c.cmd('RCPT TO:<bob@example.test>')).code, 250);
            assert.equal((await c.cmd('DATA')).code, 354);
            const message = exactly(
                offered,
                'From: Alice <alice@example.test>\r\nTo: bob@example.test\r\nSubject: as large as offered\r\n' +
                    'Message-ID: <size-1@example.test>\r\n\r\n',
            );
            c.write(message + '.\r\n');
            const done = await c.reply(30_000);
            assert.equal(done.code, 250, done.raw);
        } finally {
            c.close();
        }
        const delivered = await postfix.waitForMessages('bob', bobBefore + 1);
        const copy = delivered.find((m) => m.includes('<size-1@example.test>'));
        assert.ok(copy, 'delivered');
        assert.match(copy, /^DKIM-Signature: /m);
        assert.match(copy, /^Received: from [\s\S]*\(mailwarden\)/m);
    });

    it('passes NOTIFY=SUCCESS on, and Postfix delivers the success notice to the sender', async () => {
        const bobBefore = (await postfix.messages('bob')).length;
        const aliceBefore = (await postfix.messages('alice')).length;
        const c = await smtpConnect(mw.port(), { tls: 'implicit', ca: cert.cert, servername: 'localhost' });
        try {
            await c.greeting();
            await c.cmd('EHLO laptop.example');
            const auth = await c.cmd(
                `AUTH PLAIN ${Buffer.from('\0alice@example.test\0correct horse').toString('base64')}`,
            );
            assert.equal(auth.code, 235, auth.raw);
            const mail = await c.cmd('MAIL FROM:<alice@example.test> RET=HDRS ENVID=mw-dsn+2B1');
            assert.equal(mail.code, 250, mail.raw);
            const rcpt = await c.cmd('RCPT TO:<bob@example.test> NOTIFY=SUCCESS ORCPT=rfc822;bob@example.test');
            assert.equal(rcpt.code, 250, rcpt.raw);
            assert.equal((await c.cmd('DATA')).code, 354);
            c.write(
                'From: Alice <alice@example.test>\r\nTo: bob@example.test\r\nSubject: tell me it arrived\r\n' +
                    'Message-ID: <dsn-1@example.test>\r\n\r\nHi Bob.\r\n.\r\n',
            );
            const done = await c.reply();
            assert.equal(done.code, 250, done.raw);
        } finally {
            c.close();
        }
        const delivered = await postfix.waitForMessages('bob', bobBefore + 1);
        assert.ok(delivered.some((m) => m.includes('<dsn-1@example.test>')));
        const notices = await postfix.waitForMessages('alice', aliceBefore + 1, 20_000);
        const notice = notices.find((m) => m.includes('Original-Envelope-Id:'));
        assert.ok(notice, `no delivery status notification among:\n${notices.join('\n---\n')}`);
        assert.match(notice, /^Original-Envelope-Id: mw-dsn\+1\r?$/m);
        assert.match(notice, /^Original-Recipient: rfc822; ?bob@example\.test\r?$/m);
        assert.match(notice, /^Final-Recipient: rfc822; ?bob@example\.test\r?$/m);
        assert.match(notice, /^Action: delivered\r?$/m);
        assert.match(notice, /^Status: 2\.0\.0\r?$/m);
        // RET=HDRS: the notice returns the header section only
        assert.match(notice, /Content-Type: text\/rfc822-headers/);
        assert.match(notice, /Subject: tell me it arrived/);
        assert.doesNotMatch(notice, /Hi Bob\./);
    });
});
