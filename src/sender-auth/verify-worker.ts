/**
 * The body of the verification thread (started by verify-thread.ts): runs verifyMessage
 * (verify-message.ts: mailauth's SPF, DKIM, ARC and DMARC) for each job the main thread sends,
 * over the verification copy it receives in pieces and a resolver whose queries are answered
 * by the main thread (the message's own budget, cache and timeout: dns/scoped.ts). The DKIM and
 * ARC key store lives here, shared by the thread's jobs, and so does a copy of the DNS answers
 * the main thread gave: an answer comes with the time the main thread's cache keeps it, and until
 * then (in the main thread's cache clock, which each job brings) the same question is answered
 * here without asking, counted against the message's budget as the main thread counts it, and
 * refused past that budget with the main thread's refusal; what was answered here is counted, as
 * it is answered, in memory the main thread reads (dnsCounts). The bytes of every answer a job
 * gets, from the copy or from the main thread, count against the message's byte budget here as
 * they do there (dns/scoped.ts): the answer that would pass it is refused, and so is every later
 * question, so no job holds more than that budget of answers in this thread's heap.
 *
 * Several jobs run at once, interleaved at their DNS waits. A `cancel` destroys the job's input
 * and fails its pending queries, and is answered once the job's work has ended; a `ping` is
 * answered at once. So the main thread can tell a thread that works from one stuck in
 * synchronous code (which it then terminates).
 * Before each message's work, the job it is for is written to shared memory: when the thread is
 * stuck, the main thread reads there which verification held it.
 *
 * It must not decide anything (mailauth.ts does, on the main thread), must not query DNS
 * itself, and must not keep anything of a job after it ended beyond the key store and the copy
 * of the answers (bounded, and dropped when the main thread's resolver is replaced).
 */
import { performance } from 'node:perf_hooks';
import { PassThrough } from 'node:stream';
import { parentPort, workerData } from 'node:worker_threads';
import { copyAnswer, estimateAnswerBytes } from '../dns/answers.ts';
import { dnsError, type DnsError } from '../dns/errors.ts';
import { Lru } from '../dns/lru.ts';
import { normalizeName } from '../dns/names.ts';
import { budgetRefusal, bytesRefusal } from '../dns/scoped.ts';
import { createKeyStore } from './key-reuse.ts';
import { verifyMessage, type VerifyOptions } from './verify-message.ts';
import {
    fromWireError,
    toWireError,
    BYTES_EXHAUSTED_SLOT,
    BYTES_SLOT,
    COPY_TYPES,
    EXHAUSTED_SLOT,
    type DnsTerms,
    type FromThread,
    type Piece,
    type ToThread,
    type WireError,
} from './verify-wire.ts';

interface Job {
    readonly input: PassThrough;
    readonly queries: Map<
        number,
        {
            resolve(value: unknown): void;
            reject(err: Error): void;
            readonly key: string | null;
            readonly name: string;
            readonly rrtype: string;
            readonly dmarc: boolean;
        }
    >;
    nextQuery: number;
    cancelled: boolean;
    readonly dns: DnsTerms;
    /** performance.now() when the job started: the main thread's cache clock moves on from dns.cache.now with it. */
    readonly startedAt: number;
    /** Questions asked (answered here or not). */
    asked: number;
    /** The byte budget spent: dns.usedBytes and the answers given since (all of it once one was refused). */
    bytes: number;
    /**
     * Bytes of the answers given to this job, DMARC's apart, and the part of them beyond its
     * share (BOUNDS: the share, and for DMARC's the reserve, dns/scoped.ts).
     */
    got: number;
    gotDmarc: number;
    beyond: number;
    /** Those answered here by type, whether one was refused, the bytes spent (dns.counts). */
    readonly counts: Int32Array;
}

/** An answer as the main thread gave it: a value and its estimated bytes, or a negative answer's error. */
interface Copied {
    readonly value?: unknown;
    readonly bytes: number;
    readonly error?: WireError;
}

