/**
 * The SMTP client towards the mail server behind the proxy (usually Postfix): one small
 * lock-step connection per client session (pipelined only where said below), plain with
 * optional STARTTLS (RFC 3207) or implicit TLS (RFC 8314), passing the real client on with
 * XCLIENT (Postfix XCLIENT_README), then mirroring MAIL, RCPT and DATA (RFC 5321).
 *
 * With XCLIENT the connection carries one client's identity and is closed (QUIT) when that
 * client leaves. On a plain connection (no TLS, no STARTTLS) XCLIENT is sent right after the
 * greeting, without an EHLO of our own first, once an earlier connection within the last minute
 * showed which attributes the upstream takes (XCLIENT_README: it may be sent at any time outside
 * a transaction; Postfix takes it before EHLO). An upstream that answers it as an unknown or
 * out-of-sequence command (500–504) gets EHLO and XCLIENT again on the same connection, and EHLO
 * first for a minute; any other refusal is about the client (or our authorization) and fails as
 * it would after EHLO.
 *
 * Without XCLIENT the upstream sees only us, so a connection that ended cleanly
 * (outside a transaction, its last reply a 2xx to the end of data or to RSET, well within the
 * upstream's error and junk command limits) is kept idle (pool.ts) and handed to the next
 * client, whose transaction goes on it only after a `250` to RSET (RFC 5321 section 4.1.1.5).
 * Where the upstream offers PIPELINING the RSET goes out in one write with the client's MAIL
 * (RFC 2920 section 3.1: both may stand anywhere in a group), saving a round trip per message;
 * otherwise it is sent alone first. An idle connection that fails its RSET is dropped and the
 * MAIL sent on another one (checked by RSET alone) or on a new one, so the client never sees
 * it. A connection is never held by two clients at once.
 *
 * While a transaction is open and no command is in flight (the client's message arriving, the
 * checks running) the upstream hears nothing, and Postfix drops a client silent for smtpd_timeout
 * (300 s, but 10 s under stress). So such a connection gets a NOOP once it was idle for the
 * configured interval (`upstream.keepAlive`), and another after each further interval, in
 * lock-step like any command: a command the session must send meanwhile (DATA, RSET, QUIT) goes
 * after the NOOP's reply. NOOP is a junk command to Postfix, and under stress its junk command
 * limit and hard error limit drop to 1: after the third junk command (EHLO, HELO, RSET, NOOP)
 * since the connection opened or its last delivery, the next command is answered `421 … too
 * many errors` and the connection ends. So once a connection had two (EHLO, XCLIENT and EHLO
 * again make two already), the next NOOP waits for a silence longer than a stressed Postfix's
 * smtpd_timeout (10 s): a stressed upstream has hung up by then, as it would have without the
 * NOOP, and one that answers is not under stress and gets NOOPs at the interval again, up to
 * KEEPALIVE_MAX_NOOPS per transaction and short of its normal junk command limit; after that
 * the connection waits unkept. A NOOP answered other than 250, or not
 * answered, ends the connection as any upstream failure does. A transaction whose connection
 * ended so is not lost: the session begins it again on a new one before DATA (upstream/replay.ts).
 * An idle connection kept for the next client gets none.
 *
 * Replies of every class are returned, never thrown; only a broken connection (refused,
 * timed out, closed, garbage, TLS or XCLIENT failure) becomes an UpstreamError, after which the
 * session is no longer usable. A failing message source ends the connection too, but its own
 * error is thrown as it is (a spool that cannot be read is not an upstream failure). One that breaks after the
 * end-of-data marker went out is marked `endOfDataSent`: the upstream may have the message.
 * It must not decide policy, retry, queue, or ever write the end-of-data terminator for
 * a message whose source did not end cleanly.
 */
import net from 'node:net';
import type { Readable } from 'node:stream';
import tls from 'node:tls';
import type { UpstreamConfig } from '../config/types.ts';
import { DotStuffer } from '../data/dot-stuff.ts';
import type { ClientIdentity } from '../types.ts';
import { capabilitiesFromEhlo, missingCapability, type UpstreamCapabilities } from './capabilities.ts';
import { assertSafeAddress, assertSafeParam, silentLogger, type UpstreamDeps, type UpstreamLogger } from './common.ts';
import {
    UnsupportedFeatureError,
    UpstreamError,
    type MailParams,
    type RcptParams,
    type Upstream,
    type UpstreamReply,
    type UpstreamSession,
} from './types.ts';
import { Connection, errorMessage, event } from './connection.ts';
import { IdlePool, type PoolEntry } from './pool.ts';
import { describe, parseCapabilities, toReply, type Capabilities, type RawReply } from './replies.ts';
import { MAX_XCLIENT_VALUE, xclientCommand } from './xtext.ts';

export type SmtpUpstreamConfig = Extract<UpstreamConfig, { kind: 'smtp' | 'smtps' }>;
export type { UpstreamDeps, UpstreamLogger } from './common.ts';

/** Upper bound for waiting on the answer to QUIT. */
const QUIT_TIMEOUT_MS = 2000;
/** Idle upstream connections kept for the next client (without XCLIENT only; see pool.ts). */
const POOL_MAX_IDLE = 32;
/** Well under Postfix's smtpd_timeout (300 s by default, 10 s under stress with the default overrides). */
const POOL_IDLE_TIMEOUT_MS = 5_000;
/** Clients one upstream connection serves before it is closed. */
const POOL_MAX_USES = 100;
/**
 * A connection older than this is not kept: after `postfix reload` (or a change to its
 * master.cf service) new clients meet the new settings within a minute, however steady the
 * traffic that keeps a connection from going idle.
 */
const POOL_MAX_AGE_MS = 60_000;
/**
 * How long the XCLIENT attributes learnt from one EHLO are used to send XCLIENT before EHLO on
 * later connections: a change of the upstream's XCLIENT settings reaches new clients within a
 * minute even when nothing is refused.
 */
