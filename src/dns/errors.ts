/**
 * DNS errors shaped exactly like node:dns errors (`code`, `syscall`, `hostname`, message
 * `queryTxt ENOTFOUND example.com`), because mailauth decides between "no record" and
 * "temporary error" by `err.code`. Also maps response codes (RFC 1035 section 4.1.1) to
 * those codes. Must not invent codes node:dns does not use.
 */

/** The codes this layer produces, all from node:dns's set. */
export type DnsErrorCode =
    | 'ENOTFOUND' // NXDOMAIN (RCODE 3)
    | 'ENODATA' // NOERROR without records of the asked type (RFC 2308 section 2.2, "NODATA")
    | 'EFORMERR' // RCODE 1
    | 'ESERVFAIL' // RCODE 2
    | 'ENOTIMP' // RCODE 4
    | 'EREFUSED' // RCODE 5
    | 'EBADRESP' // an answer that could not be parsed, or an RCODE we do not know
    | 'ETIMEOUT'
    | 'ECONNREFUSED'
    | 'EBADNAME'
    | 'EINVAL'
    | 'ECANCELLED';

export interface DnsError extends Error {
    code: DnsErrorCode;
    syscall: string;
    hostname: string;
}

export function dnsError(code: DnsErrorCode, syscall: string, hostname: string): DnsError {
    const err = new Error(`${syscall} ${code} ${hostname}`) as DnsError;
    err.code = code;
    err.syscall = syscall;
    err.hostname = hostname;
    return err;
}

/**
 * The error for a negative answer (NXDOMAIN, NODATA): the same shape as dnsError(), without a
 * stack trace. A negative answer is a normal result that SPF, DKIM and DMARC get many times per
 * message, mostly from the cache; where in the resolver it was settled tells nobody anything.
 */
export function negativeAnswer(code: 'ENOTFOUND' | 'ENODATA', syscall: string, hostname: string): DnsError {
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    try {
        return dnsError(code, syscall, hostname);
    } finally {
        Error.stackTraceLimit = limit;
    }
}

/** The error code for a response code other than NOERROR, as c-ares reports it. */
export function rcodeError(rcode: number): DnsErrorCode {
    switch (rcode) {
        case 1:
            return 'EFORMERR';
        case 2:
            return 'ESERVFAIL';
        case 3:
            return 'ENOTFOUND';
        case 4:
            return 'ENOTIMP';
        case 5:
            return 'EREFUSED';
        default:
            return 'EBADRESP';
    }
}
