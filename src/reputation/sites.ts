/**
 * One configured DNS list as an operator writes it under `reputation:`: a site in postscreen's
 * syntax (`zone[=filter][*weight]`, see dns-lists.ts), then optionally, after white space, the
 * web page where a listed sender looks its address up and asks to be removed
 * (`zen.spamhaus.org=127.0.0.[2..11]*3 https://check.spamhaus.org/`). The page is only ever
 * shown in a reply text; it is never fetched.
 *
 * Block lists (`dnsbl`, `rhsbl`) have positive weights (1 when left out) and allow lists
 * (`dnswl`) negative ones (-1 when left out), so a score can never be pushed the wrong way by
 * a typo. Pure: it must not query DNS or keep state.
 */
import { parseListSite, type ListSite } from './dns-lists.ts';

export type ListKind = 'dnsbl' | 'dnswl' | 'rhsbl';

export interface ConfiguredSite {
    readonly site: ListSite;
    /** Where a listed sender asks to be removed (http or https URL), or null. */
    readonly delist: string | null;
}

/** At most this many lists of each kind: every connection asks each of them. */
export const MAX_SITES = 20;

const URL_RE = /^https?:\/\/[\x21-\x7e]{1,200}$/;

/** Parses one entry of `reputation.dnsbl`, `.dnswl` or `.rhsbl`; a message naming the problem otherwise. */
export function parseConfiguredSite(text: string, kind: ListKind): ConfiguredSite | { error: string } {
    const [siteText = '', delist, ...rest] = text.trim().split(/\s+/);
    if (rest.length > 0) return { error: `"${text}" is not a list site followed by at most one web address` };
    if (delist !== undefined && !URL_RE.test(delist)) {
        return {
            error: `"${delist}" is not a web address (http:// or https://) where a listed sender can ask for removal`,
        };
    }
    const parsed = parseListSite(siteText);
    if ('error' in parsed) return parsed;
    const explicit = siteText.includes('*');
    const weight = explicit ? parsed.weight : kind === 'dnswl' ? -1 : 1;
    if (kind === 'dnswl' && weight >= 0) {
        return { error: `an allow list needs a negative weight (e.g. ${parsed.zone}*-5); block lists go under dnsbl` };
    }
    if (kind !== 'dnswl' && weight <= 0) {
        return { error: `a block list needs a positive weight (e.g. ${parsed.zone}*3); allow lists go under dnswl` };
    }
    return { site: { ...parsed, weight }, delist: delist ?? null };
}

/** The sites of a validated config list (the loader refused every entry that does not parse). */
export function configuredSites(texts: readonly string[], kind: ListKind): ConfiguredSite[] {
    const out: ConfiguredSite[] = [];
    for (const t of texts) {
        const s = parseConfiguredSite(t, kind);
        if (!('error' in s)) out.push(s);
    }
    return out;
}
