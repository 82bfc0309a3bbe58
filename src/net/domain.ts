/**
 * The one place domain names are normalised: lower-cased, without the trailing dot of a fully
 * qualified name, internationalised names (U-labels, RFC 5890/6531) in their ASCII A-label form
 * through node's IDNA (UTS #46), and the strict reading of a name an operator writes. Callers
 * add only their own rules on top (the envelope's LDH labels, a HELO's two labels, a list
 * zone). Pure; no DNS; must NOT read addresses or address literals (src/net/ip.ts does).
 */
import { domainToASCII } from 'node:url';

/** Longest domain name in characters, without the root dot (RFC 1035 section 2.3.4). */
export const MAX_DOMAIN_NAME = 253;

/** Longest label of a domain name (RFC 1035 section 2.3.4). */
export const MAX_DOMAIN_LABEL = 63;

/** The trailing dot of a fully qualified name removed (one dot: `example.com.` → `example.com`). */
export function withoutTrailingDot(name: string): string {
    return name.endsWith('.') ? name.slice(0, -1) : name;
}

/**
 * Every trailing dot removed (`a.example..` → `a.example`), in linear time: the regular
 * expression `/\.+$/` retries at each dot of a run inside the name, quadratic in a run that an
 * attacker can make 100,000 dots long.
 */
export function withoutTrailingDots(name: string): string {
    let end = name.length;
    while (end > 0 && name.charCodeAt(end - 1) === 0x2e) end--;
    return end === name.length ? name : name.slice(0, end);
}

/**
 * A name in lower-case A-labels, or null when it cannot be one: empty, with white space or
 * control characters, or a U-label IDNA refuses. Printable ASCII names are only lower-cased
 * (node's IDNA does not check `xn--` labels either); label syntax is the caller's rule.
 */
export function toALabel(name: string): string | null {
    // eslint-disable-next-line no-control-regex
    if (name === '' || /[\x00-\x20\x7f]/.test(name)) return null;
    if (/^[\x21-\x7e]*$/.test(name)) return name.toLowerCase();
    return domainToASCII(name) || null;
}

/** The dots IDNA maps to "." (UTS #46): ideographic, fullwidth and halfwidth full stops. */
const IDNA_DOTS = /[\u3002\uff0e\uff61]/g;

/**
 * Where the longest suffix of `name` that a name of at most MAX_DOMAIN_NAME characters could be
 * starts: 0 for a name that short, else just after the first dot within its last
 * MAX_DOMAIN_NAME + 1 characters; -1 when there is no such dot. No list entry or rule value is
 * longer, so the rest of a longer name can never match one.
 */
export function reachableStart(name: string): number {
    if (name.length <= MAX_DOMAIN_NAME) return 0;
    const dot = name.indexOf('.', name.length - MAX_DOMAIN_NAME - 1);
    return dot < 0 ? -1 : dot + 1;
}

/**
 * Lower-cased, trailing dots removed (before and after the A-label conversion, which maps the
 * IDNA full stops to "."), A-label form when it can be computed. For fact values, never
 * rejected. When IDNA refuses the whole name (one label it cannot convert, such as `xn--zz` or
 * `a|b`), each label is converted on its own, as mailauth's DMARC reads a domain:
 * `xn--zz.évil.com` is `xn--zz.xn--vil-9la.com`, under `évil.com` for every list and rule. Only
 * the labels of the reachable suffix are converted then (an A-label is never shorter than its
 * U-label), and only labels of at most 63 characters: converting each label of a long name would
 * cost an IDNA call per label.
 */
export function foldDomain(text: string): string {
    const t = withoutTrailingDots(text.replace(IDNA_DOTS, '.'));
    const whole = toALabel(t);
    if (whole !== null) return withoutTrailingDots(whole);
    // eslint-disable-next-line no-control-regex
    if (/^[\x00-\x7f]*$/.test(t)) return t.toLowerCase();
    const start = reachableStart(t);
    if (start < 0) return t.toLowerCase();
    const labels = t
        .slice(start)
        .split('.')
        .map((label) => (label.length <= 63 ? toALabel(label) : null) ?? label.toLowerCase());
    return t.slice(0, start).toLowerCase() + labels.join('.');
}

/**
 * True when `test` holds for the folded `domain` or one of its parent domains, asked from the
 * longest down. Only names of at most MAX_DOMAIN_NAME characters are asked (reachableStart):
 * asking each parent of a 16,000-character name would hash thousands of long strings (a cost
 * that grows with the square of the name's length).
 */
export function someDomainOrParent(domain: string, test: (name: string) => boolean): boolean {
    const start = reachableStart(domain);
    if (start < 0) return false;
    let d = domain.slice(start);
    for (;;) {
        if (d !== '' && test(d)) return true;
        const dot = d.indexOf('.');
        if (dot < 0) return false;
        d = d.slice(dot + 1);
    }
}

/** Letters, digits, hyphens and underscores (`_dmarc`), not starting or ending with a hyphen. */
const LABEL = /^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$/;

/**
 * A domain name as written by an operator (RFC 1035 section 2.3.1 labels, underscores
 * allowed, up to 253 characters). Returns the folded form, or null when it is not a name.
 */
export function parseDomain(text: string): string | null {
    if (text === '' || /\s/.test(text)) return null;
    const folded = foldDomain(text);
    if (folded === '' || folded.length > 253) return null;
    if (!folded.split('.').every((label) => LABEL.test(label))) return null;
    return folded;
}
