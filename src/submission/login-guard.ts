/**
 * Brute-force protection for SMTP AUTH: failed logins are counted per client IP and per
 * login in the shared limit store (Redis when configured, memory otherwise), so every
 * instance sees the same counts. Past the limit, AUTH is refused before any password is
 * checked (`454 4.7.0`, and `421 4.7.0` with disconnection once a client keeps trying), until
 * the counts have drained. A successful login resets nothing: an attacker who owns one account
 * must not be able to clear the failures of an IP or of another login. A store failure never
 * locks anyone out (the password check goes on), and is counted by the store's metrics.
 * It decides only whether to check credentials; replies come from reply.ts.
 */
import { createHash } from 'node:crypto';
import type { LimitStore, Window } from '../limits/types.ts';

export interface LoginGuardSettings {
    /** Failed logins allowed per client IP, per window. */
    readonly perIp: Window;
    /** Failed logins allowed per login name, per window (slows guessing one account from many IPs). */
    readonly perLogin: Window;
}

export const DEFAULT_LOGIN_GUARD: LoginGuardSettings = {
    perIp: { limit: 10, periodMs: 15 * 60_000 },
    perLogin: { limit: 20, periodMs: 60 * 60_000 },
};

export type GuardVerdict =
    | { readonly allowed: true }
    | { readonly allowed: false; readonly retryAfterMs: number; readonly scope: 'ip' | 'login' };

/** IPv6 clients are counted per /64, where one host usually owns every address. */
function ipKey(ip: string): string {
    if (!ip.includes(':')) return ip;
    const groups = ip.toLowerCase().split('::');
    const head = (groups[0] ?? '').split(':').filter(Boolean);
    const tail = groups.length > 1 ? (groups[1] ?? '').split(':').filter(Boolean) : [];
    const full = [...head, ...Array<string>(Math.max(0, 8 - head.length - tail.length)).fill('0'), ...tail];
    return `${full.slice(0, 4).join(':')}::/64`;
}

/** Login names are attacker-chosen: hash them so keys stay short and printable. */
export function loginKey(login: string): string {
    return createHash('sha256').update(login.toLowerCase()).digest('base64url').slice(0, 22);
}

export interface LoginGuard {
    /** Before checking credentials: may this client try to log in as `login` now? */
    check(ip: string, login: string, nowMs: number): Promise<GuardVerdict>;
    /** After a wrong password or an unknown login. */
    failed(ip: string, login: string, nowMs: number): Promise<void>;
}

export function createLoginGuard(store: LimitStore, settings: LoginGuardSettings = DEFAULT_LOGIN_GUARD): LoginGuard {
    const keys = (ip: string, login: string): { ip: string; login: string } => ({
        ip: `authfail:ip:${ipKey(ip)}`,
        login: `authfail:login:${loginKey(login)}`,
    });
    return {
        async check(ip, login, nowMs) {
            const k = keys(ip, login);
            try {
                // cost 0 reads without charging; a bucket with nothing left means the limit is reached
                const [byIp, byLogin] = await Promise.all([
                    store.take(k.ip, [settings.perIp], 0, nowMs),
                    store.take(k.login, [settings.perLogin], 0, nowMs),
                ]);
                if (byIp.remaining < 1)
                    return { allowed: false, scope: 'ip', retryAfterMs: retryAfter(settings.perIp) };
                if (byLogin.remaining < 1) {
                    return { allowed: false, scope: 'login', retryAfterMs: retryAfter(settings.perLogin) };
                }
            } catch {
                // fail open: a store outage must not lock every user out; passwords are still checked
            }
            return { allowed: true };
        },
        async failed(ip, login, nowMs) {
            const k = keys(ip, login);
            await Promise.all([
                store.take(k.ip, [settings.perIp], 1, nowMs).catch(() => undefined),
                store.take(k.login, [settings.perLogin], 1, nowMs).catch(() => undefined),
            ]);
        },
    };
}

/** GCRA frees one unit every period/limit: the earliest time a new try can be admitted. */
function retryAfter(w: Window): number {
    return Math.ceil(w.periodMs / w.limit);
}
