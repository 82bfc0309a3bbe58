/**
 * What passes between the main thread and the verification thread (verify-thread.ts on the main
 * side, verify-worker.ts in the thread): the protocol's messages, mailauth's result reduced to
 * plain data, and errors carried with their `code` (mailauth tells "no record" from "temporary
 * error" by a DNS error's code, which a structured clone would drop).
 *
 * It must not verify or decide anything, and must not load mailauth.
 */
import type { VerifiedMessage, VerifyOptions } from './verify-message.ts';

/** An error as it crosses: its message and, for DNS errors, the node:dns code. */
export interface WireError {
    readonly message: string;
    readonly code?: string;
}

/** Main thread to verification thread. */
export type ToThread =
    /** A new verification; its message follows in pieces. */
    | { readonly t: 'start'; readonly job: number; readonly opts: VerifyOptions }
    /** The next bytes of the verification copy (its buffer transferred, not copied). */
    | { readonly t: 'piece'; readonly job: number; readonly bytes: Uint8Array }
    /** The verification copy is complete. */
    | { readonly t: 'end'; readonly job: number }
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
      };

/** Verification thread to main thread. */
export type FromThread =
    /** The thread loaded its modules and reads messages. */
    | { readonly t: 'ready' }
    | { readonly t: 'pong' }
    /** A DNS query of the job, to be answered through the message's own resolver. */
    | { readonly t: 'dns'; readonly job: number; readonly q: number; readonly name: string; readonly rrtype: string }
    /** One piece was taken in: the main thread may send another. */
    | { readonly t: 'taken'; readonly job: number }
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

/** The error rebuilt on the other side, `code` included (no stack: it would point at this function). */
export function fromWireError(wire: WireError): Error {
    const err = new Error(wire.message);
    err.stack = `Error: ${wire.message}`;
    if (wire.code !== undefined) Object.assign(err, { code: wire.code });
    return err;
}

/** Deepest nesting copied; mailauth's results nest five or six levels. */
const MAX_DEPTH = 16;
/**
 * Properties mailauth defines as non-enumerable that mailauth.ts reads: the applied DMARC record
 * (`dmarc.record`) and the validated ARC chain (`arc.chain`). Other hidden ones (a DKIM result's
 * header list) are not read and not copied.
 */
const HIDDEN_KEPT = ['record', 'chain'] as const;

/**
 * `value` as plain data that a structured clone copies exactly and cheaply: a Buffer becomes its
 * UTF-8 text (how the readers of mailauth's results read it), an Error its message and code,
 * functions and symbols are left out, and any other object is copied by its own enumerable
 * properties (a key object has none) and the hidden ones of HIDDEN_KEPT. Nothing deeper than
 * MAX_DEPTH is copied.
 */
export function plainData(value: unknown, depth = 0): unknown {
    if (value === null) return null;
    const type = typeof value;
    if (type === 'function' || type === 'symbol') return undefined;
    if (type !== 'object') return value;
    if (depth >= MAX_DEPTH) return undefined;
    if (Buffer.isBuffer(value)) return value.toString('utf8');
    if (Array.isArray(value)) return value.map((v) => plainData(v, depth + 1));
    if (value instanceof Error) return toWireError(value);
    const out: Record<string, unknown> = {};
    const source = value as Record<string, unknown>;
    for (const [k, v] of Object.entries(source)) {
        const copied = plainData(v, depth + 1);
        if (copied !== undefined) out[k] = copied;
    }
    for (const k of HIDDEN_KEPT) {
        if (k in out || !Object.prototype.hasOwnProperty.call(source, k)) continue;
        const copied = plainData(source[k], depth + 1);
        if (copied !== undefined) out[k] = copied;
    }
    return out;
}
