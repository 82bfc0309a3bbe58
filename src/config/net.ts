/**
 * Syntax checks for the network values in the config: host names, hosts, ports and DNS server
 * entries. Pure functions returning null or a message; no lookups. Addresses and CIDRs are read
 * by src/net/ip.ts, DNS server entries by the resolver's parser (src/dns/names.ts); this file
 * must NOT parse them itself.
 */
import { toALabel, withoutTrailingDot } from '../net/domain.ts';
import { formatServer, parseServer, type ServerAddress } from '../dns/names.ts';
import { isIp, isIpv4 } from '../net/ip.ts';

const LABEL_RE = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/i;

/**
 * A host name in RFC 1123 syntax (letters, digits, hyphens; labels up to 63 characters;
 * up to 253 in all; a trailing dot allowed). Internationalised names are accepted and returned
 * in their ASCII (A-label) form. Returns the lower-cased ASCII name, or null when invalid.
 */
export function normalizeHostname(text: string): string | null {
    const ascii = toALabel(withoutTrailingDot(text));
    if (ascii === null || ascii.length > 253) return null;
    if (!ascii.split('.').every((label) => LABEL_RE.test(label))) return null;
    // All-numeric names look like (bad) IP addresses.
    if (/^[\d.]+$/.test(ascii)) return null;
    return ascii;
}

/** A host to listen on or connect to: an IP address or a host name. Returns the normalized form or null. */
export function normalizeHost(text: string): string | null {
    if (isIp(text)) return text.toLowerCase();
    return normalizeHostname(text);
}

/**
 * A DNS server: `IP`, `IPv4:PORT`, `[IPv6]`, `[IPv6]:PORT` or a bare IPv6 address, a link-local
 * IPv6 address with its zone (`fe80::53%eth0`). The address is read by the resolver's own parser
 * (parseServer in src/dns/names.ts), so the config accepts exactly the servers the resolver
 * uses: its canonical text (RFC 5952 for IPv6, an IPv4-mapped address as IPv4; answers are
 * matched by the address the kernel reports, and `[0:0:0:0:0:0:0:1]` would never equal `::1`),
 * the zone kept on a link-local address only. Returns `[IPv6]:PORT` or `IPv4:PORT` when a port or
 * brackets were written, else the bare address (both forms node:dns `setServers` accepts too).
 * Or a message.
 */
export function parseDnsServer(text: string): { server: string } | { error: string } {
    const bad = {
        error: `"${text}" is not a DNS server address (write an IP address, IP:PORT, or [IPv6]:PORT)`,
    };
    const bracket = /^\[([^\]]+)\](?::(.*))?$/.exec(text);
    const colon = text.lastIndexOf(':');
    const portText = bracket
        ? (bracket[2] ?? null)
        : colon >= 0 && isIpv4(text.slice(0, colon))
          ? text.slice(colon + 1)
          : null;
    if (portText !== null && !parsePort(portText)) return { error: `"${text}" has a bad port (1 to 65535)` };
    if (text !== text.trim()) return bad;
    let server: ServerAddress;
    try {
        server = parseServer(text);
    } catch {
        return bad;
    }
    return { server: bracket || portText !== null ? formatServer(server) : server.host };
}

/** A decimal port number 0–65535, or null. */
export function parsePort(text: string): number | null {
    if (!/^\d{1,5}$/.test(text)) return null;
    const n = Number(text);
    return n <= 65535 ? n : null;
}
