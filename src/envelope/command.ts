/**
 * Reads the argument of `MAIL FROM:` and `RCPT TO:` exactly, from the bytes the client sent:
 * the path of RFC 5321 section 4.1.2 (source route, dot-string or quoted-string local part,
 * domain or IPv4/IPv6 address literal, `<>` and `<Postmaster>`), with the RFC 6531 section 3.3
 * extensions (UTF-8 in local parts, U-labels in domains, UTF-8 in parameter values), and the
 * ESMTP parameters that follow it (RFC 5321 section 4.1.2 `esmtp-param`).
 *
 * Every component must be valid UTF-8; nothing is rewritten, decoded or guessed: what does not
 * parse is refused with the part it failed in (command, address, parameter) and a reason a
 * person can read. A parsed address is given in one canonical form (RFC 5321 section 4.1.2:
 * a local part is quoted only when it is not a dot-string), which is what rules, logs and the
 * upstream see. It must not decide which parameters are allowed (envelope/extensions.ts does)
 * nor whether an address is acceptable (relay control, rules).
 */
import { isUtf8 } from 'node:buffer';
import net from 'node:net';
import { toALabel } from '../net/domain.ts';

export type CommandKind = 'mail' | 'rcpt';

/** A mailbox of the envelope. */
export interface Mailbox {
    /** The canonical form written between `<` and `>`: `''` for the null sender. */
    readonly address: string;
    /** The local part's value, quoting and quoted-pairs removed. */
    readonly local: string;
    /** The domain as written (U-labels kept) or the address literal with its brackets; null for `<>` and `<Postmaster>`. */
    readonly domain: string | null;
    /** The domain folded for comparison: lower case, A-labels; the literal lower-cased. Null as `domain`. */
    readonly asciiDomain: string | null;
    /** True when the domain is an address literal (`[192.0.2.1]`, `[IPv6:…]`). */
    readonly literal: boolean;
    /** True when the address holds a non-ASCII character, which needs SMTPUTF8 (RFC 6531 section 3.4). */
    readonly nonAscii: boolean;
}

/** One ESMTP parameter as written: the keyword upper-cased, the value exactly as sent. */
export interface EnvelopeParam {
    readonly keyword: string;
    /** Null for a keyword without `=value`. */
    readonly value: string | null;
    readonly nonAscii: boolean;
}

export type EnvelopeParse =
    | { readonly ok: true; readonly mailbox: Mailbox; readonly params: readonly EnvelopeParam[] }
    | {
          readonly ok: false;
          /** Where it failed: the command word, the address, or a parameter. */
          readonly part: 'command' | 'address' | 'parameter';
          readonly reason: string;
          /** The parameter keyword, for `part: 'parameter'` when it could be read. */
          readonly keyword?: string;
      };

/** RFC 5321 section 4.5.3.1.3: a path is at most 256 octets, angle brackets included. */
export const MAX_PATH_OCTETS = 256;
/** RFC 5321 section 4.5.3.1.2: a domain is at most 255 octets. */
const MAX_DOMAIN_OCTETS = 255;
const MAX_LABEL_OCTETS = 63;

/** `atext` of RFC 5321 section 4.1.2 (RFC 5322 section 3.2.3), by code; octets >= 0x80 are added by RFC 6531. */
const ATEXT_SPECIALS = "!#$%&'*+-/=?^_`{|}~";

function isAtext(code: number): boolean {
    return (
        (code >= 0x30 && code <= 0x39) ||
        (code >= 0x41 && code <= 0x5a) ||
        (code >= 0x61 && code <= 0x7a) ||
        ATEXT_SPECIALS.includes(String.fromCharCode(code)) ||
        code >= 0x80
    );
}

/** `qtextSMTP` (RFC 5321 section 4.1.2) plus UTF8-non-ascii (RFC 6531 section 3.3). */
function isQtext(code: number): boolean {
    return code === 32 || code === 33 || (code >= 35 && code <= 91) || (code >= 93 && code <= 126) || code >= 0x80;
}

/** `esmtp-value` characters (RFC 5321 section 4.1.2) plus UTF8-non-ascii (RFC 6531 section 3.3). */
function isValueChar(code: number): boolean {
    return (code >= 33 && code <= 60) || (code >= 62 && code <= 126) || code >= 0x80;
}

