/**
 * A per-message view of the resolver: it counts the queries one message's checks make and
 * refuses more once a budget is spent or once the check's signal aborts (timeout, failure or
 * end of the check), so one message can never cost more than `maxQueries` DNS lookups and a
 * check that was given up on starts no new ones.
 *
 * Every call counts, answered from the cache or not: the budget is then a property of the
 * message alone, so the same message gets the same result whether the cache is warm or cold
 * (a budget on misses only would pass a message after a cache hit that it refused before).
 * A refusal is a node:dns-shaped error with code ECANCELLED, which mailauth and our DMARC code
 * treat as a temporary DNS error (temperror), never as "no record": a spent budget can delay
 * or fail a message but never make it pass.
 *
 * It must not cache, retry or change answers; the shared resolver does all of that. Queries
 * already in flight when the budget runs out or the signal aborts finish in the shared
 * resolver (others may be waiting for the same answer); their results are still delivered.
 */
import { dnsError, type DnsError } from './errors.ts';

export type DnsResolve = (name: string, rrtype: string) => Promise<unknown>;

export interface ScopedResolver {
    /** The resolver to hand to the check's DNS users, same contract as `Resolver.resolve`. */
    readonly resolve: DnsResolve;
    /** Queries asked so far, the refused ones not included. */
    readonly queries: number;
    /** True once a query was refused because the budget was spent. */
    readonly exhausted: boolean;
    /**
     * Counts `n` queries asked of this budget and answered elsewhere (the verification thread
     * answers from its copy of the cache, and refuses past the same budget itself: see
     * budgetRefusal), and whether one was refused there.
     */
    tally(n: number, exhausted: boolean): void;
}

export interface ScopedOptions {
    /** Queries allowed; further ones are refused. */
    readonly maxQueries: number;
    /** Once aborted, every new query is refused. */
    readonly signal?: AbortSignal;
}

/** The refusal of a query past a budget of `max` queries for the message, as scopedResolver gives it. */
export function budgetRefusal(max: number, rrtype: string, name: string): DnsError {
    return refusal(rrtype, name, `DNS query budget of ${max} per message spent`);
}

function refusal(rrtype: string, name: string, why: string): DnsError {
    const err = dnsError('ECANCELLED', `query${String(rrtype ?? 'A').toUpperCase()}`, String(name));
    err.message = `${why}: ${String(rrtype ?? 'A').toUpperCase()} ${String(name)}`;
    return err;
}

export function scopedResolver(resolve: DnsResolve, opts: ScopedOptions): ScopedResolver {
    let queries = 0;
    let exhausted = false;
    const signal = opts.signal;
    const max = opts.maxQueries;
    return {
        resolve(name: string, rrtype: string): Promise<unknown> {
            if (signal?.aborted) return Promise.reject(refusal(rrtype, name, 'DNS query after the check ended'));
            if (queries >= max) {
                exhausted = true;
                return Promise.reject(budgetRefusal(max, rrtype, name));
            }
            queries++;
            return resolve(name, rrtype);
        },
        get queries() {
            return queries;
        },
        get exhausted() {
            return exhausted;
        },
        tally(n: number, refused: boolean): void {
            if (n > 0) queries += n;
            if (refused) exhausted = true;
        },
    };
}
