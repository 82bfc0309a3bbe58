/**
 * mailauth's result as the `mailauth` check reads it (src/sender-auth/mailauth.ts) and the first
 * readings of it shared with verify-message.ts: the SPF result and domain, the DKIM results in
 * order, the passing signing domains; and `authOutput`, which keeps of a result exactly the parts
 * the check reads, as plain data (what crosses from the verification thread, and what the check
 * gets on the main thread too, so both read the same). Pure; it must not decide anything or load
 * mailauth.
 */
import { arcResInfo, dkimResInfo, receivedSpfValue, spfResInfo } from './auth-results.ts';
import { normalizeDomain } from './dmarc-policy.ts';
import type { MailauthDmarcResponse } from './dmarc-evaluate.ts';

export const SPF_RESULTS = ['pass', 'fail', 'softfail', 'neutral', 'none', 'temperror', 'permerror'] as const;
export type SpfResult = (typeof SPF_RESULTS)[number];

/** DKIM results from best to worst: a temporary error may still turn into a pass on retry. */
export const DKIM_ORDER = ['pass', 'temperror', 'fail', 'policy', 'neutral', 'permerror', 'none'] as const;
export type DkimResult = (typeof DKIM_ORDER)[number];

/** The part of mailauth's result this check reads (its typings are looser than its output). */
export interface DkimRow {
    readonly signingDomain?: string;
    readonly status: {
        readonly result: string;
        readonly aligned?: string | false;
        /** Body bytes after the signed length (l=, RFC 6376 section 3.5). */
        readonly underSized?: number;
        /** The body hash did not match (mailauth's `neutral`, or `fail` in its strict mode). */
        readonly bodyHashFailed?: true;
    };
    /** The dkim resinfo, written by `dkimResInfo`. */
    readonly info?: string;
}
export interface ArcChainEntry {
    readonly i?: number;
    readonly 'arc-seal'?: { readonly parsed?: { readonly d?: { readonly value?: unknown } } };
    readonly 'arc-authentication-results'?: { readonly original?: Buffer | string };
}
/** What the check reads of mailauth's result (`authOutput` keeps exactly this). */
export interface AuthOutput {
    readonly dkim: { readonly headerFrom?: string[]; readonly fromFields?: number; readonly results?: DkimRow[] };
    readonly spf:
        | false
        | {
              readonly domain?: string;
              readonly status: { readonly result: string };
              /** The Received-SPF value, written by `receivedSpfValue` (not mailauth's line). */
              readonly header?: string;
              /** The spf resinfo, written by `spfResInfo`. */
              readonly info?: string;
          };
    readonly arc:
        | false
        | {
              readonly status: { readonly result: string };
              /** The arc resinfo, written by `arcResInfo`. */
              readonly info?: string;
              /** Non-enumerable in mailauth: the validated chain. */
              readonly chain?: ArcChainEntry[] | false;
          };
}
/** mailauth's result as verify-message.ts reads it: what the check reads, and DMARC. */
export interface AuthResult extends AuthOutput {
    readonly dmarc: false | MailauthDmarcResponse;
    readonly dmarcSkipReason?: string;
}

/** The text of a field mailauth gives as a Buffer or a string. */
function text(value: unknown): string | undefined {
    if (typeof value === 'string') return value;
    return Buffer.isBuffer(value) ? value.toString('utf8') : undefined;
}
const str = (value: unknown): string | undefined => (typeof value === 'string' ? value : undefined);
const num = (value: unknown): number | undefined => (typeof value === 'number' ? value : undefined);

/** The parts of mailauth's SPF and ARC results our texts are written from (beyond its typings). */
interface RawSpf {
    readonly domain?: unknown;
    readonly status: { readonly result: unknown; readonly comment?: unknown };
    readonly 'envelope-from'?: unknown;
    readonly 'client-ip'?: unknown;
    readonly helo?: unknown;
}
/** mailauth's comment on a DKIM signature whose body hash did not match. */
const BODY_HASH_FAILED = 'body hash did not verify';
interface RawDkimStatus {
    readonly comment?: unknown;
    readonly header?: { readonly i?: unknown; readonly s?: unknown; readonly a?: unknown; readonly b?: unknown };
}
interface RawArcStatus {
    readonly comment?: unknown;
    readonly smtp?: { readonly 'remote-ip'?: unknown };
}

