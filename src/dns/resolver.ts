/**
 * The product's DNS stub resolver: what SPF, DKIM, DMARC and ARC (through mailauth) and
 * the reverse lookup of SMTP clients use. It asks the configured recursive resolvers in
 * order, `tries` rounds, one UDP exchange per attempt with a per-exchange timeout, and
 * repeats the exchange over TCP when the answer is truncated (RFC 7766 section 5). Answers
 * come back in node:dns `resolve()` shapes and failures as node:dns error codes, because
 * mailauth tells "no record" (ENOTFOUND, ENODATA) from "temporary error" (everything else)
 * by code.
 *
 * In front of the network sits an LRU cache bounded by entries and by an estimate of the
 * bytes its answers hold (a sender chooses how big the answers for its names are: 4,000 A
 * records fit in one 64 KB TCP answer); an answer over 1/64 of the byte bound is not cached,
 * and each store also drops expired entries it comes by. Positive answers live for the smallest
 * TTL of the records used (CNAME chain included), clamped to [minTtl, maxTtl]; NXDOMAIN and
 * NODATA live for min(SOA TTL, SOA MINIMUM) of the SOA in the authority section (RFC 2308
 * section 5), capped by maxNegativeTtl, and are not cached without an SOA; SERVFAIL,
 * REFUSED, timeouts and connection errors are never cached (RFC 2308 section 7 allows it;
 * we prefer to ask again). Identical lookups in flight share one exchange.
 *
 * At most `maxInFlight` lookups are on the network at once (each holds one socket at a time;
 * by default a quarter of the process's open-file limit, read once when the resolver is
 * created): past it a lookup that the cache and the lookups in flight cannot answer fails at
 * once with ECANCELLED, which every caller reads as a temporary error, and is counted as
 * `busy`, and logged (one warning per 10 s at most, with the count since the previous one).
 * A lookup no server answered (each timed out or refused the connection) is logged the same
 * way once no server has answered anything for 10 s: a resolver that stopped answering is
 * named in the log, a single slow name is not.
 * Only the lookups of resolveFresh() (the health probes of DNS lists, a few per list
 * and interval) pass over the cap. Clients choose the names we look up (their reverse zone, their HELO name, their SPF record), and a
 * name whose servers never answer holds its socket for timeout × servers × tries.
 *
 * A caller may pass a signal (the session's, for the lookups started when a client connects):
 * once every caller waiting for a lookup in flight passed one and each has aborted, its
 * exchange is given up (sockets closed, ECANCELLED to them all, nothing cached) and no longer
 * shared (a caller asking from then on starts a lookup of its own), and a lookup asked with a
 * signal already aborted is not started. A caller without a signal keeps the
 * lookup to its end.
 *
 * It must not validate DNSSEC (run a validating resolver such as unbound as `dns.servers`),
 * must not follow referrals (it is a stub, RD set), must not touch node:dns's global state,
 * and must not cache promises (only settled values, so no cached rejection can ever be
 * reported as unhandled).
 */
import { setMaxListeners } from 'node:events';
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import type { Answer, DecodedPacket } from 'dns-packet';
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics.ts';
import { copyAnswer, estimateAnswerBytes } from './answers.ts';
import { dnsError, negativeAnswer, rcodeError, type DnsErrorCode } from './errors.ts';
import { Lru } from './lru.ts';
import {
    isRrtype,
    isSubdomain,
    normalizeName,
    formatServer,
    parseServer,
    reverseName,
    type Rrtype,
    type ServerAddress,
} from './names.ts';
import { systemServers } from './system.ts';
import { ExchangeError, tcpExchange, udpExchange, type Question } from './transport.ts';

