/**
 * Runs sender authentication (verify-message.ts: mailauth's SPF, DKIM, ARC and DMARC) in a worker
 * thread, so that a check's timeout stops the work and not only the wait for it. A timer cannot
 * interrupt synchronous code: a message that sends one of mailauth's parsers into seconds of
 * work (mailauth-bounds.ts bounds those found) would hold every connection of the process until
 * it finished. In a thread it holds only that thread, and when a check ends (timeout or failure)
 * while its thread does not answer the cancel within STALL_GRACE_MS, the thread is terminated
 * and a new one started for the next message (`mailwarden_auth_thread_restarts_total`).
 *
 * The main thread keeps everything else: it reads and plans the verification copy
 * (verification-copy.ts, verification-stream.ts) and sends its pieces, a few at a time; it
 * answers each DNS query of the thread through the message's own resolver (budget, cache,
 * timeout: dns/scoped.ts); it decides (mailauth.ts). Other verifications in the terminated thread
 * end with `ThreadRestarted`, which the check runs again once in the new thread.
 *
 * It must not decide anything, must not keep a job after it ended, and must never leave a
 * verification without an answer: every job settles (result, error, or ThreadRestarted).
 */
import type { Readable } from 'node:stream';
import { Worker } from 'node:worker_threads';
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics.ts';
import type { DnsResolve } from '../dns/scoped.ts';
import type { VerifiedMessage, VerifyOptions } from './verify-message.ts';
import { fromWireError, toWireError, type FromThread, type ToThread } from './verify-wire.ts';

/** Time a thread has to answer a cancel before it counts as stuck in synchronous work. */
export const STALL_GRACE_MS = 1000;
/** Pieces of a message sent to the thread and not yet taken in, at most. */
export const PIECES_IN_FLIGHT = 4;
/** The thread's heap limit: a verification holds at most a 4 MiB header section and its parse. */
export const THREAD_HEAP_MB = 192;

/**
 * A verification lost with its thread. `rerun` is true when the thread was stopped for another
 * verification that held it (that one is known and ended, so this one may run again); false
 * when the thread crashed or ran out of memory, which any of its verifications may have caused,
 * and running them again could crash the next thread the same way.
 */
export class ThreadRestarted extends Error {
    readonly rerun: boolean;
    constructor(why: string, rerun = false) {
        super(`sender authentication thread ${why}`);
        this.name = 'ThreadRestarted';
        this.rerun = rerun;
    }
}

export interface VerifyThreadOptions {
    readonly log?: Pick<Logger, 'warn' | 'error'>;
    readonly metrics?: Pick<Metrics, 'authThreadRestarts'>;
    /** Overrides STALL_GRACE_MS (tests). */
    readonly graceMs?: number;
    /** The thread's entry module; verify-thread-entry.js unless a test gives one that misbehaves on purpose. */
    readonly entry?: URL;
}

export interface VerifyThread {
    /**
     * Verifies the copy read from `input` in the thread; DNS queries go to `resolver`. When
     * `signal` aborts, the thread is told to stop (and terminated if it does not answer) and the
     * promise rejects with the signal's reason.
     */
    verify(
        input: Readable,
        opts: VerifyOptions,
        resolver: DnsResolve,
        signal: AbortSignal,
        session: string,
    ): Promise<VerifiedMessage>;
    /** Verifications in progress (tests, metrics). */
    readonly active: number;
    /** Stops the thread; verifications in progress end with ThreadRestarted. */
    close(): Promise<void>;
}

interface Job {
    readonly session: string;
    readonly resolver: DnsResolve;
    readonly input: Readable;
    credits: number;
    wake: (() => void) | null;
    settle(err: Error | null, result?: VerifiedMessage): void;
}

const ENTRY = new URL('./verify-thread-entry.js', import.meta.url);
const OWN_MODULES = new URL('../../bin/own-modules.js', import.meta.url).href;

