/**
 * DNS block and allow lists (RFC 5782): how a list is configured, which name is asked, and
 * what an answer means. A list is written as postscreen writes `postscreen_dnsbl_sites`:
 * `zone[=filter][*weight]`, e.g. `zen.spamhaus.org=127.0.0.[2..11]*3` or
 * `list.dnswl.org=127.0.[0..255].[1..3]*-5` (a negative weight makes it an allow list).
 *
 * An answer is a listing only when it is an address in 127.0.0.0/8 that the filter accepts.
 * Everything else is an error, never a listing: Spamhaus's refusal codes 127.255.255.0/24
 * (query typo, public resolver, too many queries), answers outside 127.0.0.0/8 (an expired
 * list whose domain now resolves everything), answers outside the filter, and DNS failures.
 *
 * Pure: it must not query DNS, keep state or decide anything (the check asks, rules decide); the
 * only data it reads is the shipped Public Suffix List (psl.ts), to find a registrable domain.
 */
import { isIP } from 'node:net';
import { MAX_DOMAIN_NAME, reachableStart, toALabel, withoutTrailingDot } from '../net/domain.ts';
import { normalizeName, reverseName } from '../dns/names.ts';
import { publicSuffixList } from '../sender-auth/psl.ts';

/** One octet of a filter: the values it allows. */
type OctetSet = readonly (readonly [number, number])[];

export interface ListSite {
    /** The zone, lower case, no trailing dot. */
    readonly zone: string;
    /** Per octet of the answer, the values that count as a listing; null: any 127.0.0.0/8 answer but 127.0.0.1. */
    readonly filter: readonly [OctetSet, OctetSet, OctetSet, OctetSet] | null;
    /** Added to the score when the list lists the client; negative for allow lists. */
    readonly weight: number;
    /** The site as written, for logs and errors. */
    readonly text: string;
}

/** Parses one site; returns a message naming what is wrong otherwise. */
export function parseListSite(text: string): ListSite | { error: string } {
    const m = /^([^=*\s]+)(?:=([^*\s]+))?(?:\*(-?\d+(?:\.\d+)?))?$/.exec(text.trim());
    if (!m) return { error: `"${text}" is not zone[=filter][*weight], e.g. zen.spamhaus.org=127.0.0.[2..11]*3` };
    const [, rawZone = '', rawFilter, rawWeight] = m;
    let zone: string;
    try {
        zone = normalizeName(toALabel(rawZone) ?? rawZone, 'site');
    } catch {
        return { error: `"${rawZone}" is not a DNS zone name` };
    }
    if (!zone.includes('.') || isIP(zone) !== 0) return { error: `"${rawZone}" is not a DNS zone name` };
    let filter: ListSite['filter'] = null;
    if (rawFilter !== undefined) {
        const parsed = parseFilter(rawFilter);
        if (typeof parsed === 'string') return { error: `"${rawFilter}": ${parsed}` };
        filter = parsed;
    }
    const weight = rawWeight === undefined ? 1 : Number(rawWeight);
    if (!Number.isFinite(weight) || Math.abs(weight) > 1000) return { error: `weight ${rawWeight} is out of range` };
    return { zone, filter, weight, text: text.trim() };
}

/** `127.0.0.[2..11]`, `127.0.[0..255].[1;3..5]`: four octets, each a number or a bracketed list. */
function parseFilter(text: string): NonNullable<ListSite['filter']> | string {
    // dots inside brackets are ranges (2..11), not octet separators
    const octets: string[] = [];
    let depth = 0;
    let current = '';
    for (const ch of text) {
        if (ch === '[') depth++;
        if (ch === ']') depth--;
        if (depth < 0 || depth > 1) return 'unbalanced brackets';
        if (ch === '.' && depth === 0) {
            octets.push(current);
            current = '';
        } else {
            current += ch;
        }
    }
    octets.push(current);
    if (depth !== 0) return 'unbalanced brackets';
    if (octets.length !== 4) return 'a filter has four octets, e.g. 127.0.0.[2..11]';
    const out: OctetSet[] = [];
    for (const o of octets) {
        const items = /^\[(.+)\]$/.exec(o)?.[1]?.split(';') ?? [o];
        const ranges: [number, number][] = [];
        for (const item of items) {
            const r = /^(\d{1,3})(?:\.\.(\d{1,3}))?$/.exec(item);
            const lo = Number(r?.[1]);
            const hi = r?.[2] === undefined ? lo : Number(r[2]);
            if (!r || lo > 255 || hi > 255 || lo > hi) {
                return `"${o}" is not an octet, a range such as [2..11] or a list such as [2;4;10..11]`;
            }
            ranges.push([lo, hi]);
        }
        out.push(ranges);
    }
    return out as unknown as NonNullable<ListSite['filter']>;
}

/** The name asked for an IP address: the address reversed (nibbles for IPv6) under the zone. */
export function addressQuery(ip: string, zone: string): string | null {
    const bare = ip.replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/i, '');
    const reverse = reverseName(bare);
    if (!reverse) return null;
    return `${reverse.replace(/\.(in-addr|ip6)\.arpa$/, '')}.${zone}`;
}

