/**
 * The address a From field shows a reader besides its own (RFC 5322 section 3.4): one written in
 * the display name or in a comment, `"ceo@bank.example" <a@evil.example>` or
 * `a@evil.example (ceo@bank.example)`. Mail programs show the name and hide the address, so the
 * reader sees bank.example while SPF, DKIM and DMARC judge evil.example, which passes them all.
 * Encoded-words (RFC 2047) in the name are decoded first and the text is read as it is shown
 * (lookalike `@` and dots folded, invisible characters dropped, the run after a right-to-left
 * override reversed), as a mail program would show it.
 * Reports a domain only when its organizational domain differs from the author's: the name
 * `"service@paypal.com" <service@mail.paypal.com>` is the same organization.
 * The reversal is no bidirectional algorithm (UAX #9): isolates, embeddings and marks reorder an
 * address in ways it does not follow (`"\u2067example\u200f.\u200fbank\u200f@\u200fceo\u2069"` is
 * shown as ceo@bank.example), so a value with a bidirectional control or mark and a second `@` is
 * reported on its own (bidiAddressShown), whatever order it shows.
 * Hostile input: linear in the value's length (no pattern that backtracks, each candidate cut to
 * the longest domain), at most MAX_DOMAINS names looked up in the suffix list. Pure; it decides
 * nothing.
 */
import { decodeEncodedWords } from './encoded-words.ts';
import { parseDomain } from './net/domain.ts';
import { organizationalDomain } from './sender-auth/psl.ts';

/** Longest domain name written without its root dot (RFC 1035 section 2.3.4). */
const MAX_DOMAIN = 253;
/**
 * Distinct domains of one field looked up in the suffix list at most (a display name shows one or
 * two); a field that shows more is reported with the first domain past the bound, never passed,
 * so decoys of the author's own organization cannot hide the one that is not.
 */
const MAX_DOMAINS = 50;

/** Domain-like start of the text after an `@`: labels of letters, digits, hyphens, at least one dot. */
const DOMAIN_START = /^[\p{L}\p{N}_-]+(?:\.[\p{L}\p{N}_-]+)+/u;

/**
 * Characters a reader takes for the dot of a domain that NFKC leaves as they are: the ideographic
 * full stops (IDNA reads them as dots, RFC 3490 section 3.1), and letters and punctuation drawn as
 * a dot on the line (Unicode's confusables of U+002E: the Lisu tone letter MYA TI, the
 * hyphenation point, the Arabic full stop, the Syriac full stops). Not the middle dots (U+00B7,
 * U+30FB): IDNA allows them inside Catalan and Japanese labels (RFC 5892 appendix A.3, A.7), so a
 * real domain's would be cut in two.
 */
const DOT_LOOKALIKES = /[\u3002\uff61\ua4f8\u2027\u06d4\u0701\u0702\u0660\u06f0\ua60e\u{10a50}]/gu;

/**
 * A right-to-left override (U+202E) and the text it reverses on the screen: up to its pop
 * (U+202C), the end of an isolate (U+2069) or the line (Unicode's bidirectional algorithm, UAX #9
 * section 2.2: strong left-to-right letters are shown right to left too). Nested overrides and
 * embeddings are not followed: one reversal is what a spoof needs.
 */
const RIGHT_TO_LEFT_OVERRIDE = /\u202e([^\u202c\u2069\r\n]*)/gu;

/** The text as it is shown where a right-to-left override reverses its rest; the text itself without one. */
function withOverridesApplied(text: string): string {
    return text.replace(RIGHT_TO_LEFT_OVERRIDE, (_, run: string) => [...run].reverse().join(''));
}

/**
 * The text as a reader sees it: compatibility forms folded (NFKC: a fullwidth or small `@` is an
 * `@`, a fullwidth dot a dot), characters that are not displayed (zero-width spaces and joiners,
 * the soft hyphen, the byte order mark) removed, lookalike dots taken as dots.
 */
function asShown(text: string): string {
    return text
        .normalize('NFKC')
        .replace(/\p{Default_Ignorable_Code_Point}/gu, '')
        .replace(DOT_LOOKALIKES, '.');
}

/**
 * The characters that change the order in which the text around them is shown (UAX #9 section
 * 2): the marks LRM, RLM and ALM, the embeddings and overrides with their pop (U+202A to U+202E)
 * and the isolates with theirs (U+2066 to U+2069).
 */
const BIDI_CONTROL = /[\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]/u;

