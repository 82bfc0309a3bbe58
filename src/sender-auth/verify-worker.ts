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
 * it is answered, in memory the main thread reads (dnsCounts).
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
import { dnsError } from '../dns/errors.ts';
import { Lru } from '../dns/lru.ts';
import { normalizeName } from '../dns/names.ts';
import { budgetRefusal } from '../dns/scoped.ts';
import { createKeyStore } from './key-reuse.ts';
import { verifyMessage, type VerifyOptions } from './verify-message.ts';
import {
    fromWireError,
    toWireError,
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
        { resolve(value: unknown): void; reject(err: Error): void; readonly key: string | null }
    >;
    nextQuery: number;
    cancelled: boolean;
    readonly dns: DnsTerms;
    /** performance.now() when the job started: the main thread's cache clock moves on from dns.cache.now with it. */
    readonly startedAt: number;
    /** Questions asked (answered here or not). */
    asked: number;
    /** Those answered here by type, and whether one was refused (dns.counts). */
    readonly counts: Int32Array;
}

/** An answer as the main thread gave it: a value, or a negative answer's error. */
interface Copied {
    readonly value?: unknown;
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
    const resolver = (name: string, rrtype: string): Promise<unknown> => {
        if (job.cancelled) {
            return Promise.reject(dnsError('ECANCELLED', `query${String(rrtype).toUpperCase()}`, String(name)));
        }
        // every question counts, answered here or not (dns/scoped.ts)
        if (dns.used + job.asked >= dns.max) {
            Atomics.store(job.counts, EXHAUSTED_SLOT, 1);
            return Promise.reject(budgetRefusal(dns.max, rrtype, name));
        }
        job.asked++;
        const type = String(rrtype).toUpperCase();
        const slot = COPY_TYPES.indexOf(type as (typeof COPY_TYPES)[number]);
        const key = slot < 0 ? null : copyKey(name, type);
        const kept = key !== null && usesCopy(job) ? copied.get(key, cacheNow(job)) : undefined;
        if (kept) {
            Atomics.add(job.counts, slot, 1);
            return kept.error ? Promise.reject(fromWireError(kept.error)) : Promise.resolve(copyAnswer(kept.value));
        }
        const q = job.nextQuery++;
        return new Promise((resolve, reject) => {
            job.queries.set(q, { resolve, reject, key });
            post({ t: 'dns', job: id, q, name: String(name), rrtype: String(rrtype) });
        });
    };
    // a cancelled job's result is not wanted: only that it ended
    const ended = (answer: () => FromThread): void => {
        jobs.delete(id);
        post(job.cancelled ? { t: 'cancelled', job: id } : answer());
    };
    verifyMessage(job.input, opts, resolver, keys).then(
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
            if (keep) {
                const answer: Copied = m.error ? { error: m.error } : { value: m.value };
                const bytes = COPY_OVERHEAD + key.length + estimateAnswerBytes(m.error ?? m.value);
                copied.set(key, answer, until, bytes);
                copied.sweep(cacheNow(job), 2);
            }
            if (m.error) waiter.reject(fromWireError(m.error));
            else waiter.resolve(keep ? copyAnswer(m.value) : m.value);
            return;
        }
    }
});
post({ t: 'ready' });