export interface Resolver {
    /**
     * mailauth's resolver contract, same shapes as node:dns promises resolve(name, rrtype).
     * Does not use `this`: pass `resolver.resolve` on its own. `signal`: once it aborts, this
     * caller no longer needs the answer; when no caller does, the exchange is given up
     * (ECANCELLED). A third argument that is not an AbortSignal (mailauth passes options
     * there) is ignored.
     */
    resolve(this: void, name: string, rrtype: string, signal?: AbortSignal): Promise<unknown>;
    /**
     * As resolve(), asking the servers even when the answer is cached (and caching what they
     * say): for the health probes of DNS lists, which must see a list as it answers now. Never
     * refused for the lookups in flight being at their cap (ResolverOptions.maxInFlight).
     */
    resolveFresh?(this: void, name: string, rrtype: string): Promise<unknown>;
    /** Reverse lookup (PTR) of an IP address. Does not use `this`. `signal`: as for resolve(). */
    reverse(this: void, ip: string, signal?: AbortSignal): Promise<string[]>;
    stats(): { entries: number; hits: number; misses: number; bytes: number };
    close(): void;
    /**
     * For a copy of the cached answers kept elsewhere (the verification thread's,
     * sender-auth/verify-worker.ts): when the cached answer to this question (data, NXDOMAIN or
     * NODATA) stops being served, in this resolver's clock, or null when none is cached.
     */
    expiresAt?(this: void, name: string, rrtype: string): number | null;
    /** This resolver's clock (milliseconds), the one expiresAt() is in. */
    now?(this: void): number;
    /** Counts `n` questions of `rrtype` answered from such a copy, as hits of this cache. */
    countHits?(this: void, rrtype: string, n: number): void;
}

export interface CacheOptions {
    /** Entries kept at most (least recently used dropped first). 0 disables caching. */
    maxEntries?: number;
    /**
     * Estimated bytes of answers kept at most (least recently used dropped first); an answer
     * estimated over 1/64 of this is not cached.
     */
    maxBytes?: number;
    /** Floor on how long any cached answer lives. */
    minTtlMs?: number;
    /** Ceiling for positive answers. */
    maxTtlMs?: number;
    /** Ceiling for NXDOMAIN/NODATA answers. */
    maxNegativeTtlMs?: number;
}

export interface ResolverOptions {
    /** `IP`, `IPv4:PORT`, `[IPv6]:PORT`; null: the system resolvers (/etc/resolv.conf). */
    servers: readonly string[] | null;
    /** Time allowed for one exchange with one server. */
    timeoutMs: number;
    /** Rounds over the whole server list. */
    tries?: number;
    cache?: CacheOptions;
    metrics?: Pick<Metrics, 'dnsQueries' | 'dnsQueryDuration'>;
    /** Where the warning about lookups refused at the cap goes (at most one per BUSY_LOG_EVERY_MS). */
    logger?: Pick<Logger, 'warn'>;
    /**
     * Lookups on the network at once; past it a lookup fails at once (ECANCELLED, counted as
     * `busy`). Default: lookupCap() of the process's open-file limit, read when the resolver is created.
     */
    maxInFlight?: number;
    /** Clock for cache expiry, in milliseconds. */
    now?: () => number;
}

export const RESOLVER_DEFAULTS = {
    tries: 2,
    /** Lookups on the network at once when the open-file limit cannot be read (not Linux, no /proc). */
    maxInFlight: 4096,
    maxEntries: 10_000,
    maxBytes: 32 * 1024 * 1024,
    minTtlMs: 5_000,
    maxTtlMs: 3_600_000,
    maxNegativeTtlMs: 900_000,
} as const;

/** At most one warning about lookups refused at the cap per this interval (ms, the resolver's clock). */
const BUSY_LOG_EVERY_MS = 10_000;
/**
 * A lookup that timed out or was refused by every server is warned of (at most once per
 * BUSY_LOG_EVERY_MS) once no server has answered anything for this long: one name whose own
 * servers are slow does not, a resolver that stopped answering does.
 */
const SILENT_AFTER_MS = 10_000;

/** The smallest cap on lookups in flight, whatever the open-file limit. */
const MIN_IN_FLIGHT = 256;

/**
 * The cap on lookups in flight for a process whose /proc/self/limits reads `limits` (null:
 * unreadable): a quarter of the soft `Max open files`, at least MIN_IN_FLIGHT, so that DNS
 * sockets cannot take the descriptors the SMTP and upstream connections need, yet the cap only
 * stops what would exhaust them (16,384 with the shipped unit's 65,536). An unlimited or
 * unreadable limit gives RESOLVER_DEFAULTS.maxInFlight.
 */
