/**
 * Reads the incoming header section the way Postfix and DKIM verifiers read it, filters it,
 * and builds the header fields mailwarden prepends.
 * - Parsing (RFC 5322 sections 2.2 and 3.6.8, obsolete syntax of section 4.5): every line is
 *   either a field line, `ftext+ *WSP ":" value` (the field is the field its name names, so
 *   `From :` IS a From field, as Postfix's is_header() and DKIM relaxed canonicalisation read
 *   it), or a continuation line (starting with WSP) of the field above. A section that starts
 *   with WSP, a line without a colon, a name with other characters (space inside, 8-bit,
 *   control) or with its colon past the 998th byte, an empty line, a NUL or a bare CR/LF do not
 *   parse: readers disagree on what such
 *   bytes mean (Postfix ends the header section there; mailauth glues the line to the field
 *   above), so the whole section is refused rather than guessed at.
 * - Filtering: incoming copies of every X-Mailwarden-* field and Authentication-Results fields
 *   whose authserv-id is ours in any spelling (RFC 8601 sections 2.2 and 5: quoted or not,
 *   comments, case, a trailing dot) are removed, so nobody can forge our verdict.
 * - Building: Received (RFC 5321 section 4.4, protocol names from RFC 3848), X-Mailwarden-Verdict
 *   and any header a decision adds, folded to 78 columns (RFC 5322 section 2.2.3). Values never
 *   contain CR or LF: anything a client sent is sanitised before it is written.
 * Pure functions; no I/O. It must not decide replies (reply.ts) or policy.
 */
import { domainToASCII } from 'node:url';
import type { Action, HeaderField } from './types.ts';
import { decodeEncodedWords } from './encoded-words.ts';
import { MAX_DOMAIN_NAME, withoutTrailingDots } from './net/domain.ts';
import { isAddressLiteral, isTraceHostname } from './net/trace-names.ts';

/** One field of the incoming header section, kept byte for byte. */
export interface RawField {
    /** Field name as every reader takes it: the characters before the colon, without the WSP of the obsolete syntax. */
    readonly name: string;
    /** Line number (from 1) of the field's first line in the message. */
    readonly line: number;
    /** The field including continuation lines and the final CRLF (absent only at the very end of input). */
    readonly raw: Buffer;
}

/** Why a header section does not parse. */
export type HeaderProblem =
    | 'leading-whitespace'
    | 'no-colon'
    | 'invalid-name'
    | 'empty-line'
    | 'invalid-character'
    | 'field-too-long'
    | 'too-many-fields';

/**
 * Longest author field (From, Sender, Reply-To and their Resent- forms, RFC 5322 sections 3.6.2
 * and 3.6.6) we take, its continuation lines and CRLFs included. Postfix keeps at most
 * `header_size_limit` (102,400 bytes by default) of a field and discards the rest, so a longer
 * author field would reach readers cut where our checks read it whole: a From whose address lies
 * past the cut is judged by one and shown by the other. Ours is below Postfix's, with room for
 * the line ends it does not count. Other fields (a To of thousands of names, a long References)
 * are left to Postfix's cut: nothing is judged on what it drops.
 */
export const MAX_HEADER_FIELD = 100_000;

/**
 * Most fields a header section may have. Real messages have tens (a long Received chain, list
 * and ARC fields: a few hundred at most); a section of a million bytes could otherwise hold
 * 250,000 fields of four bytes each (`a:` CRLF), and each field costs an object and a pass of
 * every step that reads the fields (the forged-field filter, the facts, the verification's copy,
 * the DKIM signer): tens of megabytes and seconds of the main thread for one message. The
 * parser stops at the first field past the cap.
 */
export const MAX_HEADER_FIELDS = 1000;

/** The fields MAX_HEADER_FIELD applies to, lower case. */
const AUTHOR_FIELDS: ReadonlySet<string> = new Set(['from', 'sender', 'reply-to', 'resent-from', 'resent-sender']);

