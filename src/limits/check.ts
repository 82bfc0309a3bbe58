/**
 * The work of the `ratelimit` check (declared in src/checks/ratelimit.ts): at each stage it charges the rate limits counted there, takes the
 * concurrency leases of a new connection (renewed while the session lives, released when it
 * ends) and, at RCPT, asks greylisting about the recipient (the records of new triplets
 * capped per client network, IPv4 /24 and IPv6 /48, in the same call; a triplet past the cap is
 * not recorded and not deferred, as is one past the entry's cap on all new records); once the upstream accepted a
 * message whose recipient passed greylisting, it credits the client with one pass, and for an
 * entry in monitor mode keeps the records of the message's new triplets (provisional until
 * then: that mode defers nothing, so only delivered mail is worth a record). It
 * reports facts only (`ratelimit.*`, `greylist.*`); the implicit rules of the limits decide.
 * Everything a stage asks of the store (lease renewals, every limit, greylisting) is one batch
 * (LimitStore.stage): one round trip to Redis per stage. A store failure is
 * handled per limit (`onError: allow` lets the mail through and reports the id in
 * `ratelimit.error_allowed`, which keeps the ids of the earlier stages it is given, so the
 * decision line names every limit that failed open for the message; `tempfail` reports the id
 * in `ratelimit.error`), so the check itself never fails a stage; a concurrency lease whose acquire
 * failed is taken at the session's next renewal, so a session let in while the store was down is
 * counted once it is back; when the store's connection is ready again (Redis restarted, perhaps
 * empty), every open session renews its leases at once. Time comes from the injected
 * clock. It must not choose replies, must not read the wall clock for decisions, and must
 * never put an address, IP or domain into a metric label.
 */
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics.ts';
import {
    CONCURRENCY_RETRY_SECONDS,
    GREYLIST_LABEL,
    GREYLIST_NEW_PER_ENTRY,
    GREYLIST_NEW_PER_NETWORK,
    byteCeiling,
    type GreylistSpec,
    type LimitSpec,
} from '../rules/limits.ts';
import type { FactValue, Facts, Check, CheckContext } from '../types.ts';
import { greylistTriplet, limitKeys } from './limit-keys.ts';
import type {
    AcquireResult,
    GreylistKeep,
    GreylistVerdict,
    LimitStore,
    StageAnswer,
    StageOp,
    TakeResult,
} from './types.ts';

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
    /** When (check clock) the leases were last taken or renewed. */
    renewedAt: number;
    /** The last renewal failed or lost a lease: the next stage tries again. */
    renewFailed: boolean;
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

const NONE: readonly string[] = Object.freeze([]);
const NO_LIMIT_ERRORS: { limitErrors?: readonly string[] } = Object.freeze({});

/**
 * The `limitErrors` field of a `decision` or `refused` line: the limits whose store failed, those
 * that refused at this stage (`ratelimit.error`) and those that let the mail through at this or
 * an earlier stage (`ratelimit.error_allowed`); left out when none did.
 */
export function limitErrors(facts: Facts): { limitErrors?: readonly string[] } {
    const refused = facts['ratelimit.error'];
    const allowed = facts['ratelimit.error_allowed'];
    const r = Array.isArray(refused) ? (refused as readonly string[]) : NONE;
    const a = Array.isArray(allowed) ? (allowed as readonly string[]) : NONE;
    if (r.length + a.length === 0) return NO_LIMIT_ERRORS;
    return { limitErrors: r.length === 0 ? a : a.length === 0 ? r : [...r, ...a] };
}

/** Whether a store failure refuses (onError: tempfail, enforced) rather than lets the mail through. */
function failsClosed(spec: { readonly onError: string; readonly mode: string }): boolean {
    return spec.onError === 'tempfail' && spec.mode === 'enforce';
}

