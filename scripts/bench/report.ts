/**
 * Turns what one measurement window saw (the client's outcomes, the sink's Message-IDs, the
 * /proc figures) into the window's figures and its verification, then the windows of a run
 * into the summary table and the ratios between the paths. Pure functions.
 *
 * It must not decide what passes by timing: verification is about replies and delivery only
 * (every spoof refused with 5xx through mailwarden, every other message answered 250 and
 * found at the sink, nothing at the sink that was not accepted).
 */
import type { CorpusMessage } from './corpus.ts';
import type { Outcome } from './load.ts';
import type { TreeUsage } from './procfs.ts';
import { fmt, fmtSpread, median, percentile, spread, type Spread } from './stats.ts';

export const TARGETS = ['direct', 'passthrough', 'no-checks', 'mailwarden'] as const;
export type Target = (typeof TARGETS)[number];

export const TARGET_LABEL: Record<Target, string> = {
    direct: 'direct to the sink',
    passthrough: 'TCP pass-through',
    'no-checks': 'mailwarden without checks',
    mailwarden: 'mailwarden',
};

export interface WindowInput {
    round: number;
    target: Target;
    perConnection: number;
    /** Messages the window was to send. */
    planned: number;
    outcomes: readonly Outcome[];
    corpus: readonly CorpusMessage[];
    /** Message-IDs the sink received during the window. */
    sinkIds: readonly string[];
    /** Connections opened to the sink during the window (upstream connections, for a filter). */
    sinkConnections?: number;
    wallMs: number;
    connections: number;
    timedOut: boolean;
    /** The filter process tree (null for `direct`: there is none). */
    filter: TreeUsage | null;
    sink: TreeUsage;
    redis: TreeUsage;
    /** Redis commands run during the window, by name (see parseCommandStats), the bench's own left out. */
    redisCommands: Record<string, number>;
    /** CPU of the bench process itself (load client, DNS server, sampling). */
    clientCpuMs: number;
}

export interface WindowResult {
    round: number;
    target: Target;
    perConnection: number;
    planned: number;
    sent: number;
    /** Messages that got a final reply (accepted, refused or tempfailed). */
    completed: number;
    accepted: number;
    refused: number;
    tempfailed: number;
    errors: number;
    spoofs: number;
    spoofsRefused: number;
    atSink: number;
    wallMs: number;
    msgsPerS: number;
    latencyMs: { p50: number; p90: number; p99: number; max: number };
    filterCpuMs: number | null;
    filterCpuMsPerMsg: number | null;
    /** The same split into user and kernel (system) time: socket I/O is mostly the latter. */
    filterUserMsPerMsg: number | null;
    filterSystemMsPerMsg: number | null;
    filterPeakRssMb: number | null;
    filterMaxHwmMb: number | null;
    /** Most processes in the filter's tree at once (a gateway with workers has several). */
    filterProcesses: number | null;
    sinkCpuMsPerMsg: number;
    /** Connections opened to the sink per message (null when not counted). */
    sinkConnectionsPerMsg: number | null;
    redisCpuMsPerMsg: number;
    /** Every command Redis ran, those run inside scripts included. */
    redisCommandsPerMsg: number;
    /** Script calls (EVALSHA and the like): one round trip each, unless pipelined. */
    redisScriptsPerMsg: number;
    redisCommands: Record<string, number>;
    clientCpuMsPerMsg: number;
    connections: number;
    timedOut: boolean;
    /** Outcome counts per corpus class: `accepted`, `5xx@stage`, `4xx@stage`, `error@stage`. */
    byClass: Record<string, Record<string, number>>;
    /** Verification failures: how many, and the first few described. */
    failureCount: number;
    failures: string[];
}

const MAX_FAILURE_SAMPLES = 10;
/** Redis commands that run a script (each a round trip of its own unless pipelined). */
const SCRIPT_COMMANDS = new Set(['evalsha', 'eval', 'evalsha_ro', 'eval_ro', 'fcall', 'fcall_ro']);

function outcomeKey(o: Outcome): string {
    if (o.code >= 200 && o.code < 300 && o.stage === 'eod') return 'accepted';
    if (o.code >= 500) return `5xx@${o.stage}`;
    if (o.code >= 400) return `4xx@${o.stage}`;
    return `error@${o.stage}`;
}

