/**
 * The embedded defaults: the configuration used when no config file exists, and the value
 * every key takes when a config file leaves it out (SPEC "Embedded defaults").
 * Builds values only; it must not read files, validate input or look at the environment.
 */
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { defaultReputation } from './reputation.ts';
import type {
    AuthLockoutConfig,
    AuthenticationConfig,
    Config,
    ListenerConfig,
    ListenerMode,
    UpstreamConfig,
} from './types.ts';

const SECOND = 1000;
const MINUTE = 60 * SECOND;
const MB = 1024 * 1024;

/** The `rules/` folder shipped with the package (`<package root>/rules`). */
export const PACKAGE_RULES_DIR: string = fileURLToPath(new URL('../../rules/', import.meta.url)).replace(/[\\/]$/, '');

export const DEFAULT_MAILDIR = './data/maildir';

export const DEFAULTS = {
    listener: { name: 'mx', host: '127.0.0.1', port: 2525, mode: 'mx' },
    /**
     * Per listener. An idle connection costs about 27 KiB of memory, 64 KiB with TLS (measured
     * with scripts/idle-connections.ts; docs/security.md, "Connections and TLS"), so 2000 cost
     * 55 to 130 MiB. What must be small is the share one network can hold and how long an idle
     * client keeps its slot.
     */
    maxClients: 2000,
    /** Per listener: the most one network may hold, unless a quarter of `maxClients` is less. */
    maxClientsPerNetwork: 50,
    /**
     * postscreen's greet_wait is 6 s; a real MTA waits for the greeting (RFC 5321 section
     * 4.3.1), a bot that speaks first is seen. A client that passed is greeted at once for a day
     * (postscreen_greet_ttl).
     */
    pregreet: { waitMs: 6 * SECOND, ttlMs: 24 * 60 * MINUTE },
    /** Like postscreen: a real client starts a transaction within seconds of connecting. */
    preTransactionTimeoutMs: 30 * SECOND,
    maxMessageSize: 50 * MB,
    /** Postfix's smtpd_recipient_limit. */
    maxRecipients: 1000,
    /** RFC 5321 section 4.5.3.2.7: a server should wait at least 5 minutes for the next command. */
    socketTimeoutMs: 5 * MINUTE,
    upstream: {
        smtpPort: 25,
        smtpsPort: 465,
        xclient: true,
        tlsVerify: false,
        /** Connecting to an MTA on the same host or network is quick; a slow connect means trouble. */
        connectTimeoutMs: 10 * SECOND,
        /**
         * Waiting for the greeting and each command reply. RFC 5321 section 4.5.3.2 allows 5 minutes,
         * but the client is waiting on the other side of the proxy and Postfix answers in milliseconds.
         */
        commandTimeoutMs: 60 * SECOND,
        /**
         * Waiting for the upstream to take each part of the message and to answer the final dot.
         * RFC 5321 section 4.5.3.2.6 lets an MTA wait 10 minutes, but here a client waits on the
         * other side: Postfix's own before-queue proxy gives up after 100 s (smtpd_proxy_timeout).
         */
        dataTimeoutMs: 100 * SECOND,
    },
    dns: { timeoutMs: 5 * SECOND },
    /** A limit decision is a single script call; Redis answers in well under a millisecond when healthy. */
    redis: { commandTimeoutMs: 250, connectTimeoutMs: SECOND },
    http: { host: '127.0.0.1', port: 9465 },
    spool: { memoryLimit: 1 * MB },
    shutdownTimeoutMs: 30 * SECOND,
    /** Postfix's usual recipient_delimiter: `alice+tag@` may be used where `alice@` may (RFC 5233). */
    recipientDelimiter: '+',
    logLevel: 'info',
} as const;

/**
 * Password guessing on submission: 10 failed logins per client address per 15 minutes (one
 * more every 90 s after that), 20 per login per hour from everywhere (a login guessed from many
 * addresses), and the connection closed at the third failure, as Dovecot's login processes do.
 */
export function defaultAuthLockout(): AuthLockoutConfig {
    return {
        perIp: { limit: 10, periodMs: 15 * MINUTE },
        perLogin: { limit: 20, periodMs: 60 * MINUTE },
        perSession: 3,
        exempt: [],
    };
}

/**
 * Sender authentication. 15 s covers several DNS round trips per check with the 5 s DNS timeout;
 * RSA keys under 1024 bits and rsa-sha1 are refused as RFC 8301 requires; 10 SPF lookups is the
 * RFC 7208 section 4.6.4 limit; DMARC by the RFC 9989 tree walk; no ARC sealer trusted.
 * Per-message cost: 5 DKIM signatures (as Rspamd and OpenDKIM verify a handful), 3 body hashes,
 * 100 names per h=, 10 ARC sets, 100 DNS queries: well above what real mail needs (SPF rarely
 * asks 20, DKIM and DMARC a few each) and far below what a hostile message could ask for.
 */
