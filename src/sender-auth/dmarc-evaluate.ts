/**
 * DMARC evaluation in the two modes mailwarden offers, brought to one shape (DmarcEvaluation)
 * for dmarc-policy.ts to decide on:
 *   - `rfc9989` (default): mailauth's own evaluation, which finds the organizational domain and
 *     the policy record by the DNS tree walk (RFC 9989 section 4.10) and handles psd=, np= and
 *     t= (fromMailauth);
 *   - `rfc7489`: record at the author domain, else at its organizational domain taken from the
 *     Public Suffix List (RFC 7489 sections 3.2 and 6.6.3), else at its public suffix when that
 *     record says psd=y (RFC 9091's public suffix domains, opted into by the RFC 9989 tag);
 *     relaxed alignment compares PSL organizational domains (evaluateRfc7489). Several records
 *     at a name end discovery without a policy (RFC 7489 section 6.6.3 step 5). Record parsing
 *     and the author domain rules are mailauth's.
 *
 * Every DNS query goes through the resolver given; nothing here decides a disposition.
 */
import type { DNSResolver } from 'mailauth';
import {
    alignedRelaxed,
    alignedStrict,
    isPolicy,
    normalizeDomain,
    pctOf,
    type AppliedRecord,
    type DmarcResult,
} from './dmarc-policy.ts';
import {
    dmarc as mailauthDmarc,
    domainExists,
    getAuthorDomain,
    getPolicyTags,
    parseDmarcRecord,
    type DmarcRecord,
    type DnsResolve,
} from './mailauth-internals.ts';
import { organizationalDomain, publicSuffixList, type SuffixList } from './psl.ts';

export type DmarcMode = 'rfc9989' | 'rfc7489';

export interface DmarcEvaluation {
    readonly result: DmarcResult;
    /** The author domain as compared (normalized, no root dot); null without a single one. */
    readonly authorDomain: string | null;
    /** The author domain as reported in `header.from` (RFC 8601 section 2.7.2). */
    readonly headerFrom: string | null;
    /** Why DMARC could not be evaluated (RFC 9989 section 5.3.1), for `permerror`. */
    readonly skipReason: string | null;
    readonly recordDomain: string | null;
    readonly orgDomain: string | null;
    readonly record: AppliedRecord | null;
    /** The raw record text. */
    readonly rr: string | null;
    readonly adkimStrict: boolean;
    readonly aspfStrict: boolean;
    /** The aligned passing identifiers found, if any. */
    readonly spfAligned: string | null;
    readonly dkimAligned: string | null;
    /** For temperror: what failed. */
    readonly error: string | null;
}

/** What DMARC needs from SPF and DKIM (RFC 9989 section 4.4). */
export interface DmarcInput {
    /** The RFC5322.From addresses, over all From fields. */
    readonly headerFrom: readonly string[];
    readonly fromFields: number;
    /** Domains with an SPF pass (MAIL FROM, or HELO for the null sender). */
    readonly spfDomains: readonly string[];
    /** Signing domains of passing DKIM signatures. */
    readonly dkimDomains: readonly string[];
}

/** mailauth's DMARC response, as far as it is read here. */
export interface MailauthDmarcResponse {
    readonly status: { readonly result: string; readonly header?: { readonly from?: string } };
    readonly domain?: string;
    readonly policyDomain?: string | null;
    readonly rr?: string;
    readonly alignment?: {
        readonly spf?: { readonly result?: string; readonly strict?: boolean };
        readonly dkim?: { readonly result?: string; readonly strict?: boolean };
    };
    readonly error?: string;
    /** Non-enumerable in mailauth: the applied record, parsed. */
    readonly record?: DmarcRecord;
}

function asResult(r: string): DmarcResult {
    return r === 'pass' || r === 'fail' || r === 'none' || r === 'temperror' || r === 'permerror' ? r : 'permerror';
}