const XCLIENT_CAPS_MAX_AGE_MS = 60_000;

/**
 * With `starttls: opportunistic`, how long connections go without TLS after a failed handshake
 * before TLS is tried again (Postfix keeps no such memory and tries, fails and reconnects for
 * every message; one failure in ten minutes is enough to notice a repaired upstream).
 */
const TLS_RETRY_MS = 10 * 60_000;
/**
 * Postfix counts error replies (smtpd_soft_error_limit 10: then it sleeps before each reply;
 * smtpd_hard_error_limit 20: then it hangs up) and RSET, NOOP, VRFY and ETRN
 * (smtpd_junk_command_limit 100: then each counts as an error) per connection until a message
 * is delivered. A connection is not kept once it reached half of either since its last delivery.
 */
const POOL_MAX_ERRORS = 5;
const POOL_MAX_JUNK = 50;
/** Keepalive NOOPs sent at most per transaction: half of smtpd_junk_command_limit. */
const KEEPALIVE_MAX_NOOPS = 50;
/**
 * Junk commands (EHLO and HELO among them) since the connection opened or its last delivery
 * that a Postfix under stress takes without counting an error (smtpd_junk_command_limit
 * `${stress?{1}:{100}}`: an error from the third on; smtpd_hard_error_limit `${stress?{1}:{20}}`:
 * the command after it is answered `421 … too many errors` and the connection ends).
 */
const STRESS_FREE_JUNK = 2;
/** Silence before a NOOP beyond STRESS_FREE_JUNK: longer than smtpd_timeout under stress (10 s). */
const STRESS_PROBE_MS = 15_000;
/**
 * No keepalive NOOP once this many junk commands (EHLO, HELO, RSET, NOOP) went since the
 * connection opened or its last delivery: up to 100 Postfix counts no error for them.
 */
const KEEPALIVE_MAX_JUNK = 90;

/**
 * The client's HELO name as an EHLO/HELO argument after XCLIENT: control characters
 * shown as `?` (as Postfix itself does), at most 255 characters; ours when it gave none.
 */
function greetingName(helo: string | null, fallback: string): string {
    // eslint-disable-next-line no-control-regex
    const name = (helo ?? '').replace(/[\x00-\x1f\x7f]/g, '?').trim();
    return name === '' ? fallback : name.slice(0, MAX_XCLIENT_VALUE);
}

/** TLS options towards the upstream; no SNI for an IP address (RFC 6066 section 3). */
function tlsOptions(config: SmtpUpstreamConfig): tls.ConnectionOptions {
    return {
        host: config.host,
        servername: net.isIP(config.host) ? undefined : config.host,
        rejectUnauthorized: config.tlsVerify,
    };
}

interface Established {
    readonly conn: Connection;
    readonly caps: Capabilities;
    /** True when the connection is encrypted (smtps, or STARTTLS done). */
    readonly tls: boolean;
    readonly greetingName: string;
}

class SmtpClient {
    readonly config: SmtpUpstreamConfig;
    private readonly hostname: string;
    private readonly log: UpstreamLogger;
    readonly label: string;
    /** Idle connections for the next client: only without XCLIENT (a connection then carries no client). */
    private readonly pool: IdlePool<Link> | null;
    private readonly onConnection: UpstreamDeps['onConnection'];
    private readonly onKeepAlive: UpstreamDeps['onKeepAlive'];
    /** See STRESS_PROBE_MS. */
    readonly stressProbeMs: number;
    readonly now: () => number;
    /**
     * What decides XCLIENT before EHLO, for a minute from `at`: the attributes the upstream
     * advertised in its last EHLO before a XCLIENT it took, or null when it refused XCLIENT
     * before EHLO then (none is sent so, and nothing learnt, until the minute is over).
     */
    private xclientEarly: { advertised: ReadonlySet<string> | null; at: number } | null = null;
    /**
     * With `starttls: opportunistic`, when TLS is next tried after a failed handshake (this
     * clock): until then connections go without TLS, as Postfix's `smtp_tls_security_level = may`
     * delivers in plain text after a failed handshake rather than deferring every message.
     */
    private plainUntil = -Infinity;
    private readonly onTlsFallback: UpstreamDeps['onTlsFallback'];

    constructor(config: SmtpUpstreamConfig, deps: UpstreamDeps) {
        this.config = config;
        this.hostname = deps.hostname;
        this.log = deps.logger ?? silentLogger;
        this.onConnection = deps.onConnection;
        this.onKeepAlive = deps.onKeepAlive;
        this.onTlsFallback = deps.onTlsFallback;
        this.stressProbeMs = deps.stressProbeMs ?? STRESS_PROBE_MS;
        this.now = deps.now ?? (() => performance.now());
        this.pool = config.xclient
            ? null
            : new IdlePool<Link>({
                  maxIdle: POOL_MAX_IDLE,
                  idleTimeoutMs: POOL_IDLE_TIMEOUT_MS,
                  maxUses: POOL_MAX_USES,
              });
        this.label = `${config.host.includes(':') ? `[${config.host}]` : config.host}:${config.port}`;
    }

    private async connect(): Promise<Connection> {
        const { config } = this;
        const socket =
            config.kind === 'smtps'
                ? tls.connect({ ...tlsOptions(config), port: config.port })
                : net.connect({ host: config.host, port: config.port });
        // lock-step commands are tiny writes; Nagle's algorithm would hold each one back (~40 ms)
        socket.setNoDelay(true);
        const conn = new Connection(socket, this.log, this.label);
        // Once TCP is up, a failure of implicit TLS is a TLS failure, not an unreachable host.
        socket.once('connect', () => {
            if (conn.errorKind === 'connect' && config.kind === 'smtps') conn.errorKind = 'tls';
        });
        await conn.within(
            event(socket, config.kind === 'smtps' ? 'secureConnect' : 'connect'),
            config.connectTimeoutMs,
            'connecting',
            'timeout',
        );
        conn.errorKind = 'closed';
        return conn;
    }

