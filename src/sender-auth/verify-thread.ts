/**
 * Runs sender authentication (verify-message.ts: mailauth's SPF, DKIM, ARC and DMARC) in a worker
 * thread, so that a check's timeout stops the work and not only the wait for it. A timer cannot
 * interrupt synchronous code: a message that sends one of mailauth's parsers into seconds of
 * work (mailauth-bounds.ts bounds those found) would hold every connection of the process until
 * it finished. In a thread it holds only that thread, which is terminated and replaced
 * (`mailwarden_auth_thread_restarts_total`) as soon as it is seen stuck:
 *
 * - it does not answer a ping within STALL_MS (pinged every PING_MS while it has work; no
 *   verification step of a bounded message takes a tenth of that), or
 * - a check ended (its timeout) and the thread does not answer the cancel within STALL_GRACE_MS.
 *
 * The thread writes the job it is working for into shared memory before each step, so the
 * verification that held it is known: it ends with ThreadRestarted (`rerun` false) and the
 * check's failure verdict (451); the others it held end with ThreadRestarted (`rerun` true) and
 * the check runs them once more in the new thread. A thread that crashes or reaches its heap
 * limit ends all its verifications (`rerun` false: any of them may have caused it).
 *
 * The main thread keeps everything else: it reads and plans the verification copy
 * (verification-copy.ts, verification-stream.ts) and sends its pieces, a few at a time; it
 * answers each DNS query of the thread through the message's own resolver (budget, cache,
 * timeout: dns/scoped.ts); it decides (mailauth.ts).
 *
 * It must not decide anything, must not keep a job after it ended, and must never leave a
 * verification without an answer: every job settles (result, error, or ThreadRestarted).
 */
import type { Readable } from 'node:stream';
import { setFlagsFromString } from 'node:v8';
import { Worker } from 'node:worker_threads';
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics.ts';
import type { Resolver } from '../dns/resolver.ts';
import { isBytesRefusal, type DmarcReserve, type Tally } from '../dns/scoped.ts';
import type { VerifiedMessage, VerifyOptions } from './verify-message.ts';
import {
    BYTES_EXHAUSTED_SLOT,
    BYTES_SLOT,
    COPY_TYPES,
    dnsCounts,
    EXHAUSTED_SLOT,
    fromWireError,
    toWireError,
    type DnsTerms,
    type FromThread,
    type ToThread,
} from './verify-wire.ts';

/** Time a thread has to answer a cancel before it counts as stuck in synchronous work. */
export const STALL_GRACE_MS = 1000;
/** Time a thread with work has to answer a ping before it counts as stuck. */
export const STALL_MS = 2000;
/** How often a thread with work is pinged. */
export const PING_MS = 250;
/** Pieces of a message sent to the thread and not yet taken in, at most. */
export const PIECES_IN_FLIGHT = 4;
/**
 * Bytes of a message sent and not yet taken in, at most, unless a single piece is larger (a body
 * line up to 1 MiB goes whole): a few of the usual 16 KiB pieces.
 */
export const BYTES_IN_FLIGHT = 64 * 1024;
/** The thread's heap limit: a verification holds at most a 4 MiB header section and its parse. */
export const THREAD_HEAP_MB = 192;
/**
 * The DNS answers the thread's verifications hold together. Each message's answers are held to its
 * own byte budget (1 MiB, dns/scoped.ts MESSAGE_ANSWER_BYTES), but the thread takes every message
 * in verification at once: 200 messages that each held nearly their full budget (an SPF record of
 * `a` terms whose names answer 4,000 addresses, then a name the sender's server answers slowly)
 * took its heap to 179 MB; with 300 it answered no ping for 2 s and was stopped, and every
 * verification with it. So what the jobs in progress hold together is held to `total`, and the
 * part of it beyond the first `share` bytes of each job (and DMARC's reserve, dns/scoped.ts) to
 * `beyondShares`; a job's answer that would pass either is refused as one past its own budget
 * (temperror, never a pass). An ordinary message's answers come to a few KB: they stay within its
 * share, which messages that hold more cannot take (`total` - `beyondShares` is left for the
 * shares: a thousand messages' at once). A bound on the jobs the thread takes at once would
 * instead hold every message back behind a few that wait on a DNS server that does not answer,
 * holding nothing.
 */
