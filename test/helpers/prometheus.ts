/**
 * Runs Debian's Prometheus for tests: a child process on a free loopback port with its own
 * configuration, rule files and TSDB in a fresh temporary folder, plus small clients for its
 * HTTP API (instant and range queries, label values, rules, targets) and for promtool.
 * It must not touch the system's Prometheus (its service, /etc/prometheus, /var/lib/prometheus);
 * stop() ends only the process it started (by PID) and removes its folder.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { stringify } from 'yaml';
import { startDaemon } from './daemon.ts';
import { freePort } from './smtp-client.ts';

function binary(name: 'prometheus' | 'promtool'): string {
    return existsSync(`/usr/bin/${name}`) ? `/usr/bin/${name}` : name;
}

/** One series of a query result; `values` holds one pair for an instant query. */
export interface PromSeries {
    readonly metric: Record<string, string>;
    readonly values: readonly (readonly [number, string])[];
}

/** A query Prometheus refused (a parse or evaluation error), with its reason. */
export class PromQueryError extends Error {
    readonly errorType: string;
    constructor(expr: string, errorType: string, error: string) {
        super(`${errorType}: ${error}\n  in: ${expr}`);
        this.errorType = errorType;
    }
}

export interface PromRule {
    readonly name: string;
    readonly type: 'alerting' | 'recording';
    readonly query: string;
    readonly health: string;
    readonly lastError?: string;
    readonly lastEvaluation: string;
    readonly state?: string;
}

export interface PrometheusInstance {
    readonly url: string;
    readonly port: number;
    readonly dir: string;
    /** Instant query at `time` (seconds; default now). Throws PromQueryError when Prometheus refuses it. */
    query(expr: string, time?: number): Promise<PromSeries[]>;
    /** Range query from `start` to `end` (seconds) every `step` seconds. */
    queryRange(expr: string, start: number, end: number, step: number): Promise<PromSeries[]>;
    /** Values of `label` on series matching `match` (what Grafana's label_values() asks). */
    labelValues(label: string, match: string): Promise<string[]>;
    /** Every rule of the loaded rule files, with its health and last error. */
    rules(): Promise<PromRule[]>;
    /** Active scrape targets: their labels, health and last error. */
    targets(): Promise<{ labels: Record<string, string>; health: string; lastError: string }[]>;
    /** What Prometheus printed so far. */
    output(): string;
    stop(): Promise<void>;
}

export interface StartPrometheusOptions {
    /** prometheus.yml as an object; rule file names in it are relative to the temporary folder. */
    readonly config: Record<string, unknown>;
    /** Files written next to prometheus.yml (for example the alert rules). */
    readonly files?: Readonly<Record<string, string>>;
}

interface ApiAnswer<T> {
    status: 'success' | 'error';
    data: T;
    errorType?: string;
    error?: string;
}

/** Starts Prometheus; it answers /-/ready when the promise resolves. */
export async function startPrometheus(options: StartPrometheusOptions): Promise<PrometheusInstance> {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'mailwarden-prometheus-'));
    const port = await freePort();
    const configFile = path.join(dir, 'prometheus.yml');
    await writeFile(configFile, stringify(options.config));
    for (const [name, text] of Object.entries(options.files ?? {})) await writeFile(path.join(dir, name), text);

    const daemon = startDaemon(
        binary('prometheus'),
        [
            `--config.file=${configFile}`,
            `--storage.tsdb.path=${path.join(dir, 'data')}`,
            `--web.listen-address=127.0.0.1:${port}`,
            '--storage.tsdb.retention.time=1h',
            '--log.level=warn',
        ],
        { cwd: dir },
    );
    const stop = async (): Promise<void> => {
        await daemon.stop();
        await rm(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
    };

    const url = `http://127.0.0.1:${port}`;
    const api = async <T>(route: string, params: Record<string, string>, expr = ''): Promise<T> => {
        const res = await fetch(`${url}/api/v1/${route}`, {
            method: 'POST',
            headers: { 'content-type': 'application/x-www-form-urlencoded' },
            body: new URLSearchParams(params).toString(),
        });
        const body = (await res.json()) as ApiAnswer<T>;
        if (body.status !== 'success')
            throw new PromQueryError(expr, body.errorType ?? `HTTP ${res.status}`, body.error ?? '');
        return body.data;
    };
    const get = async <T>(route: string): Promise<T> => {
        const res = await fetch(`${url}/api/v1/${route}`);
        const body = (await res.json()) as ApiAnswer<T>;
        if (body.status !== 'success') throw new Error(`${route}: ${body.errorType}: ${body.error}`);
        return body.data;
    };

    const deadline = Date.now() + 20_000;
    for (;;) {
        await sleep(100);
        if (daemon.spawnError()) {
            await stop();
            throw new Error(
                `prometheus could not be started: ${String(daemon.spawnError())} (install the prometheus package)`,
            );
        }
        if (!daemon.running()) {
            await stop();
            throw new Error(`prometheus exited during start:\n${daemon.output()}`);
        }
        try {
            if ((await fetch(`${url}/-/ready`)).ok) break;
        } catch {
            // not listening yet
        }
        if (Date.now() > deadline) {
            await stop();
            throw new Error(`prometheus did not become ready on ${url}:\n${daemon.output()}`);
        }
    }

    type Vector = { resultType: 'vector'; result: { metric: Record<string, string>; value: [number, string] }[] };
    type Matrix = { resultType: 'matrix'; result: { metric: Record<string, string>; values: [number, string][] }[] };
    type Scalar = { resultType: 'scalar'; result: [number, string] };

    return {
        url,
        port,
        dir,
        async query(expr, time) {
            const data = await api<Vector | Scalar>(
                'query',
                { query: expr, ...(time === undefined ? {} : { time: String(time) }) },
                expr,
            );
            if (data.resultType === 'scalar') return [{ metric: {}, values: [data.result] }];
            return data.result.map((r) => ({ metric: r.metric, values: [r.value] }));
        },
        async queryRange(expr, start, end, step) {
            const data = await api<Matrix>(
                'query_range',
                { query: expr, start: String(start), end: String(end), step: String(step) },
                expr,
            );
            return data.result.map((r) => ({ metric: r.metric, values: r.values }));
        },
        async labelValues(label, match) {
            return get<string[]>(`label/${encodeURIComponent(label)}/values?match[]=${encodeURIComponent(match)}`);
        },
        async rules() {
            const data = await get<{ groups: { rules: PromRule[] }[] }>('rules');
            return data.groups.flatMap((g) => g.rules);
        },
        async targets() {
            const data = await get<{
                activeTargets: { labels: Record<string, string>; health: string; lastError: string }[];
            }>('targets');
            return data.activeTargets;
        },
        output: () => daemon.output(),
        stop,
    };
}

/** Runs promtool with `args` in `cwd`; resolves its exit code and everything it printed. */
export function promtool(args: readonly string[], cwd?: string): Promise<{ code: number; output: string }> {
    return new Promise((resolve) => {
        execFile(binary('promtool'), args, { cwd, timeout: 60_000 }, (error, stdout, stderr) => {
            const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
            resolve({
                code,
                output: `${stdout}${stderr}${error && typeof error.code !== 'number' ? error.message : ''}`,
            });
        });
    });
}