    /** EHLO, or HELO when the upstream refuses EHLO with 5xx (RFC 5321 section 4.1.1.1). */
    private async hello(conn: Connection, allowHelo: boolean): Promise<Capabilities> {
        const t = this.config.commandTimeoutMs;
        const ehlo = await greet(conn, `EHLO ${this.hostname}`, t);
        if (ehlo.code === 250) return parseCapabilities(ehlo.lines);
        if (allowHelo && ehlo.code >= 500) {
            const helo = await greet(conn, `HELO ${this.hostname}`, t);
            if (helo.code === 250) return new Map();
            throw new UpstreamError('connect', `upstream ${this.label} refused HELO: ${describe(toReply(helo))}`);
        }
        throw new UpstreamError('connect', `upstream ${this.label} refused EHLO: ${describe(toReply(ehlo))}`);
    }

    /** Sends XCLIENT with the attributes in `advertised` (ADDR required); returns the reply. */
    private async sendXclient(conn: Connection, advertised: ReadonlySet<string>, client: ClientIdentity) {
        if (!advertised.has('ADDR')) {
            throw new UpstreamError(
                'xclient',
                `upstream ${this.label} does not accept the client address with XCLIENT`,
            );
        }
        return conn.command(xclientCommand(client, advertised) ?? '', this.config.commandTimeoutMs);
    }

    /**
     * XCLIENT, then the greeting again in the client's own words. The upstream answers
     * XCLIENT with a fresh 220 greeting and starts the session over; Postfix then takes
     * the name given with EHLO/HELO as the client's HELO name (and EHLO sets the protocol
     * to ESMTP), so, as in the XCLIENT_README example, an ESMTP client's name goes in EHLO
     * and an SMTP client's in HELO. Returns the capabilities to use from then on.
     */
    private async xclient(conn: Connection, caps: Capabilities, client: ClientIdentity): Promise<Capabilities> {
        const advertised = new Set((caps.get('XCLIENT') ?? []).map((a) => a.toUpperCase()));
        const reply = await this.sendXclient(conn, advertised, client);
        if (reply.code < 200 || reply.code >= 300) {
            throw new UpstreamError('xclient', `upstream ${this.label} refused XCLIENT: ${describe(toReply(reply))}`);
        }
        // Before Postfix 2.3, XCLIENT answered 250 and kept the session as it was.
        if (reply.code !== 220) return caps;
        const now = this.now();
        const early = this.xclientEarly;
        // learnt, unless XCLIENT before EHLO was refused within the last minute
        if (early === null || early.advertised !== null || now - early.at >= XCLIENT_CAPS_MAX_AGE_MS) {
            this.xclientEarly = { advertised, at: now };
        }
        return this.greetAsClient(conn, client);
    }

    /** EHLO (or HELO for an SMTP client) in the client's name after XCLIENT's new greeting. */
    private async greetAsClient(conn: Connection, client: ClientIdentity): Promise<Capabilities> {
        const name = greetingName(client.helo, this.hostname);
        const verb = client.proto === 'SMTP' ? 'HELO' : 'EHLO';
        const hello = await greet(conn, `${verb} ${name}`, this.config.commandTimeoutMs);
        if (hello.code !== 250) {
            throw new UpstreamError(
                'xclient',
                `upstream ${this.label} refused ${verb} after XCLIENT: ${describe(toReply(hello))}`,
            );
        }
        return verb === 'EHLO' ? parseCapabilities(hello.lines) : new Map();
    }

    /**
     * XCLIENT right after the greeting with the attributes learnt on an earlier connection, then
     * the client's greeting; null when there is nothing recent to go by. The reply decides:
     * - 2xx: the client is passed on, as after EHLO;
     * - 500–504 (not known, or not in this state): this upstream wants EHLO first. What was
     *   learnt is forgotten, nothing is learnt for a minute (an upstream like that costs one
     *   refused command a minute), and null tells the caller to greet and pass the client as on a
     *   first connection (a refused XCLIENT changes nothing; no transaction is open);
     * - anything else is the upstream's answer about this client or about us, as after EHLO
     *   (Postfix checks the new client at once: `421` too many connections from it, `554` its
     *   client restrictions; `550` we are not authorized): an XCLIENT failure as on the full
     *   path, what was learnt kept, except after `550`, where the next connection asks EHLO again.
     */
    private async xclientBeforeHello(conn: Connection, client: ClientIdentity): Promise<Capabilities | null> {
        const early = this.xclientEarly;
        if (!early?.advertised || this.now() - early.at >= XCLIENT_CAPS_MAX_AGE_MS) return null;
        const reply = await this.sendXclient(conn, early.advertised, client);
        if (reply.code >= 200 && reply.code < 300) return this.greetAsClient(conn, client);
        if (reply.code >= 500 && reply.code <= 504) {
            this.xclientEarly = { advertised: null, at: this.now() };
            this.log.info(
                { upstream: this.label, reply: describe(toReply(reply)) },
                'upstream did not take XCLIENT before EHLO; greeting it first',
            );
            return null;
        }
        if (reply.code === 550) this.xclientEarly = null;
        throw new UpstreamError('xclient', `upstream ${this.label} refused XCLIENT: ${describe(toReply(reply))}`);
    }

