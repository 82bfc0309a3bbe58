/**
 * Slow clients (slowloris) at each step of the session, end to end through the real listener:
 * before EHLO, in the middle of a command line, between commands and inside DATA, a client
 * that stops (or trickles one byte at a time before any transaction) is closed within a
 * bounded time with `421 4.4.2`.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { smtpConnect, type SmtpClient } from '../helpers/smtp-client.ts';

/** Writes `text` one byte every `everyMs` until the connection closes. */
function trickle(c: SmtpClient, text: string, everyMs: number): void {
    let i = 0;
    const timer = setInterval(() => {
        if (c.closed) return clearInterval(timer);
        c.write(text[i % text.length]!);
        i++;
    }, everyMs);
    timer.unref();
}

async function closedWith421(c: SmtpClient, boundMs: number, started: number): Promise<number> {
    const reply = await c.reply(boundMs);
    const ms = performance.now() - started;
    assert.equal(reply.code, 421, reply.raw);
    assert.match(reply.text, /^4\.4\.2 /);
    await c.waitClosed(2000);
    return ms;
}

describe('slow clients', () => {
    let up: ScriptedUpstream;
    let mw: TestApp;
    before(async () => {
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'] });
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx, preTransactionTimeout: 1s, socketTimeout: 1s }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw.stop();
        await up.close();
    });

    it('closes a client that says nothing before EHLO', async () => {
        const started = performance.now();
        const c = await smtpConnect(mw.port());
        await c.greeting();
        const ms = await closedWith421(c, 3000, started);
        assert.ok(ms < 2500, `${ms.toFixed(0)} ms`);
    });

    it('closes a client that trickles a command line one byte at a time', async () => {
        const started = performance.now();
        const c = await smtpConnect(mw.port());
        await c.greeting();
        trickle(c, 'EHLO slow.example', 200);
        const ms = await closedWith421(c, 3000, started);
        assert.ok(ms < 2500, `${ms.toFixed(0)} ms`);
    });

    it('closes a client that stops between commands', async () => {
        const started = performance.now();
        const c = await smtpConnect(mw.port());
        await c.greeting();
        assert.equal((await c.cmd('EHLO slow.example')).code, 250);
        const ms = await closedWith421(c, 3000, started);
        assert.ok(ms < 2500, `${ms.toFixed(0)} ms`);
    });

    it('closes a client that stops inside DATA', async () => {
        const c = await smtpConnect(mw.port());
        await c.greeting();
        assert.equal((await c.cmd('EHLO slow.example')).code, 250);
        assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
        assert.equal((await c.cmd('RCPT TO:<b@example.test>')).code, 250);
        assert.equal((await c.cmd('DATA')).code, 354);
        c.write('Subject: slow\r\n\r\nHello');
        const started = performance.now();
        const ms = await closedWith421(c, 4000, started);
        assert.ok(ms < 3500, `${ms.toFixed(0)} ms`);
        await up.idle();
        assert.notEqual(up.transactions.at(-1)?.completed, true, 'nothing half-sent was delivered');
    });
});
