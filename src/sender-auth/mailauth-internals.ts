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
 * - the DKIM key record reader (`getPublicKey`), whose result key-reuse.ts keeps per record;
 * - the DKIM verifier with its two scans over every byte replaced by linear ones (header-scan.ts,
 *   `withLinearScans`): its header scan copied an array per byte of the header section.
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
import { bareLineFeeds, headerEnd, newHeaderScan } from './header-scan.ts';
import { boundedAddressParser, boundedExpansion, boundedToASCII } from './mailauth-bounds.ts';

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

/**
 * Puts `wrap(exports)` in place of the module at `path` for every module loaded after this. The
 * modules that read it when they load are loaded fresh after it (`dependents`): a copy loaded
 * earlier, by a test that compares with mailauth's own functions, keeps the unbounded one.
 */
function replaceModule(path: string, dependents: readonly string[], wrap: (original: unknown) => unknown): void {
    for (const name of dependents) delete require.cache[require.resolve(name)];
    const original: unknown = require(path);
    const cached = require.cache[path];
    if (cached === undefined || typeof original !== 'function') {
        throw new Error(`mailauth's module ${path} is not what mailwarden bounds`);
    }
    cached.exports = wrap(original);
}

// the bounds of mailauth-bounds.ts: SPF macro expansion, IDNA labels, nested groups in addresses
replaceModule(
    require.resolve('mailauth/lib/spf/macro.js'),
    ['mailauth/lib/spf/spf-verify.js', 'mailauth/lib/spf/index.js'],
    (expand) => boundedExpansion(expand as Parameters<typeof boundedExpansion>[0]),
);
const verifierRequire = createRequire(require.resolve('mailauth/lib/dkim/dkim-verifier.js'));
replaceModule(
    verifierRequire.resolve('nodemailer/lib/addressparser'),
    ['mailauth/lib/dkim/dkim-verifier.js'],
    (parse) => {
        const bounded = boundedAddressParser(parse as Parameters<typeof boundedAddressParser>[0]);
        return Object.assign(bounded, { default: bounded });
    },
);
// mailauth's tools.js calls punycode.toASCII through the module object: replaced on it
const punycode = createRequire(require.resolve('mailauth/lib/tools.js'))('punycode.js') as {
    toASCII: (input: string) => string;
};
if (typeof punycode.toASCII !== 'function') throw new Error("punycode.js's toASCII is not where mailwarden expects it");
punycode.toASCII = boundedToASCII(punycode.toASCII);

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

/** The fields and steps of mailauth's message parser (lib/dkim/message-parser.js) the scans below replace. */
interface MessageParserInternals {
    state: 'header' | 'body';
    headerBytes: number;
    headerChunks: Buffer[];
    lastByte: number | undefined;
    emitHeaders(chunk?: Buffer): Promise<void>;
    nextChunk(chunk: Buffer): Promise<void>;
}

/**
 * A subclass of one of mailauth's message parsers (the DKIM verifier, or the parser itself in the
 * tests) whose two scans over every byte are header-scan.ts's linear ones: same header section,
 * same body chunks, same bare-<LF> repair, without the array mailauth's header scan copied per byte.
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- a mixin's base must take any arguments
export function withLinearScans<B extends new (...args: any[]) => Writable>(Base: B) {
    return class extends Base {
        readonly headerScan = newHeaderScan();

        async processChunk(input: Buffer | undefined): Promise<void> {
            if (!input || !input.length) return;
            const parser = this as unknown as MessageParserInternals;
            let chunk = input;
            if (parser.state === 'header') {
                const end = headerEnd(chunk, this.headerScan);
                parser.headerBytes = this.headerScan.seen;
                if (end === -1) {
                    parser.headerChunks.push(chunk);
                    return;
                }
                if (end === chunk.length - 1) {
                    await parser.emitHeaders(chunk);
                    return;
                }
                await parser.emitHeaders(chunk.subarray(0, end + 1));
                chunk = chunk.subarray(end + 1);
            }
            await parser.nextChunk(chunk);
        }

        *ensureLinebreaks(input: Buffer): Generator<Buffer> {
            const parser = this as unknown as MessageParserInternals;
            const bare = bareLineFeeds(input, parser.lastByte);
            if (input.length > 0) parser.lastByte = input[input.length - 1];
            let pos = 0;
            for (const at of bare) {
                yield pos === at ? Buffer.from('\r\n') : Buffer.concat([input.subarray(pos, at), Buffer.from('\r\n')]);
                pos = at + 1;
            }
            if (pos === 0) yield input;
            else if (pos < input.length) yield input.subarray(pos);
        }
    };
}

export const DkimVerifier = withLinearScans(verifier.DkimVerifier);
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
