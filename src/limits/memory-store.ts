/**
 * The in-process store, used when no Redis is configured: the same GCRA math (gcra.ts), the
 * same lease and greylisting rules as the Lua scripts, decided from the caller's `nowMs`
 * only. Bounded, kind by kind: rate counters and greylisting records at most `maxKeys` each,
 * pregreet passes, known-client records, the caps on new greylisting records (per network, per entry) and
 * leases at most a quarter of that; when a kind is full an expired entry goes first, else the
 * least recently used. A kind a client can fill at
 * will (a greylisting record per recipient, a pregreet pass per IPv6 /64) never pushes out
 * another kind; the limits' counters share one kind, so with more than `maxKeys` of them live
 * (counters per sender address from many networks) the least recently used go first (a process's
 * memory has no onError to fall back on; Redis, with noeviction, refuses the write instead). A live lease is never dropped: with every lease live
 * the store refuses a new one (the limit's onError decides). Expired entries are swept a
 * few at a time on every call. Must not read the wall clock, start timers or share state
 * between instances (each mailwarden process has its own counts).
 */
import { gcra, gcraCounters, type GcraState } from './gcra.ts';
import { keyNames, PASS_KEY_PREFIX } from './keys.ts';
import {
    checkCharge,
    checkCounters,
    checkGreylist,
    checkGreylistCredit,
    checkGreylistKeep,
    checkLease,
    checkRelease,
    checkTake,
    type AcquireResult,
    type ChargeResult,
    type Counter,
    type GreylistKeep,
    type GreylistOptions,
    type GreylistResult,
    type LimitStore,
    type StageAnswer,
    type StageOp,
    StoreError,
    type TakeResult,
    type Window,
} from './types.ts';

type Value =
    | { readonly type: 'rate'; readonly state: GcraState }
    | { readonly type: 'lease'; readonly holders: Map<string, number> }
    /** A waiting record ('g', first seen; provisional while `until` is set: it counts before then) or a passed one ('p', until). */
    | { readonly type: 'triplet'; readonly kind: 'g' | 'p'; readonly time: number; readonly until?: number }
    | { readonly type: 'client'; readonly count: number; readonly until: number };

interface Entry {
    value: Value;
    /** Caller-clock time after which the entry can no longer matter (the Redis key's TTL). */
    expiresAt: number;
}

export interface MemoryStoreOptions {
    /**
     * Rate counters and greylisting records kept at most, each (default 100 000); pregreet
     * passes, known-client records, greylisting caps per network and leases a quarter of it each.
     */
    maxKeys?: number;
}

export interface MemoryLimitStore extends LimitStore {
    readonly kind: 'memory';
    /** Entries currently held, of every kind (expired ones may linger until swept). */
    size(): number;
}

/** Runs `fn` now; its result or its exception becomes the promise's outcome. */
function settle<T>(fn: () => T): Promise<T> {
    try {
        return Promise.resolve(fn());
    } catch (error) {
        return Promise.reject(error instanceof Error ? error : new Error(String(error)));
    }
}

/** Expired entries examined at the old end of the LRU order on each call. */
const SWEEP_PER_CALL = 4;

/**
 * The pools: one per kind of value, the pregreet passes (rate values) apart, and the caps on
 * new greylisting records (rate values, one per client network) apart.
 */
type Kind = Value['type'] | 'pass' | 'network';

/** The pool of a rate key: the pregreet passes have their own. */
const rateKind = (key: string): 'rate' | 'pass' => (key.startsWith(PASS_KEY_PREFIX) ? 'pass' : 'rate');

