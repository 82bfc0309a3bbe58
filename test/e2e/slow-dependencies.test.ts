/**
 * A dead or slow dependency bounds how long a client waits, never more: with the resolver
 * silent, the greeting comes at once (the reverse lookup runs behind it and is reported at the
 * helo stage, bounded by its own timeout), and the message still goes through.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startDnsServer, type DnsTestServer } from '../helpers/dns-server.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { smtpConnect } from '../helpers/smtp-client.ts';

const EHLO = ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN', 'SIZE 1000000'];

describe('a resolver that never answers', () => {
    let dns: DnsTestServer;
    let up: ScriptedUpstream;
    let mw: TestApp;
    before(async () => {
        dns = await startDnsServer({ '1.0.0.127.in-addr.arpa': { TIMEOUT: true } });
        up = await startScriptedUpstream({ ehlo: EHLO });
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                // each lookup may take 1.5 s; the iprev check up to twice that
                `dns: { servers: ["${dns.address}"], timeout: 1500ms }`,
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw.stop();
        await up.close();
        await dns.close();
    });

    it('does not delay the greeting, and reports the lookup at the helo stage', async () => {
        const started = performance.now();
        const client = await smtpConnect(mw.port());
        const greeting = await client.greeting();
        const waited = performance.now() - started;
        assert.equal(greeting.code, 220);
        assert.ok(waited < 1000, `greeting after ${Math.round(waited)} ms, sooner than one DNS timeout`);
        // the reverse lookup started at connect, before any command (the resolver sees it within
        // moments of the greeting), and nobody waited for it
        const until = performance.now() + 1000;
        while (!dns.queries.some((q) => q.type === 'PTR') && performance.now() < until) {
            await new Promise((r) => setTimeout(r, 10));
        }
        assert.ok(
            dns.queries.some((q) => q.type === 'PTR'),
            'the PTR lookup started at connect',
        );
        await client.cmd('EHLO client.example');
        const mail = await client.cmd('MAIL FROM:<a@example.org>');
        assert.equal(mail.code, 250, mail.raw);
        await client.cmd('RCPT TO:<b@example.test>');
        await client.cmd('DATA');
        client.write('From: a@example.org\r\nSubject: t\r\n\r\nbody\r\n.\r\n');
        const done = await client.reply();
        assert.equal(done.code, 250, done.raw);
        client.close();
        const decision = mw.logs.find((l) => l.msg === 'decision');
        assert.ok(decision, 'a decision was logged');
    });
});
