/**
 * ARC trust: whether a validated ARC chain (RFC 8617, verified by mailauth) may override a
 * DMARC failure (RFC 8617 section 7.2, RFC 9989 section 5.4: a local policy decision). An
 * untrusted chain proves nothing, since anyone can seal; so the override needs all of:
 *   - the chain validates (`arc=pass`);
 *   - the hop whose results are used, and every newer hop, were sealed (ARC-Seal d=) by
 *     sealers the operator trusts (`authentication.arc.trustedSealers`), so that nobody
 *     untrusted handled the message after that hop authenticated it;
 *   - that hop's ARC-Authentication-Results show, for the author domain, `dmarc=pass`, or a
 *     `dkim=pass` aligned with it, or an `spf=pass` aligned with it. SPF's identity there is
 *     MAIL FROM (`smtp.mailfrom`); the HELO name (`smtp.helo`) only when the results show the
 *     null sender explicitly (`smtp.mailfrom=<>` or `postmaster@` the HELO name, RFC 7208
 *     section 2.4), since DMARC takes the HELO name only then (RFC 7489 section 4.1) and a
 *     verifier may record the HELO result alone for a non-null MAIL FROM (RFC 7208 section
 *     2.3): a `spf=pass` for a HELO name with MAIL FROM absent, empty or another address
 *     vouches for nothing.
 * The newest hop that qualifies is chosen.
 *
 * Pure apart from reading the chain mailauth parsed; it must not look anything up.
 */
import { withoutTrailingDots } from '../net/domain.ts';

/** One ARC set as read from the message, oldest first in a chain. */
export interface ArcHop {
    readonly instance: number;
    /** d= of the ARC-Seal, normalized. */
    readonly sealer: string | null;
    /** The ARC-Authentication-Results value (after `i=N;`), unfolded. */
    readonly results: string;
}

export interface ArcTrustInput {
    /** mailauth's chain validation result. */
    readonly result: 'pass' | 'fail' | 'none';
    /** The sets of the chain, oldest first. */
    readonly hops: readonly ArcHop[];
    readonly trustedSealers: ReadonlySet<string>;
    readonly authorDomain: string | null;
    /** Whether a DKIM signing domain or SPF domain aligns with the author domain (per adkim/aspf). */
    readonly aligned: (domain: string, kind: 'dkim' | 'spf') => boolean;
}

export interface ArcTrustOutput {
    /** The chain validates and the newest hop's sealer is trusted. */
    readonly trusted: boolean;
    /** The newest hop's sealer, or null. */
    readonly sealer: string | null;
    /** The hop whose results vouch for the author domain, or null when no override is possible. */
    readonly vouching: { readonly instance: number; readonly sealer: string; readonly method: string } | null;
}

/** One resinfo of an Authentication-Results payload (RFC 8601 section 2.2). */
export interface ResInfo {
    readonly method: string;
    readonly result: string;
    readonly props: ReadonlyMap<string, string>;
}

/** Removes RFC 5322 comments, nested ones included, outside quoted strings. */
function stripComments(text: string): string {
    let out = '';
    let depth = 0;
    let quoted = false;
    for (let i = 0; i < text.length; i++) {
        const c = text[i]!;
        if (c === '\\' && (quoted || depth > 0)) {
            if (depth === 0) out += c + (text[i + 1] ?? '');
            i++;
            continue;
        }
        if (depth === 0 && c === '"') quoted = !quoted;
        if (!quoted && c === '(') {
            depth++;
            continue;
        }
        if (!quoted && c === ')' && depth > 0) {
            depth--;
            if (depth === 0) out += ' ';
            continue;
        }
        if (depth === 0) out += c;
    }
    return out;
}

/** Splits on `;` outside quoted strings. */
function splitSemicolons(text: string): string[] {
    const parts: string[] = [];
    let current = '';
    let quoted = false;
    for (let i = 0; i < text.length; i++) {
        const c = text[i]!;
        if (c === '\\' && quoted) {
            current += c + (text[i + 1] ?? '');
            i++;
            continue;
        }
        if (c === '"') quoted = !quoted;
        if (c === ';' && !quoted) {
            parts.push(current);
            current = '';
        } else current += c;
    }
    parts.push(current);
    return parts;
}

function unquote(v: string): string {
    return v.startsWith('"') && v.endsWith('"') && v.length >= 2 ? v.slice(1, -1).replace(/\\(.)/g, '$1') : v;
}

/**
 * Parses an Authentication-Results payload: `authserv-id; method=result ptype.prop=value …; …`
 * (the leading `i=N;` of an ARC-Authentication-Results may be present). Lenient: what it cannot
 * read is skipped.
 */
