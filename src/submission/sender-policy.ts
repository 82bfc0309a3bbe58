/**
 * Sender binding on submission: which addresses an authenticated login may use, as the
 * envelope sender (MAIL FROM, RFC 5321 section 4.1.1.2) and in the From:/Sender: header fields
 * (RFC 5322 section 3.6.2) and their Resent- forms (section 3.6.6), with the semantics of
 * Postfix's smtpd_sender_login_maps and reject_sender_login_mismatch:
 *   - `user@domain` entries match that address; `@domain` entries match every address at
 *     exactly that domain (not its subdomains);
 *   - domains compare case-insensitively, internationalised names by their A-label (RFC 5890);
 *     local parts compare case-insensitively too (RFC 5321 section 2.4 lets a host treat them
 *     case-sensitively, but no mailbox provider does, and Postfix's tables fold case);
 *   - `"alice"@example.com` equals `alice@example.com` (quoting is syntax, RFC 5322 section 3.4.1);
 *   - with a recipient delimiter (Postfix `recipient_delimiter`, default `+`), `alice+tag@d` is
 *     allowed when `alice@d` is (RFC 5233 subaddressing);
 *   - the null sender `<>` is never allowed on submission: bounces come from the MTA.
 * Also parses From:/Sender: (and Resent-From:/Resent-Sender:) values (RFC 5322 section 3.4
 * address lists with display names, quoted strings, comments and groups; RFC 6532 UTF-8). Pure
 * functions; no I/O, no logging.
 */
import { toALabel, withoutTrailingDot } from '../net/domain.ts';
import { canonicalAddressLiteral } from '../net/ip.ts';
import { baseLocalPart } from '../rules/names.ts';

/** The addresses one login may use. Built by compileSenderPolicy; read by mayUse. */
export interface SenderPolicy {
    /** The login the policy belongs to, as given. */
    readonly login: string;
    /** Whole addresses, normalised (see normalizeAddress). */
    readonly addresses: ReadonlySet<string>;
    /** Domains (lower-case A-labels) any address of which may be used. */
    readonly domains: ReadonlySet<string>;
    /** Characters that start a subaddress in a local part; '' turns subaddressing off. */
    readonly recipientDelimiter: string;
}

/** One `sendAs` entry: a whole address, or `@domain`. */
export type SendAsEntry =
    | { readonly kind: 'address'; readonly address: string }
    | { readonly kind: 'domain'; readonly domain: string };

export const DEFAULT_RECIPIENT_DELIMITER = '+';

/** atext of RFC 5322 section 3.2.3, plus UTF-8 (RFC 6532 section 3.2). */
const ATEXT = /^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\u{10ffff}]+$/u;

function isDotAtom(text: string): boolean {
    return text.split('.').every((part) => ATEXT.test(part));
}

/**
 * A domain as a lower-case A-label without a trailing dot, an address literal in its one form
 * (src/net/ip.ts: `[IPv6:2001:DB8::1]` is `[ipv6:2001:db8::1]`, IPv4-mapped as IPv4), or null.
 */
export function normalizeDomain(domain: string): string | null {
    const d = withoutTrailingDot(domain.trim());
    if (d === '') return null;
    if (/^\[[^\]\s]+\]$/.test(d)) return canonicalAddressLiteral(d) ?? d.toLowerCase();
    if (!isDotAtom(d)) return null;
    const ascii = toALabel(d);
    if (ascii === null || !/^[a-z0-9-]+(\.[a-z0-9-]+)*$/i.test(ascii)) return null;
    return ascii.toLowerCase();
}

/** Removes the quotes and quoted-pairs of a quoted local part (RFC 5322 section 3.2.4). */
function unquote(local: string): string | null {
    if (!(local.length >= 2 && local.startsWith('"') && local.endsWith('"'))) return null;
    let out = '';
    for (let i = 1; i < local.length - 1; i++) {
        let ch = local[i] ?? '';
        if (ch === '\\') {
            i++;
            ch = local[i] ?? '';
            if (i >= local.length - 1) return null;
        } else if (ch === '"') {
            return null;
        }
        out += ch;
    }
    return out;
}

/**
 * An address as `local@domain` for comparison: angle brackets removed, the local part unquoted
 * and lower-cased, the domain normalised. Null for text that is not an address.
 */
export function normalizeAddress(address: string): string | null {
    let a = address.trim();
    if (a.startsWith('<') && a.endsWith('>')) a = a.slice(1, -1).trim();
    const at = a.lastIndexOf('@');
    if (at <= 0 || at === a.length - 1) return null;
    let local = a.slice(0, at);
    const domain = normalizeDomain(a.slice(at + 1));
    if (domain === null) return null;
    if (local.startsWith('"')) {
        const inner = unquote(local);
        if (inner === null || inner === '') return null;
        local = inner;
    } else if (!isDotAtom(local)) {
        return null;
    }
    // eslint-disable-next-line no-control-regex
    if (/[\x00-\x1f\x7f]/.test(local)) return null;
    return `${local.toLowerCase()}@${domain}`;
}

