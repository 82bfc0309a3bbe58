/**
 * The header section mailauth verifies: a copy of the message's header section that carries
 * only what the bounded verification needs, so that one message costs a bounded amount of CPU
 * and DNS whatever an attacker writes into it.
 *
 * - DKIM (RFC 6376): at most `maxSignatures` DKIM-Signature fields are evaluated, with at most
 *   `maxBodyHashes` distinct body hashes (canonicalization, algorithm, l=) among them, each
 *   listing at most `maxSignedFields` names in h=. Signatures are chosen so that padding cannot
 *   cheaply push a legitimate one out: those whose d= is aligned with the author domain first,
 *   then the other usable ones, then unusable ones, each group top to bottom (newest first).
 * - A signature whose h= names DKIM-Signature covers the bottom-most DKIM-Signature fields
 *   (selection runs from the bottom, RFC 6376 section 5.4.2); those are kept too, and counted.
 * - ARC (RFC 8617): a chain of more than `maxArcSets` sets is not verified (RFC 8617 section
 *   5.1.1 makes more than 50 a fail; a lower local limit is treated the same way).
 * - Every other field is kept only where a kept signature can select it: for each field name,
 *   the bottom-most N fields, N being the most times any kept signature lists the name. The
 *   first From field is kept too (so several From fields stay several), and the last
 *   Content-Type (mailauth reads it). What a kept signature covers is therefore exactly what it
 *   covers in the message; verification results are unchanged, but for one case: of From
 *   fields, only the first and the bottom-most are kept (mailauth parses each as an address
 *   list; a signature listing `from` ten times made it parse ten 100 KB fields), so a signature
 *   over three or more From fields fails, in a message DMARC already refuses for several.
 * - A kept field of more than MAX_FIELD_LINES lines is unfolded (its line breaks removed) when
 *   every kept signature that hashes it uses relaxed header canonicalization (RFC 6376 section
 *   3.4.2; an ARC-Seal always does, RFC 8617 section 4.1.3), which reads it the same, as does
 *   address parsing: mailauth's header parser, quadratic in folded lines, stays linear. Simple
 *   canonicalization (RFC 6376 section 3.4.1) hashes the folds as they are, so a field a simple
 *   signature hashes is kept folded, up to MAX_FOLDED_LINES lines of such fields together; a
 *   signature that would need more is not verified (limit `header_folds`; for the newest
 *   ARC-Message-Signature, the chain is not).
 * - mailauth trims tag-specs and strips trailing dots from domains with regular expressions that
 *   are quadratic in a run of white space or dots inside the text (a DKIM-Signature with 100,000
 *   spaces in one tag blocked the process for 6 s, where no timeout can stop it). A DKIM-Signature
 *   or ARC field with a run of more than MAX_RUN white-space characters or dots is not verified
 *   (limit `header_runs`; for ARC, the chain is not); no signer writes one. In the From field such
 *   a run of dots is cut to MAX_RUN dots in the copy: a domain with an empty label stays one (the
 *   DMARC result is the same), and only a signature over a From no real sender writes can break.
 *
 * Fields are split exactly as mailauth splits them (a line that does not open a field belongs
 * to the one above), so each kept field reaches mailauth whole and unchanged. The message that
 * is forwarded is never changed: this is a copy for verification only. Pure functions.
 */
import { normalizeDomain } from './dmarc-policy.ts';
import { organizationalDomain } from './psl.ts';
import { MAX_DOMAIN_NAME } from '../net/domain.ts';
import { trimWsp } from '../trim.ts';

export interface VerificationLimits {
    /** DKIM-Signature fields evaluated per message. */
    readonly maxSignatures: number;
    /** Distinct DKIM body hashes computed per message. */
    readonly maxBodyHashes: number;
    /** Names in the h= tag of a signature that is evaluated (DKIM-Signature, ARC-Message-Signature). */
    readonly maxSignedFields: number;
    /** ARC sets verified; a longer chain fails. */
    readonly maxArcSets: number;
}

