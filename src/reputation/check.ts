/**
 * The work of the `reputation` check (declared in src/checks/reputation.ts): what DNS lists and
 * names say about the client, as facts for rules.
 *
 * - helo stage: the address lists (`dnsbl.*`, `dnswl.*`; RFC 5782 section 2.1), the domain
 *   lists about the HELO name (`rhsbl.helo.*`, section 2.2), the HELO name itself (`helo.*`:
 *   syntax of RFC 5321 section 4.1.1.1, an address literal that is not the client, a stranger
 *   naming itself as us, a name that does not resolve) and `client.ptr.generic`.
 * - mail stage: the domain lists about the envelope sender domain (`rhsbl.sender.*`).
 *
 * The address lists and the reverse name are asked when the client connects (prefetch, once the
 * connect stage let it in; the reverse lookup, in a zone the client may run, is given up when the
 * session ends), so the greeting never waits for DNS and the answers are in the resolver's cache
 * by the time the facts are reported. Every lookup goes through the caching resolver and is
 * bounded by the DNS timeout; the lookups a stage starts (the HELO name's A and AAAA, the lists')
 * are given up when the check ends (its signal), unless a caller without a signal (the prefetch)
 * shares them, so a client that names a domain whose servers never answer and leaves holds no
 * socket past its check. The check as a whole has a timeout and the declared failure verdict
 * `ignore`: a dead resolver or list leaves the facts out (rules then treat the client as not
 * listed), it never refuses mail by itself. It decides nothing and sends no reply.
 */
import { isIP } from 'node:net';
import type { Metrics } from '../metrics.ts';
import type { Check, CheckResult } from '../types.ts';
import type { Facts } from '../types.ts';
import { askLists, EMPTY_VERDICT, type ListVerdict, type Resolve } from './lookup.ts';
import { genericPtr, heloFacts, type OwnIdentity } from './names.ts';
import type { ConfiguredSite } from './sites.ts';
import type { ZoneHealth } from './zone-health.ts';

export interface ReputationLists {
    readonly dnsbl: readonly ConfiguredSite[];
    readonly dnswl: readonly ConfiguredSite[];
    readonly rhsbl: readonly ConfiguredSite[];
}

export interface ReputationOptions {
    readonly resolve: Resolve;
    /** `signal`: as for Resolver.reverse (given up once every caller's signal aborted). */
    readonly reverse: (ip: string, signal?: AbortSignal) => Promise<string[]>;
    readonly lists: ReputationLists;
    readonly health: Pick<ZoneHealth, 'healthy' | 'distrust'>;
    /** Longest wait for one DNS answer (the resolver's timeout). */
    readonly dnsTimeoutMs: number;
    readonly own: OwnIdentity;
    readonly metrics?: Pick<Metrics, 'dnsblHits' | 'dnsblErrors' | 'heloChecks'>;
}

/** What the address lists said about one client. */
export interface AddressVerdict {
    readonly dnsbl: ListVerdict;
    readonly dnswl: ListVerdict;
}

/**
 * The lookups of the check, usable on their own: `address(ip)` asks the address lists (the
 * resolver shares and caches the queries, so asking again is cheap), `dnswlCredit(ip)` says
 * whether allow lists vouch for the client (`dnswl.score < 0`), for waits a known sender
 * should skip (greylisting, the pregreet wait).
 */
export class ReputationLookup {
    readonly opts: ReputationOptions;

    constructor(opts: ReputationOptions) {
        this.opts = opts;
    }

    /**
     * `counted`: false for the lookups that only warm the cache or answer another question (the
     * prefetch at connect, the allow-list credit of the pregreet test), so that a client's
     * listing is counted once, by the check, not once per time it was asked.
     */
    async address(ip: string, signal?: AbortSignal, counted = true): Promise<AddressVerdict> {
        const o = this.opts;
        const common = {
            resolve: o.resolve,
            health: o.health,
            timeoutMs: o.dnsTimeoutMs,
            ...(o.metrics ? { metrics: o.metrics } : {}),
            counted,
            ...(signal ? { signal } : {}),
        };
        if (isIP(ip) === 0) return { dnsbl: EMPTY_VERDICT, dnswl: EMPTY_VERDICT };
        const [dnsbl, dnswl] = await Promise.all([
            askLists(ip, o.lists.dnsbl, 'address', common),
            askLists(ip, o.lists.dnswl, 'address', common),
        ]);
        return { dnsbl, dnswl };
    }

    async domain(domain: string, signal?: AbortSignal): Promise<ListVerdict> {
        const o = this.opts;
        return askLists(domain, o.lists.rhsbl, 'domain', {
            resolve: o.resolve,
            health: o.health,
            timeoutMs: o.dnsTimeoutMs,
            ...(o.metrics ? { metrics: o.metrics } : {}),
            ...(signal ? { signal } : {}),
        });
    }

    /**
     * True when allow lists vouch for the client (`dnswl.score < 0`). Never throws and never
     * waits longer than the DNS timeout: without an answer the client has no credit.
     */
    async dnswlCredit(ip: string): Promise<boolean> {
        if (this.opts.lists.dnswl.length === 0) return false;
        try {
            return (await this.address(ip, undefined, false)).dnswl.score < 0;
        } catch {
            return false;
        }
    }
}