export function createVerifyThread(opts: VerifyThreadOptions = {}): VerifyThread {
    const graceMs = opts.graceMs ?? STALL_GRACE_MS;
    let worker: Worker | null = null;
    let nextJob = 1;
    let closed = false;
    const jobs = new Map<number, Job>();
    /** Threads that loaded their modules and read messages; for the others, a stall counts from then. */
    const ready = new WeakMap<Worker, boolean>();
    const readyWaiters = new WeakMap<Worker, (() => void)[]>();

    /** Ends every job the thread `w` had, and forgets `w`. */
    function lose(w: Worker, why: string, rerun = false): void {
        if (worker !== w) return;
        worker = null;
        ready.delete(w);
        const lost = [...jobs.values()];
        jobs.clear();
        for (const job of lost) job.settle(new ThreadRestarted(why, rerun));
    }

    function spawn(): Worker {
        // the launcher's module hooks (bin/own-modules.js) are needed in the thread too when the main thread has them
        const ownModules = (globalThis as Record<symbol, unknown>)[Symbol.for('mailwarden.modules')] !== undefined;
        const w = new Worker(opts.entry ?? ENTRY, {
            workerData: ownModules ? { ownModules: OWN_MODULES } : {},
            resourceLimits: { maxOldGenerationSizeMb: THREAD_HEAP_MB },
            stdout: false,
            stderr: false,
        });
        // the thread never keeps the process alive: a stop closes it, and an idle one has no work
        w.unref();
        w.on('message', (m: FromThread) => onMessage(w, m));
        w.on('error', (err: Error) => {
            if (worker !== w) return;
            opts.metrics?.authThreadRestarts.inc({ reason: 'failed' });
            opts.log?.error({ err }, 'sender authentication thread failed; a new one starts with the next message');
            lose(w, `failed: ${err.message}`);
        });
        w.on('exit', (code) => {
            if (worker !== w) return;
            opts.metrics?.authThreadRestarts.inc({ reason: 'failed' });
            opts.log?.error({ code }, 'sender authentication thread exited; a new one starts with the next message');
            lose(w, `exited with code ${code}`);
        });
        return w;
    }

    function send(w: Worker, message: ToThread, transfer?: ArrayBuffer[]): void {
        if (worker === w) w.postMessage(message, transfer);
    }

    function onMessage(w: Worker, m: FromThread): void {
        if (worker !== w) return;
        if (m.t === 'ready') {
            ready.set(w, true);
            for (const wake of readyWaiters.get(w) ?? []) wake();
            readyWaiters.delete(w);
            return;
        }
        const job = jobs.get(m.job);
        if (!job) return;
        switch (m.t) {
            case 'dns':
                job.resolver(m.name, m.rrtype).then(
                    (value) => {
                        if (jobs.get(m.job) === job) send(w, { t: 'answer', job: m.job, q: m.q, value });
                    },
                    (err: unknown) => {
                        if (jobs.get(m.job) === job) {
                            send(w, { t: 'answer', job: m.job, q: m.q, error: toWireError(err) });
                        }
                    },
                );
                return;
            case 'taken':
                job.credits++;
                job.wake?.();
                return;
            case 'done':
                jobs.delete(m.job);
                job.settle(null, m.result);
                return;
            case 'failed':
                jobs.delete(m.job);
                job.settle(fromWireError(m.error));
                return;
            case 'cancelled':
                return;
        }
    }

    /** Sends the pieces of `input` as the thread takes them in, then the end. */
    async function feed(w: Worker, id: number, job: Job): Promise<void> {
        const live = (): boolean => worker === w && jobs.get(id) === job;
        for await (const piece of job.input as AsyncIterable<Buffer>) {
            while (job.credits === 0 && live()) await new Promise<void>((resolve) => (job.wake = resolve));
            job.wake = null;
            if (!live()) return;
            job.credits--;
            // a copy of exactly these bytes, moved to the thread: a clone of a view would copy its whole buffer
            const bytes = new Uint8Array(piece);
            send(w, { t: 'piece', job: id, bytes }, [bytes.buffer]);
        }
        if (live()) send(w, { t: 'end', job: id });
    }

    /** The check ended before the verification: stop it, and the thread if it does not answer. */
    function cancel(w: Worker, id: number, job: Job): void {
        if (jobs.get(id) !== job) return;
        jobs.delete(id);
        send(w, { t: 'cancel', job: id });
        if (worker !== w) return;
        let answered = false;
        const onAnswer = (m: FromThread): void => {
            if (m.t === 'cancelled' && m.job === id) answered = true;
        };
        w.on('message', onAnswer);
        const watch = (): void => {
            const timer = setTimeout(() => {
                w.off('message', onAnswer);
                if (answered || worker !== w) return;
                opts.metrics?.authThreadRestarts.inc({ reason: 'stalled' });
                opts.log?.warn(
                    { session: job.session, graceMs, verifications: jobs.size },
                    'sender authentication thread stopped: still busy after its check ended; a new one starts with the next message',
                );
                lose(w, 'stopped: another verification held it past its check', true);
                void w.terminate();
            }, graceMs);
            timer.unref();
        };
        // a thread still loading its modules is not stuck: the grace counts from when it is up
        if (ready.get(w)) watch();
        else readyWaiters.set(w, [...(readyWaiters.get(w) ?? []), watch]);
    }

    return {
        verify(input, wireOpts, resolver, signal, session) {
            if (closed) return Promise.reject(new ThreadRestarted('closed'));
            if (signal.aborted) return Promise.reject(signal.reason as Error);
            const w = worker ?? (worker = spawn());
            const id = nextJob++;
            return new Promise<VerifiedMessage>((resolve, reject) => {
                const onAbort = (): void => {
                    cancel(w, id, job);
                    job.settle(signal.reason instanceof Error ? signal.reason : new Error('verification ended'));
                };
                let settled = false;
                const job: Job = {
                    session,
                    resolver,
                    input,
                    credits: PIECES_IN_FLIGHT,
                    wake: null,
                    settle(err, result) {
                        if (settled) return;
                        settled = true;
                        signal.removeEventListener('abort', onAbort);
                        job.wake?.();
                        if (!input.destroyed) input.destroy();
                        if (err) reject(err);
                        else resolve(result!);
                    },
                };
                jobs.set(id, job);
                signal.addEventListener('abort', onAbort, { once: true });
                send(w, { t: 'start', job: id, opts: wireOpts });
                feed(w, id, job).catch((err: unknown) => {
                    // the copy could not be read (the message stream failed): the verification fails with it
                    cancel(w, id, job);
                    job.settle(err instanceof Error ? err : new Error(String(err)));
                });
            });
        },
        get active() {
            return jobs.size;
        },
        async close() {
            closed = true;
            const w = worker;
            if (!w) return;
            lose(w, 'closed');
            await w.terminate();
        },
    };
}