/** Greylisting passes a session keeps for credit (a client needs `autoAllowAfter`, a handful). */
const MAX_UNCREDITED = 100;
/** Provisional records (monitor mode) a transaction keeps for its message, at most: one per recipient. */
const MAX_UNKEPT = 1000;

/** The check's `run` and `end`: counting, leases and greylisting over the store. */
export function createRateLimiter(options: RateLimitCheckOptions): Pick<Check, 'run' | 'end' | 'delivered'> {
    const { store, metrics, logger } = options;
    const ttl = options.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS;
    const renewEvery = Math.max(1000, Math.floor(ttl / 3));
    const sessions = new Map<string, SessionLeases>();
    /** The store call of each session's stage in progress (end() waits for it). */
    const inflight = new Map<string, Promise<readonly StageAnswer[]>>();
    /**
     * Greylisting passes of each session's transaction (cleared at MAIL), not yet counted for
     * their client: a message the upstream accepted (its 250 to the end of data) counts one
     * pass towards `autoAllowAfter`, when a recipient it was accepted for passed the delay in
     * its transaction. Counted at RCPT, recipients the upstream refuses (invented ones), or a
     * message that is then refused, earned a whole network a place on the auto-allowlist.
     */
    const uncredited = new Map<string, { recipient: string; client: string; passTtlMs: number }[]>();
    /**
     * The records of new triplets of each session's transaction (cleared at MAIL) that an entry
     * in monitor mode wrote provisionally: nothing was deferred, so no retry will come, and a
     * record is worth keeping for the retry window only when the upstream accepts the message
     * for its recipient (so the next message of the triplet is counted as enforcing would
     * count it: as a pass once the delay is over). Records of recipients the upstream refuses,
     * of messages refused and of transactions abandoned lapse after the entry's delay.
     */
    const unkept = new Map<string, { recipient: string; record: GreylistKeep }[]>();
    const holder = (sessionId: string): string => `${options.instanceId}:${sessionId}`;
    const nowMs = (): number => Math.max(0, Math.floor(options.now()));
    const count = (limit: string, result: string): void => metrics.ratelimitDecisions.inc({ limit, result });

    /**
     * The renewals of a session's leases, as ops of a stage batch. A renewal is an acquire by
     * the holder: a live lease is extended; a lost one (expired while idle) is taken again when
     * there is room. A renewal never refuses anything mid-session.
     */
    const renewals = (sessionId: string, state: SessionLeases): StageOp[] =>
        state.leases.map((lease) => ({
            op: 'acquire',
            key: lease.key,
            holder: holder(sessionId),
            max: lease.max,
            ttlMs: ttl,
        }));

    /** Notes how the renewals made at `at` went (and logs failures). */
    const renewed = (sessionId: string, state: SessionLeases, answers: readonly StageAnswer[], at: number): void => {
        let failed = false;
        for (const a of answers) {
            if (!a.ok)
                logger?.debug({ session: sessionId, err: errorText(a.error) }, 'concurrency lease renewal failed');
            if (!a.ok || !(a.value as AcquireResult).acquired) failed = true;
        }
        state.renewFailed = failed;
        if (!failed) state.renewedAt = at;
    };

    /**
     * Whether a stage renews the session's leases: when a renewal interval has passed since the
     * last one (by the check's clock, so a session whose clock jumps renews at once) or the last
     * one failed. Between those the leases are live for at least two thirds of their TTL.
     */
    const renewalDue = (state: SessionLeases, at: number): boolean =>
        state.leases.length > 0 && (state.renewFailed || at - state.renewedAt >= renewEvery);

    /** The timer's renewal: one store call for all the session's leases. */
    const renew = async (sessionId: string, state: SessionLeases): Promise<void> => {
        const ops = renewals(sessionId, state);
        if (ops.length === 0) return;
        const at = nowMs();
        renewed(sessionId, state, await store.stage(ops, at), at);
    };

    /** Sessions whose leases are being taken again since the store was ready again (one call each). */
    const retaking = new Set<SessionLeases>();
    /**
     * The store's connection is ready (again, after Redis restarted, perhaps empty): the leases
     * held may be gone, and a session would take its own again only at its next renewal, up to a
     * third of the TTL later, while new sessions are let in in their place. So every session
     * holding leases renews them now: one store call per session, never two at once; when it
     * fails, the session's next stage or its timer tries again.
     */
    const retakeAll = (): void => {
        for (const [sessionId, state] of sessions) {
            if (state.ended || state.leases.length === 0 || retaking.has(state)) continue;
            state.renewFailed = true;
            retaking.add(state);
            void renew(sessionId, state).finally(() => retaking.delete(state));
        }
    };
    store.onReady?.(retakeAll);

    const release = async (sessionId: string, leases: readonly Lease[]): Promise<void> => {
        await Promise.all(
            leases.map((lease) =>
                store.release(lease.key, holder(sessionId)).catch((err: unknown) => {
                    logger?.debug({ session: sessionId, err: errorText(err) }, 'concurrency lease release failed');
                }),
            ),
        );
    };

    /**
     * What one limit asks of the store at this stage: nothing (skipped, or refused without
     * asking), or its ops (one per key). `decide` turns the answers to those ops into its outcome.
     */
    const plan = (
        spec: LimitSpec,
        ctx: CheckContext,
        at: number,
    ): { outcome: Outcome } | { ops: StageOp[]; decide: (answers: readonly StageAnswer[]) => Outcome } => {
        const keys = limitKeys(spec, ctx.facts, ctx.stage);
        if (keys.length === 0) return { outcome: { spec, state: 'skipped', retryAfterMs: 0 } };
        const enforced = spec.mode === 'enforce';
        const gate = { onRefusal: enforced, onFailure: enforced && spec.onError === 'tempfail' };
        const failure = (answers: readonly StageAnswer[]): Outcome | null => {
            const failed = answers.find((a) => !a.ok);
            if (failed === undefined || failed.ok) return null;
            logger?.debug({ limit: spec.id, err: errorText(failed.error) }, 'limit store failed; applying onError');
            return { spec, state: 'error', retryAfterMs: 0 };
        };
        if (spec.concurrency !== null) {
            const max = spec.concurrency;
            const ops: StageOp[] = keys.map((key) => ({
                op: 'acquire',
                key,
                holder: holder(ctx.sessionId),
                max,
                ttlMs: ttl,
                gate,
            }));
            let state = sessions.get(ctx.sessionId);
            if (state === undefined) {
                state = { leases: [], timer: null, ended: false, renewedAt: at, renewFailed: false };
                sessions.set(ctx.sessionId, state);
            }
            const owner = state;
            return {
                ops,
                decide: (answers) => {
                    let refused = false;
                    answers.forEach((a, i) => {
                        const key = keys[i]!;
                        if (!a.ok) {
                            // A failed acquire holds nothing (a lease Redis grants after the
                            // timeout is released by the store when its late reply comes), but
                            // the session is still there: it is recorded as a lost lease, which
                            // the next renewal takes when there is room (never refusing it).
                            if (!owner.ended) {
                                owner.leases.push({ key, max });
                                owner.renewFailed = true;
                            }
                            return;
                        }
                        if (!(a.value as AcquireResult).acquired) refused = true;
                        else if (owner.ended) void release(ctx.sessionId, [{ key, max }]);
                        else owner.leases.push({ key, max });
                    });
                    return (
                        failure(answers) ??
                        (refused
                            ? { spec, state: 'limited', retryAfterMs: CONCURRENCY_RETRY_SECONDS * 1000 }
                            : { spec, state: 'allowed', retryAfterMs: 0 })
                    );
                },
            };
        }
        const windows = spec.windows!;
        const size = ctx.facts['message.size'];
        const cost = spec.per === 'byte' ? Math.ceil((typeof size === 'number' ? size : 0) / spec.unit) : 1;
        if (spec.per === 'byte' && typeof size === 'number' && size > byteCeiling(spec)) {
            // Never admissible: no wait would help, so it is refused without charging anything.
            logger?.debug({ limit: spec.id, size }, 'message larger than the byte limit allows at all');
            return { outcome: { spec, state: 'limited', retryAfterMs: Math.max(...windows.map((w) => w.periodMs)) } };
        }
        return {
            ops: keys.map((key) => ({ op: 'take', key, windows, cost, gate })),
            decide: (answers) => {
                const fail = failure(answers);
                if (fail) return fail;
                const refused = answers.map((a) => (a.ok ? (a.value as TakeResult) : null)).filter((r) => !r!.allowed);
                if (refused.length === 0) return { spec, state: 'allowed', retryAfterMs: 0 };
                return { spec, state: 'limited', retryAfterMs: Math.max(...refused.map((r) => r!.retryAfterMs)) };
            },
        };
    };

    /**
     * Greylisting of the recipient being checked (rcpt stage): the entry that applies and its
     * store op, or null when none applies (no entry, no sender, no recipient, no client IP).
     */
    const greylistOp = (entries: readonly GreylistSpec[], ctx: CheckContext) => {
        const entry = entries.find((g) => g.when.test(ctx.facts));
        const sender = ctx.envelope.mailFrom;
        const recipient = ctx.envelope.rcptTo[ctx.envelope.rcptTo.length - 1];
        const clientIp = ctx.facts['client.ip'];
        if (entry === undefined || sender === null || recipient === undefined || typeof clientIp !== 'string') {
            return null;
        }
        const { triplet, client, network } = greylistTriplet(entry.id, clientIp, sender, recipient);
        const op: StageOp = {
            op: 'greylist',
            triplet,
            client,
            opts: {
                delayMs: entry.delayMs,
                retryWindowMs: entry.retryWindowMs,
                passTtlMs: entry.expireMs,
                autoAllowAfter: entry.autoAllowAfter,
                cap: { key: network, window: GREYLIST_NEW_PER_NETWORK },
                capAll: { key: `${entry.id}|all`, window: GREYLIST_NEW_PER_ENTRY },
                ...(entry.mode === 'monitor' ? { provisionalMs: entry.delayMs } : {}),
            },
        };
        return { entry, op, recipient, client, triplet };
    };

    /** Notes a pass that ended a triplet's delay, for credit at the data stage. */
    const notePass = (sessionId: string, grey: NonNullable<ReturnType<typeof greylistOp>>, answer: StageAnswer) => {
        if (!answer.ok || !('passedNow' in answer.value) || grey.entry.autoAllowAfter === 0) return;
        const pass = { recipient: grey.recipient, client: grey.client, passTtlMs: grey.entry.expireMs };
        const list = uncredited.get(sessionId);
        if (!list) uncredited.set(sessionId, [pass]);
        else if (list.length < MAX_UNCREDITED) list.push(pass);
    };

    /** Notes a provisional record (a new triplet of an entry in monitor mode), to keep if its message is delivered. */
    const noteNew = (
        sessionId: string,
        grey: NonNullable<ReturnType<typeof greylistOp>>,
        answer: StageAnswer,
        at: number,
    ) => {
        if (grey.entry.mode !== 'monitor' || !answer.ok || !('verdict' in answer.value)) return;
        if (answer.value.verdict !== 'new') return;
        const record = { triplet: grey.triplet, firstSeenMs: at, retryWindowMs: grey.entry.retryWindowMs };
        const list = unkept.get(sessionId);
        if (!list) unkept.set(sessionId, [{ recipient: grey.recipient, record }]);
        else if (list.length < MAX_UNKEPT) list.push({ recipient: grey.recipient, record });
    };

    /**
     * For a message the upstream accepted: one pass if a recipient of it passed, and the
     * provisional records of its recipients kept; errors only logged.
     */
    const delivered = (sessionId: string, recipients: readonly string[]): void => {
        const list = uncredited.get(sessionId);
        const fresh = unkept.get(sessionId);
        uncredited.delete(sessionId);
        unkept.delete(sessionId);
        const pass = list?.find((p) => recipients.includes(p.recipient));
        if (pass) {
            store.greylistCredit(pass.client, pass.passTtlMs, nowMs()).catch((err: unknown) => {
                logger?.debug({ session: sessionId, err: errorText(err) }, 'greylisting credit failed');
            });
        }
        if (!fresh) return;
        const accepted = new Set(recipients);
        const keep = fresh.filter((n) => accepted.has(n.recipient)).map((n) => n.record);
        if (keep.length === 0) return;
        store.greylistKeep(keep, nowMs()).catch((err: unknown) => {
            logger?.debug({ session: sessionId, err: errorText(err) }, 'keeping greylisting records failed');
        });
    };

    /** The greylisting facts from the store's answer; counts the verdict. */
    const greylistFacts = (entry: GreylistSpec, answer: StageAnswer): Record<string, FactValue> => {
        let verdict: GreylistVerdict | 'error';
        let retryAfterMs = 0;
        if (answer.ok && 'verdict' in answer.value && answer.value.verdict !== 'skipped') {
            const r = answer.value;
            verdict = r.verdict;
            retryAfterMs = r.retryAfterMs;
            // in monitor mode nothing is deferred: what would have been is counted apart
            const wouldDefer = entry.mode === 'monitor' && (verdict === 'new' || verdict === 'early');
            count(GREYLIST_LABEL, verdict === 'known-client' ? 'known' : wouldDefer ? `monitor_${verdict}` : verdict);
        } else {
            const err = answer.ok ? 'greylisting skipped by the store' : errorText(answer.error);
            logger?.debug({ greylist: entry.id, err }, 'greylisting store failed; applying onError');
            verdict = 'error';
            count(GREYLIST_LABEL, failsClosed(entry) ? 'error_tempfail' : 'error_allowed');
        }
        const waiting = verdict === 'new' || verdict === 'early';
        return {
            'greylist.id': entry.id,
            'greylist.result': verdict,
            'greylist.retry_after': waiting ? seconds(retryAfterMs) : null,
        };
    };

    const SKIPPED_GREYLIST = { 'greylist.id': null, 'greylist.result': 'skipped', 'greylist.retry_after': null };

    return {
        async run(ctx) {
            const set = options.declarations();
            // a new transaction: the passes of an earlier one (abandoned, refused) count for nothing
            if (ctx.stage === 'mail') {
                uncredited.delete(ctx.sessionId);
                unkept.delete(ctx.sessionId);
            }
            if (set === null || (set.limits.length === 0 && set.greylists.length === 0)) return { facts: {} };
            const at = nowMs();
            // Everything this stage asks of the store goes in one batch: one round trip.
            const ops: StageOp[] = [];
            const state = sessions.get(ctx.sessionId);
            const renewing =
                ctx.stage !== 'connect' && state && renewalDue(state, at) ? renewals(ctx.sessionId, state) : [];
            ops.push(...renewing);
            const plans = set.limits
                .filter((l) => l.stage === ctx.stage && l.when.test(ctx.facts))
                .map((spec) => {
                    const p = plan(spec, ctx, at);
                    if ('outcome' in p) return { outcome: p.outcome, from: 0, to: 0, decide: null };
                    const from = ops.length;
                    ops.push(...p.ops);
                    return { outcome: null, from, to: ops.length, decide: p.decide };
                });
            // A recipient refused by a limit is not greylisted: its retry starts afresh. The
            // store skips the greylisting op when an enforced limit of the batch refuses.
            const refusedHere = plans.some((p) => p.outcome?.state === 'limited' && p.outcome.spec.mode === 'enforce');
            const grey = ctx.stage === 'rcpt' && set.greylists.length > 0 ? greylistOp(set.greylists, ctx) : null;
            const greyAt = grey !== null && !refusedHere ? ops.push(grey.op) - 1 : -1;
            let answers: readonly StageAnswer[] = [];
            if (ops.length > 0) {
                // end() waits for it: a lease granted while the session ends is given back before
                // end() resolves (a stop closes the store right after)
                const asking = store.stage(ops, at);
                inflight.set(ctx.sessionId, asking);
                try {
                    answers = await asking;
                } finally {
                    if (inflight.get(ctx.sessionId) === asking) inflight.delete(ctx.sessionId);
                }
            }
            if (state && renewing.length > 0) renewed(ctx.sessionId, state, answers.slice(0, renewing.length), at);
            const outcomes = plans.map((p) => (p.decide ? p.decide(answers.slice(p.from, p.to)) : p.outcome));

            const exceeded: string[] = [];
            const monitored: string[] = [];
            const errors: string[] = [];
            // the limits that failed open at the earlier stages (the flow carries facts) and here
            const carried = ctx.facts['ratelimit.error_allowed'];
            let failedOpen = Array.isArray(carried) ? (carried as readonly string[]) : NONE;
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
                    const tempfail = failsClosed(spec);
                    result = tempfail ? 'error_tempfail' : 'error_allowed';
                    if (tempfail) errors.push(spec.id);
                    else if (!failedOpen.includes(spec.id)) failedOpen = [...failedOpen, spec.id];
                }
                if (result !== null) count(spec.id, result);
            }
            const retry = exceeded.length > 0 ? retryEnforced : monitored.length > 0 ? retryMonitored : null;
            const facts: Record<string, FactValue> = {
                'ratelimit.exceeded': exceeded,
                'ratelimit.monitor': monitored,
                'ratelimit.error': errors,
                'ratelimit.error_allowed': failedOpen,
                'ratelimit.retry_after': retry === null ? null : seconds(retry),
            };
            if (ctx.stage === 'rcpt' && set.greylists.length > 0) {
                const refused = exceeded.length > 0 || errors.length > 0;
                Object.assign(
                    facts,
                    refused || grey === null || greyAt < 0
                        ? SKIPPED_GREYLIST
                        : greylistFacts(grey.entry, answers[greyAt]!),
                );
                if (!refused && grey !== null && greyAt >= 0) {
                    notePass(ctx.sessionId, grey, answers[greyAt]!);
                    noteNew(ctx.sessionId, grey, answers[greyAt]!, at);
                    // a greylisting entry whose store failed and that lets the mail through is named
                    // with the limits that did (the decision line's limitErrors)
                    const { entry } = grey;
                    if (facts['greylist.result'] === 'error' && !failsClosed(entry) && !failedOpen.includes(entry.id)) {
                        facts['ratelimit.error_allowed'] = [...failedOpen, entry.id];
                    }
                }
            }
            const held = sessions.get(ctx.sessionId);
            if (ctx.stage === 'connect' && held && held.leases.length > 0 && held.timer === null && !held.ended) {
                const timer = setInterval(() => void renew(ctx.sessionId, held), renewEvery);
                timer.unref();
                held.timer = timer;
            }
            return { facts };
        },
        delivered,
        async end(sessionId) {
            // a stage still asking the store (bounded by the store's timeout) decides first
            await inflight.get(sessionId)?.catch(() => undefined);
            uncredited.delete(sessionId);
            unkept.delete(sessionId);
            const state = sessions.get(sessionId);
            if (!state) {
                // The client may leave while its connect stage is still running: leases taken
                // after this point are given back at once.
                sessions.set(sessionId, { leases: [], timer: null, ended: true, renewedAt: 0, renewFailed: false });
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
