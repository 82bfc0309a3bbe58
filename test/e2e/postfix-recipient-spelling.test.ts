/**
 * Recipient spellings in front of a real Postfix that delivers them to one mailbox: sender-specified
 * routing through one of our domains (`bob%example.test@front.test`, `example.test!bob@front.test`,
 * `"bob@example.test"@front.test`, front.test a Postfix mydestination domain) is refused on the mx
 * listener, so a rule on `rcpt.to` cannot be passed by it and nothing reaches bob's Maildir; a
 * subaddress (`bob+x@`, `alice+1@`, Postfix's recipient_delimiter `+`) is matched by the rule and
 * counted by a per-recipient limit as the mailbox it is delivered to.
 * DNS stays on loopback; nothing leaves the machine.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startDnsServer, type DnsTestServer } from '../helpers/dns-server.ts';
import { startPostfix, type PostfixInstance } from '../helpers/postfix.ts';
import { smtpConnect } from '../helpers/smtp-client.ts';

const RULES = `rules:
  - id: bob-internal-only
    description: bob@example.test takes no mail from the internet
    stage: rcpt
    when: { listener.mode: mx, rcpt.to: { in: [bob@example.test] } }
    action: reject
limits:
  - { id: per-mailbox, key: rcpt.to, rate: 2/1h, per: recipient }
`;

describe('recipient spellings in front of Postfix', () => {
    let postfix: PostfixInstance;
    let dns: DnsTestServer;
    let mw: TestApp;
    let dir: string;
    before(async () => {
        dir = await mkdtemp(join(tmpdir(), 'mw-spelling-pf-'));
        await writeFile(join(dir, '10.yaml'), RULES);
        postfix = await startPostfix({
            users: ['alice', 'bob'],
            mainCf: { mydestination: 'front.test', local_recipient_maps: '', recipient_delimiter: '+' },
        });
        dns = await startDnsServer({});
        mw = await startApp(
            [
                'hostname: mx.test',
                'domains: [example.test, front.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${postfix.port}", xclient: true }`,
                `dns: { servers: ["${dns.address}"], timeout: 1s }`,
                `rules: "${dir}"`,
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw?.stop();
        await dns?.close();
        await postfix?.stop();
        await rm(dir, { recursive: true, force: true });
    });

    /** One message to `rcpt` on its own connection: the RCPT reply, and DATA's code when accepted. */
    async function send(rcpt: string, subject: string): Promise<{ rcpt: number; text: string; data: number | null }> {
        const c = await smtpConnect(mw.port(), { localAddress: '127.0.0.9' });
        try {
            await c.greeting();
            await c.cmd('EHLO sender.example');
            assert.equal((await c.cmd(`MAIL FROM:<s@sender.example>`)).code, 250);
            const r = await c.cmd(`RCPT TO:<${rcpt}>`);
            let data: number | null = null;
            if (r.code === 250) {
                assert.equal((await c.cmd('DATA')).code, 354);
                c.write(`From: s@sender.example\r\nSubject: ${subject}\r\n\r\nx\r\n.\r\n`);
                data = (await c.reply()).code;
            }
            await c.cmd('QUIT').catch(() => undefined);
            return { rcpt: r.code, text: r.text, data };
        } finally {
            c.close();
        }
    }

    it('routing through one of our domains is refused, and the rule on bob holds', async () => {
        const direct = await send('bob@example.test', 'direct');
        assert.equal(direct.rcpt, 550, 'the rule refuses bob@example.test');
        for (const rcpt of [
            'bob%example.test@front.test',
            'example.test!bob@front.test',
            '"bob@example.test"@front.test',
        ]) {
            const r = await send(rcpt, `routed ${rcpt}`);
            assert.equal(r.rcpt, 550, `${rcpt}: ${r.text}`);
            assert.match(r.text, /^5\.7\.1 Sender-specified routing is not accepted/, rcpt);
        }
        // alice, no rule: delivered, so the Maildir check below is not vacuous
        const alice = await send('alice@example.test', 'to alice');
        assert.deepEqual([alice.rcpt, alice.data], [250, 250]);
        await sleep(2000);
        assert.deepEqual(await postfix.messages('bob'), [], "nothing reaches bob's Maildir");
        assert.equal((await postfix.messages('alice')).length, 1);
    });

    it('a subaddress is the mailbox: the rule on bob matches bob+x, and alice+1, alice+2 share her limit', async () => {
        const bob = await send('bob+x@example.test', 'bob subaddress');
        assert.equal(bob.rcpt, 550, `bob+x: ${bob.text}`);
        // alice had one message above; the limit allows two an hour whatever the subaddress
        const first = await send('alice+1@example.test', 'alice+1');
        assert.deepEqual([first.rcpt, first.data], [250, 250]);
        const second = await send('alice+2@example.test', 'alice+2');
        assert.equal(second.rcpt, 450, `alice+2: ${second.text}`);
        assert.match(second.text, /^4\.7\.1 /);
        await sleep(2000);
        assert.deepEqual(await postfix.messages('bob'), [], "nothing reaches bob's Maildir");
        assert.equal((await postfix.messages('alice')).length, 2);
    });
});