/** Whether a name resolves (A or AAAA): true, false (NXDOMAIN or no address), null (no answer). */
async function resolves(
    resolve: Resolve,
    name: string,
    timeoutMs: number,
    signal: AbortSignal,
): Promise<boolean | null> {
    const one = async (type: 'A' | 'AAAA'): Promise<boolean | null> => {
        let timer: NodeJS.Timeout | undefined;
        try {
            const r = await Promise.race([
                resolve(name, type, signal),
                new Promise<never>((_, reject) => {
                    timer = setTimeout(() => reject(new Error('timeout')), timeoutMs);
                }),
            ]);
            return Array.isArray(r) && r.length > 0;
        } catch (err) {
            const code = (err as { code?: unknown } | null)?.code;
            return code === 'ENOTFOUND' || code === 'ENODATA' ? false : null;
        } finally {
            clearTimeout(timer);
        }
    };
    const [a, aaaa] = await Promise.all([one('A'), one('AAAA')]);
    if (a === true || aaaa === true) return true;
    return a === false && aaaa === false ? false : null;
}

/** The first reverse name of the client (confirmed or not), or null; waits at most `timeoutMs`. */
async function firstPtr(reverse: ReputationOptions['reverse'], ip: string, timeoutMs: number): Promise<string | null> {
    let timer: NodeJS.Timeout | undefined;
    try {
        const names = await Promise.race([
            reverse(ip),
            new Promise<string[]>((resolve) => {
                timer = setTimeout(() => resolve([]), timeoutMs);
            }),
        ]);
        return names[0] ?? null;
    } catch {
        return null;
    } finally {
        clearTimeout(timer);
    }
}

/** The zones that listed the client or the sender, for the decision log line ({} when none). */
export function listedZones(facts: Facts): { dnsbl?: readonly string[] } {
    const zones = [facts['dnsbl.listed'], facts['rhsbl.helo.listed'], facts['rhsbl.sender.listed']].flatMap((v) =>
        Array.isArray(v) ? (v as readonly string[]) : [],
    );
    return zones.length > 0 ? { dnsbl: zones } : {};
}

/** The check's `prefetch` and `run` over one lookup: the answers become facts. */
export function createReputationProbe(lookup: ReputationLookup): Pick<Check, 'prefetch' | 'run'> {
    const o = lookup.opts;
    const count = (check: string, result: string): void => o.metrics?.heloChecks.inc({ check, result });
    return {
        prefetch(client, signal) {
            if (isIP(client.ip) === 0) return;
            // the resolver caches and shares queries in flight, so run() finds these answers; the
            // reverse lookup (in a zone the client may run) is given up when the session ends
            lookup.address(client.ip, undefined, false).catch(() => undefined);
            o.reverse(client.ip, signal).catch(() => undefined);
        },
        async run(ctx, signal): Promise<CheckResult> {
            if (ctx.stage === 'mail') {
                const domain = ctx.facts['mail.from.domain'];
                const v =
                    typeof domain === 'string' && domain !== '' ? await lookup.domain(domain, signal) : EMPTY_VERDICT;
                // fact names written out: an object literal with fixed keys is built without hashing
                return { facts: { 'rhsbl.sender.score': v.score, 'rhsbl.sender.listed': v.listed } };
            }
            const ip = ctx.client.ip;
            const helo = ctx.client.helo ?? '';
            const h = heloFacts(helo, ip, o.own);
            const [address, heloLists, heloResolves, ptr] = await Promise.all([
                lookup.address(ip, signal),
                h.domain ? lookup.domain(h.domain, signal) : Promise.resolve(EMPTY_VERDICT),
                h.domain && !signal.aborted
                    ? resolves(o.resolve, h.domain, o.dnsTimeoutMs, signal)
                    : Promise.resolve<boolean | null>(null),
                firstPtr(o.reverse, ip, o.dnsTimeoutMs),
            ]);
            count('syntax', h.syntax === 'invalid' ? 'fail' : 'pass');
            if (h.syntax === 'address-literal') count('literal', h.literalMismatch ? 'fail' : 'pass');
            count('claims_us', h.claimsUs ? 'fail' : 'pass');
            if (h.domain) count('resolves', heloResolves === null ? 'unknown' : heloResolves ? 'pass' : 'fail');
            return {
                facts: {
                    'dnsbl.score': address.dnsbl.score,
                    'dnsbl.listed': address.dnsbl.listed,
                    'dnsbl.zones': address.dnsbl.zones,
                    'dnsbl.delist': address.dnsbl.delist,
                    'dnsbl.errors': address.dnsbl.errors,
                    'dnswl.score': address.dnswl.score,
                    'dnswl.listed': address.dnswl.listed,
                    'rhsbl.helo.score': heloLists.score,
                    'rhsbl.helo.listed': heloLists.listed,
                    'helo.syntax': h.syntax,
                    'helo.literal_mismatch': h.literalMismatch,
                    'helo.claims_us': h.claimsUs,
                    'helo.resolves': heloResolves,
                    'client.ptr.generic': ptr === null ? null : genericPtr(ptr, ip),
                },
            };
        },
    };
}
