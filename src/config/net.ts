/**
 * Syntax checks for the network values in the config: host names, hosts, ports and DNS server
 * entries. Pure functions returning null or a message; no lookups. Addresses and CIDRs are read
 * by src/net/ip.ts; this file must NOT parse them itself.
 */
import { toALabel, withoutTrailingDot } from '../net/domain.ts';
import { formatIp, isIp, isIpv4, isIpv6, parseIp } from '../net/ip.ts';

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
 * A DNS server: `IP`, `IPv4:PORT`, `[IPv6]:PORT` or a bare IPv6 address. Returns the form
 * node:dns `setServers` accepts, with the address in its canonical text (RFC 5952 for IPv6,
 * an IPv4-mapped address as IPv4): answers are matched by the address the kernel reports, and
 * `[0:0:0:0:0:0:0:1]` would never equal `::1`. Or a message.
 */
export function parseDnsServer(text: string): { server: string } | { error: string } {
    const bad = {
        error: `"${text}" is not a DNS server address (write an IP address, IP:PORT, or [IPv6]:PORT)`,
    };
    let host = text;
    let portText: string | null = null;
    const bracket = /^\[([^\]]+)\](?::(.*))?$/.exec(text);
    if (bracket) {
        host = bracket[1] ?? '';
        portText = bracket[2] ?? null;
        if (!isIpv6(host)) return bad;
    } else if (!isIpv6(text)) {
        const colon = text.lastIndexOf(':');
        if (colon >= 0) {
            host = text.slice(0, colon);
            portText = text.slice(colon + 1);
        }
        if (!isIpv4(host)) return bad;
    }
    const ip = parseIp(host);
    if (ip === null) return bad;
    const canonical = formatIp(ip);
    if (portText === null) return { server: canonical };
    const port = parsePort(portText);
    if (port === null || port === 0) return { error: `"${text}" has a bad port (1 to 65535)` };
    return { server: ip.family === 6 ? `[${canonical}]:${port}` : `${canonical}:${port}` };
}

/** A decimal port number 0–65535, or null. */
export function parsePort(text: string): number | null {
    if (!/^\d{1,5}$/.test(text)) return null;
    const n = Number(text);
    return n <= 65535 ? n : null;
}
