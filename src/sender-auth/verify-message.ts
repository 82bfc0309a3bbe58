/**
 * One message's sender authentication as far as mailauth and the DNS take it: authenticate.ts
 * (SPF, DKIM, ARC, and DMARC in rfc9989 mode), the DMARC evaluation of rfc7489 mode (Public
 * Suffix List), and whether the author domain exists where `np` needs it (RFC 9989 appendix
 * A.4). It runs in the verification thread (verify-worker.ts), or on the main thread when
 * `authentication.thread` is off; what it returns is plain data either way (the parts of
 * mailauth's result the check reads, auth-output.ts), so mailauth's modules are loaded only where
 * it runs and the check reads the same in both places.
 *
 * DMARC's queries (its policy discovery, and the author domain's existence) go to `dns.dmarc`,
 * which may spend the part of the message's DNS budget kept for DMARC; SPF, DKIM and ARC's to
 * `dns.resolve`, which may not (dns/scoped.ts): a sender's SPF record cannot leave DMARC nothing.
 *
 * It must not decide anything (mailauth.ts does, from what this returns) and must not use any
 * resolver but the ones given.
 */
import type { Readable } from 'node:stream';
import type { DnsResolve } from '../dns/scoped.ts';
import { authenticate, type AuthenticateOptions } from './authenticate.ts';
import { authOutput, dkimOutcome, spfOutcome, type AuthOutput, type AuthResult } from './auth-output.ts';
import {
    authorExistence,
    evaluateRfc7489,
    fromMailauth,
    type DmarcEvaluation,
    type DmarcMode,
} from './dmarc-evaluate.ts';
import type { KeyStore } from './key-reuse.ts';

/** What one verification is told: mailauth's options (but the resolver and key store), the DMARC mode, the login. */
export interface VerifyOptions
    extends Omit<AuthenticateOptions, 'resolver' | 'dmarcResolver' | 'keys' | 'disableDmarc'> {
    readonly dmarcMode: DmarcMode;
    /** The client logged in: SPF was not evaluated (no `ip`), and counts as `none`. */
    readonly authenticated: boolean;
}

/** The message's resolvers: DMARC's, and everything else's (dns/scoped.ts). */
export interface MessageDns {
    readonly resolve: DnsResolve;
    readonly dmarc: DnsResolve;
}

export interface VerifiedMessage {
    /** mailauth's result, the parts the check reads (authOutput). */
    readonly res: AuthOutput;
    readonly dmarc: DmarcEvaluation;
    /** authorExistence(): whether the author domain exists, null when not needed or unknown. */
    readonly authorExists: boolean | null;
}

export async function verifyMessage(
    input: Readable,
    opts: VerifyOptions,
    dns: MessageDns,
    keys: KeyStore,
): Promise<VerifiedMessage> {
    const { dmarcMode, authenticated, ...rest } = opts;
    const res = (await authenticate(input, {
        ...rest,
        // in rfc7489 mode DMARC is evaluated below, with the Public Suffix List
        disableDmarc: dmarcMode === 'rfc7489',
        resolver: dns.resolve,
        dmarcResolver: dns.dmarc,
        keys,
    })) as unknown as AuthResult;
    let dmarc: DmarcEvaluation;
    if (dmarcMode === 'rfc7489') {
        const { spfRes, spfDomain } = spfOutcome(res, authenticated);
        dmarc = await evaluateRfc7489(
            {
                headerFrom: res.dkim.headerFrom ?? [],
                fromFields: res.dkim.fromFields ?? 0,
                spfDomains: spfRes === 'pass' && spfDomain ? [spfDomain] : [],
                dkimDomains: dkimOutcome(res).passingDomains,
            },
            dns.dmarc,
            { strict: opts.strict },
        );
    } else {
        dmarc = fromMailauth(res.dmarc, res.dmarcSkipReason);
    }
    return { res: authOutput(res), dmarc, authorExists: await authorExistence(dmarc, dns.dmarc) };
}