export function defaultAuthentication(): AuthenticationConfig {
    return {
        timeoutMs: 15 * SECOND,
        minRsaBits: 1024,
        strict: false,
        maxDnsQueries: 100,
        spf: { maxLookups: 10 },
        dkim: { rejectRsaSha1: true, maxSignatures: 5, maxBodyHashes: 3, maxSignedFields: 100 },
        dmarc: { mode: 'rfc9989', rejectMultipleFrom: true },
        arc: { trustedSealers: [], maxSets: 10 },
    };
}

/** Defaults of one listener of the given mode. `tls` follows whether top-level `tls` is configured. */
export function defaultListener(
    name: string,
    host: string,
    port: number,
    mode: ListenerMode,
    haveTls: boolean,
    mxPregreetWaitMs: number = DEFAULTS.pregreet.waitMs,
): ListenerConfig {
    return {
        name,
        host,
        port,
        mode,
        tls: haveTls ? 'starttls' : 'none',
        proxyProtocol: null,
        maxClients: DEFAULTS.maxClients,
        maxClientsPerNetwork: defaultMaxClientsPerNetwork(DEFAULTS.maxClients),
        maxMessageSize: DEFAULTS.maxMessageSize,
        bareNewline: mode === 'mx' ? 'reject' : 'normalize',
        socketTimeoutMs: DEFAULTS.socketTimeoutMs,
        maxRecipients: DEFAULTS.maxRecipients,
        preTransactionTimeoutMs: DEFAULTS.preTransactionTimeoutMs,
        pregreetWaitMs: mode === 'mx' ? mxPregreetWaitMs : 0,
    };
}

/**
 * The spool folder when `spool.dir` is left out: a folder of mailwarden's own under the OS
 * temporary folder, per user (serve creates it with mode 0700 and refuses one another user owns).
 */
export function defaultSpoolDir(): string {
    return path.join(os.tmpdir(), `mailwarden-spool-${process.getuid?.() ?? 'user'}`);
}

/**
 * The per-network share of a listener with `maxClients` slots when the config does not set it:
 * 50, or a quarter of the slots when that is less (at least 1), so that at least four networks
 * always fit.
 */
export function defaultMaxClientsPerNetwork(maxClients: number): number {
    return Math.min(DEFAULTS.maxClientsPerNetwork, Math.max(1, Math.floor(maxClients / 4)));
}

/** True for names and addresses that stay on this host (127.0.0.0/8, ::1, localhost). */
export function isLoopbackHost(host: string): boolean {
    const h = host.toLowerCase().replace(/\.$/, '');
    return h === 'localhost' || h.endsWith('.localhost') || /^127\.\d+\.\d+\.\d+$/.test(h) || h === '::1';
}

/**
 * STARTTLS towards an `smtp://` upstream: `off` on loopback (nothing to protect, and Postfix's
 * loopback listener usually has no certificate), `opportunistic` elsewhere.
 */
export function defaultUpstreamStarttls(host: string): 'off' | 'opportunistic' {
    return isLoopbackHost(host) ? 'off' : 'opportunistic';
}

/** The default `maildir:` upstream, resolved against `baseDir`. */
export function defaultUpstream(baseDir: string): UpstreamConfig {
    return { kind: 'maildir', url: `maildir:${DEFAULT_MAILDIR}`, path: path.resolve(baseDir, DEFAULT_MAILDIR) };
}

/**
 * The whole embedded configuration. `baseDir` is where relative defaults resolve: the current
 * working directory without a config file, the config file's folder otherwise.
 */
export function defaultConfig(baseDir: string, source: string | null = null): Config {
    const l = DEFAULTS.listener;
    return {
        source,
        hostname: os.hostname(),
        domains: [],
        relayDomains: [],
        listeners: [defaultListener(l.name, l.host, l.port, l.mode, false)],
        pregreet: { ...DEFAULTS.pregreet },
        tls: null,
        upstream: defaultUpstream(baseDir),
        dns: { servers: null, timeoutMs: DEFAULTS.dns.timeoutMs },
        redis: null,
        auth: null,
        rules: PACKAGE_RULES_DIR,
        softReject: false,
        http: { host: DEFAULTS.http.host, port: DEFAULTS.http.port },
        spool: { dir: defaultSpoolDir(), memoryLimit: DEFAULTS.spool.memoryLimit },
        dkim: null,
        authentication: defaultAuthentication(),
        reputation: defaultReputation(),
        shutdownTimeoutMs: DEFAULTS.shutdownTimeoutMs,
        workers: 'auto',
        log: { level: DEFAULTS.logLevel },
    };
}