/** The copy's bounds: answers kept at most, and their estimated bytes (an answer over 1/64 of it is not kept). */
const COPY_ENTRIES = 2_000;
const COPY_BYTES = 4 * 1024 * 1024;
/** Per entry beyond the answer: the key, the slot and the map entry. */
const COPY_OVERHEAD = 96;
let copied = new Lru<Copied>(COPY_ENTRIES, COPY_BYTES);
/** The main thread's cache the copy is of (DnsTerms.cache.id). */
let copiedFrom: number | null = null;

/** The main thread's cache clock, as far as this job can tell. */
function cacheNow(job: Job): number {
    return (job.dns.cache?.now ?? 0) + (performance.now() - job.startedAt);
}

/** The copy's key of a question: the name as the main thread's cache normalises it; null: not kept. */
function copyKey(name: string, type: string): string | null {
    try {
        return `${type} ${normalizeName(name, 'query')}`;
    } catch {
        return null; // the main thread answers it (with EBADNAME)
    }
}

/** True when the job may read and fill the copy: it came with the cache the copy is of. */
function usesCopy(job: Job): boolean {
    return job.dns.cache !== null && job.dns.cache.id === copiedFrom;
}

/**
 * The answers the jobs in progress hold together, and the part of them beyond each job's first
 * `share` bytes, are held to `total` and `beyondShares` (verify-thread.ts says why:
 * ANSWER_BYTES); past either, a job's answer is refused as one past its own budget is.
 */
const BOUNDS = (workerData as { answerBytes: { share: number; beyondShares: number; total: number } }).answerBytes;
/** What the jobs in progress hold, and the part of it beyond their shares. */
let held = 0;
let beyond = 0;

/** The job's budgets for a question (`dmarc`: one of DMARC's, which may spend the reserve), as dns/scoped.ts has them. */
function limits(job: Job, dmarc: boolean): { queries: number; bytes: number; keptQueries: number; keptBytes: number } {
    const kept = dmarc ? { queries: 0, bytes: 0 } : job.dns.dmarcReserve;
    return {
        queries: job.dns.max - kept.queries,
        bytes: job.dns.maxBytes - kept.bytes,
        keptQueries: kept.queries,
        keptBytes: kept.bytes,
    };
}

/** The job's byte budget is spent (for a question of `dmarc`'s kind): every later one is refused. */
function spent(job: Job, dmarc: boolean): void {
    job.bytes = Math.max(job.bytes, limits(job, dmarc).bytes);
    Atomics.store(job.counts, BYTES_EXHAUSTED_SLOT, 1);
    Atomics.store(job.counts, BYTES_SLOT, Math.min(job.bytes, 0x7fffffff));
}

/**
 * Counts an answer of `size` bytes against the job's byte budget and the thread's bounds: null
 * when it fits; else the refusal, and the job's budget is spent (every later question refused as
 * dns/scoped.ts refuses them). DMARC's answers, up to the reserve, are within the job's share.
 */
function spend(job: Job, size: number, rrtype: string, name: string, dmarc: boolean): DnsError | null {
    const limit = limits(job, dmarc);
    const got = job.got + (dmarc ? 0 : size);
    const gotDmarc = job.gotDmarc + (dmarc ? size : 0);
    const draw = Math.max(0, got - BOUNDS.share) + Math.max(0, gotDmarc - job.dns.dmarcReserve.bytes) - job.beyond;
    const over =
        held + size > BOUNDS.total ? BOUNDS.total : beyond + draw > BOUNDS.beyondShares ? BOUNDS.beyondShares : 0;
    let refused: DnsError | null = null;
    if (job.bytes + size > limit.bytes) refused = bytesRefusal(job.dns.maxBytes, rrtype, name, limit.keptBytes);
    else if (over > 0) {
        const type = rrtype.toUpperCase();
        refused = dnsError('ECANCELLED', `query${type}`, name);
        refused.message = `DNS answers of the messages being verified over ${over} bytes: ${type} ${name}`;
    }
    if (refused) {
        spent(job, dmarc);
        return refused;
    }
    job.bytes += size;
    job.got = got;
    job.gotDmarc = gotDmarc;
    held += size;
    job.beyond += draw;
    beyond += draw;
    Atomics.store(job.counts, BYTES_SLOT, Math.min(job.bytes, 0x7fffffff));
    return null;
}

const port = parentPort;
if (!port) throw new Error('verify-worker.ts runs as a worker thread only');
/** Where the job this thread last started a step for is written, for the main thread to read when it is stuck. */
const current = new Int32Array((workerData as { current: SharedArrayBuffer }).current);

