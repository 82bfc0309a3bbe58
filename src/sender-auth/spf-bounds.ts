/**
 * Bounds on what one SPF evaluation (RFC 7208) can cost in CPU, whatever the sending domain
 * publishes. mailauth's SPF code tests macro-expanded target names and raw record terms with
 * regular expressions that are quadratic in their length, on the main thread, where no check
 * timeout can stop them: a 6 KB record of `%{l}` macros expanded into a 64 KB redirect target
 * blocked the process for 8 s. Two bounds make every such test short:
 *
 * - `boundedExpansion` wraps mailauth's macro expander so an expansion longer than a domain name
 *   is cut as RFC 7208 section 7.3 cuts a target name (labels removed from the left until at
 *   most 253 characters remain; a single longer label is cut to its last 253 characters, which
 *   leaves it as invalid as before, a label having at most 63);
 * - `guardSpfRecords` wraps the resolver given to the SPF evaluation: a TXT answer holding an
 *   SPF record (`v=spf1`) longer than MAX_SPF_RECORD characters is a permanent error of that
 *   record, as mailauth reports its other record errors (the raw terms are then short enough).
 *
 * It must not change the result of any record within the bounds, and must not see DKIM or DMARC
 * lookups (only the resolver handed to the SPF evaluation is wrapped).
 */
import type { DnsResolve } from '../dns/scoped.ts';

/** Longest domain name (RFC 1035 section 2.3.4, without the root dot). */
const MAX_NAME = 253;

/**
 * Longest SPF record evaluated. RFC 7208 section 3.4 asks publishers to stay within 450 octets
 * (one UDP answer); real records with long ip4/ip6 lists reach 2 KB. Longer is a permerror.
 */
export const MAX_SPF_RECORD = 4096;

/** An expansion cut to at most MAX_NAME characters (RFC 7208 section 7.3). */
export function cutExpansion(value: string): string {
    if (value.length <= MAX_NAME) return value;
    let start = 0;
    while (value.length - start > MAX_NAME) {
        const dot = value.indexOf('.', start);
        if (dot < 0) return value.slice(value.length - MAX_NAME);
        start = dot + 1;
    }
    return value.slice(start);
}

type Expander = (input: unknown, values: unknown) => string;

/** mailauth's macro expander with its result cut to a domain name's length. */
export function boundedExpansion(expand: Expander): Expander {
    return (input, values) => cutExpansion(expand(input, values));
}

/** The error mailauth's SPF evaluation turns into a permerror of the record. */
function permError(text: string): Error {
    return Object.assign(new Error('SPF failure'), { spfResult: { error: 'permerror', text } });
}

/** A record mailauth would read as SPF: `v=spf1` after any leading white space (its lenient mode trims). */
function isSpfRecord(joined: string): boolean {
    const t = joined.trimStart();
    return t.slice(0, 6).toLowerCase() === 'v=spf1' && (t.length === 6 || /\s/.test(t.charAt(6)));
}

/** The resolver for one SPF evaluation: oversized SPF records answer as a permerror. */
export function guardSpfRecords(resolve: DnsResolve): DnsResolve {
    return async (name, rrtype) => {
        const answer: unknown = await resolve(name, rrtype);
        if (rrtype !== 'TXT' || !Array.isArray(answer)) return answer;
        const rows: readonly unknown[] = answer;
        for (const row of rows) {
            const joined = Array.isArray(row) ? row.map(String).join('') : String(row);
            if (isSpfRecord(joined) && joined.length > MAX_SPF_RECORD) {
                throw permError(
                    `the SPF record of ${name} is ${joined.length} characters long, more than ${MAX_SPF_RECORD}`,
                );
            }
        }
        return rows;
    };
}
