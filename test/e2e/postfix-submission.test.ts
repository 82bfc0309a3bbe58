/**
 * Submission through mailwarden into a real Postfix: after SMTP AUTH against the users file,
 * the login reaches Postfix with XCLIENT LOGIN, so Postfix logs the SASL user and treats the
 * session as authenticated (permit_sasl_authenticated, reject_sender_login_mismatch work).
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

describe('submission in front of Postfix', () => {
    let postfix: PostfixInstance;
    let cert: TestCertificate;
    let mw: TestApp;
    before(async () => {
        postfix = await startPostfix();
        cert = await createTestCertificate();
        const users = join(cert.dir, 'users.yaml');
        writeFileSync(
            users,
            `users:\n  - login: bob@example.test\n    password: '${await hash('hunter2 hunter2')}'\n    sendAs: [bob@example.test]\n`,
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

    it('passes the SASL login to Postfix with XCLIENT LOGIN', async () => {
        const before = (await postfix.messages('alice')).length;
        const c = await smtpConnect(mw.port(), { tls: 'implicit', ca: cert.cert, servername: 'localhost' });
        try {
            await c.greeting();
            await c.cmd('EHLO laptop.example');
            const auth = await c.cmd(
                `AUTH PLAIN ${Buffer.from('\0bob@example.test\0hunter2 hunter2').toString('base64')}`,
            );
            assert.equal(auth.code, 235, auth.raw);
            assert.equal((await c.cmd('MAIL FROM:<bob@example.test>')).code, 250);
            assert.equal((await c.cmd('RCPT TO:<alice@example.test>')).code, 250);
            assert.equal((await c.cmd('DATA')).code, 354);
            c.write(
                'From: Bob <bob@example.test>\r\nTo: alice@example.test\r\nSubject: from bob\r\nMessage-ID: <sub-1@example.test>\r\n\r\nHi.\r\n.\r\n',
            );
            const done = await c.reply();
            assert.equal(done.code, 250, done.raw);
        } finally {
            c.close();
        }
        const messages = await postfix.waitForMessages('alice', before + 1);
        assert.ok(messages.some((m) => m.includes('<sub-1@example.test>')));
        assert.match(await postfix.log(), /sasl_method=XCLIENT, sasl_username=bob@example\.test/);
    });
});