/** The figures and the verification of one window. */
export function evaluateWindow(w: WindowInput): WindowResult {
    const failures: string[] = [];
    let failureCount = 0;
    const fail = (text: string): void => {
        failureCount++;
        if (failures.length < MAX_FAILURE_SAMPLES) failures.push(text);
    };
    const filtered = w.target === 'mailwarden';
    const byClass: Record<string, Record<string, number>> = {};
    const pendingAtSink = new Map<string, number>();
    for (const id of w.sinkIds) pendingAtSink.set(id, (pendingAtSink.get(id) ?? 0) + 1);
    let accepted = 0;
    let refused = 0;
    let tempfailed = 0;
    let errors = 0;
    let spoofs = 0;
    let spoofsRefused = 0;
    const latencies: number[] = [];

    for (const o of w.outcomes) {
        const m = w.corpus[o.index];
        if (!m) throw new Error(`outcome for unknown message ${o.index}`);
        const key = outcomeKey(o);
        const counts = (byClass[m.class] ??= {});
        counts[key] = (counts[key] ?? 0) + 1;
        if (o.code > 0) latencies.push(o.latencyMs);
        const isAccepted = key === 'accepted';
        if (isAccepted) accepted++;
        else if (o.code >= 500) refused++;
        else if (o.code >= 400) tempfailed++;
        else errors++;
        if (m.expect === 'reject') {
            spoofs++;
            if (o.code >= 500) spoofsRefused++;
        }
        const want = filtered ? m.expect : 'accept';
        const what = `${w.target} ${w.perConnection}/conn round ${w.round + 1}: message ${o.index} (${m.class})`;
        if (want === 'reject' && o.code < 500) {
            fail(`${what} should have been refused with 5xx, got ${o.code || 'no reply'} at ${o.stage}`);
        }
        if (want === 'accept' && !isAccepted) {
            fail(`${what} should have been accepted, got ${o.code || 'no reply'} at ${o.stage}: ${o.detail ?? ''}`);
        }
        if (isAccepted) {
            const left = pendingAtSink.get(m.id) ?? 0;
            if (left > 0) pendingAtSink.set(m.id, left - 1);
            else fail(`${what} was accepted but never reached the sink`);
        }
    }
    for (const [id, left] of pendingAtSink) {
        if (left > 0)
            fail(
                `${w.target} ${w.perConnection}/conn round ${w.round + 1}: <${id}> reached the sink ${left}× without being accepted`,
            );
    }
    if (w.outcomes.length < w.planned) {
        fail(
            `${w.target} ${w.perConnection}/conn round ${w.round + 1}: only ${w.outcomes.length} of ${w.planned} messages were sent before the window was cut short (time bound or Ctrl-C)`,
        );
    }

    latencies.sort((a, b) => a - b);
    const completed = accepted + refused + tempfailed;
    const per = (ms: number): number => (completed > 0 ? ms / completed : NaN);
    return {
        round: w.round,
        target: w.target,
        perConnection: w.perConnection,
        planned: w.planned,
        sent: w.outcomes.length,
        completed,
        accepted,
        refused,
        tempfailed,
        errors,
        spoofs,
        spoofsRefused,
        atSink: w.sinkIds.length,
        wallMs: w.wallMs,
        msgsPerS: w.wallMs > 0 ? (completed * 1000) / w.wallMs : NaN,
        latencyMs: {
            p50: percentile(latencies, 50),
            p90: percentile(latencies, 90),
            p99: percentile(latencies, 99),
            max: percentile(latencies, 100),
        },
        filterCpuMs: w.filter ? w.filter.cpuMs : null,
        filterCpuMsPerMsg: w.filter ? per(w.filter.cpuMs) : null,
        filterUserMsPerMsg: w.filter ? per(w.filter.userMs) : null,
        filterSystemMsPerMsg: w.filter ? per(w.filter.systemMs) : null,
        filterPeakRssMb: w.filter ? w.filter.peakRssMb : null,
        filterMaxHwmMb: w.filter ? w.filter.maxHwmMb : null,
        filterProcesses: w.filter ? w.filter.processes : null,
        sinkCpuMsPerMsg: per(w.sink.cpuMs),
        sinkConnectionsPerMsg: w.sinkConnections === undefined ? null : per(w.sinkConnections),
        redisCpuMsPerMsg: per(w.redis.cpuMs),
        redisCommandsPerMsg: per(Object.values(w.redisCommands).reduce((a, b) => a + b, 0)),
        redisScriptsPerMsg: per(
            Object.entries(w.redisCommands)
                .filter(([name]) => SCRIPT_COMMANDS.has(name))
                .reduce((a, [, n]) => a + n, 0),
        ),
        redisCommands: w.redisCommands,
        clientCpuMsPerMsg: per(w.clientCpuMs),
        connections: w.connections,
        timedOut: w.timedOut,
        byClass,
        failureCount,
        failures,
    };
}

