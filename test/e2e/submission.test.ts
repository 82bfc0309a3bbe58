/**
 * Submission listeners end to end with real TLS and the real users file: AUTH is neither
 * offered nor accepted before STARTTLS (538 5.7.11), MAIL before AUTH gets 530 5.7.0, wrong
 * credentials 535 5.7.8, a login service that cannot answer 454 4.7.0 (never 535); the
 * sender-binding matrix (envelope and header From/Sender and Resent-From/Resent-Sender: own
 * address, own domain wildcard, subaddress, someone else's, the null sender) answers 553 5.7.1; a successful login reaches
 * the upstream as XCLIENT LOGIN; outgoing mail is DKIM-signed and the signature verifies; a
 * message with a line over 998 characters (RFC 5322 section 2.1.1), which the relay would fold
 * after it was signed, is refused with 550 5.6.0 and never forwarded, on submission only.
 */
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { hash } from '@node-rs/argon2';
import { authenticate } from 'mailauth';
import { createResolver } from '../../src/dns/resolver.ts';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startDnsServer, type DnsTestServer } from '../helpers/dns-server.ts';
import { startDovecot } from '../helpers/dovecot.ts';
import { startScriptedUpstream, unstuff, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { freePort, smtpConnect, type SmtpClient } from '../helpers/smtp-client.ts';
import { createTestCertificate, type TestCertificate } from '../helpers/tls-cert.ts';

const plain = (user: string, pass: string): string => Buffer.from(`\0${user}\0${pass}`).toString('base64');

describe('submission listener', () => {
    let cert: TestCertificate;
    let up: ScriptedUpstream;
    let dns: DnsTestServer;
    let mw: TestApp;
    let dkimRecord: string;
    before(async () => {
        cert = await createTestCertificate();
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN', 'SIZE 1000000'] });
        const users = join(cert.dir, 'users.yaml');
        const pw = await hash('correct horse');
        writeFileSync(
            users,
            `users:\n  - login: alice@example.test\n    password: '${pw}'\n    sendAs: [alice@example.test, '@alice.example']\n`,
        );
        const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
        const keyFile = join(cert.dir, 'dkim.key');
        writeFileSync(keyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
        dkimRecord = `v=DKIM1; k=rsa; p=${publicKey.export({ type: 'spki', format: 'der' }).toString('base64')}`;
        dns = await startDnsServer({ 'mw._domainkey.example.test': { TXT: [dkimRecord] } });
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                `tls: { cert: "${cert.certPath}", key: "${cert.keyPath}" }`,
                `auth: { users: "${users}" }`,
                // a second domain with a key here, which alice may not send as
                `dkim: { sign: [ { domain: example.test, selector: mw, key: "${keyFile}" }, { domain: victim.test, selector: mw, key: "${keyFile}" } ] }`,
                'listeners:',
                '  - { name: submission, host: 127.0.0.1, port: 0, mode: submission }',
                '  - { name: submissions, host: 127.0.0.1, port: 0, mode: submission, tls: implicit }',
                '  - { name: mx, host: 127.0.0.1, port: 0, mode: mx }',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                `dns: { servers: ["${dns.address}"], timeout: 1s }`,
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw.stop();
        await up.close();
        await dns.close();
        cert.cleanup();
    });

    async function loggedIn(): Promise<SmtpClient> {
        const c = await smtpConnect(mw.port('submissions'), {
            tls: 'implicit',
            ca: cert.cert,
            servername: 'localhost',
        });
        await c.greeting();
        await c.cmd('EHLO laptop.example');
        const r = await c.cmd(`AUTH PLAIN ${plain('alice@example.test', 'correct horse')}`);
        assert.equal(r.code, 235, r.raw);
        return c;
    }

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
        assert.equal((await c.cmd('MAIL FROM:<alice@example.test>')).code, 530);
        c.close();
    });

    it('answers 535 5.7.8 to a wrong password and to an unknown login', async () => {
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
        const unknown = await c.cmd(`AUTH PLAIN ${plain('mallory@example.test', 'x')}`);
        assert.equal(unknown.code, 535);
        c.close();
        assert.ok(!JSON.stringify(mw.logs).includes('correct horse'), 'no password in the logs');
    });

    it('binds the envelope sender to the login: own address, domain wildcard and subaddress pass; others get 553 5.7.1', async () => {
        const c = await loggedIn();
        for (const ok of [
            'alice@example.test',
            'Alice@Example.Test',
            'alice+lists@example.test',
            'anyone@alice.example',
        ]) {
            assert.equal((await c.cmd(`MAIL FROM:<${ok}>`)).code, 250, ok);
            await c.cmd('RSET');
        }
        for (const bad of ['bob@example.test', 'alice@example.test.evil', '']) {
            const r = await c.cmd(`MAIL FROM:<${bad}>`);
            assert.equal(r.code, 553, `${bad}: ${r.raw}`);
            assert.match(
                r.text,
                /^5\.7\.1 Sender address rejected: .* is not an address the login alice@example\.test may send as/,
            );
        }
        c.close();
    });

    it('binds header From and Sender to the login too', async () => {
        const cases: [string, number][] = [
            ['From: Alice <alice@example.test>\r\n', 250],
            ['From: Someone <anyone@alice.example>\r\n', 250],
            ['From: Bob <bob@example.test>\r\n', 553],
            ['From: Alice <alice@example.test>\r\nSender: bob@example.test\r\n', 553],
            ['From: alice@example.test, ceo@bank.example\r\n', 553],
        ];
        for (const [head, code] of cases) {
            const c = await loggedIn();
            await c.cmd('MAIL FROM:<alice@example.test>');
            await c.cmd('RCPT TO:<bob@example.net>');
            await c.cmd('DATA');
            c.write(`${head}Subject: binding\r\n\r\nbody\r\n.\r\n`);
            const r = await c.reply();
            assert.equal(r.code, code, `${JSON.stringify(head)}: ${r.raw}`);
            // every refusal names the session id, the end-of-data 553 included
            if (code === 553) assert.match(r.text, /^5\.7\.1 .* \(id \w+\)$/);
            c.close();
        }
    });

    it('binds Resent-From and Resent-Sender, which are signed, like From: a foreign one is refused, her own passes', async () => {
        const from = 'From: Alice <alice@example.test>\r\nTo: bob@example.net\r\n';
        const cases: [string, string, string | null][] = [
            ['a foreign Resent-From', `${from}Resent-From: CEO <ceo@example.test>\r\n`, 'ceo@example.test'],
            ['a foreign Resent-Sender', `${from}Resent-Sender: ceo@victim.test\r\n`, 'ceo@victim.test'],
            [
                'a foreign address in a second Resent-From',
                `${from}Resent-From: alice@example.test\r\nResent-From: alice@example.test, ceo@example.test\r\n`,
                'ceo@example.test',
            ],
            [
                'her own redirect',
                `${from}Resent-From: Alice <alice@example.test>\r\nResent-Sender: anyone@alice.example\r\nResent-To: carol@example.net\r\n`,
                null,
            ],
        ];
        for (const [what, head, foreign] of cases) {
            const before = up.transactions.filter((t) => t.data !== null).length;
            const c = await loggedIn();
            assert.equal((await c.cmd('MAIL FROM:<alice@example.test>')).code, 250);
            assert.equal((await c.cmd('RCPT TO:<carol@example.net>')).code, 250);
            await c.cmd('DATA');
            c.write(`${head}Subject: resent\r\n\r\nbody\r\n.\r\n`);
            const r = await c.reply();
            c.close();
            const decision = mw.logs.filter((l) => l.msg === 'decision').at(-1)!;
            if (foreign !== null) {
                assert.equal(r.code, 553, `${what}: ${r.raw}`);
                assert.match(
                    r.text,
                    /^5\.7\.1 Sender address rejected: .* is not an address the login alice@example\.test/,
                );
                assert.ok(r.text.includes(foreign), `${what}: names ${foreign}`);
                assert.equal(decision.headerProblem, 'not-owned', what);
                assert.equal(decision.dkimSigned, undefined, `${what}: nothing was signed`);
                assert.equal(
                    up.transactions.filter((t) => t.data !== null).length,
                    before,
                    `${what}: nothing upstream`,
                );
            } else {
                assert.equal(r.code, 250, `${what}: ${r.raw}`);
                await up.idle();
                const data = unstuff(up.transactions.at(-1)!.data!).toString('latin1');
                assert.match(data, /^DKIM-Signature: [^]*h=[^;]*Resent-From:Resent-Sender/, what);
            }
        }
    });

    it('bounds the Resent-From and Resent-Sender fields together to 100,000 bytes, refused before any is parsed; every one below the bound is bound', async () => {
        const from = 'From: Alice <alice@example.test>\r\nTo: bob@example.net\r\n';
        // a field of her own address 401 times, folded into 40 lines: about 8 KB
        const own = (name: string): string =>
            `${name}:${Array.from({ length: 40 }, () => ' alice@example.test,'.repeat(10)).join('\r\n')} alice@example.test\r\n`;
        const fields = (n: number, name = 'Resent-From'): string => own(name).repeat(n);
        const bytes = (head: string): number =>
            head
                .split(/(?=^Resent-|^From:|^To:)/m)
                .filter((f) => /^Resent-(From|Sender):/.test(f))
                .reduce((sum, f) => sum + Buffer.byteLength(f), 0);
        // the reply, the problem, and the address named by a not-owned refusal; null: it passes
        const cases: [string, string, RegExp | null, string | null, string | null][] = [
            [
                'her own Resent-From fields past the bound',
                `${from}${fields(13)}`,
                /^553 5\.7\.1 Sender address rejected: a Resent-From field cannot be read/,
                'unreadable-resent-from',
                null,
            ],
            [
                'her own Resent-From and Resent-Sender fields, past the bound together only',
                `${from}${fields(7)}${fields(6, 'Resent-Sender')}`,
                /^553 5\.7\.1 Sender address rejected: a Resent-Sender field cannot be read/,
                'unreadable-resent-sender',
                null,
            ],
            [
                'a foreign Resent-From past the bound, which is not read',
                `${from}${fields(13)}Resent-From: CEO <ceo@example.test>\r\n`,
                /^553 5\.7\.1 Sender address rejected: a Resent-From field cannot be read/,
                'unreadable-resent-from',
                null,
            ],
            [
                'a foreign Resent-From at the bottom, below the bound',
                `${from}${fields(11)}Resent-From: CEO <ceo@example.test>\r\n`,
                /^553 5\.7\.1 Sender address rejected: ceo@example\.test is not an address the login alice@example\.test/,
                'not-owned',
                'ceo@example.test',
            ],
            ['her own Resent-From fields just below the bound', `${from}${fields(12)}`, null, null, null],
            [
                'a few resent blocks of her own',
                from + 'Resent-From: Alice <alice@example.test>\r\nResent-Sender: alice@alice.example\r\n'.repeat(3),
                null,
                null,
                null,
            ],
        ];
        for (const [what, head, refusal, problem, address] of cases) {
            const over = bytes(head) > 100_000;
            assert.equal(over, problem?.startsWith('unreadable-') === true, `${what}: ${bytes(head)} bytes`);
            const before = up.transactions.filter((t) => t.data !== null).length;
            const c = await loggedIn();
            assert.equal((await c.cmd('MAIL FROM:<alice@example.test>')).code, 250);
            assert.equal((await c.cmd('RCPT TO:<carol@example.net>')).code, 250);
            await c.cmd('DATA');
            c.write(`${head}Subject: resent\r\n\r\nbody\r\n.\r\n`);
            const r = await c.reply();
            c.close();
            const decision = mw.logs.filter((l) => l.msg === 'decision').at(-1)!;
            if (refusal !== null) {
                assert.match(`${r.code} ${r.text}`, refusal, what);
                assert.match(r.text, /\(id [^)]+\)$/, what);
                assert.equal(decision.headerProblem, problem, what);
                if (over) {
                    assert.match(
                        String(decision.reason),
                        /^header Resent-(From|Sender) at line \d+: Resent-From and Resent-Sender fields longer than 100000 bytes together$/,
                        what,
                    );
                    assert.ok(!r.text.includes('ceo@'), `${what}: the field past the bound was not read`);
                } else {
                    assert.ok(r.text.includes(address!), `${what}: names ${address}`);
                }
                assert.equal(decision.dkimSigned, undefined, `${what}: nothing was signed`);
                assert.equal(
                    up.transactions.filter((t) => t.data !== null).length,
                    before,
                    `${what}: nothing upstream`,
                );
            } else {
                assert.equal(r.code, 250, `${what}: ${r.raw}`);
                await up.idle();
                const data = unstuff(up.transactions.at(-1)!.data!).toString('latin1');
                assert.match(data, /^DKIM-Signature: [^]*h=[^;]*Resent-From/, what);
            }
        }
    });

    it('refuses forged From spellings and malformed header sections before signing, with the session id', async () => {
        const cases: [string, string, RegExp, string][] = [
            [
                'an obsolete-syntax From, a line without a colon, then our From',
                'From : ceo@victim.test\r\nthis line has no colon\r\nFrom: alice@example.test\r\n',
                /^550 5\.6\.0 Message refused: line 2 of the header section has no colon/,
                'no-colon',
            ],
            [
                'an obsolete-syntax From before our From',
                'From : ceo@victim.test\r\nFrom: alice@example.test\r\n',
                /^553 5\.7\.1 Sender address rejected: the message has 2 From fields, and exactly one is allowed/,
                'several-from',
            ],
            [
                'two From fields that are both ours',
                'From: alice@example.test\r\nFrom:\talice+x@example.test\r\n',
                /^553 5\.7\.1 Sender address rejected: the message has 2 From fields/,
                'several-from',
            ],
            [
                'a From written with tabs before the colon',
                'From\t \t: ceo@victim.test\r\n',
                /^553 5\.7\.1 Sender address rejected: ceo@victim\.test is not an address the login/,
                'not-owned',
            ],
            [
                'two Sender fields',
                'From: alice@example.test\r\nSender : alice@example.test\r\nSender: ceo@victim.test\r\n',
                /^553 5\.7\.1 Sender address rejected: the message has 2 Sender fields/,
                'several-sender',
            ],
            [
                'a From that does not parse',
                'From: Alice <alice@example.test\r\n',
                /^553 5\.7\.1 Sender address rejected: its From field cannot be read/,
                'unreadable-from',
            ],
            [
                'a source route that hides another address from our reading',
                'From: <@a.example, ceo@victim.test>, <:alice@example.test>\r\n',
                /^553 5\.7\.1 Sender address rejected: its From field cannot be read/,
                'unreadable-from',
            ],
            [
                'a domain literal in the display name holding another address',
                'From: [x, ceo@victim.test, y] <alice@example.test>\r\n',
                /^553 5\.7\.1 Sender address rejected: its From field cannot be read/,
                'unreadable-from',
            ],
            [
                'a Sender the DMARC parser reads as another mailbox',
                'From: alice@example.test\r\nSender: <@a.example, ceo@victim.test>, <:alice@example.test>\r\n',
                /^553 5\.7\.1 Sender address rejected: its Sender field cannot be read/,
                'unreadable-sender',
            ],
            [
                'a From the DMARC parser reads as another mailbox of the same domain',
                'From: alice@example.test (x\\) <bob@example.test>)\r\n',
                /^553 5\.7\.1 Sender address rejected: its From field cannot be read/,
                'unreadable-from',
            ],
            [
                'a Resent-From that does not parse',
                'From: alice@example.test\r\nResent-From: <ceo@victim.test\r\n',
                /^553 5\.7\.1 Sender address rejected: a Resent-From field cannot be read/,
                'unreadable-resent-from',
            ],
            [
                'a Resent-Sender the DMARC parser reads as another mailbox',
                'From: alice@example.test\r\nResent-Sender: alice@example.test (x\\) <ceo@victim.test>)\r\n',
                /^553 5\.7\.1 Sender address rejected: a Resent-Sender field cannot be read/,
                'unreadable-resent-sender',
            ],
            [
                'a leading continuation line',
                ' ; rules=allow\r\nFrom: alice@example.test\r\n',
                /^550 5\.6\.0 Message refused: line 1 of the header section starts with white space/,
                'leading-whitespace',
            ],
            [
                // the DKIM signer indexed fields by name, copying the list for each field: with
                // 30,000 To fields it held the event loop for 27 s
                'more than 1000 header fields',
                'From: alice@example.test\r\n' + 'To:x\r\n'.repeat(30_000),
                /^552 5\.3\.4 Message refused: its header section has more than 1000 fields \(line 1001 is one too many\)/,
                'too-many-fields',
            ],
        ];
        for (const [what, head, reply, problem] of cases) {
            const before = up.transactions.filter((t) => t.data !== null).length;
            const c = await loggedIn();
            assert.equal((await c.cmd('MAIL FROM:<alice@example.test>')).code, 250);
            assert.equal((await c.cmd('RCPT TO:<bob@example.net>')).code, 250);
            await c.cmd('DATA');
            c.write(`${head}Subject: binding\r\n\r\nbody\r\n.\r\n`);
            const r = await c.reply();
            c.close();
            assert.match(`${r.code} ${r.text}`, reply, `${what}: ${r.raw}`);
            const decision = mw.logs.filter((l) => l.msg === 'decision').at(-1)!;
            assert.equal(decision.headerProblem, problem, what);
            assert.ok(r.text.endsWith(`(id ${String(decision.session)})`), `${what}: the session id`);
            assert.equal(decision.dkimSigned, undefined, `${what}: nothing was signed`);
            assert.equal(up.transactions.filter((t) => t.data !== null).length, before, `${what}: nothing upstream`);
        }
    });

    it("refuses a From that the DMARC parser reads as another domain: never signed with that domain's key", async () => {
        // our parser reads alice@example.test (the rest is a comment), mailauth's reads ceo@victim.test:
        // the binding refuses it as unreadable before any check or rule runs
        const spellings = [
            'alice@example.test (x\\) <ceo@victim.test>)',
            'alice@example.test (x (y) <ceo@victim.test>)',
        ];
        for (const from of spellings) {
            const before = up.transactions.filter((t) => t.data !== null).length;
            const c = await loggedIn();
            assert.equal((await c.cmd('MAIL FROM:<alice@example.test>')).code, 250);
            assert.equal((await c.cmd('RCPT TO:<bob@example.net>')).code, 250);
            await c.cmd('DATA');
            c.write(`From: ${from}\r\nSubject: comment\r\n\r\nbody\r\n.\r\n`);
            const r = await c.reply();
            c.close();
            assert.equal(r.code, 553, `${from}: ${r.raw}`);
            assert.match(r.text, /^5\.7\.1 Sender address rejected: its From field cannot be read/);
            const decision = mw.logs.filter((l) => l.msg === 'decision').at(-1)!;
            assert.equal(decision.headerProblem, 'unreadable-from', from);
            assert.equal(decision.dkimSigned, undefined, `${from}: nothing was signed`);
            assert.equal(up.transactions.filter((t) => t.data !== null).length, before, `${from}: nothing upstream`);
        }
    });

    it('passes the login upstream with XCLIENT LOGIN and DKIM-signs the message', async () => {
        const c = await loggedIn();
        assert.equal((await c.cmd('MAIL FROM:<alice@example.test>')).code, 250);
        assert.equal((await c.cmd('RCPT TO:<bob@example.net>')).code, 250);
        await c.cmd('DATA');
        c.write(
            'From: Alice <alice@example.test>\r\nTo: bob@example.net\r\nSubject: signed\r\nDate: Sun, 29 Nov 2026 01:00:00 +0000\r\nMessage-ID: <s1@example.test>\r\n\r\nHello Bob.\r\n.\r\n',
        );
        assert.equal((await c.reply()).code, 250);
        c.close();
        await up.idle();
        const xclient = up.connections.at(-1)!.xclient[0]!;
        assert.equal(xclient.LOGIN, 'alice@example.test');
        const data = unstuff(up.transactions.at(-1)!.data!);
        assert.match(data.toString('latin1'), /^DKIM-Signature: /);
        const resolver = createResolver({ servers: [dns.address], timeoutMs: 1000 });
        try {
            const res = await authenticate(data, {
                ip: '192.0.2.1',
                helo: 'laptop.example',
                sender: 'alice@example.test',
                mta: 'verifier.test',
                resolver: resolver.resolve as never,
                disableBimi: true,
            });
            const dkim = res.dkim.results[0];
            assert.equal(dkim?.status.result, 'pass', JSON.stringify(dkim?.status));
            assert.equal(dkim?.signingDomain, 'example.test');
        } finally {
            resolver.close();
        }
    });

    it('signs a message of exactly 1,000 header fields, ours added on top', async () => {
        const c = await loggedIn();
        assert.equal((await c.cmd('MAIL FROM:<alice@example.test>')).code, 250);
        assert.equal((await c.cmd('RCPT TO:<bob@example.net>')).code, 250);
        await c.cmd('DATA');
        const tos = Array.from({ length: 999 }, (_, i) => `To: r${i}@example.net\r\n`).join('');
        c.write(`From: Alice <alice@example.test>\r\n${tos}\r\nHello.\r\n.\r\n`);
        const r = await c.reply();
        c.close();
        assert.equal(r.code, 250, r.raw);
        await up.idle();
        assert.match(unstuff(up.transactions.at(-1)!.data!).toString('latin1'), /^DKIM-Signature: /);
    });

    it('signs a From written in the obsolete syntax so that it verifies (relaxed canonicalisation reads it as From)', async () => {
        const c = await loggedIn();
        assert.equal((await c.cmd('MAIL FROM:<alice@example.test>')).code, 250);
        assert.equal((await c.cmd('RCPT TO:<bob@example.net>')).code, 250);
        await c.cmd('DATA');
        c.write('From \t: Alice <alice@example.test>\r\nTo: bob@example.net\r\nSubject : obs\r\n\r\nHello.\r\n.\r\n');
        assert.equal((await c.reply()).code, 250);
        c.close();
        await up.idle();
        const data = unstuff(up.transactions.at(-1)!.data!);
        assert.match(data.toString('latin1'), /^DKIM-Signature: [^]*h=From:From:Reply-To:Subject:Subject:To:To:Cc;/);
        const resolver = createResolver({ servers: [dns.address], timeoutMs: 1000 });
        try {
            const res = await authenticate(data, {
                ip: '192.0.2.1',
                helo: 'laptop.example',
                sender: 'alice@example.test',
                mta: 'verifier.test',
                resolver: resolver.resolve as never,
                disableBimi: true,
            });
            assert.equal(res.dkim.results[0]?.status.result, 'pass', JSON.stringify(res.dkim.results[0]?.status));
            assert.deepEqual(res.dkim.headerFrom, ['alice@example.test']);
        } finally {
            resolver.close();
        }
    });

    it('refuses a line over 998 characters before signing or forwarding it; 998 pass, and mx does not check', async () => {
        const head = 'From: Alice <alice@example.test>\r\nTo: bob@example.net\r\n';
        const cases: [string, string, number][] = [
            ['a body line of 999', `${head}Subject: long\r\n\r\n${'a'.repeat(999)}\r\nend\r\n`, 550],
            ['a body line of 1,500', `${head}Subject: long\r\n\r\n${'b'.repeat(1500)}\r\n`, 550],
            ['a Subject line of 1,200', `${head}Subject: ${'s'.repeat(1191)}\r\n\r\nshort\r\n`, 550],
            ['a last line of 999 without CRLF', `${head}Subject: long\r\n\r\n${'c'.repeat(999)}`, 550],
            ['a body line of 998', `${head}Subject: long\r\n\r\n${'d'.repeat(998)}\r\nend\r\n`, 250],
            ['a Subject line of 998', `${head}Subject: ${'t'.repeat(989)}\r\n\r\nshort\r\n`, 250],
        ];
        for (const [what, message, code] of cases) {
            const before = up.transactions.filter((t) => t.data !== null).length;
            const c = await loggedIn();
            assert.equal((await c.cmd('MAIL FROM:<alice@example.test>')).code, 250);
            assert.equal((await c.cmd('RCPT TO:<bob@example.net>')).code, 250);
            await c.cmd('DATA');
            c.write(`${message}\r\n.\r\n`);
            const r = await c.reply();
            c.close();
            assert.equal(r.code, code, `${what}: ${r.raw}`);
            const decision = mw.logs.filter((l) => l.msg === 'decision').at(-1)!;
            if (code === 550) {
                assert.match(
                    r.text,
                    /^5\.6\.0 Message refused: it has a line longer than 998 characters.* \(id \w+\)$/,
                );
                assert.match(String(decision.reason), /^a line of \d+ bytes, over 998/, what);
                assert.equal(decision.action, 'reject', what);
                assert.equal(decision.dkimSigned, undefined, `${what}: nothing was signed`);
                assert.equal(
                    up.transactions.filter((t) => t.data !== null).length,
                    before,
                    `${what}: nothing upstream`,
                );
            } else {
                await up.idle();
                const data = unstuff(up.transactions.at(-1)!.data!).toString('latin1');
                assert.match(data, /^DKIM-Signature: /, what);
                assert.ok(data.includes(message.slice(head.length)), `${what}: forwarded as it was`);
            }
        }
        // mail an mx listener takes is not signed here and is delivered locally: not checked
        const mx = await smtpConnect(mw.port('mx'));
        await mx.greeting();
        await mx.cmd('EHLO mail.example.net');
        assert.equal((await mx.cmd('MAIL FROM:<bob@example.net>')).code, 250);
        assert.equal((await mx.cmd('RCPT TO:<alice@example.test>')).code, 250);
        await mx.cmd('DATA');
        mx.write(`From: bob@example.net\r\nSubject: long\r\n\r\n${'e'.repeat(1500)}\r\n.\r\n`);
        const r = await mx.reply();
        mx.close();
        assert.equal(r.code, 250, r.raw);
    });

    it('gives smtp-server replies enhanced codes too', async () => {
        const c = await loggedIn();
        const r = await c.cmd('RCPT TO:<bob@example.net>');
        assert.equal(r.code, 503);
        assert.match(r.text, /^5\.5\.1 /);
        const u = await c.cmd('FOO bar');
        assert.equal(u.code, 500);
        assert.match(u.text, /^5\.5\.2 /);
        c.close();
    });
});

