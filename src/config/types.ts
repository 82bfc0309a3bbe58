/**
 * The validated, frozen configuration the rest of the program reads.
 * Declarations only: parsing and validation live in config/load.ts, defaults in config/defaults.ts.
 * Durations are stored in milliseconds and sizes in bytes.
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
    /** null: PROXY protocol off; otherwise the CIDRs allowed to send a PROXY v1 header. */
    readonly proxyProtocol: readonly string[] | null;
    readonly maxClients: number;
    readonly maxMessageSize: number;
    readonly bareNewline: BareNewlinePolicy;
    /** Idle time allowed between client commands. */
    readonly socketTimeoutMs: number;
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
    /** Folder for messages larger than `memoryLimit`; null means the OS temporary folder. */
    readonly dir: string | null;
    /** Bytes kept in memory per message before it is written to a spool file. */
    readonly memoryLimit: number;
}

export interface Config {
    /** Where the config came from (`null` for the embedded defaults). */
    readonly source: string | null;
    readonly hostname: string;
    readonly domains: readonly string[];
    readonly listeners: readonly ListenerConfig[];
    readonly tls: TlsConfig | null;
    readonly upstream: UpstreamConfig;
    readonly dns: DnsConfig;
    readonly redis: { readonly url: string } | null;
    readonly auth: { readonly users: string } | null;
    readonly rules: string;
    readonly http: HttpConfig | null;
    readonly spool: SpoolConfig;
    /** How long transactions in flight may take to finish after SIGTERM. */
    readonly shutdownTimeoutMs: number;
    readonly log: { readonly level: 'trace' | 'debug' | 'info' | 'warn' | 'error' };
}