/**
 * Timer callbacks run for the job that scheduled them (mailauth's SPF time limit is one): the
 * job's id is written back before each runs, as it is before each message's work. Promise and
 * nextTick callbacks need nothing: they run before the next message is read.
 */
function forTheJob<F extends (...args: never[]) => unknown>(schedule: F): F {
    const wrapped = function (this: unknown, callback: unknown, ...rest: unknown[]): unknown {
        if (typeof callback !== 'function') return Reflect.apply(schedule, this, [callback, ...rest]) as unknown;
        const job = Atomics.load(current, 0);
        const run = (...args: unknown[]): unknown => {
            Atomics.store(current, 0, job);
            return Reflect.apply(callback, undefined, args);
        };
        return Reflect.apply(schedule, this, [run, ...rest]) as unknown;
    };
    // util.promisify.custom and the like stay as they were
    Object.defineProperties(wrapped, Object.getOwnPropertyDescriptors(schedule));
    return wrapped as unknown as F;
}
globalThis.setTimeout = forTheJob(globalThis.setTimeout);
globalThis.setImmediate = forTheJob(globalThis.setImmediate);
const keys = createKeyStore();
const jobs = new Map<number, Job>();

function post(message: FromThread): void {
    port!.postMessage(message);
}

function start(id: number, opts: VerifyOptions, dns: DnsTerms): void {
    const job: Job = {
        input: new PassThrough(),
        queries: new Map(),
        nextQuery: 1,
        cancelled: false,
        dns,
        bytes: dns.usedBytes,
        got: 0,
        gotDmarc: 0,
        beyond: 0,
        // when the main thread read its cache clock, in this thread's performance clock (the
        // two share timeOrigin + now()): the time `start` waited to be read is not lost
        startedAt: dns.cache ? dns.cache.sentAt - performance.timeOrigin : performance.now(),
        asked: 0,
        counts: new Int32Array(dns.counts),
    };
    jobs.set(id, job);
    // answers of a replaced resolver are not kept
    if (dns.cache !== null && dns.cache.id !== copiedFrom) {
        copied = new Lru<Copied>(COPY_ENTRIES, COPY_BYTES);
        copiedFrom = dns.cache.id;
    }
    // a destroyed input (cancel) fails the verification through the pipe; nothing else listens
    job.input.on('error', () => undefined);
    const ask = (name: string, rrtype: string, dmarc: boolean): Promise<unknown> => {
        if (job.cancelled) {
            return Promise.reject(dnsError('ECANCELLED', `query${String(rrtype).toUpperCase()}`, String(name)));
        }
        // every question counts, answered here or not (dns/scoped.ts)
        const limit = limits(job, dmarc);
        if (dns.used + job.asked >= limit.queries) {
            Atomics.store(job.counts, EXHAUSTED_SLOT, 1);
            return Promise.reject(budgetRefusal(dns.max, rrtype, name, limit.keptQueries));
        }
        if (job.bytes >= limit.bytes) {
            spent(job, dmarc);
            return Promise.reject(bytesRefusal(dns.maxBytes, rrtype, name, limit.keptBytes));
        }
        job.asked++;
        const type = String(rrtype).toUpperCase();
        const slot = COPY_TYPES.indexOf(type as (typeof COPY_TYPES)[number]);
        const key = slot < 0 ? null : copyKey(name, type);
        const kept = key !== null && usesCopy(job) ? copied.get(key, cacheNow(job)) : undefined;
        if (kept) {
            Atomics.add(job.counts, slot, 1);
            if (kept.error) return Promise.reject(fromWireError(kept.error));
            // counted when it is given, as the main thread counts an answer from its cache: a
            // question asked meanwhile (mailauth asks A and AAAA together) is asked, and counts
            return Promise.resolve().then(() => {
                const refused = spend(job, kept.bytes, type, String(name), dmarc);
                if (refused) throw refused;
                return copyAnswer(kept.value);
            });
        }
        const q = job.nextQuery++;
        return new Promise((resolve, reject) => {
            job.queries.set(q, { resolve, reject, key, name: String(name), rrtype: String(rrtype), dmarc });
            post({ t: 'dns', job: id, q, name: String(name), rrtype: String(rrtype), ...(dmarc ? { dmarc } : {}) });
        });
    };
    // a cancelled job's result is not wanted: only that it ended
    const ended = (answer: () => FromThread): void => {
        jobs.delete(id);
        held -= job.got + job.gotDmarc;
        beyond -= job.beyond;
        job.got = job.gotDmarc = job.beyond = 0;
        post(job.cancelled ? { t: 'cancelled', job: id } : answer());
    };
    // DMARC's questions may spend the part of the budget kept for them, the others may not
    const resolvers = {
        resolve: (n: string, t: string) => ask(n, t, false),
        dmarc: (n: string, t: string) => ask(n, t, true),
    };
    verifyMessage(job.input, opts, resolvers, keys).then(
        // plain data already: the parts of mailauth's result the check reads (auth-output.ts)
        (result) => ended(() => ({ t: 'done', job: id, result })),
        (err: unknown) => ended(() => ({ t: 'failed', job: id, error: toWireError(err) })),
    );
}

