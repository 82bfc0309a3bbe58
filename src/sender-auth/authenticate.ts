/**
 * DKIM (RFC 6376), SPF (RFC 7208), ARC (RFC 8617) and DMARC (RFC 9989) verification of one
 * message, composed from mailauth's parts in the order and with the options its `authenticate`
 * uses, so each result is the one `authenticate` gives (the composition is tested against it).
 * What `authenticate` adds and we never read is left out: BIMI, the parsed Received chain, its
 * ready-made header fields and ARC sealing (we write our own Authentication-Results and seal
 * nothing). DKIM and ARC keys come from a key store shared across messages (key-reuse.ts).
 *
 * It must not decide anything (mailauth.ts does), and must not use any resolver but the ones
 * given.
 */
import { isIP } from 'node:net';
import { hostname } from 'node:os';
import type { Readable } from 'node:stream';
import type * as Mailauth from 'mailauth';
import type { DnsResolve } from '../dns/scoped.ts';
import { isAddressLiteral, isTraceHostname } from '../net/trace-names.ts';
import type { KeyStore } from './key-reuse.ts';
import {
    arc,
    DkimVerifier,
    evaluateDmarc,
    formatAuthservId,
    formatDomain,
    getAlignment,
    spf,
    writeToStream,
} from './mailauth-internals.ts';
import { guardSpfRecords } from './mailauth-bounds.ts';

export interface AuthenticateOptions {
    /** The client's address; without it no SPF query is made. */
    readonly ip?: string | undefined;
    readonly helo?: string | undefined;
    readonly sender: string;
    /** The authserv-id, also the host named in SPF comments. */
    readonly mta: string;
    readonly resolver: DnsResolve;
    /** DMARC's resolver (one that may spend the part of the DNS budget kept for DMARC); `resolver` without it. */
    readonly dmarcResolver?: DnsResolve;
    readonly disableDmarc: boolean;
    readonly minBitLength: number;
    readonly rejectRsaSha1: boolean;
    readonly strict: boolean;
    readonly maxResolveCount: number;
    readonly maxElapsedTime: number;
    readonly keys: KeyStore;
}

/** `authenticate`'s result, the parts we read. */
export interface AuthenticateOutput {
    readonly dkim: {
        readonly headerFrom: string[];
        readonly fromFields: number;
        readonly envelopeFrom: string | false;
        readonly results: Mailauth.DKIMResult[];
    };
    readonly spf: Mailauth.SPFResult | false;
    readonly arc: Mailauth.ARCResult | false;
    readonly dmarc: Mailauth.DMARCResult | false;
    readonly dmarcSkipReason?: string;
}

export async function authenticate(input: Readable, opts: AuthenticateOptions): Promise<AuthenticateOutput> {
    const strict = opts.strict;
    const resolver = opts.resolver;
    const mta = opts.mta || hostname();
    // RFC 8601 section 2.5: an authserv-id that is not a token throws under strict, before any work
    formatAuthservId(mta, strict);

    const verifier = new DkimVerifier({
        resolver,
        sender: opts.sender,
        seal: undefined,
        minBitLength: opts.minBitLength,
        rejectRsaSha1: opts.rejectRsaSha1,
        strict,
    });
    // the per-message key lookups, shared with the ARC validation as mailauth does, backed by the store
    const keyCache = opts.keys.forMessage(resolver);
    verifier.keyCache = keyCache;
    Object.defineProperty(verifier.arc, 'keyCache', {
        value: keyCache,
        enumerable: false,
        configurable: true,
        writable: true,
    });
    await writeToStream(verifier, input);
    const dkim = {
        headerFrom: verifier.headerFrom,
        fromFields: verifier.fromFields,
        envelopeFrom: verifier.envelopeFrom,
        results: verifier.results as Mailauth.DKIMResult[],
    };

    // A HELO name that is neither a host name nor an address literal names no SPF identity
    // (RFC 7208 section 2.3) and is written into our Authentication-Results (smtp.helo) and
    // Received-SPF (helo=): `x;client-ip=192.0.2.9;dkim=pass` would read there as results to a
    // parser that splits at `;`. The client's address stands in, as for a missing HELO.
    let helo =
        opts.helo !== undefined && (isTraceHostname(opts.helo) || isAddressLiteral(opts.helo)) ? opts.helo : undefined;
    if (!helo && opts.ip) helo = opts.ip;
    if (helo && isIP(helo)) helo = `[${helo}]`;
    const spfResult = (await spf({
        sender: opts.sender,
        ip: opts.ip,
        helo,
        mta,
        maxResolveCount: opts.maxResolveCount,
        maxElapsedTime: opts.maxElapsedTime,
        // oversized SPF records are a permerror before mailauth's syntax checks read them
        resolver: guardSpfRecords(resolver),
        strict,
    } as Parameters<typeof spf>[0])) as Mailauth.SPFResult | false;

    const arcResult = (await arc(verifier.arc, {
        resolver,
        minBitLength: opts.minBitLength,
        strict,
        ip: opts.ip,
    })) as Mailauth.ARCResult;

    let dmarcResult: Mailauth.DMARCResult | false = false;
    let dmarcSkipReason: string | undefined;
    if (!opts.disableDmarc && dkim.headerFrom) {
        const evaluated = await evaluateDmarc({
            headerFrom: dkim.headerFrom,
            fromFields: dkim.fromFields,
            spfDomains: spfResult && spfResult.status.result === 'pass' && spfResult.domain ? [spfResult.domain] : [],
            dkimDomains: verifier.results
                .filter((r) => r.status.result === 'pass')
                .map((r) => {
                    const row = r as typeof r & { id?: unknown; status: { underSized?: unknown } };
                    return {
                        id: row.id,
                        domain: row.signingDomain,
                        aligned: row.status.aligned,
                        underSized: row.status.underSized,
                    };
                }),
            arcResult,
            resolver: opts.dmarcResolver ?? resolver,
            strict,
        });
        dmarcSkipReason = evaluated.reason;
        const response = evaluated.response;
        if (evaluated.dkimAligned && response) {
            // as authenticate does: passing signatures take the DMARC verdict, failing ones the record's alignment mode
            const fromDomain = (response.status.header as Record<string, string>).from;
            for (const row of verifier.results) {
                if (row.status.result === 'pass') {
                    row.status.aligned = evaluated.dkimAligned.has(formatDomain(row.signingDomain!))
                        ? row.signingDomain!
                        : false;
                } else if (response.alignment.dkim.strict) {
                    const found = row.status.aligned
                        ? getAlignment(fromDomain as string, [row.signingDomain as string], true)
                        : false;
                    row.status.aligned = (found && found.domain) || false;
                }
            }
        }
        dmarcResult = response || false;
    }

    return {
        dkim,
        spf: spfResult,
        arc: arcResult || false,
        dmarc: dmarcResult,
        ...(!dmarcResult && dmarcSkipReason ? { dmarcSkipReason } : {}),
    };
}
