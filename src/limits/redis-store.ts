/**
 * The shared store in Redis (single server, Sentinel or Cluster), so that every mailwarden
 * instance enforces the same limits. Every decision is a call of one Lua script (limits.lua) sent
 * with EVALSHA, falling back to EVAL when the server lost its script cache; the script sets a
 * TTL on every key it writes and takes the time from the caller. A call carries a list of
 * operations, so the work of a whole SMTP stage is one round trip (with Redis Cluster, one call
 * per hash slot, sent together, and greylisting after them).
 *
 * It fails fast instead of queueing: no offline queue, no command retries and a deadline per
 * operation, so a dead or hung Redis costs at most `commandTimeoutMs` (and one turn of the event
 * loop) and surfaces as a StoreError the caller turns into allow or tempfail. The deadline must
 * not count our own stalls: a reply that arrived while our event loop was blocked is read
 * before the deadline is called. A timed-out script call still runs when
 * Redis gets to it: its late reply is awaited and what it did is undone (charges refunded,
 * leases it granted released), so the caller's onError verdict is the whole effect of the
 * decision; greylisting records are not undone, and nothing is when the connection is lost
 * first. The client reconnects by itself; recovery needs no restart. Each time the connection
 * is ready (again) it tells the onReady listeners, as a restarted Redis may have lost every key.
 * It must not log secrets (URLs are never logged), must not read the server clock in scripts,
 * and must never let an ioredis error event go unhandled.
 */
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { Cluster, Redis, type RedisOptions } from 'ioredis';
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics.ts';
import { keyNames } from './keys.ts';
import { hashSlot } from './slot.ts';
import {
    StoreError,
    checkCharge,
    checkCounters,
    checkGreylist,
    checkGreylistCredit,
    checkGreylistKeep,
    checkLease,
    checkRelease,
    checkTake,
    type AcquireResult,
    type GreylistKeep,
    type GreylistOptions,
    type GreylistResult,
    type GreylistVerdict,
    type LimitStore,
    type StageAnswer,
    type StageOp,
    type StageValue,
    type StoreErrorKind,
    type TakeResult,
    type Window,
} from './types.ts';

export interface RedisStoreOptions {
    /** `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]` or `rediss://…` (one server). */
    url?: string;
    /** Cluster seed nodes, `host:port` each. */
    cluster?: readonly string[];
    /** Sentinels to ask for the current master named `sentinelName`. */
    sentinels?: readonly { host: string; port: number }[];
    sentinelName?: string;
    /** For cluster nodes and the master found through Sentinel (a URL carries its own). */
    username?: string;
    password?: string;
    sentinelPassword?: string;
    /** Longest wait for one store operation; the answer is then a StoreError 'timeout'. */
    commandTimeoutMs: number;
    /** Longest wait for a TCP connection (default 1000). */
    connectTimeoutMs?: number;
    /** First part of every key name (default 'mw'). */
    prefix?: string;
    metrics?: Pick<Metrics, 'redisErrors' | 'redisCommandDuration' | 'redisLateReplies'>;
    /** `debug` (optional) hears what became of replies that came after the timeout. */
    logger?: Pick<Logger, 'warn' | 'info'> & Partial<Pick<Logger, 'debug'>>;
    /** At most one error log line per this interval (default 10 000 ms); the rest are counted. */
    errorLogIntervalMs?: number;
}

export interface RedisLimitStore extends LimitStore {
    readonly kind: 'redis';
    /** Resolves once the connection is ready; rejects with StoreError 'unavailable' after `timeoutMs`. */
    waitUntilReady(timeoutMs: number): Promise<void>;
}

const lua = (name: string): string => readFileSync(new URL(`./${name}`, import.meta.url), 'utf8');
const SCRIPTS = { mwLimits: lua('limits.lua') };

type ScriptCall = (...args: (string | number)[]) => Promise<unknown>;
type Scripted = Record<keyof typeof SCRIPTS, ScriptCall>;