/** The per-message limits a message can run into, as reported in `auth.limits` and metrics. */
export const LIMIT_NAMES = [
    'dkim_signatures',
    'dkim_body_hashes',
    'dkim_signed_fields',
    'arc_sets',
    'header_runs',
    'header_folds',
    'body_line_length',
    'body_rewrites',
    'dns_queries',
    'dns_bytes',
] as const;
export type LimitName = (typeof LIMIT_NAMES)[number];

export interface VerificationPlan {
    /** The header section for mailauth: the kept fields in message order, each ending with CRLF. */
    readonly header: Buffer;
    /** DKIM-Signature fields in the message, and how many of them are in `header`. */
    readonly dkimFound: number;
    readonly dkimEvaluated: number;
    /** ARC header fields and sets (distinct instances) in the message, and whether the chain is verified. */
    readonly arcFields: number;
    readonly arcSets: number;
    readonly arcVerified: boolean;
    /** From fields in the message. */
    readonly fromFields: number;
    /** Distinct body hashes mailauth will compute for what is kept (DKIM and the newest AMS); 0: the body is not needed. */
    readonly bodyHashes: number;
    /** Of those, the relaxed ones (each rewrites every damaged body line). */
    readonly relaxedBodyHashes: number;
    /** The limits this header section ran into. */
    readonly limits: readonly LimitName[];
}

/** A kept field with more lines than this is unfolded in the copy (unless a simple signature hashes it). */
export const MAX_FIELD_LINES = 100;
/**
 * Lines of fields of more than MAX_FIELD_LINES lines kept folded for simple signatures, together.
 * mailauth's header parser costs about the square of a field's lines: 1,000 lines take it a few
 * milliseconds, 20,000 about 3 s, a 1 MiB field of one-character lines (260,000) far longer.
 */
export const MAX_FOLDED_LINES = 1000;

/** Longest run of white space (SP, HTAB, CR, LF) or of dots in a field mailauth parses. */
export const MAX_RUN = 64;

/** True when `text` has more than MAX_RUN white-space characters, or dots, in a row. */
export function hasLongRun(text: string): boolean {
    let spaces = 0;
    let dots = 0;
    for (let i = 0; i < text.length; i++) {
        const c = text.charCodeAt(i);
        if (c === 0x20 || c === 0x09 || c === 0x0d || c === 0x0a) {
            dots = 0;
            if (++spaces > MAX_RUN) return true;
        } else if (c === 0x2e) {
            spaces = 0;
            if (++dots > MAX_RUN) return true;
        } else {
            spaces = 0;
            dots = 0;
        }
    }
    return false;
}

const LONG_DOT_RUN = new RegExp(`\\.{${MAX_RUN + 1},}`, 'g');

/** `text` with every run of more than MAX_RUN dots cut to MAX_RUN dots. */
function cutDotRuns(text: string): string {
    return hasLongRun(text) ? text.replace(LONG_DOT_RUN, '.'.repeat(MAX_RUN)) : text;
}

/** A field as mailauth's header parser splits it: `key` lower-case, `text` in latin1 without its final CRLF. */
export interface SplitField {
    readonly key: string;
    readonly text: string;
    readonly lines: number;
}

// RFC 5322 section 3.6.8 field-name, then optional whitespace (a fold may sit before the colon)
const FIELD_START = /^[\x21-\x39\x3b-\x7e]+[ \t\r\n]*:/;

/** Lower-cases A-Z only (String.toLowerCase would also fold latin1 letters of a binary string). */
function lowerAscii(s: string): string {
    return /[\u0080-\uffff]/.test(s) ? s.replace(/[A-Z]+/g, (m) => m.toLowerCase()) : s.toLowerCase();
}

