/**
 * A per-message view of the resolver: it counts the queries one message's checks make and the
 * bytes of the answers they get, and refuses more once either budget is spent or once the
 * check's signal aborts (timeout, failure or end of the check), so one message can never cost
 * more than `maxQueries` DNS lookups or hold more than `maxBytes` of answers, and a check that
 * was given up on starts no new ones.
 *
 * Every call counts, answered from the cache or not: the budgets are then a property of the
 * message alone, so the same message gets the same result whether the cache is warm or cold
 * (a budget on misses only would pass a message after a cache hit that it refused before).
 * The bytes are estimateAnswerBytes() of each answer delivered (a negative answer counts
 * nothing): whoever runs a domain chooses how big its answers are (4,000 A records fit in one
 * 64 KB TCP answer), and the evaluation keeps every answer it got (mailauth's SPF memoizes
 * them), in the verification thread's heap when it runs there. An answer that would take the
 * total past `maxBytes` is refused rather than delivered, and spends the budget: every later
 * query is refused too.
 * A refusal is a node:dns-shaped error with code ECANCELLED, which mailauth and our DMARC code
 * treat as a temporary DNS error (temperror), never as "no record": a spent budget can delay
 * or fail a message but never make it pass.
 *
 * Part of both budgets can be kept for DMARC (`dmarcReserve`): `resolve` refuses once only that
 * part is left, `resolveDmarc` may spend it. SPF runs before DMARC and a sender's SPF record can
 * ask for more than the whole budget: without the reserve it would leave DMARC nothing, and a
 * message spoofing a `p=reject` domain would get a temporary error instead of its rejection.
 * The whole budget stays the bound.
 *
 * It must not cache, retry or change answers; the shared resolver does all of that. Queries
 * already in flight when a budget runs out or the signal aborts finish in the shared
 * resolver (others may be waiting for the same answer); their results are still delivered,
 * within the byte budget.
 */
import { estimateAnswerBytes } from './answers.ts';
import { dnsError, type DnsError } from './errors.ts';

export type DnsResolve = (name: string, rrtype: string) => Promise<unknown>;

/**
 * The estimated bytes of DNS answers one message may hold in sender authentication (the
 * `maxBytes` sender-auth/mailauth.ts gives): a legitimate message's SPF, DKIM, DMARC and ARC
 * answers come to a few KB, while one name can answer 200 KB (4,000 A records) and an SPF
 * record can make the evaluation ask for a hundred such names.
 */
export const MESSAGE_ANSWER_BYTES = 1024 * 1024;

/** What was counted elsewhere against a message's budget (see ScopedResolver.tally). */
export interface Tally {
    /** Queries asked and answered elsewhere, added to `queries`. */
    readonly queries: number;
    /**
     * The budget's bytes spent as counted there, this view's included (it started from them):
     * the larger of the two counts is kept.
     */
    readonly bytes: number;
    /** A query was refused there past the query budget. */
    readonly exhausted: boolean;
    /** A query or an answer was refused there past the byte budget. */
    readonly bytesExhausted: boolean;
}

export interface ScopedResolver {
    /**
     * The resolver to hand to the check's DNS users, same contract as `Resolver.resolve`:
     * within the budgets less the DMARC reserve.
     */
    readonly resolve: DnsResolve;
    /** As `resolve`, for DMARC: within the whole budgets. */
    readonly resolveDmarc: DnsResolve;
    /**
     * As `resolve` (or `resolveDmarc`), for the queries of the verification thread, which counts
     * its queries and answers against the same budgets before it asks here: it may have asked a
     * query before it got an answer that spent the byte budget here, and that query counts and is
     * asked as it would have been without the thread (its answer is still refused past the byte
     * budget).
     */
    resolveAdmitted(this: void, name: string, rrtype: string, dmarc: boolean): Promise<unknown>;
    /** Queries asked so far, the refused ones not included. */
    readonly queries: number;
    /** Estimated bytes of the answers delivered so far; the budget once an answer was refused past it. */
    readonly bytes: number;
    /** True once a query was refused because the query budget was spent. */
    readonly exhausted: boolean;
    /** True once a query or an answer was refused because the byte budget was spent. */
    readonly bytesExhausted: boolean;
    /**
     * Counts what was asked of this budget and answered elsewhere (the verification thread
     * answers from its copy of the cache, and refuses past the same budgets itself: see
     * budgetRefusal and bytesRefusal).
     */
    tally(t: Tally): void;
}