/** Reads one `sendAs` entry: `user@domain` or `@domain`. Null when it is neither. */
export function parseSendAsEntry(text: string): SendAsEntry | null {
    const t = text.trim();
    if (t.startsWith('@')) {
        const domain = normalizeDomain(t.slice(1));
        return domain === null ? null : { kind: 'domain', domain };
    }
    const address = normalizeAddress(t);
    return address === null ? null : { kind: 'address', address };
}

/**
 * The policy of one login. `entries` null means "no list written": the login may then send as
 * itself only (when the login is an address), like maddy's identity mapping. Entries that do
 * not parse are ignored (the file loaders report them).
 */
export function compileSenderPolicy(
    login: string,
    entries: readonly string[] | null,
    opts: { recipientDelimiter?: string } = {},
): SenderPolicy {
    const addresses = new Set<string>();
    const domains = new Set<string>();
    for (const text of entries ?? [login]) {
        const entry = parseSendAsEntry(text);
        if (entry?.kind === 'address') addresses.add(entry.address);
        else if (entry?.kind === 'domain') domains.add(entry.domain);
    }
    return { login, addresses, domains, recipientDelimiter: opts.recipientDelimiter ?? DEFAULT_RECIPIENT_DELIMITER };
}

/**
 * May `login` use `address` as a sender? False for the null sender, for text that is not an
 * address, and when `policy` belongs to another login.
 */
export function mayUse(login: string, address: string, policy: SenderPolicy): boolean {
    if (policy.login.toLowerCase() !== login.toLowerCase()) return false;
    const normalized = normalizeAddress(address);
    if (normalized === null) return false;
    if (policy.addresses.has(normalized)) return true;
    const at = normalized.lastIndexOf('@');
    const local = normalized.slice(0, at);
    const domain = normalized.slice(at + 1);
    if (policy.domains.has(domain)) return true;
    const base = baseLocalPart(local, policy.recipientDelimiter);
    return base !== null && policy.addresses.has(`${base}@${domain}`);
}

/** The author fields bound to the login. */
export type AuthorField = 'From' | 'Sender' | 'Resent-From' | 'Resent-Sender';

/** Outcome of checking the From:/Sender: (and Resent-) fields of a message against a login. */
export type HeaderSenderResult =
    | { readonly ok: true }
    | { readonly ok: false; readonly reason: 'no-from'; readonly field: 'From' }
    | { readonly ok: false; readonly reason: 'malformed'; readonly field: AuthorField }
    | { readonly ok: false; readonly reason: 'several'; readonly field: 'From' | 'Sender'; readonly count: number }
    | { readonly ok: false; readonly reason: 'not-owned'; readonly field: AuthorField; readonly address: string };

/**
 * An address as two parsers must agree on it: lower case, quotes and quoted-pair backslashes left
 * out, and an obs-route (`@relay.example:`, which mailauth's parser keeps in the address) dropped.
 */
