/**
 * `mailwarden serve` runs with the V8 flags of bin/mailwarden.js (a young generation of at most
 * 2 × 4 MB, an old generation that grows by 20% between full collections), whatever started it: the launcher replaces itself with the same command and the
 * flags, keeping its process ID, so the process a supervisor started and signals is the one
 * that serves. With `workers: 2` each worker runs with them too. A flag the operator gives
 * (in NODE_OPTIONS or on the node command line) is left as it is. Read from /proc/PID/cmdline (Linux), the command line V8
 * parsed. Every server started is stopped.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startDnsServer, type DnsTestServer } from '../helpers/dns-server.ts';
import { startRedis, type RedisInstance } from '../helpers/redis.ts';
import { startServe } from '../helpers/serve.ts';

/** The flags bin/mailwarden.js gives `serve` (docs/configuration.md, "Node.js memory settings"). */
const FLAGS = ['--max-semi-space-size=4', '--heap-growing-percent=20'];

/** The arguments of a running process, as the kernel holds them. */
function commandLine(pid: number): string[] {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'latin1').split('\0').slice(0, -1);
}

/** The Node.js options before the script (bin/mailwarden.js) on a command line. */
function nodeOptions(args: string[]): string[] {
    const script = args.findIndex((a) => a.endsWith(path.join('bin', 'mailwarden.js')));
    assert.ok(script > 0, args.join(' '));
    return args.slice(1, script);
}

describe('serve and its V8 flags', () => {
    let dir: string;
    let dns: DnsTestServer;
    let redis: RedisInstance;
    const config = (extra: string[]): string => {
        const file = path.join(dir, `mailwarden-${extra.length}.yaml`);
        fs.writeFileSync(
            file,
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                'upstream: { url: "smtp://127.0.0.1:9" }',
                `dns: { servers: ["${dns.address}"], timeout: 1s }`,
                'http: false',
                ...extra,
                '',
            ].join('\n'),
        );
        return file;
    };

    before(async () => {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mw-v8-flags-'));
        dns = await startDnsServer({});
        redis = await startRedis();
    });
    after(async () => {
        await redis.stop();
        await dns.close();
        fs.rmSync(dir, { recursive: true, force: true });
    });

    it('runs one process with the flag, under the process ID it was started with', async () => {
        const serve = startServe(config([]), dir);
        try {
            await serve.waitFor((l) => l.msg === 'mailwarden started', { timeoutMs: 60_000 });
            const args = commandLine(serve.child.pid!);
            assert.deepEqual(nodeOptions(args), FLAGS);
            assert.deepEqual(args.slice(-3), ['serve', '-c', path.join(dir, 'mailwarden-0.yaml')]);
        } finally {
            assert.equal(await serve.stop(), 0);
        }
    });

    it('runs every worker with the flag', async () => {
        const serve = startServe(config([`redis: { url: "${redis.url}" }`, 'workers: 2']), dir);
        try {
            await serve.waitFor((l) => l.msg === 'workers started', { timeoutMs: 90_000 });
            const pids = serve.logs.filter((l) => l.msg === 'worker ready').map((l) => l.pid as number);
            assert.equal(pids.length, 2);
            for (const pid of [serve.child.pid!, ...pids]) {
                assert.deepEqual(nodeOptions(commandLine(pid)), FLAGS, `process ${pid}`);
            }
        } finally {
            assert.equal(await serve.stop(30_000), 0);
        }
    });

    it("keeps the operator's own size from NODE_OPTIONS and adds the other flag", async () => {
        const serve = startServe(config([]), dir, { NODE_OPTIONS: '--max-semi-space-size=16' });
        try {
            await serve.waitFor((l) => l.msg === 'mailwarden started', { timeoutMs: 60_000 });
            const pid = serve.child.pid!;
            assert.deepEqual(nodeOptions(commandLine(pid)), ['--heap-growing-percent=20']);
            const env = fs.readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0');
            assert.ok(env.includes('NODE_OPTIONS=--max-semi-space-size=16'));
        } finally {
            assert.equal(await serve.stop(), 0);
        }
    });

    it("keeps the operator's own growth from the node command line", async () => {
        const serve = startServe(config([]), dir, {}, ['--heap-growing-percent=50']);
        try {
            await serve.waitFor((l) => l.msg === 'mailwarden started', { timeoutMs: 60_000 });
            assert.deepEqual(nodeOptions(commandLine(serve.child.pid!)), [
                '--max-semi-space-size=4',
                '--heap-growing-percent=50',
            ]);
        } finally {
            assert.equal(await serve.stop(), 0);
        }
    });
});
