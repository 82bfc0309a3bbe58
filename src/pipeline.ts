/**
 * Runs the checks of one stage and asks the decider for a decision.
 * Checks report facts and never choose a reply; each has a timeout and a declared failure
 * verdict (`onError`): `tempfail` makes the stage answer 4xx, `ignore` goes on without that
 * check's facts. A failing check is recorded as the fact `<check>.error`. Our own failures
 * are never turned into a 5xx and never let mail through silently.
 *
 * A timeout stops the check's work, not only the wait for it: when a check times out, fails or
 * returns, its signal is aborted and every message stream it opened is destroyed, so reading
 * and hashing the message stop; checks refuse new DNS queries once the signal is aborted
 * (dns/scoped.ts). Nothing a check started may keep burning CPU after its verdict.
 */
import type { Readable } from 'node:stream';
import { replyFor } from './reply.ts';
import type {
    Check,
    CheckContext,
    CheckResult,
    Decider,
    Decision,
    Facts,
    FactValue,
    HeaderField,
    MessageSource,
    Stage,
} from './types.ts';

export interface CheckOutcome {
    readonly name: string;
    readonly ms: number;
    readonly error: string | null;
}

export interface StageResult {
    readonly facts: Facts;
    /** Header fields from the checks, in check order. */
    readonly headers: readonly HeaderField[];
    readonly decision: Decision;
    readonly checks: readonly CheckOutcome[];
}

/** The decider used until rule files are configured: every message is accepted. */
export const acceptAll: Decider = {
    decide: () => ({ action: 'accept', rules: [], score: 0, reason: 'no rule matched', headers: [] }),
};

class CheckTimeout extends Error {}

/**
 * Why a check's signal aborted and its streams were destroyed. It is a signal, not a fault: it
 * carries no stack trace, which would be captured for every check of every message.
 */
export class CheckEnded extends Error {
    override readonly name = 'CheckEnded';
}

function checkEnded(message: string): CheckEnded {
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    try {
        return new CheckEnded(message);
    } finally {
        Error.stackTraceLimit = limit;
    }
}

/** The reason given to the signal of every check that returned: one object, it carries nothing per check. */
const CHECK_RETURNED = checkEnded('check returned');

/**
 * The message as one check sees it: every stream the check opens is destroyed when the check's
 * signal aborts, which ends any reading or hashing still going on.
 */
function ownedMessage(message: MessageSource | null, signal: AbortSignal): MessageSource | null {
    if (!message) return null;
    return {
        size: message.size,
        stream(): Readable {
            const stream = message.stream();
            const destroy = (): void => {
                if (stream.destroyed) return;
                // a stream nobody reads has no error listener: its destruction must not crash the process
                stream.on('error', () => undefined);
                stream.destroy(signal.reason instanceof Error ? signal.reason : checkEnded('check ended'));
            };
            if (signal.aborted) {
                destroy();
                return stream;
            }
            signal.addEventListener('abort', destroy, { once: true });
            stream.once('close', () => signal.removeEventListener('abort', destroy));
            return stream;
        },
    };
}

async function runOne(
    check: Check,
    ctx: CheckContext,
    now: () => number,
): Promise<{ result: CheckResult; outcome: CheckOutcome }> {
    const started = now();
    const controller = new AbortController();
    const own: CheckContext = { ...ctx, message: ownedMessage(ctx.message, controller.signal) };
    let timer: NodeJS.Timeout | undefined;
    let ended: CheckEnded | null = null;
    try {
        // one promise settled by whichever comes first, the check or its timer (no Promise.race)
        const result = await new Promise<CheckResult>((resolve, reject) => {
            timer = setTimeout(
                () => reject(new CheckTimeout(`timed out after ${check.timeoutMs} ms`)),
                check.timeoutMs,
            );
            check.run(own, controller.signal).then(resolve, reject);
        });
        return { result, outcome: { name: check.name, ms: now() - started, error: null } };
    } catch (err) {
        const message = err instanceof CheckTimeout ? 'timeout' : err instanceof Error ? err.message : String(err);
        ended = checkEnded(message === 'timeout' ? `check ${check.name} timed out` : `check ${check.name} failed`);
        return { result: { facts: {} }, outcome: { name: check.name, ms: now() - started, error: message } };
    } finally {
        clearTimeout(timer);
        // whatever the outcome, the check's work ends here: no more DNS, its streams destroyed
        controller.abort(ended ?? CHECK_RETURNED);
    }
}

/**
 * Runs every check registered for `stage` in parallel, merges their facts over `facts`,
 * then decides. A check failure with `onError: tempfail` overrides the decision with a
 * tempfail whose reason names the check.
 */
export async function runStage(
    stage: Stage,
    checks: readonly Check[],
    context: Omit<CheckContext, 'stage'>,
    decider: Decider,
    now: () => number = Date.now,
): Promise<StageResult> {
    const ctx: CheckContext = { ...context, stage };
    const facts = context.facts;
    const active = checks.filter((c) => c.stages.includes(stage));
    const results = await Promise.all(active.map((c) => runOne(c, ctx, now)));
    const merged: Record<string, FactValue> = { ...facts };
    let failed: CheckOutcome | null = null;
    const headers: HeaderField[] = [];
    for (let i = 0; i < results.length; i++) {
        const r = results[i]!;
        Object.assign(merged, r.result.facts);
        if (r.result.headers) headers.push(...r.result.headers);
        if (r.outcome.error !== null) {
            merged[`${r.outcome.name}.error`] = r.outcome.error;
            if (active[i]!.onError === 'tempfail' && !failed) failed = r.outcome;
        }
    }
    const frozen = Object.freeze(merged);
    const decision: Decision = failed
        ? {
              action: 'tempfail',
              rules: [],
              score: 0,
              reason: `check ${failed.name} failed: ${failed.error}`,
              reply: replyFor('check-failed', { id: context.sessionId }),
              headers: [],
          }
        : decider.decide(stage, frozen);
    return { facts: frozen, headers, decision, checks: results.map((r) => r.outcome) };
}
