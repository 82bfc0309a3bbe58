/**
 * Finds, reads and validates the config file into the frozen Config the program runs with.
 * Every problem is collected in one pass and thrown together as a ConfigError with
 * `FILE:LINE:COL` positions. It must not start anything, open sockets or read rule files.
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { isScalar } from 'yaml';
import {
    DEFAULTS,
    defaultSpoolDir,
    DEFAULT_MAILDIR,
    PACKAGE_RULES_DIR,
    defaultAuthLockout,
    defaultAuthentication,
    defaultConfig,
    defaultListener,
    defaultMaxClientsPerNetwork,
    defaultUpstreamStarttls,
} from './defaults.ts';
import { ConfigError, ioReason, type Issue } from './issues.ts';
import { isIpv6, normalizeCidr } from '../net/ip.ts';
import { normalizeHost, normalizeHostname, parseDnsServer, parsePort } from './net.ts';
import { SourceReader, type Field } from './reader.ts';
import { reputationSection } from './reputation.ts';
import { parseDuration } from './units.ts';
import type {
    AuthLockoutConfig,
    AuthenticationConfig,
    BareNewlinePolicy,
    Config,
    CountPerPeriod,
    DkimAlgorithm,
    DkimConfig,
    DkimSignKey,
    DnsConfig,
    DovecotAuthAddress,
    HttpConfig,
    ListenerConfig,
    PregreetConfig,
    ListenerMode,
    ListenerTls,
    RedisConfig,
    SpoolConfig,
    SubmissionAuthConfig,
    TlsConfig,
    UpstreamConfig,
} from './types.ts';

export { ConfigError, formatIssue, type Issue } from './issues.ts';

export const CONFIG_ENV_VAR = 'MAILWARDEN_CONFIG';
export const DEFAULT_CONFIG_FILE = 'mailwarden.yaml';

/** The most worker processes `workers` may ask for. */
const MAX_WORKERS = 256;
/** Longest timer Node.js supports (about 24.8 days); longer values would fire at once. */
const MAX_TIMER_MS = 2_147_483_647;

const TOP_KEYS = [
    'hostname',
    'domains',
    'listeners',
    'relayDomains',
    'pregreet',
    'tls',
    'upstream',
    'dns',
    'redis',
    'auth',
    'rules',
    'softReject',
    'http',
    'spool',
    'dkim',
    'authentication',
    'reputation',
    'shutdownTimeout',
    'workers',
    'log',
] as const;
const LISTENER_KEYS = [
    'name',
    'host',
    'port',
    'mode',
    'tls',
    'proxyProtocol',
    'maxClients',
    'maxClientsPerNetwork',
    'maxMessageSize',
    'bareNewline',
    'socketTimeout',
    'maxRecipients',
    'preTransactionTimeout',
    'pregreetWait',
] as const;
/** Listener keys written at the top level by mistake: the unknown-key error points at `listeners[]`. */
const LISTENER_ONLY_KEYS: Readonly<Record<string, string>> = Object.fromEntries(
    LISTENER_KEYS.filter((k) => !['name', 'host', 'port', 'tls'].includes(k)).map((k) => [k, 'listeners[]']),
);
const UPSTREAM_KEYS = ['url', 'xclient', 'starttls', 'tlsVerify', 'connectTimeout', 'timeout', 'dataTimeout'] as const;
const SMTP_ONLY_KEYS = ['xclient', 'starttls', 'tlsVerify', 'connectTimeout', 'timeout', 'dataTimeout'] as const;
const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error'] as const;
const AUTHENTICATION_KEYS = [
    'timeout',
    'minRsaBits',
    'strict',
    'maxDnsQueries',
    'spf',
    'dkim',
    'dmarc',
    'arc',
] as const;
const DMARC_MODES = ['rfc9989', 'rfc7489'] as const;
const AUTH_KEYS = ['users', 'dovecot', 'sendAs', 'recipientDelimiter', 'lockout'] as const;
const LOCKOUT_KEYS = ['perIp', 'perLogin', 'perSession', 'exempt'] as const;
/** The longest period of a failure count (as rate limits: GCRA state must stay exact within 2^53). */
const MAX_LOCKOUT_PERIOD_MS = 366 * 24 * 3_600_000;
const DKIM_ALGORITHMS = ['rsa-sha256', 'ed25519-sha256'] as const;
/** RFC 6376 section 3.1: selector = sub-domain *("." sub-domain). */
const DKIM_SELECTOR_RE = /^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$/;
/** RFC 5322 section 3.6.8: printable ASCII except ":". */
const FIELD_NAME_RE = /^[\x21-\x39\x3b-\x7e]+$/;
const LISTENER_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const WILDCARDS = new Set(['0.0.0.0', '::']);
/** postscreen allows any greet_wait; more than a minute only keeps real MTAs waiting. */
const MAX_PREGREET_WAIT_MS = 60_000;
/** A pass is remembered at most a month (postscreen_greet_ttl is a day by default). */
const MAX_PREGREET_TTL_MS = 31 * 24 * 3_600_000;

/**
 * Which config file to use (SPEC "Config file lookup"): `-c FILE`, else `$MAILWARDEN_CONFIG`,
 * else `mailwarden.yaml` when it exists in `cwd`, else null (the embedded defaults).
 * The flag and variable are returned as written; a relative result is relative to `cwd`,
 * which should then also be given to loadConfig.
 */
export function resolveConfigPath(opts: {
    flag?: string | undefined;
    env: NodeJS.ProcessEnv;
    cwd: string;
}): string | null {
    if (opts.flag !== undefined && opts.flag !== '') return opts.flag;
    const fromEnv = opts.env[CONFIG_ENV_VAR];
    if (fromEnv !== undefined && fromEnv !== '') return fromEnv;
    return fs.existsSync(path.join(opts.cwd, DEFAULT_CONFIG_FILE)) ? DEFAULT_CONFIG_FILE : null;
}

export interface LoadOptions {
    /** Folder that a relative config path (and, without a config file, relative defaults) resolve against. */
    readonly cwd?: string;
}

/**
 * Loads and validates a config file, or returns the embedded defaults for `null`.
 * Returns a deep-frozen Config; throws ConfigError listing every problem found.
 * Issue positions name the file exactly as `configPath` was given.
 */
export function loadConfig(
    configPath: string | null,
    env: NodeJS.ProcessEnv = process.env,
    options: LoadOptions = {},
): Config {
    return loadConfigWithWarnings(configPath, env, options).config;
}

/**
 * As loadConfig, and also returns the warnings: settings that are valid but risky (for
 * example `upstream.xclient: false`), rendered like issues. `check` prints them and `serve`
 * logs them at start.
 */
export function loadConfigWithWarnings(
    configPath: string | null,
    env: NodeJS.ProcessEnv = process.env,
    options: LoadOptions = {},
): { config: Config; warnings: readonly Issue[] } {
    const cwd = options.cwd ?? process.cwd();
    if (configPath === null) return { config: deepFreeze(defaultConfig(cwd, null)), warnings: [] };

    const absolute = path.resolve(cwd, configPath);
    let text: string;
    try {
        text = fs.readFileSync(absolute, 'utf8');
    } catch (err) {
        throw new ConfigError([
            { file: configPath, line: 1, col: 1, message: `cannot read config file: ${ioReason(err)}` },
        ]);
    }
    const reader = new SourceReader(configPath, text);
    if (reader.failed) throw new ConfigError(reader.issues);
    reader.expandEnvironment(env);
    const config = new ConfigBuilder(reader, path.dirname(absolute), absolute).build();
    if (reader.failed) throw new ConfigError(reader.issues);
    return { config: deepFreeze(config), warnings: Object.freeze([...reader.warnings]) };
}