/** The applied record's policy tags with t and pct, or null when it gets no DMARC processing. */
export function appliedRecord(record: DmarcRecord): AppliedRecord | null {
    const tags = getPolicyTags(record);
    if (!tags || !isPolicy(tags.p)) return null;
    const t = typeof record.t === 'string' ? record.t.toLowerCase() : undefined;
    return {
        p: tags.p,
        sp: isPolicy(tags.sp) ? tags.sp : undefined,
        np: isPolicy(tags.np) ? tags.np : undefined,
        t,
        pct: pctOf(record.rr),
    };
}

const EMPTY = {
    skipReason: null,
    recordDomain: null,
    orgDomain: null,
    record: null,
    rr: null,
    adkimStrict: false,
    aspfStrict: false,
    spfAligned: null,
    dkimAligned: null,
    error: null,
} as const;

/** Brings mailauth's result (`authenticate().dmarc` or `dmarc()`) to the common shape. */
export function fromMailauth(
    response: MailauthDmarcResponse | false | undefined,
    skipReason: string | null | undefined,
): DmarcEvaluation {
    if (!response) {
        return {
            ...EMPTY,
            // no single author domain: DMARC cannot be evaluated (RFC 9989 section 5.3.1)
            result: 'permerror',
            authorDomain: null,
            headerFrom: null,
            skipReason: skipReason ?? 'no-author-domain',
        };
    }
    const headerFrom = response.status.header?.from ?? null;
    const record = response.record ?? null;
    return {
        ...EMPTY,
        result: asResult(response.status.result),
        authorDomain: headerFrom === null ? null : normalizeDomain(headerFrom),
        headerFrom,
        recordDomain: response.policyDomain ?? null,
        orgDomain: response.domain ?? null,
        record: record ? appliedRecord(record) : null,
        rr: response.rr ?? null,
        adkimStrict: response.alignment?.dkim?.strict === true,
        aspfStrict: response.alignment?.spf?.strict === true,
        spfAligned: response.alignment?.spf?.result ?? null,
        dkimAligned: response.alignment?.dkim?.result ?? null,
        error: response.error ?? null,
    };
}

/** DMARC by the RFC 9989 tree walk, through mailauth (what `authenticate()` does internally). */
export async function evaluateRfc9989(input: DmarcInput, resolve: DnsResolve): Promise<DmarcEvaluation> {
    const author = getAuthorDomain([...input.headerFrom], input.fromFields);
    if (!author.authorDomain) return fromMailauth(false, author.reason);
    const response = await mailauthDmarc({
        headerFrom: [...input.headerFrom],
        fromFields: input.fromFields,
        spfDomains: [...input.spfDomains],
        dkimDomains: input.dkimDomains.map((domain) => ({ domain })),
        // mailauth's typings declare a narrower resolver than the node:dns-shaped one it calls
        resolver: resolve as DNSResolver,
    });
    return fromMailauth(response, null);
}

/** RFC 7489 section 6.6.3 and RFC 9989 section 4.7 "v": only records that begin with exactly this. */
const DMARC_VERSION = /^[vV][ \t]*=[ \t]*DMARC1[ \t]*(?:;|$)/;
const NO_RECORD = new Set(['ENOTFOUND', 'ENODATA', 'EBADNAME']);

/**
 * The DMARC records published at `_dmarc.<name>`, parsed (a record that cannot be parsed is
 * kept as null, so that it still counts); an empty list for no record; throws on temporary
 * DNS errors.
 */
async function recordSet(name: string, resolve: DnsResolve, strict: boolean): Promise<(DmarcRecord | null)[]> {
    let rows: unknown;
    try {
        rows = await resolve(`_dmarc.${name}`, 'TXT');
    } catch (err) {
        if (NO_RECORD.has((err as { code?: string } | null)?.code ?? '')) return [];
        throw err;
    }
    return (Array.isArray(rows) ? rows : [])
        .map((row: unknown) => (Array.isArray(row) ? row.join('') : String(row)).trim())
        .filter((text) => DMARC_VERSION.test(text))
        .map((text) => parseDmarcRecord(text, { strict }));
}

