/**
 * createApp(config, deps): the whole proxy as an object the tests and `serve` build alike.
 * The world (logger, clock, upstream, decider, checks) is injected here; nothing below reads
 * the environment or the real clock directly. start() learns what the upstream offers (one
 * probe, bounded in time), opens the listeners and the HTTP endpoint, and from then on runs the
 * readiness probe every 15 s (mailwarden_dependency_up) until stop(); stop() drains: no new
 * connections, `421 4.3.2` to sessions with no transaction open, transactions in flight (from
 * an accepted MAIL to the reply to their DATA) finish within the shutdown timeout and get the
 * `421` when they end; a message whose end of data went upstream then still gets its answer,
 * for up to upstream.dataTimeout more (src/drain.ts).
 * reload() (SIGHUP) re-reads the config file and applies the settings that can change live
 * (src/config/reload.ts says which), naming the others in a "needs a restart" log line; with
 * `dns.servers` not set it reads resolv.conf again too (a new resolver when its servers changed),
 * then re-reads rules, lists, users and certificates (the rules' file watcher then follows the
 * folders those paths name now).
 */
import { randomUUID } from 'node:crypto';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { isDeepStrictEqual } from 'node:util';
import { formatIssue, type Issue } from './config/issues.ts';
import { loadConfig } from './config/load.ts';
import { changedKeys, configAfterReload, diffConfig } from './config/reload.ts';
import type { Config } from './config/types.ts';
import { prepareSpoolFolder, SpoolMemory } from './data/spool.ts';
import { answerWaitMs, MessageWork } from './drain.ts';
import { createHttpServer } from './http.ts';
import { createListener, type RunningListener } from './listener.ts';
import { createPregreetGate } from './pregreet.ts';
import { createLogger, type Logger } from './log.ts';
import { createMetrics, type Metrics } from './metrics.ts';
import { limitChecks, verificationChecks } from './checks/index.ts';
import { createVerifyThread, type VerifyThread } from './sender-auth/verify-thread.ts';
import { createResolver, type Resolver } from './dns/resolver.ts';
import { RESOLV_CONF, systemServers } from './dns/system.ts';
import { createReputationService, type ReputationService } from './reputation/service.ts';
import { createConfiguredStore, createMemoryStore, waitForStore, type LimitStore } from './limits/index.ts';
import { acceptAll } from './pipeline.ts';
import { replyFor } from './reply.ts';
import {
    RuleError,
    loadRules,
    ruleOptions,
    watchRuleSet,
    withRuleHits,
    type RuleSet,
    type RuleWatcher,
} from './rules/index.ts';
import {
    createDkimSignerFromConfig,
    createSubmissionAuth,
    type DkimSigner,
    type AuthBackend,
} from './submission/index.ts';
import { createLoginGuard } from './submission/login-guard.ts';
import type { Session } from './session.ts';
import { sharedResult } from './shared-result.ts';
import type { Decider, Check, SmtpReply } from './types.ts';
import { CapabilityTracker } from './upstream/capabilities.ts';
import { createUpstream } from './upstream/index.ts';
import type { Upstream } from './upstream/types.ts';
import { loadedModules, VERSION } from './version.ts';

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
    /**
     * The file the DNS servers are read from while `dns.servers` is not set, at start and at
     * each reload (/etc/resolv.conf when left out; tests name a file of their own).
     */
    readonly resolvConf?: string;
    /**
     * The sender-authentication thread (authentication.thread); built when left out, started at
     * the first message and stopped with the app. One given is not stopped (tests give one that
     * misbehaves on purpose).
     */
    readonly verifyThread?: VerifyThread;
    /**
     * Start the sender-authentication thread with the app (serve): memory and descriptors are
     * steady from the start, the first message does not wait for it, and a thread that cannot
     * start fails the start. Otherwise it starts at the first message (tests, explain).
     */
    readonly warmVerifyThread?: boolean;
    /** The store of rate limits and greylisting; built from `redis:` (or in memory) when left out. */
    readonly limitStore?: LimitStore;
    /**
     * Clients that skip the pregreet wait besides those a connect-stage rule accepts (the allow
     * lists): a DNSWL check, for one. A rejection counts as "not exempt" (the client waits).
     */
    readonly pregreetExempt?: (ip: string) => Promise<boolean>;
    /**
     * The config file reload() reads again: the path as given at start (so its messages name the
     * file the same way), the environment its `${VAR}`s expand from, and the folder a relative
     * path is relative to. Left out (or the embedded defaults): reload() re-reads no config.
     */
    readonly configFile?: { readonly path: string; readonly env: NodeJS.ProcessEnv; readonly cwd?: string };
    /**
     * True in one of several workers (src/cluster): no HTTP endpoint even when `http:` is set (the
     * primary serves it for all) and `mailwarden_workers` left to the primary.
     */
    readonly worker?: boolean;
    /**
     * How many processes share the listeners (`workers`): each takes its share of every
     * listener's `maxClients` and `maxClientsPerNetwork`, so that the instance as a whole holds
     * the configured numbers (and the Postfix process limit sized for them). Default 1.
     */
    readonly workerShare?: number;
    /**
     * The memory the messages in flight share (src/data/spool.ts); a SpoolMemory of
     * SPOOL_MEMORY_BUDGET when left out (tests give a smaller one, and read what it holds).
     */
    readonly spoolMemory?: SpoolMemory;
    /** How often the readiness probe runs without being asked (DEPENDENCY_PROBE_MS when left out; tests give less). */
    readonly dependencyProbeMs?: number;
}

