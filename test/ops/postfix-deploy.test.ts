/**
 * The deployment guide's Postfix configuration (docs/postfix/, used verbatim by the Postfix test
 * peer) behind a real mailwarden: a user who logged in on a submission listener may relay
 * (XCLIENT LOGIN counts for permit_sasl_authenticated on the loopback smtpd), a client of the mx
 * listener may not (mailwarden refuses domains outside its lists with 550 5.7.1, and Postfix's
 * relay control stays behind it: for a relayDomains domain Postfix does not serve, mailwarden
 * relays its 454), a message mailwarden quarantines lands in Postfix's hold queue through the
 * documented header_checks and stays there until the guide's commands ("Quarantined mail")
 * list, release or delete it (a requeue would only hold it again, as the guide warns), and
 * Postfix logs the loopback service under its documented syslog name.
 */
import assert from 'node:assert/strict';
import { existsSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { hashPassword } from '../../src/submission/hashes.ts';
import { startApp, type TestApp } from '../helpers/app.ts';
import { GUIDE_FILE, readRepo, runShell, shellBlocks, substitute, writeShims } from '../helpers/guide.ts';
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
            'news.example': { TXT: ['v=spf1 ip4:127.0.0.0/8 -all'] },
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

    it('holds nothing for an X-Mailwarden-Quarantine line inside a MIME part or an attached message', async () => {
        const before = (await postfix.held()).length;
        const data =
            'From: letters@news.example\r\nTo: alice@example.test\r\nSubject: forged part\r\n' +
            'Date: Sun, 29 Nov 2026 01:00:00 +0000\r\nMessage-ID: <forgedpart@deploy.test>\r\n' +
            'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n' +
            '--b\r\nContent-Type: text/plain\r\nX-Mailwarden-Quarantine: forged in a part\r\n\r\nhello\r\n' +
            '--b\r\nContent-Type: message/rfc822\r\n\r\n' +
            'X-Mailwarden-Quarantine: forged in an attached message\r\nSubject: inner\r\n\r\ninner\r\n' +
            '--b--\r\n';
        const r = await sendMail(mw.port('mx'), { from: 'letters@news.example', to: ['alice@example.test'], data });
        assert.equal(r.message?.code, 250, r.message?.raw);
        const deadline = Date.now() + 10_000;
        let delivered: string[] = [];
        while (Date.now() < deadline) {
            delivered = await postfix.messages('alice');
            if (delivered.some((m) => m.includes('Subject: forged part'))) break;
            await sleep(50);
        }
        assert.ok(
            delivered.some((m) => m.includes('Subject: forged part')),
            'delivered to the mailbox',
        );
        assert.equal((await postfix.held()).length, before, 'nothing more on hold');
        assert.doesNotMatch(await postfix.log(), /hold: header X-Mailwarden-Quarantine: forged/);
    });

    it("lists, releases and expires quarantined mail with the guide's commands", async () => {
        const quarantine = async (subject: string): Promise<string> => {
            const before = await postfix.held();
            const r = await sendMail(mw.port('mx'), {
                from: 'sales@shop.example',
                to: ['alice@example.test'],
                data: message('sales@shop.example', 'alice@example.test', subject),
            });
            assert.equal(r.message?.code, 250, r.message?.raw);
            const deadline = Date.now() + 10_000;
            for (;;) {
                const added = (await postfix.held()).filter((id) => !before.includes(id));
                if (added.length === 1) return added[0]!;
                assert.ok(Date.now() < deadline, 'the message went on hold');
                await sleep(50);
            }
        };
        const [commands] = shellBlocks(readRepo(GUIDE_FILE), 'Quarantined mail');
        const line = (start: string): string => {
            const found = commands!.split('\n').find((l) => l.startsWith(start));
            assert.ok(found, `the guide has a "${start}" command`);
            return found;
        };
        const shims = writeShims(join(postfix.dir, 'shims'), {
            postqueue: `exec /usr/sbin/postqueue -c "${postfix.configDir}" "$@"`,
            postsuper: `exec /usr/sbin/postsuper -c "${postfix.configDir}" "$@"`,
            postcat: `exec /usr/sbin/postcat -c "${postfix.configDir}" "$@"`,
        });
        const sh = async (command: string, id = ''): Promise<string> => {
            const r = await runShell(substitute(command, { QUEUEID: id, '/var/spool/postfix': postfix.queueDir }), {
                env: { ...process.env, PATH: `${shims}:${process.env.PATH ?? ''}` },
                cwd: postfix.dir,
            });
            assert.equal(r.code, 0, `${command}: ${r.err}`);
            return r.out;
        };

        const id = await quarantine('to be released');
        assert.match(await sh(line('postqueue -j')), new RegExp(`"queue_id":"${id}".*"sender":"sales@shop.example"`));
        assert.match(await sh(line('postcat -hq'), id), /^X-Mailwarden-Quarantine: /m);
        // Nothing releases it by itself: not the queue manager's runs (1s here), not time.
        await sleep(2_500);
        assert.ok((await postfix.held()).includes(id), 'still on hold');

        // A requeue passes header_checks again: back on hold (with a new queue id), as the guide warns.
        const others = (await postfix.held()).filter((h) => h !== id);
        await sh(`postsuper -r ${id}`);
        // pickup takes requeued mail on its next wake-up (60s); wake it now
        await sh(`/usr/sbin/postkick -c "${postfix.configDir}" public pickup W`);
        const delivered = async (): Promise<boolean> =>
            (await postfix.messages('alice')).some((m) => m.includes('Subject: to be released'));
        let again: string | undefined;
        const rehold = Date.now() + 10_000;
        while (!again && Date.now() < rehold) {
            again = (await postfix.held()).find((h) => !others.includes(h));
            if (!again) await sleep(50);
        }
        assert.ok(again, 'held again after postsuper -r');
        assert.ok(!(await delivered()));

        // postsuper -H delivers it.
        await sh(line('postsuper -H'), again);
        const deadline = Date.now() + 15_000;
        while (!(await delivered()) && Date.now() < deadline) await sleep(50);
        assert.ok(await delivered(), 'released and delivered');

        // The clean-up line deletes what has been on hold for more than 30 days, and only that.
        const old = await quarantine('old quarantine');
        const fresh = await quarantine('fresh quarantine');
        const longAgo = new Date(Date.now() - 31 * 86_400_000);
        utimesSync(join(postfix.queueDir, 'hold', old), longAgo, longAgo);
        await sh(line('find /var/spool/postfix/hold'));
        assert.ok(!existsSync(join(postfix.queueDir, 'hold', old)), 'the old one is deleted');
        assert.ok(existsSync(join(postfix.queueDir, 'hold', fresh)), 'the fresh one stays');
        await sh(line('postsuper -d'), fresh);
        assert.ok(!(await postfix.held()).includes(fresh), 'deleted');
    });
});
