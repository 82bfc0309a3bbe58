/**
 * Mail addresses as rules compare them: the local part lower-cased, the domain folded by
 * src/net/domain.ts (which owns domain normalisation; this file must NOT fold names itself), an
 * address literal put in one form by src/net/ip.ts (`[IPv6:2001:DB8:0::1]` is
 * `[ipv6:2001:db8::1]`, `[IPv6:::ffff:192.0.2.1]` is `[192.0.2.1]`).
 * Strict checks are for what operators write (lists, rule values); the lenient forms are for
 * fact values, which are compared as given and never rejected. With a recipient delimiter
 * (Postfix's recipient_delimiter, `+` by default) `alice+tag@d` also has the base address
 * `alice@d` (RFC 5233 subaddressing), as Postfix's lookups try `user+ext@domain`, then
 * `user@domain`. Pure.
 */
import { foldDomain, parseDomain } from '../net/domain.ts';
import { quoteLocalPart } from '../envelope/command.ts';
import { canonicalAddressLiteral } from '../net/ip.ts';

/** The domain of an address folded: a name in A-label form, an address literal in its one form. */
export function foldMailDomain(domain: string): string {
    return canonicalAddressLiteral(domain) ?? foldDomain(domain);
}

/** The domain part of an address (after the last @), folded; null when there is none. */
export function domainOfAddress(address: string): string | null {
    const at = address.lastIndexOf('@');
    if (at < 0 || at === address.length - 1) return null;
    return foldMailDomain(address.slice(at + 1));
}

/** An address folded for comparison: lower-cased, domain in A-label form (or a literal's one form). */
export function foldAddress(address: string): string {
    const at = address.lastIndexOf('@');
    if (at < 0) return address.toLowerCase();
    return `${address.slice(0, at).toLowerCase()}@${foldMailDomain(address.slice(at + 1))}`;
}

/**
 * The local part without its subaddress (`alice+tag` → `alice`), or null when it has none: the
 * part before the first of the `delimiters` characters; a local part starting with one
 * (`+news`) has no subaddress. '' turns subaddressing off.
 */
export function baseLocalPart(local: string, delimiters: string): string | null {
    if (delimiters === '') return null;
    for (let i = 1; i < local.length; i++) {
        if (delimiters.includes(local[i] ?? '')) return local.slice(0, i);
    }
    return null;
}

/** A local part without its quotes and quoted-pair backslashes (RFC 5321 section 4.1.2); others as they are. */
function dequote(local: string): string {
    if (local.length < 2 || !local.startsWith('"') || !local.endsWith('"')) return local;
    return local.slice(1, -1).replace(/\\(.)/g, '$1');
}

/**
 * An address folded (foldAddress) without its subaddress; the folded address when it has none.
 * A quoted local part is read without its quotes (`"ceo+ x"@d` is a subaddress of `ceo@d`, as
 * Postfix reads it), and the base written in canonical form again.
 */
export function baseAddress(address: string, delimiters: string): string {
    return baseOfFolded(foldAddress(address), delimiters);
}

/** baseAddress of an address foldAddress already folded. */
export function baseOfFolded(folded: string, delimiters: string): string {
    const at = folded.lastIndexOf('@');
    if (at < 0) return folded;
    const base = baseLocalPart(dequote(folded.slice(0, at)), delimiters);
    return base === null ? folded : `${quoteLocalPart(base)}${folded.slice(at)}`;
}

/**
 * An address as written by an operator: `local@domain` (no spaces or control characters;
 * the local part as the envelope carries it, RFC 5321 section 4.1.2). Returns the folded form.
 */
export function parseAddress(text: string): string | null {
    const at = text.lastIndexOf('@');
    if (at <= 0) return null;
    const local = text.slice(0, at);
    // eslint-disable-next-line no-control-regex
    if (/[\s\x00-\x1f\x7f<>]/.test(local) || local.length > 64) return null;
    const domain = parseDomain(text.slice(at + 1));
    return domain === null ? null : `${local.toLowerCase()}@${domain}`;
}