export interface VariantSummary {
    target: Target;
    perConnection: number;
    rounds: number;
    msgsPerS: Spread;
    p50Ms: Spread;
    p99Ms: Spread;
    filterCpuMsPerMsg: Spread;
    filterSystemMsPerMsg: Spread;
    filterPeakRssMb: Spread;
    sinkCpuMsPerMsg: Spread;
    sinkConnectionsPerMsg: Spread;
    redisCpuMsPerMsg: Spread;
    redisCommandsPerMsg: Spread;
    redisScriptsPerMsg: Spread;
    clientCpuMsPerMsg: Spread;
    /** Per round: accepted, refused (5xx), tempfailed (4xx), errors, at the sink. Medians. */
    accepted: number;
    refused: number;
    tempfailed: number;
    errors: number;
    atSink: number;
    /** Spoofs per window and the fewest refused in any round. */
    spoofs: number;
    spoofsRefusedMin: number;
    failureCount: number;
}

const nums = (xs: readonly (number | null)[]): number[] => xs.filter((x): x is number => x !== null);

export function summarise(windows: readonly WindowResult[]): VariantSummary[] {
    const groups = new Map<string, WindowResult[]>();
    for (const w of windows) {
        const key = `${w.perConnection}\u0000${TARGETS.indexOf(w.target)}`;
        const list = groups.get(key) ?? [];
        list.push(w);
        groups.set(key, list);
    }
    const out: VariantSummary[] = [];
    for (const list of groups.values()) {
        const first = list[0]!;
        out.push({
            target: first.target,
            perConnection: first.perConnection,
            rounds: list.length,
            msgsPerS: spread(list.map((w) => w.msgsPerS)),
            p50Ms: spread(list.map((w) => w.latencyMs.p50)),
            p99Ms: spread(list.map((w) => w.latencyMs.p99)),
            filterCpuMsPerMsg: spread(nums(list.map((w) => w.filterCpuMsPerMsg))),
            filterSystemMsPerMsg: spread(nums(list.map((w) => w.filterSystemMsPerMsg))),
            filterPeakRssMb: spread(nums(list.map((w) => w.filterPeakRssMb))),
            sinkCpuMsPerMsg: spread(list.map((w) => w.sinkCpuMsPerMsg)),
            sinkConnectionsPerMsg: spread(nums(list.map((w) => w.sinkConnectionsPerMsg))),
            redisCpuMsPerMsg: spread(list.map((w) => w.redisCpuMsPerMsg)),
            redisCommandsPerMsg: spread(list.map((w) => w.redisCommandsPerMsg)),
            redisScriptsPerMsg: spread(list.map((w) => w.redisScriptsPerMsg)),
            clientCpuMsPerMsg: spread(list.map((w) => w.clientCpuMsPerMsg)),
            accepted: median(list.map((w) => w.accepted)),
            refused: median(list.map((w) => w.refused)),
            tempfailed: median(list.map((w) => w.tempfailed)),
            errors: median(list.map((w) => w.errors)),
            atSink: median(list.map((w) => w.atSink)),
            spoofs: Math.max(...list.map((w) => w.spoofs)),
            spoofsRefusedMin: Math.min(...list.map((w) => w.spoofsRefused)),
            failureCount: list.reduce((a, w) => a + w.failureCount, 0),
        });
    }
    return out.sort(
        (a, b) => a.perConnection - b.perConnection || TARGETS.indexOf(a.target) - TARGETS.indexOf(b.target),
    );
}

export interface Ratios {
    perConnection: number;
    /** Paired per round (same round, same connection mode), then median (min–max) over the rounds. */
    throughputVsPassthrough: Spread;
    throughputVsDirect: Spread;
    /** mailwarden's p99 minus the direct path's p99, ms. */
    p99OverDirectMs: Spread;
    /** mailwarden's CPU ms/msg ÷ the pass-through's. */
    cpuVsPassthrough: Spread;
    /**
     * mailwarden's CPU ms/msg minus the no-checks path's: what the checks add to the proxy. Only
     * from rounds where mailwarden ran as one process, as the no-checks path always does (workers
     * add their own cost).
     */
    checksCpuMs: Spread;
}

/** mailwarden against the other paths, round by round (the rounds are interleaved, so drift hits both). */
export function ratios(windows: readonly WindowResult[]): Ratios[] {
    const modes = [...new Set(windows.map((w) => w.perConnection))].sort((a, b) => a - b);
    const out: Ratios[] = [];
    for (const perConnection of modes) {
        const rounds = [...new Set(windows.map((w) => w.round))];
        const pick = (target: Target, round: number): WindowResult | undefined =>
            windows.find((w) => w.target === target && w.round === round && w.perConnection === perConnection);
        const pairs = (other: Target, f: (mw: WindowResult, o: WindowResult) => number | null): number[] =>
            nums(
                rounds.map((r) => {
                    const mw = pick('mailwarden', r);
                    const o = pick(other, r);
                    return mw && o ? f(mw, o) : null;
                }),
            );
        out.push({
            perConnection,
            throughputVsPassthrough: spread(pairs('passthrough', (m, o) => m.msgsPerS / o.msgsPerS)),
            throughputVsDirect: spread(pairs('direct', (m, o) => m.msgsPerS / o.msgsPerS)),
            p99OverDirectMs: spread(pairs('direct', (m, o) => m.latencyMs.p99 - o.latencyMs.p99)),
            cpuVsPassthrough: spread(
                pairs('passthrough', (m, o) =>
                    m.filterCpuMsPerMsg !== null && o.filterCpuMsPerMsg
                        ? m.filterCpuMsPerMsg / o.filterCpuMsPerMsg
                        : null,
                ),
            ),
            checksCpuMs: spread(
                pairs('no-checks', (m, o) =>
                    m.filterCpuMsPerMsg !== null && o.filterCpuMsPerMsg !== null && m.filterProcesses === 1
                        ? m.filterCpuMsPerMsg - o.filterCpuMsPerMsg
                        : null,
                ),
            ),
        });
    }
    return out;
}

