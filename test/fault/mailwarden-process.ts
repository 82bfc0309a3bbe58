/**
 * Runs mailwarden as the operator does, `bin/mailwarden.js serve -c FILE` in a child process,
 * so a fault test can SIGKILL it, SIGTERM it and start it again on the same ports. Every JSON
 * log line of every run is kept (with the number of the run it came from), and the process can
 * be measured from outside: resident memory (/proc/PID/status), open file descriptors
 * (/proc/PID/fd) and its /metrics; started with `inspect`, it also listens for the V8
 * inspector on a free loopback port, so the harness can collect garbage before it reads the
 * heap (a figure not blurred by garbage not yet collected). It only ever signals the process
 * it started.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';

const BIN = new URL('../../bin/mailwarden.js', import.meta.url).pathname;

export interface LogLine {
    /** Which start of the process wrote it (1 for the first). */
    readonly run: number;
    /** When the harness read it (ms since the epoch). */
    readonly at: number;
    readonly line: Record<string, unknown>;
}

export interface Exit {
    readonly code: number | null;
    readonly signal: NodeJS.Signals | null;
    /** Time from the signal to the exit, in ms. */
    readonly ms: number;
}

export interface MailwardenProcess {
    readonly configFile: string;
    /** PID of the running process (0 when none runs). */
    readonly pid: number;
    readonly running: boolean;
    /** Number of starts so far. */
    readonly runs: number;
    readonly logs: readonly LogLine[];
    /** What the process wrote that was not a JSON log line (stderr included). */
    readonly otherOutput: string;
    /** Starts the process; resolves once it logged `mailwarden started` (its listeners are up). */
    start(timeoutMs?: number): Promise<void>;
    /** Sends a signal and waits for the exit (SIGKILL after `timeoutMs`). */
    signal(name: 'SIGKILL' | 'SIGTERM', timeoutMs?: number): Promise<Exit>;
    /** Stops a running process with SIGTERM (SIGKILL after 15 s); no-op when none runs. */
    stop(): Promise<void>;
    /** VmRSS of the running process, in bytes. */
    rss(): Promise<number>;
    /** Number of open file descriptors of the running process. */
    fds(): Promise<number>;
    /** The Prometheus text of /metrics (needs `http:` in the config). */
    metrics(httpPort: number): Promise<string>;
    /** V8 heap in use right after a full garbage collection, in bytes (needs `inspect`). */
    heapAfterGc(): Promise<number>;
}

export interface ProcessOptions {
    /** Listen for the V8 inspector on a free loopback port (for heapAfterGc). */
    readonly inspect?: boolean;
}

/** Sends inspector protocol commands over one WebSocket and returns each result. */
async function inspectorCall(url: string, methods: readonly string[]): Promise<unknown[]> {
    const ws = new WebSocket(url);
    try {
        await new Promise<void>((resolve, reject) => {
            ws.addEventListener('open', () => resolve(), { once: true });
            ws.addEventListener('error', () => reject(new Error(`cannot reach the inspector at ${url}`)), {
                once: true,
            });
        });
        const results: unknown[] = [];
        for (const [i, method] of methods.entries()) {
            const id = i + 1;
            results.push(
                await new Promise((resolve, reject) => {
                    const timer = setTimeout(() => reject(new Error(`inspector: no answer to ${method}`)), 60_000);
                    const onMessage = (event: MessageEvent): void => {
                        const msg = JSON.parse(String(event.data)) as {
                            id?: number;
                            result?: unknown;
                            error?: unknown;
                        };
                        if (msg.id !== id) return;
                        clearTimeout(timer);
                        ws.removeEventListener('message', onMessage);
                        if (msg.error) reject(new Error(`inspector: ${method}: ${JSON.stringify(msg.error)}`));
                        else resolve(msg.result);
                    };
                    ws.addEventListener('message', onMessage);
                    ws.send(JSON.stringify({ id, method }));
                }),
            );
        }
        return results;
    } finally {
        ws.close();
    }
}

