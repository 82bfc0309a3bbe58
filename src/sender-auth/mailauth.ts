/**
 * The work of the `mailauth` check (declared in src/checks/mailauth.ts): SPF (RFC 7208), DKIM (RFC 6376, RFC 8301, RFC 8463),
 * ARC (RFC 8617) and DMARC (RFC 9989, or RFC 7489 in `rfc7489` mode) for one received message,
 * verified by mailauth over our resolver; the DMARC disposition is decided here
 * (dmarc-policy.ts), with the trusted-ARC override (arc-trust.ts). Reports facts for the rules
 * and returns `Authentication-Results` (RFC 8601) and `Received-SPF` (RFC 7208 section 9.1)
 * for the forwarded message.
 *
 * Every message costs a bounded amount of CPU and DNS: mailauth verifies a copy of the message
 * that carries only the signatures chosen within the per-message limits (verification-copy.ts),
 * fed in whole lines with pauses for the event loop (verification-stream.ts), through a resolver
 * that counts the message's queries against `maxDnsQueries` and the bytes of its answers against
 * MESSAGE_ANSWER_BYTES (a part of each kept for DMARC, DMARC_RESERVE), and refuses new ones
 * once the check ended (dns/scoped.ts). When the pipeline gives up on the check, the message
 * stream is destroyed, which stops the hashing. mailauth runs in the verification thread
 * (verify-thread.ts, `authentication.thread`), which is terminated when synchronous work holds
 * it; the decision stays here, on the main thread.
 *
 * When the verified body was cut short (a line over 1 MiB, too many lines to rewrite:
 * verification-stream.ts), mailauth hashed only the bytes before the cut, and a signature over a
 * body that goes on after them still matched. So then no body hash that reached the cut passes:
 * such a DKIM signature is `policy`, a passing ARC chain fails, and DMARC is decided without them
 * (withoutCutPasses); a signature whose l= ends before the cut still passes. A body hash that
 * reached the cut and did not match is `policy` too, not `neutral` (the body altered): the body
 * was not read to its end.
 *
 * For an authenticated submission client SPF is not evaluated (the client is our own user, and
 * SPF says nothing about it): `spf.result` is `none`, and neither `Received-SPF` nor an spf
 * clause of Authentication-Results is written.
 *
 * It must not choose a reply (rules do, from `dmarc.disposition`), must not trust Received or
 * Return-Path fields for the client identity (the session's values are used), must never let
 * mailauth query the system resolver (every lookup goes through the resolver given), and must
 * never turn a temporary DNS error into a permanent verdict.
 */
import type { Readable } from 'node:stream';
import type { AuthenticationConfig } from '../config/types.ts';
import type { Resolver } from '../dns/resolver.ts';
import { MESSAGE_ANSWER_BYTES, scopedResolver, type DmarcReserve, type ScopedResolver } from '../dns/scoped.ts';
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics.ts';
import { foldDomain } from '../net/domain.ts';
import type { FactValue, HeaderField, Check, CheckContext, CheckResult } from '../types.ts';
import { evaluateArcTrust, type ArcHop, type ArcTrustOutput } from './arc-trust.ts';
import { arcResInfo, dkimResInfo, dmarcResInfo, joinAuthResults, restated } from './auth-results.ts';
import { bestDkim, dkimOutcome, dkimResult, spfOutcome, type ArcChainEntry, type DkimRow } from './auth-output.ts';
import {
    alignedRelaxed,
    couldAlign,
    decideDisposition,
    normalizeDomain,
    type DispositionOutput,
} from './dmarc-policy.ts';
import { isUnreadableAddress } from './mailauth-bounds.ts';
import { organizationalDomain } from './psl.ts';
import { planVerification, type LimitName, type VerificationPlan } from './verification-copy.ts';
import {
    MAX_BODY_LINE,
    MAX_RELAXED_REWRITES,
    openVerification,
    type FeedStats,
    type Verification,
} from './verification-stream.ts';
import { ThreadRestarted, type VerifyThread } from './verify-thread.ts';
import type { MessageDns, VerifiedMessage, VerifyOptions } from './verify-message.ts';

