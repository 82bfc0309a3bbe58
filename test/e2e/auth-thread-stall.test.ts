/**
 * A message that holds the sender-authentication thread in synchronous work, through the real
 * proxy (shipped rules, loopback DNS, scripted upstream). The thread is one that misbehaves on
 * request (test/helpers/misbehaving-verify-worker.ts: 5 s of synchronous work for the envelope
 * sender `spin-5000@…`, as a quadratic parse in mailauth would cost), stopped once it has not
 * answered a ping for 300 ms: that message gets `451 4.4.3` at once, long before its 10 s
 * `authentication.timeout` and the 5 s of work; another
 * client meanwhile is greeted at once and its message, verified in the same stuck thread, is
 * verified again in a new one and delivered; the restart is counted, and the stuck message has
 * its decision line (tempfail).
 */
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { createMetrics } from '../../src/metrics.ts';
import { createVerifyThread, type VerifyThread } from '../../src/sender-auth/verify-thread.ts';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startDnsServer, type DnsTestServer } from '../helpers/dns-server.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { sendMail, smtpConnect } from '../helpers/smtp-client.ts';

const MISBEHAVING = new URL('../helpers/misbehaving-verify-worker.ts', import.meta.url);

function message(from: string, subject: string): string {
    return [
        `From: ${from}`,
        'To: bob@example.test',
        `Subject: ${subject}`,
        'Date: Mon, 7 Dec 2026 06:00:00 +0000',
        `Message-ID: <${subject.replace(/\W/g, '')}@bank.example>`,
        '',
        'Hello.',
        '',
    ].join('\r\n');
}

describe('a message that holds the sender-authentication thread', () => {
    let dns: DnsTestServer;
    let up: ScriptedUpstream;
    let mw: TestApp;
    let thread: VerifyThread;
    const metrics = createMetrics('test');
    before(async () => {
        dns = await startDnsServer({});
        dns.setZone({
            'bank.example': { TXT: ['v=spf1 ip4:127.0.0.1 -all'] },
            '_dmarc.bank.example': { TXT: ['v=DMARC1; p=reject'] },
        });
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'] });
        thread = createVerifyThread({ entry: MISBEHAVING, stallMs: 300, metrics });
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                `dns: { servers: ["${dns.address}"], timeout: 500ms }`,
                'authentication: { timeout: 10s }',
                'http: false',
            ].join('\n'),
            { verifyThread: thread, metrics },
        );
        // the thread is up before the test's clock starts
        const warm = await sendMail(mw.port(), {
            from: 'alerts@bank.example',
            to: ['bob@example.test'],
            data: message('alerts@bank.example', 'warm up'),
        });
        assert.equal(warm.message?.code, 250, warm.message?.raw);
    });
    after(async () => {
        await mw.stop();
        await thread.close();
        await up.close();
        await dns.close();
    });

    it('is deferred at once while another client is served and its message delivered', async () => {
        const started = performance.now();
        const stuck = sendMail(mw.port(), {
            from: 'spin-5000@bank.example',
            to: ['bob@example.test'],
            data: message('alerts@bank.example', 'stuck'),
            timeoutMs: 30_000,
        }).then((r) => ({ r, ms: performance.now() - started }));
        // the stuck message's verification has started
        await sleep(150);
        const greetingStarted = performance.now();
        const other = await smtpConnect(mw.port(), { timeoutMs: 30_000 });
        await other.greeting();
        const greetingMs = performance.now() - greetingStarted;
        other.close();
        const delivered = await sendMail(mw.port(), {
            from: 'alerts@bank.example',
            to: ['bob@example.test'],
            data: message('alerts@bank.example', 'meanwhile'),
            timeoutMs: 30_000,
        });
        const deliveredMs = performance.now() - started;
        const { r, ms } = await stuck;

        assert.equal(r.message?.code, 451, r.message?.raw);
        assert.match(r.message?.raw ?? '', /4\.4\.3/);
        assert.ok(ms < 2500, `the stuck message was answered after ${Math.round(ms)} ms`);
        assert.equal(delivered.message?.code, 250, delivered.message?.raw);
        assert.ok(deliveredMs < 4000, `the other message was delivered after ${Math.round(deliveredMs)} ms`);
        assert.ok(greetingMs < 1000, `the other client waited ${Math.round(greetingMs)} ms for its greeting`);
        const forwarded = up.transactions.at(-1)!.data!.toString('latin1');
        assert.match(forwarded, /Subject: meanwhile/);
        assert.match(forwarded, /dmarc=pass/);
        assert.match(await metrics.registry.metrics(), /mailwarden_auth_thread_restarts_total\{reason="stalled"\} 1/);
        const decision = mw.logs.find((l) => l.msg === 'decision' && l.from === 'spin-5000@bank.example');
        assert.ok(decision, 'the stuck message has its decision line');
        assert.equal(decision.action, 'tempfail');
    });
});
