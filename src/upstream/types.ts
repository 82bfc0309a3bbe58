/**
 * The contract between a session and the mail server behind the proxy.
 * An upstream either answers with an SMTP reply (any class, returned, never thrown) or
 * fails with an UpstreamError (unreachable, timed out, closed, protocol violation), which
 * the session turns into `451 4.4.1`. Nothing here decides policy.
 */
import type { Readable } from 'node:stream';

/** Who the real client is, passed on with XCLIENT where the upstream allows it. */
export interface ClientIdentity {
    readonly ip: string;
    readonly port: number;
    /** Verified reverse name, or null when unknown. */
    readonly ptr: string | null;
    /** HELO/EHLO argument, or null before one was given. */
    readonly helo: string | null;
    readonly proto: 'SMTP' | 'ESMTP';
    /** SASL login of an authenticated submission client. */
    readonly login: string | null;
}

/** A reply received from the upstream. */
export interface UpstreamReply {
    readonly code: number;
    /** Enhanced status code found at the start of the text, if any. */
    readonly enhanced: string | null;
    /** The text of all lines joined with a space, enhanced code removed. */
    readonly text: string;
}

/** MAIL FROM parameters passed through when the upstream supports them (RFC 1870, 6152, 6531). */
export interface MailParams {
    readonly size?: number;
    readonly body?: '7BIT' | '8BITMIME';
    readonly smtputf8?: boolean;
}

export type UpstreamFailure = 'connect' | 'timeout' | 'closed' | 'protocol' | 'xclient' | 'tls' | 'io';

export class UpstreamError extends Error {
    readonly kind: UpstreamFailure;
    /**
     * The end-of-data marker had been sent when the connection failed, so the upstream may have
     * accepted the message without our hearing so (RFC 1047): the client, told to try again,
     * may deliver it twice.
     */
    readonly endOfDataSent: boolean;
    constructor(kind: UpstreamFailure, message: string, options?: { cause?: unknown; endOfDataSent?: boolean }) {
        super(message, options);
        this.name = 'UpstreamError';
        this.kind = kind;
        this.endOfDataSent = options?.endOfDataSent ?? false;
    }
}

/** One connection to the upstream, used for the transactions of one client session in turn. */
export interface UpstreamSession {
    /** Sends MAIL FROM (RSET first if a transaction is open). */
    mailFrom(address: string, params: MailParams): Promise<UpstreamReply>;
    rcptTo(address: string): Promise<UpstreamReply>;
    /**
     * Sends DATA and then the message. `message` yields the message in canonical form
     * (CRLF line endings, dots not stuffed); the session dot-stuffs it and writes the
     * terminator only after the whole source was read without error. If the source fails,
     * the connection is dropped without a terminator, so the upstream never takes a partial
     * message as complete.
     */
    data(message: Readable): Promise<UpstreamReply>;
    /** Abandons the current transaction (RSET). */
    reset(): Promise<void>;
    /** QUIT and close; never throws. */
    close(): Promise<void>;
    /** False once the connection is broken; the owner then opens a new session. */
    readonly usable: boolean;
    /** Short description for logs (for example the upstream's greeting name). */
    readonly peer: string;
}

export interface Upstream {
    /** Opens a session for one client; may throw UpstreamError. */
    open(client: ClientIdentity): Promise<UpstreamSession>;
    /** Readiness probe: connects and greets (or checks the folder); throws UpstreamError when unusable. */
    probe(): Promise<void>;
    readonly description: string;
}