/** Freezes an object graph so that no part of the config can change after loading. */
export function deepFreeze<T>(value: T): T {
    if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
        Object.freeze(value);
        for (const v of Object.values(value)) deepFreeze(v);
    }
    return value;
}

interface Bound {
    readonly host: string;
    readonly port: number;
    readonly owner: string;
    readonly line: number;
    /** Where a clash with a later binding is reported (its port value). */
    readonly at: Field;
}

/** Validates the sections of one parsed file; issues go to the reader. */
class ConfigBuilder {
    private readonly r: SourceReader;
    private readonly baseDir: string;
    private readonly source: string;
    /** Addresses and ports taken so far, to report clashes. */
    private readonly bound: Bound[] = [];
    /** The upstream's `url` and `xclient` fields, for the checks that combine sections. */
    private upstreamUrlField: Field | null = null;
    private xclientField: Field | null = null;

    constructor(reader: SourceReader, baseDir: string, source: string) {
        this.r = reader;
        this.baseDir = baseDir;
        this.source = source;
    }

    build(): Config {
        const r = this.r;
        const defaults = defaultConfig(this.baseDir, this.source);
        const root = r.root();
        const top = r.isEmpty(root) ? new Map<string, Field>() : r.map(root, TOP_KEYS, LISTENER_ONLY_KEYS);
        if (top === null) return defaults;
        const get = (key: string): Field | undefined => (r.isEmpty(top.get(key)) ? undefined : top.get(key));

        const tlsField = get('tls');
        const tls = tlsField ? this.tls(tlsField) : null;
        const auth = get('auth');
        const authConfig = auth ? this.auth(auth) : null;
        const pregreetField = get('pregreet');
        const pregreet = pregreetField ? this.pregreet(pregreetField) : defaults.pregreet;
        const listenersField = get('listeners');
        const listeners = listenersField
            ? this.listeners(listenersField, tlsField !== undefined, auth !== undefined, pregreet.waitMs)
            : defaults.listeners.map((l) => ({
                  ...l,
                  tls: tlsField ? ('starttls' as const) : l.tls,
                  pregreetWaitMs: l.mode === 'mx' ? pregreet.waitMs : 0,
              }));
        const httpField = get('http');
        const http = httpField ? this.http(httpField) : defaults.http;
        if (!httpField && http) this.checkDefaultHttp(http);

        const hostnameField = get('hostname');
        const domainsField = get('domains');
        const relayDomainsField = get('relayDomains');
        const upstreamField = get('upstream');
        const dnsField = get('dns');
        const redisField = get('redis');
        const rulesField = get('rules');
        const softRejectField = get('softReject');
        const spoolField = get('spool');
        const dkimField = get('dkim');
        const authenticationField = get('authentication');
        const reputationField = get('reputation');
        const shutdownField = get('shutdownTimeout');
        const workersField = get('workers');
        const logField = get('log');
        const domains = (domainsField && this.domains(domainsField)) ?? defaults.domains;
        const relayDomains = (relayDomainsField && this.relayDomains(relayDomainsField, domains)) ?? [];
        const upstream = (upstreamField && this.upstream(upstreamField)) ?? defaults.upstream;
        this.checkRelayControl(listeners, domains, relayDomains, upstream);
        return {
            source: this.source,
            hostname: (hostnameField && this.hostname(hostnameField)) ?? defaults.hostname,
            domains,
            relayDomains,
            listeners,
            pregreet,
            tls,
            upstream,
            dns: dnsField ? this.dns(dnsField) : defaults.dns,
            redis: redisField ? this.redis(redisField) : null,
            auth: authConfig,
            rules: (rulesField && this.existingPath(rulesField, 'folder')) ?? PACKAGE_RULES_DIR,
            softReject: (softRejectField && r.boolean(softRejectField)) ?? false,
            http,
            spool: spoolField ? this.spool(spoolField) : defaults.spool,
            dkim: dkimField ? this.dkim(dkimField) : null,
            authentication: authenticationField ? this.authentication(authenticationField) : defaults.authentication,
            reputation: reputationField ? reputationSection(r, reputationField) : defaults.reputation,
            shutdownTimeoutMs:
                (shutdownField && r.duration(shutdownField, 0, MAX_TIMER_MS)) ?? defaults.shutdownTimeoutMs,
            workers: (workersField && this.workers(workersField, redisField !== undefined)) ?? defaults.workers,
            log: { level: (logField && this.logLevel(logField)) ?? defaults.log.level },
        };
    }

    /**
     * `workers`: a number of processes, or `auto`. More than one needs `redis:`: the in-memory
     * store counts per process, so each limit would let through that many times as much.
     */
    private workers(field: Field, hasRedis: boolean): number | 'auto' | null {
        if (this.r.isWord(field, 'auto')) return 'auto';
        const n = this.r.integer(field, 1, MAX_WORKERS, 'a number of processes, or auto');
        if (n !== null && n > 1 && !hasRedis) {
            this.r.fail(
                field,
                `${n} processes need redis: rate limits, greylisting and login failures kept in memory are counted per process, so every limit would let ${n} times as much through; configure redis: or write workers: 1`,
            );
            return null;
        }
        return n;
    }

    /** Entries of a section map, with `key:` (no value) treated as absent. */
    private section(field: Field, keys: readonly string[]): Map<string, Field> {
        const entries = this.r.map(field, keys) ?? new Map<string, Field>();
        for (const [k, f] of entries) if (this.r.isEmpty(f)) entries.delete(k);
        return entries;
    }

    private hostname(field: Field): string | null {
        const text = this.r.string(field, 'a host name');
        if (text === null) return null;
        const name = normalizeHostname(text);
        if (name === null) this.r.fail(field, `"${text}" is not a valid host name`);
        return name;
    }

    private domains(field: Field): string[] | null {
        const items = this.r.list(field, 'domain names');
        if (items === null) return null;
        const seen = new Set<string>();
        const out: string[] = [];
        for (const item of items) {
            const text = this.r.string(item, 'a domain name');
            if (text === null) continue;
            const name = normalizeHostname(text);
            if (name === null) {
                this.r.fail(item, `"${text}" is not a valid domain name`);
            } else if (seen.has(name)) {
                this.r.fail(item, `"${text}" is listed twice`);
            } else {
                seen.add(name);
                out.push(name);
            }
        }
        return out;
    }

