/**
 * The body of the verification thread (started by verify-thread.ts): runs verifyMessage
 * (verify-message.ts: mailauth's SPF, DKIM, ARC and DMARC) for each job the main thread sends,
 * over the verification copy it receives in pieces and a resolver whose every query is answered
 * by the main thread (the message's own budget, cache and timeout: dns/scoped.ts). The DKIM and
 * ARC key store lives here, shared by the thread's jobs.
 *
 * Several jobs run at once, interleaved at their DNS waits. A `cancel` destroys the job's input
 * and fails its pending queries, and is answered once the job's work has ended; a `ping` is
 * answered at once. So the main thread can tell a thread that works from one stuck in
 * synchronous code (which it then terminates).
 * Before each message's work, the job it is for is written to shared memory: when the thread is
 * stuck, the main thread reads there which verification held it.
 *
 * It must not decide anything (mailauth.ts does, on the main thread), must not query DNS
 * itself, and must not keep anything of a job after it ended.
 */
import { PassThrough } from 'node:stream';
import { parentPort, workerData } from 'node:worker_threads';
import { dnsError } from '../dns/errors.ts';
import { createKeyStore } from './key-reuse.ts';
import { verifyMessage, type VerifyOptions } from './verify-message.ts';
import { fromWireError, toWireError, type FromThread, type Piece, type ToThread } from './verify-wire.ts';

interface Job {
    readonly input: PassThrough;
    readonly queries: Map<number, { resolve(value: unknown): void; reject(err: Error): void }>;
    nextQuery: number;
    cancelled: boolean;
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

function start(id: number, opts: VerifyOptions): void {
    const job: Job = { input: new PassThrough(), queries: new Map(), nextQuery: 1, cancelled: false };
    jobs.set(id, job);
    // a destroyed input (cancel) fails the verification through the pipe; nothing else listens
    job.input.on('error', () => undefined);
    const resolver = (name: string, rrtype: string): Promise<unknown> => {
        if (job.cancelled) {
            return Promise.reject(dnsError('ECANCELLED', `query${String(rrtype).toUpperCase()}`, String(name)));
        }
        const q = job.nextQuery++;
        return new Promise((resolve, reject) => {
            job.queries.set(q, { resolve, reject });
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
            start(m.job, m.opts);
            take(m);
            return;
        case 'piece':
            take(m);
            return;
        case 'cancel':
            cancel(m.job);
            return;
        case 'answer': {
            const pending = jobs.get(m.job)?.queries;
            const waiter = pending?.get(m.q);
            if (!waiter) return;
            pending!.delete(m.q);
            if (m.error) waiter.reject(fromWireError(m.error));
            else waiter.resolve(m.value);
            return;
        }
    }
});
post({ t: 'ready' });
