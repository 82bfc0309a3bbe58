/**
 * Finds, reads and validates the config file into the frozen Config the program runs with.
 * Every problem is collected in one pass and thrown together as a ConfigError with
 * `FILE:LINE:COL` positions. This file orchestrates: it reads the top-level keys, hands each
 * section to its file in config/sections/, and runs the checks that span sections (listeners
 * needing TLS and auth, address clashes, relay control, workers needing Redis). A section's own
 * keys, defaults and validation belong in its section file, not here. It must not start
 * anything, open sockets or read rule files.
 */
import fs from 'node:fs';
import path from 'node:path';
import { formatIp, isIpv6, parseIp } from '../net/ip.ts';
import { defaultConfig, PACKAGE_RULES_DIR } from './defaults.ts';
import { existingPath, readHostname, type Binding } from './fields.ts';
import { ConfigError, ioReason, type Issue } from './issues.ts';
import { SourceReader, type Field } from './reader.ts';
import { authenticationSection } from './sections/authentication.ts';
import { dkimSection } from './sections/dkim.ts';
import { domainsSection, relayDomainsSection } from './sections/domains.ts';
import { dnsSection } from './sections/dns.ts';
import { httpSection, type HttpEntry } from './sections/http.ts';
import { defaultListeners, LISTENER_ONLY_KEYS, listenersSection, type ListenerEntry } from './sections/listeners.ts';
import { logSection } from './sections/log.ts';
import { pregreetSection } from './sections/pregreet.ts';
import { redisSection } from './sections/redis.ts';
import { reputationSection } from './sections/reputation.ts';
import { spoolSection } from './sections/spool.ts';
import { submissionAuthSection } from './sections/submission-auth.ts';
import { tlsSection } from './sections/tls.ts';
import { upstreamSection, type UpstreamEntry } from './sections/upstream.ts';
import type { Config, ListenerConfig, UpstreamConfig } from './types.ts';
import { MAX_TIMER_MS } from './units.ts';

export { ConfigError, formatIssue, type Issue } from './issues.ts';

export const CONFIG_ENV_VAR = 'MAILWARDEN_CONFIG';
export const DEFAULT_CONFIG_FILE = 'mailwarden.yaml';

/** The most worker processes `workers` may ask for. */
const MAX_WORKERS = 256;

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
    /**
     * Judge the file as `serve` runs it, for the user this process runs as: `serve` (start and
     * reload) and `check` set it. It adds what depends on that user: a `spool.dir` another user
     * owns is refused (serve's start would refuse it). Commands that only read the config
     * (`users`, `auth`) leave it out, so an operator can run them as root.
     */
    readonly forServe?: boolean;
    /**
     * With `forServe`, judged as `check` judges: run as root (uid 0) it cannot know which user
     * `serve` will run as, so it does not judge the owner of `spool.dir` (a folder that is not a
     * folder, or a symbolic link, is still refused). Run as another user, it judges for that user.
     */
    readonly check?: boolean;
    /** The user id the process runs as (default: process.getuid(); tests set it). */
    readonly uid?: number;
}

/**
 * Loads and validates a config file, or returns the embedded defaults for `null`. A file that
 * holds no settings (empty, or only comments) is an error, not the defaults: `{}` asks for them.
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
    const owner = options.forServe === true ? spoolOwner(options) : undefined;
    const config = buildConfig(reader, path.dirname(absolute), absolute, owner);
    if (reader.failed) throw new ConfigError(reader.issues);
    return { config: deepFreeze(config), warnings: Object.freeze([...reader.warnings]) };
}

/**
 * The user `spool.dir` must belong to, for a file judged as serve runs it: the user this process
 * runs as, or none for `check` run as root (serve usually runs as a service user it cannot know).
 */
function spoolOwner(options: LoadOptions): number | undefined {
    const uid = options.uid ?? process.getuid?.();
    return options.check === true && uid === 0 ? undefined : uid;
}

/** Freezes an object graph so that no part of the config can change after loading. */
export function deepFreeze<T>(value: T): T {
    if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
        Object.freeze(value);
        for (const v of Object.values(value)) deepFreeze(v);
    }
    return value;
}

/**
 * Validates the sections of one parsed file, each by its section file, then the checks that
 * span sections; issues go to the reader. Relative paths resolve against `baseDir`. With
 * `owner`, `spool.dir` must belong to that user (LoadOptions.forServe).
 */