export type ParsedHeaderSection =
    | { readonly ok: true; readonly fields: readonly RawField[] }
    | { readonly ok: false; readonly line: number; readonly problem: HeaderProblem };

const OWN_PREFIX = 'x-mailwarden-';
const CR = 0x0d;
const LF = 0x0a;
const SP = 0x20;
const TAB = 0x09;
const COLON = 0x3a;

/**
 * Where a field line's colon may be at the latest: within the 998 bytes of a line RFC 5322
 * section 2.1.1 allows. Postfix decides whether a line is a header field from its first
 * `line_length_limit` bytes (2,048) only: a line whose colon comes later ends the header section
 * there for Postfix (the fields below it become body), while we would read on.
 */
const MAX_NAME_BYTES = 998;

/** ftext of RFC 5322 section 3.6.8: printable US-ASCII except the colon. */
function isFtext(b: number): boolean {
    return b >= 0x21 && b <= 0x7e && b !== COLON;
}

/**
 * Where a field line's name ends: the offset of its colon and the name, or the problem.
 * `field-name *WSP ":"` (RFC 5322 sections 3.6.8 and 4.5.8), which is also Postfix's
 * is_header(): any other byte before the colon makes the line something other than a field.
 */
function fieldLine(line: Buffer): { name: string } | { problem: HeaderProblem } {
    let i = 0;
    while (i < line.length && isFtext(line[i]!)) i++;
    const nameEnd = i;
    while (i < line.length && (line[i] === SP || line[i] === TAB)) i++;
    if (nameEnd > 0 && i < line.length && line[i] === COLON && i < MAX_NAME_BYTES) {
        return { name: line.toString('latin1', 0, nameEnd) };
    }
    return { problem: line.includes(COLON) ? 'invalid-name' : 'no-colon' };
}

/**
 * Splits a canonical (CRLF) header section, without the empty line that ends it, into fields;
 * continuation lines stay with their field and the raw bytes of the fields concatenate back to
 * the input. Refuses (with the 1-based line number) anything that is not such a section, and a
 * section of more than `maxFields` fields (at the line of the first one past the cap; the cap on
 * what a client sends by default, none for a section holding our own fields too).
 */
export function parseHeaderSection(section: Buffer, maxFields = MAX_HEADER_FIELDS): ParsedHeaderSection {
    const fields: RawField[] = [];
    let start = 0;
    let lineNo = 0;
    let current: { name: string; line: number; start: number } | null = null;
    const flush = (end: number): void => {
        if (current) fields.push({ name: current.name, line: current.line, raw: section.subarray(current.start, end) });
        current = null;
    };
    const tooLong = (end: number): boolean =>
        current !== null && end - current.start > MAX_HEADER_FIELD && AUTHOR_FIELDS.has(current.name.toLowerCase());
    while (start < section.length) {
        lineNo++;
        const crlf = section.indexOf('\r\n', start);
        const eol = crlf === -1 ? section.length : crlf;
        const line = section.subarray(start, eol);
        // NUL, and CR or LF that are not one CRLF pair, mean different lines to different readers
        if (line.includes(0) || line.includes(CR) || line.includes(LF)) {
            return { ok: false, line: lineNo, problem: 'invalid-character' };
        }
        if (line.length === 0) return { ok: false, line: lineNo, problem: 'empty-line' };
        if (line[0] === SP || line[0] === TAB) {
            // a continuation line (RFC 5322 section 2.2.3); with no field above it, Postfix would
            // glue it to the last field we prepend
            if (!current) return { ok: false, line: lineNo, problem: 'leading-whitespace' };
        } else {
            const parsed = fieldLine(line);
            if ('problem' in parsed) return { ok: false, line: lineNo, problem: parsed.problem };
            if (tooLong(start)) return { ok: false, line: current!.line, problem: 'field-too-long' };
            if (fields.length + (current ? 1 : 0) >= maxFields) {
                return { ok: false, line: lineNo, problem: 'too-many-fields' };
            }
            flush(start);
            current = { name: parsed.name, line: lineNo, start };
        }
        start = crlf === -1 ? section.length : crlf + 2;
    }
    if (tooLong(section.length)) return { ok: false, line: current!.line, problem: 'field-too-long' };
    flush(section.length);
    return { ok: true, fields };
}