export function lookupCap(limits: string | null): number {
    const soft = limits?.match(/^Max open files[ \t]+(\d+)[ \t]/m)?.[1];
    const n = soft === undefined ? NaN : Number(soft);
    if (!Number.isSafeInteger(n) || n <= 0) return RESOLVER_DEFAULTS.maxInFlight;
    return Math.max(MIN_IN_FLIGHT, Math.floor(n / 4));
}

/** The process's /proc/self/limits, or null where there is none (not Linux) or it cannot be read. */
function ownLimits(): string | null {
    if (process.platform !== 'linux') return null;
    try {
        return readFileSync('/proc/self/limits', 'utf8');
    } catch {
        return null;
    }
}

/** The syscall name node:dns puts in its errors, for each supported record type. */
const SYSCALLS: Readonly<Record<Rrtype, string>> = {
    A: 'queryA',
    AAAA: 'queryAaaa',
    CNAME: 'queryCname',
    MX: 'queryMx',
    NS: 'queryNs',
    PTR: 'queryPtr',
    SOA: 'querySoa',
    TXT: 'queryTxt',
};

/** A CNAME chain longer than this is treated as a loop. */
const MAX_CNAME_HOPS = 16;

/**
 * PTR names kept of one answer. No caller reads more: SPF's ptr mechanism and %{p} macro take
 * 10 (RFC 7208 section 4.6.4), iprev 5, the reputation check and smtp-server the first.
 */
const MAX_PTR_NAMES = 10;

/** Entries each store looks at for expiry, so a cache whose traffic falls gives memory back. */
const SWEEP_PER_STORE = 8;

type Outcome =
    | { kind: 'data'; value: unknown; ttlMs: number }
    | { kind: 'negative'; code: 'ENOTFOUND' | 'ENODATA'; ttlMs: number | null }
    | { kind: 'error'; code: DnsErrorCode };

type Cached = { kind: 'data'; value: unknown } | { kind: 'negative'; code: 'ENOTFOUND' | 'ENODATA' };

/**
 * A lookup in flight started by a caller with a signal: its exchanges listen to `controller`,
 * which aborts when the last of the callers' signals aborts. A caller without a signal sets
 * `waiting` to Infinity: the lookup then runs to its end.
 */
interface Cancellable {
    readonly controller: AbortController;
    /** Callers whose signal has not aborted yet. */
    waiting: number;
    readonly signals: AbortSignal[];
    readonly onAbort: () => void;
}

/**
 * When every attempt failed, the error reported is the most telling one seen: a server's
 * own answer (SERVFAIL, REFUSED, …) beats a refused or broken connection, which beats
 * silence.
 */
const ERROR_RANK: Partial<Record<DnsErrorCode, number>> = { ETIMEOUT: 0, ECONNREFUSED: 1, EBADRESP: 1 };
const rank = (code: DnsErrorCode): number => ERROR_RANK[code] ?? 2;

function ttlOf(a: Answer): number {
    return 'ttl' in a && typeof a.ttl === 'number' ? a.ttl : 0;
}

/** A root name (`.`) as node:dns prints it: the empty string. */
function hostOf(name: string): string {
    return name === '.' ? '' : name;
}

/** Record data in the shapes node:dns `resolve()` returns. */
function shape(type: Rrtype, rrs: Answer[]): unknown {
    switch (type) {
        case 'A':
        case 'AAAA':
            return rrs.map((a) => String(a.type === type ? a.data : ''));
        case 'PTR':
            return rrs.slice(0, MAX_PTR_NAMES).map((a) => hostOf(String(a.type === type ? a.data : '')));
        case 'CNAME':
        case 'NS':
            return rrs.map((a) => hostOf(String(a.type === type ? a.data : '')));
        case 'TXT':
            // Each character-string is its own element (RFC 1035 section 3.3.14); node:dns reads them as latin1.
            return rrs.map((a) => {
                if (a.type !== 'TXT') return [];
                const chunks = Array.isArray(a.data) ? a.data : [a.data];
                return chunks.map((c) => (typeof c === 'string' ? c : c.toString('latin1')));
            });
        case 'MX':
            return rrs.map((a) =>
                // node:dns (24) adds `type: 'MX'` to each entry; kept for an identical shape
                a.type === 'MX'
                    ? { exchange: hostOf(a.data.exchange), priority: a.data.preference ?? 0, type: 'MX' }
                    : null,
            );
        case 'SOA': {
            const a = rrs[0];
            if (a?.type !== 'SOA') return null;
            return {
                nsname: hostOf(a.data.mname),
                hostmaster: hostOf(a.data.rname),
                serial: a.data.serial ?? 0,
                refresh: a.data.refresh ?? 0,
                retry: a.data.retry ?? 0,
                expire: a.data.expire ?? 0,
                minttl: a.data.minimum ?? 0,
            };
        }
    }
}

