/**
 * What a reload (SIGHUP) may change in a running proxy. SETTINGS is THE table: every leaf key
 * of Config is `live` (a reload applies it) or `restart` (a reload names it in the log line
 * "needs a restart: <keys>" and keeps the running value until the next start). A new config
 * key must get an entry here: test/e2e/config-reload.test.ts walks full Configs and fails for a
 * key without one, and for a key none of its edits (EDITS) changes. At run time a key missing
 * from the table counts as `restart`, so a change is never silently ignored.
 *
 * Also here: the comparison of two configs into the list of changed keys, and the config in
 * force after a reload (new values of live keys, running values of restart keys).
 * It only classifies and compares: it must not read files, log or apply anything.
 */
import { isDeepStrictEqual } from 'node:util';
import { deepFreeze } from './load.ts';
import type { Config } from './types.ts';

/** `live`: a reload applies it to the running proxy. `restart`: it takes effect at the next start. */
export type Reload = 'live' | 'restart';

export interface Setting {
    readonly reload: Reload;
    /**
     * The key as written in the config file, when it differs from the Config path
     * (`upstream.timeout` for `upstream.commandTimeoutMs`); `[]` as in the path.
     */
    readonly key?: string;
}

const live = (key?: string): Setting => (key === undefined ? { reload: 'live' } : { reload: 'live', key });
const restart = (key?: string): Setting => (key === undefined ? { reload: 'restart' } : { reload: 'restart', key });

/**
 * Every leaf of Config by path: map keys joined by `.`, `[]` for each element of a list of
 * maps (a list of plain values is one leaf). `source` is not a setting (it is where the config
 * came from). Keep the order of types.ts. Why a key needs a restart is said once per group.
 */
