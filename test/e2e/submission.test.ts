/**
 * Submission listeners end to end with real TLS: AUTH is neither offered nor accepted before
 * STARTTLS (538 5.7.11), MAIL before AUTH gets 530 5.7.0, wrong credentials 535 5.7.8, a
 * login service that cannot answer 454 4.7.0 (never 535), and a successful login reaches the
 * upstream as XCLIENT LOGIN. The credential backend is injected (the users-file backend has
 * its own tests); everything else is the real listener.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { AuthBackend } from '../../src/listener.ts';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { smtpConnect } from '../helpers/smtp-client.ts';
import { createTestCertificate, type TestCertificate } from '../helpers/tls-cert.ts';

const backend: AuthBackend = {
    verify: (login, password) =>
        Promise.resolve(
            login === 'down@example.test'
                ? 'unavailable'
                : login === 'alice@example.test' && password === 'correct horse'
                  ? 'ok'
                  : 'invalid',
        ),
};
const plain = (user: string, pass: string): string => Buffer.from(`\0${user}\0${pass}`).toString('base64');

describe('submission listener', () => {
    let cert: TestCertificate;
    let up: ScriptedUpstream;
    let mw: TestApp;
    before(async () => {
        cert = await createTestCertificate();
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN', 'SIZE 1000000'] });
        const users = join(cert.dir, 'users.yaml');
        writeFileSync(users, 'users: []\n');
        mw = await startApp(
            [
                'hostname: mx.example.test',
                `tls: { cert: "${cert.certPath}", key: "${cert.keyPath}" }`,
                `auth: { users: "${users}" }`,
                'listeners:',
                '  - { name: submission, host: 127.0.0.1, port: 0, mode: submission }',
                '  - { name: submissions, host: 127.0.0.1, port: 0, mode: submission, tls: implicit }',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                'http: false',
            ].join('\n'),
            { auth: backend },
        );
    });
    after(async () => {
        await mw.stop();
        await up.close();
        cert.cleanup();
    });

    it('offers STARTTLS but not AUTH before TLS, and refuses AUTH there with 538 5.7.11', async () => {
        const c = await smtpConnect(mw.port('submission'));
        await c.greeting();
        const ehlo = await c.cmd('EHLO laptop.example');
        assert.ok(ehlo.lines.includes('STARTTLS'));
        assert.ok(!ehlo.lines.some((l) => l.startsWith('AUTH')), ehlo.text);
        const r = await c.cmd(`AUTH PLAIN ${plain('alice@example.test', 'correct horse')}`);
        assert.equal(r.code, 538);
        assert.match(r.text, /^5\.7\.11 /);
        c.close();
    });

    it('refuses MAIL before AUTH with 530 5.7.0, before and after TLS', async () => {
        const c = await smtpConnect(mw.port('submission'));
        await c.greeting();
        await c.cmd('EHLO laptop.example');
        const r1 = await c.cmd('MAIL FROM:<alice@example.test>');
        assert.equal(r1.code, 530);
        assert.match(r1.text, /^5\.7\.0 Authentication required/);
        await c.starttls({ ca: cert.cert, servername: 'localhost' });
        const ehlo = await c.cmd('EHLO laptop.example');
        assert.ok(ehlo.lines.includes('AUTH PLAIN LOGIN'), ehlo.text);
        const r2 = await c.cmd('MAIL FROM:<alice@example.test>');
        assert.equal(r2.code, 530);
        c.close();
    });

    it('answers 535 5.7.8 to wrong credentials and 454 4.7.0 when the login service is down', async () => {
        const c = await smtpConnect(mw.port('submissions'), {
            tls: 'implicit',
            ca: cert.cert,
            servername: 'localhost',
        });
        await c.greeting();
        await c.cmd('EHLO laptop.example');
        const wrong = await c.cmd(`AUTH PLAIN ${plain('alice@example.test', 'wrong')}`);
        assert.equal(wrong.code, 535);
        assert.match(wrong.text, /^5\.7\.8 /);
        const down = await c.cmd(`AUTH PLAIN ${plain('down@example.test', 'whatever')}`);
        assert.equal(down.code, 454);
        assert.match(down.text, /^4\.7\.0 /);
        c.close();
    });

    it('passes the login upstream with XCLIENT LOGIN after a successful AUTH', async () => {
        const c = await smtpConnect(mw.port('submissions'), {
            tls: 'implicit',
            ca: cert.cert,
            servername: 'localhost',
        });
        await c.greeting();
        const ehlo = await c.cmd('EHLO laptop.example');
        assert.ok(ehlo.lines.includes('AUTH PLAIN LOGIN'));
        assert.equal((await c.cmd(`AUTH PLAIN ${plain('alice@example.test', 'correct horse')}`)).code, 235);
        assert.equal((await c.cmd('MAIL FROM:<alice@example.test>')).code, 250);
        assert.equal((await c.cmd('RCPT TO:<bob@example.net>')).code, 250);
        c.close();
        await up.idle();
        const xclient = up.connections.at(-1)!.xclient[0]!;
        assert.equal(xclient.LOGIN, 'alice@example.test');
        assert.equal(xclient.HELO, 'laptop.example');
    });

    it('gives smtp-server replies enhanced codes too', async () => {
        const c = await smtpConnect(mw.port('submissions'), {
            tls: 'implicit',
            ca: cert.cert,
            servername: 'localhost',
        });
        await c.greeting();
        await c.cmd('EHLO laptop.example');
        const r = await c.cmd('RCPT TO:<bob@example.net>');
        assert.equal(r.code, 503);
        assert.match(r.text, /^5\.5\.1 /);
        const u = await c.cmd('FOO bar');
        assert.equal(u.code, 500);
        assert.match(u.text, /^5\.5\.2 /);
        c.close();
    });
});