    /**
     * After a failed TLS handshake: true when the mail may go without TLS instead (`starttls:
     * opportunistic` without `tlsVerify`, and a handshake the TLS layer refused: no shared
     * protocol, a broken certificate or key, plain text after the 220; not a handshake that timed
     * out, which an upstream under load may answer the next time); TLS is then left out for
     * TLS_RETRY_MS, and it is logged and counted. An upstream that insists on TLS answers the
     * plain connection 530, which reaches the client as a 4xx (reply.ts).
     */
    private fallsBackToPlain(err: unknown): boolean {
        const { config } = this;
        if (config.kind !== 'smtp' || config.starttls !== 'opportunistic' || config.tlsVerify) return false;
        if (!(err instanceof UpstreamError) || err.kind !== 'tls') return false;
        this.plainUntil = this.now() + TLS_RETRY_MS;
        this.onTlsFallback?.();
        this.log.warn(
            { upstream: this.label, err: err.message, retryInSeconds: TLS_RETRY_MS / 1000 },
            'TLS handshake with the upstream failed; delivering without TLS (starttls: opportunistic) until TLS is tried again',
        );
        return true;
    }

    /** Connects, greets, upgrades to TLS where configured and passes the client on. */
    async establish(client: ClientIdentity | null): Promise<Established> {
        const { config } = this;
        const conn = await this.connect();
        try {
            const greeting = await conn.readReply(config.commandTimeoutMs, 'the greeting');
            if (greeting.code !== 220) {
                throw new UpstreamError(
                    'connect',
                    `upstream ${this.label} greeted with ${describe(toReply(greeting))}`,
                );
            }
            const greetingName = (greeting.lines[0] ?? '').split(/\s+/, 1)[0] ?? '';
            // opportunistic, after a failed handshake: plain until TLS is tried again
            const skipTls = config.starttls === 'opportunistic' && this.now() < this.plainUntil;
            // on a plain connection, what an earlier EHLO said about XCLIENT saves this one's EHLO
            if (config.xclient && client && config.kind === 'smtp' && (config.starttls === 'off' || skipTls)) {
                const caps = await this.xclientBeforeHello(conn, client);
                if (caps) return { conn, caps, tls: false, greetingName };
            }
            let caps = await this.hello(conn, true);
            let tls = config.kind === 'smtps';

            if (config.kind === 'smtp' && config.starttls !== 'off' && !skipTls) {
                if (caps.has('STARTTLS')) {
                    const reply = await conn.command('STARTTLS', config.commandTimeoutMs);
                    if (reply.code === 220) {
                        try {
                            await conn.startTls(tlsOptions(config), config.connectTimeoutMs);
                        } catch (err) {
                            if (!this.fallsBackToPlain(err)) throw err;
                            conn.fail(err as UpstreamError);
                            return await this.establish(client);
                        }
                        tls = true;
                        caps = await this.hello(conn, false);
                    } else if (config.starttls === 'required') {
                        throw new UpstreamError(
                            'tls',
                            `upstream ${this.label} refused STARTTLS: ${describe(toReply(reply))}`,
                        );
                    } else {
                        this.log.warn(
                            { upstream: this.label, reply: describe(toReply(reply)) },
                            'upstream refused STARTTLS; continuing without TLS',
                        );
                    }
                } else if (config.starttls === 'required') {
                    throw new UpstreamError('tls', `upstream ${this.label} does not offer STARTTLS`);
                }
            }

            // Without XCLIENT, Postfix would see the proxy (often on loopback, listed in
            // mynetworks) as the client and could relay internet mail anywhere: an open
            // relay. So when XCLIENT is configured, no XCLIENT means no delivery at all.
            if (config.xclient) {
                if (!caps.has('XCLIENT')) {
                    throw new UpstreamError('xclient', `upstream ${this.label} does not advertise XCLIENT`);
                }
                if (client) caps = await this.xclient(conn, caps, client);
            }
            return { conn, caps, tls, greetingName };
        } catch (err) {
            const error =
                err instanceof UpstreamError ? err : new UpstreamError('protocol', errorMessage(err), { cause: err });
            conn.fail(error);
            throw error;
        }
    }

    /**
     * A connection for `client`: an idle one where there is one (its RSET sent with the client's
     * MAIL where the upstream offers PIPELINING, else answered first), else a new one.
     */
    async open(client: ClientIdentity): Promise<UpstreamSession> {
        const taken = this.pool?.take((link) => this.dropped(link, 'closed or spoke while idle'));
        if (taken && taken.entry.caps.has('PIPELINING')) {
            return new SmtpSession(taken.entry, taken.uses + 1, this, client, true);
        }
        const { link, uses } = await this.acquire(client, taken ?? null);
        return new SmtpSession(link, uses, this, client, false);
    }

    /**
     * A connection checked for `client`: `first` or another idle one that answers RSET with 250
     * on its own, else a new one.
     */
    async acquire(client: ClientIdentity, first: Taken | null = null): Promise<{ link: Link; uses: number }> {
        if (this.pool) {
            const reused = await this.reuse(this.pool, first);
            if (reused) return reused;
        }
        const est = await this.establish(client);
        this.onConnection?.('opened');
        return { link: new Link(est, this), uses: 1 };
    }

    /**
     * Takes idle connections (`first`, then the pool's) until one answers RSET with 250 within
     * the command timeout; each that does not is dropped. Nothing of the client's transaction
     * has been sent to them.
     */
    private async reuse(pool: IdlePool<Link>, first: Taken | null): Promise<{ link: Link; uses: number } | null> {
        for (let taken = first; ; taken = null) {
            taken ??= pool.take((link) => this.dropped(link, 'closed or spoke while idle'));
            if (!taken) return null;
            const { entry: link, uses } = taken;
            let reason: string;
            try {
                const reply = await link.conn.command('RSET', this.config.commandTimeoutMs);
                link.counted('RSET', reply.code);
                // more than the one reply would be taken as the answer to the client's MAIL
                if (reply.code === 250 && link.usable) {
                    this.reused();
                    return { link, uses: uses + 1 };
                }
                reason =
                    reply.code === 250 ? 'more than one reply to RSET' : `RSET answered ${describe(toReply(reply))}`;
            } catch (err) {
                if (this.idleFailed(link, err)) return null;
                continue;
            }
            this.idleFailed(link, reason);
        }
    }

