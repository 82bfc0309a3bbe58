/**
 * The `redis:` section: the shared store of rate limits, greylisting, login failures and pregreet
 * passes. One server (`url`), a Redis Cluster (`cluster`) or Sentinel (`sentinels` with `name`),
 * credentials and timeouts. Validation only: it must not connect. That several workers need it is
 * checked in config/load.ts.
 */
import { isIpv6 } from '../../net/ip.ts';
import { sectionEntries } from '../fields.ts';
import { normalizeHost, parsePort } from '../net.ts';
import type { Field, SourceReader } from '../reader.ts';
import { redactUserinfo } from '../redact.ts';

export const REDIS_KEYS = [
    'url',
    'cluster',
    'sentinels',
    'name',
    'username',
    'password',
    'commandTimeout',
    'connectTimeout',
] as const;

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

/** A limit decision is a single script call; Redis answers in well under a millisecond when healthy. */
export const REDIS_DEFAULTS = { commandTimeoutMs: 250, connectTimeoutMs: 1_000 } as const;

/** Reads `redis:` (no default: without it, the store is in memory); null when invalid (reported). */
export function redisSection(r: SourceReader, field: Field): RedisConfig | null {
    const entries = sectionEntries(r, field, REDIS_KEYS);
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
    const d = REDIS_DEFAULTS;
    const commandField = entries.get('commandTimeout');
    const connectField = entries.get('connectTimeout');
    const usernameField = entries.get('username');
    const passwordField = entries.get('password');
    const username = usernameField ? r.string(usernameField, 'a user name') : null;
    const password = passwordField
        ? r.secret(passwordField, 'a password (write ${VAR} to keep it out of the file)')
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
        const url = redisUrl(r, urlField);
        return url === null ? null : { url, ...common };
    }
    if (clusterField) {
        const nodes = hostPorts(r, clusterField, 'Redis Cluster seed nodes');
        return nodes === null
            ? null
            : {
                  cluster: nodes.map((n) => (isIpv6(n.host) ? `[${n.host}]:${n.port}` : `${n.host}:${n.port}`)),
                  ...common,
              };
    }
    const sentinels = hostPorts(r, sentinelsField!, 'sentinel addresses');
    if (!nameField)
        r.fail(
            sentinelsField!,
            'missing "name" beside sentinels (the master name in the sentinels\' configuration, e.g. mymaster)',
        );
    const name = nameField ? r.string(nameField, 'a master name') : null;
    if (sentinels === null || name === null) return null;
    return { sentinels, name, ...common };
}

function redisUrl(r: SourceReader, urlField: Field): string | null {
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
    if (parsed === null || (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') || parsed.hostname === '') {
        r.fail(urlField, `unsupported Redis URL "${redactUserinfo(url)}": ${form}`);
        return null;
    }
    const db = parsed.pathname.replace(/^\//, '');
    if (db !== '' && !/^\d+$/.test(db)) {
        r.fail(urlField, `"${redactUserinfo(url)}" has a bad database number "${db}"`);
        return null;
    }
    return url;
}

/** A non-empty list of `HOST:PORT` (IPv6 as `[ADDR]:PORT`) entries. */
function hostPorts(r: SourceReader, field: Field, what: string): { host: string; port: number }[] | null {
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
                `"${redactUserinfo(text)}" is not HOST:PORT (e.g. 10.0.0.5:6379, redis-1.example.net:7000 or [2001:db8::5]:6379)`,
            );
            bad = true;
            continue;
        }
        out.push({ host, port });
    }
    return bad ? null : out;
}
