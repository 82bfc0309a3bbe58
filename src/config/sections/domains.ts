/**
 * The recipient domains mx listeners accept: `domains` (ours, matched exactly) and `relayDomains`
 * (those we pass on for others; `.example.net` for every name below it, as Postfix's
 * relay_domains reads a leading dot). Validation only: it must not query DNS; that an SMTP
 * upstream needs one of them is checked in config/load.ts.
 */
import { normalizeHostname } from '../net.ts';
import type { Field, SourceReader } from '../reader.ts';

/** Reads `domains:`: distinct domain names, lower-case A-labels. Null when not a list (reported). */
export function domainsSection(r: SourceReader, field: Field): string[] | null {
    const items = r.list(field, 'domain names');
    if (items === null) return null;
    const seen = new Set<string>();
    const out: string[] = [];
    for (const item of items) {
        const text = r.string(item, 'a domain name');
        if (text === null) continue;
        const name = normalizeHostname(text);
        if (name === null) {
            r.fail(item, `"${text}" is not a valid domain name`);
        } else if (seen.has(name)) {
            r.fail(item, `"${text}" is listed twice`);
        } else {
            seen.add(name);
            out.push(name);
        }
    }
    return out;
}

/**
 * Reads `relayDomains:`: `example.net` (that domain) or `.example.net` (every name below it).
 * Stored lower-case, A-labels, dot kept; an exact entry already in `domains` is refused.
 */
export function relayDomainsSection(r: SourceReader, field: Field, domains: readonly string[]): string[] | null {
    const items = r.list(field, 'domain names (.example.net for every subdomain)');
    if (items === null) return null;
    const seen = new Set<string>();
    const out: string[] = [];
    for (const item of items) {
        const text = r.string(item, 'a domain name');
        if (text === null) continue;
        const dot = text.startsWith('.');
        const name = normalizeHostname(dot ? text.slice(1) : text);
        const entry = name === null ? null : `${dot ? '.' : ''}${name}`;
        if (entry === null) {
            r.fail(item, `"${text}" is not a domain name (write example.net, or .example.net for its subdomains)`);
        } else if (seen.has(entry)) {
            r.fail(item, `"${text}" is listed twice`);
        } else if (!dot && domains.includes(entry)) {
            r.fail(item, `"${text}" is already one of domains`);
        } else {
            seen.add(entry);
            out.push(entry);
        }
    }
    return out;
}
