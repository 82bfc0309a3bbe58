/**
 * Typed access to the parts of mailauth we use, loaded from its `lib/` one by one instead of its
 * package index, which also loads BIMI (an HTTP client, VMC certificate and SVG parsers: about
 * 10 MB of memory and start-up time) that we never run:
 * - DKIM verification (RFC 6376) with its per-message key lookup cache, SPF (RFC 7208), ARC
 *   (RFC 8617) and DMARC (RFC 9989), composed per message as mailauth's `authenticate` does
 *   (authenticate.ts), and the DKIM body hash for signing (submission);
 * - the few functions that DMARC in `rfc7489` mode and the disposition need, so that record
 *   parsing and policy tags (RFC 9989 sections 4.7 and 4.10.1), the domain existence test
 *   (appendix A.4) and the author domain rules (section 5.3.1) stay exactly mailauth's;
 * - the DKIM key record reader (`getPublicKey`), whose result key-reuse.ts keeps per record.
 *
 * The mailauth version is pinned in package.json; test/sender-auth/mailauth-internals.test.ts
 * holds the shapes relied on here (and the composition against mailauth's own `authenticate`),
 * the DMARC tests exercise the rest, so a change of these internals on upgrade fails the tests
 * instead of passing silently.
 *
 * Nothing else may reach into mailauth's `lib/`, and nothing may import mailauth's index.
 */
import { createRequire } from 'node:module';
import type { Writable } from 'node:stream';
import type * as Mailauth from 'mailauth';
import type { DnsResolve } from '../dns/scoped.ts';

export type { DnsResolve };

const require = createRequire(import.meta.url);

/** A parsed DMARC record: tag names lower-cased, `pct` and `ri` as numbers, `rr` the raw text. */
export interface DmarcRecord {
    readonly [tag: string]: string | number | undefined;
    readonly rr: string;
}

/** The policy tags a record is applied with (RFC 9989 section 4.10.1), validated. */
export interface PolicyTags {
    readonly p: 'none' | 'quarantine' | 'reject';
    readonly sp?: 'none' | 'quarantine' | 'reject';
    readonly np?: 'none' | 'quarantine' | 'reject';
}

interface GetDmarcRecordModule {
    /** The record that applies to a domain (tree walk), with `recordDomain` and `orgDomain`; or false. */
    (domain: string, resolver: DnsResolve, opts?: { strict?: boolean }): Promise<DmarcRecord | false>;
    /** Returns a per-message memoizing lookup of `_dmarc.<name>`: the record, false, or a thrown DNS error. */
    getPolicyTags: (record: DmarcRecord) => PolicyTags | null;
    /** RFC 9989 appendix A.4: false only for NXDOMAIN; throws on temporary DNS errors. */
    domainExists: (domain: string, resolver: DnsResolve) => Promise<boolean>;
    parseDmarcRecord: (txt: string, opts?: { strict?: boolean }) => DmarcRecord | null;
}

export type AuthorDomain =
    | { domain: string; authorDomain: string; mailboxes: number; reason?: undefined; domains?: undefined }
    | {
          reason: 'no-author-domain' | 'multiple-author-domains' | 'invalid-author-domain' | 'multiple-from-fields';
          domains: string[];
          mailboxes: number;
          domain?: undefined;
          authorDomain?: undefined;
      };

interface AuthorDomainModule {
    getAuthorDomain: (headerFrom: readonly string[] | string, fromFields: number) => AuthorDomain;
}

const record = require('mailauth/lib/dmarc/get-dmarc-record.js') as GetDmarcRecordModule;
const author = require('mailauth/lib/dmarc/author-domain.js') as AuthorDomainModule;

export const getDmarcRecord = (domain: string, resolver: DnsResolve, opts?: { strict?: boolean }) =>
    record(domain, resolver, opts);
export const getPolicyTags = record.getPolicyTags;
export const domainExists = record.domainExists;
export const parseDmarcRecord = record.parseDmarcRecord;
export const getAuthorDomain = author.getAuthorDomain;

/** The DKIM key record as mailauth reads it (RFC 6376 section 3.6.1, RFC 8463). */
export interface PublicKeyRecord {
    /** The key in PEM, as passed to crypto.verify() and reported in DKIM results. */
    readonly publicKey: string;
    /** The record text, white space removed. */
    readonly rr: string;
    readonly modulusLength?: number;
    readonly keyType: string;
    readonly flags: string[];
    readonly testing: boolean;
    readonly warnings: string[];
}

