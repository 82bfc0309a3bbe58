/**
 * The work of the `ratelimit` check (declared in src/checks/ratelimit.ts): at each stage it charges the rate limits counted there, takes the
 * concurrency leases of a new connection (renewed while the session lives, released when it
 * ends) and, at RCPT, asks greylisting about the recipient. It reports facts only
 * (`ratelimit.*`, `greylist.*`); the implicit rules of the limits decide. A store failure is
 * handled per limit (`onError: allow` lets the mail through, `tempfail` reports the id in
 * `ratelimit.error`), so the check itself never fails a stage. Time comes from the injected
 * clock. It must not choose replies, must not read the wall clock for decisions, and must
 * never put an address, IP or domain into a metric label.
 */
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics.ts';
import {
    CONCURRENCY_RETRY_SECONDS,
    GREYLIST_LABEL,
    byteCeiling,
    type GreylistSpec,
    type LimitSpec,
} from '../rules/limits.ts';
import type { FactValue, Check, CheckContext } from '../types.ts';
import { greylistTriplet, limitKeys } from './limit-keys.ts';
import type { GreylistVerdict, LimitStore } from './types.ts';

/** The declarations in force (they change when rules are reloaded). */
export interface LimitDeclarations {
    readonly limits: readonly LimitSpec[];
    readonly greylists: readonly GreylistSpec[];
}

export interface RateLimitCheckOptions {
    readonly store: LimitStore;
    /** The rule set in force, or null when no rule files are used. */
    readonly declarations: () => LimitDeclarations | null;
    readonly metrics: Pick<Metrics, 'ratelimitDecisions'>;
    /** The clock every decision uses (milliseconds). */
    readonly now: () => number;
    readonly logger?: Pick<Logger, 'warn' | 'debug'>;
    /** Unique per mailwarden process: with the session id it names a concurrency lease's holder. */
    readonly instanceId: string;
    /** How long a lease lives without renewal (default 10 minutes); renewed at every stage and every third of it. */
    readonly leaseTtlMs?: number;
    /** The store's own deadline per operation; the check's pipeline timeout is a few of these. */
    readonly storeTimeoutMs?: number;
}

export type LimitResult = 'allowed' | 'limited' | 'monitor_limited' | 'error_allowed' | 'error_tempfail';

const DEFAULT_LEASE_TTL_MS = 10 * 60_000;

interface Lease {
    readonly key: string;
    readonly max: number;
}

interface SessionLeases {
    readonly leases: Lease[];
    timer: NodeJS.Timeout | null;
    ended: boolean;
}

interface Outcome {
    readonly spec: LimitSpec;
    readonly state: 'skipped' | 'allowed' | 'limited' | 'error';
    readonly retryAfterMs: number;
}

function seconds(ms: number): number {
    return Math.max(1, Math.ceil(ms / 1000));
}

function errorText(err: unknown): string {
    return err instanceof Error ? err.message : String(err);
}

