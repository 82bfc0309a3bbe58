/**
 * Wires one configured listener to smtp-server: TLS (STARTTLS or implicit, with the profile
 * of net/tls-profile.ts), PIPELINING, ENHANCEDSTATUSCODES, the envelope extensions the upstream
 * can honour (SIZE, 8BITMIME, SMTPUTF8, DSN, REQUIRETLS: smtp-server/envelope.ts), client
 * limits (per listener and per client network), the pre-transaction and idle timeouts, PROXY
 * protocol (v1 and v2, read by the adapter) from trusted CIDRs only, AUTH only in submission
 * mode. Every change to smtp-server's own behaviour lives in smtp-server/adapter.ts. Each
 * callback hands over to the Session and answers only with replies built by reply.ts; it holds
 * no policy.
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import type { SMTPServer, SMTPServerOptions, SMTPServerSession } from 'smtp-server';
import { tlsPairProblem } from './config/sections/tls.ts';
import type { Config, ListenerConfig } from './config/types.ts';
import { smtpServerLogger, type Logger } from './log.ts';
import { CHECK_FAILURES, SENDER_BINDING_WHERE, UNCONFIRMED_REASONS } from './metrics.ts';
import { compileCidrs } from './net/ip.ts';
import { TLS_PROFILE } from './net/tls-profile.ts';
import { asGreeting, replyFor, toCallbackError, SmtpReplyError } from './reply.ts';
import { Session, type SessionDeps } from './session.ts';
import { ENVELOPE_REFUSALS } from './envelope/gate.ts';
import { computeOffer } from './envelope/extensions.ts';
import { relayPolicy } from './envelope/relay.ts';
import { MailwardenSmtpServer } from './smtp-server/adapter.ts';
import { checkCommandGateSupport, type CommandGate } from './smtp-server/commands.ts';
import { assertSmtpServerInternals } from './smtp-server/envelope.ts';
import { DISABLED_COMMANDS } from './smtp-server/replies.ts';
import { AnswerPace, waitUntil } from './submission/answer-pace.ts';
import type { AuthContext, AuthOutcome } from './submission/index.ts';
import type { GuardVerdict, LoginGuard } from './submission/login-guard.ts';
import { PREGREET_RESULTS, type PregreetGate } from './pregreet.ts';

export interface ListenerDeps extends Omit<SessionDeps, 'listener' | 'log' | 'relay'> {
    readonly log: Logger;
    /** Counts failed logins per IP and per login; null when there is no login service. */
    readonly loginGuard: LoginGuard | null;
    /** The pregreet test's pass cache and exemptions; null: no listener waits. */
    readonly pregreet: PregreetGate | null;
    /** How many worker processes share this listener; each serves its share of the client caps. */
    readonly workerShare: number;
}

/**
 * One worker's share of a cap the whole instance must hold: rounded down, so that the shares
 * add up to the cap at most (maxClients 4 over 3 workers: 1 each, where 2 each let 6 in); at
 * least 1, so with fewer slots than workers the instance holds one per worker.
 */
export function workerShareOf(cap: number, workers: number): number {
    return Math.max(1, Math.floor(cap / Math.max(1, workers)));
}

/**
 * A worker's part of `maxClientsPerNetwork`: twice its even share, at most the cap. The
 * connections of one network do not spread evenly over the workers (the kernel or the primary
 * hands each to the next worker, whatever network it comes from), so an even share refused a
 * network far below the cap; twice it refuses rarely, and the instance holds at most about
 * twice the cap from one network.
 */
export function networkShareOf(cap: number, workers: number): number {
    return Math.min(cap, Math.max(1, Math.ceil((2 * cap) / Math.max(1, workers))));
}

/** Failed logins in one session after which the connection is closed, when no guard says otherwise. */
const DEFAULT_FAILURES_PER_SESSION = 3;

