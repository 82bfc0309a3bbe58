/**
 * The DMARC disposition: what mailwarden does with a message once DMARC has been evaluated.
 * mailauth reports (result, record, alignment); this module decides. Pure functions only: no
 * DNS, no clock, no randomness, so every row of the decision table is a unit test.
 *
 * Decision order (docs/authentication.md, "The DMARC decision"):
 *   1. an authenticated submission client is our own user: `none` (override `local`);
 *   2. a From field that cannot be read (mailauth-bounds.ts: a nest of groups, a value over the
 *      author field limit): `reject`, whatever `rejectMultipleFrom` says (the reader may be
 *      shown one author while no author domain is evaluated); several From mailboxes with
 *      `rejectMultipleFrom`: `reject` (RFC 9989 section 11.5);
 *   3. `pass`, `none`, `permerror`: `none`;
 *   4. `temperror`: `none` when an identical-domain pass makes DMARC pass whatever the record
 *      says, or when every possible policy is `none`; `tempfail` otherwise (never `reject`);
 *   5. `fail`: the published policy that applies (`p` for the domain itself, `sp` for an
 *      existing subdomain, `np` for a non-existent one: RFC 9989 section 4.10.1, RFC 9091),
 *      lowered one level by `t=y` (RFC 9989 section 4.7) or by the historic `pct=0` (mapped to
 *      `t=y`; `pct=1..99` enforces fully, as RFC 9989 appendix A.6 lets receivers do); then a
 *      trusted ARC chain overrides it to `none` (RFC 8617 section 7.2); then a temporary DNS
 *      error that could have changed the outcome (an SPF or DKIM `temperror` on an identifier
 *      that could align, or an unknown domain existence deciding between `sp` and `np`) turns
 *      it into `tempfail`.
 *
 * It must not treat a temporary error as a permanent failure, and must not reject anything
 * DMARC did not fail.
 */
import { withoutTrailingDots } from '../net/domain.ts';

export type DmarcPolicy = 'none' | 'quarantine' | 'reject';
export type DmarcDisposition = DmarcPolicy | 'tempfail';
export type DmarcResult = 'pass' | 'fail' | 'none' | 'temperror' | 'permerror';
/** Why the disposition is lower than the policy: trusted ARC, our own user, or the domain's test mode. */
export type DmarcOverride = 'arc' | 'local' | 'testing';

const STRENGTH: Record<DmarcPolicy, number> = { none: 0, quarantine: 1, reject: 2 };
const POLICIES: readonly DmarcPolicy[] = ['none', 'quarantine', 'reject'];

export function isPolicy(v: unknown): v is DmarcPolicy {
    return typeof v === 'string' && (POLICIES as readonly string[]).includes(v);
}

/** The policy tags of the applied record, already validated (RFC 9989 section 4.10.1), plus t and pct. */
export interface AppliedRecord {
    readonly p: DmarcPolicy;
    readonly sp?: DmarcPolicy | undefined;
    readonly np?: DmarcPolicy | undefined;
    /** `y` or `n` as published (lower case), if present. */
    readonly t?: string | undefined;
    /** The historic `pct` (RFC 7489 section 6.3) when it is a whole number 0 to 100; else absent. */
    readonly pct?: number | undefined;
}

export interface DispositionInput {
    readonly result: DmarcResult;
    /** The author domain (RFC5322.From domain), normalized; null when there is no single one. */
    readonly authorDomain: string | null;
    /** Where the applied record was published (the DMARC policy domain), or null. */
    readonly recordDomain: string | null;
    readonly record: AppliedRecord | null;
    /** Whether the author domain exists (RFC 9989 appendix A.4); null when unknown or not needed. */
    readonly authorExists: boolean | null;
    /** A passing SPF or DKIM identifier identical to the author domain: aligned in every mode. */
    readonly exactlyAlignedPass: boolean;
    /** A temporary SPF or DKIM error on an identifier that could have aligned. */
    readonly alignedTemperror: boolean;
    /** Mailboxes in the From field(s). */
    readonly fromCount: number;
    /** A From field mailauth could not read within its bounds (mailauth-bounds.ts). */
    readonly fromUnreadable?: boolean;
    readonly rejectMultipleFrom: boolean;
    /** A trusted ARC sealer vouches for the author domain (arc-trust.ts). */
    readonly arcTrusted: boolean;
    /** The client authenticated with SMTP AUTH. */
    readonly authenticated: boolean;
}

export interface DispositionOutput {
    /** The published policy that applies (p, sp or np), before t=; null when none or unknown. */
    readonly policy: DmarcPolicy | null;
    /** The policy after t= (and pct=0); null when none or unknown. */
    readonly effective: DmarcPolicy | null;
    readonly disposition: DmarcDisposition;
    readonly override: DmarcOverride | null;
    /** A temporary DNS error decided the outcome (disposition `tempfail`). */
    readonly temperror: boolean;
    /** Short explanation for logs and `explain`. */
    readonly reason: string;
}

/** One level lower: reject → quarantine → none (RFC 9989 section 4.7, "t"). */
export function downgrade(p: DmarcPolicy): DmarcPolicy {
    return p === 'reject' ? 'quarantine' : 'none';
}