export function mailwardenProcess(configFile: string, options: ProcessOptions = {}): MailwardenProcess {
    let child: ChildProcess | null = null;
    let inspectorUrl: string | null = null;
    let exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }> | null = null;
    let runs = 0;
    let other = '';
    const logs: LogLine[] = [];
    const startWaiters: Array<() => void> = [];

    const attach = (c: ChildProcess, run: number): void => {
        let buf = '';
        c.stdout?.setEncoding('utf8');
        c.stdout?.on('data', (chunk: string) => {
            buf += chunk;
            let nl: number;
            while ((nl = buf.indexOf('\n')) >= 0) {
                const text = buf.slice(0, nl);
                buf = buf.slice(nl + 1);
                if (!text.trim()) continue;
                let line: Record<string, unknown>;
                try {
                    line = JSON.parse(text) as Record<string, unknown>;
                } catch {
                    other += `${text}\n`;
                    continue;
                }
                logs.push({ run, at: Date.now(), line });
                // started: a single process says so once; with workers, the primary says so when
                // every worker is ready and /metrics answers (a worker's own line comes earlier)
                const whole =
                    (line.msg === 'mailwarden started' && line.worker === undefined) || line.msg === 'workers started';
                if (whole) for (const w of startWaiters.splice(0)) w();
            }
        });
        c.stderr?.setEncoding('utf8');
        let stderr = '';
        c.stderr?.on('data', (chunk: string) => {
            other += chunk;
            stderr += chunk;
            // the last one: bin/mailwarden.js starts serve again with its V8 flags (execve), and the
            // inspector of the process before that is gone
            const urls = [...stderr.matchAll(/Debugger listening on (ws:\/\/127\.0\.0\.1:\d+\/\S+)/g)];
            inspectorUrl = urls.at(-1)?.[1] ?? inspectorUrl;
        });
    };

    const self: MailwardenProcess = {
        configFile,
        get pid() {
            return child?.pid ?? 0;
        },
        get running() {
            return child !== null;
        },
        get runs() {
            return runs;
        },
        logs,
        get otherOutput() {
            return other;
        },
        async start(timeoutMs = 30_000) {
            if (child) throw new Error('mailwarden already runs');
            const run = ++runs;
            inspectorUrl = null;
            const flags = options.inspect ? ['--inspect=127.0.0.1:0'] : [];
            const c = spawn(process.execPath, [...flags, BIN, 'serve', '-c', configFile], {
                stdio: ['ignore', 'pipe', 'pipe'],
            });
            child = c;
            attach(c, run);
            exited = new Promise((resolve) => {
                c.once('exit', (code, signal) => {
                    if (child === c) child = null;
                    resolve({ code, signal });
                });
            });
            const started = new Promise<void>((resolve) => startWaiters.push(resolve));
            const outcome = await Promise.race([
                started.then(() => 'started' as const),
                exited.then(() => 'exited' as const),
                sleep(timeoutMs).then(() => 'timeout' as const),
            ]);
            if (outcome !== 'started') {
                if (outcome === 'timeout') await self.signal('SIGKILL');
                throw new Error(`mailwarden did not start (${outcome}):\n${other.slice(-4000)}`);
            }
        },
        async signal(name, timeoutMs = 15_000) {
            const c = child;
            const done = exited;
            if (!c || !done) throw new Error('mailwarden does not run');
            const sent = Date.now();
            c.kill(name);
            const killer = setTimeout(() => c.kill('SIGKILL'), timeoutMs);
            const { code, signal } = await done;
            clearTimeout(killer);
            return { code, signal, ms: Date.now() - sent };
        },
        async stop() {
            if (child) await self.signal('SIGTERM');
        },
        async rss() {
            const status = await readFile(`/proc/${self.pid}/status`, 'utf8');
            const kb = /^VmRSS:\s+(\d+) kB/m.exec(status)?.[1];
            if (kb === undefined) throw new Error('no VmRSS in /proc/PID/status');
            return Number(kb) * 1024;
        },
        async fds() {
            return (await readdir(`/proc/${self.pid}/fd`)).length;
        },
        async heapAfterGc() {
            if (!inspectorUrl) throw new Error('mailwarden was not started with inspect');
            const [, usage] = await inspectorCall(inspectorUrl, [
                'HeapProfiler.collectGarbage',
                'Runtime.getHeapUsage',
            ]);
            return (usage as { usedSize: number }).usedSize;
        },
        metrics(httpPort) {
            return new Promise((resolve, reject) => {
                http.get({ host: '127.0.0.1', port: httpPort, path: '/metrics', timeout: 10_000 }, (res) => {
                    let body = '';
                    res.setEncoding('utf8');
                    res.on('data', (c: string) => (body += c));
                    res.on('end', () => resolve(body));
                    res.on('error', reject);
                }).on('error', reject);
            });
        },
    };
    return self;
}

/** The value of one sample of a Prometheus text exposition (`name` or `name{labels}`), or null. */
export function metricValue(text: string, sample: string): number | null {
    for (const line of text.split('\n')) {
        if (line.startsWith(`${sample} `)) return Number(line.slice(sample.length + 1).split(' ')[0]);
    }
    return null;
}