export const SETTINGS: Readonly<Record<string, Setting>> = Object.freeze({
    // The name is in each listener's smtp-server options (banner, EHLO), the upstream's EHLO and
    // the Received field; changing it under open sessions would mix names.
    hostname: restart(),
    // Own-domain protection and relay control are built once with the listeners.
    domains: restart(),
    relayDomains: restart(),
    // Sockets, smtp-server options and TLS mode are fixed when a listener binds.
    'listeners[].name': restart(),
    'listeners[].host': restart(),
    'listeners[].port': restart(),
    'listeners[].mode': restart(),
    'listeners[].tls': restart(),
    'listeners[].proxyProtocol': restart(),
    'listeners[].maxClients': restart(),
    'listeners[].maxClientsPerNetwork': restart(),
    'listeners[].preTransactionTimeoutMs': restart('listeners[].preTransactionTimeout'),
    'listeners[].maxMessageSize': restart(),
    'listeners[].maxRecipients': restart(),
    'listeners[].bareNewline': restart(),
    'listeners[].socketTimeoutMs': restart('listeners[].socketTimeout'),
    'listeners[].pregreetWaitMs': restart('listeners[].pregreetWait'),
    // The pregreet test is built once per listener; its passes live in the store.
    'pregreet.waitMs': restart('pregreet.wait'),
    'pregreet.ttlMs': restart('pregreet.ttl'),
    // Which files: fixed per listener. Their contents are re-read on every SIGHUP.
    'tls.cert': restart(),
    'tls.key': restart(),
    // The upstream client is shared by every session.
    'upstream.kind': restart('upstream.url'),
    'upstream.url': restart(),
    'upstream.host': restart('upstream.url'),
    'upstream.port': restart('upstream.url'),
    'upstream.path': restart('upstream.url'),
    'upstream.xclient': restart(),
    'upstream.starttls': restart(),
    'upstream.tlsVerify': restart(),
    'upstream.connectTimeoutMs': restart('upstream.connectTimeout'),
    'upstream.commandTimeoutMs': restart('upstream.timeout'),
    'upstream.dataTimeoutMs': restart('upstream.dataTimeout'),
    'upstream.keepAliveMs': restart('upstream.keepAlive'),
    // A new resolver and new verification checks are built; lookups in flight finish on the old one.
    'dns.servers': live(),
    'dns.timeoutMs': live('dns.timeout'),
    // The store holds concurrency leases and counts of the running sessions.
    'redis.url': restart(),
    'redis.cluster': restart(),
    'redis.sentinels[].host': restart('redis.sentinels'),
    'redis.sentinels[].port': restart('redis.sentinels'),
    'redis.name': restart(),
    'redis.username': restart(),
    'redis.password': restart(),
    'redis.commandTimeoutMs': restart('redis.commandTimeout'),
    'redis.connectTimeoutMs': restart('redis.connectTimeout'),
    // The login backend (and its file watcher) is built once; the users and sendAs files'
    // contents are re-read on every SIGHUP and when they change.
    'auth.users': restart(),
    'auth.dovecot.kind': restart('auth.dovecot'),
    'auth.dovecot.path': restart('auth.dovecot'),
    'auth.dovecot.host': restart('auth.dovecot'),
    'auth.dovecot.port': restart('auth.dovecot'),
    'auth.sendAs': restart(),
    'auth.recipientDelimiter': restart(),
    // The login guard is built once per app with its limits; its counts live in the store.
    'auth.lockout.perIp.limit': restart('auth.lockout.perIp'),
    'auth.lockout.perIp.periodMs': restart('auth.lockout.perIp'),
    'auth.lockout.perLogin.limit': restart('auth.lockout.perLogin'),
    'auth.lockout.perLogin.periodMs': restart('auth.lockout.perLogin'),
    'auth.lockout.perSession': restart(),
    'auth.lockout.exempt': restart(),
    'auth.lockout.loginKey': restart('auth.lockout.perLogin'),
    // The rules are loaded from the new folder and the watcher follows it.
    rules: live(),
    // Asked at every decision.
    softReject: live(),
    // The HTTP endpoint is bound once.
    'http.host': restart(),
    'http.port': restart(),
    // Read by the sessions from the start config.
    'spool.dir': restart(),
    'spool.memoryLimit': restart(),
    // The signer loads its keys once.
    'dkim.sign[].domain': restart('dkim.sign'),
    'dkim.sign[].selector': restart('dkim.sign'),
    'dkim.sign[].keyFile': restart('dkim.sign'),
    'dkim.sign[].algorithm': restart('dkim.sign'),
    'dkim.headers': restart(),
    // The verification check is rebuilt with the new settings for the next message.
    'authentication.timeoutMs': live('authentication.timeout'),
    'authentication.thread': live(),
    'authentication.minRsaBits': live(),
    'authentication.strict': live(),
    'authentication.spf.maxLookups': live(),
    'authentication.dkim.rejectRsaSha1': live(),
    'authentication.dmarc.mode': live(),
    'authentication.dmarc.rejectMultipleFrom': live(),
    'authentication.arc.trustedSealers': live(),
    'authentication.maxDnsQueries': live(),
    'authentication.dkim.maxSignatures': live(),
    'authentication.dkim.maxBodyHashes': live(),
    'authentication.dkim.maxSignedFields': live(),
    'authentication.arc.maxSets': live(),
    // The reputation check and the list probes are rebuilt; sessions in progress keep the old lists.
    'reputation.dnsbl': live(),
    'reputation.dnswl': live(),
    'reputation.rhsbl': live(),
    'reputation.probeIntervalMs': live('reputation.probeInterval'),
    // Read when the drain starts.
    shutdownTimeoutMs: live('shutdownTimeout'),
    // The processes are forked at start; each one's sockets and sessions are its own.
    workers: restart(),
    // The root logger's level; session loggers follow it.
    'log.level': live(),
} satisfies Record<string, Setting>);

/** Config fields that are not settings. */
const NOT_SETTINGS: ReadonlySet<string> = new Set(['source']);

