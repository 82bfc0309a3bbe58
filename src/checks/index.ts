/**
 * The one list of checks: which checks mailwarden runs, built from the config, in the order their
 * facts and headers are merged. `createApp` (src/app.ts) and `explain` (src/commands/explain.ts)
 * both build their checks here. Each check is declared in its own file of this folder (name,
 * stages, timeout, failure verdict) over its engine. This file must NOT run a check or decide.
 */
import type { Config } from '../config/types.ts';
import type { Resolver } from '../dns/resolver.ts';
import type { RateLimitCheckOptions } from '../limits/check.ts';
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics.ts';
import type { Check } from '../types.ts';
import { createIprevCheck } from './iprev.ts';
import { createLoginSignalsCheck } from './login-signals.ts';
import { createMailauthCheck } from './mailauth.ts';
import type { VerifyThread } from '../sender-auth/verify-thread.ts';
import { createRateLimitCheck } from './ratelimit.ts';

/** The checks that keep per-session state in the limit store (built once, never replaced). */
export function limitChecks(config: Config, limits?: RateLimitCheckOptions): Check[] {
    return [
        ...(limits ? [createRateLimitCheck(limits)] : []),
        ...(limits && config.auth
            ? [
                  createLoginSignalsCheck({
                      store: limits.store,
                      windowMs: 60 * 60_000,
                      now: limits.now ?? Date.now,
                      guard: config.auth.lockout,
                  }),
              ]
            : []),
    ];
}

/**
 * The checks that verify the client and the sender (iprev; SPF, DKIM, DMARC, ARC). They hold
 * no state, so a reload that changes `dns` or `authentication` settings builds new ones.
 */
export function verificationChecks(
    config: Config,
    resolver: Resolver,
    metrics: Metrics,
    log?: Pick<Logger, 'debug' | 'warn'>,
    thread?: VerifyThread | null,
): Check[] {
    return [
        createIprevCheck(resolver, config.dns.timeoutMs * 2),
        createMailauthCheck({
            hostname: config.hostname,
            resolver,
            localDomains: config.domains,
            settings: config.authentication,
            metrics,
            ...(log ? { log } : {}),
            ...(thread ? { thread } : {}),
        }),
    ];
}

/**
 * The checks of a running proxy, in the order their facts and headers are merged: the limit
 * checks, the verification checks, then the reputation check (built by the reputation service,
 * which owns its lists' health). `createApp` builds the same list with each part it may replace
 * on reload behind a forwarding check.
 */
export function defaultChecks(
    config: Config,
    resolver: Resolver,
    metrics: Metrics,
    limits?: RateLimitCheckOptions,
    reputation?: Check,
): Check[] {
    return [
        ...limitChecks(config, limits),
        ...verificationChecks(config, resolver, metrics, limits?.logger),
        ...(reputation ? [reputation] : []),
    ];
}
