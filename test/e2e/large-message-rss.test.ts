/**
 * The memory a 50 MB message costs the real `mailwarden serve` process, as the operating system
 * sees it: the peak resident set (VmHWM, reset through /proc/PID/clear_refs once the process
 * is started and idle) may grow by at most 80 MB above the resident set before the message,
 * while the message is received, spooled, verified and forwarded to an SMTP upstream.
 * Linux only (it reads /proc); every server it starts is stopped.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, it } from 'node:test';
import { startDnsServer, type DnsTestServer } from '../helpers/dns-server.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { startServe, type Serve } from '../helpers/serve.ts';
import { smtpConnect } from '../helpers/smtp-client.ts';

const MB = 1024 * 1024;
const LINE = Buffer.from(`${'0123456789abcdefghijklmnopqrstuvwxyz'.repeat(2)}\r\n`); // 74 bytes
const LINES = Math.ceil((50 * MB) / LINE.length);

/** A field of /proc/PID/status in bytes (VmRSS, VmHWM). */
function status(pid: number, field: 'VmRSS' | 'VmHWM'): number {
    const text = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text);
    assert.ok(m, `${field} in /proc/${pid}/status`);
    return Number(m[1]) * 1024;
}

let dir: string;
let dns: DnsTestServer;
let up: ScriptedUpstream;
let serve: Serve;

before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mw-large-rss-'));
    dns = await startDnsServer({});
    up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN', 'SIZE 100000000'] });
    const file = path.join(dir, 'mailwarden.yaml');
    fs.writeFileSync(
        file,
        [
            'hostname: mx.example.test',
            'domains: [example.test]',
            'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx, maxMessageSize: 60MB }]',
            `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
            `dns: { servers: ["${dns.address}"], timeout: 1s }`,
            `spool: { dir: "${path.join(dir, 'spool')}", memoryLimit: 1MB }`,
            'authentication: { timeout: 60s }',
            'http: false',
            '',
        ].join('\n'),
    );
    serve = startServe(file, dir);
});
after(async () => {
    await serve.stop();
    await up.close();
    await dns.close();
    fs.rmSync(dir, { recursive: true, force: true });
});

it(
    'forwards a 50 MB message with the process resident set growing by at most 80 MB',
    { timeout: 180_000 },
    async (t) => {
        await serve.waitFor((l) => l.msg === 'mailwarden started', { timeoutMs: 60_000 });
        const port = (await serve.waitFor((l) => l.msg === 'listening')).port as number;
        const pid = serve.child.pid!;
        // warm: one small message first, so code loaded for the first message is not counted
        const warm = await smtpConnect(port);
        await warm.greeting();
        await warm.cmd('EHLO client.example');
        await warm.cmd('MAIL FROM:<a@example.org>');
        await warm.cmd('RCPT TO:<b@example.test>');
        await warm.cmd('DATA');
        warm.write('From: a@example.org\r\nSubject: small\r\n\r\nhello\r\n.\r\n');
        assert.equal((await warm.reply()).code, 250);
        warm.close();

        const c = await smtpConnect(port, { timeoutMs: 120_000 });
        await c.greeting();
        await c.cmd('EHLO client.example');
        await c.cmd('MAIL FROM:<a@example.org>');
        await c.cmd('RCPT TO:<b@example.test>');
        assert.equal((await c.cmd('DATA')).code, 354);
        const before = status(pid, 'VmRSS');
        fs.writeFileSync(`/proc/${pid}/clear_refs`, '5'); // VmHWM := VmRSS from here on
        c.socket.write('From: a@example.org\r\nSubject: large\r\n\r\n');
        const batch = Buffer.concat(Array.from({ length: 1000 }, () => LINE));
        for (let i = 0; i < LINES; i += 1000) {
            if (!c.socket.write(batch)) await new Promise((r) => c.socket.once('drain', r));
        }
        c.socket.write('.\r\n');
        const reply = await c.reply(120_000);
        const peak = status(pid, 'VmHWM');
        c.close();
        assert.equal(reply.code, 250, reply.raw);
        const at = up.transactions.at(-1);
        assert.ok(
            at?.completed && at.data !== null && at.data.length > 50 * MB,
            'the whole message reached the upstream',
        );
        const grew = (peak - before) / MB;
        t.diagnostic(`resident set before ${(before / MB).toFixed(0)} MB, peak +${grew.toFixed(1)} MB`);
        assert.ok(grew <= 80, `the resident set grew by ${grew.toFixed(1)} MB`);
    },
);
