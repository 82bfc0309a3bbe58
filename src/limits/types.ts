/**
 * The contract of the shared-state store behind rate limits, concurrency limits and
 * greylisting, the typed error its callers branch on, and the argument checks both stores
 * share. It must not hold any state or talk to Redis: the two implementations are
 * redis-store.ts and memory-store.ts, and they must behave identically.
 */

/** A rate: at most `limit` units per `periodMs`, with a burst of `limit`. */
export interface Window {
    readonly limit: number;
    readonly periodMs: number;
}

export interface TakeResult {
    readonly allowed: boolean;
    /** 0 when allowed; otherwise how long until the same cost would be admitted by every window. */
    readonly retryAfterMs: number;
    /**
     * Units of cost 1 still admissible now, smallest across windows: after the charge when
     * allowed, as things stand (nothing charged) when refused.
     */
    readonly remaining: number;
}

/** One counter of a group charged by LimitStore.charge: a key and its one window. */
export interface Counter {
    readonly key: string;
    readonly window: Window;
}

export interface ChargeResult {
    /** Every counter admitted the cost, and all were charged (a negative cost always is). */
    readonly allowed: boolean;
    /** Per counter, in the order given: its own verdict (allowed alone, wait, units left). */
    readonly counters: readonly TakeResult[];
}

export interface AcquireResult {
    readonly acquired: boolean;
    /** Live leases on the key after this call (including the caller's when acquired). */
    readonly active: number;
}

export interface GreylistOptions {
    /** How long a new triplet is refused. */
    readonly delayMs: number;
    /** A retry counts only within this time of the first attempt; later ones start over. */
    readonly retryWindowMs: number;
    /** How long a passed triplet and a client's pass count live after their last use. */
    readonly passTtlMs: number;
    /** Passes (triplets that passed the delay) after which the client is known; 0: never. */
    readonly autoAllowAfter: number;
    /**
     * The records of new triplets a network may make: each record written is charged to
     * `key` (the client's larger network), at most `window.limit` per `window.periodMs`
     * (GCRA), in the same atomic step as the write. Past it a new triplet is not recorded
     * ('capped'). Without it, records are not counted.
     */
    readonly cap?: GreylistCap;
    /**
     * The records of new triplets all networks together may make (the entry's whole share of
     * the store): charged with `cap` in the same step, neither when one refuses. Past it a new
     * triplet is not recorded ('capped_global').
     */
    readonly capAll?: GreylistCap;
    /**
     * When set, the record of a new triplet is provisional: it counts only until this long
     * after the triplet was first seen, unless `greylistKeep` makes it a waiting record (for
     * `retryWindowMs`) first. For an entry in monitor mode, which defers nothing, so no retry
     * follows: only the records of mail the upstream accepted are worth keeping.
     */
    readonly provisionalMs?: number;
}

/** A provisional greylisting record to keep (LimitStore.greylistKeep): its triplet, as the 'new' verdict left it. */
export interface GreylistKeep {
    readonly triplet: string;
    /** The time of the 'new' verdict that wrote the record. */
    readonly firstSeenMs: number;
    readonly retryWindowMs: number;
}

/** The cap on new greylisting records of one network (GreylistOptions.cap). */
export interface GreylistCap {
    readonly key: string;
    readonly window: Window;
}

/**
 * 'capped': a new triplet that was not recorded, as its network made as many records as its
 * cap allows; a retry cannot pass until one is made (the check lets it through).
 * 'capped_global': the same, as all networks together made as many as `capAll` allows.
 */
export type GreylistVerdict = 'new' | 'early' | 'pass' | 'known-client' | 'capped' | 'capped_global';

