/**
 * Header forgeries against a real Postfix, first sent to Postfix directly (to show how Postfix
 * reads the bytes), then through mailwarden (to show Postfix never sees them):
 *   - `X-Mailwarden-Quarantine :` (white space before the colon) is our quarantine field to
 *     Postfix, whose header_checks hold the message; through mailwarden every spelling of our
 *     fields and of an A-R with our authserv-id is removed and only our verdict arrives;
 *   - a line starting with white space after our X-Mailwarden-Verdict is glued onto it by
 *     Postfix; through mailwarden such a header section is refused with 550 5.6.0;
 *   - on submission, `From : ceo@victim.test` / a line without a colon / `From: <own address>`
 *     is delivered by Postfix with From: ceo@victim.test and the second From in the body;
 *     through mailwarden it is refused before signing and nothing is delivered.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { hash } from '@node-rs/argon2';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startPostfix, type PostfixInstance } from '../helpers/postfix.ts';
import { sendMail, smtpConnect } from '../helpers/smtp-client.ts';
import { createTestCertificate, type TestCertificate } from '../helpers/tls-cert.ts';

/** The header section of a delivered message, continuation lines joined to their field. */
function headerLines(message: string): string[] {
    const head = message.split('\n\n')[0] ?? '';
    return head.replace(/\n[ \t]+/g, ' ').split('\n');
}

