/**
 * CIDR lists compiled once into a matcher (used for trusted PROXY protocol senders).
 * IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) match their IPv4 entries. Pure; no DNS.
 */
import ipaddr from 'ipaddr.js';

type Range = [ipaddr.IPv4 | ipaddr.IPv6, number];

/** Parses `a.b.c.d/n`, `x::/n` or a bare address (a host route); throws on bad input. */
export function parseCidr(text: string): Range {
    if (text.includes('/')) return ipaddr.parseCIDR(text);
    const addr = ipaddr.parse(text);
    return [addr, addr.kind() === 'ipv4' ? 32 : 128];
}

/** Returns a predicate telling whether an address lies in one of the ranges. */
export function compileCidrs(list: readonly string[]): (ip: string) => boolean {
    const ranges = list.map(parseCidr);
    return (ip: string): boolean => {
        if (!ipaddr.isValid(ip)) return false;
        const addr = ipaddr.process(ip);
        return ranges.some(([net, bits]) => addr.kind() === net.kind() && addr.match([net, bits] as never));
    };
}