function buildConfig(r: SourceReader, baseDir: string, source: string, owner: number | undefined): Config {
    const defaults = defaultConfig(baseDir, source);
    const root = r.root();
    if (r.isEmpty(root)) {
        // an emptied file (a truncated copy, a stray `: > file`) would reset every setting
        // unseen: the rules, softReject, dns.servers, … would all go back to their defaults
        r.report(
            0,
            'the config file holds no settings (it is empty, or only comments): every key would take its default (the shipped rules among them); write "{}" to run on the defaults with this file, or give no config file at all (no -c, no MAILWARDEN_CONFIG, no ./mailwarden.yaml) for the embedded defaults',
        );
        return defaults;
    }
    const top = r.map(root, TOP_KEYS, LISTENER_ONLY_KEYS);
    if (top === null) return defaults;
    const get = (key: string): Field | undefined => (r.isEmpty(top.get(key)) ? undefined : top.get(key));

    const tlsField = get('tls');
    const tls = tlsField ? tlsSection(r, tlsField, baseDir) : null;
    const authField = get('auth');
    const auth = authField ? submissionAuthSection(r, authField, baseDir) : null;
    const pregreetField = get('pregreet');
    const pregreet = pregreetField ? pregreetSection(r, pregreetField) : defaults.pregreet;
    const listenersField = get('listeners');
    const listenerEntries = listenersField
        ? listenersSection(r, listenersField, tlsField !== undefined, pregreet.waitMs)
        : [];
    const listeners = listenersField
        ? listenerEntries.map((l) => l.config)
        : defaultListeners(tlsField !== undefined, pregreet.waitMs);
    const httpField = get('http');
    const http: HttpEntry = httpField ? httpSection(r, httpField) : { config: defaults.http, binding: null };
    checkListenerNeeds(r, listenerEntries, tlsField !== undefined, authField !== undefined);
    checkBindings(r, listenerEntries, http, httpField === undefined);

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
    const domains = (domainsField && domainsSection(r, domainsField)) ?? defaults.domains;
    const relayDomains = (relayDomainsField && relayDomainsSection(r, relayDomainsField, domains)) ?? [];
    const upstreamEntry = upstreamField ? upstreamSection(r, upstreamField, baseDir) : null;
    const upstream = upstreamEntry?.config ?? defaults.upstream;
    checkRelayControl(r, listeners, domains, relayDomains, upstream, upstreamEntry);
    return {
        source,
        hostname: (hostnameField && readHostname(r, hostnameField)) ?? defaults.hostname,
        domains,
        relayDomains,
        listeners,
        pregreet,
        tls,
        upstream,
        dns: dnsField ? dnsSection(r, dnsField) : defaults.dns,
        redis: redisField ? redisSection(r, redisField) : null,
        auth,
        rules: (rulesField && existingPath(r, rulesField, 'folder', baseDir)) ?? PACKAGE_RULES_DIR,
        softReject: (softRejectField && r.boolean(softRejectField)) ?? false,
        http: http.config,
        spool: spoolField ? spoolSection(r, spoolField, baseDir, owner) : defaults.spool,
        dkim: dkimField ? dkimSection(r, dkimField, baseDir) : null,
        authentication: authenticationField ? authenticationSection(r, authenticationField) : defaults.authentication,
        reputation: reputationField ? reputationSection(r, reputationField) : defaults.reputation,
        shutdownTimeoutMs: (shutdownField && r.duration(shutdownField, 0, MAX_TIMER_MS)) ?? defaults.shutdownTimeoutMs,
        workers: (workersField && workers(r, workersField, redisField !== undefined)) ?? defaults.workers,
        log: logField ? logSection(r, logField) : defaults.log,
    };
}

/**
 * What listeners need from other sections: a TLS mode other than `none` needs the top-level
 * `tls`; a submission listener needs `auth` and TLS (RFC 8314 section 3: passwords only over TLS).
 */
function checkListenerNeeds(
    r: SourceReader,
    entries: readonly ListenerEntry[],
    haveTls: boolean,
    haveAuth: boolean,
): void {
    for (const { config, item, modeField, tlsField } of entries) {
        if (tlsField && config.tls !== 'none' && !haveTls) {
            r.fail(tlsField, `"${config.tls}" needs the top-level tls section (cert and key)`);
        }
        if (config.mode !== 'submission') continue;
        if (!haveAuth) {
            r.fail(modeField ?? item, 'a submission listener needs the auth section (auth.users or auth.dovecot)');
        }
        if (!tlsField && !haveTls) {
            r.fail(
                modeField ?? item,
                'a submission listener needs the top-level tls section (cert and key): passwords are never accepted in clear text',
            );
        }
    }
}

/**
 * What listening on `host` (an IP address or `localhost`: readListenHost) may bind: every
 * address (`::`, dual-stack in Node.js), every IPv4 address (`0.0.0.0`), or a list of addresses
 * in canonical form (an IPv4-mapped IPv6 address is its IPv4 address; `localhost` is 127.0.0.1
 * or ::1, whichever the system resolver gives first).
 */