const KEYWORD = /^[A-Za-z0-9][A-Za-z0-9-]*$/;
const LDH_LABEL = /^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$/;
// eslint-disable-next-line no-control-regex
const NON_ASCII = /[^\x00-\x7f]/;
/**
 * Characters valid in UTF-8 but refused in addresses and parameter values (stricter than
 * Postfix, as smtp-server was): C1 controls, the line and paragraph separators, and invisible
 * or direction-changing format characters, which serve log and header injection and
 * addresses that look like others.
 */
const INVISIBLE = /[\u0080-\u009f\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff]/;
/** A local part that needs no quotes: Atom *("." Atom), atext including UTF-8 (RFC 6531). */
const DOT_STRING =
    /^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\u{10ffff}]+(?:\.[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\u{10ffff}]+)*$/u;

/** Printable ASCII for messages (replies to a client that did not declare SMTPUTF8 are ASCII): anything else shown as `?`. */
function printable(text: string): string {
    return text.replace(/[^\x20-\x7e]/g, '?').slice(0, 64);
}

/** Says what was found at `i` where something else was expected. */
function unexpected(s: string, i: number): string {
    if (i >= s.length) return 'the address is not closed with ">"';
    const code = s.charCodeAt(i);
    const what = code > 0x20 && code < 0x7f ? `"${s[i]}"` : code === 0x20 ? 'a space' : 'a control or 8-bit character';
    return `unexpected ${what} in the address (quote the local part if it really holds it)`;
}

/**
 * Octets read as one character each (latin1), turned back into the UTF-8 text they encode;
 * or why they cannot be: not UTF-8, or a character of INVISIBLE.
 */
function utf8(octets: string): { text: string } | { problem: string } {
    const bytes = Buffer.from(octets, 'latin1');
    if (!isUtf8(bytes)) return { problem: 'is not valid UTF-8' };
    const text = bytes.toString('utf8');
    if (INVISIBLE.test(text)) return { problem: 'holds an invisible or control character' };
    return { text };
}

/** The local part in canonical form: as a dot-string when it is one, else quoted (RFC 5321 section 4.1.2). */
export function quoteLocalPart(local: string): string {
    if (DOT_STRING.test(local)) return local;
    return `"${local.replace(/["\\]/g, '\\$&')}"`;
}

/**
 * A domain name of the envelope (`Domain`, RFC 5321 section 4.1.2, with U-labels per RFC 6531):
 * returns its folded A-label form, or a reason it is not one.
 */
export function foldEnvelopeDomain(domain: string): { ascii: string } | { error: string } {
    if (domain === '') return { error: 'the domain is missing' };
    if (Buffer.byteLength(domain) > MAX_DOMAIN_OCTETS) return { error: 'the domain is longer than 255 octets' };
    const labels = domain.split('.');
    if (labels.some((l) => l === '')) return { error: `"${printable(domain)}" has an empty label` };
    const ascii = NON_ASCII.test(domain) ? (toALabel(domain) ?? '') : domain.toLowerCase();
    // IDNA also maps look-alike dots (U+3002 …) to "."; the labels must stay the same
    if (ascii === '' || ascii.split('.').length !== labels.length) {
        return { error: `"${printable(domain)}" is not a valid domain name` };
    }
    for (const label of ascii.split('.')) {
        if (label.length > MAX_LABEL_OCTETS || !LDH_LABEL.test(label)) {
            return {
                error: `"${printable(domain)}" is not a valid domain name (letters, digits and inner hyphens only)`,
            };
        }
    }
    return { ascii };
}

/** An address literal without its brackets: `192.0.2.1` or `IPv6:2001:db8::1` (RFC 5321 section 4.1.3). */
function checkLiteral(content: string): boolean {
    if (/^\d{1,3}(?:\.\d{1,3}){3}$/.test(content) && net.isIPv4(content)) return true;
    return /^ipv6:/i.test(content) && net.isIPv6(content.slice(5));
}

type Failure = Extract<EnvelopeParse, { ok: false }>;
const fail = (part: Failure['part'], reason: string, keyword?: string): Failure =>
    keyword === undefined ? { ok: false, part, reason } : { ok: false, part, reason, keyword };