    /**
     * `relayDomains`: `example.net` (that domain) or `.example.net` (every name below it, as
     * Postfix's relay_domains reads a leading dot). Stored lower-case, A-labels, dot kept.
     */
    private relayDomains(field: Field, domains: readonly string[]): string[] | null {
        const items = this.r.list(field, 'domain names (.example.net for every subdomain)');
        if (items === null) return null;
        const seen = new Set<string>();
        const out: string[] = [];
        for (const item of items) {
            const text = this.r.string(item, 'a domain name');
            if (text === null) continue;
            const dot = text.startsWith('.');
            const name = normalizeHostname(dot ? text.slice(1) : text);
            const entry = name === null ? null : `${dot ? '.' : ''}${name}`;
            if (entry === null) {
                this.r.fail(
                    item,
                    `"${text}" is not a domain name (write example.net, or .example.net for its subdomains)`,
                );
            } else if (seen.has(entry)) {
                this.r.fail(item, `"${text}" is listed twice`);
            } else if (!dot && domains.includes(entry)) {
                this.r.fail(item, `"${text}" is already one of domains`);
            } else {
                seen.add(entry);
                out.push(entry);
            }
        }
        return out;
    }

    /**
     * An mx listener in front of an SMTP upstream must know which recipients are ours:
     * without `domains` (or `relayDomains`) it would have to refuse every recipient, or relay
     * for anyone. And `xclient: false` hides the real client from the upstream.
     */
    private checkRelayControl(
        listeners: readonly ListenerConfig[],
        domains: readonly string[],
        relayDomains: readonly string[],
        upstream: UpstreamConfig,
    ): void {
        if (upstream.kind === 'maildir') return;
        const mx = listeners.find((l) => l.mode === 'mx');
        if (mx && domains.length === 0 && relayDomains.length === 0 && this.upstreamUrlField) {
            this.r.fail(
                this.upstreamUrlField,
                `the mx listener "${mx.name}" forwards to an SMTP upstream, so mailwarden must know which recipients to accept: list your domains in "domains" (and the ones you relay for in "relayDomains")`,
            );
        }
        if (!upstream.xclient && this.xclientField) {
            this.r.warn(
                this.xclientField,
                "false: the upstream sees mailwarden (for example 127.0.0.1) as the client, not the real one, so its client restrictions judge mailwarden and permit_mynetworks would let every client relay through it. mailwarden refuses relaying on mx listeners itself, but turn xclient on (smtpd_authorized_xclient_hosts) or keep mailwarden out of the upstream's mynetworks",
            );
        }
    }

    private tls(field: Field): TlsConfig | null {
        const r = this.r;
        const entries = this.section(field, ['cert', 'key']);
        if (!r.isMap(field)) return null;
        const certField = entries.get('cert');
        const keyField = entries.get('key');
        if (!certField) r.fail(field, 'missing "cert" (the certificate chain file, PEM)');
        if (!keyField) r.fail(field, 'missing "key" (the private key file, PEM)');
        const cert = certField ? this.pemFile(certField) : null;
        const key = keyField ? this.pemFile(keyField) : null;
        if (!cert || !key || !certField || !keyField) return null;
        let x509: X509Certificate;
        try {
            x509 = new X509Certificate(cert.content);
        } catch {
            r.fail(certField, `${cert.path} does not hold a readable certificate`);
            return null;
        }
        let privateKey;
        try {
            privateKey = createPrivateKey(key.content);
        } catch {
            r.fail(keyField, `${key.path} does not hold a readable private key (encrypted keys are not supported)`);
            return null;
        }
        if (!x509.checkPrivateKey(privateKey)) {
            r.fail(keyField, `${key.path} is not the private key of the certificate in ${cert.path}`);
            return null;
        }
        return { cert: cert.path, key: key.path };
    }

    /** A readable file that looks like PEM. */
    private pemFile(field: Field): { path: string; content: string } | null {
        const file = this.existingPath(field, 'file');
        if (file === null) return null;
        let content: string;
        try {
            content = fs.readFileSync(file, 'utf8');
        } catch (err) {
            this.r.fail(field, `cannot read ${file}: ${ioReason(err)}`);
            return null;
        }
        if (!content.includes('-----BEGIN')) {
            this.r.fail(field, `${file} is not a PEM file (no "-----BEGIN" line)`);
            return null;
        }
        return { path: file, content };
    }

    /** A path (relative to the config file's folder) that must exist as a file or folder. */
    private existingPath(field: Field, kind: 'file' | 'folder'): string | null {
        const text = this.r.string(field, `a ${kind} path`);
        if (text === null) return null;
        const resolved = path.resolve(this.baseDir, text);
        let stat: fs.Stats;
        try {
            stat = fs.statSync(resolved);
        } catch (err) {
            const code = (err as NodeJS.ErrnoException).code;
            this.r.fail(
                field,
                code === 'ENOENT' ? `no such ${kind}: ${resolved}` : `cannot use ${resolved}: ${ioReason(err)}`,
            );
            return null;
        }
        if (kind === 'file' && !stat.isFile()) {
            this.r.fail(field, `${resolved} is not a file`);
            return null;
        }
        if (kind === 'folder' && !stat.isDirectory()) {
            this.r.fail(field, `${resolved} is not a folder`);
            return null;
        }
        try {
            fs.accessSync(resolved, fs.constants.R_OK | (kind === 'folder' ? fs.constants.X_OK : 0));
        } catch (err) {
            this.r.fail(field, `cannot read ${resolved}: ${ioReason(err)}`);
            return null;
        }
        return resolved;
    }

    /** `auth:` — exactly one credential backend: the users file or Dovecot. */
    private auth(field: Field): SubmissionAuthConfig | null {
        const r = this.r;
        const entries = this.section(field, AUTH_KEYS);
        if (!r.isMap(field)) return null;
        const users = entries.get('users');
        const dovecot = entries.get('dovecot');
        const sendAs = entries.get('sendAs');
        const delimiterField = entries.get('recipientDelimiter');
        const recipientDelimiter =
            (delimiterField && this.recipientDelimiter(delimiterField)) ?? DEFAULTS.recipientDelimiter;
        const lockoutField = entries.get('lockout');
        const lockout = lockoutField ? this.lockout(lockoutField) : defaultAuthLockout();
        if (users && dovecot) {
            r.report(
                dovecot.keyOffset,
                'auth.dovecot: write either auth.users (the users file) or auth.dovecot (Dovecot checks passwords), not both',
            );
            return null;
        }
        if (users) {
            if (sendAs) {
                r.report(
                    sendAs.keyOffset,
                    "auth.sendAs: applies only with auth.dovecot; with auth.users each user's sendAs is in the users file",
                );
            }
            const file = this.existingPath(users, 'file');
            return file === null ? null : { users: file, dovecot: null, sendAs: null, recipientDelimiter, lockout };
        }
        if (!dovecot) {
            r.fail(
                field,
                'missing "users" (the submission users file) or "dovecot" (the address of Dovecot\'s auth service)',
            );
            return null;
        }
        const address = this.dovecotAddress(dovecot);
        const sendAsFile = sendAs ? this.existingPath(sendAs, 'file') : null;
        if (address === null || (sendAs && sendAsFile === null)) return null;
        return { users: null, dovecot: address, sendAs: sendAsFile, recipientDelimiter, lockout };
    }

