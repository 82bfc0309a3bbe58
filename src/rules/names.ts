/**
 * Mail addresses as rules compare them: the local part lower-cased, the domain folded by
 * src/net/domain.ts (which owns domain normalisation; this file must NOT fold names itself).
 * Strict checks are for what operators write (lists, rule values); the lenient forms are for
 * fact values, which are compared as given and never rejected. Pure.
 */
import { foldDomain, parseDomain } from '../net/domain.ts';

/** The domain part of an address (after the last @), folded; null when there is none. */
export function domainOfAddress(address: string): string | null {
    const at = address.lastIndexOf('@');
    if (at < 0 || at === address.length - 1) return null;
    return foldDomain(address.slice(at + 1));
}

/** An address folded for comparison: lower-cased, domain in A-label form. */
export function foldAddress(address: string): string {
    const at = address.lastIndexOf('@');
    if (at < 0) return address.toLowerCase();
    return `${address.slice(0, at).toLowerCase()}@${foldDomain(address.slice(at + 1))}`;
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
