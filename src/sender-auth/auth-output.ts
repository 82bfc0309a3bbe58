/**
 * mailauth's result as the `mailauth` check reads it (src/sender-auth/mailauth.ts) and the first
 * readings of it shared with verify-message.ts: the SPF result and domain, the DKIM results in
 * order, the passing signing domains. Pure; it must not decide anything or load mailauth.
 */
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
    readonly status: { readonly result: string; readonly aligned?: string | false };
    readonly info?: string;
}
export interface ArcChainEntry {
    readonly i?: number;
    readonly 'arc-seal'?: { readonly parsed?: { readonly d?: { readonly value?: unknown } } };
    readonly 'arc-authentication-results'?: { readonly original?: Buffer | string };
}
export interface AuthResult {
    readonly dkim: { readonly headerFrom?: string[]; readonly fromFields?: number; readonly results?: DkimRow[] };
    readonly spf:
        | false
        | {
              readonly domain?: string;
              readonly status: { readonly result: string };
              readonly header?: string;
              readonly info?: string;
          };
    readonly dmarc: false | MailauthDmarcResponse;
    readonly dmarcSkipReason?: string;
    readonly arc:
        | false
        | {
              readonly status: { readonly result: string };
              readonly i?: number | false;
              readonly info?: string;
              readonly chain?: ArcChainEntry[];
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
    res: AuthResult,
    authenticated: boolean,
): { spf: Exclude<AuthResult['spf'], false> | null; spfRes: SpfResult; spfDomain: string | null } {
    const spf = authenticated ? null : res.spf || null;
    const spfRes = authenticated ? 'none' : spfResult(spf?.status.result);
    const spfDomain = spf?.domain ? normalizeDomain(spf.domain) : null;
    return { spf, spfRes, spfDomain };
}

/** The DKIM rows that are signatures, and the domains of the passing ones (normalized, once each). */
export function dkimOutcome(res: AuthResult): { signatures: DkimRow[]; passingDomains: string[] } {
    const signatures = (res.dkim.results ?? []).filter((r) => r.signingDomain !== undefined);
    const passingDomains = [
        ...new Set(signatures.filter((r) => r.status.result === 'pass').map((r) => normalizeDomain(r.signingDomain!))),
    ];
    return { signatures, passingDomains };
}
