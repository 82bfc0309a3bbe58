/**
 * The validated, frozen configuration the rest of the program reads: Config, composed of the
 * section types, each declared beside its validation in config/sections/ and re-exported here so
 * that readers of the config import one module. Declarations only: parsing lives in
 * config/load.ts and config/sections/, defaults beside each section (gathered by
 * config/defaults.ts). Durations are stored in milliseconds and sizes in bytes. Every key added
 * here also needs its reload classification (live or restart) in SETTINGS, config/reload.ts.
 */
import type { AuthenticationConfig } from './sections/authentication.ts';
import type { DkimConfig } from './sections/dkim.ts';
import type { DnsConfig } from './sections/dns.ts';
import type { HttpConfig } from './sections/http.ts';
import type { ListenerConfig } from './sections/listeners.ts';
import type { LogConfig } from './sections/log.ts';
import type { PregreetConfig } from './sections/pregreet.ts';
import type { RedisConfig } from './sections/redis.ts';
import type { ReputationConfig } from './sections/reputation.ts';
import type { SpoolConfig } from './sections/spool.ts';
import type { SubmissionAuthConfig } from './sections/submission-auth.ts';
import type { TlsConfig } from './sections/tls.ts';
import type { UpstreamConfig } from './sections/upstream.ts';

export type { AuthenticationConfig, DmarcMode } from './sections/authentication.ts';
export type { DkimAlgorithm, DkimConfig, DkimSignKey } from './sections/dkim.ts';
export type { DnsConfig } from './sections/dns.ts';
export type { HttpConfig } from './sections/http.ts';
export type { BareNewlinePolicy, ListenerConfig, ListenerMode, ListenerTls } from './sections/listeners.ts';
export type { LogConfig, LogLevel } from './sections/log.ts';
export type { PregreetConfig } from './sections/pregreet.ts';
export type { RedisConfig } from './sections/redis.ts';
export type { ReputationConfig } from './sections/reputation.ts';
export type { SpoolConfig } from './sections/spool.ts';
export type {
    AuthLockoutConfig,
    CountPerPeriod,
    DovecotAuthAddress,
    SubmissionAuthConfig,
} from './sections/submission-auth.ts';
export type { TlsConfig } from './sections/tls.ts';
export type { UpstreamConfig } from './sections/upstream.ts';

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
    readonly log: LogConfig;
}