export function createMemoryStore(options: MemoryStoreOptions = {}): MemoryLimitStore {
    const maxKeys = options.maxKeys ?? 100_000;
    if (!Number.isSafeInteger(maxKeys) || maxKeys < 1) throw new RangeError('maxKeys must be a positive integer');
    const names = keyNames('mw');
    /** One map per kind, each in least recently used order, with its own bound. */
    const pools: Record<Kind, Map<string, Entry>> = {
        rate: new Map(),
        pass: new Map(),
        triplet: new Map(),
        client: new Map(),
        lease: new Map(),
        network: new Map(),
    };
    const bounds: Record<Kind, number> = {
        rate: maxKeys,
        pass: Math.max(1, Math.floor(maxKeys / 4)),
        triplet: maxKeys,
        client: Math.max(1, Math.floor(maxKeys / 4)),
        lease: Math.max(1, Math.floor(maxKeys / 4)),
        network: Math.max(1, Math.floor(maxKeys / 4)),
    };
    const kinds = Object.keys(pools) as Kind[];

    /** Drops a few expired entries from the least recently used end of each kind. */
    const sweep = (now: number): void => {
        for (const kind of kinds) {
            let n = 0;
            for (const [k, e] of pools[kind]) {
                if (n++ >= SWEEP_PER_CALL || e.expiresAt >= now) break;
                pools[kind].delete(k);
            }
        }
    };

    /** The live value of `kind` under `k` (refreshing its LRU position), or undefined. */
    const read = (kind: Kind, k: string, now: number): Value | undefined => {
        const pool = pools[kind];
        const e = pool.get(k);
        if (!e) return undefined;
        pool.delete(k);
        if (e.expiresAt < now) return undefined;
        pool.set(k, e);
        return e.value;
    };

    /**
     * Makes room for one more entry in a full pool: an expired one among the oldest goes, else
     * the oldest. A live lease is never dropped: every lease is looked at (at most a quarter of
     * maxKeys, and only while they are all taken) for one that expired behind live ones, and
     * without one the write fails.
     */
    const makeRoom = (kind: Kind, now: number): void => {
        const pool = pools[kind];
        const looked = kind === 'lease' ? pool.size : SWEEP_PER_CALL;
        let n = 0;
        for (const [k, e] of pool) {
            if (n++ >= looked) break;
            if (e.expiresAt < now) {
                pool.delete(k);
                return;
            }
        }
        if (kind === 'lease') {
            throw new StoreError('error', `memory store full: ${pool.size} concurrency leases held, none expired`);
        }
        const oldest = pool.keys().next();
        if (!oldest.done) pool.delete(oldest.value);
    };

    const write = (k: string, value: Value, expiresAt: number, now: number, kind: Kind = value.type): void => {
        const pool = pools[kind];
        if (!pool.delete(k) && pool.size >= bounds[kind]) makeRoom(kind, now);
        pool.set(k, { value, expiresAt });
    };

    const take = (key: string, windows: readonly Window[], cost: number, now: number): TakeResult => {
        checkTake(key, windows, cost, now);
        sweep(now);
        const ks = windows.map((w) => names.rate(key, w));
        const kind = rateKind(key);
        const states = ks.map((k) => {
            const v = read(kind, k, now);
            return v?.type === 'rate' ? v.state : null;
        });
        const { result, writes } = gcra(states, windows, cost, now);
        writes?.forEach((w, i) => write(ks[i]!, { type: 'rate', state: w.state }, now + w.ttlMs, now, kind));
        return result;
    };

    const charge = (group: string, counters: readonly Counter[], cost: number, now: number): ChargeResult => {
        checkCharge(group, counters, cost, now);
        sweep(now);
        const ks = counters.map((c) => names.counter(group, c.key, c.window));
        const states = ks.map((k) => {
            const v = read('rate', k, now);
            return v?.type === 'rate' ? v.state : null;
        });
        const out = gcraCounters(
            states,
            counters.map((c) => c.window),
            cost,
            now,
        );
        out.writes?.forEach((w, i) => {
            if (w === null) pools.rate.delete(ks[i]!);
            else write(ks[i]!, { type: 'rate', state: w.state }, now + w.ttlMs, now);
        });
        return { allowed: out.allowed, counters: out.results };
    };

    const reset = (group: string, counters: readonly Counter[], now: number): number => {
        checkCounters(group, counters, now);
        let held = 0;
        for (const c of counters) {
            const k = names.counter(group, c.key, c.window);
            if (read('rate', k, now) !== undefined) held++;
            pools.rate.delete(k);
        }
        return held;
    };

    const lease = (op: 'acquire' | 'renew', key: string, holder: string, max: number, ttlMs: number, now: number) => {
        sweep(now);
        const k = names.lease(key);
        const v = read('lease', k, now);
        const holders = v?.type === 'lease' ? v.holders : new Map<string, number>();
        let last = 0;
        for (const [h, until] of holders) {
            if (until <= now) holders.delete(h);
            else if (until > last) last = until;
        }
        let ok = false;
        if (holders.has(holder) || (op === 'acquire' && holders.size < max)) {
            holders.set(holder, now + ttlMs);
            ok = true;
            // A renewal may shorten this holder's lease: the longest one decides the expiry.
            last = 0;
            for (const until of holders.values()) if (until > last) last = until;
        }
        if (holders.size > 0) write(k, { type: 'lease', holders }, last, now);
        else pools.lease.delete(k);
        return { ok, active: holders.size };
    };

    const greylist = (triplet: string, client: string, opts: GreylistOptions, now: number): GreylistResult => {
        checkGreylist(triplet, client, opts, now);
        sweep(now);
        const ck = names.client(client);
        if (opts.autoAllowAfter > 0) {
            const c = read('client', ck, now);
            if (c?.type === 'client' && c.until > now && c.count >= opts.autoAllowAfter) {
                const until = now + opts.passTtlMs;
                write(ck, { type: 'client', count: c.count, until }, until, now);
                return { verdict: 'known-client', retryAfterMs: 0 };
            }
        }
        const tk = names.triplet(triplet);
        const t = read('triplet', tk, now);
        const passUntil = now + opts.passTtlMs;
        // a provisional record counts before its `until` only
        if (t?.type === 'triplet' && !(t.until !== undefined && t.until <= now)) {
            if (t.kind === 'p' && t.time > now) {
                write(tk, { type: 'triplet', kind: 'p', time: passUntil }, passUntil, now);
                return { verdict: 'pass', retryAfterMs: 0 };
            }
            if (t.kind === 'g') {
                const elapsed = now - t.time;
                if (elapsed < opts.delayMs) return { verdict: 'early', retryAfterMs: opts.delayMs - elapsed };
                if (elapsed <= opts.retryWindowMs) {
                    write(tk, { type: 'triplet', kind: 'p', time: passUntil }, passUntil, now);
                    return { verdict: 'pass', retryAfterMs: 0, passedNow: true };
                }
            }
        }
        if (opts.cap !== undefined || opts.capAll !== undefined) {
            // the caps on new records (the network's, the entry's), charged together with the
            // write, neither when one refuses (limits.lua does the same)
            const caps = opts.cap && opts.capAll ? [opts.cap, opts.capAll] : [(opts.cap ?? opts.capAll)!];
            const keys = caps.map((c) => names.greyNetwork(c.key, c.window));
            const states = keys.map((k) => {
                const v = read('network', k, now);
                return v?.type === 'rate' ? v.state : null;
            });
            const windows = caps.map((c) => c.window);
            const { result, writes } = gcra(states, windows, 1, now);
            if (!result.allowed) {
                if (opts.cap !== undefined) {
                    const own = gcra([states[0]!], [windows[0]!], 1, now).result;
                    if (!own.allowed) return { verdict: 'capped', retryAfterMs: own.retryAfterMs };
                }
                return { verdict: 'capped_global', retryAfterMs: result.retryAfterMs };
            }
            writes!.forEach((w, i) => write(keys[i]!, { type: 'rate', state: w.state }, now + w.ttlMs, now, 'network'));
        }
        if (opts.provisionalMs !== undefined) {
            const until = now + opts.provisionalMs;
            write(tk, { type: 'triplet', kind: 'g', time: now, until }, until, now);
        } else {
            write(tk, { type: 'triplet', kind: 'g', time: now }, now + opts.retryWindowMs + 1, now);
        }
        return { verdict: 'new', retryAfterMs: opts.delayMs };
    };

    /** As limits.lua's 'grey-keep': a provisional record first seen then (or none) becomes a waiting one. */
    const greylistKeep = (records: readonly GreylistKeep[], now: number): void => {
        checkGreylistKeep(records, now);
        sweep(now);
        for (const r of records) {
            const tk = names.triplet(r.triplet);
            const t = read('triplet', tk, now);
            if (t !== undefined && !(t.type === 'triplet' && t.time === r.firstSeenMs && t.until !== undefined))
                continue;
            const expiresAt = r.firstSeenMs + r.retryWindowMs + 1;
            if (expiresAt <= now) continue;
            write(tk, { type: 'triplet', kind: 'g', time: r.firstSeenMs }, expiresAt, now);
        }
    };

    const greylistCredit = (client: string, passTtlMs: number, now: number): void => {
        checkGreylistCredit(client, passTtlMs, now);
        sweep(now);
        const ck = names.client(client);
        const c = read('client', ck, now);
        const count = c?.type === 'client' && c.until > now ? c.count + 1 : 1;
        write(ck, { type: 'client', count, until: now + passTtlMs }, now + passTtlMs, now);
    };

    const acquire = (key: string, holder: string, max: number, ttlMs: number, now: number): AcquireResult => {
        checkLease(key, holder, ttlMs, now, max);
        const { ok, active } = lease('acquire', key, holder, max, ttlMs, now);
        return { acquired: ok, active };
    };

    /** A batch in order, greylisting last (as the Redis script does); each op answers on its own. */
    const stage = (ops: readonly StageOp[], now: number): StageAnswer[] => {
        const answers: StageAnswer[] = new Array<StageAnswer>(ops.length);
        let gated = false;
        const order = [...ops.keys()].sort(
            (i, j) => Number(ops[i]!.op === 'greylist') - Number(ops[j]!.op === 'greylist'),
        );
        for (const i of order) {
            const op = ops[i]!;
            try {
                if (op.op === 'greylist') {
                    answers[i] = {
                        ok: true,
                        value: gated ? { verdict: 'skipped' } : greylist(op.triplet, op.client, op.opts, now),
                    };
                    continue;
                }
                const value =
                    op.op === 'take'
                        ? take(op.key, op.windows, op.cost, now)
                        : acquire(op.key, op.holder, op.max, op.ttlMs, now);
                if (op.gate?.onRefusal && !('allowed' in value ? value.allowed : value.acquired)) gated = true;
                answers[i] = { ok: true, value };
            } catch (error) {
                if (op.op !== 'greylist' && op.gate?.onFailure) gated = true;
                answers[i] = { ok: false, error: error instanceof Error ? error : new Error(String(error)) };
            }
        }
        return answers;
    };

    return {
        kind: 'memory',
        take: (key, windows, cost, nowMs) => settle(() => take(key, windows, cost, nowMs)),
        charge: (group, counters, cost, nowMs) => settle(() => charge(group, counters, cost, nowMs)),
        reset: (group, counters, nowMs) => settle(() => reset(group, counters, nowMs)),
        acquire: (key, holder, max, ttlMs, nowMs) => settle(() => acquire(key, holder, max, ttlMs, nowMs)),
        renew: (key, holder, ttlMs, nowMs) =>
            settle(() => {
                checkLease(key, holder, ttlMs, nowMs);
                return lease('renew', key, holder, 0, ttlMs, nowMs).ok;
            }),
        release: (key, holder) =>
            settle(() => {
                checkRelease(key, holder);
                const e = pools.lease.get(names.lease(key));
                if (e?.value.type === 'lease') {
                    e.value.holders.delete(holder);
                    if (e.value.holders.size === 0) pools.lease.delete(names.lease(key));
                }
            }),
        greylist: (triplet, client, opts, nowMs) => settle(() => greylist(triplet, client, opts, nowMs)),
        greylistCredit: (client, passTtlMs, nowMs) => settle(() => greylistCredit(client, passTtlMs, nowMs)),
        greylistKeep: (records, nowMs) => settle(() => greylistKeep(records, nowMs)),
        stage: (ops, nowMs) => Promise.resolve(stage(ops, nowMs)),
        ping: () => Promise.resolve(true),
        size: () => kinds.reduce((n, kind) => n + pools[kind].size, 0),
        close: () =>
            settle(() => {
                for (const kind of kinds) pools[kind].clear();
            }),
    };
}
