/**
 * Prepares the mailwarden the benchmark measures: a copy of the shipped rules with every rate
 * and concurrency limit raised far above the load (the bookkeeping in Redis is measured, not
 * the throttling), and a config file in front of the bench's sink, DNS and Redis with the
 * listener's connection caps raised as well. Listener keys that this checkout does not know
 * yet are dropped after `mailwarden check` names them, so the bench runs across versions.
 *
 * It must not change the shipped rules folder, only its copy, and must not weaken any check:
 * only limits, never rules, lists or authentication, are touched.
 */
import { execFile } from 'node:child_process';
import { cp, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { isMap, isScalar, isSeq, parseDocument, type Scalar } from 'yaml';

/** Largest concurrency a limit may declare, and the cap on limit × period (ms) of a rate (exact GCRA arithmetic). */
const MAX_CONCURRENCY = 1_000_000;
const MAX_PRODUCT = 2 ** 52;
const UNIT_MS: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };

function periodMs(period: string): number | null {
    const m = /^(\d*)(ms|s|m|h|d)$/.exec(period.trim());
    return m ? (m[1] === '' ? 1 : Number(m[1])) * UNIT_MS[m[2]!]! : null;
}

/** `COUNT/PERIOD` (the count may be a size such as `200MB`) with the count multiplied, within the exact-arithmetic cap. */
export function raiseRate(rate: string, factor: number): string {
    const m = /^\s*(\d+)([A-Za-z]*)\s*\/\s*(\S+)\s*$/.exec(rate);
    if (!m) return rate;
    const unit = m[2]!;
    const unitBytes = { '': 1, B: 1, KB: 1024, MB: 1024 ** 2, GB: 1024 ** 3 }[unit.toUpperCase()] ?? 1;
    const period = periodMs(m[3]!);
    let count = Number(m[1]) * factor;
    // a size is counted in KB when bytes would not fit, so its cap is 1024 times higher
    const perUnit = unit === '' ? 1 : unitBytes / 1024;
    if (period !== null) count = Math.min(count, Math.floor(MAX_PRODUCT / period / perUnit));
    return `${Math.max(Number(m[1]), count)}${unit}/${m[3]}`;
}

/**
 * A rule file's text with each entry of its `limits:` list raised `factor` times (rates and
 * concurrency); everything else, comments included, is kept. Text without limits comes back
 * unchanged.
 */
export function raiseLimits(text: string, factor: number): string {
    const doc = parseDocument(text);
    const limits = doc.get('limits', true);
    if (!isSeq(limits)) return text;
    for (const item of limits.items) {
        if (!isMap(item)) continue;
        const rate = item.get('rate', true);
        const scalars: Scalar[] = isSeq(rate) ? rate.items.filter(isScalar) : isScalar(rate) ? [rate] : [];
        for (const s of scalars) if (typeof s.value === 'string') s.value = raiseRate(s.value, factor);
        const concurrency = item.get('concurrency', true);
        if (isScalar(concurrency) && typeof concurrency.value === 'number') {
            concurrency.value = Math.min(MAX_CONCURRENCY, Math.max(concurrency.value, concurrency.value * factor));
        }
    }
    return doc.toString({ lineWidth: 0 });
}

/** Copies the rules folder to `to` and raises the limits of every rule file in the copy. */
export async function prepareRules(from: string, to: string, factor: number): Promise<string[]> {
    await cp(from, to, { recursive: true });
    const changed: string[] = [];
    for (const name of await readdir(to)) {
        if (!/\.ya?ml$/.test(name)) continue;
        const file = path.join(to, name);
        const text = await readFile(file, 'utf8');
        const raised = raiseLimits(text, factor);
        if (raised !== text) {
            await writeFile(file, raised);
            changed.push(name);
        }
    }
    return changed;
}

/**
 * The V8 flags bin/mailwarden.js runs `serve` with, for the no-checks path, which is started
 * without the launcher (test/bench/bench-parts.test.ts holds the two lists together).
 */
export const SERVE_V8_FLAGS = ['--max-semi-space-size=4', '--heap-growing-percent=20'] as const;

export interface BenchConfigOptions {
    port: number;
    sinkPort: number;
    /** `127.0.0.1:PORT` of the bench DNS. */
    dns: string;
    redisUrl: string;
    rulesDir: string;
    httpPort: number;
    spoolDir: string;
    /** Connections at once the listener allows (and per client network, where the checkout has that key). */
    maxClients: number;
    /** `workers:` to write; null or left out: not written. */
    workers?: number | 'auto' | null;
    /** Listener keys to leave out (unknown to this checkout). */
    without?: readonly string[];
}

/** Listener keys newer than some checkouts: written when known, dropped when `check` calls them unknown. */
export const OPTIONAL_LISTENER_KEYS = ['maxClientsPerNetwork'] as const;

export function benchConfig(o: BenchConfigOptions): string {
    const listener: Record<string, string | number> = {
        name: 'mx',
        host: '127.0.0.1',
        port: o.port,
        mode: 'mx',
        maxClients: o.maxClients,
        maxClientsPerNetwork: o.maxClients,
    };
    for (const key of o.without ?? []) delete listener[key];
    const q = (s: string): string => JSON.stringify(s);
    return [
        '# mailwarden as the benchmark runs it: every check, the shipped rules with raised limits, Redis.',
        'hostname: mx.dest.test',
        'domains: [dest.test]',
        'listeners:',
        `  - { ${Object.entries(listener)
            .map(([k, v]) => `${k}: ${v}`)
            .join(', ')} }`,
        // the benchmark's clients all come from one address, known after its first connection
        'pregreet: { wait: 0s }',
        `upstream: { url: ${q(`smtp://127.0.0.1:${o.sinkPort}`)}, xclient: true }`,
        `dns: { servers: [${q(o.dns)}], timeout: 5s }`,
        `redis: { url: ${q(o.redisUrl)} }`,
        `rules: ${q(o.rulesDir)}`,
        `http: { host: 127.0.0.1, port: ${o.httpPort} }`,
        `spool: { dir: ${q(o.spoolDir)} }`,
        ...(o.workers === undefined || o.workers === null ? [] : [`workers: ${o.workers}`]),
        '',
    ].join('\n');
}

/** The optional listener keys that `mailwarden check` output calls unknown. */
export function unknownOptionalKeys(checkOutput: string): string[] {
    return OPTIONAL_LISTENER_KEYS.filter((k) => checkOutput.includes(`unknown key "${k}"`));
}

/** Runs `mailwarden check -c FILE` with this Node.js; resolves with its exit code and output. */
export function checkConfig(projectRoot: string, file: string): Promise<{ ok: boolean; output: string }> {
    return new Promise((resolve) => {
        execFile(
            process.execPath,
            [path.join(projectRoot, 'bin', 'mailwarden.js'), 'check', '-c', file],
            { cwd: projectRoot, timeout: 60_000 },
            (error, stdout, stderr) => resolve({ ok: error === null, output: `${stdout}${stderr}` }),
        );
    });
}