/** Reconnect soon after a loss, then at most every 2 s (ioredis' default backs off to 5 s). */
export function reconnectDelay(times: number): number {
    return Math.min(50 * 2 ** Math.min(times, 6), 2_000) + Math.floor(Math.random() * 100);
}

const UNAVAILABLE =
    /enableOfflineQueue|Connection is closed|max retries per request|isn't ready|ECONNREFUSED|ECONNRESET|EPIPE|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|All sentinels are unreachable|Failed to refresh slots cache|None of startup nodes|^(LOADING|CLUSTERDOWN|MASTERDOWN|TRYAGAIN|READONLY|BUSY|NOREPLICAS|MOVED|ASK)\b/;

/** Turns whatever ioredis rejected with into a StoreError. */
export function classifyRedisError(error: unknown): StoreError {
    if (error instanceof StoreError) return error;
    const err = error instanceof Error ? error : new Error(String(error));
    let kind: StoreErrorKind = 'error';
    if (/Command timed out/.test(err.message)) kind = 'timeout';
    else if (err.name === 'MaxRetriesPerRequestError' || UNAVAILABLE.test(err.message)) kind = 'unavailable';
    return new StoreError(kind, `Redis ${kind}: ${err.message}`, { cause: err });
}

function parseSeed(seed: string): { host: string; port: number } {
    const m = /^\[?([^\]]+?)\]?:(\d{1,5})$/.exec(seed.trim());
    if (!m) throw new TypeError(`cluster seed "${seed}" is not host:port`);
    return { host: m[1]!, port: Number(m[2]) };
}

function numbers(reply: unknown, n: number): number[] {
    if (!Array.isArray(reply) || reply.length < n) throw new StoreError('error', 'unexpected reply from Redis script');
    return reply.slice(0, n).map(Number);
}

/** The answers of a script call: one per operation sent. */
function answers(reply: unknown, n: number): unknown[] {
    if (!Array.isArray(reply) || reply.length !== n)
        throw new StoreError('error', 'unexpected reply from Redis script');
    return reply;
}

/** The keys and arguments of one script operation. */
type ScriptOp = readonly [keys: readonly string[], args: readonly (string | number)[]];
/** From an operation's reply, the operation that undoes what it did, or null when it changed nothing. */
type Reverse = (reply: unknown) => ScriptOp | null;

/**
 * What became of a call whose reply came after the deadline: 'undone' (its charges refunded,
 * the leases it granted released), 'unchanged' (it had charged and granted nothing: refused,
 * or only renewing), 'kept' (calls that are not undone: greylisting, renew, release, reads),
 * 'failed' (the undo failed).
 */
type LateResult = 'undone' | 'unchanged' | 'kept' | 'failed' | 'lost';

/**
 * Calls past their deadline whose result is still awaited, at most: each holds its command and
 * its closures (about 7 KB). A Redis that is paused or behind a black hole keeps the TCP
 * connection up and answers nothing, so without a bound every decision would add one for as
 * long as it lasts. Past this many, or once the oldest has waited STUCK_AFTER_MS, the
 * connection is dropped: the calls waiting on it end (`lost`, nothing undone) and the client
 * connects again.
 */
const MAX_LATE_CALLS = 1000;
/** How long the oldest late call may wait before the connection is taken as stuck (at least; 10 command timeouts when longer). */
const STUCK_AFTER_MS = 30_000;

/** Operations of one script call: their keys (KEYS) and arguments after the time (ARGV[2…]). */
class Batch {
    readonly keys: string[] = [];
    readonly args: (string | number)[] = [];
    readonly reverses: (Reverse | null)[] = [];
    size = 0;

    add(keys: readonly string[], args: readonly (string | number)[], reverse?: Reverse): this {
        this.keys.push(...keys);
        this.args.push(...args);
        this.reverses.push(reverse ?? null);
        this.size++;
        return this;
    }

