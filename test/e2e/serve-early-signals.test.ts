/**
 * Signals that come while `serve` is still starting. The start waits up to 5 s for an upstream
 * that accepts but never greets (its capabilities probe), long enough to signal a process that
 * has loaded but not yet started. A SIGHUP then (a log rotation's `kill -HUP`) used to end the
 * process: it has no handler until serve installs its own after the start. Now the launcher
 * holds SIGHUP and SIGUSR2 from its first moment; after the start a held SIGHUP reloads and a
 * held SIGUSR2 drains with the restart status.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startServe, type Serve } from '../helpers/serve.ts';

/** Signal numbers (signal(7)) whose bit SigCgt in /proc/PID/status shows. */
const SIGNAL_NUMBER = { SIGHUP: 1, SIGUSR2: 12 } as const;

/** True when the process has a handler for the signal (its bit in SigCgt, /proc/PID/status). */
async function catches(pid: number, signal: keyof typeof SIGNAL_NUMBER): Promise<boolean> {
    const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
    const mask = /^SigCgt:\s*([0-9a-f]+)$/m.exec(status)?.[1];
    if (mask === undefined) return false;
    return ((BigInt(`0x${mask}`) >> BigInt(SIGNAL_NUMBER[signal] - 1)) & 1n) === 1n;
}

/** Waits until the process catches the signal; fails when it started listening first or ended. */
async function waitUntilCatching(serve: Serve, signal: keyof typeof SIGNAL_NUMBER): Promise<void> {
    const deadline = Date.now() + 20_000;
    for (;;) {
        assert.equal(serve.child.exitCode, null, `serve ended: ${serve.stderr()}`);
        assert.ok(
            !serve.logs.some((l) => l.msg === 'listening'),
            `serve started listening before it caught ${signal}: a ${signal} while it started would have ended it`,
        );
        if (await catches(serve.child.pid!, signal)) return;
        assert.ok(Date.now() < deadline, `serve never caught ${signal}`);
        await new Promise((r) => setTimeout(r, 10));
    }
}

describe('signals while serve starts', () => {
    let dir: string;
    let silent: net.Server;
    const sockets = new Set<net.Socket>();
    let upstreamPort = 0;

    before(async () => {
        dir = await mkdtemp(join(tmpdir(), 'mw-early-signals-'));
        // accepts and never greets: the start's upstream probe waits its 5 s
        silent = net.createServer((s) => {
            sockets.add(s);
            s.on('close', () => sockets.delete(s));
        });
        await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
        upstreamPort = (silent.address() as net.AddressInfo).port;
    });
    after(async () => {
        for (const s of sockets) s.destroy();
        await new Promise<void>((resolve) => silent.close(() => resolve()));
        await rm(dir, { recursive: true, force: true });
    });

    const start = async (name: string): Promise<Serve> => {
        const file = join(dir, `${name}.yaml`);
        await writeFile(
            file,
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                'pregreet: { wait: 0s }',
                `upstream: { url: "smtp://127.0.0.1:${upstreamPort}", connectTimeout: 1s }`,
                'dns: { servers: ["127.0.0.1:9"], timeout: 1s }',
                'http: false',
                'shutdownTimeout: 1s',
                '',
            ].join('\n'),
        );
        return startServe(file, dir);
    };

    it('reloads once started after a SIGHUP that came during the start, instead of ending', async () => {
        const serve = await start('hup');
        try {
            await waitUntilCatching(serve, 'SIGHUP');
            serve.signal('SIGHUP');
            const listening = await serve.waitFor((l) => l.msg === 'listening', { timeoutMs: 20_000 });
            const held = await serve.waitFor((l) => l.msg === 'signals received during start-up');
            assert.deepEqual(held.signals, ['SIGHUP']);
            await serve.waitFor((l) => l.msg === 'reload requested');
            await serve.waitFor((l) => l.msg === 'reloaded' && l.reload === 'config');
            // still serving: a client gets the greeting
            const greeting = await new Promise<string>((resolve, reject) => {
                const s = net.connect(listening.port as number, '127.0.0.1');
                s.once('data', (d) => {
                    s.destroy();
                    resolve(d.toString('latin1'));
                });
                s.once('error', reject);
            });
            assert.match(greeting, /^220 /);
            assert.equal(serve.child.exitCode, null);
        } finally {
            assert.equal(await serve.stop(), 0);
        }
    });

    it('drains with the restart status once started after a SIGUSR2 that came during the start', async () => {
        const serve = await start('usr2');
        try {
            await waitUntilCatching(serve, 'SIGUSR2');
            serve.signal('SIGUSR2');
            await serve.waitFor((l) => l.msg === 'listening', { timeoutMs: 20_000 });
            assert.equal(await serve.exited, 75, serve.stderr());
            assert.ok(serve.logs.some((l) => l.msg === 'signal received' && l.signal === 'SIGUSR2'));
        } finally {
            await serve.stop();
        }
    });
});
