/**
 * Name and address syntax for the DNS layer: query-name normalisation and validation
 * (RFC 1035 section 2.3.4 size limits), reverse-lookup names (RFC 1035 section 3.5
 * in-addr.arpa, RFC 3596 section 2.5 ip6.arpa) and DNS server addresses. Pure functions:
 * no sockets, no lookups, no file access.
 */
import net from 'node:net';
import ipaddr from 'ipaddr.js';
import { formatIp, parseIp } from '../net/ip.ts';
import { dnsError } from './errors.ts';

/** The record types the resolver answers (and the verification thread's copy of its answers keeps). */
export const RRTYPES = ['A', 'AAAA', 'CNAME', 'MX', 'NS', 'PTR', 'SOA', 'TXT'] as const;
export type Rrtype = (typeof RRTYPES)[number];

export function isRrtype(t: string): t is Rrtype {
    return (RRTYPES as readonly string[]).includes(t);
}

/** RFC 1035 section 2.3.4: labels of 63 octets or fewer, names of 255 octets on the wire (253 as text). */
const MAX_LABEL = 63;
const MAX_NAME = 253;

/**
 * Lower-cases a query name and strips one trailing dot. Throws an error coded `EBADNAME`
 * (as node:dns does) for names that cannot be sent: empty, empty labels, a label over 63
 * octets, over 253 octets in all, or control characters, spaces or backslashes (which
 * node:dns would read as escapes).
 */
export function normalizeName(name: unknown, syscall: string, display: string = String(name)): string {
    if (typeof name !== 'string') throw dnsError('EBADNAME', syscall, display);
    let n = name.toLowerCase();
    if (n.endsWith('.')) n = n.slice(0, -1);
    // eslint-disable-next-line no-control-regex
    if (n === '' || /[\x00-\x20\x7f\\]/.test(n) || Buffer.byteLength(n) > MAX_NAME) {
        throw dnsError('EBADNAME', syscall, display);
    }
    for (const label of n.split('.')) {
        const size = Buffer.byteLength(label);
        if (size === 0 || size > MAX_LABEL) throw dnsError('EBADNAME', syscall, display);
    }
    return n;
}

/** True when `name` equals `ancestor` or lies below it (`ancestor` `.` or `` is the root). */
export function isSubdomain(name: string, ancestor: string): boolean {
    if (ancestor === '' || ancestor === '.') return true;
    return name === ancestor || name.endsWith(`.${ancestor}`);
}

/**
 * The PTR query name of an IP address: `4.3.2.1.in-addr.arpa` or the 32 reversed nibbles
 * under `ip6.arpa`. Returns null when `ip` is not an IP address.
 */
export function reverseName(ip: string): string | null {
    const bare = ip.includes('%') ? ip.slice(0, ip.indexOf('%')) : ip;
    const family = net.isIP(bare);
    if (family === 0) return null;
    const bytes = ipaddr.parse(bare).toByteArray();
    if (family === 4) return `${bytes.reverse().join('.')}.in-addr.arpa`;
    const nibbles: string[] = [];
    for (const b of bytes) nibbles.push((b >> 4).toString(16), (b & 15).toString(16));
    return `${nibbles.reverse().join('.')}.ip6.arpa`;
}

export interface ServerAddress {
    readonly host: string;
    readonly port: number;
    readonly family: 4 | 6;
}

/**
 * Parses a server entry: `IPv4`, `IPv4:PORT`, `IPv6`, `[IPv6]` or `[IPv6]:PORT` (port 53
 * when absent). Only IP addresses: a resolver cannot look up its own servers. The host is
 * the address's canonical text (RFC 5952 for IPv6; an IPv4-mapped address becomes IPv4),
 * the form the kernel reports an answer's source in, so `[0:0:0:0:0:0:0:1]` and `[::0001]`
 * match answers from `::1`. A link-local address keeps its zone as written after the
 * canonical address (`FE80:0::1%eth0` is `fe80::1%eth0`); any other address loses it, as
 * its answers come without one. Throws on anything else.
 */
export function parseServer(text: string): ServerAddress {
    let host = text.trim();
    let port = 53;
    const bracket = /^\[([^\]]+)\](?::(\d{1,5}))?$/.exec(host);
    if (bracket) {
        host = bracket[1] ?? '';
        if (bracket[2] !== undefined) port = Number(bracket[2]);
    } else if (net.isIP(host) === 0) {
        const colon = host.lastIndexOf(':');
        const portText = host.slice(colon + 1);
        if (colon > 0 && /^\d{1,5}$/.test(portText) && net.isIPv4(host.slice(0, colon))) {
            port = Number(portText);
            host = host.slice(0, colon);
        }
    }
    const family = net.isIP(host);
    if (family === 0 || (family === 4 && bracket) || port < 1 || port > 65535) {
        throw new Error(`"${text}" is not a DNS server address (IP, IPv4:PORT or [IPv6]:PORT)`);
    }
    const percent = host.indexOf('%');
    const ip = parseIp(percent < 0 ? host : host.slice(0, percent));
    // an address parseIp does not read is kept as written
    if (ip === null) return { host: family === 6 ? host.toLowerCase() : host, port, family: family === 6 ? 6 : 4 };
    // the zone (an interface name, as written) stays only on a link-local address (fe80::/10):
    // the only one the kernel reports an answer's source with a zone, fe80::1%eth0
    if (percent >= 0 && ip.family === 6 && ip.value >> 118n === 0x3fan) {
        return { host: `${formatIp(ip)}${host.slice(percent)}`, port, family: 6 };
    }
    return { host: formatIp(ip), port, family: ip.family };
}

/** `host:port` or `[host]:port`, for messages. */
export function formatServer(s: ServerAddress): string {
    return s.family === 6 ? `[${s.host}]:${s.port}` : `${s.host}:${s.port}`;
}