function bindTargets(host: string): 'any' | 'any4' | readonly string[] {
    const ip = parseIp(host);
    if (ip !== null) {
        const canonical = formatIp(ip);
        if (canonical === '::') return 'any';
        if (canonical === '0.0.0.0') return 'any4';
        return [canonical];
    }
    return ['127.0.0.1', '::1'];
}

/** True when listening on both hosts (on one port) may clash. */
function hostsOverlap(a: string, b: string): boolean {
    const ta = bindTargets(a);
    const tb = bindTargets(b);
    if (ta === 'any' || tb === 'any') return true;
    if (ta === 'any4' || tb === 'any4') {
        const other = ta === 'any4' ? tb : ta;
        return other === 'any4' || other.some((h) => !isIpv6(h));
    }
    return ta.some((h) => tb.includes(h));
}

/**
 * Reports a second use of an address and port by listeners and HTTP, in that order (wildcards
 * overlap with every address of the port, `localhost` with 127.0.0.1 and ::1, `::ffff:127.0.0.1`
 * with 127.0.0.1), and, when `http` is left out, a listener on the address HTTP takes by default.
 */
function checkBindings(
    r: SourceReader,
    listeners: readonly ListenerEntry[],
    http: HttpEntry,
    httpByDefault: boolean,
): void {
    const bound: Binding[] = [];
    for (const b of [...listeners.map((l) => l.binding), http.binding]) {
        if (b === null) continue;
        const clash = bound.find((o) => o.port === b.port && hostsOverlap(o.host, b.host));
        if (clash) {
            const addr = (h: string): string => (isIpv6(h) ? `[${h}]` : h);
            const same = clash.host === b.host;
            const what = same
                ? `${addr(b.host)}:${b.port}`
                : `${addr(b.host)}:${b.port} overlaps ${addr(clash.host)}:${clash.port}, which`;
            const named = [b.host, clash.host].some((h) => h.toLowerCase() === 'localhost')
                ? ' (localhost is 127.0.0.1 or ::1)'
                : '';
            r.fail(b.at, `${what} is already used by ${clash.owner} (line ${clash.line})${named}`);
        }
        bound.push(b);
    }
    const defaultHttp = http.config;
    if (!httpByDefault || defaultHttp === null) return;
    for (const b of bound) {
        if (b.port === defaultHttp.port && hostsOverlap(b.host, defaultHttp.host)) {
            r.fail(
                b.at,
                `${b.host}:${b.port} is also where HTTP (metrics, health) listens by default; move one of them (http: { port: … })`,
            );
        }
    }
}

/**
 * An mx listener in front of an SMTP upstream must know which recipients are ours:
 * without `domains` (or `relayDomains`) it would have to refuse every recipient, or relay
 * for anyone. And `xclient: false` hides the real client from the upstream.
 */
function checkRelayControl(
    r: SourceReader,
    listeners: readonly ListenerConfig[],
    domains: readonly string[],
    relayDomains: readonly string[],
    upstream: UpstreamConfig,
    entry: UpstreamEntry | null,
): void {
    if (upstream.kind === 'maildir') return;
    const mx = listeners.find((l) => l.mode === 'mx');
    if (mx && domains.length === 0 && relayDomains.length === 0 && entry?.urlField) {
        r.fail(
            entry.urlField,
            `the mx listener "${mx.name}" forwards to an SMTP upstream, so mailwarden must know which recipients to accept: list your domains in "domains" (and the ones you relay for in "relayDomains")`,
        );
    }
    if (!upstream.xclient && entry?.xclientField) {
        r.warn(
            entry.xclientField,
            "false: the upstream sees mailwarden (for example 127.0.0.1) as the client, not the real one, so its client restrictions judge mailwarden and permit_mynetworks would let every client relay through it. mailwarden refuses relaying on mx listeners itself, but turn xclient on (smtpd_authorized_xclient_hosts) or keep mailwarden out of the upstream's mynetworks",
        );
    }
}

/**
 * `workers`: a number of processes, or `auto`. More than one needs `redis:`: the in-memory
 * store counts per process, so each limit would let through that many times as much.
 */
function workers(r: SourceReader, field: Field, hasRedis: boolean): number | 'auto' | null {
    if (r.isWord(field, 'auto')) return 'auto';
    const n = r.integer(field, 1, MAX_WORKERS, 'a number of processes, or auto');
    if (n !== null && n > 1 && !hasRedis) {
        r.fail(
            field,
            `${n} processes need redis: rate limits, greylisting and login failures kept in memory are counted per process, so every limit would let ${n} times as much through; configure redis: or write workers: 1`,
        );
        return null;
    }
    return n;
}
