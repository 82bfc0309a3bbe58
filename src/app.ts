/**
 * createApp(config, deps): the whole proxy as an object the tests and `serve` build alike.
 * The world (logger, clock, upstream, decider, checks) is injected here; nothing below reads
 * the environment or the real clock directly. start() opens the listeners and the HTTP
 * endpoint; stop() drains: no new connections, `421 4.3.2` to sessions that are not in the
 * middle of a message, messages in flight finish within the shutdown timeout.
 */
import { randomUUID } from 'node:crypto';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Config } from './config/types.ts';
import { createHttpServer } from './http.ts';
import { createListener, type AuthBackend, type RunningListener } from './listener.ts';
import { createLogger, type Logger } from './log.ts';
import { createMetrics, type Metrics } from './metrics.ts';
import { createMailauthCheck } from './auth/mailauth.ts';
import { createIprevCheck } from './checks/iprev.ts';
import { createResolver, type Resolver } from './dns/resolver.ts';
import {
    createConfiguredStore,
    createRateLimitCheck,
    waitForStore,
    type LimitStore,
    type RateLimitCheckOptions,
} from './limits/index.ts';
import { acceptAll, type Check } from './pipeline.ts';
import { replyFor } from './reply.ts';
import { loadRuleSet, watchRuleSet, withRuleHits, type RuleSet, type RuleWatcher } from './rules/index.ts';
import { createDkimSignerFromConfig, createSubmissionAuth, type DkimSigner } from './submission/index.ts';
import { createLoginGuard } from './submission/login-guard.ts';
import { createLoginSignalsCheck } from './submission/login-signals.ts';
import type { Decider } from './types.ts';
import { createUpstream } from './upstream/index.ts';
import type { Upstream } from './upstream/types.ts';
import { VERSION } from './version.ts';

export interface AppDeps {
    readonly logger?: Logger;
    readonly now?: () => number;
    readonly upstream?: Upstream;
    readonly decider?: Decider;
    readonly checks?: readonly Check[];
    /** Overrides the login backend built from `auth:` (tests). */
    readonly auth?: AuthBackend | null;
    readonly signer?: DkimSigner | null;
    readonly metrics?: Metrics;
    readonly resolver?: Resolver;
    /** The store of rate limits and greylisting; built from `redis:` (or in memory) when left out. */
    readonly limitStore?: LimitStore;
}

export interface App {
    readonly config: Config;
    readonly metrics: Metrics;
    readonly log: Logger;
    /** Bound listeners with their actual ports (port 0 in config picks a free one). */
    readonly listeners: readonly { name: string; host: string; port: number }[];
    readonly httpPort: number | null;
    start(): Promise<void>;
    /**
     * Drains and stops; resolves when every session has ended. Sessions are told `421 4.3.2`
     * "Service shutting down", or "Service restarting" when `restart` says the operator
     * asked for a restart (mailwarden is then back within seconds).
     */
    stop(options?: { readonly restart?: boolean }): Promise<void>;
    /** Replaces the decider (rule reload); sessions pick it up at their next stage. */
    setDecider(decider: Decider): void;
    /** SIGHUP: re-reads every reloadable input (registered with onReload). */
    reload(): void;
    /** Registers something to re-read on reload; it reports success or throws. */
    onReload(name: string, fn: () => void): void;
    readonly draining: boolean;
}

interface SmtpConnectionLike {
    session: { id: string };
    send(code: number, text: string): void;
    close(): void;
}

/** The checks of a running proxy, in the order their facts and headers are merged. */
export function defaultChecks(
    config: Config,
    resolver: Resolver,
    metrics: Metrics,
    limits?: RateLimitCheckOptions,
): Check[] {
    return [
        ...(limits ? [createRateLimitCheck(limits)] : []),
        ...(limits && config.auth
            ? [createLoginSignalsCheck({ store: limits.store, windowMs: 60 * 60_000, now: limits.now ?? Date.now })]
            : []),
        createIprevCheck(resolver, config.dns.timeoutMs * 2),
        createMailauthCheck({
            hostname: config.hostname,
            resolver,
            localDomains: config.domains,
            settings: config.authentication,
            metrics,
        }),
    ];
}