export interface MailauthCheckOptions {
    /** The authserv-id of Authentication-Results and the host named in SPF comments. */
    readonly hostname: string;
    /** With its cache's clock, expiries and hit count, the verification thread keeps a copy of the answers (verify-thread.ts). */
    readonly resolver: Pick<Resolver, 'resolve' | 'expiresAt' | 'now' | 'countHits'>;
    /** The operator's own domains (`domains:`), for `local.sender`. */
    readonly localDomains: readonly string[];
    readonly settings: AuthenticationConfig;
    /** Results and overrides; the check's duration is recorded by the session for every check. */
    readonly metrics?: Pick<Metrics, 'authChecks' | 'dmarcOverrides' | 'authLimits' | 'dkimSkipped' | 'authDnsQueries'>;
    /** Where a message that ran into a per-message limit is logged. */
    readonly log?: Pick<Logger, 'warn'>;
    /** The thread that verifies when `settings.thread` is on (built once per app); without it, verified here. */
    readonly thread?: VerifyThread | null;
}

/**
 * The part of a message's DNS budgets kept for DMARC (at most half of each): SPF runs before it
 * and may ask for more than the whole budget (five `mx` terms in non-strict mode ask for about
 * 105 queries), which would turn the rejection a spoofed `p=reject` domain asks for into a
 * temporary error. DMARC policy discovery asks at most 8 names (RFC 9989 section 4.10's tree
 * walk), then whether the author domain exists, twice (mailauth's `np` check, then
 * authorExistence) with 2 queries each (A, CNAME); its answers are a few hundred bytes each.
 * Identifier alignment (more tree walks) draws on what is left of the budget as a whole.
 */
export const DMARC_RESERVE: DmarcReserve = { queries: 12, bytes: 16 * 1024 };

function domainOf(address: string | null | undefined): string | null {
    if (!address) return null;
    const at = address.lastIndexOf('@');
    if (at < 0) return null;
    const d = normalizeDomain(address.slice(at + 1));
    return d === '' ? null : d;
}

function isLocal(domain: string | null, locals: readonly string[]): boolean {
    return domain !== null && locals.some((l) => domain === l || domain.endsWith(`.${l}`));
}

/** The ARC sets of a validated chain, oldest first. */
function arcHops(chain: readonly ArcChainEntry[] | false | undefined): ArcHop[] {
    return (chain || []).map((e, k) => {
        const d = e['arc-seal']?.parsed?.d?.value;
        const original = e['arc-authentication-results']?.original;
        const text = original === undefined ? '' : Buffer.isBuffer(original) ? original.toString('utf8') : original;
        return {
            instance: typeof e.i === 'number' ? e.i : k + 1,
            sealer: typeof d === 'string' ? normalizeDomain(d) : null,
            results: text.replace(/^[^:]*:/, ''),
        };
    });
}

type Cut = NonNullable<FeedStats['cut']>;

/** Why a result that hashed the body is not taken, by the reason the verified body was cut. */
const CUT_COMMENT: Readonly<Record<Cut, string>> = {
    body_line_length: `body not verified past a line longer than ${MAX_BODY_LINE / (1024 * 1024)} MiB`,
    body_rewrites: `body not verified past ${MAX_RELAXED_REWRITES} relaxed line rewrites`,
};

/**
 * mailauth's results for a message whose verified body was cut short: mailauth hashed only the
 * `verified` body bytes before the cut, not the `rest`, so a body hash that reached the cut
 * matched a body that goes on after it (a signed message replayed with text after a 1 MiB line).
 * A DKIM signature whose l= (RFC 6376 section 3.5) ends before the cut, which mailauth tells by
 * body bytes after it, keeps its pass: the body verified is, line by line, the start of the
 * message's, so the bytes it signs are the message's (unless the body verified is empty: simple
 * canonicalization reads that as a CRLF, which the message's body need not start with); `rest`
 * is added to the bytes after l=. Every other passing DKIM signature is `policy` (not verified
 * within the per-message limits, as a skipped one), a passing ARC chain fails (its newest
 * ARC-Message-Signature hashes the body), and a DMARC pass that rested on a signature no longer
 * passing, without an aligned SPF pass, is a fail: whether another passing signature aligns may
 * take a DNS tree walk, and a fail is the safe side. A signature whose body hash reached the cut
 * and did not match is `policy` as well: the hash of the part before the cut says nothing of the
 * whole body's. A pass held by an aligned SPF pass keeps its
 * aligned signature only if that one still passes (else none is named: `dkim.aligned` means a
 * passing one).
 */
