/**
 * Runs Debian's redis-server for tests: a child process on a free loopback port, without
 * persistence, working in a fresh temporary folder. It must not touch the system's Redis or
 * its data, and stop() ends only the process it started (by PID) and removes its folder.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from './smtp-client.ts';

export interface RedisInstance {
    readonly host: '127.0.0.1';
    readonly port: number;
    /** `redis://127.0.0.1:PORT` */
    readonly url: string;
    /** PID of the redis-server process (for tests that pause it with SIGSTOP/SIGCONT). */
    readonly pid: number;
    /** What redis-server printed so far. */
    output(): string;
    stop(): Promise<void>;
}

function redisCommand(): string {
    return existsSync('/usr/bin/redis-server') ? '/usr/bin/redis-server' : 'redis-server';
}

/** Sends PING on a raw socket; resolves true on `+PONG`. */
async function ping(port: number): Promise<boolean> {
    return new Promise((resolve) => {
        const socket = net.connect({ host: '127.0.0.1', port });
        let data = '';
        const done = (ok: boolean): void => {
            socket.destroy();
            resolve(ok);
        };
        socket.setTimeout(1_000, () => done(false));
        socket.on('error', () => done(false));
        socket.on('connect', () => socket.write('PING\r\n'));
        socket.on('data', (chunk) => {
            data += chunk.toString('latin1');
            if (data.includes('\r\n')) done(data.startsWith('+PONG'));
        });
    });
}

/** Starts redis-server; it answers PING when the promise resolves. */
export async function startRedis(): Promise<RedisInstance> {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'mailwarden-redis-'));
    const port = await freePort();
    const settings: Record<string, string> = {
        port: String(port),
        bind: '127.0.0.1',
        save: '',
        appendonly: 'no',
        daemonize: 'no',
        dir,
        logfile: '',
    };
    const args = Object.entries(settings).flatMap(([key, value]) => [`--${key}`, value]);
    const child: ChildProcess = spawn(redisCommand(), args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
    let running = true;
    let spawnError: Error | null = null;
    // 'exit' may not follow an 'error' (binary missing): either one ends the process's life.
    const exited = new Promise<void>((resolve) => {
        child.once('exit', () => {
            running = false;
            resolve();
        });
        child.once('error', (error) => {
            spawnError = error;
            running = false;
            resolve();
        });
    });

    const signal = (name: NodeJS.Signals): void => {
        if (!running) return;
        try {
            child.kill(name);
        } catch {
            // It exited in the meantime.
        }
    };
    const stop = async (): Promise<void> => {
        if (running) {
            // SIGCONT first, in case a test left it paused.
            signal('SIGCONT');
            signal('SIGTERM');
            const killer = setTimeout(() => signal('SIGKILL'), 5_000);
            await exited;
            clearTimeout(killer);
        }
        await rm(dir, { recursive: true, force: true });
    };

    const deadline = Date.now() + 10_000;
    for (;;) {
        await sleep(50);
        if (spawnError) {
            await stop();
            throw new Error(
                `redis-server could not be started: ${String(spawnError)} (install the redis-server package)`,
            );
        }
        if (!running) {
            await stop();
            throw new Error(`redis-server exited during start:\n${output}`);
        }
        if (await ping(port)) break;
        if (Date.now() > deadline) {
            await stop();
            throw new Error(`redis-server did not answer PING on 127.0.0.1:${port}:\n${output}`);
        }
    }

    return {
        host: '127.0.0.1',
        port,
        url: `redis://127.0.0.1:${port}`,
        pid: child.pid ?? 0,
        output: () => output,
        stop,
    };
}
