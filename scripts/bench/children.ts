/**
 * The processes the benchmark starts: spawns each one, waits until it is ready (an IPC
 * message or an HTTP answer), and stops every one of them by its PID — SIGTERM, then SIGKILL
 * after a grace period — in the reverse order of starting, also when the bench fails or is
 * interrupted.
 *
 * It must only ever signal processes it spawned itself, never by name or process group.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';

export interface Started {
    readonly name: string;
    readonly pid: number;
    readonly child: ChildProcess | null;
    /** Resolves once the process has exited. */
    readonly exited: Promise<void>;
    /** How it ended, once it did: the exit code, or the signal's name. */
    exitStatus(): string | null;
    stop(graceMs?: number): Promise<void>;
}

/** Everything started, in order; stopAll() ends them newest first. */
export class Children {
    private readonly started: Started[] = [];

    /** Spawns a command and tracks it. The spawn error (missing binary) is thrown. */
    async spawn(name: string, command: string, args: readonly string[], options: SpawnOptions = {}): Promise<Started> {
        const child = spawn(command, args, options);
        await new Promise<void>((resolve, reject) => {
            child.once('spawn', () => resolve());
            child.once('error', reject);
        });
        let status: string | null = null;
        const exited = new Promise<void>((resolve) => {
            if (child.exitCode !== null || child.signalCode !== null) {
                status = String(child.exitCode ?? child.signalCode);
                return resolve();
            }
            child.once('exit', (code, signal) => {
                status = code !== null ? `exit ${code}` : `signal ${signal}`;
                resolve();
            });
        });
        const entry = this.track(name, child.pid ?? 0, child, exited, () => status);
        return entry;
    }

    /** Tracks a process started elsewhere (for example through a helper) with its own stop. */
    adopt(name: string, pid: number, stop: () => Promise<void>): Started {
        let done = false;
        const entry: Started = {
            name,
            pid,
            child: null,
            exited: Promise.resolve(),
            exitStatus: () => (done ? 'stopped' : null),
            stop: async () => {
                if (done) return;
                done = true;
                await stop();
            },
        };
        this.started.push(entry);
        return entry;
    }

    private track(
        name: string,
        pid: number,
        child: ChildProcess,
        exited: Promise<void>,
        status: () => string | null,
    ): Started {
        const entry: Started = {
            name,
            pid,
            child,
            exited,
            exitStatus: status,
            stop: async (graceMs = 10_000) => {
                if (status() !== null) return;
                try {
                    process.kill(pid, 'SIGTERM');
                } catch {
                    return; // already gone
                }
                const timer = setTimeout(() => {
                    try {
                        if (status() === null) process.kill(pid, 'SIGKILL');
                    } catch {
                        // gone in the meantime
                    }
                }, graceMs);
                await exited;
                clearTimeout(timer);
            },
        };
        this.started.push(entry);
        return entry;
    }

    /** Every process tracked and not yet stopped, oldest first. */
    list(): readonly Started[] {
        return [...this.started];
    }

    /** Stops every tracked process, newest first; never throws. */
    async stopAll(graceMs = 10_000): Promise<void> {
        while (this.started.length > 0) {
            const entry = this.started.pop()!;
            await entry.stop(graceMs).catch(() => undefined);
        }
    }

    /** Sends SIGKILL to every tracked process not yet stopped (the last resort when time is up). */
    killAll(): void {
        for (const entry of this.started) {
            if (entry.exitStatus() === null) {
                try {
                    process.kill(entry.pid, 'SIGKILL');
                } catch {
                    // gone
                }
            }
        }
    }
}

/** Waits for an IPC message `{ type }` from a child; rejects when it exits first or after `timeoutMs`. */
export function waitForMessage<T extends { type: string }>(
    started: Started,
    type: string,
    timeoutMs: number,
): Promise<T> {
    const child = started.child;
    if (!child) return Promise.reject(new Error(`${started.name} has no IPC channel`));
    return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
            cleanup();
            reject(new Error(`${started.name} sent no "${type}" within ${timeoutMs} ms`));
        }, timeoutMs);
        const onMessage = (msg: unknown): void => {
            if (typeof msg === 'object' && msg !== null && (msg as { type?: unknown }).type === type) {
                cleanup();
                resolve(msg as T);
            }
        };
        const onExit = (): void => {
            cleanup();
            reject(new Error(`${started.name} exited (${started.exitStatus() ?? '?'}) before "${type}"`));
        };
        const cleanup = (): void => {
            clearTimeout(timer);
            child.off('message', onMessage);
            child.off('exit', onExit);
        };
        child.on('message', onMessage);
        child.once('exit', onExit);
    });
}

/** Polls `url` until it answers 200; throws after `timeoutMs` or when `started` exits. */
export async function waitForHttp(url: string, started: Started, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last = '';
    while (Date.now() < deadline) {
        if (started.exitStatus() !== null) throw new Error(`${started.name} exited (${started.exitStatus()})`);
        try {
            const res = await fetch(url, { signal: AbortSignal.timeout(2_000) });
            if (res.status === 200) return;
            last = `HTTP ${res.status}: ${(await res.text()).slice(0, 200)}`;
        } catch (e) {
            last = e instanceof Error ? e.message : String(e);
        }
        await sleep(200);
    }
    throw new Error(`${url} did not answer 200 within ${timeoutMs} ms (${last})`);
}