function withoutCutPasses(
    verified: VerifiedMessage,
    cut: Cut,
    verifiedBytes: number,
    rest: number,
): Pick<VerifiedMessage, 'res' | 'dmarc'> {
    const comment = CUT_COMMENT[cut];
    const { res, dmarc } = verified;
    const results = res.dkim.results?.map((r): DkimRow => {
        if (r.signingDomain === undefined) return r;
        const pass = r.status.result === 'pass';
        if (!pass && r.status.bodyHashFailed !== true) return r;
        const under = r.status.underSized ?? 0;
        if (under > 0 && verifiedBytes > 0) {
            // its l= ends before the cut: a mismatch there is the message's own
            if (!pass) return r;
            const underSized = under + rest;
            const info = restated(r.info ?? '', dkimResInfo({ result: 'pass', underSized }));
            return { ...r, status: { ...r.status, underSized }, info };
        }
        const info = restated(r.info ?? '', dkimResInfo({ result: 'policy', comment }));
        return { signingDomain: r.signingDomain, status: { result: 'policy' }, info };
    });
    const arc =
        res.arc && res.arc.status.result === 'pass'
            ? {
                  status: { result: 'fail' },
                  info: restated(res.arc.info ?? '', arcResInfo({ result: 'fail', comment })),
              }
            : res.arc;
    const out = { ...res, dkim: { ...res.dkim, results }, arc };
    const passing = dkimOutcome(out).passingDomains;
    const dkimHeld = dmarc.dkimAligned !== null && passing.includes(normalizeDomain(dmarc.dkimAligned));
    if (dmarc.result === 'pass' && dmarc.spfAligned === null && !dkimHeld)
        return { res: out, dmarc: { ...dmarc, result: 'fail', dkimAligned: null } };
    // a pass held by aligned SPF no longer names a signature that does not pass (dkim.aligned)
    return { res: out, dmarc: dmarc.dkimAligned === null || dkimHeld ? dmarc : { ...dmarc, dkimAligned: null } };
}