function strongest(list: readonly DmarcPolicy[]): DmarcPolicy {
    return list.reduce<DmarcPolicy>((a, b) => (STRENGTH[b] > STRENGTH[a] ? b : a), 'none');
}

/** Test mode: `t=y`, or `pct=0` when no `t` is published (the RFC 9989 mapping of the historic tag). */
export function isTesting(record: AppliedRecord): boolean {
    if (record.t === 'y') return true;
    if (record.t === 'n') return false;
    return record.pct === 0;
}

/**
 * The policies that may apply: one, or two (`sp` and `np`) when the author domain's existence
 * is unknown and they differ.
 */
export function applicablePolicies(
    record: AppliedRecord,
    authorDomain: string | null,
    recordDomain: string | null,
    authorExists: boolean | null,
): DmarcPolicy[] {
    if (authorDomain !== null && authorDomain === recordDomain) return [record.p];
    const sub = record.sp ?? record.p;
    if (record.np === undefined || record.np === sub) return [sub];
    if (authorExists === true) return [sub];
    if (authorExists === false) return [record.np];
    return [sub, record.np];
}

/** The historic pct tag from the raw record text: a whole number 0 to 100, else undefined (ignored). */
export function pctOf(rawRecord: string): number | undefined {
    const m = /(?:^|;)\s*pct\s*=\s*([0-9]{1,3})\s*(?:;|$)/i.exec(rawRecord);
    if (!m) return undefined;
    const n = Number(m[1]);
    return n <= 100 ? n : undefined;
}

export function decideDisposition(i: DispositionInput): DispositionOutput {
    const candidates = i.record ? applicablePolicies(i.record, i.authorDomain, i.recordDomain, i.authorExists) : [];
    const testing = i.record ? isTesting(i.record) : false;
    const effectives = [...new Set(candidates.map((p) => (testing ? downgrade(p) : p)))];
    const policy = candidates.length === 1 ? candidates[0]! : null;
    const effective = effectives.length === 1 ? effectives[0]! : null;
    const out = (
        disposition: DmarcDisposition,
        reason: string,
        override: DmarcOverride | null = null,
        temperror = false,
    ): DispositionOutput => ({ policy, effective, disposition, override, temperror, reason });

    if (i.authenticated) {
        // our own logged-in user: nothing is enforced; an override is recorded only when DMARC did not pass
        return out(
            'none',
            'authenticated submission client',
            i.result === 'pass' || i.result === 'none' ? null : 'local',
        );
    }
    if (i.fromUnreadable) return out('reject', 'a From field that cannot be read');
    if (i.rejectMultipleFrom && i.fromCount > 1) return out('reject', 'several From mailboxes');

    switch (i.result) {
        case 'pass':
            return out('none', 'DMARC pass');
        case 'none':
            return out('none', 'no DMARC policy');
        case 'permerror':
            return out('none', 'no single author domain');
        case 'temperror':
            if (i.exactlyAlignedPass) return out('none', 'an identifier identical to the author domain passed');
            if (i.record && strongest(effectives) === 'none') return out('none', 'every applicable policy is none');
            return out('tempfail', 'DMARC policy could not be determined (temporary DNS error)', null, true);
        case 'fail': {
            if (!i.record) return out('none', 'no DMARC policy');
            const worst = strongest(effectives);
            if (worst === 'none') {
                return testing && strongest(candidates) !== 'none'
                    ? out('none', 'domain policy in test mode', 'testing')
                    : out('none', 'policy none');
            }
            if (i.arcTrusted) return out('none', 'trusted ARC sealer vouches for the author domain', 'arc');
            if (i.alignedTemperror) {
                return out('tempfail', 'an SPF or DKIM check that could align had a temporary DNS error', null, true);
            }
            if (effectives.length > 1) {
                return out('tempfail', 'author domain existence unknown (temporary DNS error)', null, true);
            }
            return testing ? out(worst, 'domain policy in test mode', 'testing') : out(worst, 'domain policy');
        }
    }
}

/** Strict alignment: identical domains (RFC 9989 section 3.2.10.2). Domains are normalized. */
export function alignedStrict(identifier: string, authorDomain: string): boolean {
    return identifier === authorDomain;
}

/** Relaxed alignment: the same organizational domain (RFC 9989 section 3.2.10.1). */
export function alignedRelaxed(identifier: string, authorDomain: string, orgDomainOf: (d: string) => string): boolean {
    return identifier === authorDomain || orgDomainOf(identifier) === orgDomainOf(authorDomain);
}

/**
 * Whether an identifier could align with the author domain, without further DNS: identical,
 * or (relaxed) at or below the author's organizational domain. Used to judge whether a
 * temporary error on that identifier could have changed the outcome.
 */
export function couldAlign(
    identifier: string,
    authorDomain: string,
    orgDomain: string | null,
    strict: boolean,
): boolean {
    if (identifier === authorDomain) return true;
    if (strict) return false;
    if (orgDomain === null) return identifier.split('.').pop() === authorDomain.split('.').pop();
    return identifier === orgDomain || identifier.endsWith(`.${orgDomain}`);
}

/** Lower-case, without the root dot; what identifiers are compared as. */
export function normalizeDomain(d: string): string {
    return withoutTrailingDots(d.trim().toLowerCase());
}
