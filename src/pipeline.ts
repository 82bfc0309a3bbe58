/**
 * Runs the checks of one stage and asks the decider for a decision.
 * Checks report facts and never choose a reply; each has a timeout and a declared failure
 * verdict (`onError`): `tempfail` makes the stage answer 4xx, `ignore` goes on without that
 * check's facts. A failing check is recorded as the fact `<check>.error`. Our own failures
 * are never turned into a 5xx and never let mail through silently.
 */
import type { Decider, Decision, Facts, FactValue, Stage } from './types.ts';

export interface CheckContext {
    readonly stage: Stage;
    /** Facts known before this stage's checks ran. */
    readonly facts: Facts;
}

export interface Check {
    /** Stable snake_case name used in facts, logs and metric labels. */
    readonly name: string;
    readonly stages: readonly Stage[];
    readonly timeoutMs: number;
    readonly onError: 'tempfail' | 'ignore';
    run(ctx: CheckContext, signal: AbortSignal): Promise<Facts>;
}

export interface CheckOutcome {
    readonly name: string;
    readonly ms: number;
    readonly error: string | null;
}

export interface StageResult {
    readonly facts: Facts;
    readonly decision: Decision;
    readonly checks: readonly CheckOutcome[];
}

/** The decider used until rule files are configured: every message is accepted. */
export const acceptAll: Decider = {
    decide: () => ({ action: 'accept', rules: [], score: 0, reason: 'no rule matched', headers: [] }),
};

class CheckTimeout extends Error {}

async function runOne(
    check: Check,
    ctx: CheckContext,
    now: () => number,
): Promise<{ facts: Facts; outcome: CheckOutcome }> {
    const started = now();
    const controller = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    try {
        const facts = await Promise.race([
            check.run(ctx, controller.signal),
            new Promise<never>((_, reject) => {
                timer = setTimeout(
                    () => reject(new CheckTimeout(`timed out after ${check.timeoutMs} ms`)),
                    check.timeoutMs,
                );
            }),
        ]);
        return { facts, outcome: { name: check.name, ms: now() - started, error: null } };
    } catch (err) {
        controller.abort();
        const message = err instanceof CheckTimeout ? 'timeout' : err instanceof Error ? err.message : String(err);
        return { facts: {}, outcome: { name: check.name, ms: now() - started, error: message } };
    } finally {
        clearTimeout(timer);
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
    facts: Facts,
    decider: Decider,
    now: () => number = Date.now,
): Promise<StageResult> {
    const ctx: CheckContext = { stage, facts };
    const active = checks.filter((c) => c.stages.includes(stage));
    const results = await Promise.all(active.map((c) => runOne(c, ctx, now)));
    const merged: Record<string, FactValue> = { ...facts };
    let failed: CheckOutcome | null = null;
    for (const [i, r] of results.entries()) {
        Object.assign(merged, r.facts);
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
              reply: {
                  code: 451,
                  enhanced: '4.4.3',
                  text: 'A policy check could not be completed; please try again later',
              },
              headers: [],
          }
        : decider.decide(stage, frozen);
    return { facts: frozen, decision, checks: results.map((r) => r.outcome) };
}