/** Passes a piece on to the job's verification. */
function take(m: Piece): void {
    const job = jobs.get(m.job);
    if (!job || job.cancelled) return;
    if (m.bytes !== null) {
        const bytes = Buffer.from(m.bytes.buffer, m.bytes.byteOffset, m.bytes.byteLength);
        const n = m.ack;
        // taken once the verifier's side of the pipe accepted it: at most a few pieces wait here
        job.input.write(bytes, n === null ? undefined : () => post({ t: 'taken', job: m.job, n }));
    }
    if (m.last) job.input.end();
}

/** Stops a job; `cancelled` is answered once its verification has ended (at once when there is none). */
function cancel(id: number): void {
    const job = jobs.get(id);
    if (!job) {
        post({ t: 'cancelled', job: id });
        return;
    }
    job.cancelled = true;
    job.input.destroy(new Error('verification cancelled: the check ended'));
    for (const [q, pending] of job.queries) {
        job.queries.delete(q);
        pending.reject(dnsError('ECANCELLED', 'query', 'cancelled'));
    }
}

port.on('message', (m: ToThread) => {
    // the work a message starts (and the promise callbacks it resolves) runs before the next message is read
    if (m.t !== 'ping') Atomics.store(current, 0, m.job);
    switch (m.t) {
        case 'ping':
            post({ t: 'pong' });
            return;
        case 'start':
            start(m.job, m.opts, m.dns);
            take(m);
            return;
        case 'piece':
            take(m);
            return;
        case 'cancel':
            cancel(m.job);
            return;
        case 'answer': {
            const job = jobs.get(m.job);
            const waiter = job?.queries.get(m.q);
            if (!job || !waiter) return;
            job.queries.delete(m.q);
            // kept while the main thread's cache keeps it (it sends an expiry only with a value,
            // NXDOMAIN or NODATA it holds); each caller gets a copy of its own
            const until = m.expiresAt;
            const key = waiter.key;
            const keep = until !== undefined && key !== null && usesCopy(job);
            if (m.error) {
                // the main thread refused an answer past the byte budget: this job's count is never
                // below the main thread's (which lacks the copy's answers), so it is spent here too
                if (m.bytesSpent) spent(job, waiter.dmarc);
                if (keep) {
                    const bytes = COPY_OVERHEAD + key.length + estimateAnswerBytes(m.error);
                    copied.set(key, { error: m.error, bytes: 0 }, until, bytes);
                    copied.sweep(cacheNow(job), 2);
                }
                waiter.reject(fromWireError(m.error));
                return;
            }
            const size = estimateAnswerBytes(m.value);
            if (keep) {
                copied.set(key, { value: m.value, bytes: size }, until, COPY_OVERHEAD + key.length + size);
                copied.sweep(cacheNow(job), 2);
            }
            // the main thread counted it within the budget too, but not this job's answers from the copy
            const refused = spend(job, size, waiter.rrtype, waiter.name, waiter.dmarc);
            if (refused) waiter.reject(refused);
            else waiter.resolve(keep ? copyAnswer(m.value) : m.value);
            return;
        }
    }
});
post({ t: 'ready' });