describe('submission with Dovecot unreachable', () => {
    it('answers 454 4.7.0, never 535', async (t) => {
        const cert = await createTestCertificate();
        const port = await freePort();
        const mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                `tls: { cert: "${cert.certPath}", key: "${cert.keyPath}" }`,
                `auth: { dovecot: "127.0.0.1:${port}" }`,
                'listeners: [{ name: submissions, host: 127.0.0.1, port: 0, mode: submission, tls: implicit }]',
                'upstream: { url: "smtp://127.0.0.1:1" }',
                'http: false',
            ].join('\n'),
        );
        t.after(async () => {
            await mw.stop();
            cert.cleanup();
        });
        const c = await smtpConnect(mw.port(), { tls: 'implicit', ca: cert.cert, servername: 'localhost' });
        await c.greeting();
        await c.cmd('EHLO laptop.example');
        const r = await c.cmd(`AUTH PLAIN ${plain('alice@example.test', 'whatever')}`);
        assert.equal(r.code, 454, r.raw);
        assert.match(r.text, /^4\.7\.0 /);
        c.close();
    });
});

describe('password guessing on submission', () => {
    it('locks the address after 10 failures, refuses even the right password, disconnects, and lets it in again later', async (t) => {
        const cert = await createTestCertificate();
        const users = join(cert.dir, 'users.yaml');
        writeFileSync(
            users,
            `users:\n  - login: carol@example.test\n    password: '${await hash('right password')}'\n`,
        );
        let now = Date.UTC(2026, 10, 29, 12, 0, 0);
        const up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'] });
        const mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                `tls: { cert: "${cert.certPath}", key: "${cert.keyPath}" }`,
                `auth: { users: "${users}" }`,
                'listeners: [{ name: submissions, host: 127.0.0.1, port: 0, mode: submission, tls: implicit }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                'http: false',
            ].join('\n'),
            { now: () => now },
        );
        t.after(async () => {
            await mw.stop();
            await up.close();
            cert.cleanup();
        });
        const session = async (): Promise<SmtpClient> => {
            const c = await smtpConnect(mw.port(), { tls: 'implicit', ca: cert.cert, servername: 'localhost' });
            await c.greeting();
            await c.cmd('EHLO guesser.example');
            return c;
        };
        let c = await session();
        for (let i = 0; i < 10; i++) {
            // two per connection: the third failure of a connection would close it
            if (i % 2 === 0 && i > 0) {
                c.close();
                c = await session();
            }
            const r = await c.cmd(`AUTH PLAIN ${plain(`user${i}@example.test`, 'guess')}`);
            assert.equal(r.code, 535, `guess ${i}: ${r.raw}`);
        }
        c.close();
        c = await session();
        const locked = await c.cmd(`AUTH PLAIN ${plain('carol@example.test', 'right password')}`);
        assert.equal(locked.code, 454, locked.raw);
        assert.match(locked.text, /^4\.7\.0 Too many failed logins .* try again in 2 minutes/);
        assert.equal((await c.cmd(`AUTH PLAIN ${plain('carol@example.test', 'right password')}`)).code, 454);
        const bye = await c.cmd(`AUTH PLAIN ${plain('carol@example.test', 'right password')}`);
        assert.equal(bye.code, 421, 'the third refusal closes the connection');
        assert.match(bye.text, /^4\.7\.0 Too many failed logins; closing the connection/);
        await c.waitClosed();
        now += 91_000; // one failure has drained (10 per 15 minutes: one every 90 s)
        c = await session();
        assert.equal((await c.cmd(`AUTH PLAIN ${plain('carol@example.test', 'right password')}`)).code, 235);
        c.close();
        const metrics = await mw.app.metrics.registry.metrics();
        assert.match(metrics, /mailwarden_smtp_auth_total\{listener="submissions",result="locked"\} 3/);
        assert.match(metrics, /mailwarden_smtp_auth_total\{listener="submissions",result="invalid"\} 10/);
    });
});