    /**
     * Drops an idle connection that failed its RSET (`why`: the reply, or the error). True when it
     * timed out: an upstream that does not answer one idle connection is not asked on the others,
     * as each would cost the client another timeout; they are closed too, and a new one is opened.
     */
    idleFailed(link: Link, why: unknown): boolean {
        void link.discard();
        this.dropped(link, typeof why === 'string' ? why : errorMessage(why));
        if (!(why instanceof UpstreamError && why.kind === 'timeout') || !this.pool) return false;
        for (let other = this.pool.take(); other; other = this.pool.take()) {
            void other.entry.discard();
            this.dropped(other.entry, 'another idle connection did not answer RSET');
        }
        return true;
    }

    /** An idle connection answered RSET with 250 and now serves a client. */
    reused(): void {
        this.onConnection?.('reused');
    }

    private dropped(link: Link, reason: string): void {
        this.onConnection?.('discarded');
        if (this.debugging()) this.log.debug({ upstream: link.peer, reason }, 'idle upstream connection discarded');
    }

    /** Keeps a connection that ended cleanly for the next client; false when there is no pool. */
    release(link: Link, uses: number): boolean {
        if (!this.pool) return false;
        if (this.pool.give(link, uses) && this.debugging()) {
            this.log.debug({ upstream: link.peer, uses }, 'upstream connection kept idle');
        }
        return true;
    }

    /** A keepalive NOOP is about to be sent. */
    keptAlive(): void {
        this.onKeepAlive?.();
    }

    /**
     * A keepalive NOOP failed: the connection is gone; at the client's end of data the session
     * begins the transaction again on a new one (session.ts, upstream/replay.ts).
     */
    keepAliveFailed(peer: string, err: unknown): void {
        this.log.warn(
            { upstream: peer, err: errorMessage(err) },
            'upstream connection lost while its transaction waited for the message',
        );
    }

    /** Whether debug lines are wanted now (the level can change on reload); builds nothing otherwise. */
    private debugging(): boolean {
        return this.log.isLevelEnabled?.('debug') ?? true;
    }

    quitTimeoutMs(): number {
        return Math.min(this.config.commandTimeoutMs, QUIT_TIMEOUT_MS);
    }

    /** Ends the idle connections (QUIT) and keeps none from now on. */
    async close(): Promise<void> {
        await this.pool?.close();
    }

    async probe(): Promise<UpstreamCapabilities> {
        const { conn, caps, tls } = await this.establish(null);
        await conn.quit(Math.min(this.config.commandTimeoutMs, QUIT_TIMEOUT_MS));
        return capabilitiesFromEhlo(caps, tls);
    }
}

/**
 * EHLO and HELO sent on each connection: Postfix counts them as junk commands too (see
 * STRESS_FREE_JUNK), until a message is delivered.
 */
const greetings = new WeakMap<Connection, number>();

/** Sends EHLO or HELO, counted in `greetings`. */
function greet(conn: Connection, line: string, timeoutMs: number): Promise<RawReply> {
    greetings.set(conn, (greetings.get(conn) ?? 0) + 1);
    return conn.command(line, timeoutMs);
}

function toBytes(chunk: unknown): Uint8Array {
    if (chunk instanceof Uint8Array) return chunk;
    if (typeof chunk === 'string') return Buffer.from(chunk, 'utf8');
    throw new TypeError('message source yielded something other than bytes');
}

/** An idle connection taken from the pool, with the number of clients it served. */
type Taken = { readonly entry: Link; readonly uses: number };

/** One connection to the upstream; without XCLIENT it may serve several clients in turn, never two at once. */
class Link implements PoolEntry {
    readonly conn: Connection;
    readonly caps: Capabilities;
    readonly tls: boolean;
    readonly peer: string;
    private readonly client: SmtpClient;
    /** Error replies (4xx, 5xx) since the last message the upstream accepted. */
    errors = 0;
    /** RSET and NOOP commands since the last message the upstream accepted (Postfix's junk commands). */
    junk = 0;
    /** EHLO and HELO since the connection opened or the last message the upstream accepted: junk to Postfix too. */
    greetings: number;
    /**
     * The upstream answered a NOOP after a silence a stressed Postfix would not have waited out:
     * its junk command limit is the normal one (see STRESS_FREE_JUNK).
     */
    unstressed = false;
    /** When the connection was opened (the client's clock). */
    private readonly openedAt: number;

    constructor(est: Established, client: SmtpClient) {
        this.openedAt = client.now();
        this.conn = est.conn;
        this.caps = est.caps;
        this.tls = est.tls;
        this.peer = est.greetingName ? `${client.label} (${est.greetingName})` : client.label;
        this.greetings = greetings.get(est.conn) ?? 0;
        this.client = client;
    }

    /** Counts a command sent and its reply towards the upstream's per-connection limits. */
    counted(line: string, code: number): void {
        if (line === 'RSET' || line === 'NOOP') this.junk++;
        if (code >= 400) this.errors++;
    }

    /** Postfix's junk commands (EHLO, HELO, RSET, NOOP) since the connection opened or its last delivery. */
    get junkSinceDelivery(): number {
        return this.junk + this.greetings;
    }

    /** A message was accepted: the upstream's error and junk counts start again. */
    delivered(): void {
        this.errors = 0;
        this.junk = 0;
        this.greetings = 0;
    }

    /** Near the upstream's error or junk command limits (see POOL_MAX_ERRORS), or older than POOL_MAX_AGE_MS: not to be kept. */
    get worn(): boolean {
        return (
            this.errors >= POOL_MAX_ERRORS ||
            this.junk >= POOL_MAX_JUNK ||
            this.client.now() - this.openedAt >= POOL_MAX_AGE_MS
        );
    }

    /** Alive, and nothing arrived that was not asked for (a 421 before the upstream hangs up, say). */
    get usable(): boolean {
        return this.conn.failure === null && !this.conn.unsolicited;
    }

    idle(on: boolean): void {
        this.conn.keepAlive(!on);
    }

