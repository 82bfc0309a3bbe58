/**
 * Wires one configured listener to smtp-server: TLS (STARTTLS or implicit, with the profile
 * of net/tls-profile.ts), SIZE, PIPELINING, 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES, client
 * limits (per listener and per client network), the pre-transaction and idle timeouts, PROXY
 * protocol v1 from trusted CIDRs only, AUTH only in submission mode. Every change to
 * smtp-server's own behaviour lives in smtp-server-adapter.ts. Each callback hands over to the
 * Session and answers only with replies built by reply.ts; it holds no policy.
 */
import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import type { SMTPServer, SMTPServerOptions, SMTPServerSession } from 'smtp-server';
import type { Config, ListenerConfig } from './config/types.ts';
import { smtpServerLogger, type Logger } from './log.ts';
import { compileCidrs } from './net/cidr.ts';
import { TLS_PROFILE } from './net/tls-profile.ts';
import { replyFor, toCallbackError, SmtpReplyError } from './reply.ts';
import { Session, type SessionDeps } from './session.ts';
import { MailwardenSmtpServer } from './smtp-server-adapter.ts';
import type { AuthContext, AuthOutcome, SenderPolicy } from './submission/index.ts';
import type { LoginGuard } from './submission/login-guard.ts';

/** Verifies SMTP AUTH credentials and knows which addresses each login may send as. */
export interface AuthBackend {
    authenticate(login: string, password: string, context?: AuthContext): Promise<AuthOutcome>;
    /** The addresses `login` may use as envelope and header sender. */
    sendAs(login: string): SenderPolicy;
}

export interface ListenerDeps extends Omit<SessionDeps, 'listener' | 'log'> {
    readonly log: Logger;
    /** Counts failed logins per IP and per login; null when there is no login service. */
    readonly loginGuard: LoginGuard | null;
}

/** Refused AUTH attempts in one session after which the connection is closed (421 4.7.0). */
const MAX_REFUSED_AUTH = 3;

export interface RunningListener {
    readonly config: ListenerConfig;
    readonly server: SMTPServer;
    readonly sessions: Map<string, Session>;
    port: number;
    listen(): Promise<void>;
    /** Stops accepting new connections. */
    stopAccepting(): Promise<void>;
    /**
     * Re-reads the certificate and key (after a renewal); new connections use them, open ones
     * keep theirs. Throws, keeping the old pair, when the files do not make a valid pair.
     */
    reloadTls(): void;
}

function internalError(log: Logger, id: string, err: unknown): SmtpReplyError {
    if (err instanceof SmtpReplyError) return err;
    log.error({ session: id, err }, 'unexpected error in SMTP callback');
    return toCallbackError(replyFor('internal-error', { id }));
}

