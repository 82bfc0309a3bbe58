/**
 * Signals of a compromised submission account, per login over a sliding window, kept in the
 * shared limit store so every instance counts together: distinct client IPs the login used,
 * recipients it sent to, and failed logins for it. They become facts (`auth.login.ips`,
 * `auth.login.recipients`, `auth.login.failures`) for rules: the shipped rule only monitors;
 * an operator can make it tempfail. Counts decay linearly over the window (a leaky bucket per
 * counter), so they approximate "in the last hour" without storing every event. It reports
 * facts only; a store failure leaves the facts out (rules then do not match).
 */
import { createHash } from 'node:crypto';
import type { LimitStore, Window } from '../limits/types.ts';
import type { Check, CheckResult } from '../types.ts';
import { createLoginGuard, loginKey, type LoginGuardSettings } from '../submission/login-guard.ts';

/** A counter: a bucket so large it never refuses; what is used of it is the count. */
const BIG = 1_000_000;

function hashed(text: string): string {
    return createHash('sha256').update(text).digest('base64url').slice(0, 22);
}

export interface LoginSignalsOptions {
    readonly store: LimitStore;
    readonly windowMs: number;
    readonly now: () => number;
    /** The failed-login limits whose per-login count becomes `auth.login.failures` (default: the defaults). */
    readonly guard?: LoginGuardSettings;
    readonly timeoutMs?: number;
}

export function createLoginSignalsCheck(opts: LoginSignalsOptions): Check {
    const counter: Window = { limit: BIG, periodMs: opts.windowMs };
    const guard = createLoginGuard({ store: opts.store, ...(opts.guard ? { settings: opts.guard } : {}) });
    const count = async (key: string, cost: number): Promise<number> => {
        const r = await opts.store.take(key, [counter], cost, opts.now());
        return Math.max(0, BIG - r.remaining);
    };
    return {
        name: 'login_signals',
        stages: ['mail', 'rcpt'],
        timeoutMs: opts.timeoutMs ?? 2000,
        onError: 'ignore',
        async run(ctx): Promise<CheckResult> {
            const login = ctx.client.login;
            if (!login) return { facts: {} };
            const user = loginKey(login);
            if (ctx.stage === 'rcpt') {
                return { facts: { 'auth.login.recipients': await count(`sig:rcpts:${user}`, 1) } };
            }
            const now = opts.now();
            // a client IP new for this login in the window adds one to its distinct-IP count
            const seen = await opts.store.take(
                `sig:seen:${user}:${hashed(ctx.client.ip)}`,
                [{ limit: 1, periodMs: opts.windowMs }],
                1,
                now,
            );
            const ips = await count(`sig:ips:${user}`, seen.allowed ? 1 : 0);
            const failures = await guard.loginFailures(login, now);
            return {
                facts: {
                    'auth.login.ips': ips,
                    'auth.login.recipients': await count(`sig:rcpts:${user}`, 0),
                    ...(failures === null ? {} : { 'auth.login.failures': failures }),
                },
            };
        },
    };
}
