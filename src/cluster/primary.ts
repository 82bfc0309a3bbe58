/**
 * The primary of several processes (`workers` > 1, node:cluster): forks the workers, which run
 * the listeners on shared ports (the primary accepts and hands each connection to the next
 * worker), serves the HTTP endpoint for all of them (/metrics: every worker's metrics summed,
 * with the primary's own, the primary's start time as the process's and the event-loop lag of
 * the slowest process; /readyz: ready when every worker is), passes SIGHUP, SIGTERM, SIGINT and
 * SIGUSR2 on to every worker and exits when they have drained: 1 when a worker ended otherwise
 * than as asked (killed after the drain's bound, or by anyone else, a crash: its sessions are
 * lost, and that is logged at error and counted), else 0 (75 after SIGUSR2); a worker not yet
 * ready had no session, and the signal the primary received (Ctrl-C reaches the whole process
 * group) counts as asked. A worker that ends unexpectedly is logged, counted
 * (mailwarden_worker_restarts_total) and replaced; the others and their sessions are not
 * touched. The replacement reads the config file as it is on disk:
 * when it does not validate, the primary logs its FILE:LINE:COL lines (at error) and sets
 * mailwarden_config_invalid, since that worker will refuse it and end if it is still invalid
 * when it starts (with every worker ended so, nothing serves while the primary itself still
 * answers /metrics: mailwarden_workers is 0); a replacement that becomes ready validated the
 * file, and the gauge goes back to 0.
 * The primary holds no session, runs no check and never reads a message: everything SMTP
 * happens in the workers.
 */
import cluster, { type Worker } from 'node:cluster';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { availableParallelism } from 'node:os';
import { AggregatorRegistry } from 'prom-client';
import { configAfterReload, diffConfig } from '../config/reload.ts';
import type { Config } from '../config/types.ts';
import { stopBoundMs } from '../drain.ts';
import { createHttpServer } from '../http.ts';
import type { Logger } from '../log.ts';
import { PRIMARY_ONLY_METRICS, WORKER_ONLY_METRICS, WORST_PROCESS_METRICS, type Metrics } from '../metrics.ts';
import { isAnswer, type Answer, type WorkerMetrics } from './protocol.ts';

/** The processes `workers` asks for: `auto` is one per core with Redis, one with the in-memory store. */
export function workerCount(config: Pick<Config, 'workers' | 'redis'>, cores = availableParallelism()): number {
    if (config.workers !== 'auto') return config.workers;
    return config.redis ? cores : 1;
}

/** Longest wait for a worker to answer a /metrics or /readyz question. */
const ASK_TIMEOUT_MS = 5000;
/** A worker that lived less than this before ending is started again after a growing pause. */
const SHORT_LIFE_MS = 10_000;
const MAX_RESTART_DELAY_MS = 30_000;
/**
 * Margin after the workers' own bound (shutdownTimeout, then upstream.dataTimeout for the answers
 * to ends of data already sent, then the Redis QUIT: stopBoundMs in src/drain.ts) before the
 * primary kills what is left (or a worker whose primary is gone ends itself:
 * src/cluster/worker.ts); it covers App.stop's fixed graces (two of 1 s, an upstream QUIT of 2 s).
 */
export const DRAIN_MARGIN_MS = 5000;
/**
 * A signal sent to the whole process group (Ctrl-C in a terminal; a service manager's stop, as
 * systemd's default KillMode=control-group) ends a worker still starting, which holds no handler
 * yet, and that end can reach the primary before the primary's own copy of the signal: such an
 * end is judged this much later, once the primary's copy started the drain.
 */
const GROUP_SIGNAL_GRACE_MS = 100;
const byGroupSignal = (signal: string | null): boolean => signal === 'SIGINT' || signal === 'SIGTERM';

export interface PrimaryOptions {
    readonly config: Config;
    readonly count: number;
    readonly log: Logger;
    readonly metrics: Metrics;
    /**
     * Re-reads the config file (SIGHUP, a worker to replace), for the drain bound; null when there
     * is no file; throws (a ConfigError: its message is the FILE:LINE:COL lines) when it is invalid.
     */
    readonly reloadConfig: () => Config | null;
    /** Ends the process with this status (process.exit in serve). */
    readonly exit: (code: number) => void;
}