export const ANSWER_BYTES = { share: 32 * 1024, beyondShares: 64 * 1024 * 1024, total: 96 * 1024 * 1024 } as const;
/**
 * The thread's young generation in MB (V8 makes each of its two semi-spaces a third of it, at
 * least 1 MB): a verification's garbage is a few hundred KB, collected at little cost, so the
 * thread does not need the main thread's 2 × 4 MB (bin/mailwarden.js).
 */
export const THREAD_YOUNG_MB = 3;

/**
 * A verification lost with its thread. `rerun` is true when the thread was stopped for another
 * verification that held it (that one is known, so this one may run again); false for the one
 * that held it, and when the thread crashed or ran out of memory, which any of its verifications
 * may have caused (running them again could crash the next thread the same way).
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
    /** Overrides STALL_MS (tests). */
    readonly stallMs?: number;
    /** The thread's entry module; verify-thread-entry.js unless a test gives one that misbehaves on purpose. */
    readonly entry?: URL;
    /** Overrides ANSWER_BYTES (tests). */
    readonly answerBytes?: { readonly share: number; readonly beyondShares: number; readonly total: number };
}

/** Answers a DNS query of the thread; `dmarc`: DMARC's (dns/scoped.ts ScopedResolver.resolveAdmitted). */
export type ThreadResolve = (name: string, rrtype: string, dmarc: boolean) => Promise<unknown>;

/**
 * The message's DNS budgets and the cache behind its resolver, for the thread's copy of the
 * answers: the thread answers a question again from its copy while the main thread's cache
 * would (until the expiry the answer came with), counts it against the same budgets and refuses
 * past them as dns/scoped.ts does (the bytes of the answers the main thread gives it count there
 * too); what it answered that way goes to `tally` and to the cache's hit count when the
 * verification ends, however it ends (a verification lost with its thread and run again starts
 * with them counted).
 */
export interface ThreadDns {
    /** The budget: `max` queries for the message, `used` of them before this verification. */
    readonly max: number;
    readonly used: number;
    /** The byte budget of the answers: `maxBytes` for the message, `usedBytes` before this verification. */
    readonly maxBytes: number;
    readonly usedBytes: number;
    /** The part of both budgets only DMARC's queries may spend. */
    readonly dmarcReserve: DmarcReserve;
    /** The shared resolver the answers come from (its clock and expiries), or null: no copy. */
    readonly cache: Pick<Required<Resolver>, 'expiresAt' | 'now' | 'countHits'> | null;
    /** Questions answered from the copy, the bytes spent as the thread counted them, what it refused. */
    tally(t: Tally): void;
}

export interface VerifyThread {
    /**
     * Verifies the copy read from `input` in the thread; DNS queries go to `resolver` (`dmarc`:
     * one of DMARC's, which may spend the part of the budget kept for it). When
     * `signal` aborts, the thread is told to stop (and terminated if it does not answer) and the
     * promise rejects with the signal's reason.
     */
    verify(
        input: Readable,
        opts: VerifyOptions,
        resolver: ThreadResolve,
        signal: AbortSignal,
        session: string,
        dns?: ThreadDns,
    ): Promise<VerifiedMessage>;
    /** Verifications in progress (tests, metrics). */
    readonly active: number;
    /**
     * Starts the thread now rather than at the first message, and resolves once it is up (its
     * modules loaded); rejects when it cannot start (a broken install), within `timeoutMs`.
     */
    warm(timeoutMs?: number): Promise<void>;
    /**
     * Ends the thread once it has no verification left (authentication.thread switched off by a
     * reload), so that it holds no memory; a later verification starts a new one.
     */
    rest(): void;
    /** A thread is up or starting. */
    readonly running: boolean;
    /** Stops the thread; verifications in progress end with ThreadRestarted. */
    close(): Promise<void>;
}

