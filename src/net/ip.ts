/**
 * The one parser of IP addresses and CIDR ranges, for the config (trusted PROXY senders, lockout
 * exemptions, listener and DNS server addresses), rules, lists and limit keys: strict parsing
 * (dotted-quad IPv4, RFC 4291 section 2.2 IPv6 text forms, no zone ids), and IpSet, a lookup
 * structure built once from many ranges: per address family, sorted and merged ranges searched by
 * bisection (O(log n)). IPv4-mapped IPv6 addresses (::ffff:a.b.c.d, RFC 4291 section 2.5.5.2) are
 * treated as the IPv4 address they carry, both in entries and in looked-up values. A range with
 * host bits set is refused everywhere, with the network it probably means. Pure; no DNS; does NOT
 * read host names.
 */

/** A parsed address: IPv4 as an unsigned 32-bit number, IPv6 as a 128-bit BigInt. */
export type IpValue = { readonly family: 4; readonly value: number } | { readonly family: 6; readonly value: bigint };

export type IpRange =
    | { readonly family: 4; readonly lo: number; readonly hi: number }
    | { readonly family: 6; readonly lo: bigint; readonly hi: bigint };

/** Parses a dotted-quad IPv4 address (no shorthand, no leading zeros); -1 when invalid. */
function parseV4(text: string): number {
    let value = 0;
    let parts = 0;
    let i = 0;
    while (i <= text.length) {
        let j = i;
        let octet = 0;
        while (j < text.length) {
            const c = text.charCodeAt(j);
            if (c < 48 || c > 57) break;
            octet = octet * 10 + (c - 48);
            j++;
        }
        const len = j - i;
        if (len === 0 || len > 3 || octet > 255 || (len > 1 && text.charCodeAt(i) === 48)) return -1;
        value = value * 256 + octet;
        parts++;
        if (j === text.length) break;
        if (text.charCodeAt(j) !== 46 || parts === 4) return -1;
        i = j + 1;
    }
    return parts === 4 ? value : -1;
}

const HEX = /^[0-9a-f]{1,4}$/i;

function groupsOf(part: string, allowV4Tail: boolean): number[] | null {
    if (part === '') return [];
    const pieces = part.split(':');
    const out: number[] = [];
    for (let k = 0; k < pieces.length; k++) {
        const p = pieces[k]!;
        if (k === pieces.length - 1 && allowV4Tail && p.includes('.')) {
            const v4 = parseV4(p);
            if (v4 < 0) return null;
            out.push(Math.floor(v4 / 65536), v4 % 65536);
        } else {
            if (!HEX.test(p)) return null;
            out.push(parseInt(p, 16));
        }
    }
    return out;
}