export interface RunningListener {
    readonly config: ListenerConfig;
    readonly server: SMTPServer;
    readonly sessions: Map<string, Session>;
    port: number;
    listen(): Promise<void>;
    /** Stops accepting new connections. */
    stopAccepting(): Promise<void>;
    /**
     * Ends every session still open (at the end of a drain: smtp-server forgets a connection when
     * it sends its 421, but the session ends only when the client has closed its side) and
     * settles when every session has ended: its checks' `end` (the concurrency leases given back
     * to the store) and its upstream connection closed.
     */
    endSessions(): Promise<void>;
    /**
     * Re-reads the certificate and key (after a renewal); new connections use them, open ones
     * keep theirs. Throws, keeping the old pair, when the files do not make a valid pair.
     */
    reloadTls(): void;
}

/**
 * The reply error for whatever a session callback failed with; `counted` is called when it is an
 * internal error (marked as one where it was raised, or not a reply at all). A reply that only
 * looks like one (Postfix's own 451 4.3.0 relayed) is not counted.
 */
function internalError(log: Logger, id: string, err: unknown, counted: () => void): SmtpReplyError {
    if (err instanceof SmtpReplyError) {
        if (err.internal) counted();
        return err;
    }
    log.error({ session: id, err }, 'unexpected error in SMTP callback');
    counted();
    return toCallbackError(replyFor('internal-error', { id }), true);
}

/** The notAfter of the (first) certificate of a PEM file, in seconds since the epoch; 0 when unreadable. */
function certificateExpiry(pem: Buffer): number {
    try {
        const seconds = Date.parse(new X509Certificate(pem).validTo) / 1000;
        return Number.isFinite(seconds) ? seconds : 0;
    } catch {
        return 0;
    }
}

