/**
 * Builds the header fields mailwarden prepends and filters the incoming header section.
 * - Received (RFC 5321 section 4.4, protocol names from RFC 3848), X-Mailwarden-Verdict,
 *   and any header a decision adds, all folded to 78 columns (RFC 5322 section 2.2.3).
 * - Incoming copies of every X-Mailwarden-* field and Authentication-Results fields that
 *   carry our authserv-id (RFC 8601 section 5) are removed, so nobody can forge our verdict.
 * Values never contain CR or LF: anything a client sent is sanitised before it is written.
 * Pure functions; no I/O.
 */
import net from 'node:net';
import type { Action, HeaderField } from './types.ts';

/** One field of the incoming header section, kept byte for byte. */
export interface RawField {
    /** Field name as written, or '' for a line that is not a field (kept as is). */
    readonly name: string;
    /** The field including continuation lines and the final CRLF. */
    readonly raw: Buffer;
}

const OWN_PREFIX = 'x-mailwarden-';

/** Splits a canonical (CRLF) header section into fields; continuation lines stay with their field. */
export function parseHeaderSection(section: Buffer): RawField[] {
    const fields: RawField[] = [];
    let start = 0;
    let fieldStart = -1;
    let name = '';
    const flush = (end: number): void => {
        if (fieldStart >= 0) fields.push({ name, raw: section.subarray(fieldStart, end) });
        fieldStart = -1;
    };
    while (start < section.length) {
        let eol = section.indexOf('\r\n', start);
        const next = eol === -1 ? section.length : eol + 2;
        if (eol === -1) eol = section.length;
        const first = section[start];
        const isContinuation = first === 0x20 || first === 0x09;
        if (!isContinuation || fieldStart < 0) {
            flush(start);
            fieldStart = start;
            const line = section.subarray(start, eol).toString('latin1');
            const colon = line.indexOf(':');
            const candidate = colon > 0 ? line.slice(0, colon) : '';
            // RFC 5322 section 3.6.8: printable US-ASCII except colon
            name = /^[\x21-\x39\x3b-\x7e]+$/.test(candidate) ? candidate : '';
        }
        start = next;
    }
    flush(section.length);
    return fields;
}

/** The authserv-id of an Authentication-Results value: the first token, comments removed (RFC 8601 section 2.2). */
export function authservIdOf(value: string): string {
    const withoutComments = value.replace(/\((?:[^()\\]|\\.)*\)/g, ' ');
    const first = withoutComments.split(';')[0] ?? '';
    const token = first.trim().split(/\s+/)[0] ?? '';
    return token.toLowerCase();
}

/** A field's value: everything after the first colon, continuation lines unfolded (RFC 5322 section 2.2.3). */
export function fieldValue(field: RawField): string {
    const text = field.raw.toString('utf8');
    return text.slice(text.indexOf(':') + 1).replace(/\r\n/g, '');
}

/** True for fields that must not pass: our own headers and A-R fields claiming our authserv-id. */
export function isForgedOwnField(field: RawField, authservId: string): boolean {
    const lower = field.name.toLowerCase();
    if (lower.startsWith(OWN_PREFIX)) return true;
    if (lower === 'authentication-results') return authservIdOf(fieldValue(field)) === authservId.toLowerCase();
    return false;
}

/** Removes forged own fields; returns what is kept and the names of what was removed. */
export function filterIncomingFields(
    fields: readonly RawField[],
    authservId: string,
): { kept: RawField[]; removed: string[] } {
    const kept: RawField[] = [];
    const removed: string[] = [];
    for (const f of fields) {
        if (isForgedOwnField(f, authservId)) removed.push(f.name);
        else kept.push(f);
    }
    return { kept, removed };
}

/** Removes control characters (CR and LF included) from text that goes into a header. */
export function headerSafe(text: string): string {
    // eslint-disable-next-line no-control-regex
    return text.replace(/[\x00-\x08\x0a-\x1f\x7f]+/g, ' ');
}

/**
 * Renders one field, folding at whitespace so lines stay within 78 characters where
 * possible (RFC 5322 section 2.1.1); a word longer than that stays whole (limit 998).
 */
export function formatField(field: HeaderField): string {
    const words = headerSafe(field.value)
        .trim()
        .split(/[ \t]+/);
    let line = `${field.name}:`;
    const lines: string[] = [];
    for (const w of words) {
        if (w === '') continue;
        if (line.length + 1 + w.length > 78 && line.length > field.name.length + 1) {
            lines.push(line);
            line = `\t${w}`;
        } else {
            line += ` ${w}`;
        }
    }
    lines.push(line);
    return lines.join('\r\n') + '\r\n';
}

/** Date in the RFC 5322 section 3.3 format, in UTC. */
export function rfc5322Date(date: Date): string {
    const days = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
    const months = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
    const p = (n: number): string => String(n).padStart(2, '0');
    return (
        `${days[date.getUTCDay()]}, ${date.getUTCDate()} ${months[date.getUTCMonth()]} ${date.getUTCFullYear()} ` +
        `${p(date.getUTCHours())}:${p(date.getUTCMinutes())}:${p(date.getUTCSeconds())} +0000`
    );
}

export interface ReceivedInfo {
    readonly helo: string | null;
    readonly ip: string;
    readonly ptr: string | null;
    readonly hostname: string;
    /** With-protocol per RFC 3848: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA. */
    readonly protocol: string;
    readonly id: string;
    /** Named only when the message has exactly one recipient (RFC 5321 section 4.4 privacy note). */
    readonly recipient: string | null;
    readonly tlsCipher: string | null;
    readonly date: Date;
}

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

/**
 * Our trace field (RFC 5321 section 4.4): `from HELO (PTR [IP]) by … with … id …; date`.
 * The HELO name and the reverse name come from the client and its DNS: each is written only
 * when it is a host name (the HELO name may also be an address literal), `unknown` otherwise,
 * so a name with `(`, `[`, `;` or spaces can never shape the field or pose as another hop.
 */
export function receivedField(info: ReceivedInfo): HeaderField {
    const addr = info.ip.includes(':') ? `IPv6:${info.ip}` : info.ip;
    const helo =
        info.helo !== null && (isTraceHostname(info.helo) || isAddressLiteral(info.helo)) ? info.helo : 'unknown';
    const ptr = info.ptr !== null && isTraceHostname(info.ptr) ? info.ptr : 'unknown';
    const from = `from ${helo} (${ptr} [${addr}])`;
    const tls = info.tlsCipher ? ` (using ${headerSafe(info.tlsCipher)})` : '';
    // a quoted local part with spaces would be changed by folding: such a recipient is not named
    const forClause = info.recipient && !/\s/.test(info.recipient) ? ` for <${headerSafe(info.recipient)}>` : '';
    return {
        name: 'Received',
        value: `${from} by ${info.hostname} (mailwarden) with ${info.protocol}${tls} id ${info.id}${forClause}; ${rfc5322Date(info.date)}`,
    };
}

/** `X-Mailwarden-Verdict: <action>; rules=<id,id>; score=<n>; id=<session-id>` (SPEC, "Headers"). */
export function verdictField(action: Action, rules: readonly string[], score: number, id: string): HeaderField {
    return { name: 'X-Mailwarden-Verdict', value: `${action}; rules=${rules.join(',')}; score=${score}; id=${id}` };
}