export function createListener(config: Config, listener: ListenerConfig, deps: ListenerDeps): RunningListener {
    const sessions = new Map<string, Session>();
    /** AUTH attempts refused per session, for the disconnect after MAX_REFUSED_AUTH. */
    const refusedAuth = new Map<string, number>();
    const log = deps.log.child({ listener: listener.name });
    const sessionDeps: SessionDeps = { ...deps, listener, log: deps.log };
    const submission = listener.mode === 'submission';
    const useTls = listener.tls !== 'none' && config.tls !== null;
    const tlsFiles =
        useTls && config.tls ? { key: readFileSync(config.tls.key), cert: readFileSync(config.tls.cert) } : {};

    const options: SMTPServerOptions = {
        name: config.hostname,
        banner: 'mailwarden',
        secure: listener.tls === 'implicit',
        hideSTARTTLS: !useTls || listener.tls === 'implicit',
        ...tlsFiles,
        ...TLS_PROFILE,
        size: listener.maxMessageSize,
        maxClients: listener.maxClients,
        socketTimeout: listener.socketTimeoutMs,
        closeTimeout: config.shutdownTimeoutMs,
        disableReverseLookup: true,
        // advertised; the adapter puts exactly one enhanced code on every reply (RFC 2034)
        hideENHANCEDSTATUSCODES: false,
        logger: smtpServerLogger(log),
        useProxy: listener.proxyProtocol !== null,
        // submission: AUTH is enforced in onMailFrom, so the refusal comes from our reply table
        authOptional: true,
        // STARTTLS only where TLS is configured: smtp-server would otherwise upgrade with its
        // built-in certificate, whose private key is public
        disabledCommands: [...(submission ? [] : ['AUTH']), ...(useTls ? [] : ['STARTTLS'])],
        authMethods: ['PLAIN', 'LOGIN'],
        allowInsecureAuth: false,

        onConnect(smtp: SMTPServerSession, cb: (err?: Error | null) => void) {
            const session = new Session(sessionDeps, smtp);
            sessions.set(smtp.id, session);
            deps.metrics.connections.inc({ listener: listener.name });
            deps.metrics.sessionsActive.inc({ listener: listener.name });
            session.onConnect().then(
                () => cb(),
                (err: unknown) => cb(internalError(log, smtp.id, err)),
            );
        },

        onAuth(auth, smtp, cb) {
            const backend = deps.auth;
            const guard = deps.loginGuard;
            const login = auth.username ?? '';
            const ip = sessions.get(smtp.id)?.identity().ip ?? smtp.remoteAddress;
            const done = (outcome: AuthOutcome, locked?: { retryAfterMs: number }): void => {
                const result = locked ? 'locked' : outcome.result;
                deps.metrics.smtpAuth.inc({ listener: listener.name, result });
                // the login is logged, the password never is
                log.info({ session: smtp.id, login, result, reason: outcome.reason }, 'auth');
                if (outcome.result === 'ok' && !locked) return cb(null, { user: outcome.user ?? login });
                const refused = (refusedAuth.get(smtp.id) ?? 0) + 1;
                refusedAuth.set(smtp.id, refused);
                if (locked) {
                    const minutes = Math.max(1, Math.ceil(locked.retryAfterMs / 60_000));
                    // RFC 4954 section 6: 454 4.7.0 is a temporary refusal; past a few, 421 closes the connection
                    return cb(
                        toCallbackError(
                            refused >= MAX_REFUSED_AUTH
                                ? replyFor('auth-locked-disconnect', { id: smtp.id, minutes })
                                : replyFor('auth-locked', { id: smtp.id, minutes }),
                        ),
                    );
                }
                const reply = replyFor(outcome.result === 'invalid' ? 'auth-invalid' : 'auth-unavailable', {
                    id: smtp.id,
                });
                cb(toCallbackError(reply));
            };
            if (!backend || (auth.method !== 'PLAIN' && auth.method !== 'LOGIN')) {
                return done({ result: 'unavailable', reason: 'no login service for this method' });
            }
            const context: AuthContext = {
                localIp: smtp.localAddress,
                localPort: smtp.localPort,
                remoteIp: smtp.remoteAddress,
                remotePort: smtp.remotePort,
                secured: smtp.secure,
            };
            const attempt = async (): Promise<void> => {
                const verdict = guard ? await guard.check(ip, login, deps.now()) : { allowed: true as const };
                if (!verdict.allowed) {
                    // no password is checked while the IP or the login is locked
                    return done({ result: 'invalid', reason: `too many failed logins (${verdict.scope})` }, verdict);
                }
                const outcome = await backend.authenticate(login, auth.password ?? '', context);
                if (outcome.result === 'invalid' && guard) await guard.failed(ip, login, deps.now());
                done(outcome);
            };
            attempt().catch((err: unknown) => {
                log.error({ session: smtp.id, err }, 'auth backend failed');
                done({ result: 'unavailable', reason: 'backend error' });
            });
        },

        onMailFrom(address, smtp, cb) {
            if (submission && !smtp.user) return cb(toCallbackError(replyFor('auth-required', { id: smtp.id })));
            const session = sessions.get(smtp.id);
            if (!session) return cb(internalError(log, smtp.id, new Error('no session')));
            session.onMailFrom(address).then(
                () => cb(),
                (err: unknown) => cb(internalError(log, smtp.id, err)),
            );
        },

        onRcptTo(address, smtp, cb) {
            const session = sessions.get(smtp.id);
            if (!session) return cb(internalError(log, smtp.id, new Error('no session')));
            session.onRcptTo(address).then(
                () => cb(),
                (err: unknown) => cb(internalError(log, smtp.id, err)),
            );
        },

        onData(stream, smtp, cb) {
            const session = sessions.get(smtp.id);
            if (!session) {
                stream.resume();
                return cb(internalError(log, smtp.id, new Error('no session')));
            }
            session.onData(stream).then(
                (text) => cb(null, text),
                (err: unknown) => cb(internalError(log, smtp.id, err)),
            );
        },

        onClose(smtp) {
            const session = sessions.get(smtp.id);
            if (!session) return;
            sessions.delete(smtp.id);
            refusedAuth.delete(smtp.id);
            deps.metrics.sessionsActive.dec({ listener: listener.name });
            session.close().catch((err: unknown) => log.warn({ session: smtp.id, err }, 'closing the upstream failed'));
        },
    };

    // series that dashboards compute rates over exist from the start, at 0
    for (const reason of ['max_clients', 'network_limit']) {
        deps.metrics.connectionsRefused.inc({ listener: listener.name, reason }, 0);
    }
    for (const timeout of ['pre_transaction', 'idle', ...(listener.tls === 'implicit' ? ['handshake'] : [])]) {
        deps.metrics.connectionTimeouts.inc({ listener: listener.name, timeout }, 0);
    }
    const server = new MailwardenSmtpServer(options, {
        listener: listener.name,
        submission,
        trustProxy: listener.proxyProtocol ? compileCidrs(listener.proxyProtocol) : () => false,
        maxClientsPerNetwork: listener.maxClientsPerNetwork,
        preTransactionTimeoutMs: listener.preTransactionTimeoutMs,
        log,
        metrics: deps.metrics,
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
            const pair = { key: readFileSync(config.tls.key), cert: readFileSync(config.tls.cert) };
            createSecureContext(pair); // throws on a bad or mismatched pair before anything changes
            server.updateSecureContext(pair);
        },
        stopAccepting: () =>
            new Promise<void>((resolve) => {
                // net.Server#close stops accepting at once; its callback would wait for every connection
                if (server.server.listening) server.server.close();
                resolve();
            }),
    };
    return running;
}
