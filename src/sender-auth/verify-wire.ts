/**
 * What passes between the main thread and the verification thread (verify-thread.ts on the main
 * side, verify-worker.ts in the thread): the protocol's messages, and errors carried with their
 * `code` (mailauth tells "no record" from "temporary error" by a DNS error's code, which a
 * structured clone would drop). A verification result crosses as verifyMessage returns it, plain
 * data already (auth-output.ts).
 *
 * Each message is a wake-up of the other thread and a copy, so an ordinary message crosses in
 * few: `start` carries the options and the first piece of the verification copy, the last piece
 * says it is the last, and the thread says a piece was taken in only when the main thread asked
 * (when it will wait for room before sending more). DNS answers come with the time the main
 * thread's cache keeps them, and the thread answers the same question from its copy until then,
 * counting it against the message's budgets (queries, answer bytes) as the main thread would
 * (DnsTerms, dnsCounts).
 *
 * It must not verify or decide anything, and must not load mailauth.
 */
import { RRTYPES } from '../dns/names.ts';
import type { DmarcReserve } from '../dns/scoped.ts';
import type { VerifiedMessage, VerifyOptions } from './verify-message.ts';

/** An error as it crosses: its message and, for DNS errors, the node:dns code. */
export interface WireError {
    readonly message: string;
    readonly code?: string;
}

/** Bytes of a verification copy as they cross. */
export interface Piece {
    readonly job: number;
    /** The bytes (their buffer transferred, not copied), or null. */
    readonly bytes: Uint8Array | null;
    /** The copy ends with these bytes. */
    readonly last: boolean;
    /** This piece's number, to be answered with `taken` once the thread took it in; or null. */
    readonly ack: number | null;
}

/** What the thread needs to answer a job's DNS questions from its copy of the cache. */
export interface DnsTerms {
    /** The message's DNS budget (authentication.maxDnsQueries), and the part used before this job. */
    readonly max: number;
    readonly used: number;
    /**
     * The message's budget of answer bytes (estimateAnswerBytes, dns/scoped.ts), and the part
     * spent before this job.
     */
    readonly maxBytes: number;
    readonly usedBytes: number;
    /** The part of both budgets only DMARC's queries may spend. */
    readonly dmarcReserve: DmarcReserve;
    /**
     * Which cache the answers come from (a new number when the main thread's resolver was
     * replaced: the thread drops its copy), with the main thread's cache clock when the job
     * starts; null: answer nothing from the copy.
     */
    readonly cache: {
        readonly id: number;
        readonly now: number;
        /** When `now` was read: performance.timeOrigin + performance.now() of the main thread. */
        readonly sentAt: number;
    } | null;
    /** Where the thread counts what it answered from the copy (dnsCounts). */
    readonly counts: SharedArrayBuffer;
}

/** The record types the thread counts its copy's answers by (the resolver's), in the order of their dnsCounts slots. */
export const COPY_TYPES = RRTYPES;
/** The DnsCounts slot set when the thread refused a question past the query budget. */
export const EXHAUSTED_SLOT = COPY_TYPES.length;
/** The DnsCounts slot set when the thread refused a question or an answer past the byte budget. */
export const BYTES_EXHAUSTED_SLOT = EXHAUSTED_SLOT + 1;
/**
 * The DnsCounts slot of the byte budget spent as the thread counts it: `usedBytes` and every
 * answer it gave the job, from its copy or from the main thread (or the whole budget once it
 * refused past it).
 */
export const BYTES_SLOT = EXHAUSTED_SLOT + 2;

/**
 * A job's DNS questions answered from the thread's copy, one Int32 slot per COPY_TYPES entry,
 * EXHAUSTED_SLOT, BYTES_EXHAUSTED_SLOT and BYTES_SLOT: shared memory the thread writes as it
 * answers (Atomics), so the main thread reads them when the job ends, also when the thread was
 * lost with the job, which then runs again with them counted.
 */
export function dnsCounts(): Int32Array {
    return new Int32Array(new SharedArrayBuffer(4 * (BYTES_SLOT + 1)));
}

/** Main thread to verification thread. */
export type ToThread =
    /** A new verification and the first piece of its copy (null for an empty copy). */
    | ({ readonly t: 'start'; readonly opts: VerifyOptions; readonly dns: DnsTerms } & Piece)
    /** The next piece of the verification copy. */
    | ({ readonly t: 'piece' } & Piece)
    /** The check ended: stop the work, answer `cancelled`. */
    | { readonly t: 'cancel'; readonly job: number }
    /** Answer `pong` (the thread's event loop runs). */
    | { readonly t: 'ping' }
    /** The answer to a `dns` request. */
    | {
          readonly t: 'answer';
          readonly job: number;
          readonly q: number;
          readonly value?: unknown;
          readonly error?: WireError;
          /** The error is the main thread's refusal past the message's byte budget (spent there). */
          readonly bytesSpent?: true;
          /** Until when (the main thread's cache clock) the main thread's cache keeps this answer; absent: it does not. */
          readonly expiresAt?: number;
      };

/** Verification thread to main thread. */
export type FromThread =
    /** The thread loaded its modules and reads messages. */
    | { readonly t: 'ready' }
    | { readonly t: 'pong' }
    /** A DNS query of the job, to be answered through the message's own resolver (`dmarc`: DMARC's, dns/scoped.ts). */
    | {
          readonly t: 'dns';
          readonly job: number;
          readonly q: number;
          readonly name: string;
          readonly rrtype: string;
          readonly dmarc?: true;
      }
    /** The piece numbered `n` and those before it were taken in: the main thread may send more. */
    | { readonly t: 'taken'; readonly job: number; readonly n: number }
    | { readonly t: 'done'; readonly job: number; readonly result: VerifiedMessage }
    | { readonly t: 'failed'; readonly job: number; readonly error: WireError }
    /** The job of a `cancel` has ended (or was not there). */
    | { readonly t: 'cancelled'; readonly job: number };

/** The error as it crosses the thread boundary. */
export function toWireError(err: unknown): WireError {
    if (err instanceof Error) {
        const code = (err as { code?: unknown }).code;
        return typeof code === 'string' ? { message: err.message, code } : { message: err.message };
    }
    return { message: String(err) };
}

/**
 * The error rebuilt on the other side, `code` included. No stack: it would point at this function,
 * and recording one costs more than the rest (most are ordinary negative DNS answers).
 */
export function fromWireError(wire: WireError): Error {
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    let err: Error;
    try {
        err = new Error(wire.message);
    } finally {
        Error.stackTraceLimit = limit;
    }
    err.stack = `Error: ${wire.message}`;
    if (wire.code !== undefined) Object.assign(err, { code: wire.code });
    return err;
}
