/**
 * Domain names and mail addresses as rules compare them: lower-cased, without the trailing
 * dot of a fully qualified name, internationalised names in their ASCII (A-label, RFC 5890)
 * form. Strict checks are for what operators write (lists, rule values); the lenient
 * forms are for fact values, which are compared as given and never rejected. Pure.
 */
import { domainToASCII } from 'node:url';

/** Letters, digits, hyphens and underscores (`_dmarc`), not starting or ending with a hyphen. */
const LABEL = /^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$/;

/** Lower-cased, trailing dot removed, A-label form when it can be computed. For fact values. */
export function foldDomain(text: string): string {
    const t = (text.endsWith('.') ? text.slice(0, -1) : text).toLowerCase();
    // eslint-disable-next-line no-control-regex
    if (/^[\x00-\x7f]*$/.test(t)) return t;
    return domainToASCII(t) || t;
}

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