    discard(): Promise<void> {
        return this.conn.quit(this.client.quitTimeoutMs());
    }
}

/** Marks an error thrown by the message source, as opposed to the connection. */
class SourceFailure extends Error {
    constructor(cause: unknown) {
        super('message source failed', { cause });
        this.name = 'SourceFailure';
    }
}

class SmtpSession implements UpstreamSession {
    peer: string;
    capabilities: UpstreamCapabilities;
    /** The connection; replaced only when an idle one fails the RSET sent with the first MAIL. */
    private link: Link;
    private conn: Connection;
    private caps: Capabilities;
    private readonly config: SmtpUpstreamConfig;
    private readonly client: SmtpClient;
    /** The client this session serves (for a new connection, should the idle one fail). */
    private readonly identity: ClientIdentity;
    /** Clients this connection has served, this one included. */
    private uses: number;
    /** Taken idle and not yet checked: its RSET goes out with the first MAIL (see mailAfterRset). */
    private rsetPending: boolean;
    /**
     * The upstream is outside a transaction and its last reply was a success that leaves nothing
     * pending: the greeting's EHLO, a 250 to RSET, or a 2xx to the end of data. Only then may the
     * connection serve another client.
     */
    private clean = true;
    private txOpen = false;
    private closed = false;
    /** Set by a 421 reply (RFC 5321 section 3.8) or a reply that arrived out of turn. */
    private spent = false;
    private running = 0;
    private chain: Promise<unknown> = Promise.resolve();
    /** The next keepalive NOOP, while one is due (see the top of this file). */
    private keepAliveTimer: NodeJS.Timeout | null = null;
    /** Keepalive NOOPs sent in the current transaction. */
    private noops = 0;
    /** The keepalive timer waits out STRESS_PROBE_MS (see the top of this file). */
    private probing = false;
    /** A keepalive NOOP is queued or waiting for its reply (set and cleared synchronously with it). */
    private noopInFlight = false;

    constructor(link: Link, uses: number, client: SmtpClient, identity: ClientIdentity, rsetPending: boolean) {
        this.link = link;
        this.conn = link.conn;
        this.caps = link.caps;
        this.capabilities = capabilitiesFromEhlo(link.caps, link.tls);
        this.config = client.config;
        this.client = client;
        this.identity = identity;
        this.uses = uses;
        this.peer = link.peer;
        this.rsetPending = rsetPending;
    }

    /**
     * Moves the session to another connection of the same upstream, with nothing of the
     * transaction on it yet; what it advertised is read again for this session's commands (the
     * caller's capability tracker took the first connection's, which the next open corrects).
     */
    private adopt(link: Link, uses: number): void {
        this.stopKeepAlive();
        this.clean = true;
        this.txOpen = false;
        this.link = link;
        this.conn = link.conn;
        this.caps = link.caps;
        this.capabilities = capabilitiesFromEhlo(link.caps, link.tls);
        this.uses = uses;
        this.peer = link.peer;
    }

    get usable(): boolean {
        return !this.closed && !this.spent && this.conn.failure === null;
    }

    /** What an operation on this session meets once the session is closed. */
    private closedError(): UpstreamError {
        return new UpstreamError('closed', `upstream ${this.peer} session is closed`);
    }

    /**
     * Runs operations one at a time, in call order (lock-step). Once none is left, the keepalive
     * is armed again (it sends nothing outside a transaction).
     */
    private run<T>(op: () => Promise<T>): Promise<T> {
        this.running++;
        this.stopKeepAlive();
        const result = this.chain.then(() => {
            if (this.closed) throw this.closedError();
            return op();
        });
        const done = (): void => {
            this.running--;
            if (this.running === 0) this.armKeepAlive();
        };
        this.chain = result.then(done, done);
        return result;
    }

    /** Whether a keepalive NOOP may go out now or later in this transaction. */
    private keepAliveWanted(): boolean {
        return (
            this.config.keepAliveMs !== null &&
            this.txOpen &&
            this.usable &&
            this.noops < KEEPALIVE_MAX_NOOPS &&
            this.link.junkSinceDelivery < KEEPALIVE_MAX_JUNK
        );
    }

    private armKeepAlive(): void {
        this.stopKeepAlive();
        const interval = this.config.keepAliveMs;
        if (interval === null || !this.keepAliveWanted()) return;
        const probeMs = this.client.stressProbeMs;
        this.probing = this.link.junkSinceDelivery >= STRESS_FREE_JUNK && !this.link.unstressed && probeMs > interval;
        const timer = setTimeout(() => this.keepAlive(), this.probing ? probeMs : interval);
        // the connection itself keeps the process alive while it is in use
        timer.unref();
        this.keepAliveTimer = timer;
    }

    private stopKeepAlive(): void {
        if (this.keepAliveTimer === null) return;
        clearTimeout(this.keepAliveTimer);
        this.keepAliveTimer = null;
    }

    /** Sends a NOOP, when the transaction is still open and nothing else went out meanwhile. */
    private keepAlive(): void {
        this.keepAliveTimer = null;
        if (this.running > 0 || !this.keepAliveWanted()) return;
        this.noops++;
        this.noopInFlight = true;
        const probe = this.probing;
        this.client.keptAlive();
        this.run(async () => {
            try {
                const reply = await this.cmd('NOOP');
                if (reply.code !== 250) {
                    const err = new UpstreamError(
                        reply.code === 421 ? 'closed' : 'protocol',
                        `upstream ${this.peer} answered NOOP with ${describe(reply)}`,
                    );
                    this.conn.fail(err);
                    throw err;
                }
                if (probe) this.link.unstressed = true;
            } finally {
                this.noopInFlight = false;
            }
        }).catch((err: unknown) => {
            this.noopInFlight = false;
            // a session closed meanwhile ended the connection itself: nothing to report
            if (!this.closed) this.client.keepAliveFailed(this.peer, err);
        });
    }