/** Whether a line (with the next one when it was merged into it) opens a field; quick for folded lines. */
function opensField(line: string, next: string | undefined): boolean {
    const c = line.charCodeAt(0);
    // a field name starts with a printable character other than the colon
    if (!(c >= 0x21 && c <= 0x7e) || c === 0x3a) return false;
    return FIELD_START.test(next === undefined ? line : `${line}\r\n${next}`);
}

/** mailauth's key of a field: the text before the first colon, line breaks removed, trimmed, lower-case ASCII. */
function keyOf(text: string): string {
    const colon = text.indexOf(':');
    if (colon === 0) return '';
    let name = colon < 0 ? text : text.slice(0, colon);
    if (/[\r\n]/.test(name)) name = name.replace(/\r?\n/g, '');
    const last = name.charCodeAt(name.length - 1);
    if (name.charCodeAt(0) <= 0x20 || last <= 0x20) name = trimWsp(name);
    return lowerAscii(name);
}

/**
 * Splits a header section (latin1 text, without the empty line that ends it) into fields the way
 * mailauth does: a line opens a field when it starts with a field name and a colon (the colon may
 * be on the next line of a fold); any other line belongs to the field above. Linear time, and
 * no string per line: a header section of 250,000 folded lines is a handful of slices.
 */
export function splitFields(section: string): SplitField[] {
    let end = section.length;
    while (end > 0 && (section.charCodeAt(end - 1) === 0x0a || section.charCodeAt(end - 1) === 0x0d)) end--;
    if (end === 0) return [];
    const text = section.slice(0, end);
    // a bare LF: mailauth rejoins the lines with CRLF, so each line is needed as a string
    if (/(?:^|[^\r])\n/.test(text)) return splitLines(text.split(/\r?\n/));
    // where each line starts and ends (before its CRLF)
    const from: number[] = [0];
    const to: number[] = [];
    for (let at = text.indexOf('\r\n'); at >= 0; at = text.indexOf('\r\n', at + 2)) {
        to.push(at);
        from.push(at + 2);
    }
    to.push(text.length);
    const n = from.length;
    const starts = new Uint8Array(n);
    starts[0] = 1;
    for (let i = n - 1; i > 0; i--) {
        const c = text.charCodeAt(from[i]!);
        // a field name starts with a printable character other than the colon; folds start with WSP
        if (!(c >= 0x21 && c <= 0x7e) || c === 0x3a) continue;
        const merged = i + 1 < n && starts[i + 1] === 0;
        starts[i] = FIELD_START.test(text.slice(from[i], merged ? to[i + 1] : to[i])) ? 1 : 0;
    }
    const fields: SplitField[] = [];
    for (let i = 0; i < n; ) {
        let j = i + 1;
        while (j < n && starts[j] === 0) j++;
        const body = text.slice(from[i], to[j - 1]);
        fields.push({ key: keyOf(body), text: body, lines: j - i });
        i = j;
    }
    return fields;
}

/** splitFields over lines already split (the input had bare LFs). */
function splitLines(lines: readonly string[]): SplitField[] {
    const n = lines.length;
    const starts = new Uint8Array(n);
    starts[0] = 1;
    for (let i = n - 1; i > 0; i--) {
        starts[i] = opensField(lines[i]!, i + 1 < n && starts[i + 1] === 0 ? lines[i + 1] : undefined) ? 1 : 0;
    }
    const fields: SplitField[] = [];
    for (let i = 0; i < n; ) {
        let j = i + 1;
        while (j < n && starts[j] === 0) j++;
        const text = lines.slice(i, j).join('\r\n');
        fields.push({ key: keyOf(text), text, lines: j - i });
        i = j;
    }
    return fields;
}

/** The tags of an RFC 6376 section 3.2 tag-list; names lower-cased unless `strict`; the last of a repeated tag wins. */
export function parseTags(value: string, strict: boolean): Map<string, string> {
    const tags = new Map<string, string>();
    for (const spec of value.split(';')) {
        const eq = spec.indexOf('=');
        if (eq < 0) continue;
        const name = trimWsp(spec.slice(0, eq), true);
        tags.set(
            strict ? name : name.toLowerCase(),
            spec
                .slice(eq + 1)
                .replace(/\s+/g, ' ')
                .trim(),
        );
    }
    return tags;
}