describe('submission with Dovecot checking passwords', () => {
    /** A real Dovecot, a submission listener (STARTTLS unless `tls: implicit`) checking passwords with it, an upstream. */
    async function dovecotGateway(
        t: TestContext,
        dovecotOptions: Parameters<typeof startDovecot>[0],
        options: { readonly lockout?: string; readonly tls?: 'implicit' } = {},
    ): Promise<{ mw: TestApp; up: ScriptedUpstream; cert: TestCertificate }> {
        const dovecot = await startDovecot(dovecotOptions);
        const cert = await createTestCertificate();
        const up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'] });
        const lockout = options.lockout ? `, lockout: ${options.lockout}` : '';
        const mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                `tls: { cert: "${cert.certPath}", key: "${cert.keyPath}" }`,
                `auth: { dovecot: "127.0.0.1:${dovecot.port}"${lockout} }`,
                `listeners: [{ name: submission, host: 127.0.0.1, port: 0, mode: submission${options.tls ? ', tls: implicit' : ''} }]`,
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                'http: false',
            ].join('\n'),
        );
        t.after(async () => {
            await mw.stop();
            await up.close();
            await dovecot.stop();
            cert.cleanup();
        });
        return { mw, up, cert };
    }

    /**
     * AUTH PLAIN over implicit TLS, one connection per attempt, each from an address of its own
     * in `net` (Dovecot delays repeated failures from one address); resolves the reply code.
     */
    function attempts(
        mw: TestApp,
        cert: TestCertificate,
        net: string,
    ): (login: string, password: string) => Promise<number> {
        let next = 1;
        return async (login, password) => {
            const c = await smtpConnect(mw.port(), {
                tls: 'implicit',
                ca: cert.cert,
                servername: 'localhost',
                localAddress: `${net}.${next++}`,
            });
            try {
                await c.greeting();
                await c.cmd('EHLO laptop.example');
                return (await c.cmd(`AUTH PLAIN ${plain(login, password)}`)).code;
            } finally {
                c.close();
            }
        };
    }

    it('logs in with the right password, refuses the wrong one with 535, over real TLS', async (t) => {
        const { mw, up, cert } = await dovecotGateway(t, {
            users: [{ login: 'dave@example.test', password: 'dovecot secret' }],
        });
        const c = await smtpConnect(mw.port());
        await c.greeting();
        await c.cmd('EHLO laptop.example');
        await c.starttls({ ca: cert.cert, servername: 'localhost' });
        await c.cmd('EHLO laptop.example');
        const wrong = await c.cmd(`AUTH PLAIN ${plain('dave@example.test', 'not it')}`);
        assert.equal(wrong.code, 535, wrong.raw);
        const right = await c.cmd(`AUTH PLAIN ${plain('dave@example.test', 'dovecot secret')}`);
        assert.equal(right.code, 235, right.raw);
        // without a sendAs file a Dovecot login may send as itself
        assert.equal((await c.cmd('MAIL FROM:<dave@example.test>')).code, 250);
        assert.equal((await c.cmd('RCPT TO:<bob@example.net>')).code, 250);
        c.close();
        await up.idle();
        assert.equal(up.connections.at(-1)!.xclient[0]!.LOGIN, 'dave@example.test');
    });

    // Dovecot reads `carol@anything` as the account carol (auth_username_format = %Ln): each
    // spelling used to have a failure counter of its own, so one account could be guessed without end
    it('counts failures under the account Dovecot names, whatever spelling the client wrote', async (t) => {
        const { mw, cert } = await dovecotGateway(
            t,
            { users: [{ login: 'carol', password: 'carol secret' }], extraConfig: 'auth_username_format = %Ln' },
            { lockout: '{ perIp: false, perLogin: 3/1h, perSession: 100 }', tls: 'implicit' },
        );
        const attempt = attempts(mw, cert, '127.0.77');
        const replies: number[] = [];
        for (let i = 0; i < 5; i++) replies.push(await attempt(`carol@v${i}.example`, 'guess'));
        assert.deepEqual(replies, [535, 535, 535, 454, 454], 'three guesses at the account, then locked');
        // a wrong password is refused after Dovecot's auth_failure_delay; the right one, under a
        // new spelling of the locked account, is refused no sooner (it used to take 3 ms against
        // 2 s: the time told that the password was right)
        let started = performance.now();
        assert.equal(await attempt('carol@w1.example', 'guess'), 454);
        const wrongMs = performance.now() - started;
        started = performance.now();
        assert.equal(await attempt('carol@other.example', 'carol secret'), 454, 'the right password, another spelling');
        const rightMs = performance.now() - started;
        assert.ok(wrongMs > 200, `Dovecot delays a failure (${wrongMs.toFixed(0)} ms)`);
        assert.ok(rightMs >= wrongMs * 0.8, `right ${rightMs.toFixed(0)} ms, wrong ${wrongMs.toFixed(0)} ms`);
        const locked = mw.logs.filter((l) => l.msg === 'auth' && l.result === 'locked');
        assert.ok(locked.every((l) => l.lockout === 'login'));
        const invalid = mw.logs.filter((l) => l.msg === 'auth' && l.result === 'invalid');
        assert.deepEqual(
            invalid.map((l) => l.account),
            ['carol', 'carol', 'carol'],
        );
    });

    // Guesses sent at once under new spellings are all checked before Dovecot names the account
    // (it holds each failure for auth_failure_delay): counted as written, the right password among
    // them got 235. `loginKey: localPart` counts the account (%Ln) before any password is checked.
    it('with loginKey localPart, counts parallel guesses under new spellings on the account before checking', async (t) => {
        const { mw, cert } = await dovecotGateway(
            t,
            { users: [{ login: 'carol', password: 'carol secret' }], extraConfig: 'auth_username_format = %Ln' },
            { lockout: '{ perIp: false, perLogin: 3/1h, perSession: 100, loginKey: localPart }', tls: 'implicit' },
        );
        const attempt = attempts(mw, cert, '127.0.78');
        let answered = 0;
        const guesses = Array.from({ length: 8 }, (_, i) =>
            attempt(`Carol@g${i}.example`, 'guess').finally(() => answered++),
        );
        // the guesses are in: three are held by Dovecot's failure delay, the rest refused unchecked
        const deadline = Date.now() + 5_000;
        while (answered < 5 && Date.now() < deadline) await sleep(10);
        assert.equal(answered, 5, 'five guesses refused without a check');
        const right = await attempt('carol@right.example', 'carol secret');
        assert.equal(answered, 5, 'the right password was tried while Dovecot still held three failures');
        const replies = await Promise.all(guesses);
        assert.equal(right, 454, 'the right password finds the account locked');
        assert.equal(replies.filter((c) => c === 535).length, 3, 'three passwords checked');
        assert.equal(replies.filter((c) => c === 454).length, 5, 'the rest refused unchecked');
        const locked = mw.logs.filter((l) => l.msg === 'auth' && l.result === 'locked');
        assert.equal(locked.length, 6);
        assert.ok(locked.every((l) => l.lockout === 'login'));
    });
});