export function createListener(config: Config, listener: ListenerConfig, deps: ListenerDeps): RunningListener {
    const sessions = new Map<string, Session>();
    /** Failed AUTH attempts per session, for the disconnect at the guard's perSession. */
    const failedAuth = new Map<string, number>();
    /** Sessions that are ending (RunningListener.endSessions). */
    const ended = new Set<Promise<void>>();
    /** A session ends once: its checks end (leases given back) and its upstream connection closes. */
    const endSession = (id: string): void => {
        const session = sessions.get(id);
        if (!session) return;
        sessions.delete(id);
        failedAuth.delete(id);
        loggedIn.delete(id);
        deps.metrics.sessionsActive.dec({ listener: listener.name });
        const ending = session
            .close()
            .catch((err: unknown) => log.warn({ session: id, err }, 'closing the upstream failed'));
        ended.add(ending);
        void ending.finally(() => ended.delete(ending));
    };
    /**
     * How long the login service takes to answer a wrong password (AnswerPace: an upper value of
     * its last answers, Dovecot's default `auth_failure_delay` of 2 s until one was seen, at most
     * 5 s): Dovecot holds a failure, a success not at all. A right password refused after the
     * check, because the account it names turned out to be locked, is answered no sooner, so
     * the answer's time does not tell that the password was right.
     */
    const failureAnswer = new AnswerPace(2000, 5000);
    /** What each logged-in session logged in with, to end it when the password changes. */
    const loggedIn = new Map<string, { login: string; credential: string; mechanism: string }>();
    const log = deps.log.child({ listener: listener.name });
    /** A session callback's failure as its reply error, counting our own. */
    const callbackError = (id: string, err: unknown): SmtpReplyError =>
        internalError(log, id, err, () => deps.metrics.internalErrors.inc({ listener: listener.name }));
    assertSmtpServerInternals();
    // every reason exists from the start, so the first refusal shows in rate()
    for (const reason of ENVELOPE_REFUSALS) deps.metrics.envelopeRefusals.inc({ listener: listener.name, reason }, 0);
    const sessionDeps: SessionDeps = { ...deps, listener, log: deps.log, relay: relayPolicy(config, listener) };
    const submission = listener.mode === 'submission';
    const useTls = listener.tls !== 'none' && config.tls !== null;
    const tlsFiles =
        useTls && config.tls ? { key: readFileSync(config.tls.key), cert: readFileSync(config.tls.cert) } : {};
    if (tlsFiles.cert) deps.metrics.tlsCertificateExpiry.set(certificateExpiry(tlsFiles.cert));

    const options: SMTPServerOptions = {
        name: config.hostname,
        banner: 'mailwarden',
        secure: listener.tls === 'implicit',
        hideSTARTTLS: !useTls || listener.tls === 'implicit',
        ...tlsFiles,
        ...TLS_PROFILE,
        // EHLO sets these per session from what the upstream offers (smtp-server/envelope.ts);
        // DSN and REQUIRETLS stay hidden unless the upstream can honour them
        size: listener.maxMessageSize,
        hideDSN: true,
        hideREQUIRETLS: true,
        // the recipient limit is the session's (it counts repeated recipients too): 452 4.5.3
        maxRecipients: 0,
        maxClients: workerShareOf(listener.maxClients, deps.workerShare),
        socketTimeout: listener.socketTimeoutMs,
        closeTimeout: config.shutdownTimeoutMs,
        disableReverseLookup: true,
        // advertised; the adapter puts exactly one enhanced code on every reply (RFC 2034)
        hideENHANCEDSTATUSCODES: false,
        logger: smtpServerLogger(log),
        // PROXY headers are read by the adapter (smtp-server/adapter.ts), from trusted CIDRs only
        useProxy: false,
        // submission: AUTH is enforced in onMailFrom, so the refusal comes from our reply table
        authOptional: true,
        // STARTTLS only where TLS is configured: smtp-server would otherwise upgrade with its
        // built-in certificate, whose private key is public
        // and never the commands whose built-in answers no client is to see (smtp-server/replies.ts)
        disabledCommands: [...DISABLED_COMMANDS, ...(submission ? [] : ['AUTH']), ...(useTls ? [] : ['STARTTLS'])],
        authMethods: ['PLAIN', 'LOGIN'],
        allowInsecureAuth: false,

        onConnect(smtp: SMTPServerSession, cb: (err?: Error | null) => void) {
            const pregreet = server.pregreetOutcome(smtp.id);
            const session = new Session(sessionDeps, smtp, {
                'client.pregreet': pregreet?.result === 'fail',
                'client.pregreet.data': pregreet?.sent ?? null,
            });
            sessions.set(smtp.id, session);
            deps.metrics.connections.inc({ listener: listener.name });
            deps.metrics.sessionsActive.inc({ listener: listener.name });
            session.onConnect().then(
                () => cb(),
                // the refusal is the greeting: only 554 or 421 (RFC 5321 section 4.3.2)
                (err: unknown) => cb(toCallbackError(asGreeting(callbackError(smtp.id, err).reply, { id: smtp.id }))),
            );
        },

        onAuth(auth, smtp, cb) {
            const backend = deps.auth;
            const guard = deps.loginGuard;
            const login = auth.username ?? '';
            const ip = sessions.get(smtp.id)?.identity().ip ?? smtp.remoteAddress.replace(/^::ffff:/i, '');
            const perSession = guard?.settings.perSession ?? DEFAULT_FAILURES_PER_SESSION;
            /** The one log line and count of this attempt (the login is logged, the password never is). */
            const record = (result: string, fields: Record<string, unknown>): void => {
                deps.metrics.smtpAuth.inc({ listener: listener.name, result });
                log.info(
                    {
                        session: smtp.id,
                        client: ip,
                        clientPort: smtp.remotePort,
                        mechanism: auth.method,
                        login,
                        result,
                        ...fields,
                    },
                    'auth',
                );
            };
            /** A wrong password or a locked-out attempt: counts towards the session's disconnect. */
            const failed = (): { count: number; last: boolean } => {
                const count = (failedAuth.get(smtp.id) ?? 0) + 1;
                failedAuth.set(smtp.id, count);
                return { count, last: count >= perSession };
            };
            const finish = (outcome: AuthOutcome, verdict: GuardVerdict | null): void => {
                const via = verdict?.store === 'fallback' ? { store: 'fallback' } : {};
                if (verdict?.store === 'fallback') deps.metrics.smtpAuthFallback.inc({ listener: listener.name });
                const exempt = verdict?.allowed && verdict.exempt ? { exempt: true } : {};
                if (verdict && !verdict.allowed) {
                    // no password was checked: the IP or the login is over its failure limit
                    deps.metrics.smtpAuthLocked.inc({ listener: listener.name, scope: verdict.scope });
                    const f = failed();
                    const retryAfterS = Math.ceil(verdict.retryAfterMs / 1000);
                    record('locked', { lockout: verdict.scope, retryAfterS, sessionFailures: f.count, ...via });
                    const minutes = Math.max(1, Math.ceil(verdict.retryAfterMs / 60_000));
                    // RFC 4954 section 6: 454 4.7.0 is a temporary refusal; the last one allowed closes with 421
                    return cb(
                        toCallbackError(
                            replyFor(f.last ? 'auth-locked-disconnect' : 'auth-locked', { id: smtp.id, minutes }),
                        ),
                    );
                }
                if (outcome.result === 'ok') {
                    const user = outcome.user ?? login;
                    record('ok', { user, ...via, ...exempt });
                    if (outcome.credential !== undefined) {
                        loggedIn.set(smtp.id, { login: user, credential: outcome.credential, mechanism: auth.method });
                    }
                    return cb(null, { user });
                }
                if (outcome.result === 'unavailable') {
                    // our failure, not the client's: not counted anywhere
                    record('unavailable', { reason: outcome.reason, ...via });
                    return cb(toCallbackError(replyFor('auth-unavailable', { id: smtp.id })));
                }
                const f = failed();
                const account = outcome.user !== undefined ? { account: outcome.user } : {};
                record('invalid', { reason: outcome.reason, ...account, sessionFailures: f.count, ...via, ...exempt });
                cb(toCallbackError(replyFor(f.last ? 'auth-failures-disconnect' : 'auth-invalid', { id: smtp.id })));
            };
            if (!backend || (auth.method !== 'PLAIN' && auth.method !== 'LOGIN')) {
                return finish({ result: 'unavailable', reason: 'no login service for this method' }, null);
            }
            const context: AuthContext = {
                localIp: smtp.localAddress,
                localPort: smtp.localPort,
                remoteIp: smtp.remoteAddress,
                remotePort: smtp.remotePort,
                secured: smtp.secure,
            };
            const attempt = async (): Promise<void> => {
                // one failure is reserved before the password is checked, atomically for the IP and the login
                const verdict = guard ? await guard.reserve(ip, login, deps.now()) : null;
                if (verdict && !verdict.allowed) return finish({ result: 'invalid' }, verdict);
                let outcome: AuthOutcome;
                const asked = performance.now();
                try {
                    outcome = await backend.authenticate(login, auth.password ?? '', context);
                } catch (err) {
                    log.error({ session: smtp.id, err }, 'auth backend failed');
                    outcome = { result: 'unavailable', reason: 'backend error' };
                }
                // only answers the login service gave: instant refusals of ours would drag the pace down
                if (outcome.result === 'invalid' && outcome.unchecked !== true) {
                    failureAnswer.record(performance.now() - asked);
                }
                if (guard && verdict?.allowed) {
                    await guard.settle(verdict.ticket, outcome.result, deps.now());
                    // The login service's own name for the account (Dovecot's auth_username_format,
                    // realms) when it differs from what was counted: that name is counted too, so
                    // other spellings of one account share its limit, and once it is locked no
                    // spelling logs in, whatever the password (`loginKey: localPart` counts the
                    // account before the check, which parallel attempts under new spellings need).
                    const account = outcome.user;
                    if (
                        account &&
                        guard.counted(account) !== guard.counted(login) &&
                        outcome.result !== 'unavailable'
                    ) {
                        const second = await guard.reserve(ip, account, deps.now(), { loginOnly: true });
                        if (!second.allowed) {
                            if (outcome.result === 'ok') await waitUntil(asked + failureAnswer.ms);
                            return finish({ result: 'invalid' }, second);
                        }
                        await guard.settle(second.ticket, outcome.result, deps.now());
                    }
                }
                finish(outcome, verdict);
            };
            attempt().catch((err: unknown) => {
                log.error({ session: smtp.id, err }, 'auth failed');
                finish({ result: 'unavailable', reason: 'internal error' }, null);
            });
        },

        onMailFrom(address, smtp, cb) {
            if (submission && !smtp.user) return cb(toCallbackError(replyFor('auth-required', { id: smtp.id })));
            const session = sessions.get(smtp.id);
            if (!session) return cb(callbackError(smtp.id, new Error('no session')));
            session.onMailFrom(address).then(
                () => cb(),
                (err: unknown) => cb(callbackError(smtp.id, err)),
            );
        },

        onRcptTo(address, smtp, cb) {
            const session = sessions.get(smtp.id);
            if (!session) return cb(callbackError(smtp.id, new Error('no session')));
            session.onRcptTo(address).then(
                () => cb(),
                (err: unknown) => cb(callbackError(smtp.id, err)),
            );
        },

        onData(stream, smtp, cb) {
            const session = sessions.get(smtp.id);
            if (!session) {
                stream.resume();
                return cb(callbackError(smtp.id, new Error('no session')));
            }
            session.onData(stream).then(
                (text) => {
                    const clientGone = server.clientGone(smtp.id);
                    cb(null, text);
                    session.dataReplied({ accepted: true, clientGone });
                },
                (err: unknown) => {
                    cb(callbackError(smtp.id, err));
                    session.dataReplied({ accepted: false, clientGone: false });
                },
            );
        },

        onClose(smtp) {
            endSession(smtp.id);
        },
    };

    if (submission) {
        for (const scope of ['ip', 'login']) deps.metrics.smtpAuthLocked.inc({ listener: listener.name, scope }, 0);
        deps.metrics.smtpAuthFallback.inc({ listener: listener.name }, 0);
        deps.metrics.smtpAuthRevoked.inc({ listener: listener.name }, 0);
    }
    const credentialState = deps.auth?.credentialState?.bind(deps.auth);
    let commandGate: CommandGate | null = null;
    if (submission && credentialState) {
        checkCommandGateSupport();
        // a session whose password changed (or whose login was removed) ends at its next command
        commandGate = (smtp) => {
            const held = loggedIn.get(smtp.id);
            if (!held) return null;
            const state = credentialState(held.login, held.credential);
            if (state === 'current') return null;
            loggedIn.delete(smtp.id);
            const session = sessions.get(smtp.id);
            const id = session?.identity();
            deps.metrics.smtpAuthRevoked.inc({ listener: listener.name });
            log.info(
                {
                    session: smtp.id,
                    client: id?.ip,
                    clientPort: id?.port,
                    mechanism: held.mechanism,
                    login: held.login,
                    result: 'revoked',
                    reason: state === 'removed' ? 'login removed' : 'password changed',
                },
                'auth',
            );
            return replyFor('auth-revoked', { id: smtp.id });
        };
    }
    // series that dashboards compute rates over exist from the start, at 0
    for (const reason of ['max_clients', 'network_limit']) {
        deps.metrics.connectionsRefused.inc({ listener: listener.name, reason }, 0);
    }
    if (listener.pregreetWaitMs > 0) for (const result of PREGREET_RESULTS) deps.metrics.pregreet.inc({ result }, 0);
    for (const kind of ['http', 'tls']) deps.metrics.foreignProtocol.inc({ listener: listener.name, kind }, 0);
    deps.metrics.internalErrors.inc({ listener: listener.name }, 0);
    for (const op of ['write', 'read']) deps.metrics.spoolIoErrors.inc({ listener: listener.name, op }, 0);
    for (const check of deps.checks) {
        for (const result of CHECK_FAILURES) deps.metrics.checkFailures.inc({ check: check.name, result }, 0);
    }
    if (listener.mode === 'submission') {
        for (const where of SENDER_BINDING_WHERE) {
            deps.metrics.senderBindingRefusals.inc({ listener: listener.name, where }, 0);
        }
    }
    for (const reason of UNCONFIRMED_REASONS)
        deps.metrics.acceptedUnconfirmed.inc({ listener: listener.name, reason }, 0);
    for (const result of ['proxy', 'local', 'invalid', 'timeout', 'closed', 'untrusted']) {
        if (listener.proxyProtocol !== null || result === 'untrusted') {
            deps.metrics.proxyHeaders.inc({ listener: listener.name, result }, 0);
        }
    }
    for (const timeout of [
        'pre_transaction',
        'envelope',
        'idle',
        ...(listener.tls === 'implicit' ? ['handshake'] : []),
    ]) {
        deps.metrics.connectionTimeouts.inc({ listener: listener.name, timeout }, 0);
    }
    const server = new MailwardenSmtpServer(options, {
        listener: listener.name,
        submission,
        trustProxy: listener.proxyProtocol ? compileCidrs(listener.proxyProtocol) : () => false,
        proxyEnabled: listener.proxyProtocol !== null,
        maxClientsPerNetwork: networkShareOf(listener.maxClientsPerNetwork, deps.workerShare),
        preTransactionTimeoutMs: listener.preTransactionTimeoutMs,
        socketTimeoutMs: listener.socketTimeoutMs,
        log,
        metrics: deps.metrics,
        commandGate,
        envelope: { offer: (s) => computeOffer(listener, deps.capabilities.current, s) },
        pregreet:
            deps.pregreet && listener.pregreetWaitMs > 0
                ? {
                      waitMs: listener.pregreetWaitMs,
                      lookup: (ip) => deps.pregreet!.lookup(ip, listener),
                      remember: (ip) => deps.pregreet!.remember(ip),
                  }
                : null,
    });
    server.on('error', (err) => log.error({ err }, 'listener error'));

    const running: RunningListener = {
        config: listener,
        server,
        sessions,
        port: listener.port,
        listen: () =>
            new Promise<void>((resolve, reject) => {
                const onError = (err: Error): void => reject(err);
                server.server.once('error', onError);
                server.listen(listener.port, listener.host, () => {
                    server.server.removeListener('error', onError);
                    const addr = server.server.address();
                    if (addr && typeof addr === 'object') running.port = addr.port;
                    log.info(
                        {
                            host: listener.host,
                            port: running.port,
                            mode: listener.mode,
                            tls: useTls ? listener.tls : 'none',
                        },
                        'listening',
                    );
                    resolve();
                });
            }),
        reloadTls: () => {
            if (!useTls || !config.tls) return;
            const { key, cert } = config.tls;
            const read = (path: string): Buffer => {
                try {
                    return readFileSync(path);
                } catch (err) {
                    throw new Error(`tls: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
                }
            };
            const pair = { key: read(key), cert: read(cert) };
            // the words of `check`, naming the files, before anything changes
            const problem = tlsPairProblem({ path: cert, content: pair.cert }, { path: key, content: pair.key });
            if (problem) throw new Error(`tls.${problem.field}: ${problem.message}`);
            createSecureContext(pair);
            server.updateSecureContext(pair);
            deps.metrics.tlsCertificateExpiry.set(certificateExpiry(pair.cert));
        },
        stopAccepting: () =>
            new Promise<void>((resolve) => {
                // net.Server#close stops accepting at once; its callback would wait for every connection
                if (server.server.listening) server.server.close();
                resolve();
            }),
        endSessions: async () => {
            for (const id of [...sessions.keys()]) endSession(id);
            while (ended.size > 0) await Promise.all([...ended]);
        },
    };
    return running;
}
