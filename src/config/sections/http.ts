/**
 * The `http:` section: the address of the HTTP endpoint (metrics, health), or `false` to turn it
 * off. Validation only: it must not bind; clashes with listeners are checked in config/load.ts
 * from the binding this returns.
 */
import { lineOf, readListenHost, sectionEntries, type Binding } from '../fields.ts';
import type { Field, SourceReader } from '../reader.ts';

export const HTTP_KEYS = ['host', 'port'] as const;

export interface HttpConfig {
    readonly host: string;
    readonly port: number;
}

export const HTTP_DEFAULTS = { host: '127.0.0.1', port: 9465 } as const;

export function defaultHttp(): HttpConfig {
    return { host: HTTP_DEFAULTS.host, port: HTTP_DEFAULTS.port };
}

/** The section as read: null config for `false`; the binding when it listens on a valid, non-zero port. */
export interface HttpEntry {
    readonly config: HttpConfig | null;
    readonly binding: Binding | null;
}

/** Reads `http: { host, port }`, `true` (the defaults) or `false` (off). */
export function httpSection(r: SourceReader, field: Field): HttpEntry {
    const d = HTTP_DEFAULTS;
    if (!r.isMap(field)) {
        if (r.isBoolean(field)) return { config: r.boolean(field) ? { ...d } : null, binding: null };
        r.fail(field, `expected a map of host, port, or false to turn HTTP off; got ${r.describe(field)}`);
        return { config: null, binding: null };
    }
    const entries = sectionEntries(r, field, HTTP_KEYS);
    const hostField = entries.get('host');
    const portField = entries.get('port');
    const host = hostField ? readListenHost(r, hostField) : d.host;
    const port = portField ? r.integer(portField, 0, 65535, 'a port number') : d.port;
    const binding =
        host !== null && port !== null && port !== 0
            ? { host, port, owner: 'http', line: lineOf(r, field), at: portField ?? field }
            : null;
    return { config: { host: host ?? d.host, port: port ?? d.port }, binding };
}