interface Job {
    readonly session: string;
    readonly resolver: ThreadResolve;
    readonly dns: ThreadDns | null;
    /** What the thread answered from its copy for this job (dnsCounts), written as it answers. */
    readonly counts: Int32Array;
    readonly input: Readable;
    /** The pieces sent and not yet taken in (number, size), oldest first. */
    readonly inFlight: { readonly n: number; readonly size: number }[];
    inFlightBytes: number;
    wake: (() => void) | null;
    settle(err: Error | null, result?: VerifiedMessage): void;
}

/** One thread and what the main thread knows of it. */
interface Thread {
    readonly w: Worker;
    readonly jobs: Map<number, Job>;
    /** The job the thread last started a step for (shared memory the thread writes). */
    readonly current: Int32Array;
    /** It loaded its modules and reads messages: stalls count from then. */
    ready: boolean;
    readonly whenReady: (() => void)[];
    /** When the oldest ping not yet answered was sent (performance.now()), or null. */
    pingedAt: number | null;
    /** When the pinger last ran: a late run means the main thread itself was held. */
    ticked: number;
    /** Jobs whose cancel it answered, until the grace check reads them. */
    readonly cancelled: Set<number>;
    pinger: NodeJS.Timeout | null;
    /** To end once it has no work (rest()). */
    resting: boolean;
}

const ENTRY = new URL('./verify-thread-entry.js', import.meta.url);
const OWN_MODULES = new URL('../../bin/own-modules.js', import.meta.url).href;

/** Which cache the thread's copy comes from: a number per shared resolver, new when a reload replaced it. */
const cacheIds = new WeakMap<object, number>();
let lastCacheId = 0;

/** The DNS terms a job starts with: the budget, the cache the thread may answer from, where it counts. */
function dnsTerms(job: Job): DnsTerms {
    const { dns } = job;
    const counts = job.counts.buffer as SharedArrayBuffer;
    if (!dns) {
        return {
            max: Number.MAX_SAFE_INTEGER,
            used: 0,
            maxBytes: Number.MAX_SAFE_INTEGER,
            usedBytes: 0,
            dmarcReserve: { queries: 0, bytes: 0 },
            cache: null,
            counts,
        };
    }
    const budget = {
        max: dns.max,
        used: dns.used,
        maxBytes: dns.maxBytes,
        usedBytes: dns.usedBytes,
        dmarcReserve: dns.dmarcReserve,
    };
    const cache = dns.cache;
    if (!cache) return { ...budget, cache: null, counts };
    let id = cacheIds.get(cache);
    if (id === undefined) cacheIds.set(cache, (id = ++lastCacheId));
    return {
        ...budget,
        cache: { id, now: cache.now(), sentAt: performance.timeOrigin + performance.now() },
        counts,
    };
}

/**
 * What the thread answered from its copy goes to the message's budget and to the cache's hit
 * count; once, when the job ends, whether the thread reported the end or was lost with it.
 */
function tally(job: Job): void {
    let n = 0;
    for (let i = 0; i < COPY_TYPES.length; i++) {
        const hits = Atomics.load(job.counts, i);
        if (hits <= 0) continue;
        n += hits;
        job.dns?.cache?.countHits(COPY_TYPES[i]!, hits);
    }
    job.dns?.tally({
        queries: n,
        bytes: Atomics.load(job.counts, BYTES_SLOT),
        exhausted: Atomics.load(job.counts, EXHAUSTED_SLOT) !== 0,
        bytesExhausted: Atomics.load(job.counts, BYTES_EXHAUSTED_SLOT) !== 0,
    });
}

