/**
 * Public Suffix List lookups for DMARC in `rfc7489` mode, where the organizational domain is
 * the registrable domain: the public suffix plus one label (RFC 7489 section 3.2). Implements
 * the publicsuffix.org algorithm (longest matching rule, wildcard rules, exception rules
 * winning, "*" as the implicit default rule) over the list shipped next to this file
 * (`public_suffix_list.dat`, MPL-2.0, see `public_suffix_list.LICENSE.txt`), ICANN and
 * private sections both, as OpenDMARC and mailauth use them.
 *
 * It must not fetch the list from the network or read it more than once; it never throws for
 * a bad name (it answers null).
 */
import fs from 'node:fs';
import { domainToUnicode } from 'node:url';
import { MAX_DOMAIN_NAME, toALabel, withoutTrailingDot } from '../net/domain.ts';

export interface SuffixList {
    /** The public suffix of `domain` (A-labels), or null for a name that is not a domain. */
    publicSuffix(domain: string): string | null;
    /** The registrable domain (public suffix plus one label), or null when there is none. */
    registrableDomain(domain: string): string | null;
}

interface Rules {
    readonly exact: Set<string>;
    /** Parents of wildcard rules: `ck` for `*.ck`. */
    readonly wildcard: Set<string>;
    /** Exception rules without the `!`: `www.ck`. */
    readonly exception: Set<string>;
}

function toAscii(name: string): string {
    return toALabel(name) ?? '';
}

/** Parses the list text (one rule per line; `//` comments; the first word of a line counts). */
export function parseSuffixList(text: string): SuffixList {
    const rules: Rules = { exact: new Set(), wildcard: new Set(), exception: new Set() };
    for (const raw of text.split('\n')) {
        const line = raw.trim().split(/\s/)[0] ?? '';
        if (line === '' || line.startsWith('//')) continue;
        if (line.startsWith('!')) rules.exception.add(toAscii(line.slice(1)));
        else if (line.startsWith('*.')) rules.wildcard.add(toAscii(line.slice(2)));
        else rules.exact.add(toAscii(line));
    }
    return createSuffixList(rules);
}

/**
 * A domain as lower-case A-labels, or null when it has an empty label (a leading dot, `a..b`)
 * or is longer than a domain name can be: the suffix walk below joins the labels once per label,
 * quadratic in an attacker's From of 30,000 labels.
 */
function normalize(domain: string): { ascii: string; unicode: boolean } | null {
    if (typeof domain !== 'string') return null;
    const name = withoutTrailingDot(domain.trim());
    if (name === '' || name.length > MAX_DOMAIN_NAME || name.split('.').some((l) => l === '')) return null;
    const ascii = toAscii(name);
    if (ascii === '' || ascii.length > MAX_DOMAIN_NAME) return null;
    return { ascii, unicode: !/^[\x21-\x7e]*$/.test(name) };
}

function createSuffixList(rules: Rules): SuffixList {
    /** Number of trailing labels that form the public suffix. */
    function suffixLength(labels: readonly string[]): number {
        for (let i = 0; i < labels.length; i++) {
            const candidate = labels.slice(i).join('.');
            if (rules.exception.has(candidate)) return labels.length - i - 1;
            if (rules.exact.has(candidate)) return labels.length - i;
            if (i + 1 < labels.length && rules.wildcard.has(labels.slice(i + 1).join('.'))) {
                return labels.length - i;
            }
        }
        // the implicit rule "*": the last label is a public suffix
        return 1;
    }

    function publicSuffix(domain: string): string | null {
        const n = normalize(domain);
        if (!n) return null;
        const labels = n.ascii.split('.');
        return labels.slice(labels.length - suffixLength(labels)).join('.');
    }

    function registrableDomain(domain: string): string | null {
        const n = normalize(domain);
        if (!n) return null;
        const labels = n.ascii.split('.');
        const length = suffixLength(labels);
        if (labels.length <= length) return null;
        const result = labels.slice(labels.length - length - 1).join('.');
        return n.unicode ? domainToUnicode(result) : result;
    }

    return { publicSuffix, registrableDomain };
}

let shipped: SuffixList | null = null;

/** The list shipped with mailwarden, read on first use. */
export function publicSuffixList(): SuffixList {
    shipped ??= parseSuffixList(fs.readFileSync(new URL('./public_suffix_list.dat', import.meta.url), 'utf8'));
    return shipped;
}

/** The RFC 7489 organizational domain: the registrable domain, or the name itself when it has none. */
export function organizationalDomain(domain: string, list: SuffixList = publicSuffixList()): string {
    return list.registrableDomain(domain) ?? domain;
}
