/**
 * Delivery status notifications (RFC 3461) through mailwarden into a real Postfix: mailwarden
 * learns from Postfix's EHLO that it offers DSN (and its SIZE limit), offers the same to its
 * clients, and passes RET, ENVID, NOTIFY and ORCPT on exactly, so Postfix sends the success
 * notice that NOTIFY=SUCCESS asked for, back into the sender's own mailbox.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { hash } from '@node-rs/argon2';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startPostfix, type PostfixInstance } from '../helpers/postfix.ts';
import { smtpConnect } from '../helpers/smtp-client.ts';
import { createTestCertificate, type TestCertificate } from '../helpers/tls-cert.ts';

describe('DSN through mailwarden into Postfix', () => {
    let postfix: PostfixInstance;
    let cert: TestCertificate;
    let mw: TestApp;
    before(async () => {
        postfix = await startPostfix({ users: ['alice', 'bob'] });
        cert = await createTestCertificate();
        const users = join(cert.dir, 'users.yaml');
        writeFileSync(
            users,
            `users:\n  - login: alice@example.test\n    password: '${await hash('correct horse')}'\n    sendAs: [alice@example.test]\n`,
        );
        mw = await startApp(
            [
                'hostname: mx.test',
                'domains: [example.test]',
                `tls: { cert: "${cert.certPath}", key: "${cert.keyPath}" }`,
                `auth: { users: "${users}" }`,
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

    it("offers DSN and Postfix's own SIZE limit, learnt from Postfix's EHLO", async () => {
        const direct = await smtpConnect(postfix.port);
        await direct.greeting();
        const postfixEhlo = await direct.cmd('EHLO probe.example');
        direct.close();
        const postfixSize = postfixEhlo.lines.find((l) => l.startsWith('SIZE '));
        assert.ok(postfixSize && postfixEhlo.lines.includes('DSN'), postfixEhlo.text);
        assert.ok(Number(postfixSize.slice(5)) < 50 * 1024 * 1024, 'Postfix takes less than our default 50 MB');

        const c = await smtpConnect(mw.port(), { tls: 'implicit', ca: cert.cert, servername: 'localhost' });
        await c.greeting();
        const ehlo = await c.cmd('EHLO laptop.example');
        c.close();
        assert.ok(ehlo.lines.includes('DSN'), ehlo.text);
        assert.ok(ehlo.lines.includes(postfixSize), `${postfixSize} in\n${ehlo.text}`);
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