export interface GreylistResult {
    readonly verdict: GreylistVerdict;
    /**
     * For 'new' and 'early': how long until a retry would pass; for 'capped': until the
     * network may make a record again. 0 otherwise.
     */
    readonly retryAfterMs: number;
    /**
     * Set on the 'pass' that ends the triplet's delay: the pass `greylistCredit` may count for
     * the client. Greylisting itself never counts passes (a recipient the upstream then refuses
     * must not earn the client's network a place on the auto-allowlist).
     */
    readonly passedNow?: true;
}

/**
 * Whether a refusal (or a failure) of a take or acquire of a stage batch stops its greylisting:
 * a recipient refused by an enforced limit is not greylisted, nor one whose enforced
 * `onError: tempfail` limit failed.
 */
export interface StageGate {
    readonly onRefusal: boolean;
    readonly onFailure: boolean;
}

/** One piece of the work of a stage, done with the others of its batch by LimitStore.stage. */
export type StageOp =
    | {
          readonly op: 'take';
          readonly key: string;
          readonly windows: readonly Window[];
          readonly cost: number;
          readonly gate?: StageGate;
      }
    | {
          /** Also a renewal: a holder that has a lease renews it (and takes it again, room allowing, when lost). */
          readonly op: 'acquire';
          readonly key: string;
          readonly holder: string;
          readonly max: number;
          readonly ttlMs: number;
          readonly gate?: StageGate;
      }
    | {
          /** Done after every other op of the batch, and skipped ('skipped') when a gate says so. */
          readonly op: 'greylist';
          readonly triplet: string;
          readonly client: string;
          readonly opts: GreylistOptions;
      };

export type StageValue = TakeResult | AcquireResult | GreylistResult | { readonly verdict: 'skipped' };

/** The answer to one op of a batch: its result, or why it failed (a StoreError or a RangeError). */
export type StageAnswer =
    | { readonly ok: true; readonly value: StageValue }
    | { readonly ok: false; readonly error: Error };

export interface LimitStore {
    /**
     * GCRA over several windows at once, atomically: either every window admits `cost` and
     * all are charged, or none is charged. `cost` 0 only reads. `nowMs` is the caller's clock.
     */
    take(key: string, windows: readonly Window[], cost: number, nowMs: number): Promise<TakeResult>;
    /**
     * GCRA over several counters of one group at once, atomically (one script): either every
     * counter admits `cost` and all are charged, or none is; each counter reports its own
     * verdict. `group` is the Redis Cluster hash tag the counters share. `cost` 0 only reads;
     * a negative cost gives units back (a refund) and is never refused.
     */
    charge(group: string, counters: readonly Counter[], cost: number, nowMs: number): Promise<ChargeResult>;
    /** Forgets the counters (they are full again); resolves how many held anything. */
    reset(group: string, counters: readonly Counter[], nowMs: number): Promise<number>;
    /**
     * Concurrency: a lease per holder id with a TTL, so leases of a dead instance expire.
     * Acquiring a lease the holder already has renews it and always succeeds.
     */
    acquire(key: string, holder: string, max: number, ttlMs: number, nowMs: number): Promise<AcquireResult>;
    /** Extends a live lease; resolves false when the lease had already expired or was released. */
    renew(key: string, holder: string, ttlMs: number, nowMs: number): Promise<boolean>;
    release(key: string, holder: string): Promise<void>;
    /**
     * Greylisting (RFC 6647). The triplet key (e.g. client network, sender, recipient) is
     * built by the caller; `client` (IP or network) is what the auto-allowlist counts.
     */
    greylist(triplet: string, client: string, opts: GreylistOptions, nowMs: number): Promise<GreylistResult>;
    /**
     * Counts one pass of `client` towards `autoAllowAfter` (the record lives `passTtlMs` from
     * now): the caller credits a `passedNow` pass once its recipient proved real.
     */
    greylistCredit(client: string, passTtlMs: number, nowMs: number): Promise<void>;
    /**
     * Makes provisional records (GreylistOptions.provisionalMs) waiting records that count until
     * `retryWindowMs` after they were first seen, as a new triplet's record in enforce mode does;
     * one whose provisional time ran out is written again. A record that changed since (passed,
     * or first seen at another time) is left as it is. The caller keeps the records of a message
     * the upstream accepted.
     */
    greylistKeep(records: readonly GreylistKeep[], nowMs: number): Promise<void>;
    /**
     * The work of one SMTP stage in one round trip (one script call; with Redis Cluster one per
     * slot, sent together): takes and acquires in order, then greylisting unless a gate of a
     * refused or failed op stops it. Each op has the semantics of its own method; answers come
     * in the order given, per op, so one failing op does not hide the others. Never rejects.
     */
    stage(ops: readonly StageOp[], nowMs: number): Promise<StageAnswer[]>;
    /** True when the store answers (always for memory); for readiness checks. Never rejects. */
    ping(): Promise<boolean>;
    /**
     * Calls `listener` each time the store's connection becomes ready: at the start and after
     * every loss (Redis restarted, perhaps empty, or the network back). What the store held may
     * be gone, so the caller takes its concurrency leases again. The memory store has none.
     */
    onReady?(listener: () => void): void;
    readonly kind: 'redis' | 'memory';
    close(): Promise<void>;
}

