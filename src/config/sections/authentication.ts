/**
 * The `authentication:` section: how sender authentication (SPF, DKIM, DMARC, ARC; src/sender-auth)
 * verifies incoming mail: the time and DNS budget of one message, the RSA key floor, strictness,
 * per-method bounds, the DMARC organizational-domain mode and the trusted ARC sealers. Not SMTP
 * AUTH, which is `auth:`. Validation only: it must not query DNS.
 */
import { sectionEntries } from '../fields.ts';
import { normalizeHostname } from '../net.ts';
import type { Field, SourceReader } from '../reader.ts';
import { MAX_TIMER_MS } from '../units.ts';

export const AUTHENTICATION_KEYS = [
    'timeout',
    'thread',
    'minRsaBits',
    'strict',
    'maxDnsQueries',
    'spf',
    'dkim',
    'dmarc',
    'arc',
] as const;
const SPF_KEYS = ['maxLookups'] as const;
const DKIM_VERIFY_KEYS = ['rejectRsaSha1', 'maxSignatures', 'maxBodyHashes', 'maxSignedFields'] as const;
const DMARC_KEYS = ['mode', 'rejectMultipleFrom'] as const;
const ARC_KEYS = ['trustedSealers', 'maxSets'] as const;
const DMARC_MODES = ['rfc9989', 'rfc7489'] as const;

/** How the DMARC organizational domain is found: DNS tree walk (RFC 9989) or Public Suffix List (RFC 7489). */
export type DmarcMode = 'rfc9989' | 'rfc7489';

/** Sender-domain authentication: SPF, DKIM, DMARC and ARC (checks in src/sender-auth). */
export interface AuthenticationConfig {
    /** Time allowed for all of a message's SPF, DKIM, DMARC and ARC work together. */
    readonly timeoutMs: number;
    /**
     * Verify in a thread of its own, which a timeout can stop even in the middle of synchronous
     * work (src/sender-auth/verify-thread.ts); off, verification runs on the main thread.
     */
    readonly thread: boolean;
    /** Shortest RSA key accepted for DKIM and ARC signatures (RFC 8301 section 3.2). */
    readonly minRsaBits: number;
    /** Follow the RFCs to the letter instead of mailauth's lenient defaults. */
    readonly strict: boolean;
    /** DNS queries one message's SPF, DKIM, DMARC and ARC may make together (cache hits included). */
    readonly maxDnsQueries: number;
    readonly spf: {
        /** DNS-querying terms allowed in one SPF evaluation (RFC 7208 section 4.6.4). */
        readonly maxLookups: number;
    };
    readonly dkim: {
        /** rsa-sha1 signatures count as `policy`, not `pass` (RFC 8301 section 3.1). */
        readonly rejectRsaSha1: boolean;
        /** DKIM-Signature fields evaluated per message; the others are skipped. */
        readonly maxSignatures: number;
        /** Distinct body hashes (canonicalization, algorithm, l=) computed per message. */
        readonly maxBodyHashes: number;
        /** Names a signature's h= may list and still be evaluated (DKIM and ARC-Message-Signature). */
        readonly maxSignedFields: number;
    };
    readonly dmarc: {
        readonly mode: DmarcMode;
        /** A From field with several mailboxes (or several From fields) gets the disposition `reject`. */
        readonly rejectMultipleFrom: boolean;
    };
    readonly arc: {
        /** ARC sealers (d= of ARC-Seal) whose results may override a DMARC failure. */
        readonly trustedSealers: readonly string[];
        /** ARC sets verified per message; a longer chain fails (RFC 8617 section 5.1.1 allows 50). */
        readonly maxSets: number;
    };
}

/**
 * Sender authentication. 15 s covers several DNS round trips per check with the 5 s DNS timeout;
 * RSA keys under 1024 bits and rsa-sha1 are refused as RFC 8301 requires; 10 SPF lookups is the
 * RFC 7208 section 4.6.4 limit; DMARC by the RFC 9989 tree walk; no ARC sealer trusted.
 * Per-message cost: 5 DKIM signatures (as Rspamd and OpenDKIM verify a handful), 3 body hashes,
 * 100 names per h=, 10 ARC sets, 100 DNS queries: well above what real mail needs (SPF rarely
 * asks 20, DKIM and DMARC a few each) and far below what a hostile message could ask for.
 */
export function defaultAuthentication(): AuthenticationConfig {
    return {
        timeoutMs: 15_000,
        thread: true,
        minRsaBits: 1024,
        strict: false,
        maxDnsQueries: 100,
        spf: { maxLookups: 10 },
        dkim: { rejectRsaSha1: true, maxSignatures: 5, maxBodyHashes: 3, maxSignedFields: 100 },
        dmarc: { mode: 'rfc9989', rejectMultipleFrom: true },
        arc: { trustedSealers: [], maxSets: 10 },
    };
}