function isMap(v: unknown): v is Readonly<Record<string, unknown>> {
    return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function isListOfMaps(v: unknown): v is readonly unknown[] {
    return Array.isArray(v) && v.some(isMap);
}

function join(prefix: string, key: string): string {
    return prefix === '' ? key : `${prefix}.${key}`;
}

/** The leaf paths (`listeners[].port`) of a config; a section that is null or absent is one leaf. */
export function settingPaths(config: Config): string[] {
    const out = new Set<string>();
    const walk = (value: unknown, pattern: string): void => {
        if (isMap(value)) {
            for (const [k, v] of Object.entries(value)) {
                if (pattern === '' && NOT_SETTINGS.has(k)) continue;
                walk(v, join(pattern, k));
            }
        } else if (isListOfMaps(value)) {
            for (const element of value) walk(element, `${pattern}[]`);
        } else {
            out.add(pattern);
        }
    };
    walk(config, '');
    return [...out];
}

/**
 * How a path reloads: its table entry; for a whole section or list entry (added or removed),
 * `live` only when every entry below it is live; `restart` for anything unknown.
 */
export function reloadOf(pattern: string): Reload {
    const exact = SETTINGS[pattern];
    if (exact) return exact.reload;
    const below = Object.entries(SETTINGS).filter(([p]) => p.startsWith(`${pattern}.`) || p.startsWith(`${pattern}[`));
    return below.length > 0 && below.every(([, s]) => s.reload === 'live') ? 'live' : 'restart';
}

export interface ConfigChange {
    /** Where the value changed, with list positions: `listeners[1].port`. */
    readonly path: string;
    /** Its SETTINGS path (`listeners[].port`), or the path of a section or list entry added or removed. */
    readonly pattern: string;
    readonly reload: Reload;
    /** The key as an operator writes it, with list positions: `listeners[1].socketTimeout`. */
    readonly key: string;
}

/** The key of a change as written in the file: the table's `key` with the positions of `path`. */
function keyOf(path: string, pattern: string): string {
    const written = SETTINGS[pattern]?.key;
    if (written === undefined) return path;
    const positions = [...path.matchAll(/\[(\d+)\]/g)].map((m) => m[1]!);
    let i = 0;
    return written.replace(/\[\]/g, () => `[${positions[i++] ?? ''}]`);
}

/** Every setting whose value differs between `before` and `after`, in the order of the config. */
export function diffConfig(before: Config, after: Config): ConfigChange[] {
    const out: ConfigChange[] = [];
    const add = (path: string, pattern: string): void => {
        out.push({ path, pattern, reload: reloadOf(pattern), key: keyOf(path, pattern) });
    };
    const walk = (a: unknown, b: unknown, path: string, pattern: string): void => {
        if (isMap(a) && isMap(b)) {
            const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
            for (const k of keys) {
                if (path === '' && NOT_SETTINGS.has(k)) continue;
                walk(a[k], b[k], join(path, k), join(pattern, k));
            }
            return;
        }
        if (Array.isArray(a) && Array.isArray(b) && (isListOfMaps(a) || isListOfMaps(b))) {
            for (let i = 0; i < Math.max(a.length, b.length); i++) {
                if (i < a.length && i < b.length) walk(a[i], b[i], `${path}[${i}]`, `${pattern}[]`);
                else add(`${path}[${i}]`, `${pattern}[]`);
            }
            return;
        }
        if (!isDeepStrictEqual(a, b)) add(path, pattern);
    };
    walk(before, after, '', '');
    return out;
}

/** True when `path` is `node` or lies below it. */
function within(path: string, node: string): boolean {
    return node === '' || path === node || path.startsWith(`${node}.`) || path.startsWith(`${node}[`);
}

/**
 * The config in force after a reload from `running` to the file's `next`: next's values where
 * only live settings changed, running's values wherever a restart setting changed (the whole
 * section or list entry when one was added or removed). Deeply frozen.
 */
export function configAfterReload(running: Config, next: Config, changes: readonly ConfigChange[]): Config {
    const held = changes.filter((c) => c.reload === 'restart').map((c) => c.path);
    const merge = (a: unknown, b: unknown, path: string): unknown => {
        if (!held.some((p) => within(p, path))) return b;
        if (held.includes(path)) return a;
        if (isMap(a) && isMap(b)) {
            const out: Record<string, unknown> = {};
            for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) {
                const v = merge(a[k], b[k], join(path, k));
                if (v !== undefined) out[k] = v;
            }
            return out;
        }
        if (Array.isArray(a) && Array.isArray(b) && a.length === b.length) {
            return a.map((x, i) => merge(x, b[i], `${path}[${i}]`));
        }
        return a;
    };
    return deepFreeze(merge(running, next, '') as Config);
}

/** The distinct file keys of some changes, in order (`upstream.url` once for url, host and port). */
export function changedKeys(changes: readonly ConfigChange[]): string[] {
    return [...new Set(changes.map((c) => c.key))];
}
