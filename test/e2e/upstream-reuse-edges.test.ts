/**
 * Edges of upstream connections (with and without reuse): a client that leaves while its
 * upstream connection is being opened leaves no connection (nor a transaction) behind upstream;
 * when idle connections stop answering RSET, one client waits one command timeout, not one per
 * idle connection. Every server started is stopped.
 */
import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startApp, type TestApp } from '../helpers/app.ts';
import {
    startScriptedUpstream,
    type ScriptedUpstream,
    type ScriptedUpstreamOptions,
} from '../helpers/scripted-upstream.ts';
import { sendMail, smtpConnect } from '../helpers/smtp-client.ts';

const MSG = 'From: a@example.org\r\nTo: b@example.test\r\nSubject: hello\r\n\r\nbody\r\n';
const IDLE = 'upstream connection kept idle';

async function until(what: string, test: () => boolean, timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!test()) {
        if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
        await sleep(10);
    }
}

async function gateway(
    t: TestContext,
    xclient: boolean,
    options: ScriptedUpstreamOptions,
): Promise<{ up: ScriptedUpstream; mw: TestApp }> {
    const up = await startScriptedUpstream({
        ehlo: xclient ? ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN', '8BITMIME'] : ['8BITMIME'],
        ...options,
    });
    const mw = await startApp(
        [
            'hostname: mx.example.test',
            'domains: [example.test]',
            'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
            `upstream: { url: "smtp://127.0.0.1:${up.port}", xclient: ${xclient}, timeout: 1s }`,
            'http: false',
        ].join('\n'),
    );
    t.after(async () => {
        await mw.stop();
        await up.close();
    });
    return { up, mw };
}

const send = (mw: TestApp) =>
    sendMail(mw.port(), { from: 'a@example.org', to: ['b@example.test'], data: MSG }).then((r) => r.message?.code);

describe('a client gone while its upstream connection is being opened', () => {
    for (const xclient of [false, true]) {
        it(`sends no MAIL for it and leaves no connection open (xclient: ${xclient})`, async (t) => {
            let slow = false;
            const g = await gateway(t, xclient, {
                // reused connection: RSET slow; new connection: EHLO slow (after the start-up probe)
                onCommand: (line) =>
                    slow && (line === 'RSET' || line.startsWith('EHLO') || line.startsWith('XCLIENT'))
                        ? { delayMs: 300 }
                        : undefined,
            });
            assert.equal(await send(g.mw), 250);
            if (!xclient) await until('kept idle', () => g.mw.logs.some((l) => l.msg === IDLE));
            slow = true;
            const before = g.up.connections.length;
            const c = await smtpConnect(g.mw.port());
            await c.greeting();
            assert.equal((await c.cmd('EHLO client.example')).code, 250);
            c.write('MAIL FROM:<a@example.org>\r\n');
            await sleep(100);
            c.close();
            const goneAt = Date.now();
            await sleep(1500);
            // the connection that was being opened (or taken) for the client that left
            const conn = xclient ? g.up.connections[before] : g.up.connections.find((x) => x.commands.includes('RSET'));
            assert.ok(conn, 'a connection was being opened');
            assert.ok(
                !conn.commands.some((l, i) => i > 0 && l.startsWith('MAIL') && conn.commands.indexOf('RSET') < i) &&
                    !(xclient && conn.commands.some((l) => l.startsWith('MAIL'))),
                `no MAIL after the client left (${Date.now() - goneAt} ms ago; upstream connection closed: ${conn.closed}): ${conn.commands.join(' | ')}`,
            );
            assert.ok(
                conn.closed || g.mw.logs.filter((l) => l.msg === IDLE).length >= 2,
                `closed or back in the pool, not held by a session that ended: ${conn.commands.join(' | ')}`,
            );
        });
    }
});

describe('idle connections whose upstream stopped answering', () => {
    it('cost one client at most one command timeout before a new connection is tried', async (t) => {
        let silent = false;
        const g = await gateway(t, false, {
            onCommand: (line) => (silent && line === 'RSET' ? { silent: true } : undefined),
        });
        // four clients at once leave four idle connections
        const N = 4;
        const codes = await Promise.all(Array.from({ length: N }, () => send(g.mw)));
        assert.deepEqual(codes, Array(N).fill(250));
        await until(`${N} kept idle`, () => g.mw.logs.filter((l) => l.msg === IDLE).length >= N);
        silent = true;
        const rsetsBefore = g.up.commands.filter((l) => l === 'RSET').length;
        const started = Date.now();
        assert.equal(await send(g.mw), 250);
        const waited = Date.now() - started;
        const unanswered = g.up.commands.filter((l) => l === 'RSET').length - rsetsBefore;
        assert.ok(
            unanswered <= 1,
            `one client waited for ${unanswered} unanswered RSETs (${waited} ms with a 1 s timeout) before a new connection`,
        );
    });
});
