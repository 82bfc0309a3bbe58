/**
 * The benchmark (`npm run bench`; docs/performance.md): in one run, with interleaved rounds
 * whose order rotates, it sends a corpus of DKIM-signed messages (with a share of spoofs of a
 * DMARC p=reject domain) to a sink (a) directly, (b) through a plain TCP pass-through and
 * (c) through mailwarden with every check, the shipped rules (limits raised above the load)
 * and Redis; one message per connection and ten per connection. It prints msgs/s, latency
 * percentiles, the filter's CPU ms per message and peak RSS (measured from /proc, outside the
 * filter process), the ratios between the paths, and the memory of idle connections; writes
 * everything as JSON; and fails when a spoof got through or a message did not reach the sink.
 * With --profile it runs mailwarden with --cpu-prof and prints where its time went.
 *
 * It must stay on loopback, bound its own run time, and stop every process it started, by
 * PID, also on failure and on Ctrl-C. It must not touch the system's Redis or Postfix.
 */
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { startDnsServer, type DnsTestServer } from '../test/helpers/dns-server.ts';
import { startRedis } from '../test/helpers/redis.ts';
import { freePort } from '../test/helpers/smtp-client.ts';
import { Children, waitForHttp, waitForMessage, type Started } from './bench/children.ts';
import {
    CLIENT_HELO,
    corpusZone,
    describeCorpus,
    generateCorpus,
    makeKeys,
    toWire,
    type CorpusMessage,
} from './bench/corpus.ts';
import { runLoad, type PreparedMessage } from './bench/load.ts';
import { BenchUsageError, parseBenchArgs, USAGE, type BenchOptions } from './bench/options.ts';
import {
    benchConfig,
    checkConfig,
    prepareRules,
    SERVE_V8_FLAGS,
    unknownOptionalKeys,
    type BenchConfigOptions,
} from './bench/mailwarden-setup.ts';
import {
    summariseCpuProfiles,
    summariseHeapProfiles,
    type CpuProfile,
    type CpuSummary,
    type HeapProfile,
} from './bench/profile.ts';
import { clockTicksPerSecond, processTree, readStat, readStatus, TreeMonitor, type TreeUsage } from './bench/procfs.ts';
import {
    evaluateWindow,
    parseCommandStats,
    OTHER_CPU_HEADER,
    otherCpuRows,
    RATIO_HEADER,
    ratioRows,
    ratios,
    summarise,
    TABLE_HEADER,
    tableRows,
    TARGET_LABEL,
    type Target,
    type WindowResult,
} from './bench/report.ts';
import { fmt, markdownTable, textTable } from './bench/stats.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
let opts: BenchOptions;
try {
    opts = parseBenchArgs(process.argv.slice(2));
} catch (e) {
    if (!(e instanceof BenchUsageError)) throw e;
    console.error(`${e.message}\n\n${USAGE}`);
    process.exit(2);
}
if (opts.help) {
    console.log(USAGE);
    process.exit(0);
}

const startedAt = new Date();
const t0 = performance.now();
const deadline = t0 + opts.maxSeconds * 1000;
let interrupted = false;
const children = new Children();
const log = (text: string): void => {
    const s = ((performance.now() - t0) / 1000).toFixed(1).padStart(6);
    console.log(`[${s}s] ${text}`);
};
const stopNow = (): boolean => interrupted || performance.now() > deadline;

// Ctrl-C: stop sending, then the normal path stops everything; a second Ctrl-C kills at once.
const onSignal = (signal: NodeJS.Signals): void => {
    if (interrupted) {
        children.killAll();
        process.exit(130);
    }
    interrupted = true;
    console.error(`\n${signal}: stopping (again to kill at once)`);
};
process.on('SIGINT', onSignal);
process.on('SIGTERM', onSignal);
// The last resort if stopping itself hangs: kill what is left a minute after the time bound.
setTimeout(
    () => {
        console.error('time bound passed long ago: killing every process the bench started');
        children.killAll();
        process.exit(1);
    },
    opts.maxSeconds * 1000 + 60_000,
).unref();