    /** `auth.lockout:` — failed-login limits per client IP, per login and per connection; exempt networks. */
    private lockout(field: Field): AuthLockoutConfig {
        const r = this.r;
        const d = defaultAuthLockout();
        const entries = this.section(field, LOCKOUT_KEYS);
        if (!r.isMap(field)) return d;
        const perIp = entries.get('perIp');
        const perLogin = entries.get('perLogin');
        const perSession = entries.get('perSession');
        const exempt = entries.get('exempt');
        return {
            perIp: perIp ? this.failureRate(perIp) : d.perIp,
            perLogin: perLogin ? this.failureRate(perLogin) : d.perLogin,
            perSession: (perSession && r.integer(perSession, 1, 100, 'a number of failed logins')) ?? d.perSession,
            exempt: exempt ? this.cidrList(exempt) : d.exempt,
        };
    }

    /** `COUNT/PERIOD` (`10/15m`), or `false` for no limit. */
    private failureRate(field: Field): CountPerPeriod | null {
        const r = this.r;
        const form = 'write a count per period such as 10/15m or 20/1h, or false for no limit';
        if (r.isBoolean(field)) {
            if (r.boolean(field) === false) return null;
            r.fail(field, `true is not a rate; ${form}`);
            return null;
        }
        const text = r.string(field, `a count per period such as 10/15m`);
        if (text === null) return null;
        const m = /^(\d+)\s*\/\s*(\S+)$/.exec(text);
        if (!m) {
            r.fail(field, `"${text}" is not a rate; ${form}`);
            return null;
        }
        const limit = Number(m[1]);
        const unit = m[2]!;
        const periodMs = /^(s|m|h|d)$/.test(unit) ? parseDuration(`1${unit}`) : parseDuration(unit);
        if (!Number.isSafeInteger(limit) || limit < 1 || limit > 100_000) {
            r.fail(field, `"${text}": the count must be a whole number from 1 to 100000`);
            return null;
        }
        if (periodMs === null || periodMs < 1_000 || periodMs > MAX_LOCKOUT_PERIOD_MS) {
            r.fail(field, `"${text}": the period must be a duration from 1s to 366d, such as 15m or 1h`);
            return null;
        }
        return { limit, periodMs };
    }

    /** A list of addresses or CIDRs, normalised (`192.0.2.7` → `192.0.2.7/32`). */
    private cidrList(field: Field): string[] {
        const r = this.r;
        const items = r.list(field, 'addresses or CIDRs such as 192.0.2.0/24') ?? [];
        const out: string[] = [];
        for (const item of items) {
            const text = r.string(item, 'an IP address or CIDR');
            if (text === null) continue;
            const parsed = normalizeCidr(text);
            if ('error' in parsed) r.fail(item, parsed.error);
            else if (out.includes(parsed.cidr)) r.fail(item, `"${text}" is listed twice`);
            else out.push(parsed.cidr);
        }
        return out;
    }

    /** `unix:PATH` (or an absolute path), or `[inet:]HOST:PORT`. */
    private dovecotAddress(field: Field): DovecotAuthAddress | null {
        const r = this.r;
        const text = r.string(field, "the address of Dovecot's auth service");
        if (text === null) return null;
        const form =
            'write unix:PATH (e.g. unix:/run/dovecot/auth-client) or HOST:PORT (an inet_listener of service auth)';
        if (text.startsWith('unix:') || text.startsWith('/')) {
            const socket = text.startsWith('unix:') ? text.slice('unix:'.length).trim() : text;
            if (socket === '') {
                r.fail(field, `"${text}" names no socket; ${form}`);
                return null;
            }
            return { kind: 'unix', path: path.resolve(this.baseDir, socket) };
        }
        const rest = text.startsWith('inet:') ? text.slice('inet:'.length) : text;
        const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(rest) ?? /^([^:[\]]+):(\d{1,5})$/.exec(rest);
        const host = m?.[1] === undefined ? null : normalizeHost(m[1]);
        const port = Number(m?.[2]);
        if (host === null || !(port >= 1 && port <= 65535)) {
            r.fail(field, `"${text}" is not an address of Dovecot's auth service; ${form}`);
            return null;
        }
        return { kind: 'tcp', host, port };
    }