export interface App {
    /** The config in force: the start config with the live settings of every reload since. */
    readonly config: Config;
    readonly metrics: Metrics;
    readonly log: Logger;
    /** Bound listeners with their actual ports (port 0 in config picks a free one). */
    readonly listeners: readonly { name: string; host: string; port: number }[];
    readonly httpPort: number | null;
    start(): Promise<void>;
    /**
     * Drains and stops; resolves when every session has ended and every message in hand has
     * its decision line (at most shutdownTimeout + upstream.dataTimeout + 2 s: CUT_GRACE_MS for
     * the sessions cut short, then as much for the leases) and the idle upstream connections and
     * Redis are closed (their QUIT: at most 2 s, then redis.commandTimeout). Sessions are
     * told `421 4.3.2` "Service shutting down", or "Service restarting" when `restart` says the
     * operator asked for a restart (mailwarden is then back within seconds).
     */
    stop(options?: { readonly restart?: boolean }): Promise<void>;
    /** Replaces the decider (rule reload); sessions pick it up at their next stage. */
    setDecider(decider: Decider): void;
    /**
     * SIGHUP: re-reads the config file (live settings applied, the others named in a
     * "needs a restart" warning), then every reloadable input (registered with onReload).
     */
    reload(): void;
    /** Registers something to re-read on reload; it reports success or throws. */
    onReload(name: string, fn: () => void): void;
    /** What /readyz reports: null when ready, else a short reason. */
    readiness(): Promise<string | null>;
    readonly draining: boolean;
    /**
     * True when DNS allow lists vouch for the client (`dnswl.score < 0`); false without an
     * answer within the DNS timeout. For waits a known sender skips (the pregreet wait).
     */
    dnswlCredit(ip: string): Promise<boolean>;
}

/** After the drain cut the last messages short, how long their sessions get to log them and end. */
const CUT_GRACE_MS = 1000;

/** Longest wait at start for the upstream's EHLO before the listeners open (it goes on in the background). */
const STARTUP_PROBE_MS = 5000;
/** How long a readiness answer (an upstream session opened, Redis pinged) is given again to later /readyz requests. */
const READINESS_TTL_MS = 2000;
/**
 * How often each process runs the readiness probe by itself, so that mailwarden_dependency_up
 * follows the dependencies without traffic or /readyz requests: one upstream session (a Postfix
 * smtpd for a greeting, EHLO and QUIT) and one Redis PING per process every 15 s, not one per
 * scrape (with several workers a scrape asks every worker).
 */
const DEPENDENCY_PROBE_MS = 15_000;