function git(...a: string[]): string {
    try {
        return execFileSync('git', a, { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    } catch {
        return 'unknown';
    }
}

function machine(): Record<string, unknown> {
    const cpus = os.cpus();
    return {
        host: os.hostname(),
        cpus: cpus.length,
        cpuModel: cpus[0]?.model ?? 'unknown',
        memoryGb: Number((os.totalmem() / 1024 ** 3).toFixed(1)),
        node: process.version,
        platform: `${os.type()} ${os.release()}`,
        commit: git('rev-parse', '--short', 'HEAD'),
        dirty: git('status', '--porcelain', '--untracked-files=no') !== '',
    };
}

const loadavg = (): number[] => os.loadavg().map((x) => Number(x.toFixed(2)));

/** What the sink received since the last take: Message-IDs, and connections opened to it. */
async function takeSink(sink: Started): Promise<{ ids: string[]; connections: number }> {
    const reply = waitForMessage<{ type: 'taken'; ids: string[]; connections: number }>(sink, 'taken', 10_000);
    sink.child!.send({ type: 'take' });
    return await reply;
}

/** Opens `count` connections, reads each greeting and answers EHLO, and returns them (still open). */
async function openIdle(port: number, count: number): Promise<net.Socket[]> {
    const sockets: net.Socket[] = [];
    const one = (): Promise<void> =>
        new Promise((resolve) => {
            const s = net.connect({ host: '127.0.0.1', port });
            sockets.push(s);
            let seen = '';
            let step = 0;
            const timer = setTimeout(() => resolve(), 20_000);
            s.on('error', () => {
                clearTimeout(timer);
                resolve();
            });
            s.on('data', (d: Buffer) => {
                seen += d.toString('latin1');
                if (step === 0 && /^220 .*\r\n$/m.test(seen)) {
                    step = 1;
                    seen = '';
                    s.write(`EHLO ${CLIENT_HELO}\r\n`);
                } else if (step === 1 && /^250 .*\r\n/m.test(seen)) {
                    step = 2;
                    clearTimeout(timer);
                    resolve();
                }
            });
        });
    for (let i = 0; i < count; i += 50) {
        await Promise.all(Array.from({ length: Math.min(50, count - i) }, one));
    }
    return sockets;
}

function treeRssMb(roots: readonly number[]): number {
    let kb = 0;
    for (const pid of processTree(roots)) kb += readStatus(pid)?.vmRssKb ?? 0;
    return kb / 1024;
}

/**
 * RSS of a tree with `count` more idle SMTP connections open (after EHLO), less without them,
 * per connection. A first batch, kept open, runs the connection code once so that its
 * compilation is not counted.
 */
async function idleCost(
    target: Target,
    port: number,
    roots: readonly number[],
    count: number,
): Promise<Record<string, number | string>> {
    const first = await openIdle(port, 50);
    await sleep(1_000);
    const before = treeRssMb(roots);
    const sockets = await openIdle(port, count);
    const open = sockets.filter((s) => !s.destroyed).length;
    await sleep(2_000);
    const after = treeRssMb(roots);
    for (const s of [...first, ...sockets]) s.destroy();
    await sleep(500);
    return {
        target,
        connections: count,
        open,
        rssBeforeMb: Number(before.toFixed(1)),
        rssAfterMb: Number(after.toFixed(1)),
        kbPerConnection: Number((((after - before) * 1024) / Math.max(1, open)).toFixed(1)),
    };
}

function printProfile(summary: CpuSummary, top: number): string {
    const lines: string[] = [];
    const pct = (ms: number): string => `${((100 * ms) / summary.busyMs).toFixed(1)}%`;
    lines.push(
        `CPU profile: ${fmt(summary.busyMs / 1000, 1)} s busy (idle ${fmt(summary.idleMs / 1000, 1)} s), ${summary.samples} samples`,
    );
    lines.push('', `Top ${top} functions by self time (and the code of our own or of a package that called them):`);
    lines.push(
        textTable(
            ['function', 'self ms', 'self %', 'total %', 'where', 'mostly from'],
            summary.functions.slice(0, top).map((f) => {
                const c = f.callers[0];
                const from = c && f.selfMs > 0 ? `${c.caller} (${((100 * c.ms) / f.selfMs).toFixed(0)}%)` : '';
                return [f.name, fmt(f.selfMs, 0), pct(f.selfMs), pct(f.totalMs), f.location, from];
            }),
            ['l', 'r', 'r', 'r', 'l', 'l'],
        ),
    );
    lines.push('', 'Self time by package / file:');
    lines.push(
        textTable(
            ['group', 'self ms', 'self %'],
            summary.groups.slice(0, 20).map((g) => [g.group, fmt(g.selfMs, 0), pct(g.selfMs)]),
        ),
    );
    const own = summary.functions
        .filter((f) => f.group.startsWith('src/'))
        .sort((a, b) => b.totalMs - a.totalMs)
        .slice(0, 15);
    lines.push('', "mailwarden's own functions by total time (callees included):");
    lines.push(
        textTable(
            ['function', 'total %', 'self %', 'where'],
            own.map((f) => [f.name, pct(f.totalMs), pct(f.selfMs), f.location]),
            ['l', 'r', 'r', 'l'],
        ),
    );
    return lines.join('\n');
}

async function main(): Promise<number> {
    const outDir = path.resolve(
        opts.out ??
            path.join(os.tmpdir(), 'mailwarden-bench', startedAt.toISOString().replace(/[:.]/g, '-').slice(0, 19)),
    );
    await mkdir(outDir, { recursive: true });
    const work = await mkdtemp(path.join(os.tmpdir(), 'mailwarden-bench-work-'));
    const env = { machine: machine(), loadavgStart: loadavg() };
    log(
        `mailwarden ${String(env.machine.commit)}${env.machine.dirty ? ' (uncommitted changes)' : ''}, ` +
            `${String(env.machine.cpus)} CPUs, load average ${env.loadavgStart.join(' ')}; results in ${outDir}`,
    );
    if (env.loadavgStart[0]! > Number(env.machine.cpus)) {
        log(
            `note: the machine is busy (load ${env.loadavgStart[0]} on ${String(env.machine.cpus)} CPUs); figures will be lower and noisier`,
        );
    }

    let dns: DnsTestServer | null = null;
    let redisClient: Redis | null = null;
    const windows: WindowResult[] = [];
    const idle: Record<string, number | string>[] = [];
    const notes: string[] = [];
    let mailwarden: Started | null = null;
    /** Each profiled gateway's profiles, in a folder of their own emptied before it starts. */
    const profDirOf = (target: Target): string => path.join(outDir, 'profile', target);
    const profDir = profDirOf('mailwarden');
    let cpuSummary: CpuSummary | null = null;
    let noChecksCpuSummary: CpuSummary | null = null;
    let heapSummary: ReturnType<typeof summariseHeapProfiles> | null = null;
    let corpusInfo: ReturnType<typeof describeCorpus> | null = null;
    /** CPU mailwarden used over its whole life, read just before it is stopped. */
    let mailwardenLifeCpu: { userS: number; systemS: number } | null = null;
    let exitCode = 0;

    try {
        // ---- corpus and DNS
        let t = performance.now();
        const keys = makeKeys();
        const corpusSize = Math.max(opts.messages, opts.warmup, 1);
        const corpus: CorpusMessage[] = await generateCorpus({
            count: corpusSize,
            seed: opts.seed,
            largeShare: opts.largeShare,
            keys,
        });
        corpusInfo = describeCorpus(corpus);
        log(
            `corpus: ${corpusInfo.messages} messages, mean ${(corpusInfo.meanBytes / 1024).toFixed(1)} KB, ` +
                `${corpusInfo.large} of ~100 KB, ${corpusInfo.spoofs} spoofs (${((performance.now() - t) / 1000).toFixed(1)} s)`,
        );
        const wire: PreparedMessage[] = corpus.map((m) => ({
            index: m.index,
            mailFrom: m.mailFrom,
            rcptTo: m.rcptTo,
            wire: toWire(m.raw),
        }));
        dns = await startDnsServer(corpusZone(keys));

        // ---- sink, Redis, pass-through
        const node = process.execPath;
        const sink = await children.spawn('sink', node, [path.join(ROOT, 'scripts/bench/sink.ts')], {
            stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
        });
        const sinkPort = (await waitForMessage<{ type: 'ready'; port: number }>(sink, 'ready', 30_000)).port;
        const redis = await startRedis();
        children.adopt('redis', redis.pid, () => redis.stop());
        redisClient = new Redis(redis.url, { maxRetriesPerRequest: 1, lazyConnect: true });
        await redisClient.connect();

        const ports: Partial<Record<Target, number>> = { direct: sinkPort };
        const roots: Partial<Record<Target, number[]>> = { direct: [] };
        if (opts.targets.includes('passthrough')) {
            const pt = await children.spawn(
                'passthrough',
                node,
                [path.join(ROOT, 'scripts/bench/passthrough.ts'), String(sinkPort)],
                { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] },
            );
            ports.passthrough = (await waitForMessage<{ type: 'ready'; port: number }>(pt, 'ready', 30_000)).port;
            roots.passthrough = [pt.pid];
        }

        // ---- mailwarden, and the same without checks
        const gateways = opts.targets.filter((x) => x === 'mailwarden' || x === 'no-checks');
        if (gateways.length > 0) {
            const rulesDir = path.join(work, 'rules');
            const raised = await prepareRules(path.join(ROOT, 'rules'), rulesDir, opts.limitFactor);
            const configFor = async (target: 'mailwarden' | 'no-checks') => {
                const configFile = path.join(outDir, `${target}.yaml`);
                const configOptions: BenchConfigOptions = {
                    port: await freePort(),
                    sinkPort,
                    dns: dns!.address,
                    redisUrl: redis.url,
                    rulesDir,
                    httpPort: await freePort(),
                    spoolDir: path.join(work, `spool-${target}`),
                    maxClients: Math.max(2000, opts.idle + 4 * opts.concurrency),
                    // the no-checks path is one process: createApp without serve's workers
                    workers: target === 'mailwarden' ? opts.workers : null,
                };
                await writeFile(configFile, benchConfig(configOptions));
                let check = await checkConfig(ROOT, configFile);
                const unknown = check.ok ? [] : unknownOptionalKeys(check.output);
                if (unknown.length > 0) {
                    notes.push(`this checkout does not know the listener key(s) ${unknown.join(', ')}: left out`);
                    await writeFile(configFile, benchConfig({ ...configOptions, without: unknown }));
                    check = await checkConfig(ROOT, configFile);
                }
                if (!check.ok) throw new Error(`mailwarden check refused the bench config:\n${check.output}`);
                return { configFile, port: configOptions.port, httpPort: configOptions.httpPort };
            };
            log(
                `mailwarden: shipped rules with limits ×${opts.limitFactor} (${raised.join(', ')}), Redis, DNS on ${dns.address}`,
            );
            for (const target of gateways) {
                const { configFile, port, httpPort } = await configFor(target);
                const nodeFlags: string[] = [];
                if (opts.profile) {
                    // a folder reused with --out must not mix an earlier run's profiles into this one's
                    const dir = profDirOf(target);
                    await rm(dir, { recursive: true, force: true });
                    await mkdir(dir, { recursive: true });
                    nodeFlags.push('--cpu-prof', `--cpu-prof-dir=${dir}`);
                    if (opts.heapProfile && target === 'mailwarden')
                        nodeFlags.push('--heap-prof', `--heap-prof-dir=${dir}`);
                }
                const args =
                    target === 'mailwarden'
                        ? [...nodeFlags, path.join(ROOT, 'bin/mailwarden.js'), 'serve', '-c', configFile]
                        : [...SERVE_V8_FLAGS, ...nodeFlags, path.join(ROOT, 'scripts/bench/no-checks.ts'), configFile];
                const logFile = await open(path.join(outDir, `${target}.log`), 'w');
                const started = await children.spawn(target, node, args, {
                    cwd: ROOT,
                    stdio: ['ignore', logFile.fd, logFile.fd],
                });
                await logFile.close();
                await waitForHttp(`http://127.0.0.1:${httpPort}/readyz`, started, 60_000);
                ports[target] = port;
                roots[target] = [started.pid];
                if (target === 'mailwarden') mailwarden = started;
            }
        }

        const run = async (target: Target, perConnection: number, sequence: PreparedMessage[]) =>
            runLoad({
                port: ports[target]!,
                helo: CLIENT_HELO,
                messages: sequence,
                concurrency: opts.concurrency,
                perConnection,
                deadline: Math.min(deadline, performance.now() + opts.windowSeconds * 1000),
                replyTimeoutMs: 60_000,
                stop: stopNow,
            });
        const sequence = (offset: number, count: number): PreparedMessage[] =>
            Array.from({ length: count }, (_, k) => wire[(offset + k) % wire.length]!);

        // ---- memory of idle connections, measured on fresh processes (after load, freed heap hides the cost)
        if (opts.idle > 0 && !stopNow()) {
            for (const target of opts.targets.filter((x) => x !== 'direct')) {
                const r = await idleCost(target, ports[target]!, roots[target]!, opts.idle);
                idle.push(r);
                log(
                    `idle ${TARGET_LABEL[target]}: ${r.open} connections open, RSS ${r.rssBeforeMb} → ${r.rssAfterMb} MB, ` +
                        `${r.kbPerConnection} KB per connection`,
                );
            }
        }
        // ---- warm-up (JIT, caches, connection pools), not measured
        if (opts.warmup > 0) {
            for (const target of opts.targets) {
                if (stopNow()) break;
                t = performance.now();
                const r = await run(target, 1, sequence(0, opts.warmup));
                await takeSink(sink);
                log(
                    `warm-up ${TARGET_LABEL[target]}: ${r.outcomes.length} messages in ${((performance.now() - t) / 1000).toFixed(1)} s`,
                );
            }
        }

        // ---- interleaved rounds: each round visits every mode and path, in an order rotated per round
        const rotate = <T>(list: readonly T[], by: number): T[] => list.map((_, i) => list[(i + by) % list.length]!);
        outer: for (let round = 0; round < opts.rounds; round++) {
            for (const perConnection of rotate(opts.perConnection, round)) {
                for (const target of rotate(opts.targets, round)) {
                    if (stopNow()) {
                        notes.push(
                            interrupted
                                ? 'interrupted: the remaining windows were not run'
                                : `time bound (${opts.maxSeconds} s) reached: the remaining windows were not run`,
                        );
                        break outer;
                    }
                    await redisClient.flushall();
                    await redisClient.config('RESETSTAT');
                    await takeSink(sink);
                    const filterMonitor = new TreeMonitor(roots[target] ?? []);
                    const sinkMonitor = new TreeMonitor([sink.pid], 250);
                    const redisMonitor = new TreeMonitor([redis.pid], 250);
                    const cpu0 = process.cpuUsage();
                    filterMonitor.start();
                    sinkMonitor.start();
                    redisMonitor.start();
                    const planned = sequence((round * 7919) % wire.length, opts.messages);
                    const result = await run(target, perConnection, planned);
                    const filter: TreeUsage | null = target === 'direct' ? null : filterMonitor.stop();
                    if (target === 'direct') filterMonitor.stop();
                    const sinkUsage = sinkMonitor.stop();
                    const redisUsage = redisMonitor.stop();
                    const cpu = process.cpuUsage(cpu0);
                    const atSink = await takeSink(sink);
                    const w = evaluateWindow({
                        round,
                        target,
                        perConnection,
                        planned: planned.length,
                        outcomes: result.outcomes,
                        corpus,
                        sinkIds: atSink.ids,
                        sinkConnections: atSink.connections,
                        wallMs: result.wallMs,
                        connections: result.connections,
                        timedOut: result.timedOut,
                        filter,
                        sink: sinkUsage,
                        redis: redisUsage,
                        redisCommands: parseCommandStats(await redisClient.info('commandstats')),
                        clientCpuMs: (cpu.user + cpu.system) / 1000,
                    });
                    windows.push(w);
                    log(
                        `round ${round + 1} ${TARGET_LABEL[target]} ${perConnection}/conn: ${fmt(w.msgsPerS, 0)} msg/s, ` +
                            `p50 ${fmt(w.latencyMs.p50)} ms, p99 ${fmt(w.latencyMs.p99)} ms` +
                            (w.filterCpuMsPerMsg !== null
                                ? `, CPU ${fmt(w.filterCpuMsPerMsg, 2)} ms/msg, RSS ${fmt(w.filterPeakRssMb ?? NaN, 0)} MB`
                                : '') +
                            `, ${w.accepted} accepted, ${w.refused} refused (${w.spoofsRefused}/${w.spoofs} spoofs), ` +
                            `${w.tempfailed + w.errors} other` +
                            (w.failureCount > 0 ? `; ${w.failureCount} VERIFICATION FAILURES` : ''),
                    );
                }
            }
        }
    } catch (e) {
        exitCode = 1;
        console.error(`bench failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
        notes.push(`failed: ${e instanceof Error ? e.message : String(e)}`);
    } finally {
        for (const c of children.list()) {
            const status = c.exitStatus();
            if (status !== null) notes.push(`${c.name} ended before the bench stopped it (${status})`);
        }
        const mwStat = mailwarden && mailwarden.exitStatus() === null ? readStat(mailwarden.pid) : null;
        if (mwStat) {
            const perTick = 1 / clockTicksPerSecond();
            mailwardenLifeCpu = { userS: mwStat.utime * perTick, systemS: mwStat.stime * perTick };
        }
        const mwHwm = mailwarden && mailwarden.exitStatus() === null ? readStatus(mailwarden.pid)?.vmHwmKb : undefined;
        if (mwHwm !== undefined) notes.push(`mailwarden's VmHWM over its whole life: ${(mwHwm / 1024).toFixed(0)} MB`);
        await redisClient?.quit().catch(() => undefined);
        await children.stopAll(opts.profile ? 60_000 : 10_000);
        await dns?.close();
        await rm(work, { recursive: true, force: true });
    }

    // ---- profiles (written by each gateway as it exits)
    if (opts.profile) {
        const cpuOf = async (target: Target): Promise<CpuSummary | null> => {
            const dir = profDirOf(target);
            const files = (await readdir(dir).catch(() => [] as string[])).filter((f) => f.endsWith('.cpuprofile'));
            if (files.length === 0) return null;
            const profiles = await Promise.all(
                files.map(async (f) => JSON.parse(await readFile(path.join(dir, f), 'utf8')) as CpuProfile),
            );
            return summariseCpuProfiles(profiles, ROOT);
        };
        if (opts.targets.includes('mailwarden')) {
            cpuSummary = await cpuOf('mailwarden');
            if (!cpuSummary) notes.push('no CPU profile was written (mailwarden did not exit normally)');
        }
        if (opts.targets.includes('no-checks')) {
            noChecksCpuSummary = await cpuOf('no-checks');
            if (!noChecksCpuSummary)
                notes.push('no CPU profile was written by the no-checks path (it did not exit normally)');
        }
        const files = await readdir(profDir).catch(() => [] as string[]);
        const heapFiles = files.filter((f) => f.endsWith('.heapprofile'));
        if (heapFiles.length > 0) {
            const profiles = await Promise.all(
                heapFiles.map(async (f) => JSON.parse(await readFile(path.join(profDir, f), 'utf8')) as HeapProfile),
            );
            heapSummary = summariseHeapProfiles(profiles, ROOT);
        }
    }

    // ---- report
    const summaries = summarise(windows);
    const ratioList = opts.targets.includes('mailwarden') ? ratios(windows) : [];
    if (
        opts.targets.includes('no-checks') &&
        windows.some((w) => w.target === 'mailwarden' && (w.filterProcesses ?? 1) > 1)
    ) {
        notes.push(
            'mailwarden ran with several workers and the no-checks path in one process: the CPU of the checks is left out (run with --workers 1)',
        );
    }
    const failures = windows.flatMap((w) => w.failures);
    const failureCount = windows.reduce((a, w) => a + w.failureCount, 0);
    const lines: string[] = [];
    lines.push('');
    lines.push(
        `${opts.messages} messages per window, ${opts.concurrency} sessions in parallel, ${opts.rounds} round(s), ` +
            `warm-up ${opts.warmup}; corpus mean ${corpusInfo ? (corpusInfo.meanBytes / 1024).toFixed(1) : '?'} KB, ` +
            `${corpusInfo?.spoofs ?? '?'} spoofs of a DMARC p=reject domain; load average ${env.loadavgStart.join(' ')} → ${loadavg().join(' ')}`,
    );
    lines.push('Cells: median (min–max) over the rounds.', '');
    lines.push(textTable([...TABLE_HEADER], tableRows(summaries)));
    if (ratioList.length > 0) {
        lines.push('', 'mailwarden against the other paths (paired round by round):', '');
        lines.push(textTable([...RATIO_HEADER], ratioRows(ratioList)));
    }
    if (summaries.length > 0) {
        lines.push('', 'CPU ms per message of each process (medians; the bench client includes the DNS server):', '');
        lines.push(textTable([...OTHER_CPU_HEADER], otherCpuRows(summaries)));
    }
    if (idle.length > 0) {
        lines.push(
            '',
            'Idle connections (after EHLO): ' + idle.map((r) => `${r.target} ${r.kbPerConnection} KB each`).join(', '),
        );
    }
    for (const n of notes) lines.push(`note: ${n}`);
    if (cpuSummary) {
        lines.push('', printProfile(cpuSummary, opts.top));
        if (mailwardenLifeCpu) {
            const { userS, systemS } = mailwardenLifeCpu;
            const busyS = cpuSummary.busyMs / 1000;
            lines.push(
                '',
                `Cross-check: mailwarden used ${fmt(userS + systemS, 1)} s of CPU over its life (user ${fmt(userS, 1)} s, ` +
                    `kernel ${fmt(systemS, 1)} s, all threads); the profile counts ${fmt(busyS, 1)} s busy on the main thread.`,
            );
            if (busyS > 1.15 * (userS + systemS)) {
                lines.push(
                    'The profile counts more than the CPU used: the profiler samples wall time, so time spent waiting ' +
                        'for a core on this busy machine is charged to the frame that was running, most often a socket ' +
                        'write that woke another process. Compare the other entries with each other.',
                );
            }
        }
    }
    if (noChecksCpuSummary) {
        lines.push('', 'The path without checks (the proxy alone), profiled the same way:');
        lines.push(printProfile(noChecksCpuSummary, opts.top));
    }
    if (heapSummary) {
        lines.push('', `Heap profile (live at exit, sampled): ${(heapSummary.totalBytes / 1024 ** 2).toFixed(1)} MB`);
        lines.push(
            textTable(
                ['function', 'MB', 'where'],
                heapSummary.sites.slice(0, opts.top).map((s) => [s.name, (s.bytes / 1024 ** 2).toFixed(2), s.location]),
            ),
        );
    }
    if (failureCount > 0) {
        lines.push(
            '',
            `VERIFICATION FAILED: ${failureCount} problem(s), for example:`,
            ...failures.slice(0, 10).map((f) => `  ${f}`),
        );
        exitCode = 1;
    } else if (windows.length > 0) {
        lines.push(
            '',
            opts.targets.includes('mailwarden')
                ? 'Verified: every spoof refused with 5xx by mailwarden, every other message accepted and at the sink; on the other paths every message accepted and at the sink.'
                : 'Verified: every message accepted and at the sink.',
        );
    }
    const complete = windows.length === opts.rounds * opts.perConnection.length * opts.targets.length;
    if (!complete && exitCode === 0) exitCode = 1;
    console.log(lines.join('\n'));

    const results = {
        version: 1,
        startedAt: startedAt.toISOString(),
        finishedAt: new Date().toISOString(),
        durationS: Number(((performance.now() - t0) / 1000).toFixed(1)),
        complete,
        environment: { ...env, loadavgEnd: loadavg() },
        options: opts,
        corpus: corpusInfo,
        summary: summaries,
        ratios: ratioList,
        idle,
        windows,
        notes,
        verification: { ok: failureCount === 0 && complete, failureCount, failures },
        profile: cpuSummary
            ? { ...cpuSummary, functions: cpuSummary.functions.slice(0, 200), dir: profDir, mailwardenLifeCpu }
            : null,
        noChecksProfile: noChecksCpuSummary
            ? {
                  ...noChecksCpuSummary,
                  functions: noChecksCpuSummary.functions.slice(0, 200),
                  dir: profDirOf('no-checks'),
              }
            : null,
        heapProfile: heapSummary ? { ...heapSummary, sites: heapSummary.sites.slice(0, 200) } : null,
    };
    await writeFile(path.join(outDir, 'results.json'), JSON.stringify(results, null, 2) + '\n');
    await writeFile(
        path.join(outDir, 'summary.md'),
        [
            markdownTable([...TABLE_HEADER], tableRows(summaries)),
            '',
            ratioList.length > 0 ? markdownTable([...RATIO_HEADER], ratioRows(ratioList)) : '',
            '',
            markdownTable([...OTHER_CPU_HEADER], otherCpuRows(summaries)),
            '',
        ].join('\n'),
    );
    console.log(
        `\nResults: ${path.join(outDir, 'results.json')} (summary.md, and each gateway's .log and .yaml beside it)`,
    );
    return exitCode;
}

process.exitCode = await main();