/**
 * Reads an answer for (qname, type): the records of that type at the end of the CNAME chain
 * found in the answer section, or a negative answer with its RFC 2308 TTL, or an error for
 * an RCODE other than NOERROR and NXDOMAIN.
 */
export function interpret(p: DecodedPacket, qname: string, type: Rrtype): Outcome {
    const rcode = (p.flags ?? 0) & 0xf;
    if (rcode !== 0 && rcode !== 3) return { kind: 'error', code: rcodeError(rcode) };
    const answers = (p.answers ?? []).filter((a) => a.type !== 'OPT' && (a.class ?? 'IN') === 'IN');
    let current = qname;
    let chainTtl = Infinity;
    const seen = new Set([qname]);
    for (let hop = 0; hop <= MAX_CNAME_HOPS; hop++) {
        const rrs = answers.filter((a) => a.type === type && a.name.toLowerCase() === current);
        if (rrs.length > 0) {
            const ttl = Math.min(chainTtl, ...rrs.map(ttlOf));
            return { kind: 'data', value: shape(type, rrs), ttlMs: ttl * 1000 };
        }
        if (type === 'CNAME') break;
        const cname = answers.find((a) => a.type === 'CNAME' && a.name.toLowerCase() === current);
        if (cname?.type !== 'CNAME') break;
        const next = cname.data.toLowerCase().replace(/\.$/, '');
        if (seen.has(next)) break;
        seen.add(next);
        chainTtl = Math.min(chainTtl, ttlOf(cname));
        current = next;
    }
    const code = rcode === 3 ? 'ENOTFOUND' : 'ENODATA';
    // RFC 2308 section 5: the negative TTL is min(SOA TTL, SOA MINIMUM) of an SOA for an enclosing zone.
    const soa = (p.authorities ?? []).find(
        (a) =>
            a.type === 'SOA' &&
            (isSubdomain(current, a.name.toLowerCase()) || isSubdomain(qname, a.name.toLowerCase())),
    );
    if (soa?.type !== 'SOA') return { kind: 'negative', code, ttlMs: null };
    const ttl = Math.min(chainTtl, ttlOf(soa), soa.data.minimum ?? 0);
    return { kind: 'negative', code, ttlMs: ttl * 1000 };
}

/** The cache's own cost per entry beyond the value: the key, the slot and the map entry. */
const ENTRY_OVERHEAD = 96;

function clamp(value: number, min: number, max: number): number {
    return Math.min(Math.max(value, min), max);
}