export const TABLE_HEADER = [
    'path',
    'msgs/conn',
    'msgs/s',
    'p50 ms',
    'p99 ms',
    'filter CPU ms/msg',
    'peak RSS MB',
    'accepted / 5xx / 4xx / err',
    'spoofs refused',
    'at sink',
] as const;

/** The summary as table rows (cells: median, and (min–max) over the rounds when they differ). */
export function tableRows(summaries: readonly VariantSummary[]): string[][] {
    return summaries.map((s) => [
        TARGET_LABEL[s.target],
        String(s.perConnection),
        fmtSpread(s.msgsPerS, 0),
        fmtSpread(s.p50Ms, 1),
        fmtSpread(s.p99Ms, 1),
        s.target === 'direct' ? '–' : fmtSpread(s.filterCpuMsPerMsg, 2),
        s.target === 'direct' ? '–' : fmtSpread(s.filterPeakRssMb, 0),
        `${fmt(s.accepted, 0)} / ${fmt(s.refused, 0)} / ${fmt(s.tempfailed, 0)} / ${fmt(s.errors, 0)}`,
        s.target === 'mailwarden' ? `${s.spoofsRefusedMin}/${s.spoofs}` : `– (${s.spoofs} sent)`,
        fmt(s.atSink, 0),
    ]);
}

export const RATIO_HEADER = [
    'msgs/conn',
    'msgs/s vs pass-through',
    'msgs/s vs direct',
    'p99 − direct p99 ms',
    'CPU vs pass-through',
    'CPU of the checks ms/msg',
] as const;

export function ratioRows(list: readonly Ratios[]): string[][] {
    return list.map((r) => [
        String(r.perConnection),
        fmtSpread(r.throughputVsPassthrough, 2),
        fmtSpread(r.throughputVsDirect, 2),
        fmtSpread(r.p99OverDirectMs, 1),
        fmtSpread(r.cpuVsPassthrough, 1),
        fmtSpread(r.checksCpuMs, 2),
    ]);
}

export const OTHER_CPU_HEADER = [
    'path',
    'msgs/conn',
    'filter',
    'of it kernel',
    'Redis',
    'Redis scripts',
    'Redis commands',
    'sink',
    'sink conns/msg',
    'bench client',
] as const;

/** CPU ms per message of every process of the machine's load, and Redis commands per message, per path (medians). */
export function otherCpuRows(summaries: readonly VariantSummary[]): string[][] {
    return summaries.map((s) => [
        TARGET_LABEL[s.target],
        String(s.perConnection),
        s.target === 'direct' ? '–' : fmt(s.filterCpuMsPerMsg.median, 2),
        s.target === 'direct' ? '–' : fmt(s.filterSystemMsPerMsg.median, 2),
        fmt(s.redisCpuMsPerMsg.median, 2),
        fmt(s.redisScriptsPerMsg.median, 1),
        fmt(s.redisCommandsPerMsg.median, 1),
        fmt(s.sinkCpuMsPerMsg.median, 2),
        fmt(s.sinkConnectionsPerMsg.median, 2),
        fmt(s.clientCpuMsPerMsg.median, 2),
    ]);
}

/** Commands the bench itself sends to Redis between windows: not the filter's work. */
const OWN_REDIS_COMMANDS = new Set([
    'flushall',
    'info',
    'config|resetstat',
    'config',
    'ping',
    'client|setname',
    'select',
]);

/**
 * Calls per command from Redis's `INFO commandstats` (`cmdstat_evalsha:calls=12,usec=…`), the
 * bench's own commands left out.
 */
export function parseCommandStats(info: string): Record<string, number> {
    const out: Record<string, number> = {};
    for (const m of info.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) {
        if (!OWN_REDIS_COMMANDS.has(m[1]!)) out[m[1]!] = Number(m[2]);
    }
    return out;
}