/**
 * 'timeout': no answer within the command timeout (server hung, overloaded, partitioned).
 * 'unavailable': not connected, connection lost, cluster or replica not serving.
 * 'error': anything else the server or client reported.
 */
export type StoreErrorKind = 'timeout' | 'unavailable' | 'error';

/**
 * Every failure of the shared store; the caller applies its `onError` (allow | tempfail), and
 * that verdict is the whole effect: when Redis runs a timed-out call after all, the Redis store
 * takes back what it did (refunds its charges, releases leases it granted; greylisting records
 * stay), best effort, unless the connection is lost first.
 */
export class StoreError extends Error {
    readonly kind: StoreErrorKind;

    constructor(kind: StoreErrorKind, message: string, options?: { cause?: unknown }) {
        super(message, options);
        this.name = 'StoreError';
        this.kind = kind;
    }
}

/** Largest product limit x period (and cost x period): keeps the exact integer GCRA math within 2^53. */
const MAX_PRODUCT = 2 ** 52;
const MAX_PERIOD_MS = 366 * 24 * 3_600_000;

function fail(message: string): never {
    throw new RangeError(message);
}

function checkKey(what: string, key: string): void {
    if (typeof key !== 'string' || key.length === 0) fail(`${what} must be a non-empty string`);
}

function checkInt(what: string, value: number, min: number, max = Number.MAX_SAFE_INTEGER): void {
    if (!Number.isSafeInteger(value) || value < min || value > max)
        fail(`${what} must be an integer from ${min} to ${max}, not ${String(value)}`);
}

export function checkTake(key: string, windows: readonly Window[], cost: number, nowMs: number): void {
    checkKey('key', key);
    checkInt('nowMs', nowMs, 0);
    if (windows.length === 0) fail('at least one window is needed');
    checkInt('cost', cost, 0);
    const seen = new Set<string>();
    for (const w of windows) {
        checkInt('limit', w.limit, 1);
        checkInt('periodMs', w.periodMs, 1, MAX_PERIOD_MS);
        if (w.limit * w.periodMs > MAX_PRODUCT) fail(`limit x periodMs must not exceed 2^52`);
        if (cost * w.periodMs > MAX_PRODUCT) fail(`cost x periodMs must not exceed 2^52`);
        const id = `${w.limit}/${w.periodMs}`;
        if (seen.has(id)) fail(`window ${id} is given twice`);
        seen.add(id);
    }
}

/** A group name is a Redis Cluster hash tag: no braces, nothing that needs quoting. */
const GROUP_RE = /^[A-Za-z0-9._:-]{1,64}$/;
/** Counters charged together at most (one script call). */
const MAX_COUNTERS = 16;

