/**
 * Password-guessing protection for SMTP AUTH (RFC 4954 section 4; RFC 6409 submission). Before
 * a password is checked, one failure is reserved for the client IP (IPv6: its /48, the smallest
 * block an attacker gets separately, as Dovecot's auth penalty counts) and for the login, both
 * in one atomic step of the limit store (Redis when configured, so every instance counts
 * together). Over either limit, nothing is checked: the attempt is refused, whatever the
 * password. After the check the reservation is given back unless the credentials were wrong,
 * so only failures count and parallel attempts can never check more passwords than the limit
 * leaves. When the shared store does not answer, a per-process memory store takes over, so
 * guessing stays bounded while Redis is away. Exempt networks are neither counted nor refused.
 * It decides only whether credentials may be checked; replies come from reply.ts, and it must
 * never see a password.
 */
import { createHash } from 'node:crypto';
import type { AuthLockoutConfig } from '../config/types.ts';
import { defaultAuthLockout } from '../config/defaults.ts';
import { ipNetwork } from '../limits/limit-keys.ts';
import { createMemoryStore } from '../limits/memory-store.ts';
import type { Counter, LimitStore } from '../limits/types.ts';
import { compileCidrs } from '../net/ip.ts';
import type { AuthResult } from './auth-types.ts';

export type LoginGuardSettings = AuthLockoutConfig;

export const DEFAULT_LOGIN_GUARD: LoginGuardSettings = defaultAuthLockout();

/** The hash tag every failure counter shares, so one script charges an IP and a login together. */
export const GUARD_GROUP = 'authfail';

export type GuardScope = 'ip' | 'login';

/** Which store took the reservation: the shared one, or this process's memory while it is away. */
export type GuardStore = 'shared' | 'fallback';

/** A reservation to settle once the credentials were checked. */
export interface GuardTicket {
    readonly store: GuardStore | null;
    readonly counters: readonly Counter[];
}

export type GuardVerdict =
    | {
          readonly allowed: true;
          readonly ticket: GuardTicket;
          /** The client is in an exempt network: nothing was counted. */
          readonly exempt: boolean;
          readonly store: GuardStore | null;
      }
    | {
          readonly allowed: false;
          /** The limit that refused (the one with the longer wait when both did). */
          readonly scope: GuardScope;
          /** When one more attempt would be admitted. */
          readonly retryAfterMs: number;
          readonly store: GuardStore;
      };

/** The counters of an IP or a login, for `mailwarden auth status`. */
export interface GuardCount {
    readonly scope: GuardScope;
    /** The IP network or the login as counted. */
    readonly subject: string;
    /** Failures counted now (they drain one every period / limit). */
    readonly failures: number;
    readonly limit: number;
    readonly periodMs: number;
    /** No attempt is admitted now. */
    readonly locked: boolean;
}

/**
 * IPv6 clients are counted per /48: the longest prefix routed on the internet, so the usual
 * allocation of one site. Per /64, the holder of one /48 would get 65,536 failure budgets.
 */
export const GUARD_IPV6_PREFIX = 48;

/** What the client and login are counted as: the IP (IPv6: its /48), or the lower-cased login. */
export function ipSubject(ip: string): string {
    return ipNetwork(ip, 32, GUARD_IPV6_PREFIX) ?? ip.toLowerCase();
}

/** Login names are attacker-chosen: hash them so keys stay short and printable. */
export function loginKey(login: string): string {
    return createHash('sha256').update(login.toLowerCase()).digest('base64url').slice(0, 22);
}

/**
 * A login as `perLogin` counts it: lower-cased, and with `loginKey: localPart` its part before
 * the first `@` (Dovecot's `%n`), so that every spelling of one account is counted on the account
 * before any password is checked.
 */
export function countedLogin(login: string, key: LoginGuardSettings['loginKey']): string {
    const lower = login.toLowerCase();
    if (key !== 'localPart') return lower;
    const at = lower.indexOf('@');
    return at < 0 ? lower : lower.slice(0, at);
}

export interface LoginGuardOptions {
    /** The shared store (Redis, or memory when there is none). */
    readonly store: LimitStore;
    readonly settings?: LoginGuardSettings;
    /** Takes over while the shared store fails (default: a memory store of this process). */
    readonly fallback?: LimitStore;
    /** Each reservation the fallback took because the shared store failed. */
    readonly onFallback?: () => void;
}