/** The check's `run` and `end`: counting, leases and greylisting over the store. */
export function createRateLimiter(options: RateLimitCheckOptions): Pick<Check, 'run' | 'end'> {
    const { store, metrics, logger } = options;
    const ttl = options.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS;
    const sessions = new Map<string, SessionLeases>();
    const holder = (sessionId: string): string => `${options.instanceId}:${sessionId}`;
    const nowMs = (): number => Math.max(0, Math.floor(options.now()));
    const count = (limit: string, result: string): void => metrics.ratelimitDecisions.inc({ limit, result });

    const renew = async (sessionId: string, state: SessionLeases): Promise<void> => {
        const at = nowMs();
        await Promise.all(
            state.leases.map(async (lease) => {
                try {
                    if (await store.renew(lease.key, holder(sessionId), ttl, at)) return;
                    // Lost (expired while idle): take it again if there is room; never refuse mid-session.
                    await store.acquire(lease.key, holder(sessionId), lease.max, ttl, at);
                } catch (err) {
                    logger?.debug({ session: sessionId, err: errorText(err) }, 'concurrency lease renewal failed');
                }
            }),
        );
    };

    const release = async (sessionId: string, leases: readonly Lease[]): Promise<void> => {
        await Promise.all(
            leases.map((lease) =>
                store.release(lease.key, holder(sessionId)).catch((err: unknown) => {
                    logger?.debug({ session: sessionId, err: errorText(err) }, 'concurrency lease release failed');
                }),
            ),
        );
    };

    /** Charges one limit; never throws. */
    const evaluate = async (spec: LimitSpec, ctx: CheckContext, at: number): Promise<Outcome> => {
        const keys = limitKeys(spec, ctx.facts, ctx.stage);
        if (keys.length === 0) return { spec, state: 'skipped', retryAfterMs: 0 };
        try {
            if (spec.concurrency !== null) {
                let state: SessionLeases | undefined = sessions.get(ctx.sessionId);
                if (state === undefined) {
                    state = { leases: [], timer: null, ended: false };
                    sessions.set(ctx.sessionId, state);
                }
                const owner = state;
                let refused = false;
                await Promise.all(
                    keys.map(async (key) => {
                        const r = await store.acquire(key, holder(ctx.sessionId), spec.concurrency!, ttl, at);
                        if (!r.acquired) refused = true;
                        else if (owner.ended) await store.release(key, holder(ctx.sessionId));
                        else owner.leases.push({ key, max: spec.concurrency! });
                    }),
                );
                return refused
                    ? { spec, state: 'limited', retryAfterMs: CONCURRENCY_RETRY_SECONDS * 1000 }
                    : { spec, state: 'allowed', retryAfterMs: 0 };
            }
            const windows = spec.windows!;
            const size = ctx.facts['message.size'];
            const cost = spec.per === 'byte' ? Math.ceil((typeof size === 'number' ? size : 0) / spec.unit) : 1;
            if (spec.per === 'byte' && typeof size === 'number' && size > byteCeiling(spec)) {
                // Never admissible: no wait would help, so it is refused without charging anything.
                logger?.debug({ limit: spec.id, size }, 'message larger than the byte limit allows at all');
                return { spec, state: 'limited', retryAfterMs: Math.max(...windows.map((w) => w.periodMs)) };
            }
            const results = await Promise.all(keys.map((key) => store.take(key, windows, cost, at)));
            const refused = results.filter((r) => !r.allowed);
            if (refused.length === 0) return { spec, state: 'allowed', retryAfterMs: 0 };
            return { spec, state: 'limited', retryAfterMs: Math.max(...refused.map((r) => r.retryAfterMs)) };
        } catch (err) {
            logger?.debug({ limit: spec.id, err: errorText(err) }, 'limit store failed; applying onError');
            return { spec, state: 'error', retryAfterMs: 0 };
        }
    };

    /** Greylisting of the recipient being checked (rcpt stage); the facts it reports. */
    const greylist = async (entries: readonly GreylistSpec[], ctx: CheckContext, at: number) => {
        const entry = entries.find((g) => g.when.test(ctx.facts));
        const sender = ctx.envelope.mailFrom;
        const recipient = ctx.envelope.rcptTo[ctx.envelope.rcptTo.length - 1];
        const clientIp = ctx.facts['client.ip'];
        if (entry === undefined || sender === null || recipient === undefined || typeof clientIp !== 'string') {
            return { 'greylist.id': null, 'greylist.result': 'skipped', 'greylist.retry_after': null };
        }
        const { triplet, client } = greylistTriplet(entry.id, clientIp, sender, recipient);
        let verdict: GreylistVerdict | 'error';
        let retryAfterMs = 0;
        try {
            const r = await store.greylist(
                triplet,
                client,
                {
                    delayMs: entry.delayMs,
                    retryWindowMs: entry.retryWindowMs,
                    passTtlMs: entry.expireMs,
                    autoAllowAfter: entry.autoAllowAfter,
                },
                at,
            );
            verdict = r.verdict;
            retryAfterMs = r.retryAfterMs;
            count(GREYLIST_LABEL, verdict === 'known-client' ? 'known' : verdict);
        } catch (err) {
            logger?.debug({ greylist: entry.id, err: errorText(err) }, 'greylisting store failed; applying onError');
            verdict = 'error';
            count(
                GREYLIST_LABEL,
                entry.onError === 'tempfail' && entry.mode === 'enforce' ? 'error_tempfail' : 'error_allowed',
            );
        }
        const waiting = verdict === 'new' || verdict === 'early';
        return {
            'greylist.id': entry.id,
            'greylist.result': verdict,
            'greylist.retry_after': waiting ? seconds(retryAfterMs) : null,
        };
    };

    return {
        async run(ctx) {
            const set = options.declarations();
            if (set === null || (set.limits.length === 0 && set.greylists.length === 0)) return { facts: {} };
            const at = nowMs();
            const state = sessions.get(ctx.sessionId);
            const renewing = ctx.stage !== 'connect' && state ? renew(ctx.sessionId, state) : Promise.resolve();
            const applicable = set.limits.filter((l) => l.stage === ctx.stage && l.when.test(ctx.facts));
            const outcomes = await Promise.all(applicable.map((l) => evaluate(l, ctx, at)));
            await renewing;

            const exceeded: string[] = [];
            const monitored: string[] = [];
            const errors: string[] = [];
            let retryEnforced = 0;
            let retryMonitored = 0;
            for (const o of outcomes) {
                const { spec } = o;
                let result: LimitResult | null = null;
                if (o.state === 'allowed') result = 'allowed';
                else if (o.state === 'limited' && spec.mode === 'enforce') {
                    result = 'limited';
                    exceeded.push(spec.id);
                    retryEnforced = Math.max(retryEnforced, o.retryAfterMs);
                } else if (o.state === 'limited') {
                    result = 'monitor_limited';
                    monitored.push(spec.id);
                    retryMonitored = Math.max(retryMonitored, o.retryAfterMs);
                } else if (o.state === 'error') {
                    const tempfail = spec.onError === 'tempfail' && spec.mode === 'enforce';
                    result = tempfail ? 'error_tempfail' : 'error_allowed';
                    if (tempfail) errors.push(spec.id);
                }
                if (result !== null) count(spec.id, result);
            }
            const retry = exceeded.length > 0 ? retryEnforced : monitored.length > 0 ? retryMonitored : null;
            const facts: Record<string, FactValue> = {
                'ratelimit.exceeded': exceeded,
                'ratelimit.monitor': monitored,
                'ratelimit.error': errors,
                'ratelimit.retry_after': retry === null ? null : seconds(retry),
            };
            if (ctx.stage === 'rcpt' && set.greylists.length > 0) {
                // A recipient refused by a limit is not greylisted: its retry starts afresh.
                const refused = exceeded.length > 0 || errors.length > 0;
                Object.assign(
                    facts,
                    refused
                        ? { 'greylist.id': null, 'greylist.result': 'skipped', 'greylist.retry_after': null }
                        : await greylist(set.greylists, ctx, at),
                );
            }
            const held = sessions.get(ctx.sessionId);
            if (ctx.stage === 'connect' && held && held.leases.length > 0 && held.timer === null && !held.ended) {
                const timer = setInterval(() => void renew(ctx.sessionId, held), Math.max(1000, Math.floor(ttl / 3)));
                timer.unref();
                held.timer = timer;
            }
            return { facts };
        },
        async end(sessionId) {
            const state = sessions.get(sessionId);
            if (!state) {
                // The client may leave while its connect stage is still running: leases taken
                // after this point are given back at once.
                sessions.set(sessionId, { leases: [], timer: null, ended: true });
                setTimeout(() => {
                    if (sessions.get(sessionId)?.ended) sessions.delete(sessionId);
                }, 60_000).unref();
                return;
            }
            sessions.delete(sessionId);
            state.ended = true;
            if (state.timer) clearInterval(state.timer);
            await release(sessionId, state.leases.splice(0));
        },
    };
}
