/**
 * Runs a test peer (redis-server, dovecot, prometheus) as a child process and tracks its life:
 * collected output, whether it still runs, the spawn error when the binary is missing, and a
 * stop that sends SIGTERM, then SIGKILL after a grace period. Used by the peer helpers so each
 * only says how to configure and probe its daemon. It only ever signals the child it started.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';

export interface Daemon {
    readonly child: ChildProcess;
    readonly pid: number;
    /** Everything written to stdout and stderr so far. */
    output(): string;
    running(): boolean;
    /** The error from spawning (for example ENOENT), or null. */
    spawnError(): Error | null;
    /** Resolves when the process has exited (or could not start). */
    readonly exited: Promise<void>;
    /** Sends a signal if the process still runs; never throws. */
    signal(name: NodeJS.Signals): void;
    /** SIGTERM (after `before`, e.g. SIGCONT for a paused process), SIGKILL after `graceMs`; waits for the exit. */
    stop(graceMs?: number, before?: NodeJS.Signals): Promise<void>;
}

export function startDaemon(command: string, args: readonly string[], options: SpawnOptions = {}): Daemon {
    const child = spawn(command, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
    let running = true;
    let spawnError: Error | null = null;
    // 'exit' may not follow an 'error' (binary missing): either one ends the process's life
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
            // it exited in the meantime
        }
    };
    return {
        child,
        pid: child.pid ?? 0,
        output: () => output,
        running: () => running,
        spawnError: () => spawnError,
        exited,
        signal,
        async stop(graceMs = 5_000, before?: NodeJS.Signals) {
            if (!running) return;
            if (before) signal(before);
            signal('SIGTERM');
            const killer = setTimeout(() => signal('SIGKILL'), graceMs);
            await exited;
            clearTimeout(killer);
        },
    };
}
