/**
 * The real `mailwarden serve` process and a real SIGHUP, with the shipped rules: a message
 * whose author domain publishes DMARC p=reject and fails it is refused `550 5.7.1`; after
 * `softReject: true` is written into the config file and SIGHUP is sent, the same message
 * gets `450 4.7.1`. A setting that cannot change live, edited at the same time, is named in
 * the warning "needs a restart: hostname". SIGTERM then ends the process with exit 0.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startDnsServer, type DnsTestServer } from '../helpers/dns-server.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { startServe, type Serve } from '../helpers/serve.ts';
import { sendMail } from '../helpers/smtp-client.ts';

const SPOOF = [
    'From: The CEO <ceo@bank.example>',
    'To: staff@example.test',
    'Subject: urgent transfer',
    'Message-ID: <1@evil.example>',
    '',
    'Please wire the money today.',
    '',
].join('\r\n');

describe('serve: softReject on SIGHUP', () => {
    let dir: string;
    let dns: DnsTestServer;
    let up: ScriptedUpstream;
    let serve: Serve;
    let file: string;
    const config = (extra: string[]): string =>
        [
            'hostname: mx.example.test',
            'domains: [example.test]',
            'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
            'pregreet: { wait: 0s }',
            `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
            `dns: { servers: ["${dns.address}"], timeout: 1s }`,
            'http: false',
            'shutdownTimeout: 2s',
            ...extra,
            '',
        ].join('\n');

    before(async () => {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mw-serve-'));
        dns = await startDnsServer({ '_dmarc.bank.example': { TXT: ['v=DMARC1; p=reject'] } });
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'] });
        file = path.join(dir, 'mailwarden.yaml');
        fs.writeFileSync(file, config([]));
        serve = startServe(file, dir);
    });
    after(async () => {
        await serve.stop();
        await up.close();
        await dns.close();
        fs.rmSync(dir, { recursive: true, force: true });
    });

    it('answers a DMARC reject with 550, and with 450 once softReject is on, after SIGHUP', async () => {
        await serve.waitFor((l) => l.msg === 'mailwarden started');
        const listening = await serve.waitFor((l) => l.msg === 'listening');
        const port = listening.port as number;
        const send = () => sendMail(port, { from: 'billing@evil.example', to: ['staff@example.test'], data: SPOOF });

        const hard = await send();
        assert.equal(hard.message?.code, 550, JSON.stringify(hard.message));
        assert.match(hard.message.text, /^5\.7\.1 Message refused: it claims to be from bank\.example but failed/);

        const mark = serve.logs.length;
        fs.writeFileSync(file, config(['softReject: true']).replace('mx.example.test', 'mx2.example.test'));
        serve.signal('SIGHUP');
        const reloaded = await serve.waitFor((l) => l.msg === 'reloaded' && l.reload === 'config', { from: mark });
        assert.deepEqual(reloaded.changed, ['softReject']);
        const restart = await serve.waitFor((l) => String(l.msg).startsWith('needs a restart'), { from: mark });
        assert.equal(restart.msg, 'needs a restart: hostname');
        assert.equal(restart.level, 40);

        const soft = await send();
        assert.equal(soft.message?.code, 450, JSON.stringify(soft.message));
        assert.match(soft.message.text, /^4\.7\.1 Message deferred: it claims to be from bank\.example/);
        assert.ok(
            up.transactions.every((t) => !t.completed),
            'no message reached the upstream',
        );

        assert.equal(await serve.stop(), 0);
    });
});