export interface ScopedOptions {
    /** Queries allowed; further ones are refused. */
    readonly maxQueries: number;
    /** Estimated bytes of answers allowed (estimateAnswerBytes); none by default. */
    readonly maxBytes?: number;
    /** The part of each budget only `resolveDmarc` may spend; none by default. */
    readonly dmarcReserve?: DmarcReserve;
    /** Once aborted, every new query is refused. */
    readonly signal?: AbortSignal;
}

/** The part of a message's budgets kept for DMARC. */
export interface DmarcReserve {
    readonly queries: number;
    readonly bytes: number;
}

/**
 * The refusal of a query past a budget of `max` queries for the message, as scopedResolver gives
 * it; `kept`: the last ones are kept for DMARC, and this query may not spend them.
 */
export function budgetRefusal(max: number, rrtype: string, name: string, kept = 0): DnsError {
    const reserve = kept > 0 ? `, the last ${kept} kept for DMARC` : '';
    return refusal(rrtype, name, `DNS query budget of ${max} per message spent${reserve}`);
}

/** The refusal of a query, or of its answer, past a budget of `max` bytes of answers for the message (`kept`: as above). */
export function bytesRefusal(max: number, rrtype: string, name: string, kept = 0): DnsError {
    const reserve = kept > 0 ? `, the last ${kept} kept for DMARC` : '';
    const err = refusal(rrtype, name, `DNS answer budget of ${max} bytes per message spent${reserve}`);
    byteRefusals.add(err);
    return err;
}

const byteRefusals = new WeakSet<object>();

/** True for an error of bytesRefusal(): the byte budget is spent. */
export function isBytesRefusal(err: unknown): boolean {
    return typeof err === 'object' && err !== null && byteRefusals.has(err);
}

function refusal(rrtype: string, name: string, why: string): DnsError {
    const err = dnsError('ECANCELLED', `query${String(rrtype ?? 'A').toUpperCase()}`, String(name));
    err.message = `${why}: ${String(rrtype ?? 'A').toUpperCase()} ${String(name)}`;
    return err;
}

export function scopedResolver(resolve: DnsResolve, opts: ScopedOptions): ScopedResolver {
    let queries = 0;
    let bytes = 0;
    let exhausted = false;
    let bytesExhausted = false;
    const signal = opts.signal;
    const max = opts.maxQueries;
    const maxBytes = opts.maxBytes ?? Infinity;
    const kept = { queries: opts.dmarcReserve?.queries ?? 0, bytes: opts.dmarcReserve?.bytes ?? 0 };
    /** The answer past the byte budget (less the reserve unless `dmarc`) spends it. */
    const spendBytes = (rrtype: string, name: string, dmarc: boolean): DnsError => {
        bytesExhausted = true;
        bytes = Math.max(bytes, dmarc ? maxBytes : maxBytes - kept.bytes);
        return bytesRefusal(maxBytes, rrtype, name, dmarc ? 0 : kept.bytes);
    };
    const ask = (name: string, rrtype: string, dmarc: boolean, admitted: boolean): Promise<unknown> => {
        if (signal?.aborted) return Promise.reject(refusal(rrtype, name, 'DNS query after the check ended'));
        if (queries >= (dmarc ? max : max - kept.queries)) {
            exhausted = true;
            return Promise.reject(budgetRefusal(max, rrtype, name, dmarc ? 0 : kept.queries));
        }
        const byteLimit = dmarc ? maxBytes : maxBytes - kept.bytes;
        if (bytes >= byteLimit && !admitted) return Promise.reject(spendBytes(rrtype, name, dmarc));
        queries++;
        if (maxBytes === Infinity) return resolve(name, rrtype);
        return resolve(name, rrtype).then((value) => {
            const size = estimateAnswerBytes(value);
            if (bytes + size > byteLimit) throw spendBytes(rrtype, name, dmarc);
            bytes += size;
            return value;
        });
    };
    return {
        resolve: (name: string, rrtype: string): Promise<unknown> => ask(name, rrtype, false, false),
        resolveDmarc: (name: string, rrtype: string): Promise<unknown> => ask(name, rrtype, true, false),
        resolveAdmitted: (name: string, rrtype: string, dmarc: boolean): Promise<unknown> =>
            ask(name, rrtype, dmarc, true),
        get queries() {
            return queries;
        },
        get bytes() {
            return bytes;
        },
        get exhausted() {
            return exhausted;
        },
        get bytesExhausted() {
            return bytesExhausted;
        },
        tally(t: Tally): void {
            if (t.queries > 0) queries += t.queries;
            if (t.bytes > bytes) bytes = t.bytes;
            if (t.exhausted) exhausted = true;
            if (t.bytesExhausted) bytesExhausted = true;
        },
    };
}
