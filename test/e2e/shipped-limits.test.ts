/**
 * The shipped limits (rules/50-limits.yaml) through the real proxy, in-memory store: what one
 * client can spend is its own. A client on one network that writes a real sender's address
 * (recipients the upstream refuses included) uses up that sender's count on its own network
 * only; the sender's mail from its own network still goes through.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { smtpConnect } from '../helpers/smtp-client.ts';

const SHIPPED = fileURLToPath(new URL('../../rules', import.meta.url));

describe('the shipped limits end to end', () => {
    let up: ScriptedUpstream;
    let mw: TestApp;
    before(async () => {
        up = await startScriptedUpstream({
            ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'],
            onCommand: (line) => (line.startsWith('RCPT TO:<nobody') ? '550 5.1.1 no such user' : undefined),
        });
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                `rules: ${JSON.stringify(SHIPPED)}`,
                'pregreet: { wait: 0s }',
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw?.stop();
        await up?.close();
    });

    it("a client writing another network's sender address spends that sender's count on its own network only", async () => {
        // 300 recipients an hour per sender and network: the forger uses all of them up
        const refused = new Map<number, number>();
        let sent = 0;
        while (sent < 301) {
            const c = await smtpConnect(mw.port(), { localAddress: '127.0.9.9' });
            await c.greeting();
            await c.cmd('EHLO bot.example');
            assert.equal((await c.cmd('MAIL FROM:<billing@partner.example>')).code, 250);
            for (let i = 0; i < 15 && sent < 301; i++, sent++) {
                const reply = await c.cmd(`RCPT TO:<nobody${sent}@example.test>`);
                refused.set(reply.code, (refused.get(reply.code) ?? 0) + 1);
            }
            await c.cmd('QUIT').catch(() => undefined);
            c.close();
        }
        assert.deepEqual(Object.fromEntries(refused), { 550: 300, 450: 1 }, 'the forger meets the limit itself');
        // the real sender, from its own server on another /24
        const c = await smtpConnect(mw.port(), { localAddress: '127.0.50.1' });
        await c.greeting();
        await c.cmd('EHLO mail.partner.example');
        assert.equal((await c.cmd('MAIL FROM:<billing@partner.example>')).code, 250);
        const reply = await c.cmd('RCPT TO:<alice@example.test>');
        assert.equal(reply.code, 250, `${reply.code} ${reply.text}`);
        await c.cmd('QUIT').catch(() => undefined);
        c.close();
    });
});
