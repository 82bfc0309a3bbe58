/**
 * `workers: 2`: the real `mailwarden serve` forks two worker processes that share the SMTP port
 * (real Redis, a scripted upstream, the loopback DNS server). Both serve sessions; /metrics on
 * the primary sums both workers (and gives the certificate's expiry the workers serve, not the
 * primary's 0, the primary's start time, not a worker's, and the slowest process's event-loop
 * lag, not their average); SIGHUP reaches both (softReject applies on each); a worker
 * killed with SIGKILL is replaced (logged, counted) while a session on the other worker goes on;
 * SIGTERM drains both: a message the upstream accepted while the drain starts gets its 250 on
 * each worker, then every session hears 421 4.3.2 and the primary exits 0.
 * A primary killed with SIGKILL leaves its workers draining as on SIGTERM: the message whose
 * answer the upstream holds gets its 250 (or, past the drain's bound, a logged duplicateRisk),
 * the port is free at once for a new start, and the workers exit by themselves.
 * Workers that end while the config file on disk does not validate: the primary logs the
 * file's FILE:LINE:COL lines and sets mailwarden_config_invalid (mailwarden_workers says none
 * serves), and the first worker started after the file is fixed serves again (and sets it back
 * to 0, even when the fix came after the primary read the file). A worker killed
 * while a SIGTERM drains is logged at error and counted, and the primary exits 1, while the other
 * worker's message still gets its 250; a SIGINT to the whole process group (Ctrl-C) that ends a
 * worker still starting loses nothing: the primary exits 0.
 */
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startDnsServer, type DnsTestServer } from '../helpers/dns-server.ts';
import { startRedis, type RedisInstance } from '../helpers/redis.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { startServe, type Serve } from '../helpers/serve.ts';
import { freePort, smtpConnect, type SmtpClient, type SmtpReply } from '../helpers/smtp-client.ts';
import { createTestCertificate, type TestCertificate } from '../helpers/tls-cert.ts';
import { until } from '../helpers/until.ts';

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
    /** process_start_time_seconds as /metrics gave it first. */
    let primaryStart = NaN;
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
        // the start time of the process systemd started (the primary), once, for the restart alert
        primaryStart = value(text, 'process_start_time_seconds');
        assert.ok(primaryStart > 0, `process_start_time_seconds: ${primaryStart}`);
        assert.equal(text.match(/^process_start_time_seconds /gm)?.length, 1);
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

    it('gives the event-loop lag of the slowest process, not the average that hides one stuck worker', async () => {
        const pid = serve.logs.find((l) => l.msg === 'worker ready' && l.worker === 1)!.pid as number;
        // every process's lag histogram starts again from this scrape
        await metrics();
        // worker 1's event loop does not turn for 1.5 s, as in a long synchronous task
        process.kill(pid, 'SIGSTOP');
        try {
            await sleep(1_500);
        } finally {
            process.kill(pid, 'SIGCONT');
        }
        const text = await metrics();
        // the average over the primary and two workers would be about a third of it
        for (const series of ['nodejs_eventloop_lag_p99_seconds', 'nodejs_eventloop_lag_max_seconds']) {
            assert.ok(value(text, series) >= 1, `${series}: ${value(text, series)}`);
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
        // a worker replaced is not a restart of mailwarden: the start time stays the primary's
        assert.equal(value(text, 'process_start_time_seconds'), primaryStart);
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

describe('serve with workers: 2 whose primary is killed', () => {
    let dir: string;
    let dns: DnsTestServer;
    let up: ScriptedUpstream;
    let redis: RedisInstance;
    let configs = 0;
    /** Well past the workers' own bound in these configs (shutdownTimeout 1 s + dataTimeout 2 s + 5 s). */
    const GONE_MS = 20_000;

    before(async () => {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mw-workers-orphan-'));
        dns = await startDnsServer({ 'sender.example': { TXT: ['v=spf1 ip4:127.0.0.0/8 -all'] } });
        redis = await startRedis();
        up = await startScriptedUpstream({
            ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'],
            onData: (tx) => {
                const subject = /^Subject: (.*)$/m.exec(tx.data?.toString('latin1') ?? '')?.[1]?.trim();
                if (subject === 'held') return { reply: '250 2.0.0 Ok: queued as HELD', delayMs: 1500 };
                if (subject === 'unanswered') return { silent: true };
                return undefined;
            },
        });
    });
    after(async () => {
        await up.close();
        await redis.stop();
        await dns.close();
        fs.rmSync(dir, { recursive: true, force: true });
    });

    /** Starts serve with two workers; kills whatever is left of it once the test has ended. */
    const start = async (t: TestContext) => {
        const file = path.join(dir, `mailwarden-${++configs}.yaml`);
        fs.writeFileSync(
            file,
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}", dataTimeout: 2s }`,
                `dns: { servers: ["${dns.address}"], timeout: 1s }`,
                `redis: { url: "${redis.url}" }`,
                'http: false',
                'workers: 2',
                'shutdownTimeout: 1s',
                '',
            ].join('\n'),
        );
        const serve = startServe(file, dir);
        // every process that writes to its stdout (the primary and the workers it forked) has ended
        let gone = false;
        serve.child.once('close', () => (gone = true));
        await serve.waitFor((l) => l.msg === 'workers started', { timeoutMs: START_MS });
        const port = (await serve.waitFor((l) => l.msg === 'listening')).port as number;
        const pids = serve.logs.filter((l) => l.msg === 'worker ready').map((l) => l.pid as number);
        assert.equal(pids.length, 2);
        t.after(() => {
            serve.signal('SIGKILL');
            if (gone) return;
            for (const pid of pids) {
                try {
                    process.kill(pid, 'SIGKILL');
                } catch {
                    // already ended
                }
            }
        });
        return { serve, port, pids, workersGone: () => gone };
    };
    /**
     * One message whose end of data the upstream has (and holds its answer to), then the primary
     * killed; returns the client and the pending reply to its end of data.
     */
    const sendThenKillPrimary = async (s: Awaited<ReturnType<typeof start>>, subject: string) => {
        const c = await smtpConnect(s.port);
        await c.greeting();
        await c.cmd('EHLO client.example');
        assert.equal((await c.cmd('MAIL FROM:<bob@sender.example>')).code, 250);
        assert.equal((await c.cmd('RCPT TO:<staff@example.test>')).code, 250);
        assert.equal((await c.cmd('DATA')).code, 354);
        c.write(`${message(subject)}.\r\n`);
        const reply = c.reply(GONE_MS);
        const arrived = (): boolean =>
            up.transactions.some((x) => x.completed && x.data?.toString('latin1').includes(`Subject: ${subject}\r\n`));
        await until('the upstream has the whole message', arrived, 10_000);
        const mark = s.serve.logs.length;
        process.kill(s.serve.child.pid!, 'SIGKILL');
        assert.equal(await s.serve.exited, null);
        return { c, reply, mark };
    };
    /** Both workers said the primary was gone, drained and logged `stopped`, then exited by themselves. */
    const workersDrainedAndGone = async (
        s: Awaited<ReturnType<typeof start>>,
        from: number,
    ): Promise<Record<string, unknown>[]> => {
        await until('both workers have exited', s.workersGone, GONE_MS);
        const lines = s.serve.logs.slice(from);
        for (const pid of s.pids) {
            const gone = lines.find((l) => l.pid === pid && String(l.msg).startsWith('primary gone'));
            assert.ok(gone, `worker ${pid} logged that the primary was gone`);
            assert.equal(gone.level, 40);
            assert.ok(
                lines.some((l) => l.pid === pid && l.msg === 'stopped'),
                `worker ${pid} drained`,
            );
        }
        return lines;
    };

    it('drains: the message whose answer the upstream holds gets its 250 and 421, then the workers exit', async (t) => {
        const s = await start(t);
        const { c, reply, mark } = await sendThenKillPrimary(s, 'held');
        // the port is free at once for mailwarden started again: no worker holds a listening socket
        const probe = net.createServer();
        await new Promise<void>((resolve, reject) => {
            probe.once('error', reject);
            probe.listen(s.port, '127.0.0.1', () => resolve());
        });
        await new Promise<void>((resolve) => probe.close(() => resolve()));
        const r = await reply;
        assert.equal(r.code, 250, r.raw);
        assert.match(r.text, /as HELD/);
        const bye = await c.reply(GONE_MS);
        assert.equal(bye.code, 421, bye.raw);
        assert.match(bye.text, /^4\.3\.2 /);
        c.close();
        const lines = await workersDrainedAndGone(s, mark);
        const decision = lines.find((l) => l.msg === 'decision');
        assert.equal(decision?.action, 'accept');
        assert.match(String(decision.upstream), /as HELD/);
        assert.ok(!lines.some((l) => l.duplicateRisk === true));
        // the upstream saw its session end as usual
        const held = up.transactions.find((x) => x.data?.toString('latin1').includes('Subject: held\r\n'));
        assert.equal(up.connections.find((x) => x.id === held?.connection)?.commands.at(-1), 'QUIT');
    });

    it('logs an end of data the upstream never answers as a possible duplicate, then the workers exit', async (t) => {
        const s = await start(t);
        const { c, reply, mark } = await sendThenKillPrimary(s, 'unanswered');
        const r = await reply;
        assert.equal(r.code, 451, r.raw);
        c.close();
        const lines = await workersDrainedAndGone(s, mark);
        const decision = lines.find((l) => l.msg === 'decision');
        assert.equal(decision?.duplicateRisk, true);
        const warning = lines.find((l) => l.msg !== 'decision' && l.duplicateRisk === true);
        // the upstream's own wait (dataTimeout from the end of data) ends within the drain's bound
        assert.equal(warning?.reason, 'no-upstream-answer');
    });
});

describe('serve with workers: 2 whose workers end', () => {
    let dir: string;
    let dns: DnsTestServer;
    let up: ScriptedUpstream;
    let redis: RedisInstance;
    let configs = 0;
    /** The upstream answers an end of data of subject `held` once this is called. */
    let release: () => void = () => undefined;
    let held = Promise.resolve();

    before(async () => {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mw-workers-end-'));
        dns = await startDnsServer({ 'sender.example': { TXT: ['v=spf1 ip4:127.0.0.0/8 -all'] } });
        redis = await startRedis();
        up = await startScriptedUpstream({
            ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'],
            onData: async (tx) => {
                if (!tx.data?.toString('latin1').includes('Subject: held\r\n')) return undefined;
                await held;
                return '250 2.0.0 Ok: queued as HELD';
            },
        });
    });
    after(async () => {
        await up.close();
        await redis.stop();
        await dns.close();
        fs.rmSync(dir, { recursive: true, force: true });
    });

    /**
     * Starts serve with two workers and the HTTP endpoint (in a process group of its own with
     * `ownGroup`); stops it once the test has ended.
     */
    const start = async (t: TestContext, ownGroup = false) => {
        const file = path.join(dir, `mailwarden-${++configs}.yaml`);
        const httpPort = await freePort();
        // a port of its own: one 0 would become another port once every worker had ended
        const port = await freePort();
        const lines = [
            'hostname: mx.example.test',
            'domains: [example.test]',
            `listeners: [{ name: mx, host: 127.0.0.1, port: ${port}, mode: mx }]`,
            // a drain waits this long for an answer the upstream holds
            `upstream: { url: "smtp://127.0.0.1:${up.port}", dataTimeout: 30s }`,
            `dns: { servers: ["${dns.address}"], timeout: 1s }`,
            `redis: { url: "${redis.url}" }`,
            `http: { host: 127.0.0.1, port: ${httpPort} }`,
            'workers: 2',
            'shutdownTimeout: 1s',
            '',
        ];
        fs.writeFileSync(file, lines.join('\n'));
        const serve = startServe(file, dir, {}, [], undefined, ownGroup);
        t.after(() => {
            release();
            return serve.stop(60_000);
        });
        await serve.waitFor((l) => l.msg === 'workers started', { timeoutMs: START_MS });
        const pids = new Map(
            serve.logs.filter((l) => l.msg === 'worker ready').map((l) => [l.worker as number, l.pid as number]),
        );
        assert.equal(pids.size, 2);
        const metrics = async (): Promise<string> => {
            const res = await fetch(`http://127.0.0.1:${httpPort}/metrics`);
            assert.equal(res.status, 200);
            return res.text();
        };
        const value = async (series: string): Promise<number> => {
            const line = (await metrics()).split('\n').find((l) => l.startsWith(`${series} `));
            return line === undefined ? NaN : Number(line.slice(series.length + 1));
        };
        return { serve, file, lines, port, pids, value };
    };

    it('says why when a worker to replace would read an invalid config file, and sets mailwarden_config_invalid', async (t) => {
        const s = await start(t);
        const good = s.lines.join('\n');
        // an edit never reloaded; then the OOM killer ends both workers
        fs.writeFileSync(s.file, `${good}bogusKey: 1\n`);
        const mark = s.serve.logs.length;
        for (const pid of s.pids.values()) process.kill(pid, 'SIGKILL');
        const invalid = await s.serve.waitFor((l) => String(l.msg).startsWith('the config file on disk is invalid'), {
            from: mark,
            timeoutMs: 20_000,
        });
        assert.equal(invalid.level, 50);
        assert.equal(invalid.role, 'primary');
        // the line `mailwarden check` prints for it, as a failed reload logs it
        assert.deepEqual(invalid.issues, [`${s.file}:${s.lines.length}:1: unknown key "bogusKey"`]);
        assert.equal(invalid.ready, 0);
        assert.equal(await s.value('mailwarden_config_invalid'), 1);
        assert.equal(await s.value('mailwarden_workers'), 0);
        // once the file is fixed, the next worker started takes it: no restart needed
        fs.writeFileSync(s.file, good);
        await until(
            'two workers are ready again',
            () => s.serve.logs.slice(mark).filter((l) => l.msg === 'worker ready').length === 2,
            60_000,
            100,
        );
        assert.equal(await s.value('mailwarden_workers'), 2);
        assert.equal(await s.value('mailwarden_config_invalid'), 0);
        const c = await smtpConnect(s.port);
        assert.equal((await c.greeting()).code, 220);
        c.close();
    });

    it('sets mailwarden_config_invalid back to 0 when the file is fixed before the worker started in place reads it', async (t) => {
        const s = await start(t);
        const good = s.lines.join('\n');
        fs.writeFileSync(s.file, `${good}bogusKey: 1\n`);
        const mark = s.serve.logs.length;
        process.kill(s.pids.get(1)!, 'SIGKILL');
        const invalid = await s.serve.waitFor((l) => String(l.msg).startsWith('the config file on disk is invalid'), {
            from: mark,
            timeoutMs: 20_000,
        });
        assert.match(String(invalid.msg), /will refuse it if it is still invalid when it starts/);
        // the operator's fix lands while the new worker is still starting: it reads the fixed file
        fs.writeFileSync(s.file, good);
        await s.serve.waitFor((l) => l.msg === 'worker ready', { from: mark, timeoutMs: START_MS });
        const ended = s.serve.logs.slice(mark).filter((l) => String(l.msg).startsWith('worker ended unexpectedly'));
        assert.equal(ended.length, 1, 'the worker started after the line took the file');
        assert.equal(await s.value('mailwarden_workers'), 2);
        // no reload was needed to clear it: MailwardenConfigReloadFailed stops firing
        assert.equal(await s.value('mailwarden_config_invalid'), 0);
    });

    it('takes Ctrl-C (SIGINT to the whole process group) while a worker starts as asked: nothing lost, exit 0', async (t) => {
        const s = await start(t, true);
        const mark = s.serve.logs.length;
        process.kill(s.pids.get(1)!, 'SIGKILL');
        const starting = await s.serve.waitFor((l) => l.msg === 'starting a worker in place of the one that ended', {
            from: mark,
            timeoutMs: 20_000,
        });
        // the terminal signals every process of the foreground group: the primary, the worker that
        // serves (it drains) and the one still starting, which holds no handler yet and ends
        process.kill(-s.serve.child.pid!, 'SIGINT');
        assert.equal(await s.serve.exited, 0);
        const lines = s.serve.logs.slice(mark);
        const replacement = lines.find((l) => l.worker === starting.worker && l.msg === 'worker stopped');
        assert.equal(replacement?.signal, 'SIGINT', 'the replacement ended by the SIGINT before it was ready');
        assert.equal(replacement.level, 30);
        // at error only the kill that made the replacement needed: no session said lost
        const errors = lines.filter((l) => (l.level as number) >= 50).map((l) => String(l.msg).split(';')[0]);
        assert.deepEqual(errors, ['worker ended unexpectedly']);
    });

    it('counts a worker killed during the drain as an error: its sessions lost, logged and counted, and exit 1', async (t) => {
        const s = await start(t);
        held = new Promise((resolve) => (release = resolve));
        /** A session on each worker whose end of data the upstream holds the answer to. */
        const sessions = new Map<number, { c: SmtpClient; reply: Promise<SmtpReply | Error> }>();
        const spare: SmtpClient[] = [];
        const send = async (c: SmtpClient, subject: string): Promise<void> => {
            assert.equal((await c.cmd('MAIL FROM:<bob@sender.example>')).code, 250);
            assert.equal((await c.cmd('RCPT TO:<staff@example.test>')).code, 250);
            assert.equal((await c.cmd('DATA')).code, 354);
            c.write(`${message(subject)}.\r\n`);
        };
        for (let i = 0; i < 12 && sessions.size < 2; i++) {
            const c = await smtpConnect(s.port);
            await c.greeting();
            await c.cmd('EHLO client.example');
            // the worker that serves it: the one that logged the session its first message names
            await send(c, `first ${i}`);
            const first = await c.reply(20_000);
            assert.equal(first.code, 250, first.raw);
            const id = /\(id ([^)]+)\)/.exec(first.text)?.[1];
            const line = await s.serve.waitFor((l) => l.session === id && typeof l.worker === 'number');
            const worker = line.worker as number;
            if (sessions.has(worker)) {
                spare.push(c);
                continue;
            }
            await send(c, 'held');
            // the victim's connection closes without one
            const reply = c
                .reply(60_000)
                .catch((err: unknown) => (err instanceof Error ? err : new Error(String(err))));
            sessions.set(worker, { c, reply });
        }
        for (const c of spare) c.close();
        assert.equal(sessions.size, 2, 'connections reached both workers');
        const arrived = (): boolean =>
            up.transactions.filter((x) => x.completed && x.data?.toString('latin1').includes('Subject: held\r\n'))
                .length === 2;
        await until('the upstream has both messages', arrived, 10_000);
        const mark = s.serve.logs.length;
        s.serve.signal('SIGTERM');
        await s.serve.waitFor((l) => l.msg === 'signal received; draining every worker', { from: mark });
        // the OOM killer, say, ends one worker while it drains
        const [victim, survivor] = [...sessions.keys()] as [number, number];
        process.kill(s.pids.get(victim)!, 'SIGKILL');
        const lost = await s.serve.waitFor((l) => String(l.msg).startsWith('worker ended during the drain'), {
            from: mark,
        });
        assert.equal(lost.level, 50);
        assert.equal(lost.worker, victim);
        assert.equal(lost.signal, 'SIGKILL');
        assert.equal(lost.reason, 'signal');
        // the other worker still drains, its message held: the endpoint answers meanwhile
        assert.equal(await s.value('mailwarden_worker_restarts_total{reason="signal"}'), 1);
        assert.ok((await sessions.get(victim)!.reply) instanceof Error, "the victim's client got no reply");
        release();
        const r = await sessions.get(survivor)!.reply;
        if (r instanceof Error) throw r;
        assert.equal(r.code, 250, r.raw);
        assert.equal(await s.serve.exited, 1);
        const stopped = s.serve.logs.slice(mark).filter((l) => l.msg === 'worker stopped');
        assert.deepEqual(
            stopped.map((l) => l.worker),
            [survivor],
        );
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
