/**
 * Names a client gives that may be written into a trace or authentication field: a host name
 * (RFC 1123 labels, underscores allowed as found in PTR records) or an address literal (RFC 5321
 * section 4.1.3). Anything else (spaces, `;`, `(`, quotes) could shape the field it is written
 * into. Pure checks: it must not resolve or rewrite names.
 */
import net from 'node:net';

/** A DNS host name label as found in the wild (underscores included, as in some PTR records). */
const TRACE_LABEL = /^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$/;

/** True for a host name fit for a trace field: labels of letters, digits, `-`, `_`; at most 253 characters. */
export function isTraceHostname(name: string): boolean {
    const n = name.endsWith('.') ? name.slice(0, -1) : name;
    return n.length > 0 && n.length <= 253 && n.split('.').every((l) => TRACE_LABEL.test(l));
}

/** True for an address literal (RFC 5321 section 4.1.3): `[192.0.2.1]` or `[IPv6:2001:db8::1]`. */
export function isAddressLiteral(text: string): boolean {
    const m = /^\[(?:IPv6:([0-9A-Fa-f:.]+)|(\d{1,3}(?:\.\d{1,3}){3}))\]$/.exec(text);
    if (!m) return false;
    return m[1] !== undefined ? net.isIPv6(m[1]) : net.isIPv4(m[2]!);
}