export interface KeyLookupOptions {
    readonly strict?: boolean;
    readonly hashAlgo?: string;
}

/**
 * mailauth's per-message key lookup cache (tools.js createKeyCache): `get` returns the same
 * promise for the same question; `resolver` is compared with the ARC validator's resolver.
 */
export interface KeyCache {
    readonly resolver: DnsResolve;
    get(
        type: string,
        name: string,
        minBitLength: number | undefined,
        options?: KeyLookupOptions,
    ): Promise<PublicKeyRecord>;
}

interface ToolsModule {
    getPublicKey: (
        type: string,
        name: string,
        minBitLength: number | undefined,
        resolver: DnsResolve,
        options?: KeyLookupOptions,
    ) => Promise<PublicKeyRecord>;
    createKeyCache: (resolver: DnsResolve) => KeyCache;
    toALabel: (domain: string) => string;
    writeToStream: (stream: Writable, input: unknown) => Promise<unknown>;
    formatAuthservId: (mta: string, strict: boolean) => string;
    formatDomain: (domain: string) => string;
    getAlignment: (fromDomain: string, domainList: string[], strict?: boolean) => { domain?: string } | false;
}

/** The part of a DKIM verifier (dkim-verifier.js) the composition reads and sets. */
export interface DkimVerifierState extends Writable {
    keyCache: KeyCache;
    readonly arc: object;
    readonly headers?: unknown;
    readonly seal?: unknown;
    readonly headerFrom: string[];
    readonly fromFields: number;
    readonly envelopeFrom: string | false;
    readonly results: { signingDomain?: string; status: { result: string; aligned?: string | false } }[];
}

interface DkimVerifierModule {
    DkimVerifier: new (options: {
        resolver: DnsResolve;
        sender?: string;
        seal?: unknown;
        minBitLength?: number;
        rejectRsaSha1?: boolean;
        strict?: boolean;
    }) => DkimVerifierState;
}

/** mailauth's DMARC evaluation from facts (lib/dmarc/verify.js evaluateDmarc). */
export interface EvaluateDmarcOptions {
    readonly headerFrom: string[];
    readonly fromFields: number;
    readonly spfDomains: string[];
    readonly dkimDomains: { id?: unknown; domain?: string; aligned?: unknown; underSized?: unknown }[];
    readonly arcResult: unknown;
    readonly resolver: DnsResolve;
    readonly strict: boolean;
}
export interface EvaluateDmarcOutput {
    readonly response: (Mailauth.DMARCResult & { alignment: { dkim: { strict: boolean } } }) | false;
    readonly dkimAligned?: Set<string>;
    readonly reason?: string;
}

const tools = require('mailauth/lib/tools.js') as ToolsModule;
const verifier = require('mailauth/lib/dkim/dkim-verifier.js') as DkimVerifierModule;
const spfModule = require('mailauth/lib/spf/index.js') as { spf: typeof Mailauth.spf };
const arcModule = require('mailauth/lib/arc/index.js') as {
    arc: (
        data: object,
        opts: { resolver: DnsResolve; minBitLength?: number; strict: boolean; ip?: string | undefined },
    ) => Promise<unknown>;
};
const dmarcModule = require('mailauth/lib/dmarc/index.js') as {
    dmarc: typeof Mailauth.dmarc;
    evaluateDmarc: (opts: EvaluateDmarcOptions) => Promise<EvaluateDmarcOutput>;
};
const signModule = require('mailauth/lib/dkim/sign.js') as { dkimSign: typeof Mailauth.dkimSign };

export const DkimVerifier = verifier.DkimVerifier;
export const getPublicKey = tools.getPublicKey;
export const createKeyCache = tools.createKeyCache;
export const toALabel = tools.toALabel;
export const writeToStream = tools.writeToStream;
export const formatAuthservId = tools.formatAuthservId;
export const formatDomain = tools.formatDomain;
export const getAlignment = tools.getAlignment;
export const spf = spfModule.spf;
export const arc = arcModule.arc;
export const dmarc = dmarcModule.dmarc;
export const evaluateDmarc = dmarcModule.evaluateDmarc;
export const dkimSign = signModule.dkimSign;