    /** Subaddress delimiter characters; `false` or "" for none. */
    private recipientDelimiter(field: Field): string | null {
        const r = this.r;
        if (r.isBoolean(field)) {
            if (r.boolean(field) === false) return '';
            r.fail(field, 'expected delimiter characters such as "+", or false for none');
            return null;
        }
        const node = field.node;
        const value = node !== null && isScalar(node) && typeof node.value === 'string' ? node.value : null;
        if (value === null) {
            r.fail(field, `expected delimiter characters such as "+", or false for none; got ${r.describe(field)}`);
            return null;
        }
        if (!/^[!#$%&'*+\-/=?^_`{|}~.]{0,8}$/.test(value)) {
            r.fail(
                field,
                `"${value}": use punctuation such as "+" or "-" (not letters, digits, "@", quotes or spaces)`,
            );
            return null;
        }
        return value;
    }

    /** `dkim:` — outbound signing keys, each checked to exist and parse. */
    private dkim(field: Field): DkimConfig | null {
        const r = this.r;
        const entries = this.section(field, ['sign', 'headers']);
        if (!r.isMap(field)) return null;
        const signField = entries.get('sign');
        if (!signField) {
            r.fail(field, 'missing "sign" (the domains to sign for: a list of { domain, selector, key })');
            return null;
        }
        const items = r.list(signField, 'signing keys ({ domain, selector, key })') ?? [];
        if (r.isList(signField) && items.length === 0)
            r.fail(signField, 'an empty list; leave dkim out to sign nothing');
        const sign: DkimSignKey[] = [];
        const domains = new Map<string, number>();
        for (const item of items) {
            const e = this.section(item, ['domain', 'selector', 'key', 'algorithm']);
            if (!r.isMap(item)) continue;
            const missing = (['domain', 'selector', 'key'] as const).filter((k) => !e.has(k)).map((k) => `"${k}"`);
            if (missing.length > 0) r.fail(item, `missing ${missing.join(' and ')}`);
            const domainField = e.get('domain');
            const selectorField = e.get('selector');
            const keyField = e.get('key');
            const algorithmField = e.get('algorithm');
            let domain: string | null = null;
            if (domainField) {
                domain = this.hostname(domainField);
                const earlier = domain === null ? undefined : domains.get(domain);
                if (earlier !== undefined) {
                    r.fail(domainField, `"${domain}" has a signing key already (line ${earlier})`);
                    domain = null;
                } else if (domain !== null) {
                    domains.set(domain, this.lineOf(domainField));
                }
            }
            let selector: string | null = null;
            if (selectorField) {
                selector = r.string(selectorField, 'a selector');
                if (selector !== null && !DKIM_SELECTOR_RE.test(selector)) {
                    r.fail(
                        selectorField,
                        `"${selector}" is not a DKIM selector (letters, digits, "-", labels joined by ".")`,
                    );
                    selector = null;
                }
            }
            const algorithm = algorithmField ? r.oneOf(algorithmField, DKIM_ALGORITHMS) : null;
            const key = keyField ? this.dkimKey(keyField, algorithm, algorithmField) : null;
            if (domain !== null && selector !== null && key !== null) {
                sign.push({ domain, selector, keyFile: key.file, algorithm: key.algorithm });
            }
        }
        const headersField = entries.get('headers');
        return { sign, headers: headersField ? this.dkimHeaders(headersField) : null };
    }

    /** A readable PEM private key usable for DKIM (RSA of 1024 bits or more, or Ed25519). */
    private dkimKey(
        field: Field,
        wanted: DkimAlgorithm | null,
        algorithmField: Field | undefined,
    ): { file: string; algorithm: DkimAlgorithm } | null {
        const r = this.r;
        const pem = this.pemFile(field);
        if (pem === null) return null;
        let key;
        try {
            key = createPrivateKey(pem.content);
        } catch {
            r.fail(field, `${pem.path} does not hold a readable private key (encrypted keys are not supported)`);
            return null;
        }
        const type = key.asymmetricKeyType;
        if (type !== 'rsa' && type !== 'ed25519') {
            r.fail(field, `${pem.path} holds a key of type ${type ?? 'unknown'}; DKIM signs with RSA or Ed25519 keys`);
            return null;
        }
        const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
        if (type === 'rsa' && bits < 1024) {
            // RFC 8301 section 3.2: signers must use RSA keys of at least 1024 bits
            r.fail(field, `${pem.path} holds a ${bits}-bit RSA key; DKIM needs at least 1024 bits (2048 recommended)`);
            return null;
        }
        const algorithm: DkimAlgorithm = type === 'rsa' ? 'rsa-sha256' : 'ed25519-sha256';
        if (wanted !== null && wanted !== algorithm && algorithmField) {
            r.fail(
                algorithmField,
                `"${wanted}" does not fit the ${type === 'rsa' ? 'RSA' : 'Ed25519'} key in ${pem.path}`,
            );
            return null;
        }
        return { file: pem.path, algorithm };
    }

    /** Header field names to sign; From must be among them (RFC 6376 section 5.4). */
    private dkimHeaders(field: Field): string[] | null {
        const r = this.r;
        const items = r.list(field, 'header field names');
        if (items === null) return null;
        const out: string[] = [];
        const seen = new Set<string>();
        for (const item of items) {
            const name = r.string(item, 'a header field name');
            if (name === null) continue;
            if (!FIELD_NAME_RE.test(name)) r.fail(item, `"${name}" is not a header field name`);
            else if (seen.has(name.toLowerCase())) r.fail(item, `"${name}" is listed twice`);
            else {
                seen.add(name.toLowerCase());
                out.push(name);
            }
        }
        if (!seen.has('from'))
            r.fail(field, 'must include From (RFC 6376 section 5.4: the From field is always signed)');
        return out;
    }

    /** `pregreet: { wait, ttl }`. */
    private pregreet(field: Field): PregreetConfig {
        const entries = this.section(field, ['wait', 'ttl']);
        const waitField = entries.get('wait');
        const ttlField = entries.get('ttl');
        return {
            waitMs: (waitField && this.r.duration(waitField, 0, MAX_PREGREET_WAIT_MS)) ?? DEFAULTS.pregreet.waitMs,
            ttlMs: (ttlField && this.r.duration(ttlField, 60_000, MAX_PREGREET_TTL_MS)) ?? DEFAULTS.pregreet.ttlMs,
        };
    }

    private listeners(field: Field, haveTls: boolean, haveAuth: boolean, mxPregreetWaitMs: number): ListenerConfig[] {
        const r = this.r;
        const items = r.list(field, 'listeners');
        if (items === null) return [];
        if (items.length === 0) r.fail(field, 'at least one listener is needed');
        const out: ListenerConfig[] = [];
        const names = new Map<string, number>();
        for (const item of items) {
            const entries = this.section(item, LISTENER_KEYS);
            if (!r.isMap(item)) continue;
            const nameField = entries.get('name');
            const hostField = entries.get('host');
            const portField = entries.get('port');
            const missing = (['name', 'host', 'port'] as const).filter((k) => !entries.has(k)).map((k) => `"${k}"`);
            if (missing.length > 0) r.fail(item, `missing ${missing.join(' and ')}`);
            const name = nameField ? this.listenerName(nameField) : null;
            if (name !== null && nameField) {
                const earlier = names.get(name);
                if (earlier !== undefined)
                    r.fail(nameField, `listener name "${name}" is already used (line ${earlier})`);
                else names.set(name, this.lineOf(nameField));
            }
            const host = hostField ? this.host(hostField) : null;
            const port = portField ? r.integer(portField, 0, 65535, 'a port number') : null;
            const modeField = entries.get('mode');
            const mode: ListenerMode = (modeField && r.oneOf(modeField, ['mx', 'submission'] as const)) ?? 'mx';
            const base = defaultListener(name ?? '', host ?? '', port ?? 0, mode, haveTls, mxPregreetWaitMs);

            const tlsField = entries.get('tls');
            let tls: ListenerTls = base.tls;
            if (tlsField) {
                tls = r.oneOf(tlsField, ['starttls', 'implicit', 'none'] as const) ?? tls;
                if (tls !== 'none' && !haveTls) {
                    r.fail(tlsField, `"${tls}" needs the top-level tls section (cert and key)`);
                }
            }
            if (mode === 'submission' && !haveAuth) {
                r.fail(modeField ?? item, 'a submission listener needs the auth section (auth.users or auth.dovecot)');
            }
            if (mode === 'submission' && tlsField && tls === 'none') {
                // RFC 8314 section 3: passwords only over TLS; a listener without TLS could never log anyone in
                r.fail(
                    tlsField,
                    'a submission listener needs TLS (starttls or implicit): passwords are never accepted in clear text',
                );
            } else if (mode === 'submission' && !tlsField && !haveTls) {
                r.fail(
                    modeField ?? item,
                    'a submission listener needs the top-level tls section (cert and key): passwords are never accepted in clear text',
                );
            }
            const ppField = entries.get('proxyProtocol');
            const maxClientsField = entries.get('maxClients');
            const sizeField = entries.get('maxMessageSize');
            const bareField = entries.get('bareNewline');
            const timeoutField = entries.get('socketTimeout');
            const maxRecipientsField = entries.get('maxRecipients');
            const perNetworkField = entries.get('maxClientsPerNetwork');
            const preTransactionField = entries.get('preTransactionTimeout');
            const pregreetWaitField = entries.get('pregreetWait');
            const maxClients = (maxClientsField && r.integer(maxClientsField, 1, Infinity)) ?? base.maxClients;
            const perNetwork = perNetworkField ? r.integer(perNetworkField, 1, Infinity) : null;
            if (perNetworkField && perNetwork !== null && perNetwork > maxClients) {
                r.fail(
                    perNetworkField,
                    `must not be more than maxClients (${maxClients}); equal to it lets one network take every connection`,
                );
            }
            const listener: ListenerConfig = {
                ...base,
                tls,
                proxyProtocol: ppField ? this.proxyProtocol(ppField) : null,
                maxClients,
                maxClientsPerNetwork: perNetwork ?? defaultMaxClientsPerNetwork(maxClients),
                maxMessageSize: (sizeField && r.size(sizeField, 1)) ?? base.maxMessageSize,
                bareNewline:
                    (bareField && r.oneOf<BareNewlinePolicy>(bareField, ['reject', 'normalize'])) ?? base.bareNewline,
                socketTimeoutMs: (timeoutField && r.duration(timeoutField, 1000, MAX_TIMER_MS)) ?? base.socketTimeoutMs,
                maxRecipients:
                    (maxRecipientsField && r.integer(maxRecipientsField, 1, 100_000, 'a number of recipients')) ??
                    base.maxRecipients,
                preTransactionTimeoutMs:
                    (preTransactionField && r.duration(preTransactionField, 1000, MAX_TIMER_MS)) ??
                    base.preTransactionTimeoutMs,
                pregreetWaitMs:
                    (pregreetWaitField && this.r.duration(pregreetWaitField, 0, MAX_PREGREET_WAIT_MS)) ??
                    base.pregreetWaitMs,
            };
            out.push(listener);
            if (host !== null && port !== null && port !== 0 && portField) {
                this.checkBinding({
                    host,
                    port,
                    owner: `listener "${name ?? '?'}"`,
                    line: this.lineOf(item),
                    at: portField,
                });
            }
        }
        return out;
    }

    private listenerName(field: Field): string | null {
        const v = this.r.string(field, 'a listener name');
        if (v !== null && !LISTENER_NAME_RE.test(v)) {
            this.r.fail(field, `"${v}" is not a usable name (letters, digits, "-", "_" and "."; up to 64)`);
            return null;
        }
        return v;
    }

    private host(field: Field): string | null {
        const text = this.r.string(field, 'an IP address or host name');
        if (text === null) return null;
        const host = normalizeHost(text);
        if (host === null) {
            const hint = /^\[.*\]$/.test(text) ? ' (write IPv6 addresses without brackets)' : '';
            this.r.fail(field, `"${text}" is not an IP address or host name${hint}`);
        }
        return host;
    }

    private lineOf(field: Field): number {
        const before = this.r.text.slice(0, field.offset);
        return before.split('\n').length;
    }

    /** Reports a second use of an address and port (wildcards overlap with every address of the port). */
    private checkBinding(b: Bound): void {
        const clash = this.bound.find(
            (o) =>
                o.port === b.port &&
                (o.host === b.host ||
                    o.host === '::' ||
                    b.host === '::' ||
                    (o.host === '0.0.0.0' && !isIpv6(b.host)) ||
                    (b.host === '0.0.0.0' && !isIpv6(o.host))),
        );
        if (clash) {
            const addr = (h: string): string => (isIpv6(h) ? `[${h}]` : h);
            const same = clash.host === b.host;
            const what = same
                ? `${addr(b.host)}:${b.port}`
                : `${addr(b.host)}:${b.port} overlaps ${addr(clash.host)}:${clash.port}, which`;
            this.r.fail(b.at, `${what} is already used by ${clash.owner} (line ${clash.line})`);
        }
        this.bound.push(b);
    }

    /** A listener on the address HTTP takes by default. */
    private checkDefaultHttp(http: HttpConfig): void {
        for (const b of this.bound) {
            if (b.port === http.port && (b.host === http.host || WILDCARDS.has(b.host))) {
                this.r.fail(
                    b.at,
                    `${b.host}:${b.port} is also where HTTP (metrics, health) listens by default; move one of them (http: { port: … })`,
                );
            }
        }
    }

    private proxyProtocol(field: Field): readonly string[] | null {
        const r = this.r;
        if (!r.isList(field)) {
            if (!r.isBoolean(field)) {
                r.fail(field, `expected true, false or a list of trusted addresses or CIDRs; got ${r.describe(field)}`);
                return null;
            }
            return r.boolean(field) ? ['0.0.0.0/0', '::/0'] : null;
        }
        const items = r.list(field, 'trusted addresses or CIDRs, or true or false');
        if (items === null) return null;
        if (items.length === 0) r.fail(field, 'an empty list lets no client send a PROXY header; write false instead');
        const out: string[] = [];
        for (const item of items) {
            const text = r.string(item, 'an IP address or CIDR');
            if (text === null) continue;
            const parsed = normalizeCidr(text);
            if ('error' in parsed) r.fail(item, parsed.error);
            else out.push(parsed.cidr);
        }
        return out;
    }

    private upstream(field: Field): UpstreamConfig | null {
        const r = this.r;
        const entries = this.section(field, UPSTREAM_KEYS);
        if (!r.isMap(field)) return null;
        const urlField = entries.get('url');
        if (!urlField) {
            r.fail(field, 'missing "url" (smtp://HOST[:PORT], smtps://HOST[:PORT] or maildir:PATH)');
            return null;
        }
        this.upstreamUrlField = urlField;
        this.xclientField = entries.get('xclient') ?? null;
        const url = r.string(urlField, 'a URL');
        if (url === null) return null;
        const accepted = 'write smtp://HOST[:PORT], smtps://HOST[:PORT] or maildir:PATH';
        const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(url)?.[1]?.toLowerCase();
        if (scheme === 'maildir') {
            const dir = url.slice('maildir:'.length);
            if (dir.trim() === '') {
                r.fail(urlField, `"${url}" names no folder; write maildir:PATH, e.g. maildir:${DEFAULT_MAILDIR}`);
                return null;
            }
            for (const key of SMTP_ONLY_KEYS) {
                const f = entries.get(key);
                if (f) r.report(f.keyOffset, `upstream.${key}: applies only to smtp:// and smtps:// upstreams`);
            }
            return { kind: 'maildir', url, path: path.resolve(this.baseDir, dir) };
        }
        if (scheme !== 'smtp' && scheme !== 'smtps') {
            r.fail(urlField, `unsupported upstream "${url}": ${accepted}`);
            return null;
        }
        const target = this.smtpTarget(urlField, url, scheme);
        const starttlsField = entries.get('starttls');
        let starttls: 'opportunistic' | 'required' | 'off' = target ? defaultUpstreamStarttls(target.host) : 'off';
        if (starttlsField) {
            if (scheme === 'smtps') {
                r.report(
                    starttlsField.keyOffset,
                    'upstream.starttls: does not apply to smtps:// (TLS from the first byte)',
                );
            } else if (r.isBoolean(starttlsField) && r.boolean(starttlsField) === false) {
                starttls = 'off';
            } else {
                starttls = r.oneOf(starttlsField, ['opportunistic', 'required', 'off'] as const) ?? starttls;
            }
        }
        const d = DEFAULTS.upstream;
        const opt = <T>(key: string, read: (f: Field) => T | null, fallback: T): T => {
            const f = entries.get(key);
            return (f && read(f)) ?? fallback;
        };
        const xclient = opt('xclient', (f) => r.boolean(f), d.xclient);
        const tlsVerify = opt('tlsVerify', (f) => r.boolean(f), d.tlsVerify);
        const connectTimeoutMs = opt('connectTimeout', (f) => r.duration(f, 1, MAX_TIMER_MS), d.connectTimeoutMs);
        const commandTimeoutMs = opt('timeout', (f) => r.duration(f, 1, MAX_TIMER_MS), d.commandTimeoutMs);
        const dataTimeoutMs = opt('dataTimeout', (f) => r.duration(f, 1, MAX_TIMER_MS), d.dataTimeoutMs);
        if (target === null) return null;
        return {
            kind: scheme,
            url,
            host: target.host,
            port: target.port,
            xclient,
            starttls,
            tlsVerify,
            connectTimeoutMs,
            commandTimeoutMs,
            dataTimeoutMs,
        };
    }

    private smtpTarget(field: Field, url: string, scheme: 'smtp' | 'smtps'): { host: string; port: number } | null {
        const form = `write ${scheme}://HOST or ${scheme}://HOST:PORT`;
        let parsed: URL;
        try {
            parsed = new URL(url);
        } catch {
            const bad = /:(\d+)\/?$/.test(url) ? 'has a bad port (1 to 65535)' : 'is not a valid URL';
            this.r.fail(field, `"${url}" ${bad}; ${form}`);
            return null;
        }
        const extra = parsed.username || parsed.password || (parsed.pathname !== '' && parsed.pathname !== '/');
        if (extra || parsed.search || parsed.hash) {
            this.r.fail(field, `"${url}" has parts an SMTP upstream cannot use (user, path or query); ${form}`);
            return null;
        }
        const rawHost = parsed.hostname.replace(/^\[(.*)\]$/, '$1');
        const host = rawHost === '' ? null : normalizeHost(rawHost);
        if (host === null) {
            this.r.fail(field, `"${url}" has no valid host; ${form}`);
            return null;
        }
        const defaultPort = scheme === 'smtp' ? DEFAULTS.upstream.smtpPort : DEFAULTS.upstream.smtpsPort;
        const port = parsed.port === '' ? defaultPort : Number(parsed.port);
        if (port === 0) {
            this.r.fail(field, `"${url}" has a bad port (1 to 65535); ${form}`);
            return null;
        }
        return { host, port };
    }

    private dns(field: Field): DnsConfig {
        const r = this.r;
        const entries = this.section(field, ['servers', 'timeout']);
        const serversField = entries.get('servers');
        let servers: string[] | null = null;
        if (serversField) {
            const items = r.list(serversField, 'DNS server addresses');
            if (items?.length === 0)
                r.fail(serversField, 'an empty list; leave "servers" out to use the system resolvers');
            servers = [];
            for (const item of items ?? []) {
                const text = r.string(item, 'a DNS server address');
                if (text === null) continue;
                const parsed = parseDnsServer(text);
                if ('error' in parsed) r.fail(item, parsed.error);
                else servers.push(parsed.server);
            }
        }
        const timeoutField = entries.get('timeout');
        return {
            servers,
            timeoutMs: (timeoutField && r.duration(timeoutField, 1, MAX_TIMER_MS)) ?? DEFAULTS.dns.timeoutMs,
        };
    }

    /** The `redis:` section: one server (`url`), a Cluster (`cluster`) or Sentinel (`sentinels`, `name`). */
    private redis(field: Field): RedisConfig | null {
        const r = this.r;
        const entries = this.section(field, [
            'url',
            'cluster',
            'sentinels',
            'name',
            'username',
            'password',
            'commandTimeout',
            'connectTimeout',
        ]);
        if (!r.isMap(field)) return null;
        const urlField = entries.get('url');
        const clusterField = entries.get('cluster');
        const sentinelsField = entries.get('sentinels');
        const nameField = entries.get('name');
        const forms = [urlField, clusterField, sentinelsField].filter((f) => f !== undefined);
        if (forms.length === 0) {
            r.fail(
                field,
                'missing "url" (redis://HOST[:PORT][/DB] or rediss://…), "cluster" (seed nodes HOST:PORT) or "sentinels" (HOST:PORT, with "name")',
            );
            return null;
        }
        if (forms.length > 1) {
            r.fail(forms[1]!, 'give exactly one of url, cluster and sentinels');
            return null;
        }
        const d = DEFAULTS.redis;
        const commandField = entries.get('commandTimeout');
        const connectField = entries.get('connectTimeout');
        const usernameField = entries.get('username');
        const passwordField = entries.get('password');
        const username = usernameField ? r.string(usernameField, 'a user name') : null;
        const password = passwordField
            ? r.string(passwordField, 'a password (write ${VAR} to keep it out of the file)')
            : null;
        const common = {
            ...(username !== null ? { username } : {}),
            ...(password !== null ? { password } : {}),
            commandTimeoutMs: (commandField && r.duration(commandField, 1, 60_000)) ?? d.commandTimeoutMs,
            connectTimeoutMs: (connectField && r.duration(connectField, 1, 60_000)) ?? d.connectTimeoutMs,
        };
        if (nameField && !sentinelsField)
            r.fail(nameField, 'name is the master name the sentinels know; it goes with sentinels');
        if (urlField) {
            for (const f of [usernameField, passwordField]) {
                if (f) r.fail(f, 'a Redis URL carries its own user and password (redis://USER:PASSWORD@HOST)');
            }
            const url = this.redisUrl(urlField);
            return url === null ? null : { url, ...common };
        }
        if (clusterField) {
            const nodes = this.hostPorts(clusterField, 'Redis Cluster seed nodes');
            return nodes === null
                ? null
                : {
                      cluster: nodes.map((n) => (isIpv6(n.host) ? `[${n.host}]:${n.port}` : `${n.host}:${n.port}`)),
                      ...common,
                  };
        }
        const sentinels = this.hostPorts(sentinelsField!, 'sentinel addresses');
        if (!nameField)
            r.fail(
                sentinelsField!,
                'missing "name" beside sentinels (the master name in the sentinels\' configuration, e.g. mymaster)',
            );
        const name = nameField ? r.string(nameField, 'a master name') : null;
        if (sentinels === null || name === null) return null;
        return { sentinels, name, ...common };
    }

    private redisUrl(urlField: Field): string | null {
        const r = this.r;
        const url = r.string(urlField, 'a URL');
        if (url === null) return null;
        const form =
            'write redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] or rediss://… (for Redis Cluster give cluster:, for Sentinel sentinels: and name:)';
        let parsed: URL | null = null;
        try {
            parsed = new URL(url);
        } catch {
            parsed = null;
        }
        if (
            parsed === null ||
            (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') ||
            parsed.hostname === ''
        ) {
            r.fail(urlField, `unsupported Redis URL "${redactUrl(url)}": ${form}`);
            return null;
        }
        const db = parsed.pathname.replace(/^\//, '');
        if (db !== '' && !/^\d+$/.test(db)) {
            r.fail(urlField, `"${redactUrl(url)}" has a bad database number "${db}"`);
            return null;
        }
        return url;
    }

    /** A non-empty list of `HOST:PORT` (IPv6 as `[ADDR]:PORT`) entries. */
    private hostPorts(field: Field, what: string): { host: string; port: number }[] | null {
        const r = this.r;
        const items = r.list(field, what);
        if (items === null) return null;
        if (items.length === 0) {
            r.fail(field, `expected a list of ${what}; got an empty list`);
            return null;
        }
        const out: { host: string; port: number }[] = [];
        let bad = false;
        for (const item of items) {
            const text = r.string(item, 'HOST:PORT');
            if (text === null) {
                bad = true;
                continue;
            }
            const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(text) ?? /^([^:[\]]+):(\d{1,5})$/.exec(text);
            const host = m
                ? text.startsWith('[')
                    ? isIpv6(m[1]!)
                        ? m[1]!.toLowerCase()
                        : null
                    : normalizeHost(m[1]!)
                : null;
            const port = m ? parsePort(m[2]!) : null;
            if (host === null || port === null || port === 0) {
                r.fail(
                    item,
                    `"${text}" is not HOST:PORT (e.g. 10.0.0.5:6379, redis-1.example.net:7000 or [2001:db8::5]:6379)`,
                );
                bad = true;
                continue;
            }
            out.push({ host, port });
        }
        return bad ? null : out;
    }

    private http(field: Field): HttpConfig | null {
        const r = this.r;
        const d = DEFAULTS.http;
        if (!r.isMap(field)) {
            if (r.isBoolean(field)) return r.boolean(field) ? { ...d } : null;
            r.fail(field, `expected a map of host, port, or false to turn HTTP off; got ${r.describe(field)}`);
            return null;
        }
        const entries = this.section(field, ['host', 'port']);
        const hostField = entries.get('host');
        const portField = entries.get('port');
        const host = hostField ? this.host(hostField) : d.host;
        const port = portField ? r.integer(portField, 0, 65535, 'a port number') : d.port;
        if (host !== null && port !== null && port !== 0) {
            this.checkBinding({ host, port, owner: 'http', line: this.lineOf(field), at: portField ?? field });
        }
        return { host: host ?? d.host, port: port ?? d.port };
    }

    private spool(field: Field): SpoolConfig {
        const entries = this.section(field, ['dir', 'memoryLimit']);
        const dirField = entries.get('dir');
        const limitField = entries.get('memoryLimit');
        return {
            dir: (dirField && this.spoolDir(dirField)) ?? defaultSpoolDir(),
            memoryLimit: (limitField && this.r.size(limitField, 0)) ?? DEFAULTS.spool.memoryLimit,
        };
    }

    /** `spool.dir`: a folder, or a path that does not exist yet (serve creates it, mode 0700). */
    private spoolDir(field: Field): string | null {
        const text = this.r.string(field, 'a folder path');
        if (text === null) return null;
        const resolved = path.resolve(this.baseDir, text);
        try {
            if (!fs.statSync(resolved).isDirectory()) {
                this.r.fail(field, `${resolved} is not a folder`);
                return null;
            }
        } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
                this.r.fail(field, `cannot use ${resolved}: ${ioReason(err)}`);
                return null;
            }
        }
        return resolved;
    }

    /** The `authentication:` section (SPF, DKIM, DMARC, ARC); every key optional. */
    private authentication(field: Field): AuthenticationConfig {
        const r = this.r;
        const d = defaultAuthentication();
        const entries = this.section(field, AUTHENTICATION_KEYS);
        const timeoutField = entries.get('timeout');
        const bitsField = entries.get('minRsaBits');
        const strictField = entries.get('strict');
        const maxDnsQueries = entries.get('maxDnsQueries');
        const spf = entries.get('spf');
        const dkim = entries.get('dkim');
        const dmarc = entries.get('dmarc');
        const arc = entries.get('arc');
        const spfEntries = spf ? this.section(spf, ['maxLookups']) : new Map<string, Field>();
        const dkimEntries = dkim
            ? this.section(dkim, ['rejectRsaSha1', 'maxSignatures', 'maxBodyHashes', 'maxSignedFields'])
            : new Map<string, Field>();
        const dmarcEntries = dmarc ? this.section(dmarc, ['mode', 'rejectMultipleFrom']) : new Map<string, Field>();
        const arcEntries = arc ? this.section(arc, ['trustedSealers', 'maxSets']) : new Map<string, Field>();
        const maxLookups = spfEntries.get('maxLookups');
        const rejectRsaSha1 = dkimEntries.get('rejectRsaSha1');
        const maxSignatures = dkimEntries.get('maxSignatures');
        const maxBodyHashes = dkimEntries.get('maxBodyHashes');
        const maxSignedFields = dkimEntries.get('maxSignedFields');
        const maxSets = arcEntries.get('maxSets');
        const mode = dmarcEntries.get('mode');
        const rejectMultipleFrom = dmarcEntries.get('rejectMultipleFrom');
        const sealers = arcEntries.get('trustedSealers');
        return {
            timeoutMs: (timeoutField && r.duration(timeoutField, 100, MAX_TIMER_MS)) ?? d.timeoutMs,
            // RFC 8301 section 3.2: verifiers must accept 1024 to 4096 bits; smaller keys only by choice
            minRsaBits: (bitsField && r.integer(bitsField, 512, 4096, 'a key size in bits')) ?? d.minRsaBits,
            strict: (strictField && r.boolean(strictField)) ?? d.strict,
            // enough for one SPF evaluation at the RFC limits plus DKIM, ARC and DMARC; never unbounded
            maxDnsQueries: (maxDnsQueries && r.integer(maxDnsQueries, 10, 1000)) ?? d.maxDnsQueries,
            // RFC 7208 section 4.6.4: at most 10 DNS-querying terms
            spf: { maxLookups: (maxLookups && r.integer(maxLookups, 1, 10)) ?? d.spf.maxLookups },
            dkim: {
                rejectRsaSha1: (rejectRsaSha1 && r.boolean(rejectRsaSha1)) ?? d.dkim.rejectRsaSha1,
                maxSignatures: (maxSignatures && r.integer(maxSignatures, 1, 50)) ?? d.dkim.maxSignatures,
                maxBodyHashes: (maxBodyHashes && r.integer(maxBodyHashes, 1, 50)) ?? d.dkim.maxBodyHashes,
                maxSignedFields: (maxSignedFields && r.integer(maxSignedFields, 10, 1000)) ?? d.dkim.maxSignedFields,
            },
            dmarc: {
                mode: (mode && r.oneOf(mode, DMARC_MODES)) ?? d.dmarc.mode,
                rejectMultipleFrom: (rejectMultipleFrom && r.boolean(rejectMultipleFrom)) ?? d.dmarc.rejectMultipleFrom,
            },
            arc: {
                trustedSealers: sealers ? this.domainList(sealers, 'ARC sealer domains') : d.arc.trustedSealers,
                // RFC 8617 section 4.2.1: a chain has at most 50 sets
                maxSets: (maxSets && r.integer(maxSets, 1, 50)) ?? d.arc.maxSets,
            },
        };
    }

    /** A list of distinct domain names (possibly empty), lower-case A-labels. */
    private domainList(field: Field, what: string): string[] {
        const items = this.r.list(field, what);
        const seen = new Set<string>();
        const out: string[] = [];
        for (const item of items ?? []) {
            const text = this.r.string(item, 'a domain name');
            if (text === null) continue;
            const name = normalizeHostname(text);
            if (name === null) this.r.fail(item, `"${text}" is not a valid domain name`);
            else if (seen.has(name)) this.r.fail(item, `"${text}" is listed twice`);
            else {
                seen.add(name);
                out.push(name);
            }
        }
        return out;
    }

    private logLevel(field: Field): Config['log']['level'] | null {
        const entries = this.section(field, ['level']);
        const level = entries.get('level');
        return level ? this.r.oneOf(level, LOG_LEVELS) : null;
    }
}

/** A URL with its password hidden, for messages. */
function redactUrl(url: string): string {
    return url.replace(/^([a-z][a-z0-9+.-]*:\/\/[^/@:]*:)[^/@]*@/i, '$1***@');
}
