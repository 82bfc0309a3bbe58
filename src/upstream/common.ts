/**
 * Pieces shared by the upstream implementations: the dependencies they are given
 * (our own host name, an optional pino-like logger) and the checks that keep envelope
 * addresses and parameters from smuggling extra commands, parameters or header lines.
 * Nothing here performs I/O or decides policy.
 */
import { isCanonicalAddress, type CommandKind } from '../envelope/command.ts';
import { UpstreamError } from './types.ts';

/** The subset of a pino logger the upstreams use. */
export interface UpstreamLogger {
    debug(obj: object, msg?: string): void;
    info(obj: object, msg?: string): void;
    warn(obj: object, msg?: string): void;
    error(obj: object, msg?: string): void;
    /** As pino's: lets a caller skip building a line that would be dropped. */
    isLevelEnabled?(level: string): boolean;
}

export interface UpstreamDeps {
    /** Our own host name: the EHLO argument towards the upstream, and the Maildir file name suffix. */
    readonly hostname: string;
    readonly logger?: UpstreamLogger;
    /**
     * Told of each upstream connection given to a client, new (`opened`) or idle and reused after
     * RSET (`reused`), and of each idle one found unusable when taken (`discarded`).
     */
    readonly onConnection?: (outcome: UpstreamConnectionOutcome) => void;
    /** Told of each NOOP sent to keep a connection alive while its transaction waits (smtp-client.ts). */
    readonly onKeepAlive?: () => void;
    /**
     * Told of each TLS handshake after STARTTLS that failed with `starttls: opportunistic`, after
     * which the mail goes without TLS (smtp-client.ts).
     */
    readonly onTlsFallback?: () => void;
    /**
     * The silence after which a connection that had two junk commands since its last delivery
     * may get a keepalive NOOP (15 s, longer than Postfix's smtpd_timeout under stress; see
     * smtp-client.ts); tests shorten it.
     */
    readonly stressProbeMs?: number;
    /** A monotonic clock in milliseconds (performance.now when not given), for the age of kept connections. */
    readonly now?: () => number;
}

export type UpstreamConnectionOutcome = 'opened' | 'reused' | 'discarded';

const noop = (): void => {};

/** A logger that drops everything, for callers that give none. */
export const silentLogger: UpstreamLogger = { debug: noop, info: noop, warn: noop, error: noop };

// eslint-disable-next-line no-control-regex
const CONTROL = /[\x00-\x1f\x7f]/;
// eslint-disable-next-line no-control-regex
const UNSAFE_PARAM = /[\x00-\x20\x7f<>=]/;

/**
 * Refuses an envelope address that is not exactly one mailbox in canonical form (see
 * envelope/command.ts): a control character (CR and LF above all: RFC 5321 section 2.3.8
 * allows them only as the line ending) or an angle bracket outside quotes would let the value
 * end the path early and add parameters, commands or, in a Maildir, header lines of its own.
 */
export function assertSafeAddress(value: string, kind: CommandKind, what: string): void {
    if (CONTROL.test(value) || !isCanonicalAddress(value, kind)) {
        throw new UpstreamError('protocol', `${what} is not a well-formed address; refused`);
    }
}

/** Refuses a parameter value that could end the parameter early: controls, space, `<`, `>`, `=`. */
export function assertSafeParam(value: string, what: string): void {
    if (value === '' || UNSAFE_PARAM.test(value)) {
        throw new UpstreamError('protocol', `${what} value contains a character not allowed in a parameter; refused`);
    }
}
