/**
 * A refusal at connect is the greeting, and RFC 5321 (sections 3.1 and 4.3.2) allows only 220,
 * 554 or 421 there: through the real listener, a rule's tempfail, a rule's own 4xx reply and a
 * reject softened by `softReject` (the shipped pregreet rule's reply) are all answered
 * `421 4.7.0` and the connection is closed; a reject stays `554` whatever its rule's code; and
 * a softened reply does not say the message or sender was refused.
 */
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { smtpConnect, type SmtpReply } from '../helpers/smtp-client.ts';

const RULES = `rules:
  - id: connect-later
    stage: connect
    when: { client.ip: 127.3.0.2 }
    action: tempfail
  - id: connect-busy
    stage: connect
    when: { client.ip: 127.3.0.3 }
    action: tempfail
    reply: { code: 450, enhanced: 4.7.1, text: 'Busy here' }
  - id: connect-odd-code
    stage: connect
    when: { client.ip: 127.3.0.4 }
    action: reject
    reply: { code: 553, enhanced: 5.7.1, text: 'Not from there' }
  - id: sender-block
    stage: mail
    when: { mail.from.domain: { domain: [blocked.example] } }
    action: reject
    reply: { code: 550, enhanced: 5.7.1, text: 'Sender refused: {mail.from} is blocked here' }
`;

async function greetingOf(port: number, localAddress: string, first?: string): Promise<SmtpReply> {
    const c = await smtpConnect(port, { localAddress });
    try {
        if (first !== undefined) c.write(first);
        const g = await c.greeting();
        if (g.code !== 220) await c.waitClosed(5000);
        return g;
    } finally {
        c.close();
    }
}

describe('refusals at connect are 554 or 421', () => {
    let up: ScriptedUpstream;
    let soft: TestApp;
    let hard: TestApp;
    let rulesDir: string;
    let shipped: string;

    before(async () => {
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN', 'SIZE 1000000'] });
        rulesDir = mkdtempSync(join(tmpdir(), 'mw-connect-rules-'));
        writeFileSync(join(rulesDir, 'connect.yaml'), RULES);
        shipped = mkdtempSync(join(tmpdir(), 'mw-connect-shipped-'));
        cpSync(new URL('../../rules/', import.meta.url), shipped, { recursive: true });
        writeFileSync(join(shipped, 'lists', 'block-domains.txt'), 'blocked.example\n');
        const config = (rules: string, softReject: boolean, pregreet: string): string =>
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                `listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx${pregreet} }]`,
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                `rules: "${rules}"`,
                `softReject: ${softReject}`,
                'http: false',
            ].join('\n');
        hard = await startApp(config(rulesDir, false, ''));
        soft = await startApp(config(shipped, true, ', pregreetWait: 300ms'));
    });
    after(async () => {
        await soft?.stop();
        await hard?.stop();
        await up?.close();
        for (const d of [rulesDir, shipped]) if (d) rmSync(d, { recursive: true, force: true });
    });

    it('answers a tempfail at connect 421 4.7.0 and closes, keeping what the rule said', async () => {
        const plain = await greetingOf(hard.port(), '127.3.0.2');
        assert.equal(plain.code, 421, plain.raw);
        assert.match(plain.text, /^4\.7\.0 .*try again later; closing the connection \(id [^)]+\)$/, plain.raw);
        const own = await greetingOf(hard.port(), '127.3.0.3');
        assert.equal(own.code, 421, own.raw);
        assert.match(own.text, /^4\.7\.0 Busy here\. Please try again later; closing the connection \(id [^)]+\)$/);
    });

    it('answers a reject at connect 554 whatever the rule code', async () => {
        const odd = await greetingOf(hard.port(), '127.3.0.4');
        assert.equal(odd.code, 554, odd.raw);
        assert.match(odd.text, /^5\.7\.1 Not from there/);
    });

    it('with softReject, answers the shipped pregreet refusal 421 4.7.0, not 454', async () => {
        const g = await greetingOf(soft.port(), '127.3.0.5', 'EHLO bot.example\r\n');
        assert.equal(g.code, 421, g.raw);
        assert.match(g.text, /^4\.7\.0 Protocol error: your mail server \(127\.3\.0\.5\) sent commands before/);
        assert.match(g.text, /Please try again later; closing the connection \(id [^)]+\)$/);
    });

    it('with softReject, a softened refusal says deferred, not refused', async () => {
        const c = await smtpConnect(soft.port(), { localAddress: '127.3.0.6' });
        try {
            assert.equal((await c.greeting(5000)).code, 220);
            await c.cmd('EHLO client.example');
            const mail = await c.cmd('MAIL FROM:<someone@blocked.example>');
            assert.equal(mail.code, 450, mail.raw);
            assert.match(
                mail.text,
                /^4\.7\.1 Sender deferred: <?someone@blocked\.example>? is on this site's block list/,
            );
            assert.doesNotMatch(mail.text, /refused/i, mail.raw);
        } finally {
            c.close();
        }
    });
});