    private async cmd(line: string, timeoutMs = this.config.commandTimeoutMs): Promise<UpstreamReply> {
        this.clean = false;
        const reply = toReply(await this.conn.command(line, timeoutMs));
        // a second reply came with this one: the connection ended, and the reply cannot be trusted
        if (this.conn.failure) throw this.conn.failure;
        this.link.counted(line, reply.code);
        if (reply.code === 421) this.spent = true;
        return reply;
    }

    private async rset(): Promise<void> {
        const reply = await this.cmd('RSET');
        if (reply.code !== 250) {
            const err = new UpstreamError('protocol', `upstream ${this.peer} refused RSET: ${describe(reply)}`);
            this.conn.fail(err);
            throw err;
        }
        this.txOpen = false;
        this.clean = true;
    }

    /** Fails, before anything is sent, a transaction that needs an extension this upstream lacks. */
    private assertSupported(mail: MailParams | null, rcpt: RcptParams | null): void {
        const missing = missingCapability(this.capabilities, mail, rcpt);
        if (missing !== null) {
            throw new UnsupportedFeatureError(missing, `upstream ${this.peer} does not offer ${missing}`);
        }
    }

    async mailFrom(address: string, params: MailParams): Promise<UpstreamReply> {
        assertSafeAddress(address, 'mail', 'sender address');
        this.assertSupported(params, null);
        if (params.envid !== undefined) assertSafeParam(params.envid, 'ENVID');
        return this.run(async () => {
            if (this.rsetPending) {
                this.rsetPending = false;
                const reply = await this.mailAfterRset(this.mailLine(address, params));
                if (reply) return reply;
                // the idle connection failed its RSET and was dropped: another, checked first, or a new
                // one; none for a client that left meanwhile
                if (this.closed) throw this.closedError();
                const { link, uses } = await this.client.acquire(this.identity);
                if (this.closed) {
                    // found after the client left: idle again (it just answered RSET, or greeted) or closed
                    if (!(link.usable && !link.worn && this.client.release(link, uses))) void link.discard();
                    throw this.closedError();
                }
                this.adopt(link, uses);
                this.assertSupported(params, null);
            }
            if (this.txOpen) await this.rset();
            this.noops = 0;
            const reply = await this.cmd(this.mailLine(address, params));
            this.txOpen = reply.code >= 200 && reply.code < 300;
            return reply;
        });
    }

    /**
     * RSET and the client's MAIL in one write, on a connection taken idle from the pool (RFC 2920
     * section 3.1: both may stand anywhere in a pipelined group). The RSET checks the connection
     * as an RSET of its own would; only after its 250 is the second reply taken as the answer to
     * MAIL (a reply the upstream sent unasked just before would shift them by one: RFC 2920 rules
     * that out, and one left over when MAIL's reply is read marks the connection spent). Null
     * when the connection failed the check: it is dropped (with the MAIL it holds, which starts
     * nothing without RCPT and DATA) and the caller sends MAIL elsewhere.
     */
    private async mailAfterRset(line: string): Promise<UpstreamReply | null> {
        const { link, conn } = this;
        const timeoutMs = this.config.commandTimeoutMs;
        this.clean = false;
        let rset: RawReply;
        try {
            conn.writeCommands(['RSET', line]);
            rset = await conn.readReply(timeoutMs, 'RSET');
        } catch (err) {
            // a session closed by its client ended the connection itself: not the connection's fault
            if (!this.closed) this.client.idleFailed(link, err);
            return null;
        }
        link.counted('RSET', rset.code);
        if (rset.code !== 250) {
            this.client.idleFailed(link, `RSET answered ${describe(toReply(rset))}`);
            return null;
        }
        this.client.reused();
        this.noops = 0;
        const reply = toReply(await conn.readReply(timeoutMs, 'MAIL'));
        link.counted(line, reply.code);
        // a 421, or more replies than the two commands asked for: not for another transaction
        if (reply.code === 421 || conn.unsolicited) this.spent = true;
        this.txOpen = reply.code >= 200 && reply.code < 300;
        return reply;
    }

    /** The MAIL command for this connection's upstream. */
    private mailLine(address: string, params: MailParams): string {
        let line = `MAIL FROM:<${address}>`;
        // Parameters only where the upstream advertised the extension (RFC 5321 section 4.1.4).
        if (
            params.size !== undefined &&
            this.caps.has('SIZE') &&
            Number.isSafeInteger(params.size) &&
            params.size >= 0
        ) {
            line += ` SIZE=${params.size}`; // RFC 1870
        }
        // BODY=7BIT is the default and may go unsaid; 8BITMIME was checked above (RFC 6152)
        if (params.body !== undefined && this.caps.has('8BITMIME')) line += ` BODY=${params.body}`;
        if (params.smtputf8 === true) line += ' SMTPUTF8'; // RFC 6531
        if (params.ret !== undefined) line += ` RET=${params.ret}`; // RFC 3461 section 4.3
        if (params.requireTls === true) line += ' REQUIRETLS'; // RFC 8689 section 4
        // last: nothing follows the one value a client writes as it likes (RFC 3461 section 4.4)
        if (params.envid !== undefined) line += ` ENVID=${params.envid}`;
        return line;
    }

    async rcptTo(address: string, params: RcptParams = {}): Promise<UpstreamReply> {
        assertSafeAddress(address, 'rcpt', 'recipient address');
        this.assertSupported(null, params);
        if (params.notify !== undefined) assertSafeParam(params.notify, 'NOTIFY');
        if (params.orcpt !== undefined) assertSafeParam(params.orcpt, 'ORCPT');
        let line = `RCPT TO:<${address}>`;
        if (params.notify !== undefined) line += ` NOTIFY=${params.notify}`; // RFC 3461 section 4.1
        if (params.orcpt !== undefined) line += ` ORCPT=${params.orcpt}`; // RFC 3461 section 4.2
        return this.run(() => this.cmd(line));
    }

