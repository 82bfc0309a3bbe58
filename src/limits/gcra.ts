/**
 * The GCRA arithmetic (generic cell rate algorithm, the "virtual scheduling" form) for one or
 * several windows at once, in exact integers. The memory store runs it directly; limits.lua
 * is a line-by-line copy for Redis, and both are tested against one table of cases. Must
 * stay pure: no clock (the caller passes `now`), no storage.
 *
 * Per window (limit L, period P): the emission interval is T = P / L and the burst is L,
 * so the tolerance is T x L = P. The state is the theoretical arrival time (TAT); an empty
 * bucket has TAT <= now. Taking `cost` moves TAT to max(TAT, now) + cost x T and is admitted
 * when the new TAT - P <= now. T is rarely a whole number of milliseconds, so TAT is kept
 * as whole milliseconds plus a remainder counted in 1/L ms (0 <= frac < L): no rounding,
 * hence exactly L admitted per empty window and identical answers from Lua and TypeScript.
 */
import type { TakeResult, Window } from './types.ts';

/** TAT = whole + frac / limit milliseconds. */
export interface GcraState {
    readonly whole: number;
    readonly frac: number;
}

export interface GcraOutcome {
    readonly result: TakeResult;
    /** When admitted with cost > 0: the new state of each window and its time to live (ms). */
    readonly writes: readonly { readonly state: GcraState; readonly ttlMs: number }[] | null;
}

/** Floor division and remainder that stay exact for integers below 2^53. */
export function divmod(a: number, b: number): [number, number] {
    let q = Math.floor(a / b);
    let r = a - q * b;
    if (r < 0) {
        q -= 1;
        r += b;
    } else if (r >= b) {
        q += 1;
        r -= b;
    }
    return [q, r];
}

/** Stored form, also used by the Lua script: `whole:frac`. */
export function encodeState(s: GcraState): string {
    return `${s.whole}:${s.frac}`;
}

export function decodeState(value: string | null | undefined): GcraState | null {
    if (!value) return null;
    const m = /^(-?\d+):(\d+)$/.exec(value);
    if (!m) return null;
    return { whole: Number(m[1]), frac: Number(m[2]) };
}

/**
 * One decision over all windows; `states[i]` belongs to `windows[i]` (null: nothing stored).
 * Arguments are assumed valid (types.ts checkTake).
 */
export function gcra(
    states: readonly (GcraState | null)[],
    windows: readonly Window[],
    cost: number,
    now: number,
): GcraOutcome {
    let allowed = true;
    let retryAfterMs = 0;
    let charged = Infinity;
    let uncharged = Infinity;
    const next: GcraState[] = [];
    for (let i = 0; i < windows.length; i++) {
        const { limit, periodMs } = windows[i]!;
        const s = states[i];
        // An empty or past TAT means a full bucket: start from now.
        let baseW = now;
        let baseF = 0;
        if (s && s.whole >= now) {
            baseW = s.whole;
            baseF = s.frac;
        }
        const [q, r] = divmod(baseF + cost * periodMs, limit);
        const newW = baseW + q;
        // allowAt = newTat - P: the earliest time this cost fits.
        const allowW = newW - periodMs;
        if (allowW > now || (allowW === now && r > 0)) {
            allowed = false;
            const wait = allowW - now + (r > 0 ? 1 : 0);
            if (wait > retryAfterMs) retryAfterMs = wait;
        } else {
            const [rem] = divmod((now - allowW) * limit - r, periodMs);
            if (rem < charged) charged = rem;
        }
        const [cur] = divmod((now - baseW + periodMs) * limit - baseF, periodMs);
        if (cur < uncharged) uncharged = cur;
        next.push({ whole: newW, frac: r });
    }
    if (!allowed) return { result: { allowed, retryAfterMs, remaining: Math.max(0, uncharged) }, writes: null };
    const writes =
        cost > 0
            ? next.map((state) => ({ state, ttlMs: Math.max(1, state.whole - now + (state.frac > 0 ? 1 : 0)) }))
            : null;
    return { result: { allowed, retryAfterMs: 0, remaining: Math.max(0, charged) }, writes };
}

/** What one step over several independent counters came to (gcraCounters). */
export interface CountersOutcome {
    /** Every counter admits the cost (a negative cost is always admitted). */
    readonly allowed: boolean;
    /** Per counter: whether it alone admits, its wait, and units of cost 1 left (after the charge when charged). */
    readonly results: readonly TakeResult[];
    /**
     * When charged (allowed and cost ≠ 0): per counter its new state and time to live, or null
     * when the counter is back to a full bucket and its state can be dropped.
     */
    readonly writes: readonly ({ readonly state: GcraState; readonly ttlMs: number } | null)[] | null;
}

/**
 * Several counters of one window each, charged together or not at all: the step of
 * LimitStore.charge (the `charge` operation of limits.lua is a copy). Unlike gcra(), each counter reports
 * its own verdict, so a caller knows which one refused. A negative cost gives units back
 * (never refused; the bucket never holds more than its limit). Arguments are assumed valid.
 */
export function gcraCounters(
    states: readonly (GcraState | null)[],
    windows: readonly Window[],
    cost: number,
    now: number,
): CountersOutcome {
    let allowed = true;
    const ok: boolean[] = [];
    const retry: number[] = [];
    const charged: number[] = [];
    const uncharged: number[] = [];
    const next: GcraState[] = [];
    for (let i = 0; i < windows.length; i++) {
        const { limit, periodMs } = windows[i]!;
        const s = states[i];
        let baseW = now;
        let baseF = 0;
        if (s && s.whole >= now) {
            baseW = s.whole;
            baseF = s.frac;
        }
        const [q, r] = divmod(baseF + cost * periodMs, limit);
        const newW = baseW + q;
        const allowW = newW - periodMs;
        if (allowW > now || (allowW === now && r > 0)) {
            allowed = false;
            ok.push(false);
            retry.push(allowW - now + (r > 0 ? 1 : 0));
            charged.push(0);
        } else {
            ok.push(true);
            retry.push(0);
            const [rem] = divmod((now - allowW) * limit - r, periodMs);
            charged.push(Math.min(limit, Math.max(0, rem)));
        }
        const [cur] = divmod((now - baseW + periodMs) * limit - baseF, periodMs);
        uncharged.push(Math.min(limit, Math.max(0, cur)));
        next.push({ whole: newW, frac: r });
    }
    const results = windows.map((_, i) => ({
        allowed: ok[i]!,
        retryAfterMs: retry[i]!,
        remaining: allowed ? charged[i]! : uncharged[i]!,
    }));
    if (!allowed || cost === 0) return { allowed, results, writes: null };
    const writes = next.map((state) =>
        state.whole < now || (state.whole === now && state.frac === 0)
            ? null
            : { state, ttlMs: Math.max(1, state.whole - now + (state.frac > 0 ? 1 : 0)) },
    );
    return { allowed, results, writes };
}