/** DMARC with the Public Suffix List (RFC 7489), see the file comment. */
export async function evaluateRfc7489(
    input: DmarcInput,
    resolve: DnsResolve,
    opts: { strict?: boolean; list?: SuffixList } = {},
): Promise<DmarcEvaluation> {
    const list = opts.list ?? publicSuffixList();
    const author = getAuthorDomain([...input.headerFrom], input.fromFields);
    if (!author.authorDomain) return fromMailauth(false, author.reason);
    const authorDomain = author.authorDomain;
    const base = { ...EMPTY, authorDomain, headerFrom: author.domain };
    const orgOf = (d: string): string => organizationalDomain(d, list);
    const orgDomain = list.registrableDomain(authorDomain);
    const fetch = (name: string) => recordSet(name, resolve, opts.strict === true);

    // RFC 7489 section 6.6.3: the author domain's set; only when it is empty, the organizational
    // domain's; several records, or one that cannot be parsed, end discovery without a policy
    let found: { domain: string; record: DmarcRecord | null } | null = null;
    try {
        const own = await fetch(authorDomain);
        if (own.length > 0) found = { domain: authorDomain, record: own.length === 1 ? own[0]! : null };
        if (!found && orgDomain !== null && orgDomain !== authorDomain) {
            const org = await fetch(orgDomain);
            if (org.length > 0) found = { domain: orgDomain, record: org.length === 1 ? org[0]! : null };
        }
        const suffix = list.publicSuffix(authorDomain);
        if (!found && suffix !== null && suffix !== authorDomain && suffix !== orgDomain) {
            const psd = await fetch(suffix);
            if (psd.length === 1 && psd[0]!.psd === 'y') found = { domain: suffix, record: psd[0]! };
        }
    } catch (err) {
        return { ...base, result: 'temperror', orgDomain, error: err instanceof Error ? err.message : String(err) };
    }
    const record = found?.record ? appliedRecord(found.record) : null;
    if (!found?.record || !record) return { ...base, result: 'none', orgDomain };

    const adkimStrict = found.record.adkim === 's';
    const aspfStrict = found.record.aspf === 's';
    const aligns = (strict: boolean) => (d: string) =>
        strict
            ? alignedStrict(normalizeDomain(d), authorDomain)
            : alignedRelaxed(normalizeDomain(d), authorDomain, orgOf);
    const spfAligned = input.spfDomains.find(aligns(aspfStrict)) ?? null;
    const dkimAligned = input.dkimDomains.find(aligns(adkimStrict)) ?? null;
    return {
        ...base,
        result: spfAligned !== null || dkimAligned !== null ? 'pass' : 'fail',
        recordDomain: found.domain,
        orgDomain,
        record,
        rr: found.record.rr,
        adkimStrict,
        aspfStrict,
        spfAligned,
        dkimAligned,
    };
}

export function evaluateDmarc(mode: DmarcMode, input: DmarcInput, resolve: DnsResolve): Promise<DmarcEvaluation> {
    return mode === 'rfc7489' ? evaluateRfc7489(input, resolve) : evaluateRfc9989(input, resolve);
}

/**
 * Whether the author domain exists, when that decides between `sp` and `np` (RFC 9989 section
 * 4.10.1 and appendix A.4: only NXDOMAIN means it does not): true or false, null when not
 * needed or unknown because of a temporary DNS error. The answers mailauth already asked for
 * come from the resolver's cache.
 */
export async function authorExistence(ev: DmarcEvaluation, resolve: DnsResolve): Promise<boolean | null> {
    const rec = ev.record;
    if (!rec || rec.np === undefined || ev.authorDomain === null || ev.recordDomain === ev.authorDomain) return null;
    if (rec.np === (rec.sp ?? rec.p)) return null;
    try {
        return await domainExists(ev.authorDomain, resolve);
    } catch {
        return null;
    }
}
