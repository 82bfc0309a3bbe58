/**
 * What a client's names say about it, as facts for rules: the HELO/EHLO argument (RFC 5321
 * section 4.1.1.1: a domain, or an address literal of section 4.1.3) — its syntax, an
 * address literal that is not the client's address, a name or address that is ours — and
 * whether a reverse DNS name looks generic (an access network's name built from the address,
 * `203-0-113-7.dyn.isp.example`), as Postfix's `reject_invalid_helo_hostname`, Haraka's
 * `helo.checks` and Rspamd's `hfilter` look at them.
 *
 * Pure: it must not resolve names (whether a HELO name resolves is asked by the check) and
 * decides nothing.
 */
import { isIP } from 'node:net';
import { foldDomain, toALabel, withoutTrailingDot } from '../net/domain.ts';
import ipaddr from 'ipaddr.js';

export type HeloSyntax = 'domain' | 'address-literal' | 'invalid';

/** An LDH label (RFC 1123 section 2.1; RFC 5321 `sub-domain`), or an A-label. */
const LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/** The address inside an address literal `[192.0.2.1]` / `[IPv6:2001:db8::1]`, or null. */
export function literalAddress(helo: string): string | null {
    const m = /^\[(?:IPv6:([0-9a-f:.]+)|(\d+\.\d+\.\d+\.\d+))\]$/i.exec(helo);
    const addr = m?.[1] ?? m?.[2];
    if (!addr) return null;
    return isIP(addr) === (m?.[1] ? 6 : 4) ? addr : null;
}

/** The HELO name as a lower-case A-label domain, or null when it is not one. */
export function heloDomain(helo: string): string | null {
    const h = withoutTrailingDot(helo.trim());
    if (h === '' || h.length > 253 || isIP(h) !== 0) return null;
    const ascii = toALabel(h);
    if (!ascii) return null;
    const labels = ascii.split('.');
    if (labels.length < 2 || !labels.every((l) => LABEL.test(l))) return null;
    // a top-level label of digits only is an address in disguise, not a domain (RFC 3696 section 2)
    if (/^\d+$/.test(labels.at(-1)!)) return null;
    return ascii;
}

export function heloSyntax(helo: string): HeloSyntax {
    if (literalAddress(helo) !== null) return 'address-literal';
    return heloDomain(helo) !== null ? 'domain' : 'invalid';
}

function sameAddress(a: string, b: string): boolean {
    if (!ipaddr.isValid(a) || !ipaddr.isValid(b)) return false;
    const x = ipaddr.process(a);
    const y = ipaddr.process(b);
    return x.kind() === y.kind() && x.toNormalizedString() === y.toNormalizedString();
}

export interface OwnIdentity {
    /** Our hostname (`hostname:`). */
    readonly hostname: string;
    /** Our domains (`domains:`). */
    readonly domains: readonly string[];
    /** Addresses clients reach us at (the listener's local address). */
    readonly addresses: readonly string[];
}

export interface HeloFacts {
    readonly syntax: HeloSyntax;
    /** An address literal that is not the client's own address. */
    readonly literalMismatch: boolean;
    /** A stranger names itself as us: our hostname, one of our domains, or one of our addresses. */
    readonly claimsUs: boolean;
    /** The domain to look up (null for literals and invalid names). */
    readonly domain: string | null;
}

export function heloFacts(helo: string, clientIp: string, own: OwnIdentity): HeloFacts {
    const literal = literalAddress(helo);
    const domain = literal === null ? heloDomain(helo) : null;
    const syntax: HeloSyntax = literal !== null ? 'address-literal' : domain !== null ? 'domain' : 'invalid';
    const ours = [own.hostname, ...own.domains].map(foldDomain);
    const bare = isIP(helo.trim()) !== 0 ? helo.trim() : null;
    const claimsUs =
        (domain !== null && ours.includes(domain)) ||
        [literal, bare].some((a) => a !== null && own.addresses.some((o) => sameAddress(a, o)));
    return {
        syntax,
        literalMismatch: literal !== null && !sameAddress(literal, clientIp),
        claimsUs,
        domain,
    };
}

/** Words access networks put in the names of their customers' addresses. */
const GENERIC_WORDS =
    /(^|[.\-_\d])(dyn|dynamic|dhcp|dial|dialup|dsl|adsl|vdsl|xdsl|cable|catv|ppp|pppoe|pool|client|customer|cust|broadband|bb|fttx|ftth|user|host|ip|static|res|residential|mobile|wireless|wifi|nat|cpe|modem)(\d|[.\-_]|$)/;

/**
 * True when a reverse name carries the client's address (its octets in either order, its
 * address as hexadecimal, or with a word of an access network beside a number), as generic
 * names of dynamically assigned addresses do. Only the labels left of the registered domain
 * are looked at, so `mail203.example.com` alone is not generic.
 */
export function genericPtr(ptr: string, ip: string): boolean {
    const name = ptr.toLowerCase().replace(/\.$/, '');
    if (!ipaddr.isValid(ip)) return false;
    const addr = ipaddr.process(ip);
    const labels = name.split('.');
    // look left of the last two labels (the registered domain, roughly)
    const host = labels.slice(0, Math.max(1, labels.length - 2)).join('.');
    if (addr.kind() === 'ipv4') {
        const o = addr.toByteArray();
        const dec = o.map(String);
        const sep = '[^0-9]{1,3}';
        const forward = new RegExp(`(^|[^0-9])0*${dec.join(`${sep}0*`)}([^0-9]|$)`);
        const backward = new RegExp(`(^|[^0-9])0*${[...dec].reverse().join(`${sep}0*`)}([^0-9]|$)`);
        const padded = o.map((b) => String(b).padStart(3, '0')).join('');
        const hex = o.map((b) => b.toString(16).padStart(2, '0')).join('');
        if (forward.test(host) || backward.test(host) || host.includes(padded) || host.includes(hex)) return true;
        // the last two octets and a generic word (`dsl-113-7.pool.isp.example`)
        const tail = new RegExp(`(^|[^0-9])0*${dec[2]}${sep}0*${dec[3]}([^0-9]|$)`);
        return tail.test(host) && GENERIC_WORDS.test(host);
    }
    const hexAll = addr
        .toNormalizedString()
        .split(':')
        .map((g) => g.padStart(4, '0'))
        .join('');
    // a label spelling (part of) the address: 2001-0db8-…-0007, or 20010db8…0007
    for (const label of host.split('.')) {
        const compact = label.replace(/[-_]/g, '');
        if (compact.length >= 12 && /^[0-9a-f]+$/.test(compact) && hexAll.includes(compact)) return true;
    }
    // the nibble form of ip6.arpa (7.0.0.0.….8.b.d.0.1.0.0.2)
    const nibbles = host.split('.').filter((l) => /^[0-9a-f]$/.test(l));
    return nibbles.length >= 16 && hexAll.includes([...nibbles].reverse().join(''));
}