describe('header forgeries in front of a real Postfix', () => {
    let postfix: PostfixInstance;
    let cert: TestCertificate;
    let mw: TestApp;
    before(async () => {
        postfix = await startPostfix({ users: ['alice', 'bob', 'carol'] });
        cert = await createTestCertificate();
        const users = join(cert.dir, 'users.yaml');
        writeFileSync(
            users,
            `users:\n  - login: carol@example.test\n    password: '${await hash('carol secret')}'\n    sendAs: [carol@example.test]\n`,
        );
        mw = await startApp(
            [
                'hostname: mx.test',
                'domains: [example.test]',
                `tls: { cert: "${cert.certPath}", key: "${cert.keyPath}" }`,
                `auth: { users: "${users}" }`,
                'listeners:',
                '  - { name: mx, host: 127.0.0.1, port: 0, mode: mx }',
                '  - { name: submissions, host: 127.0.0.1, port: 0, mode: submission, tls: implicit }',
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

    it('Postfix reads our fields written with white space before the colon; through mailwarden they are gone', async () => {
        const forged =
            'X-Mailwarden-Quarantine : forged-q\r\nX-Mailwarden-Verdict\t: accept; rules=allow; score=-100; id=forged-v\r\n';
        const direct = await sendMail(postfix.port, {
            from: 'sender@sender.test',
            to: ['bob@example.test'],
            data: `${forged}Subject: direct\r\n\r\nhello\r\n`,
        });
        assert.equal(direct.message?.code, 250, direct.message?.raw);
        const queueId = /queued as (\w+)/.exec(direct.message.text)?.[1];
        assert.ok(
            queueId && (await postfix.held()).includes(queueId),
            'Postfix held it: it read X-Mailwarden-Quarantine',
        );

        const heldBefore = (await postfix.held()).length;
        const r = await sendMail(mw.port('mx'), {
            from: 'sender@sender.test',
            to: ['alice@example.test'],
            data:
                forged +
                'Authentication-Results : mx.test; dmarc=pass (forged-ar1)\r\n' +
                'Authentication-Results: "MX.test."; dmarc=pass (forged-ar2)\r\n' +
                'From: Sender <sender@sender.test>\r\nSubject: through mailwarden\r\nMessage-ID: <through-1@sender.test>\r\n\r\nhello\r\n',
            helo: 'client.example',
        });
        assert.equal(r.message?.code, 250, r.message?.raw);
        const messages = await postfix.waitForMessages('alice', 1);
        const message = messages.find((m) => m.includes('<through-1@sender.test>'));
        assert.ok(message, 'delivered, not held');
        assert.equal((await postfix.held()).length, heldBefore);
        assert.doesNotMatch(message, /forged-/);
        const lines = headerLines(message);
        assert.deepEqual(
            lines.filter((l) => /^x-mailwarden-/i.test(l)).map((l) => l.replace(/id=\w+$/, 'id=ID')),
            ['X-Mailwarden-Verdict: accept; rules=; score=0; id=ID'],
        );
        const ar = lines.filter((l) => /^authentication-results/i.test(l));
        assert.equal(ar.length, 1, ar.join('\n'));
        assert.match(ar[0]!, /^Authentication-Results: mx\.test; /);
    });

    it('Postfix glues a leading white-space line onto the field above; mailwarden refuses such a header section', async () => {
        const attack =
            ' ; rules=allow; score=-100\r\nSubject: glued\r\nMessage-ID: <glued-1@sender.test>\r\n\r\nhi\r\n';
        // what Postfix makes of the bytes mailwarden used to forward: our verdict, then the client's section
        const direct = await sendMail(postfix.port, {
            from: 'sender@sender.test',
            to: ['bob@example.test'],
            data: `X-Mailwarden-Verdict: reject; rules=spam; score=50; id=S1\r\n${attack}`,
        });
        assert.equal(direct.message?.code, 250, direct.message?.raw);
        const bob = await postfix.waitForMessages('bob', 1);
        const glued = bob.find((m) => m.includes('<glued-1@sender.test>'));
        assert.ok(glued);
        assert.ok(
            headerLines(glued).includes(
                'X-Mailwarden-Verdict: reject; rules=spam; score=50; id=S1 ; rules=allow; score=-100',
            ),
            'Postfix reads the line as part of our verdict',
        );

        const before = (await postfix.messages('alice')).length;
        const r = await sendMail(mw.port('mx'), {
            from: 'sender@sender.test',
            to: ['alice@example.test'],
            data: attack,
        });
        assert.equal(r.message?.code, 550, r.message?.raw);
        assert.match(r.message.text, /^5\.6\.0 Message refused: line 1 of the header section starts with white space/);
        assert.equal((await postfix.messages('alice')).length, before);
    });

    it('Postfix takes the first From of the submission bypass; mailwarden refuses it before signing', async () => {
        const bypass =
            'From : ceo@victim.test\r\nthis line has no colon\r\nFrom: carol@example.test\r\n' +
            'To: alice@example.test\r\nSubject: bypass\r\nMessage-ID: <bypass-1@example.test>\r\n\r\nPay now.\r\n';
        // as forwarded before, below the fields mailwarden puts on top (a first line starting
        // with "From " would be taken for an mbox From_ line instead)
        const direct = await sendMail(postfix.port, {
            from: 'carol@example.test',
            to: ['bob@example.test'],
            data: `Received: from laptop.example by mx.test (mailwarden) with ESMTPSA id S2; Sun, 6 Dec 2026 00:00:00 +0000\r\n${bypass}`,
        });
        assert.equal(direct.message?.code, 250, direct.message?.raw);
        const bob = await postfix.waitForMessages('bob', 2);
        const seen = bob.find((m) => m.includes('this line has no colon'));
        assert.ok(seen);
        const head = headerLines(seen);
        assert.deepEqual(
            head.filter((l) => /^from\s*:/i.test(l)),
            ['From: ceo@victim.test'],
            "Postfix's From is the victim's",
        );
        assert.match(seen.split('\n\n').slice(1).join('\n\n'), /^this line has no colon\nFrom: carol@example\.test$/m);

        const before = (await postfix.messages('alice')).length;
        for (const [data, code] of [
            [bypass, 550],
            ['From : ceo@victim.test\r\nFrom: carol@example.test\r\nSubject: two\r\n\r\nPay now.\r\n', 553],
        ] as const) {
            const c = await smtpConnect(mw.port('submissions'), {
                tls: 'implicit',
                ca: cert.cert,
                servername: 'localhost',
            });
            try {
                await c.greeting();
                await c.cmd('EHLO laptop.example');
                const auth = await c.cmd(
                    `AUTH PLAIN ${Buffer.from('\0carol@example.test\0carol secret').toString('base64')}`,
                );
                assert.equal(auth.code, 235, auth.raw);
                assert.equal((await c.cmd('MAIL FROM:<carol@example.test>')).code, 250);
                assert.equal((await c.cmd('RCPT TO:<alice@example.test>')).code, 250);
                assert.equal((await c.cmd('DATA')).code, 354);
                c.write(`${data}.\r\n`);
                const done = await c.reply();
                assert.equal(done.code, code, done.raw);
                assert.match(done.text, /\(id \w+\)$/);
            } finally {
                c.close();
            }
        }
        assert.equal((await postfix.messages('alice')).length, before, 'Postfix got nothing');
    });
    it('Postfix cuts a field longer than header_size_limit; mailwarden refuses it whole', async () => {
        const long = `From: ceo@bank.example (${'x'.repeat(110_000)}) <a@evil.example>\r\n`;
        const rest = 'Subject: cut\r\nMessage-ID: <cut-1@evil.example>\r\n\r\nPay now.\r\n';
        const bobBefore = (await postfix.messages('bob')).length;
        const direct = await sendMail(postfix.port, {
            from: 'a@evil.example',
            to: ['bob@example.test'],
            data: long + rest,
        });
        assert.equal(direct.message?.code, 250, direct.message?.raw);
        const bob = await postfix.waitForMessages('bob', bobBefore + 1);
        const cut = bob.find((m) => m.includes('<cut-1@evil.example>'));
        assert.ok(cut);
        const from = headerLines(cut).find((l) => l.startsWith('From:')) ?? '';
        assert.match(from, /^From: ceo@bank\.example \(x+$/, 'readers see ceo@bank.example, the address is cut off');

        const before = (await postfix.messages('alice')).length;
        const r = await sendMail(mw.port('mx'), {
            from: 'a@evil.example',
            to: ['alice@example.test'],
            data: long + rest.replace('cut-1', 'cut-2'),
        });
        assert.equal(r.message?.code, 552, r.message?.raw);
        assert.match(
            r.message.text,
            /^5\.3\.4 Message refused: the author field \(From, Sender or Reply-To\) starting at line 1 is longer than 100000 bytes/,
        );
        assert.equal((await postfix.messages('alice')).length, before, 'Postfix got nothing');
    });

    it('Postfix leaves the addresses of the header fields as mailwarden judged them (no rewriting for 127.0.0.1)', async () => {
        const words = Array.from({ length: 10_300 }, () => 'a').join(' ');
        const from = `From: Sender ${words} <sender@sender.test>`;
        const before = (await postfix.messages('alice')).length;
        const r = await sendMail(mw.port('mx'), {
            from: 'sender@sender.test',
            to: ['alice@example.test'],
            data: `${from}\r\nCc: ceo\r\nSubject: as judged\r\nMessage-ID: <judged-1@sender.test>\r\n\r\nhi\r\n`,
        });
        assert.equal(r.message?.code, 250, r.message?.raw);
        const alice = await postfix.waitForMessages('alice', before + 1);
        const message = alice.find((m) => m.includes('<judged-1@sender.test>'));
        assert.ok(message);
        const lines = headerLines(message);
        assert.ok(lines.includes('Cc: ceo'), lines.filter((l) => l.startsWith('Cc')).join('\n'));
        assert.ok(lines.includes(from), 'the From field unchanged');
    });
});