/** Skips CFWS (RFC 5322 section 3.2.2: white space, line breaks and nested comments) from `i`; -1 for an open comment. */
function skipCfws(value: string, i: number): number {
    for (;;) {
        while (i < value.length && /[ \t\r\n]/.test(value[i]!)) i++;
        if (value[i] !== '(') return i;
        let depth = 0;
        for (; i < value.length; i++) {
            const c = value[i];
            if (c === '\\') i++;
            else if (c === '(') depth++;
            else if (c === ')' && --depth === 0) break;
        }
        if (depth !== 0) return -1;
        i++;
    }
}

/** tspecials of RFC 2045 section 5.1, which end a token. */
const TSPECIALS = '()<>@,;:\\"/[]?=';

/**
 * The authserv-id of an Authentication-Results value as RFC 8601 section 2.2 defines it:
 * `[CFWS] authserv-id` where authserv-id is a `value` (RFC 2045: a token, or a quoted-string
 * whose quoted-pairs are unescaped and folds removed). Null when the value does not start so.
 * Returned as written; compare with sameAuthservId.
 */
export function authservIdOf(value: string): string | null {
    let i = skipCfws(value, 0);
    if (i < 0 || i >= value.length) return null;
    if (value[i] === '"') {
        let out = '';
        for (i++; i < value.length; i++) {
            const c = value[i]!;
            if (c === '\\') out += value[++i] ?? '';
            else if (c === '"') return out;
            else if (c !== '\r' && c !== '\n') out += c;
        }
        return null;
    }
    let j = i;
    // eslint-disable-next-line no-control-regex
    while (j < value.length && !TSPECIALS.includes(value[j]!) && !/[\x00-\x20\x7f]/.test(value[j]!)) j++;
    return j > i ? value.slice(i, j) : null;
}

/** The value with its comments (nested, with quoted-pairs) turned into spaces; an open comment runs to the end. One pass. */
function withoutComments(value: string): string {
    let out = '';
    let depth = 0;
    let quoted = false;
    for (let i = 0; i < value.length; i++) {
        const c = value[i]!;
        if (depth === 0) {
            if (quoted && c === '\\') {
                out += c + (value[i + 1] ?? '');
                i++;
            } else if (!quoted && c === '(') {
                depth = 1;
                out += ' ';
            } else {
                if (c === '"') quoted = !quoted;
                out += c;
            }
        } else if (c === '\\') {
            i++;
        } else if (c === '(') {
            depth++;
        } else if (c === ')') {
            depth--;
        }
    }
    return out;
}

/**
 * Every way a reader may take the authserv-id of an Authentication-Results value: the RFC 8601
 * reading, and the readings of looser parsers (comments dropped and quotes ignored, or no
 * comment syntax at all), each also after RFC 2047 encoded-words are decoded (a parser that
 * decodes every field reads `=?us-ascii?Q?mx.example.com?=` as mx.example.com). A field is ours
 * when any of them is our id.
 */
export function authservIdReadings(value: string): string[] {
    const readings = new Set<string>();
    const decoded = decodeEncodedWords(value);
    for (const spelling of decoded === value ? [value] : [value, decoded]) readAuthservIds(spelling, readings);
    return [...readings];
}

/**
 * A word for the loosest readers: letters, digits, combining marks, "." and "-"; anything else
 * separates words. Python's split() and strip() take U+0085 and U+001C-U+001F for white space, Go's
 * TrimSpace U+0085, a reader of Latin-1 the bytes 0x85 and 0xA0 (U+FFFD here), and others strip
 * quotes and brackets; JavaScript's \s takes neither U+0085 nor U+001C-U+001F.
 */
