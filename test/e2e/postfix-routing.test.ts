/**
 * Sender-specified routing in front of a real Postfix that trusts mailwarden's address
 * (`upstream.xclient: false`, mailwarden's 127.0.0.1 in `mynetworks`): Postfix itself, asked
 * from there, takes `victim%evil.example@example.test` and relays it to evil.example (percent
 * hack; the same for `evil.example!victim` and a quoted `"victim@evil.example"`). Through
 * mailwarden's mx listener each spelling is refused with 550 5.7.1 like any relay attempt and
 * nothing of it reaches Postfix. DNS stays on loopback; nothing leaves the machine.
 */
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startDnsServer, type DnsTestServer } from '../helpers/dns-server.ts';
import { startPostfix, type PostfixInstance } from '../helpers/postfix.ts';
import { smtpConnect } from '../helpers/smtp-client.ts';
import { until } from '../helpers/until.ts';

const ROUTED = [
    'victim%evil.example@example.test',
    'evil.example!victim@example.test',
    '"victim@evil.example"@example.test',
];

describe('sender-specified routing, mailwarden in front of Postfix without XCLIENT', () => {
    let postfix: PostfixInstance;
    let dns: DnsTestServer;
    let mw: TestApp;

    before(async () => {
        // example.test as a local domain (mydestination), where Postfix applies allow_percent_hack
        // and swap_bangpath, and mailwarden's address trusted to relay (permit_mynetworks)
        postfix = await startPostfix({
            users: ['alice'],
            mainCf: {
                mydestination: 'example.test',
                virtual_mailbox_domains: '',
                local_recipient_maps: '',
                mynetworks: '127.0.0.1/32',
            },
        });
        dns = await startDnsServer({});
        mw = await startApp(
            [
                'hostname: mx.test',
                'domains: [example.test]',
                'listeners:',
                '  - { name: mx, host: 127.0.0.1, port: 0, mode: mx }',
                `upstream: { url: "smtp://127.0.0.1:${postfix.port}", xclient: false }`,
                `dns: { servers: ["${dns.address}"], timeout: 1s }`,
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw?.stop();
        await dns?.close();
        await postfix?.stop();
    });

    it('through the mx listener each spelling gets 550 5.7.1 and nothing of it reaches Postfix', async () => {
        const logBefore = (await postfix.log()).length;
        const c = await smtpConnect(mw.port(), { localAddress: '127.0.0.9' });
        try {
            await c.greeting();
            assert.equal((await c.cmd('EHLO spammer.example')).code, 250);
            assert.equal((await c.cmd('MAIL FROM:<spam@spammer.example>')).code, 250);
            for (const rcpt of ROUTED) {
                const r = await c.cmd(`RCPT TO:<${rcpt}>`);
                assert.equal(r.code, 550, `${rcpt}: ${r.raw}`);
                assert.match(r.text, /^5\.7\.1 Relaying denied: .*routes the message on to evil\.example /, rcpt);
            }
            // no recipient was accepted: DATA is refused and nothing is queued
            assert.notEqual((await c.cmd('DATA')).code, 354);
            await c.cmd('QUIT');
        } finally {
            c.close();
        }
        await sleep(500);
        const log = (await postfix.log()).slice(logBefore);
        assert.doesNotMatch(log, /evil\.example|victim/i, 'Postfix never heard of the routed recipients');
        assert.equal(await postfix.queued(), 0);
    });

    it('Postfix alone, asked from the trusted address, takes each spelling and relays it to evil.example', async () => {
        const c = await smtpConnect(postfix.port);
        try {
            await c.greeting();
            assert.equal((await c.cmd('EHLO mx.test')).code, 250);
            assert.equal((await c.cmd('MAIL FROM:<>')).code, 250);
            for (const rcpt of ROUTED) {
                const r = await c.cmd(`RCPT TO:<${rcpt}>`);
                assert.equal(r.code, 250, `${rcpt}: ${r.raw}`);
            }
            assert.equal((await c.cmd('DATA')).code, 354);
            c.write('From: spam@spammer.example\r\nSubject: routed\r\n\r\nspam\r\n.\r\n');
            assert.equal((await c.reply()).code, 250);
            await c.cmd('QUIT');
        } finally {
            c.close();
        }
        // the queue manager hands it to the relay transport for evil.example (whose name does not
        // resolve on the loopback DNS, so it stays deferred; nothing leaves the machine)
        for (const rcpt of ROUTED) {
            await until(
                `Postfix logs ${rcpt} resolved to victim@evil.example`,
                async () => (await postfix.log()).includes(`to=<victim@evil.example>, orig_to=<${rcpt}>`),
                20_000,
                100,
            );
        }
    });
});