/** Reads `authentication:`; every key is optional, and one left out or invalid (reported) takes its default. */
export function authenticationSection(r: SourceReader, field: Field): AuthenticationConfig {
    const d = defaultAuthentication();
    const entries = sectionEntries(r, field, AUTHENTICATION_KEYS);
    const timeoutField = entries.get('timeout');
    const threadField = entries.get('thread');
    const bitsField = entries.get('minRsaBits');
    const strictField = entries.get('strict');
    const maxDnsQueries = entries.get('maxDnsQueries');
    const spf = entries.get('spf');
    const dkim = entries.get('dkim');
    const dmarc = entries.get('dmarc');
    const arc = entries.get('arc');
    const spfEntries = spf ? sectionEntries(r, spf, SPF_KEYS) : new Map<string, Field>();
    const dkimEntries = dkim ? sectionEntries(r, dkim, DKIM_VERIFY_KEYS) : new Map<string, Field>();
    const dmarcEntries = dmarc ? sectionEntries(r, dmarc, DMARC_KEYS) : new Map<string, Field>();
    const arcEntries = arc ? sectionEntries(r, arc, ARC_KEYS) : new Map<string, Field>();
    const maxLookups = spfEntries.get('maxLookups');
    const rejectRsaSha1 = dkimEntries.get('rejectRsaSha1');
    const maxSignatures = dkimEntries.get('maxSignatures');
    const maxBodyHashes = dkimEntries.get('maxBodyHashes');
    const maxSignedFields = dkimEntries.get('maxSignedFields');
    const maxSets = arcEntries.get('maxSets');
    const mode = dmarcEntries.get('mode');
    const rejectMultipleFrom = dmarcEntries.get('rejectMultipleFrom');
    const sealers = arcEntries.get('trustedSealers');
    return {
        timeoutMs: (timeoutField && r.duration(timeoutField, 100, MAX_TIMER_MS)) ?? d.timeoutMs,
        thread: (threadField && r.boolean(threadField)) ?? d.thread,
        // RFC 8301 section 3.2: verifiers must accept 1024 to 4096 bits; smaller keys only by choice
        minRsaBits: (bitsField && r.integer(bitsField, 512, 4096, 'a key size in bits')) ?? d.minRsaBits,
        strict: (strictField && r.boolean(strictField)) ?? d.strict,
        // enough for one SPF evaluation at the RFC limits plus DKIM, ARC and DMARC; never unbounded
        maxDnsQueries: (maxDnsQueries && r.integer(maxDnsQueries, 10, 1000)) ?? d.maxDnsQueries,
        // RFC 7208 section 4.6.4: at most 10 DNS-querying terms
        spf: { maxLookups: (maxLookups && r.integer(maxLookups, 1, 10)) ?? d.spf.maxLookups },
        dkim: {
            rejectRsaSha1: (rejectRsaSha1 && r.boolean(rejectRsaSha1)) ?? d.dkim.rejectRsaSha1,
            maxSignatures: (maxSignatures && r.integer(maxSignatures, 1, 50)) ?? d.dkim.maxSignatures,
            maxBodyHashes: (maxBodyHashes && r.integer(maxBodyHashes, 1, 50)) ?? d.dkim.maxBodyHashes,
            maxSignedFields: (maxSignedFields && r.integer(maxSignedFields, 10, 1000)) ?? d.dkim.maxSignedFields,
        },
        dmarc: {
            mode: (mode && r.oneOf(mode, DMARC_MODES)) ?? d.dmarc.mode,
            rejectMultipleFrom: (rejectMultipleFrom && r.boolean(rejectMultipleFrom)) ?? d.dmarc.rejectMultipleFrom,
        },
        arc: {
            trustedSealers: sealers ? domainList(r, sealers, 'ARC sealer domains') : d.arc.trustedSealers,
            // RFC 8617 section 4.2.1: a chain has at most 50 sets
            maxSets: (maxSets && r.integer(maxSets, 1, 50)) ?? d.arc.maxSets,
        },
    };
}

/** A list of distinct domain names (possibly empty), lower-case A-labels. */
function domainList(r: SourceReader, field: Field, what: string): string[] {
    const items = r.list(field, what);
    const seen = new Set<string>();
    const out: string[] = [];
    for (const item of items ?? []) {
        const text = r.string(item, 'a domain name');
        if (text === null) continue;
        const name = normalizeHostname(text);
        if (name === null) r.fail(item, `"${text}" is not a valid domain name`);
        else if (seen.has(name)) r.fail(item, `"${text}" is listed twice`);
        else {
            seen.add(name);
            out.push(name);
        }
    }
    return out;
}
