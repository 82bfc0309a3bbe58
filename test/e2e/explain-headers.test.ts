/**
 * `mailwarden explain` gives the live session's answer for the same header bytes: each header
 * section below is sent to a running mailwarden (mx, and submission logged in as alice) and
 * explained with the same configuration; the reply (code, enhanced code and text, the session
 * id aside) must be the same, for refusals (550 5.6.0 malformed, 553 5.7.1 author fields) and
 * for messages that pass (250 2.0.0).
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { hash } from '@node-rs/argon2';
import { explainMessage } from '../../src/commands/explain.ts';
import { loadConfig } from '../../src/config/load.ts';
import type { Config } from '../../src/config/types.ts';
import { loadRuleSet, type RuleSet } from '../../src/rules/index.ts';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { sendMail, smtpConnect, type SmtpReply } from '../helpers/smtp-client.ts';
import { createTestCertificate, type TestCertificate } from '../helpers/tls-cert.ts';

const TAIL = 'To: bob@example.test\r\nSubject: parity\r\n\r\nHello.\r\n';

const CASES: readonly [string, string][] = [
    ['a clean message', `From: Alice <alice@example.test>\r\n${TAIL}`],
    ['a leading continuation line', ` ; rules=allow; score=-100\r\nFrom: alice@example.test\r\n${TAIL}`],
    ['a line without a colon', `From : ceo@victim.test\r\nno colon\r\nFrom: alice@example.test\r\n${TAIL}`],
    ['an 8-bit field name', `From: alice@example.test\r\nX-Mailwarden-Verdict\u00e9: x\r\n${TAIL}`],
    ['two From fields', `From : ceo@victim.test\r\nFrom: alice@example.test\r\n${TAIL}`],
    ['a foreign From in obsolete syntax', `From\t: ceo@victim.test\r\n${TAIL}`],
    ['forged own fields', `X-Mailwarden-Verdict : accept\r\nFrom: alice@example.test\r\n${TAIL}`],
];

/** The reply without the session id and the upstream's queue id (explain has neither), for comparison. */
const shape = (code: number, text: string): string =>
    `${code} ${text.replace(/\(id [^)]*\)/, '(id)').replace(/ as \S+ \(id\)$/, ' (id)')}`;

describe('explain answers as the live session does for header sections', () => {
    let up: ScriptedUpstream;
    let cert: TestCertificate;
    let mw: TestApp;
    let config: Config;
    let rules: RuleSet;
    before(async () => {
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'] });
        cert = await createTestCertificate();
        const users = join(cert.dir, 'users.yaml');
        writeFileSync(
            users,
            `users:\n  - login: alice@example.test\n    password: '${await hash('alice secret')}'\n    sendAs: [alice@example.test]\n`,
        );
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                `tls: { cert: "${cert.certPath}", key: "${cert.keyPath}" }`,
                `auth: { users: "${users}" }`,
                'listeners:',
                '  - { name: mx, host: 127.0.0.1, port: 0, mode: mx }',
                '  - { name: submissions, host: 127.0.0.1, port: 0, mode: submission, tls: implicit }',
                `upstream: { url: "smtp://127.0.0.1:${up.port}", xclient: true }`,
                'http: false',
            ].join('\n'),
        );
        config = loadConfig(join(mw.dir, 'mailwarden.yaml'), {});
        rules = loadRuleSet(config.rules, { softReject: config.softReject });
    });
    after(async () => {
        await mw.stop();
        await up.close();
        cert.cleanup();
    });

    const explain = async (listener: string, authUser: string | null, mailFrom: string, message: string) => {
        const report = await explainMessage(config, rules, {
            clientIp: '127.0.0.1',
            helo: 'client.example',
            mailFrom,
            rcpts: ['bob@example.test'],
            listener,
            authUser,
            message: Buffer.from(message, 'utf8'),
        });
        return shape(report.reply.code, `${report.reply.enhanced} ${report.reply.text}`);
    };

    for (const [what, message] of CASES) {
        it(`mx: ${what}`, async () => {
            const live = await sendMail(mw.port('mx'), {
                from: 'sender@sender.test',
                to: ['bob@example.test'],
                data: message,
                helo: 'client.example',
            });
            const reply = live.message!;
            assert.equal(await explain('mx', null, 'sender@sender.test', message), shape(reply.code, reply.text));
        });

        it(`submission: ${what}`, async () => {
            const c = await smtpConnect(mw.port('submissions'), {
                tls: 'implicit',
                ca: cert.cert,
                servername: 'localhost',
            });
            let reply: SmtpReply;
            try {
                await c.greeting();
                await c.cmd('EHLO laptop.example');
                const auth = await c.cmd(
                    `AUTH PLAIN ${Buffer.from('\0alice@example.test\0alice secret').toString('base64')}`,
                );
                assert.equal(auth.code, 235, auth.raw);
                assert.equal((await c.cmd('MAIL FROM:<alice@example.test>')).code, 250);
                assert.equal((await c.cmd('RCPT TO:<bob@example.test>')).code, 250);
                assert.equal((await c.cmd('DATA')).code, 354);
                c.write(Buffer.from(`${message}.\r\n`, 'utf8'));
                reply = await c.reply();
            } finally {
                c.close();
            }
            assert.equal(
                await explain('submissions', 'alice@example.test', 'alice@example.test', message),
                shape(reply.code, reply.text),
            );
        });
    }

    it('submission: explain binds the envelope sender as MAIL FROM does', async () => {
        const c = await smtpConnect(mw.port('submissions'), {
            tls: 'implicit',
            ca: cert.cert,
            servername: 'localhost',
        });
        let reply: SmtpReply;
        try {
            await c.greeting();
            await c.cmd('EHLO laptop.example');
            await c.cmd(`AUTH PLAIN ${Buffer.from('\0alice@example.test\0alice secret').toString('base64')}`);
            reply = await c.cmd('MAIL FROM:<ceo@victim.test>');
        } finally {
            c.close();
        }
        assert.equal(reply.code, 553);
        assert.equal(
            await explain('submissions', 'alice@example.test', 'ceo@victim.test', CASES[0]![1]),
            shape(reply.code, reply.text),
        );
    });
});