/** The value of a field (after the first colon), decoded as mailauth decodes tag-lists (UTF-8). */
function fieldValue(f: SplitField): string {
    const colon = f.text.indexOf(':');
    return Buffer.from(colon < 0 ? '' : f.text.slice(colon + 1), 'latin1').toString('utf8');
}

/** What mailauth's lenient mode verifies a signature without h= over (its default signing list). */
const DEFAULT_SIGNED = (
    'from:sender:reply-to:subject:date:message-id:to:cc:mime-version:content-type:content-transfer-encoding:' +
    'content-id:content-description:resent-date:resent-from:resent-sender:resent-to:resent-cc:' +
    'resent-message-id:in-reply-to:references:list-id:list-help:list-unsubscribe:list-subscribe:list-post:' +
    'list-owner:list-archive:bimi-selector'
).split(':');

/** The domain of the last address in a From value, roughly (it only orders the choice of signatures). */
function domainIn(value: string): string | null {
    const all = [...value.matchAll(/@([A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)/g)];
    const last = all.at(-1)?.[1];
    return last === undefined ? null : normalizeDomain(last);
}

/** Lower-case field names listed in an h= tag, as mailauth normalizes them. */
function signedNames(h: string | undefined): string[] {
    if (h === undefined) return DEFAULT_SIGNED;
    return h
        .replace(/\s+/g, '')
        .split(':')
        .map((k) => lowerAscii(trimWsp(k)))
        .filter((k) => k !== '');
}

function counts(names: readonly string[]): Map<string, number> {
    const m = new Map<string, number>();
    for (const k of names) m.set(k, (m.get(k) ?? 0) + 1);
    return m;
}

/** What selection needs to know about a DKIM-Signature or ARC-Message-Signature. */
interface Signature {
    /** Index of the field in the header section. */
    readonly at: number;
    readonly signed: ReadonlyMap<string, number>;
    readonly signedCount: number;
    /** The body hash mailauth computes for this DKIM signature (its key), or null when it computes none. */
    readonly bodyHash: string | null;
    /** Every body hash mailauth may compute for it (an ARC-Message-Signature without c= also gets relaxed). */
    readonly bodyHashes: readonly string[];
    readonly aligned: boolean;
    readonly usable: boolean;
    /** Its header canonicalization is relaxed (c=); simple hashes the folds of a field as they are. */
    readonly relaxedHeader: boolean;
    /** The field has a run of white space or dots mailauth's parser would be quadratic in (hasLongRun). */
    readonly longRun: boolean;
}

const ARC_KEYS = new Set(['arc-seal', 'arc-message-signature', 'arc-authentication-results']);
const BODY_CANONS = new Set(['simple', 'relaxed']);

/**
 * The body hash mailauth registers for a signature (canonicalization, hash algorithm and l=, as in
 * dkim-verifier.js), whether it registers one at all (`hashed`: a known algorithm and
 * canonicalization, d=, s=, and From among the signed fields), and whether the signature could
 * pass (`usable`: also b= and bh=).
 */
function bodyHashKey(tags: ReadonlyMap<string, string>): {
    key: string;
    hashed: boolean;
    usable: boolean;
    header: string;
} {
    const c = tags.get('c') ?? '';
    const header = (c.split('/')[0] ?? '').toLowerCase().trim() || 'simple';
    const body = (c.split('/')[1] ?? '').toLowerCase().trim() || 'simple';
    const a = (tags.get('a') ?? '').split('-');
    const sign = (a[0] ?? '').toLowerCase().trim();
    const hash = (a[a.length - 1] ?? '').toLowerCase().trim();
    const l = tags.get('l');
    const length = l !== undefined && l !== '' && !Number.isNaN(Number(l)) ? String(Number(l)) : '';
    const supported =
        (sign === 'rsa' && (hash === 'sha256' || hash === 'sha1')) || (sign === 'ed25519' && hash === 'sha256');
    const hashed =
        supported &&
        BODY_CANONS.has(header) &&
        BODY_CANONS.has(body) &&
        !!tags.get('d') &&
        !!tags.get('s') &&
        signedNames(tags.get('h')).includes('from');
    return {
        key: `${body}:${hash}:${length}`,
        hashed,
        usable: hashed && !!tags.get('b') && !!tags.get('bh'),
        header,
    };
}

/** `authorOrg`: the organizational domain of the author domain, or null. */
function describe(f: SplitField, at: number, strict: boolean, authorOrg: string | null): Signature {
    const tags = parseTags(fieldValue(f), strict);
    const names = signedNames(tags.get('h'));
    const { key, hashed, usable, header } = bodyHashKey(tags);
    // mailauth's lenient mode also tries relaxed for an ARC-Message-Signature without c= (dkim-verifier.js)
    const fallback = f.key === 'arc-message-signature' && !strict && tags.get('c') === undefined;
    const bodyHashes = f.key === 'arc-message-signature' || hashed ? [key] : [];
    if (fallback) bodyHashes.push(`relaxed${key.slice(key.indexOf(':'))}`);
    const d = normalizeDomain(tags.get('d') ?? '');
    // a name longer than DNS allows (RFC 1035 section 2.3.4) aligns with nothing
    const aligned =
        authorOrg !== null && d !== '' && d.length <= MAX_DOMAIN_NAME && organizationalDomain(d) === authorOrg;
    return {
        at,
        signed: counts(names),
        signedCount: names.length,
        bodyHash: hashed ? key : null,
        bodyHashes,
        aligned,
        usable,
        // an ARC-Message-Signature without c= is tried as simple, then relaxed (lenient mode): folds are kept
        relaxedHeader: header === 'relaxed',
        longRun: hasLongRun(f.text),
    };
}

/** The instance number of an ARC header field, or null when it has none that can be read. */
function arcInstance(f: SplitField, strict: boolean): number | null {
    const value = fieldValue(f);
    const raw =
        f.key === 'arc-authentication-results'
            ? /^\s*i\s*=\s*(\d+)\s*;/.exec(value)?.[1]
            : parseTags(value, strict).get('i');
    const n = raw === undefined ? NaN : Number(raw);
    return Number.isInteger(n) && n >= 1 ? n : null;
}

/**
 * Unfolds a field that has too many lines (mailauth reads it in linear time then) unless it is
 * to stay `folded` (a simple signature hashes it); cuts a From's runs of dots.
 */
function copyOf(f: SplitField, folded: boolean): string {
    const text = f.lines > MAX_FIELD_LINES && !folded ? f.text.replace(/\r?\n/g, '') : f.text;
    return f.key === 'from' ? cutDotRuns(text) : text;
}

/**
 * Chooses what mailauth verifies and builds the header section it is given. `authorDomain` is
 * the From domain as the session read it (null: read from the From field here); it only orders
 * the choice.
 */
export function planVerification(
    section: Buffer,
    opts: { readonly limits: VerificationLimits; readonly authorDomain: string | null; readonly strict: boolean },
): VerificationPlan {
    const { limits } = opts;
    const fields = splitFields(section.toString('latin1'));
    const hit = new Set<LimitName>();

    const dkimAt: number[] = [];
    const arcAt: number[] = [];
    const fromAt: number[] = [];
    let anyLong = false;
    for (let i = 0; i < fields.length; i++) {
        const key = fields[i]!.key;
        if (key === 'dkim-signature') dkimAt.push(i);
        else if (ARC_KEYS.has(key)) arcAt.push(i);
        else if (key === 'from') fromAt.push(i);
        if (fields[i]!.lines > MAX_FIELD_LINES) anyLong = true;
    }
    // fields of more than MAX_FIELD_LINES lines, by name, with their place among the fields of that
    // name from the bottom (1: the bottom-most), which is how a signature selects them
    const long = new Map<string, { at: number; rank: number }[]>();
    if (anyLong) {
        const ranks = new Map<string, number>();
        for (let i = fields.length - 1; i >= 0; i--) {
            const f = fields[i]!;
            const rank = (ranks.get(f.key) ?? 0) + 1;
            ranks.set(f.key, rank);
            if (f.lines <= MAX_FIELD_LINES) continue;
            const list = long.get(f.key);
            if (list) list.push({ at: i, rank });
            else long.set(f.key, [{ at: i, rank }]);
        }
    }

    const given = opts.authorDomain === null ? null : normalizeDomain(opts.authorDomain) || null;
    const author = given ?? (fromAt.length === 1 ? domainIn(fieldValue(fields[fromAt[0]!]!)) : null);
    const authorOrg = author === null || author.length > MAX_DOMAIN_NAME ? null : organizationalDomain(author);

    // ARC: every set is verified or none is; the newest ARC-Message-Signature is a signature too
    const instances = new Set<number>();
    let newestAms: { f: number; i: number } | null = null;
    for (const at of arcAt) {
        const i = arcInstance(fields[at]!, opts.strict);
        if (i === null) continue;
        instances.add(i);
        if (fields[at]!.key === 'arc-message-signature' && (newestAms === null || i > newestAms.i)) {
            newestAms = { f: at, i };
        }
    }
    let arcVerified = arcAt.length > 0;
    if (instances.size > limits.maxArcSets || arcAt.length > 3 * limits.maxArcSets) {
        arcVerified = false;
        hit.add('arc_sets');
    } else if (arcAt.some((at) => hasLongRun(fields[at]!.text))) {
        arcVerified = false;
        hit.add('header_runs');
    }

    // DKIM: chosen one by one; a choice is taken with the bottom-most signatures it covers, within every limit
    const sigs = new Map<number, Signature>();
    const signature = (at: number): Signature => {
        let s = sigs.get(at);
        if (!s) {
            s = describe(fields[at]!, at, opts.strict, authorOrg);
            sigs.set(at, s);
        }
        return s;
    };
    const kept = new Set<number>();
    const hashes = new Set<string>();
    let covered = 0;
    // the fields kept folded: of more than MAX_FIELD_LINES lines, hashed by a simple signature
    let folded = new Set<number>();

    /** Adds to `into` the fields `s` hashes that must stay folded (none under relaxed header canonicalization). */
    const keepFolded = (s: Signature, into: Set<number>): void => {
        if (s.relaxedHeader) return;
        // its own field is hashed too (RFC 6376 section 3.7)
        if (fields[s.at]!.lines > MAX_FIELD_LINES) into.add(s.at);
        for (const [name, n] of s.signed) for (const l of long.get(name) ?? []) if (l.rank <= n) into.add(l.at);
    };

    /** Takes `s` (and what it covers) if every limit still holds; returns the limit that refused it. */
    const admit = (s: Signature, countsAsDkim: boolean): LimitName | null => {
        const members = new Set(kept);
        if (countsAsDkim) members.add(s.at);
        const memberHashes = new Set(hashes);
        if (countsAsDkim && s.bodyHash !== null) memberHashes.add(s.bodyHash);
        if (s.longRun) return 'header_runs';
        if (s.signedCount > limits.maxSignedFields) return 'dkim_signed_fields';
        const taken: Signature[] = [s];
        let reach = Math.max(covered, s.signed.get('dkim-signature') ?? 0);
        for (let grown = true; grown; ) {
            grown = false;
            for (const at of dkimAt.slice(Math.max(0, dkimAt.length - reach))) {
                if (members.has(at)) continue;
                const m = signature(at);
                if (m.longRun) return 'header_runs';
                if (m.signedCount > limits.maxSignedFields) return 'dkim_signed_fields';
                members.add(at);
                taken.push(m);
                if (m.bodyHash !== null) memberHashes.add(m.bodyHash);
                const more = m.signed.get('dkim-signature') ?? 0;
                if (more > reach) {
                    reach = more;
                    grown = true;
                }
            }
        }
        if (members.size > limits.maxSignatures) return 'dkim_signatures';
        if (memberHashes.size > limits.maxBodyHashes) return 'dkim_body_hashes';
        if (anyLong) {
            const stay = new Set(folded);
            for (const m of taken) keepFolded(m, stay);
            let lines = 0;
            for (const at of stay) lines += fields[at]!.lines;
            if (lines > MAX_FOLDED_LINES) return 'header_folds';
            folded = stay;
        }
        for (const at of members) kept.add(at);
        for (const h of memberHashes) hashes.add(h);
        covered = reach;
        return null;
    };

    const keptSignatures: Signature[] = [];
    if (arcVerified && newestAms !== null) {
        const ams = describe(fields[newestAms.f]!, newestAms.f, opts.strict, null);
        const refused = admit(ams, false);
        if (refused === null) keptSignatures.push(ams);
        else {
            // the newest set cannot be verified within the limits: the chain is not verified
            arcVerified = false;
            hit.add(refused);
        }
    }

    const order = [...dkimAt].sort((a, b) => rank(signature(a)) - rank(signature(b)) || a - b);
    for (const at of order) {
        if (kept.has(at)) continue;
        const refused = kept.size >= limits.maxSignatures ? 'dkim_signatures' : admit(signature(at), true);
        if (refused !== null) hit.add(refused);
    }
    for (const at of kept) keptSignatures.push(signature(at));

    // the other fields: as many of each name, from the bottom, as a kept signature can select
    const need = new Map<string, number>();
    for (const s of keptSignatures) {
        for (const [name, n] of s.signed) need.set(name, Math.max(need.get(name) ?? 0, n));
    }
    const keep = new Uint8Array(fields.length);
    for (const at of kept) keep[at] = 1;
    if (arcVerified) for (const at of arcAt) keep[at] = 1;
    const seen = new Map<string, number>();
    for (let i = fields.length - 1; i >= 0; i--) {
        const key = fields[i]!.key;
        if (key === 'dkim-signature' || ARC_KEYS.has(key)) continue;
        const n = (seen.get(key) ?? 0) + 1;
        seen.set(key, n);
        // From: the bottom-most and the first (below) and no more: each From is parsed as an address
        // list, and two already make DMARC's "several From fields"
        const wanted = key === 'from' ? 1 : (need.get(key) ?? 0);
        if (n <= wanted || (key === 'content-type' && n === 1)) {
            keep[i] = 1;
        }
    }
    if (fromAt.length > 0) keep[fromAt[0]!] = 1;

    const parts: string[] = [];
    for (let i = 0; i < fields.length; i++) if (keep[i]) parts.push(`${copyOf(fields[i]!, folded.has(i))}\r\n`);
    const computed = new Set(keptSignatures.flatMap((s) => s.bodyHashes));
    return {
        header: Buffer.from(parts.join(''), 'latin1'),
        dkimFound: dkimAt.length,
        dkimEvaluated: kept.size,
        arcFields: arcAt.length,
        arcSets: instances.size,
        arcVerified,
        fromFields: fromAt.length,
        bodyHashes: computed.size,
        relaxedBodyHashes: [...computed].filter((k) => k.startsWith('relaxed:')).length,
        limits: LIMIT_NAMES.filter((l) => hit.has(l)),
    };
}

/** Choice order: aligned and usable, then usable, then the rest. */
function rank(s: Signature): number {
    return s.usable ? (s.aligned ? 0 : 1) : 2;
}