/** domainQuery's answer when even the registrable domain is too long to ask under the zone. */
export const TOO_LONG: unique symbol = Symbol('too long');

/**
 * The name asked for a domain (RHSBL, RFC 5782 section 2.2): the domain as an A-label under the
 * zone, or null when it is not a usable domain name (an address literal, a single label).
 *
 * When `<domain>.<zone>` would be longer than a name can be (253 characters, RFC 1035 section
 * 2.3.4), the labels left of the registrable domain (Public Suffix List) are dropped and the
 * registrable domain is asked: domain lists list registrable domains (Spamhaus DBL), and the
 * labels below it are the sender's own choice, so a long wildcard subdomain must not hide a
 * listed domain (a longer parent that still fits would be as much the sender's choice). Never
 * above the registrable domain: TOO_LONG when even that does not fit under the zone, or when
 * the name has none (a public suffix).
 */
export function domainQuery(domain: string, zone: string): string | null | typeof TOO_LONG {
    const d = withoutTrailingDot(domain.trim()).toLowerCase();
    if (d === '' || d.startsWith('[') || isIP(d) !== 0) return null;
    const ascii = toALabel(d);
    if (!ascii || !ascii.includes('.')) return null;
    let name = ascii;
    if (ascii.length + 1 + zone.length > MAX_DOMAIN_NAME) {
        // a name longer than any domain name (the envelope takes 255 octets) is cut to the suffix
        // a name can be first: its registrable domain is within it
        const start = reachableStart(ascii);
        const registrable = start < 0 ? null : publicSuffixList().registrableDomain(ascii.slice(start));
        if (registrable === null || registrable.length + 1 + zone.length > MAX_DOMAIN_NAME) return TOO_LONG;
        name = registrable;
    }
    try {
        return normalizeName(`${name}.${zone}`, 'query');
    } catch {
        return null;
    }
}

export type ListErrorKind = 'refused' | 'bogus' | 'unexpected' | 'dns';

export type ListAnswer =
    | { readonly kind: 'listed'; readonly codes: readonly string[] }
    | { readonly kind: 'not-listed' }
    | { readonly kind: 'error'; readonly error: ListErrorKind; readonly detail: string };

/** True for the two DNS answers that mean "not listed": NXDOMAIN and NODATA. */
export function isNotFound(err: unknown): boolean {
    const code = (err as { code?: unknown } | null)?.code;
    return code === 'ENOTFOUND' || code === 'ENODATA';
}

function octets(address: string): number[] | null {
    if (isIP(address) !== 4) return null;
    return address.split('.').map(Number);
}

function inFilter(filter: NonNullable<ListSite['filter']>, o: readonly number[]): boolean {
    return filter.every((set, i) => set.some(([lo, hi]) => o[i]! >= lo && o[i]! <= hi));
}

/**
 * What the A records a list answered mean (`answers`), or what its failure means (`error`).
 * Refusal codes and answers outside 127.0.0.0/8 are errors even beside a listing code:
 * the answer as a whole cannot be trusted.
 */
export function classifyAnswer(
    site: ListSite,
    result: { answers: readonly string[] } | { error: unknown },
): ListAnswer {
    if ('error' in result) {
        if (isNotFound(result.error)) return { kind: 'not-listed' };
        const code = (result.error as { code?: unknown } | null)?.code;
        return { kind: 'error', error: 'dns', detail: typeof code === 'string' ? code : 'lookup failed' };
    }
    if (result.answers.length === 0) return { kind: 'not-listed' };
    const codes: string[] = [];
    for (const a of result.answers) {
        const o = octets(a);
        if (!o || o[0] !== 127) return { kind: 'error', error: 'bogus', detail: `answer ${a} is not in 127.0.0.0/8` };
        if (o[1] === 255 && o[2] === 255) {
            return { kind: 'error', error: 'refused', detail: `answer ${a}: the list refused the query` };
        }
        const listed = site.filter ? inFilter(site.filter, o) : a !== '127.0.0.1';
        if (listed) codes.push(a);
    }
    if (codes.length === 0) {
        return {
            kind: 'error',
            error: 'unexpected',
            detail: `answer ${result.answers.join(',')} is outside the filter of ${site.text}`,
        };
    }
    return { kind: 'listed', codes: [...new Set(codes)].sort() };
}

/**
 * The entries every list must and must not contain (RFC 5782 section 5): for address lists
 * 127.0.0.2 listed and 127.0.0.1 not; for domain lists `test` listed and `invalid` not.
 */
export function probeQueries(zone: string, kind: 'address' | 'domain'): { listed: string; unlisted: string } {
    return kind === 'address'
        ? { listed: `2.0.0.127.${zone}`, unlisted: `1.0.0.127.${zone}` }
        : { listed: `test.${zone}`, unlisted: `invalid.${zone}` };
}
