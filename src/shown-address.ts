/**
 * The address a From field shows a reader besides its own (RFC 5322 section 3.4): one written in
 * the display name or in a comment, `"ceo@bank.example" <a@evil.example>` or
 * `a@evil.example (ceo@bank.example)`. Mail programs show the name and hide the address, so the
 * reader sees bank.example while SPF, DKIM and DMARC judge evil.example, which passes them all.
 * Encoded-words (RFC 2047) in the name are decoded first, as a mail program would show them.
 * Reports a domain only when its organizational domain differs from the author's: the name
 * `"service@paypal.com" <service@mail.paypal.com>` is the same organization.
 * Hostile input: linear in the value's length (no pattern that backtracks), at most
 * MAX_CANDIDATES names looked up in the suffix list. Pure; it decides nothing.
 */
import { parseDomain } from './net/domain.ts';
import { organizationalDomain } from './sender-auth/psl.ts';

/** Address-like words of one field looked up at most (a display name is a few words). */
const MAX_CANDIDATES = 20;

/** `=?charset?B|Q?text?=` (RFC 2047 section 2); the classes exclude `?`, so matching is linear. */
const ENCODED_WORD = /=\?([^?\s]{1,75})\?([bBqQ])\?([^?\s]*)\?=/g;

/** Decodes the encoded-words of a text; one that cannot be decoded stays as it is written. */
export function decodeEncodedWords(text: string): string {
    if (!text.includes('=?')) return text;
    // white space between two adjacent encoded-words is not shown (RFC 2047 section 6.2)
    return text
        .replace(/(\?=)[ \t\r\n]+(?==\?)/g, '$1')
        .replace(ENCODED_WORD, (word, charset: string, enc: string, data: string) => {
            try {
                const bytes =
                    enc === 'b' || enc === 'B'
                        ? Buffer.from(data, 'base64')
                        : Buffer.from(
                              data
                                  .replace(/_/g, ' ')
                                  .replace(/=([0-9a-fA-F]{2})/g, (_m, hex: string) =>
                                      String.fromCharCode(parseInt(hex, 16)),
                                  ),
                              'latin1',
                          );
                // RFC 2231 section 5: a language after `*`
                return new TextDecoder(charset.split('*')[0]).decode(bytes);
            } catch {
                return word; // an unknown charset
            }
        });
}

/** Domain-like start of the text after an `@`: labels of letters, digits, hyphens, at least one dot. */
const DOMAIN_START = /^[\p{L}\p{N}_-]+(?:\.[\p{L}\p{N}_-]+)+/u;

/**
 * The domain of the first address the From field value shows besides the author's address
 * whose organizational domain is not the author's; null when it shows none. `author` is the
 * folded domain of the From address (null when it has none: then any shown domain counts).
 */
export function shownDomain(value: string, author: string | null): string | null {
    if (!value.includes('@') && !value.includes('=?')) return null;
    // what the reader is shown, names decoded; the author's own address is of the author's
    // organization and passes below (angle brackets are not removed first: a quoted name may hold
    // `<ceo@bank.example>` itself)
    const shown = decodeEncodedWords(value);
    const authorOrg = author === null ? null : organizationalDomain(author);
    let looked = 0;
    for (const word of shown.split(/[\s<>,;:"'()[\]]+/)) {
        const at = word.lastIndexOf('@');
        if (at <= 0 || at === word.length - 1) continue;
        const written = DOMAIN_START.exec(word.slice(at + 1))?.[0];
        if (written === undefined) continue;
        const domain = parseDomain(written.replace(/[-_]+$/, ''));
        if (domain === null) continue;
        if (authorOrg === null || organizationalDomain(domain) !== authorOrg) return domain;
        if (++looked >= MAX_CANDIDATES) return null;
    }
    return null;
}
