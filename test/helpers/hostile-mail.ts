/**
 * Hostile messages for the per-message cost tests and the cost measurement
 * (scripts/message-cost.ts): DKIM-Signature floods whose body hashes are right (so a verifier
 * that evaluates them all must also look their keys up), ARC fields by the thousand, header
 * sections full of From fields or folded lines, bodies with one enormous line.
 *
 * Bodies are built already in relaxed canonical form (RFC 6376 section 3.4.4: no trailing
 * whitespace, single spaces, one CRLF at the end), so the relaxed body hash of the first `l`
 * bytes is simply the SHA-256 of those bytes. Nothing here talks to the network.
 */
import crypto from 'node:crypto';

/** A body of `bytes` bytes (about) in relaxed canonical form: short text lines ending in CRLF. */
export function canonicalBody(bytes: number): Buffer {
    const line = 'Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n';
    const n = Math.max(1, Math.ceil(bytes / line.length));
    return Buffer.from(line.repeat(n));
}

/** The relaxed/sha256 body hash (bh=) of a canonical body, over its first `l` bytes when given. */
export function bodyHash(body: Buffer, l?: number): string {
    return crypto
        .createHash('sha256')
        .update(l === undefined ? body : body.subarray(0, l))
        .digest('base64');
}

export interface FloodOptions {
    readonly count: number;
    readonly body: Buffer;
    /** d= of signature i (0-based); default `d<i>.flood.example`, all different. */
    readonly domain?: (i: number) => string;
    /** s= of signature i; default `s<i>`. */
    readonly selector?: (i: number) => string;
    /** Give each signature its own l= (so each needs its own body hash); default true. */
    readonly distinctLengths?: boolean;
    /** h= of every signature; default `from:to:subject`. */
    readonly signed?: string;
    /** c= of every signature; default `relaxed/relaxed` (the body hashes are relaxed ones either way). */
    readonly canonicalization?: string;
}

/** `count` DKIM-Signature fields, each with a correct bh= for its l=, and a b= no key verifies. */
export function signatureFlood(o: FloodOptions): string {
    const fields: string[] = [];
    const full = bodyHash(o.body);
    const b = crypto.randomBytes(32).toString('base64');
    for (let i = 0; i < o.count; i++) {
        const d = o.domain ? o.domain(i) : `d${i}.flood.example`;
        const s = o.selector ? o.selector(i) : `s${i}`;
        const distinct = o.distinctLengths ?? true;
        const l = distinct ? Math.min(i + 1, o.body.length) : undefined;
        const bh = l === undefined ? full : bodyHash(o.body, l);
        const length = l === undefined ? '' : ` l=${l};`;
        fields.push(
            `DKIM-Signature: v=1; a=rsa-sha256; c=${o.canonicalization ?? 'relaxed/relaxed'}; d=${d}; s=${s};${length} h=${o.signed ?? 'from:to:subject'}; bh=${bh}; b=${b}\r\n`,
        );
    }
    return fields.join('');
}

/** The header fields most tests put under a flood. */
export function plainFields(from: string, subject = 'Per-message cost'): string {
    return [
        `From: ${from}`,
        'To: user@mx.test',
        `Subject: ${subject}`,
        'Date: Mon, 1 Jan 2024 00:00:00 +0000',
        `Message-ID: <${crypto.randomUUID()}@flood.test>`,
    ]
        .map((f) => `${f}\r\n`)
        .join('');
}

export interface ArcFloodOptions {
    /** bh= of every ARC-Message-Signature (default: one that matches no body). */
    readonly bodyHash?: string;
    /** c= of every ARC-Message-Signature; null leaves the tag out (default relaxed/relaxed). */
    readonly canonicalization?: string | null;
}

/** `count` ARC sets' worth of ARC header fields with instances 1..count that no key verifies. */
export function arcFlood(count: number, o: ArcFloodOptions = {}): string {
    const b = crypto.randomBytes(64).toString('base64');
    const c =
        o.canonicalization === undefined
            ? ' c=relaxed/relaxed;'
            : o.canonicalization === null
              ? ''
              : ` c=${o.canonicalization};`;
    const fields: string[] = [];
    for (let i = count; i >= 1; i--) {
        fields.push(
            `ARC-Seal: i=${i}; a=rsa-sha256; cv=${i === 1 ? 'none' : 'pass'}; d=arc${i}.flood.example; s=s${i}; t=1700000000; b=${b}\r\n`,
            `ARC-Message-Signature: i=${i}; a=rsa-sha256;${c} d=arc${i}.flood.example; s=s${i}; h=from:to:subject; bh=${o.bodyHash ?? b}; b=${b}\r\n`,
            `ARC-Authentication-Results: i=${i}; arc${i}.flood.example; spf=pass smtp.mailfrom=a@flood.example\r\n`,
        );
    }
    return fields.join('');
}

/** A field folded into `lines` lines (a fold bomb for parsers that are quadratic in folds). */
export function foldedField(name: string, lines: number, value = 'x'): string {
    return `${name}: ${value}${'\r\n y'.repeat(lines - 1)}\r\n`;
}

/** `count` From fields, each naming a different domain. */
export function fromFlood(count: number): string {
    let out = '';
    for (let i = 0; i < count; i++) out += `From: u${i}@f${i}.flood.example\r\n`;
    return out;
}