/** The check's `run`: verifies one message at the data stage and reports facts and header fields. */
export function createMailauthVerifier(opts: MailauthCheckOptions): Check['run'] {
    const settings = opts.settings;
    const mode = settings.dmarc.mode;
    const trustedSealers = new Set(settings.arc.trustedSealers);
    const locals = opts.localDomains.map(normalizeDomain);
    const metrics = opts.metrics;
    // without the thread: mailauth is loaded on first use, and DKIM and ARC keys are read once per key record
    let here: Promise<(input: Readable, o: VerifyOptions, dns: MessageDns) => Promise<VerifiedMessage>> | null = null;
    const verifyHere = async (input: Readable, o: VerifyOptions, dns: MessageDns): Promise<VerifiedMessage> => {
        here ??= Promise.all([import('./verify-message.ts'), import('./key-reuse.ts')]).then(([m, k]) => {
            const keys = k.createKeyStore();
            return (i, v, d) => m.verifyMessage(i, v, d, keys);
        });
        return (await here)(input, o, dns);
    };
    // the shared resolver's cache, which the verification thread keeps a copy of (when it can tell expiries)
    const r = opts.resolver;
    const sharedCache =
        r.expiresAt && r.now && r.countHits ? { expiresAt: r.expiresAt, now: r.now, countHits: r.countHits } : null;
    const limits = {
        maxSignatures: settings.dkim.maxSignatures,
        maxBodyHashes: settings.dkim.maxBodyHashes,
        maxSignedFields: settings.dkim.maxSignedFields,
        maxArcSets: settings.arc.maxSets,
    };

    /**
     * Plans the message's verification copy and has it verified (verify-message.ts): in the
     * verification thread when there is one (verify-thread.ts), else here. A verification lost
     * because the thread was stopped for another message that held it is run once more, from the
     * start (one lost in a crash is not: it may have caused it).
     */
    async function verify(
        ctx: CheckContext,
        signal: AbortSignal,
        authenticated: boolean,
        sessionAuthor: FactValue | undefined,
    ): Promise<{ dns: ScopedResolver; verification: Verification<VerificationPlan>; verified: VerifiedMessage }> {
        const options: VerifyOptions = {
            // SPF is not evaluated for our own users: without a client address mailauth makes no SPF query
            ip: authenticated ? undefined : ctx.client.ip,
            helo: ctx.client.helo ?? undefined,
            sender: ctx.envelope.mailFrom ?? '',
            mta: opts.hostname,
            dmarcMode: mode,
            authenticated,
            minBitLength: settings.minRsaBits,
            rejectRsaSha1: settings.dkim.rejectRsaSha1,
            strict: settings.strict,
            maxResolveCount: settings.spf.maxLookups,
            // SPF gives temperror before the check as a whole runs out of time
            maxElapsedTime: Math.max(1, Math.floor(settings.timeoutMs * 0.8)),
        };
        const startedAt = performance.now();
        const thread = settings.thread ? (opts.thread ?? null) : null;
        // one DNS budget for the message, a second run included, with a part of it kept for DMARC
        const dmarcReserve: DmarcReserve = {
            queries: Math.min(DMARC_RESERVE.queries, Math.floor(settings.maxDnsQueries / 2)),
            bytes: Math.min(DMARC_RESERVE.bytes, Math.floor(MESSAGE_ANSWER_BYTES / 2)),
        };
        const dns = scopedResolver(opts.resolver.resolve, {
            maxQueries: settings.maxDnsQueries,
            maxBytes: MESSAGE_ANSWER_BYTES,
            dmarcReserve,
            signal,
        });
        for (let attempt = 1; ; attempt++) {
            const verification = await openVerification(ctx.message!.stream(), (header) =>
                planVerification(header, {
                    limits,
                    authorDomain: typeof sessionAuthor === 'string' ? sessionAuthor : null,
                    strict: settings.strict,
                }),
            );
            try {
                // a second run has what is left of the check's time
                const left = settings.timeoutMs - (performance.now() - startedAt);
                const run =
                    attempt === 1 ? options : { ...options, maxElapsedTime: Math.max(1, Math.floor(left * 0.8)) };
                const verified = thread
                    ? await thread.verify(verification.stream, run, dns.resolveAdmitted, signal, ctx.sessionId, {
                          max: settings.maxDnsQueries,
                          used: dns.queries,
                          maxBytes: MESSAGE_ANSWER_BYTES,
                          usedBytes: dns.bytes,
                          dmarcReserve,
                          cache: sharedCache,
                          tally: (t) => dns.tally(t),
                      })
                    : await verifyHere(verification.stream, run, { resolve: dns.resolve, dmarc: dns.resolveDmarc });
                return { dns, verification, verified };
            } catch (err) {
                verification.stream.destroy();
                if (!(err instanceof ThreadRestarted) || !err.rerun || attempt > 1 || signal.aborted) throw err;
            }
        }
    }

    async function run(ctx: CheckContext, signal: AbortSignal): Promise<CheckResult> {
        if (!ctx.message) return { facts: {} };
        const authenticated = ctx.client.login !== null;
        const mailFrom = ctx.envelope.mailFrom ?? '';
        const sessionAuthor = ctx.facts['header.from.domain'];
        const { dns, verification, verified } = await verify(ctx, signal, authenticated, sessionAuthor);
        const { bodyBytes, bodyStart, cut } = verification.stats;
        const { res, dmarc } =
            cut === null
                ? verified
                : withoutCutPasses(verified, cut, bodyBytes, Math.max(0, ctx.message.size - bodyStart - bodyBytes));
        const { authorExists } = verified;
        const plan: VerificationPlan = verification.plan;
        signal.throwIfAborted();

        const { spf, spfRes, spfDomain } = spfOutcome(res, authenticated);
        const dkimRows = res.dkim.results ?? [];
        const { signatures, passingDomains } = dkimOutcome(res);
        const dkimSkipped = plan.dkimFound - plan.dkimEvaluated;
        // signed, but nothing could be verified within the limits: a local policy refusal (RFC 8601 section 2.7.1)
        const dkimRes =
            signatures.length === 0 && dkimSkipped > 0 ? 'policy' : bestDkim(signatures.map((r) => r.status.result));
        // the most body bytes after the signed length (l=, RFC 6376 section 3.5) of a passing signature
        const unsignedBytes = signatures
            .filter((r) => r.status.result === 'pass')
            .reduce((most, r) => {
                const under = r.status.underSized;
                return under !== undefined && under > most ? under : most;
            }, 0);
        const headerFrom = res.dkim.headerFrom ?? [];
        const fromFields = res.dkim.fromFields ?? 0;
        const author = dmarc.authorDomain;

        // alignment of an identifier with the author domain, per adkim / aspf of the applied record
        const orgOf = (d: string): string => organizationalDomain(d);
        const aligned = (d: string, kind: 'dkim' | 'spf'): boolean => {
            if (author === null) return false;
            const strict = kind === 'dkim' ? dmarc.adkimStrict : dmarc.aspfStrict;
            if (strict) return d === author;
            return mode === 'rfc7489'
                ? alignedRelaxed(d, author, orgOf)
                : couldAlign(d, author, dmarc.orgDomain, false);
        };

        const rec = dmarc.record;

        // a chain over the limits is not verified and fails, as RFC 8617 section 5.1.1 fails one of more than 50 sets
        const arcOverLimit = plan.arcFields > 0 && !plan.arcVerified;
        const arc = arcOverLimit ? null : res.arc || null;
        const arcRes = arcOverLimit
            ? 'fail'
            : arc?.status.result === 'pass' || arc?.status.result === 'fail'
              ? arc.status.result
              : 'none';
        const trust: ArcTrustOutput = evaluateArcTrust({
            result: arcRes,
            hops: arcRes === 'pass' ? arcHops(arc?.chain) : [],
            trustedSealers,
            authorDomain: author,
            aligned,
        });

        const orgForTemperror = mode === 'rfc7489' && author !== null ? orgOf(author) : dmarc.orgDomain;
        const mayAlign = (d: string | null, strict: boolean): boolean =>
            d !== null && author !== null && couldAlign(d, author, orgForTemperror, strict);
        const alignedTemperror =
            (spfRes === 'temperror' && mayAlign(spfDomain, dmarc.aspfStrict)) ||
            signatures.some(
                (r) =>
                    r.status.result === 'temperror' && mayAlign(normalizeDomain(r.signingDomain!), dmarc.adkimStrict),
            );
        const exactlyAlignedPass =
            author !== null && ((spfRes === 'pass' && spfDomain === author) || passingDomains.includes(author));

        const mailboxes = Math.max(headerFrom.length, fromFields, plan.fromFields);
        const sessionCount = typeof ctx.facts['header.from.count'] === 'number' ? ctx.facts['header.from.count'] : 0;
        const fromCount = Math.max(mailboxes, sessionCount);

        const decision: DispositionOutput = decideDisposition({
            result: dmarc.result,
            authorDomain: author,
            recordDomain: dmarc.recordDomain,
            record: rec,
            authorExists,
            exactlyAlignedPass,
            alignedTemperror,
            fromCount,
            rejectMultipleFrom: settings.dmarc.rejectMultipleFrom,
            fromUnreadable: headerFrom.some(isUnreadableAddress),
            arcTrusted: dmarc.result === 'fail' && trust.vouching !== null,
            authenticated: ctx.client.login !== null,
        });

        const dkimAligned =
            dmarc.dkimAligned !== null ||
            (author !== null && rec === null && passingDomains.some((d) => aligned(d, 'dkim')));

        // The session's own RFC 5322 reading of From (message-facts.ts) against DMARC's (mailauth's
        // address parser). A From written so that the two differ (CFWS inside the domain, RFC 5322
        // section 4.4; an unclosed quote or angle bracket) shows readers one domain and has another
        // judged, or none: flagged for the rules whenever both read at most one mailbox. So is one
        // mailbox in which DMARC finds several domains (`ceo@bank.example@evil.example@`): readers
        // are shown a domain that was never checked.
        const sessionRead = 'header.from.domain' in ctx.facts;
        const sessionDomain = typeof sessionAuthor === 'string' ? foldDomain(sessionAuthor) : null;
        const severalDomainsInOne = dmarc.result === 'permerror' && dmarc.skipReason === 'multiple-author-domains';
        const fromMismatch =
            sessionRead &&
            fromCount <= 1 &&
            (severalDomainsInOne || (author === null ? null : foldDomain(author)) !== sessionDomain);
        const mailFromDomain = domainOf(mailFrom);
        const limited: LimitName[] = [...plan.limits];
        if (verification.stats.cut !== null) limited.push(verification.stats.cut);
        if (dns.exhausted) limited.push('dns_queries');
        if (dns.bytesExhausted) limited.push('dns_bytes');
        const authorDomains = headerFrom.map(domainOf).filter((d): d is string => d !== null);
        const localSender =
            isLocal(mailFromDomain, locals) ||
            isLocal(sessionDomain, locals) ||
            authorDomains.some((d) => isLocal(d, locals));
        // Own-domain protection: only an SPF pass for one of our domains proves a local sender,
        // not one for whatever envelope domain the client chose beside a local From; an aligned
        // or local DKIM signature does, and so does a trusted ARC sealer vouching for the author
        // (a list or forwarder that broke our signature). A temporary error that might have
        // proved it (our SPF; a signature of ours or one that could align with our author)
        // defers instead of refusing or passing; one of some other domain proves nothing.
        const spfLocal = isLocal(spfDomain ?? mailFromDomain, locals);
        const authorLocal = author !== null && isLocal(foldDomain(author), locals);
        const couldProve = (d: string): boolean =>
            isLocal(d, locals) || (authorLocal && mayAlign(d, dmarc.adkimStrict));
        const localProof: FactValue = !localSender
            ? null
            : (spfRes === 'pass' && spfLocal) ||
                dkimAligned ||
                trust.vouching !== null ||
                passingDomains.some((d) => isLocal(d, locals))
              ? 'pass'
              : (spfRes === 'temperror' && spfLocal) ||
                  signatures.some(
                      (r) => r.status.result === 'temperror' && couldProve(normalizeDomain(r.signingDomain!)),
                  )
                ? 'temperror'
                : 'none';
        const facts: Record<string, FactValue> = {
            'spf.result': spfRes,
            'spf.domain': spfDomain,
            'dkim.result': dkimRes,
            'dkim.domains': passingDomains,
            'dkim.aligned': dkimAligned,
            'dkim.count': signatures.length,
            'dkim.skipped': dkimSkipped,
            'dkim.unsigned_bytes': unsignedBytes,
            'dmarc.result': dmarc.result,
            'dmarc.policy': decision.policy,
            'dmarc.disposition': decision.disposition,
            'dmarc.override': decision.override,
            'dmarc.reason': dmarc.result === 'permerror' ? (dmarc.skipReason ?? decision.reason) : decision.reason,
            'dmarc.domain': dmarc.recordDomain,
            'arc.result': arcRes,
            'arc.trusted': trust.trusted,
            'arc.sealer': trust.sealer,
            'header.from.count': fromCount,
            'header.from.mismatch': fromMismatch,
            'local.sender': localSender,
            'local.sender.proof': localProof,
            'auth.temperror': decision.temperror,
            'auth.limits': limited,
            'auth.dns_queries': dns.queries,
        };
        if (author !== null) facts['header.from.domain'] = author;

        const headers: HeaderField[] = [];
        const dkimParts =
            signatures.length > 0
                ? signatures.map((r) => r.info ?? `dkim=${dkimResult(r.status.result)}`)
                : dkimSkipped > 0
                  ? [`dkim=policy (${dkimSkipped} signatures not verified: over the per-message limits)`]
                  : dkimRows.slice(0, 1).map((r) => r.info ?? `dkim=${dkimResult(r.status.result)}`);
        const parts = [
            ...dkimParts,
            // no spf clause for our own users: SPF was not evaluated
            ...(authenticated ? [] : [spf?.info ?? `spf=${spfRes}`]),
            arcOverLimit
                ? `arc=fail (${plan.arcSets} ARC sets: over the per-message limits)`
                : (arc?.info ?? `arc=${arcRes}`),
            dmarcResInfo(dmarc, decision, trust),
        ];
        headers.push({ name: 'Authentication-Results', value: joinAuthResults(opts.hostname, parts) });
        if (spf?.header) headers.push({ name: 'Received-SPF', value: spf.header });

        if (metrics) {
            if (!authenticated) metrics.authChecks.inc({ check: 'spf', result: spfRes });
            metrics.authChecks.inc({ check: 'dkim', result: dkimRes });
            metrics.authChecks.inc({ check: 'dmarc', result: dmarc.result });
            metrics.authChecks.inc({ check: 'arc', result: arcRes });
            if (decision.override !== null) metrics.dmarcOverrides.inc({ reason: decision.override });
            for (const limit of limited) metrics.authLimits.inc({ limit });
            if (dkimSkipped > 0) metrics.dkimSkipped.inc(dkimSkipped);
            metrics.authDnsQueries.observe(dns.queries);
        }
        if (limited.length > 0) {
            opts.log?.warn(
                {
                    session: ctx.sessionId,
                    limits: limited,
                    dkimSignatures: plan.dkimFound,
                    dkimVerified: plan.dkimEvaluated,
                    arcSets: plan.arcSets,
                    dnsQueries: dns.queries,
                    bodyBytesVerified: verification.stats.bodyBytes,
                },
                'per-message verification limits applied',
            );
        }
        return { facts, headers };
    }

    return run;
}