interface PathScan {
    readonly end: number;
    readonly mailbox: Mailbox;
}

/** The canonical mailbox for a parsed local part and domain. */
function mailbox(local: string, domain: string | null, asciiDomain: string | null, literal: boolean): Mailbox {
    const address = domain === null ? local : `${quoteLocalPart(local)}@${domain}`;
    return { address, local, domain, asciiDomain, literal, nonAscii: NON_ASCII.test(address) };
}

/**
 * Scans `<path>` starting at the `<` at `start` of `s` (octets as latin1 characters).
 * RFC 5321 section 4.1.2; section 3.3 and appendix C: a source route is read and ignored.
 */
function scanPath(s: string, start: number, kind: CommandKind): PathScan | Failure {
    let i = start + 1;
    const code = (): number => s.charCodeAt(i);
    const at = (c: string): boolean => s[i] === c;
    if (at('>')) {
        if (kind === 'rcpt') return fail('address', 'a recipient address is needed; <> is the null sender');
        return { end: i + 1, mailbox: mailbox('', null, null, false) };
    }
    if (at('@')) {
        // A-d-l ":" — each At-domain must be a domain; the route itself is then ignored
        for (;;) {
            if (!at('@')) return fail('address', 'malformed source route');
            const from = ++i;
            while (i < s.length && s[i] !== ',' && s[i] !== ':' && s[i] !== '>') i++;
            const routeDomain = utf8(s.slice(from, i));
            if ('problem' in routeDomain) return fail('address', `the address ${routeDomain.problem}`);
            const folded = foldEnvelopeDomain(routeDomain.text);
            if ('error' in folded) return fail('address', `malformed source route: ${folded.error}`);
            if (at(',')) {
                i++;
                continue;
            }
            if (at(':')) {
                i++;
                break;
            }
            return fail('address', 'malformed source route');
        }
    }
    // Local-part = Dot-string / Quoted-string
    let localOctets = '';
    let quoted = false;
    if (at('"')) {
        quoted = true;
        i++;
        for (;;) {
            if (i >= s.length) return fail('address', 'the quoted local part is not closed');
            const c = code();
            if (c === 0x22) {
                i++;
                break;
            }
            if (c === 0x5c) {
                const next = s.charCodeAt(i + 1);
                // quoted-pairSMTP = %d92 %d32-126
                if (!(next >= 32 && next <= 126))
                    return fail('address', 'a backslash in quotes must escape a character');
                localOctets += s[i + 1];
                i += 2;
                continue;
            }
            if (!isQtext(c)) return fail('address', 'the quoted local part holds a control character');
            localOctets += s[i];
            i++;
        }
    } else {
        const from = i;
        while (i < s.length && (isAtext(code()) || at('.'))) i++;
        localOctets = s.slice(from, i);
        if (localOctets === '') {
            return fail('address', unexpected(s, i));
        }
        if (localOctets.startsWith('.') || localOctets.endsWith('.') || localOctets.includes('..')) {
            return fail('address', 'the local part has a misplaced dot (quote it if it really is so)');
        }
    }
    const decoded = utf8(localOctets);
    if ('problem' in decoded) return fail('address', `the address ${decoded.problem}`);
    const local = decoded.text;
    if (at('>')) {
        // RFC 5321 section 4.1.1.3: the domainless <Postmaster> recipient
        if (kind === 'rcpt' && !quoted && local.toLowerCase() === 'postmaster') {
            return { end: i + 1, mailbox: mailbox(local, null, null, false) };
        }
        return fail('address', 'the address has no domain (write local-part@domain)');
    }
    if (!at('@')) return fail('address', unexpected(s, i));
    i++;
    let domain: string;
    let asciiDomain: string;
    let literal = false;
    if (at('[')) {
        const close = s.indexOf(']', i);
        if (close < 0) return fail('address', 'the address literal is not closed');
        const content = s.slice(i + 1, close);
        if (!checkLiteral(content))
            return fail('address', `[${printable(content)}] is not an IPv4 or IPv6 address literal`);
        domain = `[${content}]`;
        asciiDomain = domain.toLowerCase();
        literal = true;
        i = close + 1;
    } else {
        const from = i;
        while (i < s.length && (/[A-Za-z0-9.-]/.test(s[i]!) || code() >= 0x80)) i++;
        const decodedDomain = utf8(s.slice(from, i));
        if ('problem' in decodedDomain) return fail('address', `the address ${decodedDomain.problem}`);
        const text = decodedDomain.text;
        const folded = foldEnvelopeDomain(text);
        if ('error' in folded) return fail('address', folded.error);
        domain = text;
        asciiDomain = folded.ascii;
    }
    if (!at('>')) return fail('address', unexpected(s, i));
    return { end: i + 1, mailbox: mailbox(local, domain, asciiDomain, literal) };
}

