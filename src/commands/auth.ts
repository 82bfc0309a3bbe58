/**
 * `mailwarden auth status|unlock [--ip ADDRESS] [--login LOGIN] [-c FILE]`: shows or clears the
 * failed-login counts of the login lockout (auth.lockout) for a client address (an IPv6 address
 * counts for its /48) and/or a login, in the shared store the configuration names (`redis:`),
 * so an operator can let a locked-out user in at once. Counts kept in the memory of a running
 * mailwarden (no `redis:` section, or the fallback while Redis was away) cannot be reached from
 * outside: it says so and what to do instead. It reads and clears counters only; it never sees
 * a password. Exit codes: 0 done, 1 failed (configuration, store), 2 usage error.
 */
import { parseArgs } from 'node:util';
import { ConfigError, formatIssue, loadConfig, resolveConfigPath } from '../config/load.ts';
import type { Config } from '../config/types.ts';
import { formatDuration } from '../config/units.ts';
import { createConfiguredStore, describeRedis } from '../limits/configured.ts';
import type { RedisLimitStore } from '../limits/redis-store.ts';
import type { LimitStore } from '../limits/types.ts';
import type { Logger } from '../log.ts';
import { createMetrics } from '../metrics.ts';
import { compileCidrs, parseIp } from '../net/ip.ts';
import { createLoginGuard, type GuardCount } from '../submission/login-guard.ts';
import { VERSION } from '../version.ts';

export interface AuthIo {
    readonly out: (line: string) => void;
    readonly err: (line: string) => void;
    readonly env: NodeJS.ProcessEnv;
    readonly cwd: string;
    /** The clock (tests). */
    readonly now?: () => number;
}

export const AUTH_USAGE = `Usage: mailwarden auth <status|unlock> [--ip ADDRESS] [--login LOGIN] [-c FILE]

  status    show the failed logins counted for a client address and/or a login
  unlock    forget them: the address or login may log in again at once

Options:
  --ip ADDRESS         a client address (an IPv6 address stands for its /48)
  --login LOGIN        a login, as clients send it (case does not matter)
  -c, --config FILE    the configuration (its redis: and auth.lockout: sections)

The counts live in Redis when the configuration has a redis: section; without one, each
running mailwarden keeps them in its memory, and only a restart clears them.
`;

class UsageError extends Error {}

export async function runAuth(argv: readonly string[], io: AuthIo): Promise<number> {
    try {
        return await auth(argv, io);
    } catch (err) {
        if (!(err instanceof UsageError)) throw err;
        io.err(`mailwarden auth: ${err.message}`);
        io.err('');
        for (const line of AUTH_USAGE.trimEnd().split('\n')) io.err(line);
        return 2;
    }
}

async function auth(argv: readonly string[], io: AuthIo): Promise<number> {
    let parsed;
    try {
        parsed = parseArgs({
            args: [...argv],
            allowPositionals: true,
            strict: true,
            options: {
                ip: { type: 'string' },
                login: { type: 'string' },
                config: { type: 'string', short: 'c' },
                help: { type: 'boolean', short: 'h' },
            },
        });
    } catch (err) {
        throw new UsageError(err instanceof Error ? err.message : String(err));
    }
    const { values, positionals } = parsed;
    const [action, ...extra] = positionals;
    if (values.help || action === 'help') {
        for (const line of AUTH_USAGE.trimEnd().split('\n')) io.out(line);
        return 0;
    }
    if (action !== 'status' && action !== 'unlock') {
        throw new UsageError(action === undefined ? 'name an action: status or unlock' : `unknown action '${action}'`);
    }
    if (extra.length > 0) throw new UsageError(`unexpected '${extra[0] ?? ''}'`);
    const { ip, login } = values;
    if (ip === undefined && login === undefined) throw new UsageError(`${action} needs --ip ADDRESS or --login LOGIN`);
    if (ip !== undefined && parseIp(ip) === null) throw new UsageError(`"${ip}" is not an IP address`);
    if (login !== undefined && login.trim() === '') throw new UsageError('--login needs a login');

    let config: Config;
    try {
        config = loadConfig(resolveConfigPath({ flag: values.config, env: io.env, cwd: io.cwd }), io.env, {
            cwd: io.cwd,
        });
    } catch (err) {
        if (!(err instanceof ConfigError)) throw err;
        for (const issue of err.issues) io.err(formatIssue(issue));
        return 1;
    }
    if (!config.auth) {
        io.err('mailwarden auth: the configuration has no auth section: there is no login to protect');
        return 1;
    }
    const lockout = config.auth.lockout;
    if (config.redis === null) {
        io.err(
            'mailwarden auth: without a redis: section each running mailwarden counts failed logins in its own ' +
                'memory, out of reach of this command. Restart mailwarden to clear every count, or wait: ' +
                describeDrain(lockout.perIp, 'an address') +
                '; ' +
                describeDrain(lockout.perLogin, 'a login') +
                '.',
        );
        return 1;
    }
    if (ip !== undefined && compileCidrs(lockout.exempt)(ip)) {
        io.out(`ip ${ip}: exempt (auth.lockout.exempt): never counted, never locked out`);
    }

    const quiet = { warn: () => undefined, info: () => undefined } as unknown as Pick<Logger, 'warn' | 'info'>;
    const store: LimitStore = createConfiguredStore(config.redis, { metrics: createMetrics(VERSION), logger: quiet });
    try {
        try {
            await (store as RedisLimitStore).waitUntilReady(2 * config.redis.connectTimeoutMs);
        } catch {
            io.err(`mailwarden auth: cannot reach ${describeRedis(config.redis)}; nothing was read or changed`);
            return 1;
        }
        const guard = createLoginGuard({ store, settings: lockout });
        const target = { ...(ip !== undefined ? { ip } : {}), ...(login !== undefined ? { login } : {}) };
        const now = (io.now ?? Date.now)();
        const before = await guard.status(target, now);
        if (action === 'status') {
            for (const c of before) io.out(describeCount(c));
            if (before.length === 0) io.out('failed logins are not counted for this (auth.lockout: false)');
            return 0;
        }
        const cleared = await guard.unlock(target, now);
        for (const c of before) {
            io.out(
                `${c.scope} ${c.subject}: unlocked (${c.failures} failed login${c.failures === 1 ? '' : 's'} forgotten)`,
            );
        }
        if (cleared > 0) {
            io.out(
                'A mailwarden that counted in its own memory while Redis was away keeps those counts until it restarts.',
            );
        }
        return 0;
    } finally {
        await store.close();
    }
}

function describeCount(c: GuardCount): string {
    const rate = `${c.limit}/${formatDuration(c.periodMs)}`;
    const state = c.locked
        ? `locked: no login is checked until one drains (one every ${formatDuration(Math.ceil(c.periodMs / c.limit))})`
        : 'not locked';
    return `${c.scope} ${c.subject}: ${c.failures} of ${rate} failed logins counted; ${state}`;
}

function describeDrain(rate: { limit: number; periodMs: number } | null, what: string): string {
    if (rate === null) return `${what} is not counted`;
    return `${what} may try again ${formatDuration(Math.ceil(rate.periodMs / rate.limit))} after its last failure`;
}
