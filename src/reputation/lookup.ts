/**
 * Asks the configured DNS lists about one client address or one domain (RFC 5782), all lists
 * in parallel, through the project's caching resolver, each answer bounded by `timeoutMs`.
 * A list is asked only while its health probes say it can be trusted (zone-health.ts); an
 * answer that shows it cannot (a refusal code, an answer outside 127.0.0.0/8) distrusts it at
 * once and counts as an error, never as a listing. A domain whose registrable domain cannot be
 * asked under a list's zone (too long, dns-lists.ts domainQuery) is an error of that list, not
 * "not listed". Counts hits and errors per zone (the zone names come from the config, so the
 * labels are bounded).
 *
 * It reports what the lists said and must not decide anything: rules read the sums as facts.
 * It holds no per-client state; repeated questions are answered by the resolver's cache.
 */
import type { Metrics } from '../metrics.ts';
import { addressQuery, classifyAnswer, domainQuery, TOO_LONG, type ListErrorKind, type ListSite } from './dns-lists.ts';
import type { ConfiguredSite } from './sites.ts';
import type { ZoneHealth, ZoneKind } from './zone-health.ts';

/** `signal`: as for Resolver.resolve (the lookup is given up once every caller's signal aborted). */
export type Resolve = (name: string, rrtype: string, signal?: AbortSignal) => Promise<unknown>;

/** What the lists of one kind said about one address or domain. */
export interface ListVerdict {
    /** Sum of the weights of the lists that listed it. */
    readonly score: number;
    /** `zone=code` for every code a list answered (`zen.spamhaus.org=127.0.0.4`). */
    readonly listed: readonly string[];
    /** The zones that listed it, in config order. */
    readonly zones: readonly string[];
    /** The delisting pages of those zones that have one. */
    readonly delist: readonly string[];
    /** `zone: error` for every list whose answer was an error (not counted in the score). */
    readonly errors: readonly string[];
    /** Lists not asked because they are unhealthy. */
    readonly skipped: readonly string[];
    /** Queries sent to the resolver (answered from its cache or not). */
    readonly queries: number;
}

export const EMPTY_VERDICT: ListVerdict = Object.freeze({
    score: 0,
    listed: [],
    zones: [],
    delist: [],
    errors: [],
    skipped: [],
    queries: 0,
});

export type ListMetrics = Pick<Metrics, 'dnsblHits' | 'dnsblErrors'>;

export interface ListLookupOptions {
    readonly resolve: Resolve;
    readonly health: Pick<ZoneHealth, 'healthy' | 'distrust'>;
    /** Longest wait for one list's answer; a later answer is an error (`timeout`). */
    readonly timeoutMs: number;
    readonly metrics?: ListMetrics;
    /**
     * False for a lookup that only warms the cache or answers another question (the prefetch at
     * connect, the allow-list credit): its listings and errors are not counted, since the check
     * asks again and counts them; only an answer that disables the list is, as the check then
     * skips the list and never sees it. Default true.
     */
    readonly counted?: boolean;
    /**
     * When aborted, no new query is sent, and the queries sent are given up unless another
     * caller without a signal waits for them too.
     */
    readonly signal?: AbortSignal;
}

type Outcome = { answers: readonly string[] } | { error: unknown };

class ListTimeout extends Error {
    readonly code = 'ETIMEOUT';
}

async function ask(resolve: Resolve, name: string, timeoutMs: number, signal?: AbortSignal): Promise<Outcome> {
    let timer: NodeJS.Timeout | undefined;
    try {
        const answers = await Promise.race([
            resolve(name, 'A', signal),
            new Promise<never>((_, reject) => {
                timer = setTimeout(() => reject(new ListTimeout(`no answer within ${timeoutMs} ms`)), timeoutMs);
            }),
        ]);
        return { answers: Array.isArray(answers) ? (answers as string[]).map(String) : [] };
    } catch (error) {
        return { error };
    } finally {
        clearTimeout(timer);
    }
}

/**
 * Asks every healthy list of `sites` about `subject` (an IP address for `address` lists, a
 * domain for `domain` lists) and sums what they said.
 */
export async function askLists(
    subject: string,
    sites: readonly ConfiguredSite[],
    kind: ZoneKind,
    opts: ListLookupOptions,
): Promise<ListVerdict> {
    if (sites.length === 0) return EMPTY_VERDICT;
    const counted = opts.counted ?? true;
    const skipped: string[] = [];
    const asked: { cs: ConfiguredSite; name: string }[] = [];
    const errors: string[] = [];
    for (const cs of sites) {
        const name = kind === 'address' ? addressQuery(subject, cs.site.zone) : domainQuery(subject, cs.site.zone);
        if (name === null) return EMPTY_VERDICT;
        if (!opts.health.healthy(cs.site, kind)) {
            skipped.push(cs.site.zone);
        } else if (name === TOO_LONG) {
            errors.push(`${cs.site.zone}: the registrable domain is too long to ask under the zone`);
            if (counted) opts.metrics?.dnsblErrors.inc({ zone: cs.site.zone, kind: 'too_long' });
        } else if (!opts.signal?.aborted) {
            asked.push({ cs, name });
        }
    }
    const outcomes = await Promise.all(asked.map((a) => ask(opts.resolve, a.name, opts.timeoutMs, opts.signal)));
    let score = 0;
    const listed: string[] = [];
    const zones: string[] = [];
    const delist: string[] = [];
    for (const [i, { cs }] of asked.entries()) {
        const outcome = outcomes[i]!;
        const zone = cs.site.zone;
        const timedOut = 'error' in outcome && outcome.error instanceof ListTimeout;
        const answer = classifyAnswer(cs.site, outcome);
        if (answer.kind === 'listed') {
            score += cs.site.weight;
            listed.push(...answer.codes.map((c) => `${zone}=${c}`));
            zones.push(zone);
            if (cs.delist) delist.push(cs.delist);
            if (counted) opts.metrics?.dnsblHits.inc({ zone });
        } else if (answer.kind === 'error') {
            const errorKind: ListErrorKind | 'timeout' = timedOut ? 'timeout' : answer.error;
            errors.push(`${zone}: ${timedOut ? 'timeout' : answer.detail}`);
            // the list itself says it cannot be trusted: stop asking it until a probe passes
            const distrusts = answer.error === 'refused' || answer.error === 'bogus';
            // an answer that disables the list is counted by whichever lookup got it (the check then
            // skips the list); any other error only by a counted lookup
            if (distrusts ? opts.health.healthy(cs.site, kind) : counted) {
                opts.metrics?.dnsblErrors.inc({ zone, kind: errorKind });
            }
            if (distrusts) distrust(opts, cs.site, kind, answer.detail);
        }
    }
    return {
        score: round(score),
        listed,
        zones,
        delist: [...new Set(delist)],
        errors,
        skipped,
        queries: asked.length,
    };
}

function distrust(opts: ListLookupOptions, site: ListSite, kind: ZoneKind, why: string): void {
    opts.health.distrust(site, kind, why);
}

/** Weights may be decimals: keep sums free of binary noise (0.1 + 0.2). */
function round(n: number): number {
    return Math.round(n * 1000) / 1000;
}
