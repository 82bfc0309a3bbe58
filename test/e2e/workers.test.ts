/**
 * `workers: 2`: the real `mailwarden serve` forks two worker processes that share the SMTP port
 * (real Redis, a scripted upstream, the loopback DNS server). Both serve sessions; /metrics on
 * the primary sums both workers (and gives the certificate's expiry the workers serve, not the
 * primary's 0); SIGHUP reaches both (softReject applies on each); a worker
 * killed with SIGKILL is replaced (logged, counted) while a session on the other worker goes on;
 * SIGTERM drains both: a message the upstream accepted while the drain starts gets its 250 on
 * each worker, then every session hears 421 4.3.2 and the primary exits 0.
 */
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startDnsServer, type DnsTestServer } from '../helpers/dns-server.ts';
import { startRedis, type RedisInstance } from '../helpers/redis.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { startServe, type Serve } from '../helpers/serve.ts';
import { freePort, smtpConnect, type SmtpClient } from '../helpers/smtp-client.ts';
import { createTestCertificate, type TestCertificate } from '../helpers/tls-cert.ts';

const START_MS = 90_000;

function message(subject: string, from = 'alice@sender.example'): string {
    return [`From: ${from}`, 'To: staff@example.test', `Subject: ${subject}`, '', 'Hello.', ''].join('\r\n');
}

