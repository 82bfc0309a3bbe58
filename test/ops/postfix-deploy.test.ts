/**
 * The deployment guide's Postfix configuration (docs/postfix/, used verbatim by the Postfix test
 * peer) behind a real mailwarden: a user who logged in on a submission listener may relay
 * (XCLIENT LOGIN counts for permit_sasl_authenticated on the loopback smtpd), a client of the mx
 * listener may not (mailwarden refuses domains outside its lists with 550 5.7.1, and Postfix's
 * relay control stays behind it: for a relayDomains domain Postfix does not serve, mailwarden
 * relays its 454), a message
 * mailwarden quarantines lands in Postfix's hold queue through the documented header_checks, and
 * Postfix logs the loopback service under its documented syslog name.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { hashPassword } from '../../src/submission/hashes.ts';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startDnsServer, type DnsTestServer } from '../helpers/dns-server.ts';
import { startPostfix, type PostfixInstance } from '../helpers/postfix.ts';
import { sendMail, smtpConnect } from '../helpers/smtp-client.ts';
import { createTestCertificate, type TestCertificate } from '../helpers/tls-cert.ts';

const plain = (user: string, pass: string): string => Buffer.from(`\0${user}\0${pass}`).toString('base64');

function message(from: string, to: string, subject: string): string {
    return (
        `From: ${from}\r\nTo: ${to}\r\nSubject: ${subject}\r\nDate: Sun, 29 Nov 2026 01:00:00 +0000\r\n` +
        `Message-ID: <${subject.replace(/\W/g, '')}@deploy.test>\r\n\r\nHello.\r\n`
    );
}

describe('the documented Postfix configuration behind mailwarden', () => {
    let cert: TestCertificate;
    let dns: DnsTestServer;
    let postfix: PostfixInstance;
    let mw: TestApp;

    before(async () => {
        cert = await createTestCertificate();
        postfix = await startPostfix();
        dns = await startDnsServer({
            'shop.example': { TXT: ['v=spf1 ip4:192.0.2.20 -all'] },
            '_dmarc.shop.example': { TXT: ['v=DMARC1; p=quarantine'] },
        });
        const users = join(cert.dir, 'users.yaml');
        writeFileSync(
            users,
            `users:\n  - login: alice@example.test\n    password: "${await hashPassword('correct horse')}"\n`,
        );
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                // passed on by mailwarden, but not a domain Postfix relays for
                'relayDomains: [relayed.example]',
                `tls: { cert: "${cert.certPath}", key: "${cert.keyPath}" }`,
                `auth: { users: "${users}" }`,
                'listeners:',
                '  - { name: mx, host: 127.0.0.1, port: 0, mode: mx }',
                '  - { name: submissions, host: 127.0.0.1, port: 0, mode: submission, tls: implicit }',
                `upstream: { url: "smtp://127.0.0.1:${postfix.port}", xclient: true }`,
                `dns: { servers: ["${dns.address}"], timeout: 1s }`,
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw?.stop();
        await dns?.close();
        await postfix?.stop();
        cert?.cleanup();
    });

    it('lets a user who logged in to mailwarden relay to another domain', async () => {
        const c = await smtpConnect(mw.port('submissions'), {
            tls: 'implicit',
            ca: cert.cert,
            servername: 'localhost',
        });
        try {
            await c.greeting();
            await c.cmd('EHLO laptop.example');
            assert.equal((await c.cmd(`AUTH PLAIN ${plain('alice@example.test', 'correct horse')}`)).code, 235);
            assert.equal((await c.cmd('MAIL FROM:<alice@example.test>')).code, 250);
            const rcpt = await c.cmd('RCPT TO:<carol@elsewhere.example>');
            assert.equal(rcpt.code, 250, rcpt.raw);
            assert.equal((await c.cmd('DATA')).code, 354);
            c.write(`${message('Alice <alice@example.test>', 'carol@elsewhere.example', 'relayed')}.\r\n`);
            const done = await c.reply();
            assert.equal(done.code, 250, done.raw);
            await c.cmd('QUIT');
        } finally {
            c.close();
        }
        const log = await postfix.log();
        assert.match(
            log,
            /postfix\/mailwarden\/smtpd\[\d+\]: \w+: client=\S+, sasl_method=XCLIENT, sasl_username=alice@example\.test/,
        );
    });

    it('refuses relaying on mx itself: a domain outside domains and relayDomains gets 550 5.7.1 before Postfix', async () => {
        const r = await sendMail(mw.port('mx'), {
            from: 'someone@sender.example',
            to: ['dave@nowhere.example'],
            data: message('someone@sender.example', 'dave@nowhere.example', 'no relay'),
        });
        assert.equal(r.rcpt[0]?.code, 550, r.rcpt[0]?.raw);
        assert.match(r.rcpt[0].text, /^5\.7\.1 Relaying denied: .*nowhere\.example/);
        assert.doesNotMatch(await postfix.log(), /nowhere\.example/, 'Postfix never saw the recipient');
    });

    it('keeps relay control in Postfix too: a relayDomains domain Postfix does not serve gets its 454 Relay access denied', async () => {
        const r = await sendMail(mw.port('mx'), {
            from: 'someone@sender.example',
            to: ['carol@relayed.example'],
            data: message('someone@sender.example', 'carol@relayed.example', 'no relay'),
        });
        assert.equal(r.rcpt[0]?.code, 454, r.rcpt[0]?.raw);
        assert.match(r.rcpt[0].text, /^4\.7\.1 /);
        assert.match(
            await postfix.log(),
            /reject: RCPT from \S+: 454 4\.7\.1 <carol@relayed\.example>: Relay access denied/,
        );
    });

    it('puts a message mailwarden quarantined on hold in Postfix', async () => {
        const before = (await postfix.held()).length;
        const r = await sendMail(mw.port('mx'), {
            from: 'sales@shop.example',
            to: ['alice@example.test'],
            data: message('sales@shop.example', 'alice@example.test', 'quarantined offer'),
        });
        assert.equal(r.message?.code, 250, r.message?.raw);
        const deadline = Date.now() + 10_000;
        while ((await postfix.held()).length === before && Date.now() < deadline) await sleep(50);
        assert.equal((await postfix.held()).length, before + 1, 'one more message on hold');
        assert.match(
            await postfix.log(),
            /hold: header X-Mailwarden-Quarantine: \S+ from \S+; from=<sales@shop\.example>/,
        );
        const delivered = await postfix.messages('alice');
        assert.ok(!delivered.some((m) => m.includes('Subject: quarantined offer')), 'not delivered to the mailbox');
    });
});
