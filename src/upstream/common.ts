/**
 * Pieces shared by the upstream implementations: the dependencies they are given
 * (our own host name, an optional pino-like logger) and the check that keeps envelope
 * arguments from smuggling extra commands, parameters or header lines.
 * Nothing here performs I/O or decides policy.
 */
import { UpstreamError } from './types.ts';

/** The subset of a pino logger the upstreams use. */
export interface UpstreamLogger {
    debug(obj: object, msg?: string): void;
    info(obj: object, msg?: string): void;
    warn(obj: object, msg?: string): void;
    error(obj: object, msg?: string): void;
}

export interface UpstreamDeps {
    /** Our own host name: the EHLO argument towards the upstream, and the Maildir file name suffix. */
    readonly hostname: string;
    readonly logger?: UpstreamLogger;
}

const noop = (): void => {};

/** A logger that drops everything, for callers that give none. */
export const silentLogger: UpstreamLogger = { debug: noop, info: noop, warn: noop, error: noop };

// eslint-disable-next-line no-control-regex
const UNSAFE = /[\x00-\x1f\x7f<>]/;

/**
 * Refuses an envelope address or parameter that contains a control character (CR and LF
 * above all: RFC 5321 section 2.3.8 allows them only as the line ending) or an angle
 * bracket, either of which would let the value end the path early and add parameters,
 * commands or, in a Maildir, header lines of its own.
 */
export function assertSafeArgument(value: string, what: string): void {
    if (UNSAFE.test(value)) {
        throw new UpstreamError('protocol', `${what} contains a control character or angle bracket; refused`);
    }
}