/** The text without the hyphens and underscores it ends with (a loop: `[-_]+$` is quadratic on a long run). */
function withoutTrailingHyphens(text: string): string {
    let end = text.length;
    while (end > 0 && (text[end - 1] === '-' || text[end - 1] === '_')) end--;
    return text.slice(0, end);
}

/**
 * The domain of the first address the From field value shows besides the author's address
 * whose organizational domain is not the author's; null when it shows none. `author` is the
 * folded domain of the From address (null when it has none: then any shown domain counts).
 */
export function shownDomain(value: string, author: string | null): string | null {
    const decoded = decodeEncodedWords(value);
    return shownDomainOf(decoded, asShown(decoded), author);
}

/**
 * header.from.name_domain and header.from.name_bidi of a From field value: the value decoded and
 * read as shown once for both (a 100,000-byte value of encoded-words costs milliseconds each).
 */
export function fromNameFacts(value: string, author: string | null): { nameDomain: string | null; nameBidi: boolean } {
    const decoded = decodeEncodedWords(value);
    const shown = asShown(decoded);
    return { nameDomain: shownDomainOf(decoded, shown, author), nameBidi: bidiIn(decoded, shown, author) };
}

/** shownDomain of the decoded value, `shown` being asShown of it. */
function shownDomainOf(decoded: string, shown: string, author: string | null): string | null {
    // the author's own address is of the author's organization and passes below (angle brackets
    // are not removed first: a quoted name may hold `<ceo@bank.example>` itself); a reader that
    // applies a right-to-left override shows its run reversed, one that does not shows it as
    // written: both are read
    if (decoded.includes('\u202e')) {
        return domainShownIn(asShown(withOverridesApplied(decoded)), author) ?? domainShownIn(shown, author);
    }
    return domainShownIn(shown, author);
}

/** shownDomain of text already as it is shown. */
function domainShownIn(shown: string, author: string | null): string | null {
    if (!shown.includes('@')) return null;
    const authorOrg = author === null ? null : organizationalDomain(author);
    const orgs = new Map<string, string>();
    for (const word of shown.split(/[\s<>,;:"'()[\]]+/)) {
        const at = word.lastIndexOf('@');
        if (at <= 0 || at === word.length - 1) continue;
        const written = DOMAIN_START.exec(word.slice(at + 1, at + 2 + MAX_DOMAIN))?.[0];
        if (written === undefined) continue;
        const domain = parseDomain(withoutTrailingHyphens(written));
        if (domain === null) continue;
        if (authorOrg === null) return domain;
        let org = orgs.get(domain);
        if (org === undefined) {
            if (orgs.size >= MAX_DOMAINS) return domain;
            org = organizationalDomain(domain);
            orgs.set(domain, org);
        }
        if (org !== authorOrg) return domain;
    }
    return null;
}

/**
 * The From field value (encoded-words decoded) holds a bidirectional control or mark and shows at
 * least two `@` signs, lookalikes folded (NFKC: the fullwidth and small `@`, U+FF20 and U+FE6B):
 * the author's address and one written in the name or a comment in an order the controls
 * rearrange on the screen. Not when every address it holds, read as written, is of the author's
 * organization (a right-to-left name that repeats its own address), nor for a right-to-left name
 * with marks and no second address. `author` is the folded domain of the From address.
 */
export function bidiAddressShown(value: string, author: string | null): boolean {
    const decoded = decodeEncodedWords(value);
    return bidiIn(decoded, asShown(decoded), author);
}

/** bidiAddressShown of the decoded value, `shown` being asShown of it (NFKC folded: `@` counted there). */
function bidiIn(decoded: string, shown: string, author: string | null): boolean {
    if (!BIDI_CONTROL.test(decoded)) return false;
    const first = shown.indexOf('@');
    if (first === -1 || shown.indexOf('@', first + 1) === -1) return false;
    return !onlyAuthorAddresses(shown, author);
}

/** True when every word with an `@` in the text is an address of the author's organization. */
function onlyAuthorAddresses(shown: string, author: string | null): boolean {
    if (author === null) return false;
    const authorOrg = organizationalDomain(author);
    let looked = 0;
    for (const word of shown.split(/[\s<>,;:"'()[\]]+/)) {
        const at = word.lastIndexOf('@');
        if (at === -1) continue;
        if (at === 0 || at === word.length - 1) return false;
        const written = DOMAIN_START.exec(word.slice(at + 1, at + 2 + MAX_DOMAIN))?.[0];
        const domain = written === undefined ? null : parseDomain(withoutTrailingHyphens(written));
        if (domain === null || ++looked > MAX_DOMAINS) return false;
        if (organizationalDomain(domain) !== authorOrg) return false;
    }
    return true;
}