export function checkCounters(group: string, counters: readonly Counter[], nowMs: number): void {
    if (typeof group !== 'string' || !GROUP_RE.test(group)) fail('group must be 1 to 64 of A-Z a-z 0-9 . _ : -');
    checkInt('nowMs', nowMs, 0);
    if (counters.length === 0 || counters.length > MAX_COUNTERS) fail(`1 to ${MAX_COUNTERS} counters are needed`);
    const seen = new Set<string>();
    for (const c of counters) {
        checkKey('key', c.key);
        checkInt('limit', c.window.limit, 1);
        checkInt('periodMs', c.window.periodMs, 1, MAX_PERIOD_MS);
        if (c.window.limit * c.window.periodMs > MAX_PRODUCT) fail(`limit x periodMs must not exceed 2^52`);
        const id = `${c.key}|${c.window.limit}/${c.window.periodMs}`;
        if (seen.has(id)) fail(`counter ${id} is given twice`);
        seen.add(id);
    }
}

export function checkCharge(group: string, counters: readonly Counter[], cost: number, nowMs: number): void {
    checkCounters(group, counters, nowMs);
    checkInt('cost', Math.abs(cost), 0);
    for (const c of counters) {
        if (Math.abs(cost) * c.window.periodMs > MAX_PRODUCT) fail(`cost x periodMs must not exceed 2^52`);
    }
}

export function checkLease(key: string, holder: string, ttlMs: number, nowMs: number, max?: number): void {
    checkKey('key', key);
    checkKey('holder', holder);
    checkInt('ttlMs', ttlMs, 1, MAX_PERIOD_MS);
    checkInt('nowMs', nowMs, 0);
    if (max !== undefined) checkInt('max', max, 0);
}

export function checkRelease(key: string, holder: string): void {
    checkKey('key', key);
    checkKey('holder', holder);
}

export function checkGreylist(triplet: string, client: string, opts: GreylistOptions, nowMs: number): void {
    checkKey('triplet', triplet);
    checkKey('client', client);
    checkInt('nowMs', nowMs, 0);
    checkInt('delayMs', opts.delayMs, 1, MAX_PERIOD_MS);
    checkInt('retryWindowMs', opts.retryWindowMs, opts.delayMs + 1, MAX_PERIOD_MS);
    checkInt('passTtlMs', opts.passTtlMs, 1, MAX_PERIOD_MS);
    checkInt('autoAllowAfter', opts.autoAllowAfter, 0);
    if (opts.provisionalMs !== undefined) checkInt('provisionalMs', opts.provisionalMs, 1, opts.retryWindowMs);
    for (const cap of [opts.cap, opts.capAll]) {
        if (cap === undefined) continue;
        checkKey('cap key', cap.key);
        checkInt('cap limit', cap.window.limit, 1);
        checkInt('cap periodMs', cap.window.periodMs, 1, MAX_PERIOD_MS);
        if (cap.window.limit * cap.window.periodMs > MAX_PRODUCT) fail(`limit x periodMs must not exceed 2^52`);
    }
}

/** Records kept by one call at most (the recipients of one message the check keeps). */
const MAX_KEEP = 1000;

export function checkGreylistKeep(records: readonly GreylistKeep[], nowMs: number): void {
    checkInt('nowMs', nowMs, 0);
    if (records.length > MAX_KEEP) fail(`at most ${MAX_KEEP} records are kept at once`);
    for (const r of records) {
        checkKey('triplet', r.triplet);
        checkInt('firstSeenMs', r.firstSeenMs, 0, nowMs);
        checkInt('retryWindowMs', r.retryWindowMs, 1, MAX_PERIOD_MS);
    }
}

export function checkGreylistCredit(client: string, passTtlMs: number, nowMs: number): void {
    checkKey('client', client);
    checkInt('nowMs', nowMs, 0);
    checkInt('passTtlMs', passTtlMs, 1, MAX_PERIOD_MS);
}