describe('serve with workers: 2', () => {
    let dir: string;
    let dns: DnsTestServer;
    let up: ScriptedUpstream;
    let redis: RedisInstance;
    let cert: TestCertificate;
    let serve: Serve;
    let file: string;
    let port: number;
    let httpPort: number;
    /** Subjects whose end of data the upstream answers only after this long. */
    const slow = new Map<string, number>();
    const config = (extra: string[]): string =>
        [
            'hostname: mx.example.test',
            'domains: [example.test]',
            'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
            `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
            `dns: { servers: ["${dns.address}"], timeout: 1s }`,
            `redis: { url: "${redis.url}" }`,
            `http: { host: 127.0.0.1, port: ${httpPort} }`,
            `tls: { cert: "${cert.certPath}", key: "${cert.keyPath}" }`,
            'workers: 2',
            'shutdownTimeout: 10s',
            ...extra,
            '',
        ].join('\n');

    const metrics = async (): Promise<string> => {
        const res = await fetch(`http://127.0.0.1:${httpPort}/metrics`);
        assert.equal(res.status, 200);
        return res.text();
    };
    const value = (text: string, series: string): number => {
        const line = text.split('\n').find((l) => l.startsWith(`${series} `));
        return line === undefined ? NaN : Number(line.slice(series.length + 1));
    };
    /** The worker id that logged something for this session id. */
    const workerOf = async (session: string): Promise<number> => {
        const line = await serve.waitFor((l) => l.session === session && typeof l.worker === 'number');
        return line.worker as number;
    };
    /** EHLO, then one message; returns the reply to its end of data. */
    const transaction = async (c: SmtpClient, subject: string, from?: string) => {
        assert.equal((await c.cmd('MAIL FROM:<bob@sender.example>')).code, 250);
        assert.equal((await c.cmd('RCPT TO:<staff@example.test>')).code, 250);
        assert.equal((await c.cmd('DATA')).code, 354);
        c.write(`${message(subject, from)}.\r\n`);
        return c.reply(20_000);
    };
    /** A session (after one accepted message) on each of the two workers; the others are closed. */
    const sessionOnEachWorker = async (tag: string): Promise<Map<number, SmtpClient>> => {
        const found = new Map<number, SmtpClient>();
        for (let i = 0; i < 12 && found.size < 2; i++) {
            const c = await smtpConnect(port);
            await c.greeting();
            await c.cmd('EHLO client.example');
            const r = await transaction(c, `${tag} ${i}`);
            assert.equal(r.code, 250, r.raw);
            const id = /\(id ([^)]+)\)/.exec(r.text)?.[1];
            assert.ok(id, r.text);
            const w = await workerOf(id);
            if (found.has(w)) c.close();
            else found.set(w, c);
        }
        assert.equal(found.size, 2, 'connections reached both workers');
        return found;
    };

    before(async () => {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mw-workers-'));
        dns = await startDnsServer({
            'sender.example': { TXT: ['v=spf1 ip4:127.0.0.0/8 -all'] },
            '_dmarc.bank.example': { TXT: ['v=DMARC1; p=reject'] },
        });
        redis = await startRedis();
        cert = await createTestCertificate();
        up = await startScriptedUpstream({
            ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'],
            onData: (tx) => {
                const subject = /^Subject: (.*)$/m.exec(tx.data?.toString('latin1') ?? '')?.[1]?.trim() ?? '';
                const delayMs = slow.get(subject);
                return delayMs === undefined ? undefined : { reply: '250 2.0.0 Ok: queued as SLOW', delayMs };
            },
        });
        httpPort = await freePort();
        file = path.join(dir, 'mailwarden.yaml');
        fs.writeFileSync(file, config([]));
        serve = startServe(file, dir);
        await serve.waitFor((l) => l.msg === 'workers started', { timeoutMs: START_MS });
        port = (await serve.waitFor((l) => l.msg === 'listening')).port as number;
    });
    after(async () => {
        await serve.stop(30_000);
        await up.close();
        await redis.stop();
        await dns.close();
        cert.cleanup();
        fs.rmSync(dir, { recursive: true, force: true });
    });

    it('serves on both workers, and /metrics sums them', async () => {
        const workers = serve.logs.filter((l) => l.msg === 'worker ready').map((l) => l.worker);
        assert.deepEqual(workers.sort(), [1, 2]);
        const ready = await fetch(`http://127.0.0.1:${httpPort}/readyz`);
        assert.equal(ready.status, 200, await ready.text());
        const sessions = await sessionOnEachWorker('both');
        for (const c of sessions.values()) {
            await c.cmd('QUIT');
            c.close();
        }
        const accepted = serve.logs.filter((l) => l.msg === 'decision' && l.action === 'accept').length;
        assert.ok(accepted >= 2);
        const text = await metrics();
        assert.equal(value(text, 'mailwarden_workers'), 2);
        assert.equal(value(text, 'mailwarden_build_info{version="0.1.0"}'), 1);
        assert.equal(value(text, 'mailwarden_messages_total{listener="mx",action="accept"}'), accepted);
        assert.equal(text.match(/^# HELP mailwarden_messages_total /gm)?.length, 1, 'one family, not one per worker');
        // the certificate the workers serve; the primary serves none and does not count as 0
        const notAfter = Date.parse(new X509Certificate(cert.cert).validTo) / 1000;
        assert.equal(value(text, 'mailwarden_tls_certificate_expiry_timestamp_seconds'), notAfter);
    });

    it('passes SIGHUP to both workers: softReject applies on each', async () => {
        const spoof = async (c: SmtpClient) => transaction(c, 'transfer', 'The CEO <ceo@bank.example>');
        const sessions = await sessionOnEachWorker('before-hup');
        for (const c of sessions.values()) assert.equal((await spoof(c)).code, 550);
        const mark = serve.logs.length;
        fs.writeFileSync(file, config(['softReject: true']));
        serve.signal('SIGHUP');
        for (const w of sessions.keys()) {
            const line = await serve.waitFor((l) => l.msg === 'reloaded' && l.reload === 'config' && l.worker === w, {
                from: mark,
            });
            assert.deepEqual(line.changed, ['softReject']);
        }
        for (const c of sessions.values()) {
            const r = await spoof(c);
            assert.equal(r.code, 450, r.raw);
            c.close();
        }
    });

    it('replaces a killed worker while a session on the other worker goes on', async () => {
        const sessions = await sessionOnEachWorker('kill');
        const [victim, survivor] = [...sessions.keys()] as [number, number];
        const pid = serve.logs.find((l) => l.msg === 'worker ready' && l.worker === victim)!.pid as number;
        const accepted = 'mailwarden_messages_total{listener="mx",action="accept"}';
        const before = value(await metrics(), accepted);
        const mark = serve.logs.length;
        process.kill(pid, 'SIGKILL');
        const ended = await serve.waitFor((l) => String(l.msg).startsWith('worker ended unexpectedly'), {
            from: mark,
        });
        assert.equal(ended.reason, 'signal');
        assert.equal(ended.level, 50);
        // the victim's session is gone; the survivor's goes on with another message
        await sessions.get(victim)!.waitClosed(10_000);
        const c = sessions.get(survivor)!;
        const r = await transaction(c, 'after the kill');
        assert.equal(r.code, 250, r.raw);
        assert.equal((await c.cmd('QUIT')).code, 221);
        c.close();
        // a SIGHUP while the replacement starts reaches it once it is ready (it was never sent)
        await serve.waitFor((l) => l.msg === 'starting a worker in place of the one that ended', {
            from: mark,
            timeoutMs: START_MS,
        });
        serve.signal('SIGHUP');
        const replaced = await serve.waitFor((l) => l.msg === 'worker ready' && l.worker === 3, {
            from: mark,
            timeoutMs: START_MS,
        });
        assert.notEqual(replaced.pid, pid);
        await serve.waitFor((l) => l.msg === 'reloaded' && l.reload === 'config' && l.worker === 3, { from: mark });
        const text = await metrics();
        // the ended worker's counts stay in the sums: a counter never goes back
        assert.ok(value(text, accepted) >= before + 1, `${accepted}: ${value(text, accepted)} after ${before}`);
        assert.equal(value(text, 'mailwarden_worker_restarts_total{reason="signal"}'), 1);
        assert.equal(value(text, 'mailwarden_workers'), 2);
        const ready = await fetch(`http://127.0.0.1:${httpPort}/readyz`);
        assert.equal(ready.status, 200, await ready.text());
    });

    it('drains both workers on SIGTERM: each message in flight gets its 250, then 421, and exit 0', async () => {
        const sessions = await sessionOnEachWorker('drain');
        const clients = [...sessions.values()];
        const replies = clients.map((c, i) => {
            slow.set(`in flight ${i}`, 1500);
            return transaction(c, `in flight ${i}`);
        });
        // both messages are at the upstream, waiting for its answer
        const arrived = () =>
            up.transactions.filter((t) => t.completed && /in flight/.test(t.data?.toString() ?? '')).length;
        for (let i = 0; i < 100 && arrived() < 2; i++) await sleep(50);
        assert.equal(arrived(), 2, 'both messages reached the upstream before SIGTERM');
        const mark = serve.logs.length;
        serve.signal('SIGTERM');
        await serve.waitFor((l) => l.msg === 'signal received; draining every worker', { from: mark });
        for (const r of await Promise.all(replies)) {
            assert.equal(r.code, 250, r.raw);
            assert.match(r.text, /as SLOW/);
        }
        for (const c of clients) {
            const bye = await c.reply(15_000);
            assert.equal(bye.code, 421, bye.raw);
            assert.match(bye.text, /^4\.3\.2 /);
            c.close();
        }
        assert.equal(await serve.exited, 0);
        const stopped = serve.logs.slice(mark).filter((l) => l.msg === 'worker stopped');
        assert.equal(stopped.length, 2);
    });
});

describe('serve with workers: 2 and a rule file that does not load', () => {
    it('prints the FILE:LINE:COL line once and exits 1, leaving no worker behind', async () => {
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mw-workers-bad-'));
        try {
            fs.mkdirSync(path.join(dir, 'rules'));
            fs.writeFileSync(
                path.join(dir, 'rules', '10-bad.yaml'),
                "rules: [ { id: x, when: 'nonsense', action: reject } ]\n",
            );
            const file = path.join(dir, 'mailwarden.yaml');
            fs.writeFileSync(
                file,
                [
                    'hostname: mx.example.test',
                    'domains: [example.test]',
                    'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                    `upstream: { url: "maildir:${path.join(dir, 'maildir')}" }`,
                    'redis: { url: "redis://127.0.0.1:9", connectTimeout: 50ms }',
                    'rules: rules',
                    'workers: 2',
                    'http: false',
                    '',
                ].join('\n'),
            );
            const serve = startServe(file, dir);
            const killer = setTimeout(() => serve.signal('SIGKILL'), START_MS);
            const code = await serve.exited;
            clearTimeout(killer);
            assert.equal(code, 1, serve.stderr());
            const lines = serve
                .stderr()
                .split('\n')
                .filter((l) => l.includes('10-bad.yaml:1:'));
            assert.equal(lines.length, 1, serve.stderr());
            assert.ok(serve.logs.some((l) => l.msg === 'start failed; stopping the workers'));
        } finally {
            fs.rmSync(dir, { recursive: true, force: true });
        }
    });
});
