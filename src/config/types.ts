/**
 * The validated, frozen configuration the rest of the program reads.
 * Declarations only: parsing and validation live in config/load.ts, defaults in config/defaults.ts.
 * Durations are stored in milliseconds and sizes in bytes. Every key added here also needs its
 * reload classification (live or restart) in SETTINGS, config/reload.ts.
 */

export type ListenerMode = 'mx' | 'submission';
/** `starttls`: offered after EHLO when certificates exist; `implicit`: TLS from the first byte (port 465); `none`: never. */
export type ListenerTls = 'starttls' | 'implicit' | 'none';
/** What to do with a bare LF or bare CR inside DATA (RFC 5321 section 2.3.8). */
export type BareNewlinePolicy = 'reject' | 'normalize';

export interface ListenerConfig {
    readonly name: string;
    readonly host: string;
    readonly port: number;
    readonly mode: ListenerMode;
    readonly tls: ListenerTls;
    /** null: PROXY protocol off; otherwise the CIDRs that must open with a PROXY v1 or v2 header. */
    readonly proxyProtocol: readonly string[] | null;
    /** Connections served at once (after the PROXY header and an implicit TLS handshake, and while those run). */
    readonly maxClients: number;
    /** Connections at once from one client network (IPv4 /24, IPv6 /48); at most `maxClients`. */
    readonly maxClientsPerNetwork: number;
    readonly maxMessageSize: number;
    readonly bareNewline: BareNewlinePolicy;
    /** Idle time allowed between client commands. */
    readonly socketTimeoutMs: number;
    /** Recipients accepted in one transaction (Postfix's smtpd_recipient_limit); more get `452 4.5.3`. */
    readonly maxRecipients: number;
    /**
     * Time from the start of the session to the first accepted MAIL FROM; also the limit for a
     * PROXY header or an implicit TLS handshake to complete.
     */
    readonly preTransactionTimeoutMs: number;
    /**
     * The pregreet test (postscreen's greet_wait): how long a client not in the pass cache waits
     * for the greeting, watched for talking first. 0: greeted at once, not tested. Set from the
     * listener's `pregreetWait`, else `pregreet.wait` on mx listeners and 0 on submission ones.
     */
    readonly pregreetWaitMs: number;
}

/** The pregreet test's shared settings (per-listener waits are in ListenerConfig). */
export interface PregreetConfig {
    /** The wait of mx listeners that do not set `pregreetWait`. */
    readonly waitMs: number;
    /** How long a client that waited is remembered (in the shared store) and greeted at once. */
    readonly ttlMs: number;
}

export interface TlsConfig {
    readonly cert: string;
    readonly key: string;
}

export type UpstreamConfig =
    | {
          readonly kind: 'smtp' | 'smtps';
          readonly url: string;
          readonly host: string;
          readonly port: number;
          readonly xclient: boolean;
          /** STARTTLS towards the upstream when it offers it (`smtp:` only). */
          readonly starttls: 'opportunistic' | 'required' | 'off';
          /** Verify the upstream's certificate. Off by default: the upstream is on loopback. */
          readonly tlsVerify: boolean;
          readonly connectTimeoutMs: number;
          readonly commandTimeoutMs: number;
          readonly dataTimeoutMs: number;
      }
    | {
          readonly kind: 'maildir';
          readonly url: string;
          readonly path: string;
      };

export interface DnsConfig {
    /** `host` or `host:port` entries; null means the system resolvers. */
    readonly servers: readonly string[] | null;
    readonly timeoutMs: number;
}

export interface HttpConfig {
    readonly host: string;
    readonly port: number;
}

export interface SpoolConfig {
    /** Folder of our own for messages larger than `memoryLimit`; created (mode 0700) by `serve`. */
    readonly dir: string;
    /** Bytes kept in memory per message before it is written to a spool file. */
    readonly memoryLimit: number;
}

/** How the DMARC organizational domain is found: DNS tree walk (RFC 9989) or Public Suffix List (RFC 7489). */
export type DmarcMode = 'rfc9989' | 'rfc7489';

/** Sender-domain authentication: SPF, DKIM, DMARC and ARC (checks in src/auth). */
export interface AuthenticationConfig {
    /** Time allowed for all of a message's SPF, DKIM, DMARC and ARC work together. */
    readonly timeoutMs: number;
    /** Shortest RSA key accepted for DKIM and ARC signatures (RFC 8301 section 3.2). */
    readonly minRsaBits: number;
    /** Follow the RFCs to the letter instead of mailauth's lenient defaults. */
    readonly strict: boolean;
    /** DNS queries one message's SPF, DKIM, DMARC and ARC may make together (cache hits included). */
    readonly maxDnsQueries: number;
    readonly spf: {
        /** DNS-querying terms allowed in one SPF evaluation (RFC 7208 section 4.6.4). */
        readonly maxLookups: number;
    };
    readonly dkim: {
        /** rsa-sha1 signatures count as `policy`, not `pass` (RFC 8301 section 3.1). */
        readonly rejectRsaSha1: boolean;
        /** DKIM-Signature fields evaluated per message; the others are skipped. */
        readonly maxSignatures: number;
        /** Distinct body hashes (canonicalization, algorithm, l=) computed per message. */
        readonly maxBodyHashes: number;
        /** Names a signature's h= may list and still be evaluated (DKIM and ARC-Message-Signature). */
        readonly maxSignedFields: number;
    };
    readonly dmarc: {
        readonly mode: DmarcMode;
        /** A From field with several mailboxes (or several From fields) gets the disposition `reject`. */
        readonly rejectMultipleFrom: boolean;
    };
    readonly arc: {
        /** ARC sealers (d= of ARC-Seal) whose results may override a DMARC failure. */
        readonly trustedSealers: readonly string[];
        /** ARC sets verified per message; a longer chain fails (RFC 8617 section 5.1.1 allows 50). */
        readonly maxSets: number;
    };
}