    /** The operations that undo what this batch did, from its replies (empty when there is nothing to undo). */
    undo(replies: readonly unknown[]): Batch {
        const out = new Batch();
        this.reverses.forEach((reverse, i) => {
            const op = reverse?.(replies[i]);
            if (op) out.add(...op);
        });
        return out;
    }
}

const windowArgs = (windows: readonly Window[]): number[] => windows.flatMap((w) => [w.limit, w.periodMs]);

export function createRedisStore(options: RedisStoreOptions): RedisLimitStore {
    const forms = [options.url, options.cluster, options.sentinels].filter((x) => x !== undefined).length;
    if (forms !== 1) throw new TypeError('give exactly one of url, cluster or sentinels');
    const timeoutMs = options.commandTimeoutMs;
    if (!Number.isSafeInteger(timeoutMs) || timeoutMs < 1) throw new RangeError('commandTimeoutMs must be >= 1');
    const { metrics, logger } = options;
    const names = keyNames(options.prefix ?? 'mw');
    const logEvery = options.errorLogIntervalMs ?? 10_000;

    const common: RedisOptions = {
        enableOfflineQueue: false,
        maxRetriesPerRequest: 0,
        // No ioredis commandTimeout: it would drop a late reply, which must be read to undo
        // what the timed-out call did. The store's own deadline (run) bounds every wait.
        connectTimeout: options.connectTimeoutMs ?? 1_000,
        // How long close() waits for a dead socket to close (ioredis' 2 s would hold up exit).
        disconnectTimeout: timeoutMs,
        enableReadyCheck: true,
        autoResubscribe: false,
        connectionName: 'mailwarden',
        // After a failover the old master answers READONLY: reconnect to find the new one.
        reconnectOnError: (err) => err.message.startsWith('READONLY'),
    };
    let redis: Redis | Cluster;
    if (options.url !== undefined) {
        redis = new Redis(options.url, { ...common, retryStrategy: reconnectDelay });
    } else if (options.cluster !== undefined) {
        if (options.cluster.length === 0) throw new TypeError('cluster needs at least one seed');
        redis = new Cluster(options.cluster.map(parseSeed), {
            enableOfflineQueue: false,
            enableReadyCheck: true,
            clusterRetryStrategy: reconnectDelay,
            slotsRefreshTimeout: options.connectTimeoutMs ?? 1_000,
            redisOptions: { ...common, username: options.username, password: options.password },
        });
    } else {
        if (!options.sentinelName) throw new TypeError('sentinels need sentinelName (the master name)');
        redis = new Redis({
            ...common,
            sentinels: options.sentinels!.map((s) => ({ host: s.host, port: s.port })),
            name: options.sentinelName,
            username: options.username,
            password: options.password,
            sentinelPassword: options.sentinelPassword,
            retryStrategy: reconnectDelay,
            sentinelRetryStrategy: reconnectDelay,
        });
    }
    for (const [name, script] of Object.entries(SCRIPTS)) redis.defineCommand(name, { lua: script });
    const scripts = redis as unknown as Scripted;

    // Errors: always handled, always counted, logged at most once per interval.
    let lastLog = -Infinity;
    let suppressed = 0;
    let failing = false;
    const report = (err: Error, source: 'operation' | 'connection'): void => {
        metrics?.redisErrors.inc();
        failing = true;
        const now = performance.now();
        if (now - lastLog < logEvery) {
            suppressed++;
            return;
        }
        lastLog = now;
        logger?.warn({ source, error: err.message, suppressed }, 'Redis error; rate limits use their onError policy');
        suppressed = 0;
    };
    const onConnectionError = (err: unknown): void =>
        report(err instanceof Error ? err : new Error(String(err)), 'connection');
    redis.on('error', onConnectionError);
    if (redis instanceof Cluster) redis.on('node error', onConnectionError);
    /** LimitStore.onReady: told each time the connection is ready, the leases held may be gone. */
    const readyListeners: (() => void)[] = [];
    redis.on('ready', () => {
        if (failing) logger?.info({ suppressed }, 'Redis connection ready again');
        failing = false;
        for (const listener of readyListeners) {
            try {
                listener();
            } catch (err) {
                logger?.warn(
                    { error: err instanceof Error ? err.message : String(err) },
                    'Redis ready listener failed',
                );
            }
        }
    });

    /**
     * What a call did that came back after its deadline: the caller has applied its onError
     * verdict, so whatever the call did is undone (best effort; the undo has no deadline of its
     * own but fails when the connection does). Counted by outcome, logged at debug.
     */
    const lateReply = <T>(command: string, value: T, undo: ((value: T) => Promise<number>) | undefined): void => {
        const counted = (result: LateResult, fields: Record<string, unknown> = {}): void => {
            metrics?.redisLateReplies.inc({ result });
            logger?.debug?.({ command, result, ...fields }, 'Redis answered after the timeout');
        };
        if (undo === undefined) return counted('kept');
        undo(value).then(
            (undone) => counted(undone > 0 ? 'undone' : 'unchanged', { undone }),
            (error: unknown) => counted('failed', { error: classifyRedisError(error).message }),
        );
    };

    /** Calls past their deadline still waiting for Redis: their start times, oldest first. */
    const late = new Map<symbol, number>();
    const stuckAfterMs = Math.max(STUCK_AFTER_MS, 10 * timeoutMs);
    let lastDrop = -Infinity;
    /** Drops the connection when too many calls wait on it, or one waited too long (see MAX_LATE_CALLS). */
    const dropIfStuck = (now: number): void => {
        const oldest = late.values().next().value;
        const stuck = late.size > MAX_LATE_CALLS || (oldest !== undefined && now - oldest > stuckAfterMs);
        if (!stuck || now - lastDrop < stuckAfterMs) return;
        lastDrop = now;
        logger?.warn(
            { waiting: late.size },
            'Redis answers nothing: dropping the connection so the calls waiting on it end (their effects are not undone)',
        );
        redis.disconnect(true);
    };
    /** Waits for the result of a call whose deadline passed, then deals with what it did. */
    const awaitLate = <T>(
        command: string,
        start: number,
        work: Promise<T>,
        undo?: (value: T) => Promise<number>,
    ): void => {
        const token = Symbol(command);
        late.set(token, start);
        work.then(
            (value) => {
                late.delete(token);
                lateReply(command, value, undo);
            },
            () => {
                late.delete(token);
                metrics?.redisLateReplies.inc({ result: 'lost' });
            },
        );
        dropIfStuck(performance.now());
    };

    let closed = false;
    /**
     * Runs one store operation under the deadline, with timing, error counting and typing. When
     * the deadline passes first, `undo` is given the operation's late result, if one comes; it
     * reverses what the operation did and resolves how many things it reversed.
     */
    const run = async <T>(command: string, fn: () => Promise<T>, undo?: (value: T) => Promise<number>): Promise<T> => {
        if (closed) throw new StoreError('unavailable', 'the Redis store is closed');
        const start = performance.now();
        let timer: NodeJS.Timeout | undefined;
        let expiry: NodeJS.Immediate | undefined;
        let work: Promise<T>;
        const deadline = new Promise<never>((_, reject) => {
            timer = setTimeout(() => {
                // The timer runs on our own time: after our event loop was blocked (another
                // session's work), timers run before the I/O phase reads a reply that has been
                // waiting in the socket. So pending I/O is read first (an immediate runs after
                // it): a reply read then settles the race and cancels this in `finally`. Only a
                // call still unanswered expires, one loop turn later; it waits for its late result.
                expiry = setImmediate(() => {
                    awaitLate(command, start, work, undo);
                    reject(new StoreError('timeout', `Redis did not answer ${command} within ${timeoutMs} ms`));
                });
            }, timeoutMs);
        });
        try {
            work = fn();
        } catch (error) {
            work = Promise.reject(error instanceof Error ? error : new Error(String(error)));
        }
        try {
            return await Promise.race([work, deadline]);
        } catch (error) {
            const err = classifyRedisError(error);
            report(err, 'operation');
            throw err;
        } finally {
            clearTimeout(timer);
            clearImmediate(expiry);
            metrics?.redisCommandDuration.observe({ command }, (performance.now() - start) / 1000);
        }
    };

    const isCluster = redis instanceof Cluster;
    /** One script call; resolves its answers, one per operation. */
    const call = async (batch: Batch, now: number): Promise<unknown[]> =>
        answers(await scripts.mwLimits(batch.keys.length, ...batch.keys, now, ...batch.args), batch.size);
    /**
     * The undo of a script call, for run: from the call's late replies, one call that refunds
     * what it charged and releases the leases it granted, at the time of the call it undoes (so
     * a refund is exactly the charge taken back). Resolves how many operations it undid.
     */
    const undoCall =
        (batch: Batch, now: number) =>
        async (replies: unknown[]): Promise<number> => {
            const undo = batch.undo(replies);
            if (undo.size > 0) await call(undo, now);
            return undo.size;
        };

    /** The script operation that charges `cost` on `keys`, one per window. */
    const chargeOp = (keys: readonly string[], windows: readonly Window[], cost: number): (string | number)[] => [
        'charge',
        keys.length,
        cost,
        ...windowArgs(windows),
    ];
    /** A charge of `cost` on GCRA states given back: the same keys charged -cost (never refused). */
    const refund =
        (keys: readonly string[], windows: readonly Window[], cost: number): Reverse =>
        (reply) =>
            numbers(reply, 1)[0] === 1 ? [keys, chargeOp(keys, windows, -cost)] : null;

    const addTake = (b: Batch, key: string, windows: readonly Window[], cost: number, gate: boolean): Batch => {
        const keys = windows.map((w) => names.rate(key, w));
        return b.add(
            keys,
            ['take', windows.length, cost, gate ? 1 : 0, ...windowArgs(windows)],
            cost > 0 ? refund(keys, windows, cost) : undefined,
        );
    };
    const addLease = (
        b: Batch,
        op: 'acquire' | 'renew',
        key: string,
        holder: string,
        max: number,
        ttl: number,
        gate: boolean,
    ) => {
        const keys = [names.lease(key)];
        // Only a lease the call granted is released: a renewal leaves the lease the holder had.
        const release: Reverse = (reply) => (numbers(reply, 3)[2] === 1 ? [keys, ['release', holder]] : null);
        return b.add(keys, [op, holder, max, ttl, gate ? 1 : 0], op === 'acquire' ? release : undefined);
    };
    const addGreylist = (b: Batch, triplet: string, client: string, o: GreylistOptions): Batch =>
        b.add(
            [
                names.triplet(triplet),
                names.client(client),
                ...(o.cap ? [names.greyNetwork(o.cap.key, o.cap.window)] : []),
                ...(o.capAll ? [names.greyNetwork(o.capAll.key, o.capAll.window)] : []),
            ],
            [
                'greylist',
                o.delayMs,
                o.retryWindowMs,
                o.passTtlMs,
                o.autoAllowAfter,
                o.provisionalMs ?? 0,
                o.cap?.window.limit ?? 0,
                o.cap?.window.periodMs ?? 0,
                o.capAll?.window.limit ?? 0,
                o.capAll?.window.periodMs ?? 0,
            ],
        );

    const takeResult = (answer: unknown): TakeResult => {
        const [allowed, retryAfterMs, remaining] = numbers(answer, 3) as [number, number, number];
        return { allowed: allowed === 1, retryAfterMs, remaining };
    };
    const acquireResult = (answer: unknown): AcquireResult => {
        const [ok, active] = numbers(answer, 2) as [number, number];
        return { acquired: ok === 1, active };
    };
    const greylistResult = (answer: unknown): GreylistResult | { verdict: 'skipped' } => {
        if (!Array.isArray(answer) || answer.length < 3) throw new StoreError('error', 'unexpected reply from Redis');
        const verdict = String(answer[0]);
        if (verdict === 'skipped') return { verdict };
        const result = { verdict: verdict as GreylistVerdict, retryAfterMs: Number(answer[1]) };
        return Number(answer[2]) === 1 ? { ...result, passedNow: true } : result;
    };

    /**
     * Greylisting as separate calls, for a Cluster: the triplet, client and cap keys have their
     * own hash tags, so they may sit in different slots. A new triplet is charged to its
     * network's cap, then to the entry's cap on all new records, after it was written, and
     * removed again when a cap refuses (the network's charge stays when the entry's cap
     * refuses): not atomic, but every record past a cap is gone once its call ends.
     */
    const greylistSteps = async (
        triplet: string,
        client: string,
        o: GreylistOptions,
        now: number,
    ): Promise<GreylistResult> => {
        const ck = names.client(client);
        if (o.autoAllowAfter > 0) {
            const [known] = await call(
                new Batch().add([ck], ['grey-client-check', o.passTtlMs, o.autoAllowAfter]),
                now,
            );
            if (numbers(known, 1)[0] === 1) return { verdict: 'known-client', retryAfterMs: 0 };
        }
        const tk = names.triplet(triplet);
        const [reply] = await call(
            new Batch().add([tk], ['grey-triplet', o.delayMs, o.retryWindowMs, o.passTtlMs, o.provisionalMs ?? 0]),
            now,
        );
        const result = greylistResult(reply) as GreylistResult;
        if (result.verdict !== 'new') return result;
        for (const [cap, verdict] of [
            [o.cap, 'capped'],
            [o.capAll, 'capped_global'],
        ] as const) {
            if (cap === undefined) continue;
            const [charged] = await call(
                new Batch().add(
                    [names.greyNetwork(cap.key, cap.window)],
                    ['take', 1, 1, 0, ...windowArgs([cap.window])],
                ),
                now,
            );
            const taken = takeResult(charged);
            if (taken.allowed) continue;
            await call(new Batch().add([tk], ['grey-forget', now]), now);
            return { verdict, retryAfterMs: taken.retryAfterMs };
        }
        return result;
    };

    const checkOp = (op: StageOp, now: number): void => {
        if (op.op === 'take') checkTake(op.key, op.windows, op.cost, now);
        else if (op.op === 'acquire') checkLease(op.key, op.holder, op.ttlMs, now, op.max);
        else checkGreylist(op.triplet, op.client, op.opts, now);
    };
    const addOp = (b: Batch, op: Exclude<StageOp, { op: 'greylist' }>): Batch =>
        op.op === 'take'
            ? addTake(b, op.key, op.windows, op.cost, op.gate?.onRefusal === true)
            : addLease(b, 'acquire', op.key, op.holder, op.max, op.ttlMs, op.gate?.onRefusal === true);
    const valueOf = (op: StageOp, answer: unknown): StageValue =>
        op.op === 'take' ? takeResult(answer) : op.op === 'acquire' ? acquireResult(answer) : greylistResult(answer);
    const refused = (value: StageValue): boolean =>
        'allowed' in value ? !value.allowed : 'acquired' in value ? !value.acquired : false;
    const failed = (error: unknown): StageAnswer => ({
        ok: false,
        error: error instanceof Error ? error : new Error(String(error)),
    });

    /** LimitStore.stage: one script call (one per slot in a Cluster); never rejects. */
    const stage = async (ops: readonly StageOp[], now: number): Promise<StageAnswer[]> => {
        const out = new Array<StageAnswer>(ops.length);
        const limits: number[] = [];
        const greylists: number[] = [];
        let gated = false;
        ops.forEach((op, i) => {
            try {
                checkOp(op, now);
                (op.op === 'greylist' ? greylists : limits).push(i);
            } catch (error) {
                out[i] = failed(error);
                if (op.op !== 'greylist' && op.gate?.onFailure) gated = true;
            }
        });
        if (gated) for (const i of greylists.splice(0)) out[i] = { ok: true, value: { verdict: 'skipped' } };
        /** Sends one script call and answers the ops at `indices` (in the batch's order) from its replies. */
        const answer = async (batch: Batch, indices: readonly number[]): Promise<void> => {
            try {
                const replies = await run('stage', () => call(batch, now), undoCall(batch, now));
                indices.forEach((i, n) => {
                    try {
                        out[i] = { ok: true, value: valueOf(ops[i]!, replies[n]) };
                    } catch (error) {
                        out[i] = failed(error);
                    }
                });
            } catch (error) {
                for (const i of indices) out[i] = failed(error);
            }
        };
        if (!isCluster) {
            const sent = [...limits, ...greylists];
            if (sent.length === 0) return out;
            const batch = new Batch();
            for (const i of limits) addOp(batch, ops[i] as Exclude<StageOp, { op: 'greylist' }>);
            for (const i of greylists) {
                const g = ops[i] as Extract<StageOp, { op: 'greylist' }>;
                addGreylist(batch, g.triplet, g.client, g.opts);
            }
            await answer(batch, sent);
            return out;
        }
        // Cluster: one call per slot, all sent together; greylisting after them.
        const bySlot = new Map<number, number[]>();
        for (const i of limits) {
            const op = ops[i] as Exclude<StageOp, { op: 'greylist' }>;
            const slot = hashSlot(op.op === 'take' ? names.rate(op.key, op.windows[0]!) : names.lease(op.key));
            const group = bySlot.get(slot);
            if (group) group.push(i);
            else bySlot.set(slot, [i]);
        }
        await Promise.all(
            [...bySlot.values()].map(async (group) => {
                const batch = new Batch();
                for (const i of group) addOp(batch, ops[i] as Exclude<StageOp, { op: 'greylist' }>);
                await answer(batch, group);
            }),
        );
        for (const i of limits) {
            const op = ops[i] as Exclude<StageOp, { op: 'greylist' }>;
            const a = out[i]!;
            if (a.ok ? op.gate?.onRefusal && refused(a.value) : op.gate?.onFailure) gated = true;
        }
        for (const i of greylists) {
            const g = ops[i] as Extract<StageOp, { op: 'greylist' }>;
            if (gated) {
                out[i] = { ok: true, value: { verdict: 'skipped' } };
                continue;
            }
            try {
                out[i] = {
                    ok: true,
                    value: await run('greylist', () => greylistSteps(g.triplet, g.client, g.opts, now)),
                };
            } catch (error) {
                out[i] = failed(error);
            }
        }
        return out;
    };

    return {
        kind: 'redis',
        async take(key, windows, cost, nowMs) {
            checkTake(key, windows, cost, nowMs);
            const batch = addTake(new Batch(), key, windows, cost, false);
            const [reply] = await run('take', () => call(batch, nowMs), undoCall(batch, nowMs));
            return takeResult(reply);
        },
        async charge(group, counters, cost, nowMs) {
            checkCharge(group, counters, cost, nowMs);
            const keys = counters.map((c) => names.counter(group, c.key, c.window));
            const windows = counters.map((c) => c.window);
            // A refund (negative cost) that comes late is kept: it only gives units back.
            const batch = new Batch().add(
                keys,
                chargeOp(keys, windows, cost),
                cost > 0 ? refund(keys, windows, cost) : undefined,
            );
            const [reply] = await run('charge', () => call(batch, nowMs), undoCall(batch, nowMs));
            const n = numbers(reply, 1 + 3 * counters.length);
            return {
                allowed: n[0] === 1,
                counters: counters.map((_, i) => ({
                    allowed: n[1 + 3 * i] === 1,
                    retryAfterMs: n[2 + 3 * i]!,
                    remaining: n[3 + 3 * i]!,
                })),
            };
        },
        async reset(group, counters, nowMs) {
            checkCounters(group, counters, nowMs);
            const keys = counters.map((c) => names.counter(group, c.key, c.window));
            return Number(await run('reset', () => redis.del(...keys)));
        },
        async acquire(key, holder, max, ttlMs, nowMs) {
            checkLease(key, holder, ttlMs, nowMs, max);
            const batch = addLease(new Batch(), 'acquire', key, holder, max, ttlMs, false);
            const [reply] = await run('acquire', () => call(batch, nowMs), undoCall(batch, nowMs));
            return acquireResult(reply);
        },
        async renew(key, holder, ttlMs, nowMs) {
            checkLease(key, holder, ttlMs, nowMs);
            const batch = addLease(new Batch(), 'renew', key, holder, 0, ttlMs, false);
            const [reply] = await run('renew', () => call(batch, nowMs));
            return numbers(reply, 1)[0] === 1;
        },
        async release(key, holder) {
            checkRelease(key, holder);
            await run('release', () => redis.zrem(names.lease(key), holder));
        },
        async greylist(triplet, client, opts, nowMs) {
            checkGreylist(triplet, client, opts, nowMs);
            if (isCluster) return run('greylist', () => greylistSteps(triplet, client, opts, nowMs));
            const [reply] = await run('greylist', () => call(addGreylist(new Batch(), triplet, client, opts), nowMs));
            const r = greylistResult(reply);
            if (r.verdict === 'skipped') throw new StoreError('error', 'unexpected reply from Redis');
            return r;
        },
        async greylistKeep(records, nowMs) {
            checkGreylistKeep(records, nowMs);
            if (records.length === 0) return;
            const add = (b: Batch, r: GreylistKeep): Batch =>
                b.add([names.triplet(r.triplet)], ['grey-keep', r.firstSeenMs, r.retryWindowMs]);
            if (!isCluster) {
                const batch = records.reduce(add, new Batch());
                await run('greylist', () => call(batch, nowMs));
                return;
            }
            // Cluster: each triplet has a slot of its own; one call each, sent together
            await Promise.all(records.map((r) => run('greylist', () => call(add(new Batch(), r), nowMs))));
        },
        async greylistCredit(client, passTtlMs, nowMs) {
            checkGreylistCredit(client, passTtlMs, nowMs);
            await run('greylist', () =>
                call(new Batch().add([names.client(client)], ['grey-client-count', passTtlMs]), nowMs),
            );
        },
        stage,
        async ping() {
            try {
                return (await run('ping', () => redis.ping())) === 'PONG';
            } catch {
                return false;
            }
        },
        onReady(listener) {
            readyListeners.push(listener);
        },
        waitUntilReady(waitMs) {
            if (redis.status === 'ready') return Promise.resolve();
            return new Promise<void>((resolve, reject) => {
                const timer = setTimeout(() => {
                    redis.off('ready', onReady);
                    reject(new StoreError('unavailable', `Redis was not ready within ${waitMs} ms`));
                }, waitMs);
                const onReady = (): void => {
                    clearTimeout(timer);
                    resolve();
                };
                redis.once('ready', onReady);
            });
        },
        async close() {
            if (closed) return;
            closed = true;
            if (redis.status === 'ready') {
                let timer: NodeJS.Timeout | undefined;
                await Promise.race([
                    redis.quit().catch(() => undefined),
                    new Promise((resolve) => (timer = setTimeout(resolve, timeoutMs))),
                ]);
                clearTimeout(timer);
            }
            redis.disconnect();
        },
    };
}