function spfOutput(spf: RawSpf): Exclude<AuthOutput['spf'], false> {
    const parts = {
        result: String(spf.status.result),
        comment: str(spf.status.comment),
        envelopeFrom: str(spf['envelope-from']),
        clientIp: str(spf['client-ip']),
        helo: str(spf.helo),
    };
    return {
        domain: str(spf.domain),
        status: { result: parts.result },
        header: receivedSpfValue(parts),
        info: spfResInfo(parts),
    };
}

/**
 * The parts of mailauth's result the check reads, copied as plain data: strings, numbers,
 * booleans, arrays and objects of them, a few hundred bytes (mailauth's whole result, with each
 * signature's canonicalized header, key and signed header fields, is about ten times that and
 * ten times the objects, which a structured clone would copy for nothing). A value of another
 * type than the check reads is left out, as the check would ignore it.
 */
export function authOutput(res: AuthOutput): AuthOutput {
    const { dkim, spf, arc } = res;
    return {
        dkim: {
            headerFrom: Array.isArray(dkim.headerFrom) ? dkim.headerFrom.map(String) : undefined,
            fromFields: num(dkim.fromFields),
            results: dkim.results?.map((r) => ({
                signingDomain: str(r.signingDomain),
                status: {
                    result: String(r.status.result),
                    aligned: typeof r.status.aligned === 'string' ? r.status.aligned : undefined,
                    underSized: num(r.status.underSized),
                    bodyHashFailed:
                        (r.status as RawDkimStatus).comment === BODY_HASH_FAILED && r.status.result !== 'pass'
                            ? true
                            : undefined,
                },
                info: dkimResInfo({
                    result: String(r.status.result),
                    comment: str((r.status as RawDkimStatus).comment),
                    underSized: num(r.status.underSized),
                    d: str(r.signingDomain),
                    i: str((r.status as RawDkimStatus).header?.i),
                    s: str((r.status as RawDkimStatus).header?.s),
                    a: str((r.status as RawDkimStatus).header?.a),
                    b: str((r.status as RawDkimStatus).header?.b),
                }),
            })),
        },
        spf: spf && spfOutput(spf),
        arc: arc && {
            status: { result: String(arc.status.result) },
            // mailauth writes no arc resinfo for `none` in its lenient mode; the check writes `arc=none` then
            info:
                arc.info === undefined
                    ? undefined
                    : arcResInfo({
                          result: String(arc.status.result),
                          comment: str((arc.status as RawArcStatus).comment),
                          instance: num((arc as { i?: unknown }).i),
                          remoteIp: str((arc.status as RawArcStatus).smtp?.['remote-ip']),
                      }),
            chain: Array.isArray(arc.chain)
                ? arc.chain.map((e) => ({
                      i: num(e.i),
                      'arc-seal': { parsed: { d: { value: str(e['arc-seal']?.parsed?.d?.value) } } },
                      'arc-authentication-results': { original: text(e['arc-authentication-results']?.original) },
                  }))
                : undefined,
        },
    };
}

export function spfResult(r: string | undefined): SpfResult {
    return (SPF_RESULTS as readonly string[]).includes(r ?? '') ? (r as SpfResult) : 'permerror';
}

export function dkimResult(r: string): DkimResult {
    return (DKIM_ORDER as readonly string[]).includes(r) ? (r as DkimResult) : 'permerror';
}

/** The best of several DKIM results (DKIM_ORDER); `none` without signatures. */
export function bestDkim(results: readonly string[]): DkimResult {
    let best: DkimResult = 'none';
    for (const r of results.map(dkimResult)) if (DKIM_ORDER.indexOf(r) < DKIM_ORDER.indexOf(best)) best = r;
    return best;
}

/** The SPF part: mailauth's row, its result and its domain; not evaluated (`none`) for a logged-in client. */
export function spfOutcome(
    res: AuthOutput,
    authenticated: boolean,
): { spf: Exclude<AuthOutput['spf'], false> | null; spfRes: SpfResult; spfDomain: string | null } {
    const spf = authenticated ? null : res.spf || null;
    const spfRes = authenticated ? 'none' : spfResult(spf?.status.result);
    const spfDomain = spf?.domain ? normalizeDomain(spf.domain) : null;
    return { spf, spfRes, spfDomain };
}

/** The DKIM rows that are signatures, and the domains of the passing ones (normalized, once each). */
export function dkimOutcome(res: AuthOutput): { signatures: DkimRow[]; passingDomains: string[] } {
    const signatures = (res.dkim.results ?? []).filter((r) => r.signingDomain !== undefined);
    const passingDomains = [
        ...new Set(signatures.filter((r) => r.status.result === 'pass').map((r) => normalizeDomain(r.signingDomain!))),
    ];
    return { signatures, passingDomains };
}