export interface LoginGuard {
    readonly settings: LoginGuardSettings;
    /**
     * Before checking credentials: reserves one failure for the IP and the login, or refuses.
     * `loginOnly`: for the login alone (the IP was charged already), as when the login service
     * names the account otherwise than the client wrote it (reserved after the check, settled at once).
     */
    reserve(
        ip: string,
        login: string,
        nowMs: number,
        options?: { readonly loginOnly?: boolean },
    ): Promise<GuardVerdict>;
    /** The login as `perLogin` counts it (countedLogin with the settings' loginKey). */
    counted(login: string): string;
    /** After checking: gives the reservation back unless the result is 'invalid'. Never rejects. */
    settle(ticket: GuardTicket, result: AuthResult, nowMs: number): Promise<void>;
    /** Failures counted now for a login in the shared store; null when logins are not counted. */
    loginFailures(login: string, nowMs: number): Promise<number | null>;
    /** The counters of an IP and/or a login in the shared store (operators). */
    status(target: { ip?: string; login?: string }, nowMs: number): Promise<GuardCount[]>;
    /** Forgets the failures of an IP and/or a login in the shared store (operators); resolves how many were held. */
    unlock(target: { ip?: string; login?: string }, nowMs: number): Promise<number>;
}

export function createLoginGuard(opts: LoginGuardOptions): LoginGuard {
    const settings = opts.settings ?? DEFAULT_LOGIN_GUARD;
    const shared = opts.store;
    const fallback = opts.fallback ?? createMemoryStore({ maxKeys: 100_000 });
    const exempt = compileCidrs(settings.exempt);

    const ipCounter = (ip: string): Counter | null =>
        settings.perIp && { key: `ip:${ipSubject(ip)}`, window: settings.perIp };
    const counted = (login: string): string => countedLogin(login, settings.loginKey);
    const loginCounter = (login: string): Counter | null =>
        settings.perLogin && { key: `login:${loginKey(counted(login))}`, window: settings.perLogin };
    const targets = (t: { ip?: string; login?: string }): { scope: GuardScope; subject: string; c: Counter }[] => {
        const out: { scope: GuardScope; subject: string; c: Counter }[] = [];
        const i = t.ip === undefined ? null : ipCounter(t.ip);
        const l = t.login === undefined ? null : loginCounter(t.login);
        if (i && t.ip !== undefined) out.push({ scope: 'ip', subject: ipSubject(t.ip), c: i });
        if (l && t.login !== undefined) out.push({ scope: 'login', subject: counted(t.login), c: l });
        return out;
    };

    return {
        settings,
        counted,
        async reserve(ip, login, nowMs, options) {
            const counters = [options?.loginOnly ? null : ipCounter(ip), loginCounter(login)].filter(
                (c): c is Counter => c !== null,
            );
            if (exempt(ip) || counters.length === 0) {
                return { allowed: true, ticket: { store: null, counters: [] }, exempt: exempt(ip), store: null };
            }
            let store: GuardStore = 'shared';
            let result;
            try {
                result = await shared.charge(GUARD_GROUP, counters, 1, nowMs);
            } catch {
                // the shared store is away: this process counts alone until it answers again
                store = 'fallback';
                opts.onFallback?.();
                result = await fallback.charge(GUARD_GROUP, counters, 1, nowMs);
            }
            if (result.allowed) return { allowed: true, ticket: { store, counters }, exempt: false, store };
            const refused = result.counters.map((r, i) => ({ r, i })).filter(({ r }) => !r.allowed);
            const longest = refused.reduce((a, b) => (b.r.retryAfterMs > a.r.retryAfterMs ? b : a));
            const scope: GuardScope = counters[longest.i]!.key.startsWith('ip:') ? 'ip' : 'login';
            return { allowed: false, scope, retryAfterMs: longest.r.retryAfterMs, store };
        },
        async settle(ticket, result, nowMs) {
            if (ticket.store === null || result === 'invalid') return;
            const store = ticket.store === 'shared' ? shared : fallback;
            // a success or our own failure is not a guess: the unit goes back
            await store.charge(GUARD_GROUP, ticket.counters, -1, nowMs).catch(() => undefined);
        },
        async loginFailures(login, nowMs) {
            const c = loginCounter(login);
            if (!c) return null;
            const r = await shared.charge(GUARD_GROUP, [c], 0, nowMs);
            return Math.max(0, c.window.limit - Math.floor(r.counters[0]!.remaining));
        },
        async status(target, nowMs) {
            const out: GuardCount[] = [];
            for (const t of targets(target)) {
                const r = (await shared.charge(GUARD_GROUP, [t.c], 0, nowMs)).counters[0]!;
                out.push({
                    scope: t.scope,
                    subject: t.subject,
                    failures: t.c.window.limit - r.remaining,
                    limit: t.c.window.limit,
                    periodMs: t.c.window.periodMs,
                    locked: r.remaining < 1,
                });
            }
            return out;
        },
        async unlock(target, nowMs) {
            const list = targets(target);
            if (list.length === 0) return 0;
            return shared.reset(
                GUARD_GROUP,
                list.map((t) => t.c),
                nowMs,
            );
        },
    };
}
