/**
 * The contract between a session and the mail server behind the proxy.
 * An upstream either answers with an SMTP reply (any class, returned, never thrown) or
 * fails with an UpstreamError (unreachable, timed out, closed, protocol violation), which
 * the session turns into `451 4.4.1`. Nothing here decides policy.
 */
import type { Readable } from 'node:stream';
import type { ClientIdentity } from '../types.ts';

/** What the upstream can take, from its EHLO reply (capabilities.ts reads it). */
export interface UpstreamCapabilities {
    /** The upstream's message size limit; null when it declared none (no SIZE, `SIZE`, or `SIZE 0`). */
    readonly size: number | null;
    readonly eightBitMime: boolean;
    readonly smtputf8: boolean;
    /** DSN (RFC 3461): RET and ENVID on MAIL, NOTIFY and ORCPT on RCPT. */
    readonly dsn: boolean;
    /** REQUIRETLS (RFC 8689): advertised, and the connection to the upstream is encrypted. */
    readonly requireTls: boolean;
}

/** A reply received from the upstream. */
export interface UpstreamReply {
    readonly code: number;
    /** Enhanced status code found at the start of the text, if any. */
    readonly enhanced: string | null;
    /** The text of all lines joined with a space, enhanced code removed. */
    readonly text: string;
}

/**
 * MAIL FROM parameters to pass on (RFC 1870 SIZE, RFC 6152 BODY, RFC 6531 SMTPUTF8, RFC 3461
 * RET and ENVID, RFC 8689 REQUIRETLS). Values are as the client wrote them, already validated.
 * SIZE is left out where the upstream does not take it; any other parameter the upstream does
 * not advertise fails the command with UpstreamError('unsupported'): nothing is dropped.
 */
export interface MailParams {
    readonly size?: number;
    readonly body?: '7BIT' | '8BITMIME';
    readonly smtputf8?: boolean;
    readonly ret?: 'FULL' | 'HDRS';
    /** xtext, as received. */
    readonly envid?: string;
    readonly requireTls?: boolean;
}

/** RCPT TO parameters to pass on (RFC 3461 NOTIFY and ORCPT), as the client wrote them. */
export interface RcptParams {
    /** `NEVER`, or a comma-separated list of SUCCESS, FAILURE, DELAY (upper case). */
    readonly notify?: string;
    /** `addr-type;xtext`, as received. */
    readonly orcpt?: string;
}

/**
 * Why an upstream operation failed. `unsupported`: the transaction asked for an extension the
 * upstream does not offer; nothing was sent and the connection stays usable.
 */
export type UpstreamFailure = 'connect' | 'timeout' | 'closed' | 'protocol' | 'xclient' | 'tls' | 'io' | 'unsupported';

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

/** The transaction asked for an extension (`feature`, as named in EHLO) the upstream does not offer. */
export class UnsupportedFeatureError extends UpstreamError {
    readonly feature: string;
    constructor(feature: string, message: string) {
        super('unsupported', message);
        this.name = 'UnsupportedFeatureError';
        this.feature = feature;
    }
}

/**
 * One connection to the upstream, used for the transactions of one client session in turn
 * (without XCLIENT it may afterwards serve another client, never two at once).
 */
export interface UpstreamSession {
    /** Sends MAIL FROM (RSET first if a transaction is open). */
    mailFrom(address: string, params: MailParams): Promise<UpstreamReply>;
    rcptTo(address: string, params?: RcptParams): Promise<UpstreamReply>;
    /**
     * Sends DATA and then the message. `message` yields the message in canonical form
     * (CRLF line endings, dots not stuffed); the session dot-stuffs it and writes the
     * terminator only after the whole source was read without error. If the source fails,
     * the connection is dropped without a terminator, so the upstream never takes a partial
     * message as complete, and the SMTP client rejects with the source's own error.
     */
    data(message: Readable): Promise<UpstreamReply>;
    /** Abandons the current transaction (RSET). */
    reset(): Promise<void>;
    /** QUIT and close, or keep the connection idle for the next client (see smtp-client.ts); never throws. */
    close(): Promise<void>;
    /** False once the connection is broken; the owner then opens a new session. */
    readonly usable: boolean;
    /** Short description for logs (for example the upstream's greeting name). */
    readonly peer: string;
    /** What this connection's upstream advertised (after XCLIENT, the EHLO that followed it). */
    readonly capabilities: UpstreamCapabilities;
}

export interface Upstream {
    /** Opens a session for one client; may throw UpstreamError. */
    open(client: ClientIdentity): Promise<UpstreamSession>;
    /**
     * Readiness probe: connects and greets (or checks the folder) and returns what the upstream
     * advertised; throws UpstreamError when unusable.
     */
    probe(): Promise<UpstreamCapabilities>;
    /** Ends the idle connections kept for reuse (shutdown); sessions in use end as they close. */
    close?(): Promise<void>;
    readonly description: string;
}