    data(message: Readable): Promise<UpstreamReply> {
        return this.run(async () => {
            const { conn } = this;
            conn.textBegins();
            const go = await this.cmd('DATA');
            if (go.code !== 354) {
                conn.noText();
                // RFC 5321 section 4.3.2: DATA is answered 354 or refused; a success here would
                // tell the client its message was accepted before a byte of it was sent
                if (go.code < 400) {
                    const err = new UpstreamError(
                        'protocol',
                        `upstream ${this.peer} answered DATA with ${describe(go)} instead of 354`,
                    );
                    conn.fail(err);
                    throw err;
                }
                return go;
            }
            const stuffer = new DotStuffer();
            const source = message[Symbol.asyncIterator]() as AsyncIterator<unknown>;
            try {
                for (;;) {
                    let step: IteratorResult<unknown>;
                    try {
                        step = await conn.untilDead(source.next());
                    } catch (err) {
                        if (conn.failure !== null && err === conn.failure) throw err;
                        throw new SourceFailure(err);
                    }
                    if (step.done) break;
                    // an early refusal answered the message: the rest of its text is not sent
                    if (conn.refusedEarly) {
                        void source.return?.().catch(() => {});
                        break;
                    }
                    let bytes: Uint8Array;
                    try {
                        bytes = toBytes(step.value);
                    } catch (err) {
                        throw new SourceFailure(err);
                    }
                    const out = stuffer.push(bytes);
                    if (out.length > 0) await conn.write(out, this.config.dataTimeoutMs);
                }
            } catch (err) {
                this.txOpen = false;
                if (err instanceof SourceFailure) {
                    // Drop the connection without the terminator: the upstream must not
                    // take the part it received as a complete message. The source's own error
                    // goes to the caller as it is: the upstream did not fail.
                    conn.fail(new UpstreamError('closed', `message source failed: ${errorMessage(err.cause)}`));
                    throw err.cause;
                }
                void source.return?.().catch(() => {});
                throw err;
            }
            // An early refusal answered the message before its end: the terminator is withheld and
            // the connection dropped, so the upstream cannot take the message after all.
            if (conn.refusedEarly) {
                this.txOpen = false;
                this.spent = true;
                const early = toReply(await conn.readReply(this.config.dataTimeoutMs, 'the end of data'));
                conn.fail(new UpstreamError('closed', `upstream ${this.peer} refused the message before its end`));
                this.link.counted('', early.code);
                return early;
            }
            // A reply that came before the terminator is out of turn: take it as the final
            // answer, but do not trust the connection for another transaction.
            if (conn.unsolicited) this.spent = true;
            // A dead connection refuses the write before a byte of the terminator goes out.
            const endCanArrive = conn.failure === null;
            let raw: RawReply;
            try {
                conn.textEnds();
                await conn.write(stuffer.end(), this.config.dataTimeoutMs);
                await conn.flush(this.config.dataTimeoutMs);
                this.txOpen = false;
                raw = await conn.readReply(this.config.dataTimeoutMs, 'the end of data');
            } catch (err) {
                this.txOpen = false;
                if (!endCanArrive || !(err instanceof UpstreamError)) throw err;
                // The upstream may have the whole message and have accepted it: say so.
                throw new UpstreamError(err.kind, err.message, { cause: err, endOfDataSent: true });
            }
            const reply = toReply(raw);
            if (reply.code === 421) this.spent = true;
            this.clean = reply.code >= 200 && reply.code < 300;
            if (this.clean) this.link.delivered();
            else this.link.counted('', reply.code);
            return reply;
        });
    }

    async reset(): Promise<void> {
        if (!this.usable) return;
        return this.run(async () => {
            if (!this.usable) return;
            await this.rset();
        });
    }

    /** True when the operation in flight settles within `ms`. */
    private async settlesWithin(ms: number): Promise<boolean> {
        let timer: NodeJS.Timeout | undefined;
        const settled = await Promise.race([
            this.chain.then(
                () => true,
                () => true,
            ),
            new Promise<false>((resolve) => {
                timer = setTimeout(() => resolve(false), ms);
            }),
        ]);
        clearTimeout(timer);
        return settled;
    }

    async close(): Promise<void> {
        if (this.closed) return;
        this.closed = true;
        this.stopKeepAlive();
        // a keepalive NOOP and nothing else in flight: QUIT goes after its reply, if it comes
        // within the QUIT bound (not the NOOP's own command timeout: a stop must not wait a minute)
        if (this.running === 1 && this.noopInFlight && !(await this.settlesWithin(this.client.quitTimeoutMs()))) {
            this.conn.fail(
                new UpstreamError('closed', `upstream ${this.peer} did not answer NOOP before the session closed`),
            );
            return;
        }
        if (this.running > 0) {
            // An operation is in flight (perhaps mid-DATA): QUIT now would land inside it.
            this.conn.fail(new UpstreamError('closed', `upstream ${this.peer} session closed during an operation`));
            return;
        }
        if (
            this.clean &&
            !this.txOpen &&
            !this.spent &&
            this.link.usable &&
            !this.link.worn &&
            this.client.release(this.link, this.uses)
        ) {
            return;
        }
        await this.conn.quit(this.client.quitTimeoutMs());
    }
}

/** An upstream reached over SMTP (`smtp:` with optional STARTTLS) or SMTPS (`smtps:`, implicit TLS). */
export function createSmtpUpstream(config: SmtpUpstreamConfig, deps: UpstreamDeps): Upstream {
    const client = new SmtpClient(config, deps);
    const features = [config.xclient ? 'xclient' : null, config.kind === 'smtp' ? `starttls ${config.starttls}` : null]
        .filter((f) => f !== null)
        .join(', ');
    return {
        description: `${config.kind}://${client.label}${features ? ` (${features})` : ''}`,
        open: (identity) => client.open(identity),
        probe: () => client.probe(),
        close: () => client.close(),
    };
}
