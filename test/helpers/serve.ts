/**
 * Runs the real `mailwarden` command (bin/mailwarden.js) as a child process for tests:
 * `startServe` keeps `serve` running and collects its JSON log lines (stdout) and stderr,
 * with a wait for a log line and the real signals (SIGHUP, SIGTERM); `runCommand` runs a
 * command such as `check` to its end. Only ever signals the child it started; `stop()`
 * ends it (SIGTERM, then SIGKILL after a grace period) and returns its exit code.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';

const BIN = new URL('../../bin/mailwarden.js', import.meta.url).pathname;

export interface Serve {
    readonly child: ChildProcess;
    /** Parsed JSON log lines written to stdout so far. */
    readonly logs: Record<string, unknown>[];
    stderr(): string;
    /** Resolves with the first log line (after `from`) that `match` accepts; rejects after `timeoutMs` or on exit. */
    waitFor(
        match: (line: Record<string, unknown>) => boolean,
        options?: { from?: number; timeoutMs?: number },
    ): Promise<Record<string, unknown>>;
    signal(name: NodeJS.Signals): void;
    /** The exit code (null when killed by a signal) once the process has ended. */
    readonly exited: Promise<number | null>;
    stop(graceMs?: number): Promise<number | null>;
}

/** Environment for the child: this one without a config path of its own. */
function childEnv(): NodeJS.ProcessEnv {
    const env = { ...process.env };
    delete env.MAILWARDEN_CONFIG;
    return env;
}

/**
 * `extraEnv`: variables added to the child's environment (NODE_OPTIONS, …); `nodeArgs`: Node.js
 * flags before the script; `bin`: another copy of bin/mailwarden.js (a copy of the project);
 * `ownGroup`: the child leads a process group of its own (and its workers are in it), as a
 * command started in a terminal, so a test can signal the whole group as Ctrl-C does.
 */
export function startServe(
    configFile: string,
    cwd?: string,
    extraEnv: NodeJS.ProcessEnv = {},
    nodeArgs: readonly string[] = [],
    bin: string = BIN,
    ownGroup = false,
): Serve {
    const child = spawn(process.execPath, [...nodeArgs, bin, 'serve', '-c', configFile], {
        cwd,
        env: { ...childEnv(), ...extraEnv },
        stdio: ['ignore', 'pipe', 'pipe'],
        detached: ownGroup,
    });
    const logs: Record<string, unknown>[] = [];
    let stderr = '';
    let partial = '';
    const waiters = new Set<() => void>();
    const wake = (): void => {
        for (const w of [...waiters]) w();
    };
    child.stdout.on('data', (chunk: Buffer) => {
        const lines = (partial + chunk.toString('utf8')).split('\n');
        partial = lines.pop() ?? '';
        for (const line of lines) {
            if (!line.trim()) continue;
            try {
                logs.push(JSON.parse(line) as Record<string, unknown>);
            } catch {
                logs.push({ msg: line, unparsed: true });
            }
        }
        wake();
    });
    child.stderr.on('data', (chunk: Buffer) => {
        stderr += chunk.toString('utf8');
    });
    let running = true;
    const exited = new Promise<number | null>((resolve) => {
        child.once('exit', (code) => {
            running = false;
            wake();
            resolve(code);
        });
    });
    const signal = (name: NodeJS.Signals): void => {
        if (running) child.kill(name);
    };
    return {
        child,
        logs,
        stderr: () => stderr,
        waitFor(match, options = {}) {
            const from = options.from ?? 0;
            const timeoutMs = options.timeoutMs ?? 15_000;
            return new Promise((resolve, reject) => {
                const check = (): void => {
                    const found = logs.slice(from).find(match);
                    if (found) {
                        done();
                        resolve(found);
                    } else if (!running) {
                        done();
                        reject(new Error(`mailwarden exited; stderr: ${stderr}`));
                    }
                };
                const timer = setTimeout(() => {
                    done();
                    reject(new Error(`no such log line within ${timeoutMs} ms; stderr: ${stderr}`));
                }, timeoutMs);
                const done = (): void => {
                    clearTimeout(timer);
                    waiters.delete(check);
                };
                waiters.add(check);
                check();
            });
        },
        signal,
        exited,
        async stop(graceMs = 10_000) {
            signal('SIGTERM');
            const killer = setTimeout(() => signal('SIGKILL'), graceMs);
            const code = await exited;
            clearTimeout(killer);
            return code;
        },
    };
}

/** Runs `mailwarden ARGS…` to its end. */
export function runCommand(
    args: readonly string[],
    cwd?: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
        execFile(process.execPath, [BIN, ...args], { cwd, env: childEnv() }, (err, stdout, stderr) => {
            const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
            resolve({ code, stdout, stderr });
        });
    });
}