const HOST_WORD = /[\p{L}\p{N}\p{M}.-]+/gu;
/** How many words before the first ";" a loose reading takes ("by mx.example.com;" is the second). */
const LOOSE_WORDS = 2;

function readAuthservIds(value: string, readings: Set<string>): void {
    const strict = authservIdOf(value);
    if (strict !== null) readings.add(strict);
    for (const text of [withoutComments(value), value]) {
        const beforeSemicolon = text.split(';', 1)[0] ?? '';
        const word = beforeSemicolon
            .replace(/["\\()]/g, ' ')
            .trim()
            .split(/\s+/)[0];
        if (word) readings.add(word);
        HOST_WORD.lastIndex = 0;
        for (let taken = 0; taken < LOOSE_WORDS; taken++) {
            const loose = HOST_WORD.exec(beforeSemicolon);
            if (loose === null) break;
            readings.add(loose[0]);
        }
    }
}

/**
 * A host name as authserv-ids compare (RFC 8601 section 2.5): ASCII case folded, A-labels, no
 * trailing dot. The dots are dropped after the A-label conversion too: it maps the IDNA full
 * stops (U+3002, U+FF0E, U+FF61) to "." and drops a soft hyphen, so `mx.example.com。` names
 * our host to any reader that applies IDNA (UTS #46 section 4).
 */
function hostKey(id: string): string {
    const trimmed = withoutTrailingDots(id.trim());
    // eslint-disable-next-line no-control-regex
    const ascii = /[^\x00-\x7f]/.test(trimmed) ? withoutTrailingDots(domainToASCII(trimmed)) || trimmed : trimmed;
    return ascii.replace(/[A-Z]/g, (c) => c.toLowerCase());
}

/** True when two authserv-ids name the same host: case-insensitive, a trailing dot ignored. */
export function sameAuthservId(a: string, b: string): boolean {
    return hostKey(a) === hostKey(b);
}

/** A field's value: everything after the first colon, continuation lines unfolded (RFC 5322 section 2.2.3). */
export function fieldValue(field: RawField): string {
    const text = field.raw.toString('utf8');
    return text.slice(text.indexOf(':') + 1).replace(/\r\n/g, '');
}

/** True when the name is one of ours (`X-Mailwarden-*`, any case). */
export function isOwnFieldName(name: string): boolean {
    return name.toLowerCase().startsWith(OWN_PREFIX);
}

/**
 * An authserv-id with non-ASCII characters longer than a host name can be. IDNA (UTS #46) would
 * take 30 to 90 ms for each (61 such fields blocked the process for 2.3 s) and could still map it
 * to our name (ignored characters such as soft hyphens drop out), so it is not converted: the
 * field is removed as if it named us.
 */
function unreadableHost(id: string): boolean {
    // eslint-disable-next-line no-control-regex
    return id.length > MAX_DOMAIN_NAME && /[^\x00-\x7f]/.test(id);
}

/** True for fields that must not pass: our own headers and A-R fields claiming our authserv-id. */
export function isForgedOwnField(field: RawField, authservId: string): boolean {
    if (isOwnFieldName(field.name)) return true;
    if (field.name.toLowerCase() !== 'authentication-results') return false;
    return authservIdReadings(fieldValue(field)).some((id) => unreadableHost(id) || sameAuthservId(id, authservId));
}

/** Removes forged own fields; returns what is kept and what was removed. */
export function filterIncomingFields(
    fields: readonly RawField[],
    authservId: string,
): { kept: RawField[]; removed: RawField[] } {
    const kept: RawField[] = [];
    const removed: RawField[] = [];
    for (const f of fields) {
        if (isForgedOwnField(f, authservId)) removed.push(f);
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