export function createResolver(opts: ResolverOptions): Resolver {
    const servers: ServerAddress[] = (opts.servers ?? systemServers()).map(parseServer);
    if (servers.length === 0) throw new Error('no DNS servers configured');
    const timeoutMs = opts.timeoutMs;
    if (!(Number.isFinite(timeoutMs) && timeoutMs > 0)) throw new Error(`bad DNS timeout ${timeoutMs}`);
    const tries = Math.max(1, Math.floor(opts.tries ?? RESOLVER_DEFAULTS.tries));
    const maxInFlight = Math.max(1, Math.floor(opts.maxInFlight ?? lookupCap(ownLimits())));
    const maxEntries = opts.cache?.maxEntries ?? RESOLVER_DEFAULTS.maxEntries;
    const maxBytes = opts.cache?.maxBytes ?? RESOLVER_DEFAULTS.maxBytes;
    const minTtlMs = opts.cache?.minTtlMs ?? RESOLVER_DEFAULTS.minTtlMs;
    const maxTtlMs = opts.cache?.maxTtlMs ?? RESOLVER_DEFAULTS.maxTtlMs;
    const maxNegativeTtlMs = opts.cache?.maxNegativeTtlMs ?? RESOLVER_DEFAULTS.maxNegativeTtlMs;
    const now = opts.now ?? Date.now;
    const metrics = opts.metrics;
    const logger = opts.logger;
    /** Lookups refused at the cap since the last warning, and when that warning was written. */
    let busyRefused = 0;
    let busyLoggedAt = -Infinity;
    /** When a server last answered (any answer, NXDOMAIN included); lookups failed since the last warning. */
    let answeredAt = now();
    let unanswered = 0;
    let silentLoggedAt = -Infinity;
    const serverNames = servers.map(formatServer);

    const cache = new Lru<Cached>(maxEntries, maxBytes);
    const inflight = new Map<string, Promise<Outcome>>();
    const controller = new AbortController();
    // every exchange in flight listens for close(); hundreds at once are normal, not a leak
    setMaxListeners(0, controller.signal);
    let closed = false;
    let hits = 0;
    let misses = 0;

    /** The lookups in flight that their callers may call off, by cache key (see Cancellable). */
    const cancellable = new Map<string, Cancellable>();

    const exchangeOpts = (edns: boolean, signal: AbortSignal) => ({ timeoutMs, edns, signal });

    /** One server: UDP with EDNS(0); without it after a FORMERR (RFC 6891 section 7); TCP after TC. */
    async function ask(server: ServerAddress, q: Question, signal: AbortSignal): Promise<DecodedPacket> {
        let edns = true;
        let packet = await udpExchange(server, q, exchangeOpts(edns, signal));
        if (((packet.flags ?? 0) & 0xf) === 1 && !(packet.additionals ?? []).some((a) => a.type === 'OPT')) {
            edns = false;
            packet = await udpExchange(server, q, exchangeOpts(edns, signal));
        }
        if (packet.flag_tc) packet = await tcpExchange(server, q, exchangeOpts(edns, signal));
        return packet;
    }

    /**
     * Every server in order, `tries` rounds; the first NOERROR or NXDOMAIN answer wins. `signal`
     * aborts the exchange in progress and starts no other.
     */
    async function network(qname: string, type: Rrtype, signal: AbortSignal): Promise<Outcome> {
        const q: Question = { name: qname, type };
        let worst: DnsErrorCode | null = null;
        for (let round = 0; round < tries; round++) {
            for (const server of servers) {
                let outcome: Outcome;
                try {
                    outcome = interpret(await ask(server, q, signal), qname, type);
                } catch (err) {
                    outcome = { kind: 'error', code: err instanceof ExchangeError ? err.code : 'EBADRESP' };
                }
                if (outcome.kind !== 'error') return outcome;
                if (outcome.code === 'ECANCELLED') return outcome;
                if (worst === null || rank(outcome.code) >= rank(worst)) worst = outcome.code;
            }
        }
        return { kind: 'error', code: worst ?? 'ETIMEOUT' };
    }

    function store(key: string, o: Outcome): void {
        const t = now();
        const overhead = ENTRY_OVERHEAD + key.length;
        if (o.kind === 'data') {
            const bytes = overhead + estimateAnswerBytes(o.value);
            cache.set(key, { kind: 'data', value: o.value }, t + clamp(o.ttlMs, minTtlMs, maxTtlMs), bytes);
        } else if (o.kind === 'negative' && o.ttlMs !== null) {
            const ttl = clamp(o.ttlMs, minTtlMs, maxNegativeTtlMs);
            if (ttl > 0) cache.set(key, { kind: 'negative', code: o.code }, t + ttl, overhead);
        }
        cache.sweep(t, SWEEP_PER_STORE);
    }

    function settle(o: Outcome | Cached, syscall: string, hostname: string): unknown {
        if (o.kind === 'data') return copyAnswer(o.value);
        if (o.kind === 'negative') throw negativeAnswer(o.code, syscall, hostname);
        throw dnsError(o.code, syscall, hostname);
    }

    /** A lookup no server answered (timeout or refused by each): warned of once the servers are silent. */
    function noteUnanswered(): void {
        unanswered++;
        const t = now();
        if (t - answeredAt < SILENT_AFTER_MS || t - silentLoggedAt < BUSY_LOG_EVERY_MS) return;
        silentLoggedAt = t;
        logger?.warn(
            { failed: unanswered, silentForMs: t - answeredAt, servers: serverNames },
            'DNS servers not answering: lookups fail as temporary errors (checks that need them answer 451)',
        );
        unanswered = 0;
    }

    function count(type: Rrtype, result: 'hit' | 'miss' | 'error' | 'busy'): void {
        metrics?.dnsQueries.inc({ type, result });
    }

    /** A lookup in flight that the callers with a signal may call off, counting `signal` as one. */
    function cancellableFor(signal: AbortSignal, key: string): Cancellable {
        const c: Cancellable = {
            controller: new AbortController(),
            waiting: 0,
            signals: [],
            onAbort: () => {
                if (--c.waiting !== 0) return;
                c.controller.abort();
                // at once, not when the exchange has wound down: a caller joining now starts afresh
                if (cancellable.get(key) === c) {
                    cancellable.delete(key);
                    inflight.delete(key);
                }
            },
        };
        follow(c, signal);
        return c;
    }

    /** Another caller of the lookup: with a signal, one more to wait for; without, it runs to its end. */
    function follow(c: Cancellable, signal: AbortSignal | undefined): void {
        if (c.waiting === Infinity) return;
        if (signal === undefined) {
            c.waiting = Infinity;
            release(c);
        } else if (!c.signals.includes(signal)) {
            c.waiting++;
            c.signals.push(signal);
            signal.addEventListener('abort', c.onAbort, { once: true });
        }
    }

    function release(c: Cancellable): void {
        for (const s of c.signals) s.removeEventListener('abort', c.onAbort);
        c.signals.length = 0;
    }

    /**
     * `display` is what errors name: the name asked, or the address for reverse(). `fresh`: the
     * cache is not read (an exchange already in flight is shared), its answer is stored.
     */
    function lookup(
        hostname: string,
        type: Rrtype,
        syscall: string,
        display: string,
        fresh: boolean,
        signal: AbortSignal | undefined,
    ): Promise<unknown> {
        let qname: string;
        try {
            qname = normalizeName(hostname, syscall, display);
        } catch (err) {
            count(type, 'error');
            return Promise.reject(err instanceof Error ? err : new Error(String(err)));
        }
        if (closed || signal?.aborted) return Promise.reject(dnsError('ECANCELLED', syscall, display));
        const key = `${type} ${qname}`;
        const cached = fresh ? undefined : cache.get(key, now());
        if (cached) {
            hits++;
            count(type, 'hit');
            return new Promise((resolve) => resolve(settle(cached, syscall, display)));
        }
        const shared = inflight.get(key);
        if (shared) {
            const c = cancellable.get(key);
            if (c) follow(c, signal);
            // Served by another caller's exchange: a hit unless that exchange failed.
            return shared.then((o) => {
                if (o.kind === 'error') count(type, 'error');
                else {
                    hits++;
                    count(type, 'hit');
                }
                return settle(o, syscall, display);
            });
        }
        // the health probes of DNS lists (fresh, a few per list and interval) are never refused:
        // refused, they would take a list that answers out of use until a later probe
        if (!fresh && inflight.size >= maxInFlight) {
            count(type, 'busy');
            busyRefused++;
            const t = now();
            if (t - busyLoggedAt >= BUSY_LOG_EVERY_MS) {
                busyLoggedAt = t;
                logger?.warn(
                    { refused: busyRefused, maxInFlight },
                    'DNS lookups refused: the most allowed are in flight (names whose servers do not answer, or a resolver that stopped answering)',
                );
                busyRefused = 0;
            }
            const err = dnsError('ECANCELLED', syscall, display);
            err.message = `${syscall} ECANCELLED ${display}: ${maxInFlight} DNS lookups in flight, the most at once`;
            return Promise.reject(err);
        }
        misses++;
        const started = performance.now();
        const c = signal ? cancellableFor(signal, key) : null;
        if (c) cancellable.set(key, c);
        const flight = network(qname, type, c ? c.controller.signal : controller.signal)
            .catch((): Outcome => ({ kind: 'error', code: 'EBADRESP' }))
            .then((o) => {
                if (inflight.get(key) === flight) inflight.delete(key);
                if (c) {
                    release(c);
                    if (cancellable.get(key) === c) cancellable.delete(key);
                }
                metrics?.dnsQueryDuration.observe({ type }, (performance.now() - started) / 1000);
                if (o.kind === 'error' && (o.code === 'ETIMEOUT' || o.code === 'ECONNREFUSED')) noteUnanswered();
                else if (o.kind !== 'error' || o.code !== 'ECANCELLED') answeredAt = now();
                if (!closed) store(key, o);
                return o;
            });
        inflight.set(key, flight);
        return flight.then((o) => {
            count(type, o.kind === 'error' ? 'error' : 'miss');
            return settle(o, syscall, display);
        });
    }

    const resolveType = (name: string, rrtype: string, fresh: boolean, signal?: AbortSignal): Promise<unknown> => {
        // like node:dns, a missing type means A
        const type = rrtype === undefined ? 'A' : typeof rrtype === 'string' ? rrtype.toUpperCase() : '';
        if (!isRrtype(type)) {
            const err = new TypeError(`DNS record type "${String(rrtype)}" is not supported`) as TypeError & {
                code: string;
            };
            err.code = 'ERR_INVALID_ARG_VALUE';
            return Promise.reject(err);
        }
        return lookup(name, type, SYSCALLS[type], name, fresh, signal instanceof AbortSignal ? signal : undefined);
    };

    return {
        resolve: (name: string, rrtype: string, signal?: AbortSignal): Promise<unknown> =>
            resolveType(name, rrtype, false, signal),
        resolveFresh: (name: string, rrtype: string): Promise<unknown> => resolveType(name, rrtype, true),
        reverse(ip: string, signal?: AbortSignal): Promise<string[]> {
            const name = typeof ip === 'string' ? reverseName(ip) : null;
            if (name === null) return Promise.reject(dnsError('EINVAL', 'getHostByAddr', String(ip)));
            const s = signal instanceof AbortSignal ? signal : undefined;
            return lookup(name, 'PTR', 'getHostByAddr', ip, false, s) as Promise<string[]>;
        },
        stats() {
            return { entries: cache.size, hits, misses, bytes: cache.bytes };
        },
        expiresAt(name: string, rrtype: string): number | null {
            const type = typeof rrtype === 'string' ? rrtype.toUpperCase() : '';
            if (!isRrtype(type) || closed) return null;
            let qname: string;
            try {
                qname = normalizeName(name, SYSCALLS[type], name);
            } catch {
                return null;
            }
            return cache.expiresAt(`${type} ${qname}`, now()) ?? null;
        },
        now: () => now(),
        countHits(rrtype: string, n: number): void {
            const type = typeof rrtype === 'string' ? rrtype.toUpperCase() : '';
            if (!isRrtype(type) || !(n > 0)) return;
            hits += n;
            metrics?.dnsQueries.inc({ type, result: 'hit' }, n);
        },
        close() {
            closed = true;
            controller.abort();
            for (const c of cancellable.values()) {
                release(c);
                c.controller.abort();
            }
            cancellable.clear();
            cache.clear();
            inflight.clear();
        },
    };
}

/**
 * The callback form smtp-server's `resolver` option takes, over `resolver.reverse()`.
 */
export function smtpServerResolver(resolver: Pick<Resolver, 'reverse'>): {
    reverse(ip: string, callback: (err: Error | null, hostnames?: string[]) => void): void;
} {
    return {
        reverse(ip, callback) {
            resolver.reverse(ip).then(
                (names) => callback(null, names),
                (err: unknown) => callback(err instanceof Error ? err : new Error(String(err))),
            );
        },
    };
}