function mailboxKey(address: string): string {
    return address
        .replace(/^@[^:]*:/, '')
        .replace(/["\\]/g, '')
        .toLowerCase();
}

/** True when the two readings name the same mailboxes, as many times each. */
function sameMailboxes(ours: readonly string[], theirs: readonly string[]): boolean {
    if (ours.length !== theirs.length) return false;
    const a = ours.map(mailboxKey).sort();
    const b = theirs.map(mailboxKey).sort();
    return a.every((key, i) => key === b[i]);
}

/**
 * Checks the author fields: exactly one From field and at most one Sender field (RFC 5322
 * section 3.6: readers that see several pick different ones), every mailbox of the From field
 * usable by the login, and the Sender mailbox too when there is one (section 3.6.2). Stricter
 * than "From or Sender" on purpose: recipients see From. Every mailbox of every Resent-From and
 * Resent-Sender field (section 3.6.6; a message resent several times has a block for each) must
 * be usable too: they are signed with the login's domain, and a redirect by the login puts its
 * own address there. A From without any mailbox, and fields that do not parse, fail; so does a
 * field `otherReading` (the parser DMARC and receivers use) reads as other mailboxes than ours.
 * Every value is parsed twice; the caller bounds their bytes (incoming-header.ts: the Resent
 * fields together, as one From).
 */
export function checkHeaderSenders(
    login: string,
    fields: {
        readonly from: readonly string[];
        readonly sender: readonly string[];
        readonly resentFrom?: readonly string[];
        readonly resentSender?: readonly string[];
    },
    policy: SenderPolicy,
    otherReading?: (value: string) => readonly string[],
): HeaderSenderResult {
    if (fields.from.length > 1) return { ok: false, reason: 'several', field: 'From', count: fields.from.length };
    if (fields.sender.length > 1) {
        return { ok: false, reason: 'several', field: 'Sender', count: fields.sender.length };
    }
    let fromCount = 0;
    for (const [field, values] of [
        ['From', fields.from],
        ['Sender', fields.sender],
        ['Resent-From', fields.resentFrom ?? []],
        ['Resent-Sender', fields.resentSender ?? []],
    ] as const) {
        for (const value of values) {
            const list = parseAddresses(value);
            if (list === null) return { ok: false, reason: 'malformed', field };
            // a value another parser reads as other mailboxes would let the login check approve
            // one author while receivers see another: it cannot be read, for our purpose
            if (otherReading && !sameMailboxes(list, otherReading(value)))
                return { ok: false, reason: 'malformed', field };
            if (field === 'From') fromCount += list.length;
            for (const address of list) {
                if (!mayUse(login, address, policy)) return { ok: false, reason: 'not-owned', field, address };
            }
        }
    }
    if (fromCount === 0) return { ok: false, reason: 'no-from', field: 'From' };
    return { ok: true };
}

// ---- RFC 5322 section 3.4 address lists ----

type Token =
    | { readonly t: 'atom'; readonly v: string }
    | { readonly t: 'quoted'; readonly v: string }
    | { readonly t: 'literal'; readonly v: string }
    | { readonly t: 'special'; readonly v: string };

const SPECIALS = '()<>[]:;@\\,."';

/** Splits a field value into words and specials; comments and folding white space are dropped. */
function tokenize(value: string): Token[] | null {
    const out: Token[] = [];
    let i = 0;
    const n = value.length;
    while (i < n) {
        const ch = value[i] ?? '';
        if (ch === ' ' || ch === '\t' || ch === '\r' || ch === '\n') {
            i++;
        } else if (ch === '(') {
            // comments nest (RFC 5322 section 3.2.2)
            let depth = 0;
            for (; i < n; i++) {
                const c = value[i];
                if (c === '\\') i++;
                else if (c === '(') depth++;
                else if (c === ')' && --depth === 0) break;
            }
            if (depth !== 0) return null;
            i++;
        } else if (ch === '"') {
            let v = '';
            let closed = false;
            for (i++; i < n; i++) {
                const c = value[i] ?? '';
                if (c === '\\') {
                    i++;
                    v += value[i] ?? '';
                } else if (c === '"') {
                    closed = true;
                    break;
                } else if (c !== '\r' && c !== '\n') {
                    v += c;
                }
            }
            if (!closed) return null;
            i++;
            out.push({ t: 'quoted', v });
        } else if (ch === '[') {
            const end = value.indexOf(']', i);
            if (end < 0) return null;
            out.push({ t: 'literal', v: value.slice(i, end + 1).replace(/\s+/g, '') });
            i = end + 1;
        } else if (SPECIALS.includes(ch)) {
            if (ch === ')' || ch === ']' || ch === '\\') return null;
            out.push({ t: 'special', v: ch });
            i++;
        } else {
            let j = i;
            while (j < n) {
                const c = value[j] ?? '';
                // eslint-disable-next-line no-control-regex
                if (SPECIALS.includes(c) || /[\s\x00-\x1f\x7f]/.test(c)) break;
                j++;
            }
            if (j === i) return null;
            out.push({ t: 'atom', v: value.slice(i, j) });
            i = j;
        }
    }
    return out;
}

class AddressParser {
    private pos = 0;
    private readonly tokens: readonly Token[];

    constructor(tokens: readonly Token[]) {
        this.tokens = tokens;
    }

    private peek(offset = 0): Token | undefined {
        return this.tokens[this.pos + offset];
    }

    private isSpecial(tok: Token | undefined, v: string): boolean {
        return tok?.t === 'special' && tok.v === v;
    }

    /** address-list (with obs-addr-list's empty elements). */
    list(): string[] | null {
        const out: string[] = [];
        while (this.pos < this.tokens.length) {
            if (this.isSpecial(this.peek(), ',')) {
                this.pos++;
                continue;
            }
            const got = this.address(true);
            if (got === null) return null;
            out.push(...got);
            if (this.pos < this.tokens.length && !this.isSpecial(this.peek(), ',')) return null;
        }
        return out;
    }

    /** One address: a group (when allowed), a name-addr or an addr-spec. */
    private address(allowGroup: boolean): string[] | null {
        // Look ahead to what decides the form: '<' (name-addr), ':' (group), else addr-spec.
        for (let k = this.pos; k < this.tokens.length; k++) {
            const tok = this.tokens[k];
            if (tok?.t !== 'special' || tok.v === '.' || tok.v === '@') continue;
            if (tok.v === '<') {
                if (!this.phraseUntil(k)) return null;
                const spec = this.angleAddr();
                return spec === null ? null : [spec];
            }
            if (tok.v === ':' && allowGroup) {
                if (k === this.pos || !this.phraseUntil(k)) return null;
                this.pos++; // ':'
                return this.groupBody();
            }
            break;
        }
        const spec = this.addrSpec();
        return spec === null ? null : [spec];
    }

    /** The display name (or group name) up to token `end`: words and obs-phrase dots only. */
    private phraseUntil(end: number): boolean {
        for (; this.pos < end; this.pos++) {
            const tok = this.peek();
            // '@' is not allowed in a phrase, but "alice@example.com <bob@example.net>" is common
            // enough; the display name never decides anything here. A domain literal is no word:
            // "[x, bob@example.net] <alice@example.com>" hides an address from this reading only
            if (tok?.t === 'literal') return false;
            if (tok?.t === 'special' && tok.v !== '.' && tok.v !== '@') return false;
        }
        return true;
    }

    /** group-list after the ':' up to and including ';'. */
    private groupBody(): string[] | null {
        const out: string[] = [];
        for (;;) {
            const tok = this.peek();
            if (tok === undefined) return null;
            if (this.isSpecial(tok, ';')) {
                this.pos++;
                return out;
            }
            if (this.isSpecial(tok, ',')) {
                this.pos++;
                continue;
            }
            const got = this.address(false);
            if (got === null) return null;
            out.push(...got);
            const after = this.peek();
            if (!this.isSpecial(after, ',') && !this.isSpecial(after, ';')) return null;
        }
    }

    /** '<' [obs-route] addr-spec '>'. */
    private angleAddr(): string | null {
        this.pos++; // '<'
        if (this.isSpecial(this.peek(), '@') && !this.obsRoute()) return null;
        const spec = this.addrSpec();
        if (spec === null || !this.isSpecial(this.peek(), '>')) return null;
        this.pos++;
        return spec;
    }

    /**
     * obs-route before the address (RFC 5322 section 4.4): `"@" domain *("," ["@" domain]) ":"`,
     * skipped; anything else inside it (an address, `<`, `>`) makes the value unreadable.
     */
    private obsRoute(): boolean {
        for (;;) {
            if (this.isSpecial(this.peek(), '@')) {
                this.pos++;
                if (!this.domain()) return false;
            }
            if (this.isSpecial(this.peek(), ':')) {
                this.pos++;
                return true;
            }
            if (!this.isSpecial(this.peek(), ',')) return false;
            this.pos++;
        }
    }

    /** A domain: a domain literal, or atoms separated by dots (obs-domain). */
    private domain(): string | null {
        const first = this.peek();
        if (first?.t === 'literal') {
            this.pos++;
            return first.v;
        }
        const labels: string[] = [];
        for (;;) {
            const tok = this.peek();
            if (tok?.t !== 'atom') return null;
            labels.push(tok.v);
            this.pos++;
            if (!this.isSpecial(this.peek(), '.')) return labels.join('.');
            this.pos++;
        }
    }

    /** local-part "@" domain; the local part re-quoted when it is not a dot-atom. */
    private addrSpec(): string | null {
        const words: string[] = [];
        let quoted = false;
        for (;;) {
            const tok = this.peek();
            if (tok?.t !== 'atom' && tok?.t !== 'quoted') return null;
            if (tok.t === 'quoted') quoted = true;
            words.push(tok.v);
            this.pos++;
            if (!this.isSpecial(this.peek(), '.')) break;
            this.pos++;
        }
        if (!this.isSpecial(this.peek(), '@')) return null;
        this.pos++;
        const domain = this.domain();
        if (domain === null) return null;
        let local = words.join('.');
        if (quoted && !isDotAtom(local)) local = `"${local.replace(/(["\\])/g, '\\$1')}"`;
        return `${local}@${domain}`;
    }
}

/**
 * The addresses (addr-specs) of a From:, Sender:, To: or Cc: field value, in order; group
 * members included, display names and comments dropped. [] for an empty value or an empty
 * group; null when the value does not parse (treat as a failure, never as "no address").
 */
export function parseAddresses(value: string): string[] | null {
    const tokens = tokenize(value);
    if (tokens === null) return null;
    return new AddressParser(tokens).list();
}
