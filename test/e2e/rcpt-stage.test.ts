/**
 * The rcpt stage decides each recipient alone, end to end through the real listener and a
 * scripted upstream: a rule that accepts postmaster (over `rcpt.to` or `rcpt.address`) accepts
 * that recipient only, so a later recipient a rule refuses is still refused, and never reaches
 * the upstream; at the data stage `rcpt.to` is every accepted recipient again.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { startScriptedGateway, type ScriptedGateway } from '../helpers/app.ts';
import { smtpConnect } from '../helpers/smtp-client.ts';

function rules(fact: 'rcpt.to' | 'rcpt.address'): string {
    const postmaster = fact === 'rcpt.to' ? '{ in: [postmaster@example.org] }' : 'postmaster@example.org';
    return `rules:
  - id: always-postmaster
    stage: rcpt
    when: { ${fact}: ${postmaster} }
    action: accept
  - id: closed-domain
    stage: rcpt
    when: { rcpt.domain: { domain: [closed.example] } }
    action: reject
    reply: { code: 550, enhanced: 5.7.1, text: "closed.example takes no mail from outside" }
  - id: recipients
    stage: data
    when: { rcpt.to: { in: [postmaster@example.org] } }
    action: tag
    headers: { X-Recipients: '{rcpt.to}'${fact === 'rcpt.address' ? ", X-Last-Recipient: '{rcpt.address}'" : ''} }
`;
}

async function gateway(t: TestContext, fact: 'rcpt.to' | 'rcpt.address'): Promise<ScriptedGateway> {
    const dir = await mkdtemp(join(tmpdir(), 'mw-rcpt-stage-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    await writeFile(join(dir, '10-rcpt.yaml'), rules(fact));
    const g = await startScriptedGateway([
        'hostname: mx.example.test',
        'domains: [example.org, closed.example, open.example]',
        'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
        `rules: "${dir}"`,
    ]);
    t.after(() => g.close());
    return g;
}

describe('the rcpt stage decides the recipient of this RCPT TO', () => {
    for (const fact of ['rcpt.to', 'rcpt.address'] as const) {
        it(`an accept of postmaster over ${fact} does not accept a later recipient the rules refuse`, async (t) => {
            const { up, mw } = await gateway(t, fact);
            const c = await smtpConnect(mw.port());
            t.after(() => c.close());
            assert.equal((await c.greeting()).code, 220);
            assert.equal((await c.cmd('EHLO client.example')).code, 250);

            // refused alone
            assert.equal((await c.cmd('MAIL FROM:<x@sender.example>')).code, 250);
            const alone = await c.cmd('RCPT TO:<ceo@closed.example>');
            assert.equal(alone.code, 550, alone.raw);
            assert.equal((await c.cmd('RSET')).code, 250);

            // and still refused after postmaster was accepted
            assert.equal((await c.cmd('MAIL FROM:<x@sender.example>')).code, 250);
            assert.equal((await c.cmd('RCPT TO:<postmaster@example.org>')).code, 250);
            const after = await c.cmd('RCPT TO:<ceo@closed.example>');
            assert.equal(after.code, 550, after.raw);
            assert.match(after.text, /5\.7\.1 closed\.example takes no mail from outside/);
            assert.equal((await c.cmd('RCPT TO:<bob@open.example>')).code, 250);

            assert.equal((await c.cmd('DATA')).code, 354);
            const sent = await c.cmd('From: x@sender.example\r\nSubject: hi\r\n\r\nhello\r\n.');
            assert.equal(sent.code, 250, sent.raw);
            assert.equal((await c.cmd('QUIT')).code, 221);

            const txs = up.transactions.filter((x) => x.data !== null);
            assert.equal(txs.length, 1);
            assert.deepEqual(txs[0]!.rcpts, ['postmaster@example.org', 'bob@open.example']);
            assert.ok(!up.commands.some((l) => l.includes('ceo@closed.example')), 'ceo never reaches the upstream');
            // the data stage reads every accepted recipient, and the last one as rcpt.address
            const head = txs[0]!.data!.toString('latin1');
            assert.match(head, /^X-Recipients: postmaster@example\.org, bob@open\.example\r$/m);
            if (fact === 'rcpt.address') assert.match(head, /^X-Last-Recipient: bob@open\.example\r$/m);
        });
    }
});