/** Where Dovecot's auth service listens: a unix socket, or TCP (an `inet_listener` of `service auth`). */
export type DovecotAuthAddress =
    | { readonly kind: 'unix'; readonly path: string }
    | { readonly kind: 'tcp'; readonly host: string; readonly port: number };

/** A count per period, enforced as GCRA: a burst of `limit`, then one more every periodMs / limit. */
export interface CountPerPeriod {
    readonly limit: number;
    readonly periodMs: number;
}

/** Password-guessing protection of SMTP AUTH (src/submission/login-guard.ts). */
export interface AuthLockoutConfig {
    /** Failed logins allowed per client IP (IPv6: per /64); null: not limited. */
    readonly perIp: CountPerPeriod | null;
    /** Failed logins allowed per login name, from all addresses together; null: not limited. */
    readonly perLogin: CountPerPeriod | null;
    /** Failed logins in one connection; the last of them is answered 421 and the connection closed. */
    readonly perSession: number;
    /** Client networks (CIDRs) never counted and never locked out. */
    readonly exempt: readonly string[];
}

/** SMTP AUTH on submission listeners (src/submission). Exactly one of `users` and `dovecot` is set. */
export interface SubmissionAuthConfig {
    /** The users file (logins, password hashes, sendAs); null when Dovecot checks passwords. */
    readonly users: string | null;
    /** Dovecot's auth socket; null when the users file checks passwords. */
    readonly dovecot: DovecotAuthAddress | null;
    /** With Dovecot: the file of login → sendAs addresses; null: each login may send as itself only. */
    readonly sendAs: string | null;
    /** Characters that start a subaddress (`alice+tag@`), as Postfix's recipient_delimiter; '' for none. */
    readonly recipientDelimiter: string;
    readonly lockout: AuthLockoutConfig;
}

export type DkimAlgorithm = 'rsa-sha256' | 'ed25519-sha256';

/** One signing key of outbound DKIM (RFC 6376, RFC 8463). */
export interface DkimSignKey {
    /** d=, a lower-case A-label. */
    readonly domain: string;
    /** s=. */
    readonly selector: string;
    /** The private key file (PEM), absolute. */
    readonly keyFile: string;
    readonly algorithm: DkimAlgorithm;
}

/** Outbound DKIM signing of authenticated submissions. */
export interface DkimConfig {
    readonly sign: readonly DkimSignKey[];
    /** Header fields to sign; null: the built-in list. */
    readonly headers: readonly string[] | null;
}

/** Where the shared limit store lives: exactly one of `url`, `cluster` and `sentinels` is set. */
export interface RedisConfig {
    /** One server: `redis://…` or `rediss://…`. */
    readonly url?: string;
    /** Redis Cluster seed nodes, `host:port` each. */
    readonly cluster?: readonly string[];
    /** Sentinels (`host:port` each) to ask for the master called `name`. */
    readonly sentinels?: readonly { readonly host: string; readonly port: number }[];
    readonly name?: string;
    /** For cluster nodes and the master found through Sentinel (a URL carries its own). */
    readonly username?: string;
    readonly password?: string;
    /** Longest wait for one limit decision before `onError` applies. */
    readonly commandTimeoutMs: number;
    readonly connectTimeoutMs: number;
}

/** DNS block and allow lists (docs/reputation.md); sites as written, validated by config/reputation.ts. */
export interface ReputationConfig {
    /** Address block lists: `zone[=filter][*weight][ delisting-page]`, positive weights. */
    readonly dnsbl: readonly string[];
    /** Address allow lists, negative weights. */
    readonly dnswl: readonly string[];
    /** Domain block lists asked for the HELO name and the envelope sender domain. */
    readonly rhsbl: readonly string[];
    /** Time between health probes of each list (an unhealthy list is probed sooner). */
    readonly probeIntervalMs: number;
}

export interface Config {
    /** Where the config came from (`null` for the embedded defaults). */
    readonly source: string | null;
    readonly hostname: string;
    /** The local domains (lower case, A-labels): accepted on mx listeners, matched exactly. */
    readonly domains: readonly string[];
    /**
     * Further recipient domains mx listeners accept and pass on (a backup MX, a relay for
     * other hosts): `example.net` exactly, `.example.net` every name below it.
     */
    readonly relayDomains: readonly string[];
    readonly listeners: readonly ListenerConfig[];
    readonly pregreet: PregreetConfig;
    readonly tls: TlsConfig | null;
    readonly upstream: UpstreamConfig;
    readonly dns: DnsConfig;
    /** The shared store of rate limits and greylisting; null: in memory, per process. */
    readonly redis: RedisConfig | null;
    readonly auth: SubmissionAuthConfig | null;
    readonly rules: string;
    /** Turn every 5xx decision into its 4xx equivalent (Postfix soft_bounce): for trying new rules safely. */
    readonly softReject: boolean;
    readonly http: HttpConfig | null;
    readonly spool: SpoolConfig;
    readonly dkim: DkimConfig | null;
    readonly authentication: AuthenticationConfig;
    readonly reputation: ReputationConfig;
    /** How long transactions in flight may take to finish after SIGTERM. */
    readonly shutdownTimeoutMs: number;
    /**
     * Processes serving the listeners (src/cluster): a number, or `auto` (one per core when the
     * limits are in Redis, one with the in-memory store, whose counts are per process).
     */
    readonly workers: number | 'auto';
    readonly log: { readonly level: 'trace' | 'debug' | 'info' | 'warn' | 'error' };
}