export function parseAuthResults(value: string): ResInfo[] {
    const parts = splitSemicolons(stripComments(value.replace(/\r?\n/g, ' ')));
    const out: ResInfo[] = [];
    for (const part of parts) {
        const words = part.trim().match(/(?:[^\s"]+|"(?:[^"\\]|\\.)*")+/g) ?? [];
        const head = words[0];
        const m = head ? /^([a-z0-9_-]+)(?:\/[0-9]+)?=([a-z0-9_-]+)$/i.exec(head) : null;
        if (!m) continue;
        const props = new Map<string, string>();
        for (const w of words.slice(1)) {
            const p = /^([a-z0-9_-]+\.[a-z0-9_.-]+)=(.*)$/i.exec(w);
            if (p) props.set(p[1]!.toLowerCase(), unquote(p[2]!));
        }
        out.push({ method: m[1]!.toLowerCase(), result: m[2]!.toLowerCase(), props });
    }
    return out;
}

function domainOfIdentity(v: string | undefined): string | null {
    if (!v) return null;
    const at = v.lastIndexOf('@');
    const d = withoutTrailingDots((at >= 0 ? v.slice(at + 1) : v).trim().toLowerCase());
    return d === '' ? null : d;
}

/** An smtp.mailfrom that names a sender (not `<>`, the null sender, nor empty). */
function mailFromShown(r: ResInfo): boolean {
    const v = r.props.get('smtp.mailfrom');
    return v !== undefined && v !== '<>' && domainOfIdentity(v) !== null;
}

/**
 * Whether the SPF results show the null sender explicitly for this HELO domain: at least one
 * smtp.mailfrom, each `<>` or `postmaster@` the HELO domain (RFC 7208 section 2.4). An absent or
 * empty smtp.mailfrom says nothing: the verifier may have recorded only the HELO check.
 */
function nullSenderShown(results: readonly ResInfo[], helo: string): boolean {
    let shown = false;
    for (const r of results) {
        if (r.method !== 'spf') continue;
        const v = r.props.get('smtp.mailfrom');
        if (v === undefined) continue;
        const t = v.trim();
        const at = t.lastIndexOf('@');
        const isNull =
            t === '<>' || (at > 0 && t.slice(0, at).toLowerCase() === 'postmaster' && domainOfIdentity(t) === helo);
        if (!isNull) return false;
        shown = true;
    }
    return shown;
}

/** Which method of a hop's results vouches for the author domain, or null. */
export function vouchingMethod(
    results: readonly ResInfo[],
    authorDomain: string,
    aligned: ArcTrustInput['aligned'],
): string | null {
    for (const r of results) {
        if (r.result !== 'pass') continue;
        if (r.method === 'dmarc' && domainOfIdentity(r.props.get('header.from')) === authorDomain) return 'dmarc';
    }
    for (const r of results) {
        if (r.result !== 'pass') continue;
        if (r.method === 'dkim') {
            const d = domainOfIdentity(r.props.get('header.d')) ?? domainOfIdentity(r.props.get('header.i'));
            if (d !== null && aligned(d, 'dkim')) return 'dkim';
        }
        if (r.method === 'spf') {
            // the HELO name is SPF's identity for DMARC only with the null sender (RFC 7489 section 4.1)
            let d = mailFromShown(r) ? domainOfIdentity(r.props.get('smtp.mailfrom')) : null;
            if (d === null) {
                const helo = domainOfIdentity(r.props.get('smtp.helo'));
                if (helo !== null && nullSenderShown(results, helo)) d = helo;
            }
            if (d !== null && aligned(d, 'spf')) return 'spf';
        }
    }
    return null;
}

export function evaluateArcTrust(input: ArcTrustInput): ArcTrustOutput {
    const newest = input.hops.length > 0 ? input.hops[input.hops.length - 1]! : null;
    const sealer = newest?.sealer ?? null;
    const isTrusted = (s: string | null): s is string => s !== null && input.trustedSealers.has(s);
    const trusted = input.result === 'pass' && isTrusted(sealer);
    if (!trusted || input.authorDomain === null) return { trusted, sealer, vouching: null };
    for (let k = input.hops.length - 1; k >= 0; k--) {
        const hop = input.hops[k]!;
        if (!isTrusted(hop.sealer)) break;
        const method = vouchingMethod(parseAuthResults(hop.results), input.authorDomain, input.aligned);
        if (method !== null)
            return { trusted, sealer, vouching: { instance: hop.instance, sealer: hop.sealer, method } };
    }
    return { trusted, sealer, vouching: null };
}