interface Slot {
    readonly worker: Worker;
    readonly startedAt: number;
    ready: boolean;
    /** A SIGHUP came while the worker was starting: it is passed on once the worker is ready. */
    reloadPending: boolean;
    /** The worker's last answer to a metrics question, counted while it does not answer and after it ended. */
    lastMetrics: WorkerMetrics | null;
    /** The signal the primary sent it to stop (drain, or kill after the drain's bound). */
    stopSignal: NodeJS.Signals | null;
    /** How many times the primary had read the config file when it forked this worker. */
    readsAtFork: number;
}

type Pending = (answer: Answer | null) => void;

/** Why a worker ended, as the metric's reason label. */
function endReason(code: number | null, signal: string | null): 'signal' | 'error' | 'exit' {
    if (signal) return 'signal';
    return code === 0 ? 'exit' : 'error';
}

/**
 * Starts the workers and the HTTP endpoint. Resolves with -1 while serving (the process lives
 * on and exit() is called after the drain) or with 1 when the start failed (every worker
 * started is stopped first; a worker that cannot start says why on stderr itself).
 */
export async function runPrimary(o: PrimaryOptions): Promise<number> {
    const { count, log, metrics } = o;
    let config = o.config;
    const slots = new Map<number, Slot>();
    const pending = new Map<number, Pending>();
    let nextQuestion = 1;
    let serving = false;
    /** The drain under way: `signal` is the one the primary received (null: a failed start). */
    let stopping: { restart: boolean; signal: NodeJS.Signals | null } | null = null;
    let failed = false;
    let shortLives = 0;
    const restartTimers = new Set<NodeJS.Timeout>();
    let http: Server | null = null;
    /** How many times the primary read the config file (readFile). */
    let fileReads = 0;

    const readyCount = (): number => [...slots.values()].filter((s) => s.ready).length;
    const updateGauge = (): void => metrics.workers.set(readyCount());

    cluster.on('message', (worker, m: unknown) => {
        if (!isAnswer(m)) return;
        if (m.mailwarden === 'ready') {
            const slot = slots.get(worker.id);
            if (!slot || slot.ready) return;
            slot.ready = true;
            updateGauge();
            // it validated the file as it read it when it started: what the primary read last
            // (unless it read the file again since, a reload) was fixed before that
            if (slot.readsAtFork === fileReads) metrics.configInvalid.set(0);
            log.info(
                { worker: worker.id, pid: worker.process.pid, ready: readyCount(), workers: count },
                'worker ready',
            );
            if (slot.reloadPending && !stopping) {
                // it read the files before the SIGHUP that came while it started
                slot.reloadPending = false;
                worker.process.kill('SIGHUP');
            }
            return;
        }
        const answer = pending.get(m.id);
        if (answer) {
            pending.delete(m.id);
            answer(m);
        }
    });

    /** Asks one worker; resolves with null when it does not answer in time. */
    const ask = (slot: Slot, what: 'metrics' | 'readiness'): Promise<Answer | null> =>
        new Promise((resolve) => {
            const id = nextQuestion++;
            const timer = setTimeout(() => {
                pending.delete(id);
                resolve(null);
            }, ASK_TIMEOUT_MS);
            pending.set(id, (a) => {
                clearTimeout(timer);
                resolve(a);
            });
            try {
                slot.worker.send({ mailwarden: what, id });
            } catch {
                pending.delete(id);
                clearTimeout(timer);
                resolve(null);
            }
        });

    const fork = (): Slot => {
        const worker = cluster.fork();
        const slot: Slot = {
            worker,
            startedAt: Date.now(),
            ready: false,
            reloadPending: false,
            lastMetrics: null,
            stopSignal: null,
            readsAtFork: fileReads,
        };
        slots.set(worker.id, slot);
        return slot;
    };

    /** Resolves when the slot's worker is ready; rejects with its exit status when it ends first. */
    const whenReady = (slot: Slot): Promise<void> =>
        new Promise((resolve, reject) => {
            if (slot.ready) return resolve();
            const onMessage = (m: unknown): void => {
                if (isAnswer(m) && m.mailwarden === 'ready') {
                    done();
                    resolve();
                }
            };
            const onExit = (code: number | null, signal: string | null): void => {
                done();
                const fail = (): void =>
                    reject(new Error(signal ? `worker ended by ${signal}` : `worker exited with status ${code}`));
                // a stop, not a failed start, when it is the primary's signal too
                if (!stopping && byGroupSignal(signal)) setTimeout(fail, GROUP_SIGNAL_GRACE_MS);
                else fail();
            };
            const done = (): void => {
                slot.worker.off('message', onMessage);
                slot.worker.off('exit', onExit);
            };
            slot.worker.on('message', onMessage);
            slot.worker.once('exit', onExit);
        });

    /**
     * The config file as it is on disk, or its issues (the FILE:LINE:COL lines) when it does not
     * validate. mailwarden_config_invalid follows each read, and goes back to 0 when a worker
     * forked after the last read is ready, having validated the file itself (the workers' own
     * reloads set theirs; the sum takes the highest).
     */
    const readFile = (): { config: Config | null; issues: string[] | null } => {
        fileReads++;
        let result: { config: Config | null; issues: string[] | null };
        try {
            result = { config: o.reloadConfig(), issues: null };
        } catch (err) {
            result = { config: null, issues: (err instanceof Error ? err.message : String(err)).split('\n') };
        }
        metrics.configInvalid.set(result.issues ? 1 : 0);
        return result;
    };
    /** The longest drain bound of a replacement worker, which reads the file as it is when it starts. */
    let replacementBoundMs = 0;
    const replace = (): void => {
        const delay = shortLives === 0 ? 0 : Math.min(MAX_RESTART_DELAY_MS, 500 * 2 ** shortLives);
        const timer = setTimeout(() => {
            restartTimers.delete(timer);
            if (stopping) return;
            const onDisk = readFile();
            if (onDisk.config) replacementBoundMs = Math.max(replacementBoundMs, stopBoundMs(onDisk.config));
            if (onDisk.issues) {
                // the new worker reads this file and exits at once: say why here, where it is
                // structured, and go on trying (with the growing pause) until the file is fixed
                log.error(
                    { file: config.source, issues: onDisk.issues, ready: readyCount(), workers: count },
                    'the config file on disk is invalid: the worker started in place of the one that ended will refuse it if it is still invalid when it starts; fix the file',
                );
            }
            const slot = fork();
            log.info(
                { worker: slot.worker.id, pid: slot.worker.process.pid },
                'starting a worker in place of the one that ended',
            );
        }, delay);
        restartTimers.add(timer);
    };

    let allGone: () => void = () => undefined;
    const gone = new Promise<void>((resolve) => (allGone = resolve));
    cluster.on('exit', (worker, code, signal) => {
        const slot = slots.get(worker.id);
        // judged once the primary's own copy of a group signal had its effect (a drain); the slot
        // stays meanwhile, so that drain waits for it
        if (!stopping && slot && !slot.ready && byGroupSignal(signal)) {
            setTimeout(() => workerEnded(worker, code, signal), GROUP_SIGNAL_GRACE_MS);
        } else workerEnded(worker, code, signal);
    });
    const workerEnded = (worker: Worker, code: number, signal: string | null): void => {
        const slot = slots.get(worker.id);
        slots.delete(worker.id);
        updateGauge();
        if (slot?.lastMetrics) retire(slot.lastMetrics);
        // answers this worker owed will not come: their waits time out on their own
        if (stopping) {
            // only an end the primary asked for: the status of the drain it asked for, or the
            // signal it sent (to a worker killed after the drain's bound, logged already) or
            // received itself (sent to the whole process group, as Ctrl-C does: it ends a worker
            // still starting, which holds no handler yet); a worker not yet ready had no session
            // to lose; anything else (the OOM killer, a crash) cut that worker's sessions short
            const asked =
                (slot !== undefined && !slot.ready) ||
                code === (stopping.restart ? 75 : 0) ||
                (signal !== null && (signal === slot?.stopSignal || signal === stopping.signal));
            if (!asked) failed = true;
            // a start that failed has said so already
            if (asked || !serving) {
                log.info(
                    { worker: worker.id, pid: worker.process.pid, code, signal, left: slots.size },
                    'worker stopped',
                );
            } else {
                const reason = endReason(code, signal);
                metrics.workerRestarts.inc({ reason });
                log.error(
                    { worker: worker.id, pid: worker.process.pid, code, signal, reason, left: slots.size },
                    'worker ended during the drain; its sessions are lost (a message whose end of data the upstream had may arrive twice, unlogged) and its spool files stay until the next start',
                );
            }
            if (slots.size === 0) allGone();
            return;
        }
        if (!serving) return; // the start handles it
        const reason = endReason(code, signal);
        metrics.workerRestarts.inc({ reason });
        const lived = slot ? Date.now() - slot.startedAt : 0;
        shortLives = lived < SHORT_LIFE_MS ? shortLives + 1 : 0;
        log.error(
            { worker: worker.id, pid: worker.process.pid, code, signal, reason, livedMs: lived, workers: count },
            'worker ended unexpectedly; its sessions are lost, the other workers go on; starting another',
        );
        replace();
    };

    const stopWith = (slot: Slot, signal: NodeJS.Signals): void => {
        slot.stopSignal = signal;
        slot.worker.process.kill(signal);
    };
    const stop = (signal: NodeJS.Signals): void => {
        if (stopping) return;
        const restart = signal === 'SIGUSR2';
        stopping = { restart, signal };
        for (const t of restartTimers) clearTimeout(t);
        restartTimers.clear();
        log.info({ signal, restart, workers: slots.size }, 'signal received; draining every worker');
        for (const slot of slots.values()) stopWith(slot, restart ? 'SIGUSR2' : 'SIGTERM');
        const killAfterMs = Math.max(stopBoundMs(config), replacementBoundMs) + DRAIN_MARGIN_MS;
        const killer = setTimeout(() => {
            for (const slot of slots.values()) {
                log.error(
                    { worker: slot.worker.id, pid: slot.worker.process.pid },
                    'worker did not end after the drain; killing it',
                );
                failed = true;
                stopWith(slot, 'SIGKILL');
            }
        }, killAfterMs);
        killer.unref();
        if (slots.size === 0) allGone();
        void gone.then(async () => {
            clearTimeout(killer);
            if (http) {
                const server = http;
                await new Promise<void>((resolve) => {
                    server.close(() => resolve());
                    server.closeAllConnections();
                });
            }
            log.info({ restart }, 'stopped');
            o.exit(failed ? 1 : restart ? 75 : 0);
        });
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
    process.on('SIGUSR2', () => stop('SIGUSR2'));
    process.on('SIGHUP', () => {
        if (stopping) return;
        // an invalid file: each worker logs why (reload failed)
        const next = readFile().config;
        // as the workers do: live keys from the file, keys that need a restart as they started
        // (the drain bound reads upstream.dataTimeout and shutdownTimeout)
        if (next) config = configAfterReload(config, next, diffConfig(config, next));
        // a worker still starting gets it once it is ready (a SIGHUP before its handler would end it)
        const ready = [...slots.values()].filter((s) => s.ready);
        for (const slot of slots.values()) if (!slot.ready) slot.reloadPending = true;
        log.info(
            { signal: 'SIGHUP', workers: ready.length, starting: slots.size - ready.length },
            'reload requested; passed to every worker',
        );
        for (const slot of ready) slot.worker.process.kill('SIGHUP');
    });

    const readiness = async (): Promise<string | null> => {
        if (stopping) return 'shutting down';
        const ready = [...slots.values()].filter((s) => s.ready);
        if (!serving || ready.length < count) return `${ready.length} of ${count} workers ready`;
        const answers = await Promise.all(ready.map((s) => ask(s, 'readiness')));
        for (let i = 0; i < ready.length; i++) {
            const a = answers[i];
            const reason = a && a.mailwarden === 'readiness' ? a.reason : 'not answering';
            if (reason !== null) return `worker ${ready[i]!.worker.id}: ${reason}`;
        }
        return null;
    };
    /** A metric of one process that the sum takes from the worst process instead (metrics.ts). */
    const worstOf = <M extends WorkerMetrics[number]>(m: M): M =>
        WORST_PROCESS_METRICS.has(m.name) ? { ...m, aggregator: 'max' } : m;
    /**
     * The counters and histograms of workers that ended, as last read, summed: added to every
     * later scrape, so a sum never goes back when a worker ends (Prometheus would read the drop
     * as a reset and count the survivors' whole totals again). Gauges of an ended worker go.
     */
    let retired: WorkerMetrics[] = [];
    const retire = (last: WorkerMetrics): void => {
        retired.push(last.filter((m) => ['counter', 'histogram'].includes(String(m.type))));
    };
    const scrape = async (): Promise<string> => {
        const ready = [...slots.values()].filter((s) => s.ready);
        const answers = await Promise.all(ready.map((s) => ask(s, 'metrics')));
        const own = await metrics.registry.getMetricsAsJSON();
        const parts: WorkerMetrics[] = [
            own
                .filter((m) => !WORKER_ONLY_METRICS.has(m.name))
                // the primary's alone (no worker gives one): kept, where prom-client would leave it out
                .map((m) => (PRIMARY_ONLY_METRICS.has(m.name) ? { ...m, aggregator: 'first' as const } : worstOf(m))),
        ];
        ready.forEach((slot, i) => {
            // a worker that ended while this scrape waited is in `retired` already
            if (slots.get(slot.worker.id) !== slot) return;
            const a = answers[i];
            // a worker that does not answer in time counts with what it said last
            if (a && a.mailwarden === 'metrics') {
                slot.lastMetrics = a.metrics.filter((m) => !PRIMARY_ONLY_METRICS.has(m.name)).map(worstOf);
            }
            if (slot.lastMetrics) parts.push(slot.lastMetrics);
        });
        // kept as one sum, however many workers ended
        if (retired.length > 1) retired = [await AggregatorRegistry.aggregate(retired).getMetricsAsJSON()];
        parts.push(...retired);
        return AggregatorRegistry.aggregate(parts).metrics();
    };
    /** Scrapes asked for while one is under way share its answer (each asks every worker). */
    let scraping: Promise<string> | null = null;
    const aggregated = {
        registry: {
            contentType: metrics.registry.contentType,
            metrics: (): Promise<string> => {
                scraping ??= scrape().finally(() => (scraping = null));
                return scraping;
            },
        },
    };

    // One worker first: a config, rule or users file it refuses is said once, not once per worker.
    try {
        const first = fork();
        await whenReady(first);
        if (!stopping) await Promise.all(Array.from({ length: count - 1 }, () => whenReady(fork())));
        if (config.http && !stopping) {
            const h = config.http;
            const server = createHttpServer({ metrics: aggregated, readiness });
            http = server;
            await new Promise<void>((resolve, reject) => {
                server.once('error', reject);
                server.listen(h.port, h.host, () => {
                    server.removeListener('error', reject);
                    resolve();
                });
            });
            log.info({ host: h.host, port: (server.address() as AddressInfo).port }, 'http endpoint listening');
        }
    } catch (err) {
        if (stopping) return -1;
        log.error({ err: err instanceof Error ? err.message : String(err) }, 'start failed; stopping the workers');
        stopping = { restart: false, signal: null };
        for (const slot of slots.values()) stopWith(slot, 'SIGTERM');
        if (slots.size > 0) await gone;
        http?.close();
        return 1;
    }
    serving = true;
    log.info({ workers: count, pids: [...slots.values()].map((s) => s.worker.process.pid) }, 'workers started');
    return -1;
}