/** Parses an IPv6 address in any RFC 4291 text form; null when invalid. */
function parseV6(text: string): bigint | null {
    if (text.length < 2 || text.length > 45) return null;
    const dbl = text.indexOf('::');
    let groups: number[];
    if (dbl < 0) {
        const g = groupsOf(text, true);
        if (g === null || g.length !== 8) return null;
        groups = g;
    } else {
        if (text.indexOf('::', dbl + 1) >= 0) return null;
        const head = groupsOf(text.slice(0, dbl), false);
        const tail = groupsOf(text.slice(dbl + 2), true);
        if (head === null || tail === null || head.length + tail.length > 7) return null;
        groups = [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
    }
    let value = 0n;
    for (const g of groups) value = (value << 16n) | BigInt(g);
    return value;
}

const V4_MASK = 0xffffffffn;

/** Parses an IPv4 or IPv6 address (IPv4-mapped IPv6 becomes IPv4); null when invalid. */
export function parseIp(text: string): IpValue | null {
    if (text.includes(':')) {
        const v6 = parseV6(text);
        if (v6 === null) return null;
        if (v6 >> 32n === 0xffffn) return { family: 4, value: Number(v6 & V4_MASK) };
        return { family: 6, value: v6 };
    }
    const v4 = parseV4(text);
    return v4 < 0 ? null : { family: 4, value: v4 };
}

/**
 * A client address as the sessions use it: an IPv4-mapped IPv6 address (`::ffff:192.0.2.1`,
 * what a dual-stack socket reports for an IPv4 client) as its IPv4 address.
 */
export function plainAddress(ip: string | undefined): string {
    return (ip ?? '').replace(/^::ffff:(?=\d{1,3}(?:\.\d{1,3}){3}$)/i, '');
}

/** True for an IPv4 or IPv6 address in a form parseIp reads. */
export function isIp(text: string): boolean {
    return parseIp(text) !== null;
}

/** True for a dotted-quad IPv4 address. */
export function isIpv4(text: string): boolean {
    return !text.includes(':') && parseIp(text) !== null;
}

/** True for an address written in IPv6 form (IPv4-mapped ones included), which needs brackets beside a port. */
export function isIpv6(text: string): boolean {
    return text.includes(':') && parseIp(text) !== null;
}

/** The canonical text of an address (IPv6 in RFC 5952 form), for messages and equality. */
export function formatIp(ip: IpValue): string {
    if (ip.family === 4) {
        const v = ip.value;
        return `${Math.floor(v / 16777216)}.${Math.floor(v / 65536) % 256}.${Math.floor(v / 256) % 256}.${v % 256}`;
    }
    const groups: number[] = [];
    for (let k = 7; k >= 0; k--) groups.push(Number((ip.value >> BigInt(k * 16)) & 0xffffn));
    // RFC 5952 section 4.2: the longest run (two or more) of zero groups becomes ::
    let best = -1;
    let bestLen = 1;
    for (let k = 0; k < 8; ) {
        if (groups[k] !== 0) {
            k++;
            continue;
        }
        let end = k;
        while (end < 8 && groups[end] === 0) end++;
        if (end - k > bestLen) {
            best = k;
            bestLen = end - k;
        }
        k = end;
    }
    const hex = groups.map((g) => g.toString(16));
    if (best < 0) return hex.join(':');
    return `${hex.slice(0, best).join(':')}::${hex.slice(best + bestLen).join(':')}`;
}

/**
 * A mail domain's address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`, RFC 5321 section 4.1.3)
 * in one form for keys and comparisons: `[192.0.2.1]`, or `[ipv6:…]` with the address in RFC 5952
 * form; an IPv4-mapped IPv6 literal is written as IPv4 (`[IPv6:::ffff:192.0.2.1]` is
 * `[192.0.2.1]`). null when `text` is no address literal.
 */
export function canonicalAddressLiteral(text: string): string | null {
    if (!(text.length > 2 && text.startsWith('[') && text.endsWith(']'))) return null;
    const inner = text.slice(1, -1);
    let ip: IpValue | null = null;
    if (/^ipv6:/i.test(inner)) {
        const v6 = inner.slice(5);
        ip = v6.includes(':') ? parseIp(v6) : null;
    } else if (!inner.includes(':')) {
        ip = parseIp(inner);
    }
    if (ip === null) return null;
    return ip.family === 4 ? `[${formatIp(ip)}]` : `[ipv6:${formatIp(ip)}]`;
}

/**
 * Parses `address` or `address/prefix`. A range with host bits set (`10.0.0.1/8`) is refused
 * (Postfix cidr tables refuse it too; its mynetworks only warns): the operator meant either the
 * host or the network, and guessing would silently widen or narrow a trust or block list. The
 * message names the network (`write 10.0.0.0/8`).
 */
export function parseRange(text: string): IpRange | { error: string } {
    const slash = text.indexOf('/');
    const addrText = slash < 0 ? text : text.slice(0, slash);
    const ip = parseIp(addrText);
    if (ip === null)
        return { error: `"${text}" is not an IP address or CIDR range (write e.g. 192.0.2.0/24 or 2001:db8::/32)` };
    const mappedV6 = ip.family === 4 && addrText.includes(':');
    const max = ip.family === 4 ? 32 : 128;
    let prefix = max;
    if (slash >= 0) {
        const p = text.slice(slash + 1);
        prefix = /^\d{1,3}$/.test(p) ? Number(p) : NaN;
        const limit = mappedV6 ? 128 : max;
        if (!(prefix >= 0 && prefix <= limit))
            return { error: `"${text}" has a bad prefix length (0 to ${limit} for IPv${limit === 32 ? 4 : 6})` };
        if (mappedV6) {
            if (prefix < 96) return { error: `"${text}": an IPv4-mapped range needs a prefix of at least 96` };
            prefix -= 96;
        }
    }
    if (ip.family === 4) {
        const size = 2 ** (32 - prefix);
        const lo = ip.value - (ip.value % size);
        if (lo !== ip.value)
            return { error: `"${text}" has host bits set (write ${formatIp({ family: 4, value: lo })}/${prefix})` };
        return { family: 4, lo, hi: lo + size - 1 };
    }
    const hostBits = BigInt(128 - prefix);
    const hostMask = (1n << hostBits) - 1n;
    const lo = ip.value & ~hostMask;
    if (lo !== ip.value)
        return { error: `"${text}" has host bits set (write ${formatIp({ family: 6, value: lo })}/${prefix})` };
    return { family: 6, lo, hi: lo | hostMask };
}

/** The prefix length of a parsed range. */
function prefixOf(range: IpRange): number {
    if (range.family === 4) return 32 - Math.log2(range.hi - range.lo + 1);
    const hostMask = range.hi - range.lo;
    return 128 - (hostMask === 0n ? 0 : hostMask.toString(2).length);
}

/** The canonical text of a range: `192.0.2.0/24`, `2001:db8::/32`, `192.0.2.7/32`. */
export function formatRange(range: IpRange): string {
    const lo: IpValue = range.family === 4 ? { family: 4, value: range.lo } : { family: 6, value: range.lo };
    return `${formatIp(lo)}/${prefixOf(range)}`;
}

/** `address` or `address/prefix` in canonical text (`2001:DB8::7` → `2001:db8::7/128`), or a message. */
export function normalizeCidr(text: string): { cidr: string } | { error: string } {
    const range = parseRange(text);
    return 'error' in range ? range : { cidr: formatRange(range) };
}

/** A membership test over validated ranges (trusted PROXY senders, lockout exemptions); throws on a bad entry. */
export function compileCidrs(list: readonly string[]): (ip: string) => boolean {
    const set = new IpSet(
        list.map((text) => {
            const range = parseRange(text);
            if ('error' in range) throw new Error(range.error);
            return range;
        }),
    );
    return (ip: string): boolean => set.has(ip);
}

function lastAtMost<T>(los: ArrayLike<T>, x: T): number {
    let a = 0;
    let b = los.length - 1;
    let found = -1;
    while (a <= b) {
        const mid = (a + b) >> 1;
        if (los[mid]! <= x) {
            found = mid;
            a = mid + 1;
        } else {
            b = mid - 1;
        }
    }
    return found;
}

/** An immutable set of IP ranges with O(log n) membership. */
export class IpSet {
    readonly #lo4: Float64Array;
    readonly #hi4: Float64Array;
    readonly #lo6: readonly bigint[];
    readonly #hi6: readonly bigint[];
    /** Number of entries it was built from. */
    readonly size: number;

    constructor(ranges: readonly IpRange[]) {
        this.size = ranges.length;
        const v4 = ranges.filter((r) => r.family === 4).sort((a, b) => a.lo - b.lo);
        const lo4: number[] = [];
        const hi4: number[] = [];
        for (const r of v4) {
            const n = hi4.length;
            if (n > 0 && r.lo <= hi4[n - 1]! + 1) hi4[n - 1] = Math.max(hi4[n - 1]!, r.hi);
            else {
                lo4.push(r.lo);
                hi4.push(r.hi);
            }
        }
        this.#lo4 = Float64Array.from(lo4);
        this.#hi4 = Float64Array.from(hi4);
        const v6 = ranges.filter((r) => r.family === 6).sort((a, b) => (a.lo < b.lo ? -1 : a.lo > b.lo ? 1 : 0));
        const lo6: bigint[] = [];
        const hi6: bigint[] = [];
        for (const r of v6) {
            const n = hi6.length;
            if (n > 0 && r.lo <= hi6[n - 1]! + 1n) {
                if (r.hi > hi6[n - 1]!) hi6[n - 1] = r.hi;
            } else {
                lo6.push(r.lo);
                hi6.push(r.hi);
            }
        }
        this.#lo6 = lo6;
        this.#hi6 = hi6;
    }

    hasValue(ip: IpValue): boolean {
        if (ip.family === 4) {
            const k = lastAtMost(this.#lo4, ip.value);
            return k >= 0 && ip.value <= this.#hi4[k]!;
        }
        const k = lastAtMost(this.#lo6, ip.value);
        return k >= 0 && ip.value <= this.#hi6[k]!;
    }

    /** False for text that is not an address. */
    has(text: string): boolean {
        const ip = parseIp(text);
        return ip !== null && this.hasValue(ip);
    }
}