/** Reads the parameters after the path: SP-separated `keyword[=value]` (RFC 5321 section 4.1.2). */
function scanParams(rest: string): EnvelopeParam[] | Failure {
    if (rest === '') return [];
    if (!rest.startsWith(' ')) return fail('parameter', 'a space must separate the address and each parameter');
    const params: EnvelopeParam[] = [];
    const seen = new Set<string>();
    for (const token of rest.split(' ')) {
        if (token === '') continue;
        const eq = token.indexOf('=');
        const keywordText = eq < 0 ? token : token.slice(0, eq);
        if (!KEYWORD.test(keywordText)) {
            return fail('parameter', `"${printable(keywordText)}" is not a parameter keyword`);
        }
        const keyword = keywordText.toUpperCase();
        if (seen.has(keyword)) return fail('parameter', `${keyword} is given twice`, keyword);
        seen.add(keyword);
        if (eq < 0) {
            params.push({ keyword, value: null, nonAscii: false });
            continue;
        }
        const octets = token.slice(eq + 1);
        if (octets === '') return fail('parameter', `${keyword}= needs a value`, keyword);
        for (let k = 0; k < octets.length; k++) {
            if (!isValueChar(octets.charCodeAt(k))) {
                return fail('parameter', `the value of ${keyword} holds a character not allowed there`, keyword);
            }
        }
        const value = utf8(octets);
        if ('problem' in value) return fail('parameter', `the value of ${keyword} ${value.problem}`, keyword);
        params.push({ keyword, value: value.text, nonAscii: NON_ASCII.test(value.text) });
    }
    return params;
}

const PREFIX: Readonly<Record<CommandKind, RegExp>> = { mail: /^MAIL FROM: */i, rcpt: /^RCPT TO: */i };

/**
 * Parses one MAIL or RCPT command line (without CRLF), given as the octets received.
 * Spaces after the colon are tolerated (as Postfix does); the path must be in angle brackets.
 */
export function parseEnvelopeCommand(kind: CommandKind, line: Uint8Array): EnvelopeParse {
    const s = Buffer.from(line.buffer, line.byteOffset, line.byteLength).toString('latin1');
    const prefix = PREFIX[kind].exec(s);
    const syntax = kind === 'mail' ? 'MAIL FROM:<address> [parameters]' : 'RCPT TO:<address> [parameters]';
    if (!prefix) return fail('command', `write ${syntax}`);
    const start = prefix[0].length;
    if (s[start] !== '<') return fail('command', `write ${syntax}, the address in angle brackets`);
    const path = scanPath(s, start, kind);
    if ('ok' in path) return path;
    if (path.end - start > MAX_PATH_OCTETS) return fail('address', 'the address is longer than 256 octets');
    const params = scanParams(s.slice(path.end));
    if (!Array.isArray(params)) return params;
    return { ok: true, mailbox: path.mailbox, params };
}

/**
 * True when `address` is a mailbox in the canonical form this module produces (what may be
 * written between `<` and `>` towards the upstream): the null sender, `Postmaster`, or a
 * `local@domain` that parses to itself. Guards the upstream against anything else.
 */
export function isCanonicalAddress(address: string, kind: CommandKind): boolean {
    const prefix = kind === 'mail' ? 'MAIL FROM:' : 'RCPT TO:';
    const parsed = parseEnvelopeCommand(kind, Buffer.from(`${prefix}<${address}>`, 'utf8'));
    return parsed.ok && parsed.params.length === 0 && parsed.mailbox.address === address;
}