interface SmtpConnectionLike {
    /** smtp-server's session: `envelope.mailFrom` is set from an accepted MAIL until the transaction ends. */
    session: { id: string; envelope?: { mailFrom?: unknown } };
    send(code: number, text: string): void;
    close(): void;
}

/**
 * A check that forwards every call to what `current()` returns then: the listeners keep this
 * object while a reload replaces the check behind it (a run in progress finishes on the old one).
 */
function delegate(current: () => Check): Check {
    const first = current();
    return {
        name: first.name,
        stages: first.stages,
        onError: first.onError,
        get timeoutMs() {
            return current().timeoutMs;
        },
        run: (ctx, signal) => current().run(ctx, signal),
        ...(first.prefetch ? { prefetch: (client, signal) => current().prefetch?.(client, signal) } : {}),
        ...(first.end ? { end: (id: string) => current().end?.(id) ?? Promise.resolve() } : {}),
        ...(first.delivered ? { delivered: (id, rcpts) => current().delivered?.(id, rcpts) } : {}),
    };
}

export function createApp(config: Config, deps: AppDeps = {}): App {
    /** The config in force; reload() replaces it (live settings only, see src/config/reload.ts). */
    let current = config;
    const log = deps.logger ?? createLogger(config.log.level);
    const metrics = deps.metrics ?? createMetrics(VERSION);
    const now = deps.now ?? Date.now;
    // one upstream (and its idle connections) for the app's life: its keys need a restart (config/reload.ts)
    const upstream =
        deps.upstream ??
        createUpstream(config.upstream, {
            hostname: config.hostname,
            logger: log,
            onConnection: (outcome) => metrics.upstreamConnections.inc({ outcome }),
            onTlsFallback: () => metrics.upstreamTlsFallbacks.inc(),
            onKeepAlive: () => metrics.upstreamKeepAlives.inc(),
        });
    const capabilities = new CapabilityTracker({ log, listeners: config.listeners });
    /** Asks the upstream what it offers; throws UpstreamError when it does not answer. */
    const probeUpstream = async (): Promise<void> => {
        capabilities.update(await upstream.probe());
    };
    const countHits = (rs: RuleSet): Decider =>
        withRuleHits(rs, (hit) => metrics.ruleHits.inc({ rule: hit.id, action: hit.action, mode: hit.mode }), {
            softReject: () => current.softReject,
        });
    /** Cases that do not hold refuse nothing (as in `mailwarden check`); they are logged. */
    const warnCases = (dir: string, warnings: readonly Issue[]): void => {
        if (warnings.length === 0) return;
        log.warn(
            { rules: dir, warnings: warnings.map(formatIssue) },
            'rule cases do not hold; the rules are in force (mailwarden check shows the same)',
        );
    };
    let watcher: RuleWatcher | null = null;
    /** Loads the rules folder of the config in force; throws RuleError when it has problems. */
    const loadCurrentRules = (): RuleSet => {
        const r = loadRules(current.rules, ruleOptions(current));
        // a SIGHUP after a folder or a link was swapped: the watcher follows the files just read
        watcher?.follow(r.watchDirs);
        if (r.ruleSet === null) throw new RuleError(r.issues);
        warnCases(current.rules, r.warnings);
        return r.ruleSet;
    };
    /** What a rule set in force holds, logged at start and at each reload of the rules. */
    const logRules = (rs: RuleSet): void =>
        log.info(
            {
                folder: rs.dir,
                files: rs.files.length,
                rules: rs.rules.length,
                limits: rs.limits.length,
                greylists: rs.greylists.length,
                lists: rs.lists.length,
            },
            'rules in force',
        );
    // Rule files are validated before anything listens: an invalid set stops the start (RuleError).
    let ruleSet: RuleSet | null = deps.decider ? null : loadCurrentRules();
    if (ruleSet) logRules(ruleSet);
    let decider = deps.decider ?? (ruleSet ? countHits(ruleSet) : acceptAll);
    const applyRules = (rs: RuleSet): void => {
        ruleSet = rs;
        decider = countHits(rs);
        logRules(rs);
    };
    const resolvConf = deps.resolvConf ?? RESOLV_CONF;
    /** The servers read from resolv.conf that the resolver in force asks; null while `dns.servers` is set. */
    let systemDns: string[] | null = null;
    const newResolver = (c: Config): Resolver => {
        systemDns = c.dns.servers === null ? systemServers(resolvConf) : null;
        return createResolver({
            servers: c.dns.servers ?? systemDns,
            timeoutMs: c.dns.timeoutMs,
            metrics,
            logger: log,
            now,
        });
    };
    let resolver = deps.resolver ?? newResolver(config);
    /** Resolvers replaced by a reload, closed once the lookups they may still serve are over. */
    const retired = new Map<Resolver, NodeJS.Timeout>();
    const limitStore = deps.limitStore ?? createConfiguredStore(config.redis, { metrics, logger: log });
    // sender authentication runs in a thread a timeout can stop (authentication.thread); started at the first message
    const verifyThread = deps.verifyThread ?? createVerifyThread({ log, metrics });
    let verification: Check[] = deps.checks ? [] : verificationChecks(config, resolver, metrics, log, verifyThread);
    const newReputation = (c: Config): ReputationService =>
        createReputationService(c, {
            resolve: (name, rrtype, signal) => resolver.resolve(name, rrtype, signal),
            resolveFresh: (name, rrtype) => (resolver.resolveFresh ?? resolver.resolve)(name, rrtype),
            reverse: (ip, signal) => resolver.reverse(ip, signal),
            metrics,
            log,
            now,
        });
    let reputation = newReputation(config);
    const checks: readonly Check[] = deps.checks ?? [
        ...limitChecks(config, {
            store: limitStore,
            declarations: () => ruleSet,
            metrics,
            now,
            logger: log,
            instanceId: randomUUID(),
            storeTimeoutMs: config.redis?.commandTimeoutMs,
        }),
        ...verification.map((_, i) => delegate(() => verification[i]!)),
        delegate(() => reputation.check),
    ];
    let draining = false;
    let started = false;
    /** Every message from its DATA to its decision line, its client connected or not (src/drain.ts). */
    const messages = new Set<MessageWork>();
    /** What all messages in flight keep in memory together, whatever their listener. */
    const spoolMemory = deps.spoolMemory ?? new SpoolMemory();
    let http: Server | null = null;
    /** Runs the readiness probe every DEPENDENCY_PROBE_MS from the start to the stop. */
    let probeTimer: NodeJS.Timeout | null = null;
    let httpPort: number | null = null;
    const reloaders: { name: string; fn: () => void }[] = [];
    /** The inputs (config, rules, users, tls) whose last reload failed: an invalid version is on disk. */
    const invalid = new Set<string>();
    /** The one place a reload (by signal or file change) is counted and logged. */
    const recordReload = (
        name: string,
        how: 'signal' | 'file change',
        error: unknown,
        details: Record<string, unknown> = {},
    ): void => {
        metrics.configReloads.inc({ result: error ? 'error' : 'ok' });
        if (error) invalid.add(name);
        else invalid.delete(name);
        metrics.configInvalid.set(invalid.size > 0 ? 1 : 0);
        if (!error) {
            log.info({ reload: name, how, ...details }, 'reloaded');
            return;
        }
        const text = error instanceof Error ? error.message : typeof error === 'string' ? error : 'invalid input';
        const issues = text.split('\n');
        const kept =
            name === 'rules'
                ? 'the previous rules stay in force'
                : name === 'config'
                  ? 'the running configuration stays in force'
                  : 'the previous version stays in force';
        log.error({ reload: name, how, issues }, `reload failed; ${kept}`);
    };
    const configFile = config.source === null ? null : (deps.configFile ?? null);

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

    // one guard for every listener: a client's failures count the same on 587 and 465
    const loginGuard = auth
        ? createLoginGuard({
              // without Redis a store of its own: counters a client on port 25 makes at will
              // (one per sender address) must not push a login's failures out of the bounded one
              store: limitStore.kind === 'memory' ? createMemoryStore() : limitStore,
              ...(config.auth ? { settings: config.auth.lockout } : {}),
          })
        : null;
    const pregreet = config.listeners.some((l) => l.pregreetWaitMs > 0)
        ? createPregreetGate({
              store: limitStore,
              ttlMs: config.pregreet.ttlMs,
              // the rule set itself, so that asking does not count as a rule hit
              decider: () => ruleSet ?? decider,
              // allow-list credit (a negative dnswl.score) spares the wait, as postscreen's dnswl does
              exempt: deps.pregreetExempt ?? ((ip) => reputation.lookup.dnswlCredit(ip)),
              now,
              log,
          })
        : null;
    const listeners: RunningListener[] = config.listeners.map((l) =>
        createListener(config, l, {
            config,
            workerShare: deps.workerShare ?? 1,
            upstream,
            decider: () => decider,
            checks,
            metrics,
            log,
            now,
            isDraining: () => draining,
            messages,
            spoolMemory,
            auth,
            signer,
            capabilities,
            loginGuard,
            pregreet,
        }),
    );

    /**
     * The dependencies asked for readiness: one probe at a time, its answer kept READINESS_TTL_MS.
     * Each is asked (Redis also when the upstream failed) and its answer set in
     * mailwarden_dependency_up.
     */
    const dependencies = sharedResult(
        async (): Promise<string | null> => {
            let reason: string | null = null;
            try {
                await probeUpstream();
            } catch (err) {
                reason = `upstream ${upstream.description}: ${err instanceof Error ? err.message : String(err)}`;
            }
            metrics.dependencyUp.set({ dependency: 'upstream' }, reason === null ? 1 : 0);
            if (config.redis) {
                const redisUp = await limitStore.ping();
                metrics.dependencyUp.set({ dependency: 'redis' }, redisUp ? 1 : 0);
                if (!redisUp) reason ??= 'redis: not answering';
            }
            return reason;
        },
        READINESS_TTL_MS,
        // a timer's clock, like every timeout: not the decision clock, which tests may hold still
        () => performance.now(),
    );
    const readiness = async (): Promise<string | null> => {
        if (!started || draining) return draining ? 'shutting down' : 'starting';
        return dependencies();
    };

    if (ruleSet) {
        reloaders.push({
            name: 'rules',
            // throws RuleError on an invalid set; reload() keeps the old one and counts the error
            fn: () => applyRules(loadCurrentRules()),
        });
    }

    /** Watches the rules folder of the config in force; a change reloads the rules. */
    const watchRules = (): RuleWatcher =>
        watchRuleSet(current.rules, {
            ...ruleOptions(current),
            ...(ruleSet && ruleSet.dir === current.rules ? { current: ruleSet } : {}),
            onChange: (r) => {
                if ('ok' in r) {
                    applyRules(r.ok);
                    warnCases(current.rules, r.warnings);
                }
                recordReload('rules', 'file change', 'ok' in r ? null : r.error);
            },
        });

    /**
     * Puts the live settings that differ between `before` and the config in force to work.
     * Returns what changed beside the config keys: resolv.conf, when it names other servers.
     */
    const applyLive = (before: Config): string[] => {
        const after = current;
        if (after.log.level !== before.log.level) log.level = after.log.level;
        // without dns.servers the servers are resolv.conf's: an edit to it is taken at a reload too
        const systemChanged =
            !deps.resolver &&
            before.dns.servers === null &&
            after.dns.servers === null &&
            !isDeepStrictEqual(systemServers(resolvConf), systemDns);
        const dnsChanged = systemChanged || !isDeepStrictEqual(before.dns, after.dns);
        if (dnsChanged && !deps.resolver) {
            // lookups in flight finish on the old resolver: close it once every check using it has timed out
            const old = resolver;
            const graceMs = before.authentication.timeoutMs + 2 * before.dns.timeoutMs + 1000;
            const timer = setTimeout(() => {
                retired.delete(old);
                old.close();
            }, graceMs);
            timer.unref();
            retired.set(old, timer);
            resolver = newResolver(after);
        }
        if (!deps.checks && before.authentication.thread !== after.authentication.thread) {
            // switched off: the thread ends once its verifications are done; on: serve starts it now
            if (!after.authentication.thread) verifyThread.rest();
            else if (deps.warmVerifyThread) {
                verifyThread
                    .warm()
                    .catch((err: unknown) =>
                        log.error(
                            { err },
                            'sender authentication thread did not start; it is tried again at the next message',
                        ),
                    );
            }
        }
        if (!deps.checks && (dnsChanged || !isDeepStrictEqual(before.authentication, after.authentication))) {
            verification = verificationChecks(after, resolver, metrics, log, verifyThread);
        }
        if (!isDeepStrictEqual(before.reputation, after.reputation) || dnsChanged) {
            const old = reputation;
            reputation = newReputation(after);
            old.stop();
            for (const zone of old.zones) {
                if (!reputation.zones.includes(zone)) metrics.dnsblZoneHealthy.remove({ zone });
            }
            void reputation.start(2 * after.dns.timeoutMs);
        }
        if (after.rules !== before.rules && watcher) {
            watcher.close();
            watcher = watchRules();
        }
        return systemChanged ? [resolvConf] : [];
    };

    /**
     * Reads the config file again with the same loader as at start (a ConfigError keeps the
     * running config); applies the live settings and returns the changed keys by kind.
     */
    const reloadConfig = (file: NonNullable<typeof configFile>): { changed: string[]; restart: string[] } => {
        const next = loadConfig(file.path, file.env, {
            forServe: true,
            ...(file.cwd === undefined ? {} : { cwd: file.cwd }),
        });
        if (ruleSet && next.rules !== current.rules) {
            // a new rules folder is part of the configuration: one that does not load refuses the
            // whole reload (as serve and check refuse it), instead of naming it among the changes
            // while the previous rules stay in force
            const r = loadRules(next.rules, ruleOptions(next));
            if (r.ruleSet === null) throw new RuleError(r.issues);
        }
        const changes = diffConfig(current, next);
        const before = current;
        current = configAfterReload(current, next, changes);
        const other = applyLive(before);
        const restart = changedKeys(changes.filter((c) => c.reload === 'restart'));
        metrics.configRestartPending.set(restart.length);
        return { changed: [...changedKeys(changes.filter((c) => c.reload === 'live')), ...other], restart };
    };

    /** Opens everything start() opens, in order; start() closes it all again when this throws. */
    const startAll = async (): Promise<void> => {
        const spool = await prepareSpoolFolder(config.spool.dir);
        if (spool.removed > 0) {
            log.warn(
                { spoolDir: config.spool.dir, removed: spool.removed },
                'removed spool files left by a process that ended without cleaning up (a crash); no client was told they were accepted',
            );
        }
        await waitForStore(limitStore, config.redis, 2 * (config.redis?.connectTimeoutMs ?? 0), log);
        if (deps.warmVerifyThread && !deps.checks && current.authentication.thread) await verifyThread.warm();
        if (config.upstream.kind !== 'maildir' && !config.upstream.xclient) {
            log.warn(
                { upstream: upstream.description },
                'upstream.xclient is false: the upstream sees mailwarden, not the real client, so its client restrictions judge mailwarden and permit_mynetworks would let any client relay; mailwarden refuses relaying on mx listeners itself',
            );
        }
        // what EHLO offers (SIZE, DSN, …) follows the upstream; an upstream that is down now
        // is asked again by each readiness probe and each connection
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([
            probeUpstream().then(
                () => metrics.dependencyUp.set({ dependency: 'upstream' }, 1),
                (err: unknown) => {
                    metrics.dependencyUp.set({ dependency: 'upstream' }, 0);
                    log.warn(
                        { upstream: upstream.description, err: err instanceof Error ? err.message : String(err) },
                        'upstream not answering at start; its capabilities will be learnt at the first connection',
                    );
                },
            ),
            new Promise<void>((resolve) => {
                timer = setTimeout(resolve, STARTUP_PROBE_MS);
            }),
        ]);
        clearTimeout(timer);
        // the lists are trusted only once a probe passed: probe them before the first client
        await reputation.start(2 * config.dns.timeoutMs);
        for (const l of listeners) await l.listen();
        if (!deps.worker) metrics.workers.set(1);
        if (config.http && !deps.worker) {
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
        if (ruleSet) watcher = watchRules();
        started = true;
        // the probe /readyz runs, also without traffic: a dead Postfix on a quiet host shows in the
        // gauge, where the rate of failed upstream commands has nothing to divide (the start's
        // probe gave the upstream's first value)
        probeTimer = setInterval(
            () => void dependencies().catch(() => undefined),
            deps.dependencyProbeMs ?? DEPENDENCY_PROBE_MS,
        );
        probeTimer.unref();
        log.info(
            {
                version: VERSION,
                upstream: upstream.description,
                config: config.source ?? 'embedded defaults',
                modules: loadedModules(),
            },
            'mailwarden started',
        );
    };
    const closeHttp = async (): Promise<void> => {
        if (!http) return;
        const server = http;
        http = null;
        if (!server.listening) return;
        await new Promise<void>((resolve) => {
            server.close(() => resolve());
            server.closeAllConnections();
        });
    };
    /** Closes the upstream connections, lookups, timers, the store and file watchers (after the sessions). */
    const releaseAll = async (): Promise<void> => {
        if (!deps.upstream) await upstream.close?.();
        reputation.stop();
        if (!deps.resolver) resolver.close();
        for (const [old, timer] of retired) {
            clearTimeout(timer);
            old.close();
        }
        retired.clear();
        if (!deps.limitStore) await limitStore.close();
        submission?.close();
        if (!deps.verifyThread) await verifyThread.close();
    };

    /**
     * The client connections still open, each with whether its message awaits the upstream's
     * answer to its end of data.
     */
    const openConnections = (): { conn: SmtpConnectionLike; session: Session | undefined }[] =>
        listeners.flatMap((l) =>
            [...(l.server as unknown as { connections: Set<SmtpConnectionLike> }).connections].map((conn) => ({
                conn,
                session: l.sessions.get(conn.session.id),
            })),
        );

    /**
     * One pass of the drain over the open connections. A transaction in flight (MAIL accepted,
     * DATA not yet answered) goes on: its RCPTs and DATA are served, and it hears the 421 once it
     * has ended (DATA answered, RSET), or when the shutdown timeout has passed; then a message
     * still on its way is closed, one whose end of data went upstream waits for the answer.
     */
    const sweep = (expired: boolean, bye: SmtpReply): number => {
        const awaiting = new Set([...messages].filter((m) => m.awaitingAnswer).map((m) => m.sessionId));
        const open = openConnections();
        for (const { conn, session } of open) {
            const inData = session?.inData === true;
            const inTransaction = inData || Boolean(conn.session.envelope?.mailFrom);
            if (expired && inData) {
                // a message still being received (its end of data not upstream): the client is
                // told 421 and will send it again; one whose answer is awaited waits for it
                if (!awaiting.has(conn.session.id)) {
                    conn.send(bye.code, `${bye.enhanced} ${bye.text}`);
                    conn.close();
                }
            } else if (expired || !inTransaction) conn.send(bye.code, `${bye.enhanced} ${bye.text}`);
        }
        return open.length;
    };

    /**
     * Drains the sessions: until nothing is open and no message is in hand, for `timeoutMs`; then
     * messages not yet sent in full are abandoned (the upstream never gets their end of data),
     * and those whose end of data went upstream are waited for up to upstream.dataTimeout more,
     * so that their outcome is known, logged and told to their client. Past that bound, they are
     * cut short and logged as possible duplicates (reason shutdown).
     */
    const drain = async (timeoutMs: number, bye: SmtpReply): Promise<void> => {
        const boundMs = timeoutMs + answerWaitMs(current);
        let phase: 'drain' | 'answers' | 'cut' = 'drain';
        let gone = false;
        const timers = [
            setTimeout(() => {
                phase = 'answers';
                for (const m of messages) m.abandon();
            }, timeoutMs),
            setTimeout(() => {
                phase = 'cut';
                for (const m of messages) m.cut();
            }, boundMs),
            setTimeout(() => (gone = true), boundMs + CUT_GRACE_MS),
        ];
        for (;;) {
            const open = sweep(phase !== 'drain', bye);
            if ((open === 0 && messages.size === 0) || gone) break;
            await new Promise((r) => setTimeout(r, 50));
        }
        // every session gives its concurrency leases back (a store call) before the store is
        // closed, also one whose client has not yet closed its side after the 421: a lease left
        // behind would count against its client for the lease's whole TTL after the restart
        const ending = Promise.all(listeners.map((l) => l.endSessions()));
        await Promise.race([ending, new Promise((r) => timers.push(setTimeout(r, CUT_GRACE_MS)))]);
        for (const t of timers) clearTimeout(t);
        // its session did not log it within the bound (a check still running): say so here
        for (const m of messages) {
            log.warn(
                { session: m.sessionId, duplicateRisk: m.awaitingAnswer, reason: m.stopped },
                m.awaitingAnswer
                    ? 'stopped with a message whose end of data went upstream unanswered: it may arrive twice'
                    : 'stopped with a message still being received or checked: its client was not answered and will send it again',
            );
        }
    };

    const app: App = {
        get config() {
            return current;
        },
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
        dnswlCredit(ip: string) {
            return reputation.lookup.dnswlCredit(ip);
        },
        setDecider(d: Decider) {
            decider = d;
        },
        onReload(name: string, fn: () => void) {
            reloaders.push({ name, fn });
        },
        readiness,
        reload() {
            if (draining) {
                log.info('reload ignored: shutting down');
                return;
            }
            if (configFile) {
                let error: unknown = null;
                let outcome: { changed: string[]; restart: string[] } | null = null;
                try {
                    outcome = reloadConfig(configFile);
                } catch (err) {
                    error = err ?? 'reload failed';
                }
                recordReload('config', 'signal', error, outcome ? { file: configFile.path, ...outcome } : {});
                if (outcome && outcome.restart.length > 0) {
                    log.warn(
                        { reload: 'config', restart: outcome.restart },
                        `needs a restart: ${outcome.restart.join(', ')}`,
                    );
                }
            }
            for (const r of reloaders) {
                let error: unknown = null;
                try {
                    r.fn();
                } catch (err) {
                    error = err ?? 'reload failed';
                }
                recordReload(r.name, 'signal', error);
            }
            if (reloaders.length === 0 && !configFile) log.info('reload: nothing reloadable is configured');
        },
        async start() {
            try {
                await startAll();
            } catch (err) {
                // a start that failed half-way (a port taken, the upstream probe, the store) closes
                // what it opened, so the caller can end the process: nothing is left serving
                draining = true;
                watcher?.close();
                watcher = null;
                await Promise.all(listeners.map((l) => l.stopAccepting()));
                for (const l of listeners) {
                    const conns = (l.server as unknown as { connections: Set<SmtpConnectionLike> }).connections;
                    for (const conn of conns) conn.close();
                }
                await closeHttp();
                await releaseAll().catch((e: unknown) =>
                    log.warn({ err: e instanceof Error ? e.message : String(e) }, 'closing after a failed start'),
                );
                throw err;
            }
        },
        async stop(options = {}) {
            if (draining) return;
            draining = true;
            if (probeTimer) clearInterval(probeTimer);
            probeTimer = null;
            const shutdownTimeoutMs = current.shutdownTimeoutMs;
            const restart = options.restart === true;
            log.info({ timeoutMs: shutdownTimeoutMs, restart }, 'shutting down: draining sessions');
            watcher?.close();
            await Promise.all(listeners.map((l) => l.stopAccepting()));
            await drain(shutdownTimeoutMs, replyFor(restart ? 'restarting' : 'shutting-down', { id: '' }));
            await closeHttp();
            // every session has ended (or was cut off): the idle upstream connections are closed (QUIT)
            await releaseAll();
            log.info('stopped');
        },
    };
    return app;
}