export function createVerifyThread(opts: VerifyThreadOptions = {}): VerifyThread {
    const graceMs = opts.graceMs ?? STALL_GRACE_MS;
    const stallMs = opts.stallMs ?? STALL_MS;
    let thread: Thread | null = null;
    let nextJob = 1;
    let closed = false;

    /** Makes `t` no longer the thread: nothing more is sent to it or read from it. */
    function forget(t: Thread): void {
        thread = null;
        if (t.pinger) clearInterval(t.pinger);
    }

    /** Ends every job `t` had and forgets it; the one in `culprit` is not run again. */
    function lose(t: Thread, why: string, rerun: boolean, culprit: number | null = null): void {
        if (thread !== t) return;
        forget(t);
        const lost = [...t.jobs];
        t.jobs.clear();
        for (const [id, job] of lost) job.settle(new ThreadRestarted(why, rerun && id !== culprit));
    }

    /** Terminates `t`, stuck in synchronous work, and logs which verifications it held. */
    function stopStuck(t: Thread, why: string, cancelled: Job | null): void {
        if (thread !== t) return;
        const culprit = Atomics.load(t.current, 0);
        const held = t.jobs.get(culprit) ?? cancelled;
        opts.metrics?.authThreadRestarts.inc({ reason: 'stalled' });
        opts.log?.warn(
            {
                session: held?.session ?? null,
                sessions: [
                    ...new Set([
                        ...(cancelled ? [cancelled.session] : []),
                        ...[...t.jobs.values()].map((j) => j.session),
                    ]),
                ],
                why,
                verifications: t.jobs.size,
            },
            'sender authentication thread stopped: a verification held it in synchronous work; a new one starts with the next message',
        );
        lose(t, `stopped: a verification held it (${why})`, true, culprit);
        void t.w.terminate();
    }

    function spawn(): Thread {
        // the launcher's module hooks (bin/own-modules.js) are needed in the thread too when the main thread has them
        const ownModules = (globalThis as Record<symbol, unknown>)[Symbol.for('mailwarden.modules')] !== undefined;
        const current = new Int32Array(new SharedArrayBuffer(4));
        // V8 lets a --max-semi-space-size on the command line override a new isolate's own limit;
        // the main thread's heap has taken its size from the flag already, so it goes before
        // the thread's heap is made (a setting of 0 is V8's "not given")
        setFlagsFromString('--max-semi-space-size=0');
        const w = new Worker(opts.entry ?? ENTRY, {
            workerData: {
                current: current.buffer,
                answerBytes: opts.answerBytes ?? ANSWER_BYTES,
                ...(ownModules ? { ownModules: OWN_MODULES } : {}),
            },
            resourceLimits: { maxOldGenerationSizeMb: THREAD_HEAP_MB, maxYoungGenerationSizeMb: THREAD_YOUNG_MB },
            stdout: false,
            stderr: false,
        });
        const t: Thread = {
            w,
            jobs: new Map(),
            current,
            ready: false,
            whenReady: [],
            pingedAt: null,
            ticked: 0,
            cancelled: new Set(),
            pinger: null,
            resting: false,
        };
        // the thread never keeps the process alive: a stop closes it, and an idle one has no work
        w.unref();
        w.on('message', (m: FromThread) => onMessage(t, m));
        w.on('error', (err: Error) => {
            if (thread !== t) return;
            opts.metrics?.authThreadRestarts.inc({ reason: 'failed' });
            opts.log?.error({ err }, 'sender authentication thread failed; a new one starts with the next message');
            lose(t, `failed: ${err.message}`, false);
        });
        w.on('exit', (code) => {
            if (thread !== t) return;
            opts.metrics?.authThreadRestarts.inc({ reason: 'failed' });
            opts.log?.error({ code }, 'sender authentication thread exited; a new one starts with the next message');
            lose(t, `exited with code ${code}`, false);
        });
        return t;
    }

    /**
     * Pings `t` while it has work; one that leaves a ping unanswered for stallMs is stuck. Only
     * the thread's silence counts: when the main thread itself was held (the pinger ran late),
     * the answers may be waiting unread, so the ping is sent again; and the verdict is taken
     * after the event loop has read the messages that arrived meanwhile (setImmediate runs after
     * the poll phase).
     */
    function watch(t: Thread): void {
        if (t.pinger || !t.ready) return;
        t.pingedAt = null;
        t.ticked = performance.now();
        t.pinger = setInterval(() => {
            if (thread !== t || t.jobs.size === 0) {
                clearInterval(t.pinger!);
                t.pinger = null;
                return;
            }
            const now = performance.now();
            const late = now - t.ticked > 2 * PING_MS;
            t.ticked = now;
            if (late || t.pingedAt === null) {
                t.pingedAt = now;
                send(t, { t: 'ping' });
            } else if (now - t.pingedAt > stallMs) {
                setImmediate(() => {
                    if (thread === t && t.pingedAt !== null && performance.now() - t.pingedAt > stallMs) {
                        stopStuck(t, `no answer to a ping for ${stallMs} ms`, null);
                    }
                });
            }
        }, PING_MS);
        t.pinger.unref();
    }

    /** Ends a resting thread that has no work left. */
    function endIfResting(t: Thread): void {
        if (!t.resting || t.jobs.size > 0 || thread !== t) return;
        forget(t);
        void t.w.terminate();
    }

    function send(t: Thread, message: ToThread, transfer?: ArrayBuffer[]): void {
        if (thread === t) t.w.postMessage(message, transfer);
    }

    function onMessage(t: Thread, m: FromThread): void {
        if (thread !== t) return;
        if (m.t === 'pong') {
            t.pingedAt = null;
            return;
        }
        if (m.t === 'ready') {
            t.ready = true;
            for (const wake of t.whenReady.splice(0)) wake();
            if (t.jobs.size > 0) watch(t);
            return;
        }
        if (m.t === 'cancelled') {
            t.cancelled.add(m.job);
            return;
        }
        const job = t.jobs.get(m.job);
        if (!job) return;
        switch (m.t) {
            case 'dns': {
                // an answer (a value, NXDOMAIN or NODATA) goes with the time the shared cache keeps
                // it, for the thread's copy; no other error is kept there
                const kept = (err?: unknown): { expiresAt?: number } => {
                    const code = (err as { code?: unknown } | undefined)?.code;
                    if (err !== undefined && code !== 'ENOTFOUND' && code !== 'ENODATA') return {};
                    const at = job.dns?.cache?.expiresAt(m.name, m.rrtype) ?? null;
                    return at === null ? {} : { expiresAt: at };
                };
                job.resolver(m.name, m.rrtype, m.dmarc === true).then(
                    (value) => {
                        if (t.jobs.get(m.job) === job) send(t, { t: 'answer', job: m.job, q: m.q, value, ...kept() });
                    },
                    (err: unknown) => {
                        if (t.jobs.get(m.job) !== job) return;
                        const error = toWireError(err);
                        const spent = isBytesRefusal(err) ? { bytesSpent: true as const } : {};
                        send(t, { t: 'answer', job: m.job, q: m.q, error, ...spent, ...kept(err) });
                    },
                );
                return;
            }
            case 'taken':
                while (job.inFlight.length > 0 && job.inFlight[0]!.n <= m.n)
                    job.inFlightBytes -= job.inFlight.shift()!.size;
                job.wake?.();
                return;
            case 'done':
                t.jobs.delete(m.job);
                job.settle(null, m.result);
                endIfResting(t);
                return;
            case 'failed':
                t.jobs.delete(m.job);
                job.settle(fromWireError(m.error));
                endIfResting(t);
                return;
        }
    }

    /**
     * Sends `start` with the first piece of `input`, then the others as the thread takes them in;
     * one piece is read ahead, so that the last says it is the last. A piece asks to be
     * acknowledged only when the one after it will not fit in flight (PIECES_IN_FLIGHT,
     * BYTES_IN_FLIGHT): an ordinary message crosses in two messages and none comes back.
     */
    async function feed(t: Thread, id: number, job: Job, opts: VerifyOptions): Promise<void> {
        const live = (): boolean => thread === t && t.jobs.get(id) === job;
        const full = (size: number): boolean =>
            job.inFlight.length >= PIECES_IN_FLIGHT ||
            (job.inFlight.length > 0 && job.inFlightBytes + size > BYTES_IN_FLIGHT);
        let started = false;
        let sent = 0;
        /** Sends `piece` once there is room; `next` is the size of the piece after it (null: none). */
        const put = async (piece: Buffer | null, next: number | null): Promise<boolean> => {
            const size = piece?.length ?? 0;
            while (full(size) && live()) await new Promise<void>((resolve) => (job.wake = resolve));
            job.wake = null;
            if (!live()) return false;
            let bytes: Uint8Array | null = null;
            let ack: number | null = null;
            if (piece !== null) {
                const n = ++sent;
                job.inFlight.push({ n, size });
                job.inFlightBytes += size;
                if (next !== null && full(next)) ack = n;
                // a copy of exactly these bytes, moved to the thread: a clone of a view would copy its whole buffer
                bytes = new Uint8Array(piece);
            }
            const last = next === null;
            const transfer = bytes ? [bytes.buffer as ArrayBuffer] : undefined;
            if (started) send(t, { t: 'piece', job: id, bytes, last, ack }, transfer);
            else send(t, { t: 'start', job: id, opts, dns: dnsTerms(job), bytes, last, ack }, transfer);
            started = true;
            return true;
        };
        let held: Buffer | null = null;
        for await (const piece of job.input as AsyncIterable<Buffer>) {
            if (held !== null && !(await put(held, piece.length))) return;
            held = piece;
        }
        await put(held, null);
    }

    /** The check ended before the verification: stop it, and the thread if it does not answer. */
    function cancel(t: Thread, id: number, job: Job): void {
        if (t.jobs.get(id) !== job) return;
        t.jobs.delete(id);
        send(t, { t: 'cancel', job: id });
        endIfResting(t);
        if (thread !== t) return;
        const check = (): void => {
            const timer = setTimeout(() => {
                if (t.cancelled.delete(id) || thread !== t) return;
                stopStuck(t, `no answer to a cancel for ${graceMs} ms`, job);
            }, graceMs);
            timer.unref();
        };
        // a thread still loading its modules is not stuck: the grace counts from when it is up
        if (t.ready) check();
        else t.whenReady.push(check);
    }

    return {
        verify(input, wireOpts, resolver, signal, session, dns) {
            if (closed) return Promise.reject(new ThreadRestarted('closed'));
            if (signal.aborted) return Promise.reject(signal.reason as Error);
            const t = thread ?? (thread = spawn());
            const id = nextJob++;
            return new Promise<VerifiedMessage>((resolve, reject) => {
                const onAbort = (): void => {
                    cancel(t, id, job);
                    job.settle(signal.reason instanceof Error ? signal.reason : new Error('verification ended'));
                };
                let settled = false;
                const job: Job = {
                    session,
                    resolver,
                    dns: dns ?? null,
                    counts: dnsCounts(),
                    input,
                    inFlight: [],
                    inFlightBytes: 0,
                    wake: null,
                    settle(err, result) {
                        if (settled) return;
                        settled = true;
                        tally(job);
                        signal.removeEventListener('abort', onAbort);
                        job.wake?.();
                        if (!input.destroyed) input.destroy();
                        if (err) reject(err);
                        else resolve(result!);
                    },
                };
                t.jobs.set(id, job);
                signal.addEventListener('abort', onAbort, { once: true });
                watch(t);
                feed(t, id, job, wireOpts).catch((err: unknown) => {
                    // the copy could not be read (the message stream failed): the verification fails with it
                    cancel(t, id, job);
                    job.settle(err instanceof Error ? err : new Error(String(err)));
                });
            });
        },
        get active() {
            return thread?.jobs.size ?? 0;
        },
        get running() {
            return thread !== null;
        },
        rest() {
            if (!thread) return;
            thread.resting = true;
            endIfResting(thread);
        },
        warm(timeoutMs = 30_000) {
            if (closed) return Promise.reject(new ThreadRestarted('closed'));
            const t = thread ?? (thread = spawn());
            t.resting = false;
            if (t.ready) return Promise.resolve();
            return new Promise<void>((resolve, reject) => {
                const fail = (why: string): void => {
                    clearTimeout(timer);
                    t.w.off('error', onError);
                    t.w.off('exit', onExit);
                    reject(new Error(`sender authentication thread did not start: ${why}`));
                };
                const onError = (err: Error): void => fail(err.message);
                const onExit = (code: number): void => fail(`exited with code ${code}`);
                const timer = setTimeout(() => fail(`not up after ${timeoutMs} ms`), timeoutMs);
                timer.unref();
                t.w.once('error', onError);
                t.w.once('exit', onExit);
                t.whenReady.push(() => {
                    clearTimeout(timer);
                    t.w.off('error', onError);
                    t.w.off('exit', onExit);
                    resolve();
                });
            });
        },
        async close() {
            closed = true;
            const t = thread;
            if (!t) return;
            lose(t, 'closed', false);
            await t.w.terminate();
        },
    };
}