export function createApp(config: Config, deps: AppDeps = {}): App {
    const log = deps.logger ?? createLogger(config.log.level);
    const metrics = deps.metrics ?? createMetrics(VERSION);
    const now = deps.now ?? Date.now;
    const upstream = deps.upstream ?? createUpstream(config.upstream, { hostname: config.hostname, logger: log });
    const countHits = (rs: RuleSet): Decider =>
        withRuleHits(rs, (hit) => metrics.ruleHits.inc({ rule: hit.id, action: hit.action, mode: hit.mode }));
    // Rule files are validated before anything listens: an invalid set stops the start (RuleError).
    let ruleSet: RuleSet | null = deps.decider ? null : loadRuleSet(config.rules, { softReject: config.softReject });
    let decider = deps.decider ?? (ruleSet ? countHits(ruleSet) : acceptAll);
    let watcher: RuleWatcher | null = null;
    const applyRules = (rs: RuleSet): void => {
        ruleSet = rs;
        decider = countHits(rs);
    };
    const resolver =
        deps.resolver ?? createResolver({ servers: config.dns.servers, timeoutMs: config.dns.timeoutMs, metrics, now });
    const limitStore = deps.limitStore ?? createConfiguredStore(config.redis, { metrics, logger: log });
    const checks: readonly Check[] =
        deps.checks ??
        defaultChecks(config, resolver, metrics, {
            store: limitStore,
            declarations: () => ruleSet,
            metrics,
            now,
            logger: log,
            instanceId: randomUUID(),
            storeTimeoutMs: config.redis?.commandTimeoutMs,
        });
    let draining = false;
    let started = false;
    let http: Server | null = null;
    let httpPort: number | null = null;
    const reloaders: { name: string; fn: () => void }[] = [];
    /** The one place a reload (by signal or file change) is counted and logged. */
    const recordReload = (name: string, how: 'signal' | 'file change', error: unknown): void => {
        metrics.configReloads.inc({ result: error ? 'error' : 'ok' });
        if (!error) {
            log.info({ reload: name, how }, 'reloaded');
            return;
        }
        const text = error instanceof Error ? error.message : typeof error === 'string' ? error : 'invalid input';
        const issues = text.split('\n');
        const kept = name === 'rules' ? 'the previous rules stay in force' : 'the previous version stays in force';
        log.error({ reload: name, how, issues }, `reload failed; ${kept}`);
    };

    const submission =
        deps.auth !== undefined
            ? null
            : config.auth
              ? createSubmissionAuth(config.auth, {
                    // the users (or sendAs) file changed on disk and was re-read
                    onReload: (e) => recordReload('users', 'file change', e.ok ? null : e.error),
                })
              : null;
    const auth: AuthBackend | null = deps.auth !== undefined ? deps.auth : submission;
    const signer =
        deps.signer !== undefined ? deps.signer : config.dkim ? createDkimSignerFromConfig(config.dkim) : null;
    if (submission) reloaders.push({ name: 'users', fn: () => submission.reload() });
    if (config.tls) reloaders.push({ name: 'tls', fn: () => listeners.forEach((l) => l.reloadTls()) });

    const listeners: RunningListener[] = config.listeners.map((l) =>
        createListener(config, l, {
            config,
            upstream,
            decider: () => decider,
            checks,
            metrics,
            log,
            now,
            isDraining: () => draining,
            auth,
            signer,
            loginGuard: auth ? createLoginGuard(limitStore) : null,
        }),
    );

    const readiness = async (): Promise<string | null> => {
        if (!started || draining) return draining ? 'shutting down' : 'starting';
        try {
            await upstream.probe();
        } catch (err) {
            return `upstream ${upstream.description}: ${err instanceof Error ? err.message : String(err)}`;
        }
        if (config.redis && !(await limitStore.ping())) return 'redis: not answering';
        return null;
    };

    if (ruleSet) {
        reloaders.push({
            name: 'rules',
            // throws RuleError on an invalid set; reload() keeps the old one and counts the error
            fn: () => applyRules(loadRuleSet(config.rules, { softReject: config.softReject })),
        });
    }

    const app: App = {
        config,
        metrics,
        log,
        get listeners() {
            return listeners.map((l) => ({ name: l.config.name, host: l.config.host, port: l.port }));
        },
        get httpPort() {
            return httpPort;
        },
        get draining() {
            return draining;
        },
        setDecider(d: Decider) {
            decider = d;
        },
        onReload(name: string, fn: () => void) {
            reloaders.push({ name, fn });
        },
        reload() {
            for (const r of reloaders) {
                let error: unknown = null;
                try {
                    r.fn();
                } catch (err) {
                    error = err ?? 'reload failed';
                }
                recordReload(r.name, 'signal', error);
            }
            if (reloaders.length === 0) log.info('reload: nothing reloadable is configured');
        },
        async start() {
            await waitForStore(limitStore, config.redis, 2 * (config.redis?.connectTimeoutMs ?? 0), log);
            for (const l of listeners) await l.listen();
            if (config.http) {
                const server = createHttpServer({ metrics, readiness });
                http = server;
                await new Promise<void>((resolve, reject) => {
                    server.once('error', reject);
                    server.listen(config.http!.port, config.http!.host, () => {
                        server.removeListener('error', reject);
                        httpPort = (server.address() as AddressInfo).port;
                        resolve();
                    });
                });
                log.info({ host: config.http.host, port: httpPort }, 'http endpoint listening');
            }
            if (ruleSet) {
                watcher = watchRuleSet(config.rules, {
                    softReject: config.softReject,
                    current: ruleSet,
                    onChange: (r) => {
                        if ('ok' in r) applyRules(r.ok);
                        recordReload('rules', 'file change', 'ok' in r ? null : r.error);
                    },
                });
            }
            started = true;
            log.info(
                { version: VERSION, upstream: upstream.description, config: config.source ?? 'embedded defaults' },
                'mailwarden started',
            );
        },
        async stop(options = {}) {
            if (draining) return;
            draining = true;
            const restart = options.restart === true;
            log.info({ timeoutMs: config.shutdownTimeoutMs, restart }, 'shutting down: draining sessions');
            watcher?.close();
            await Promise.all(listeners.map((l) => l.stopAccepting()));
            let expired = false;
            let gone = false;
            const timer = setTimeout(() => (expired = true), config.shutdownTimeoutMs);
            const giveUp = setTimeout(() => (gone = true), config.shutdownTimeoutMs + 1000);
            const bye = replyFor(restart ? 'restarting' : 'shutting-down', { id: '' });
            for (;;) {
                let open = 0;
                for (const l of listeners) {
                    const conns = (l.server as unknown as { connections: Set<SmtpConnectionLike> }).connections;
                    for (const conn of conns) {
                        open++;
                        const session = l.sessions.get(conn.session.id);
                        if (expired) conn.close();
                        else if (!session?.inData) conn.send(bye.code, `${bye.enhanced} ${bye.text}`);
                    }
                }
                if (open === 0 || gone) break;
                await new Promise((r) => setTimeout(r, 50));
            }
            clearTimeout(timer);
            clearTimeout(giveUp);
            if (http) {
                const server = http;
                await new Promise<void>((resolve) => {
                    server.close(() => resolve());
                    server.closeAllConnections();
                });
            }
            if (!deps.resolver) resolver.close();
            if (!deps.limitStore) await limitStore.close();
            submission?.close();
            log.info('stopped');
        },
    };
    return app;
}
