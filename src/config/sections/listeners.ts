/**
 * The `listeners:` section: each listener's address, mode (mx or submission), TLS mode, PROXY
 * protocol, connection caps, message and recipient limits, newline policy, timeouts and pregreet
 * wait, and the embedded listener used when the section is left out. Validation only: it must
 * not bind anything. What needs other sections (TLS and auth for submission, address clashes
 * with other listeners and HTTP) is checked in config/load.ts from what this returns.
 */
import { lineOf, readCidrs, readListenHost, sectionEntries, type Binding } from '../fields.ts';
import type { Field, SourceReader } from '../reader.ts';
import { MAX_TIMER_MS } from '../units.ts';
import { MAX_PREGREET_WAIT_MS, PREGREET_DEFAULTS } from './pregreet.ts';

export const LISTENER_KEYS = [
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
export const LISTENER_ONLY_KEYS: Readonly<Record<string, string>> = Object.fromEntries(
    LISTENER_KEYS.filter((k) => !['name', 'host', 'port', 'tls'].includes(k)).map((k) => [k, 'listeners[]']),
);

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

/** The listener of the embedded configuration (when `listeners` is left out). */
export const EMBEDDED_LISTENER = { name: 'mx', host: '127.0.0.1', port: 2525, mode: 'mx' } as const;

/** Defaults of every listener's optional keys. */
export const LISTENER_DEFAULTS = {
    /**
     * Per listener. An idle connection costs about 27 KiB of memory, 64 KiB with TLS (measured
     * with scripts/idle-connections.ts; docs/security.md, "Connections and TLS"), so 2000 cost
     * 55 to 130 MiB. What must be small is the share one network can hold and how long an idle
     * client keeps its slot.
     */
    maxClients: 2000,
    /** Per listener: the most one network may hold, unless a quarter of `maxClients` is less. */
    maxClientsPerNetwork: 50,
    /** Like postscreen: a real client starts a transaction within seconds of connecting. */
    preTransactionTimeoutMs: 30_000,
    maxMessageSize: 50 * 1024 * 1024,
    /** Postfix's smtpd_recipient_limit. */
    maxRecipients: 1000,
    /** RFC 5321 section 4.5.3.2.7: a server should wait at least 5 minutes for the next command. */
    socketTimeoutMs: 5 * 60_000,
} as const;

const LISTENER_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/** Defaults of one listener of the given mode. `tls` follows whether top-level `tls` is configured. */
export function defaultListener(
    name: string,
    host: string,
    port: number,
    mode: ListenerMode,
    haveTls: boolean,
    mxPregreetWaitMs: number = PREGREET_DEFAULTS.waitMs,
): ListenerConfig {
    const d = LISTENER_DEFAULTS;
    return {
        name,
        host,
        port,
        mode,
        tls: haveTls ? 'starttls' : 'none',
        proxyProtocol: null,
        maxClients: d.maxClients,
        maxClientsPerNetwork: defaultMaxClientsPerNetwork(d.maxClients),
        maxMessageSize: d.maxMessageSize,
        bareNewline: mode === 'mx' ? 'reject' : 'normalize',
        socketTimeoutMs: d.socketTimeoutMs,
        maxRecipients: d.maxRecipients,
        preTransactionTimeoutMs: d.preTransactionTimeoutMs,
        pregreetWaitMs: mode === 'mx' ? mxPregreetWaitMs : 0,
    };
}

/** The listeners when the section is left out: the embedded one. */
export function defaultListeners(
    haveTls: boolean,
    mxPregreetWaitMs: number = PREGREET_DEFAULTS.waitMs,
): ListenerConfig[] {
    const l = EMBEDDED_LISTENER;
    return [defaultListener(l.name, l.host, l.port, l.mode, haveTls, mxPregreetWaitMs)];
}

/**
 * The per-network share of a listener with `maxClients` slots when the config does not set it:
 * 50, or a quarter of the slots when that is less (at least 1), so that at least four networks
 * always fit.
 */
export function defaultMaxClientsPerNetwork(maxClients: number): number {
    return Math.min(LISTENER_DEFAULTS.maxClientsPerNetwork, Math.max(1, Math.floor(maxClients / 4)));
}

/** One listener as read, with the fields the checks across sections point at. */
export interface ListenerEntry {
    readonly config: ListenerConfig;
    readonly item: Field;
    readonly modeField: Field | undefined;
    readonly tlsField: Field | undefined;
    /** The address and port it binds; null when either is missing or invalid, or the port is 0. */
    readonly binding: Binding | null;
}

/**
 * Reads `listeners:`. `haveTls` (top-level `tls` given) sets the default TLS mode;
 * `mxPregreetWaitMs` is the `pregreet.wait` of mx listeners.
 */
export function listenersSection(
    r: SourceReader,
    field: Field,
    haveTls: boolean,
    mxPregreetWaitMs: number,
): ListenerEntry[] {
    const items = r.list(field, 'listeners');
    if (items === null) return [];
    if (items.length === 0) r.fail(field, 'at least one listener is needed');
    const out: ListenerEntry[] = [];
    const names = new Map<string, number>();
    for (const item of items) {
        const entries = sectionEntries(r, item, LISTENER_KEYS);
        if (!r.isMap(item)) continue;
        const nameField = entries.get('name');
        const hostField = entries.get('host');
        const portField = entries.get('port');
        const missing = (['name', 'host', 'port'] as const).filter((k) => !entries.has(k)).map((k) => `"${k}"`);
        if (missing.length > 0) r.fail(item, `missing ${missing.join(' and ')}`);
        const name = nameField ? listenerName(r, nameField) : null;
        if (name !== null && nameField) {
            const earlier = names.get(name);
            if (earlier !== undefined) r.fail(nameField, `listener name "${name}" is already used (line ${earlier})`);
            else names.set(name, lineOf(r, nameField));
        }
        const host = hostField ? readListenHost(r, hostField) : null;
        const port = portField ? r.integer(portField, 0, 65535, 'a port number') : null;
        const modeField = entries.get('mode');
        const mode: ListenerMode = (modeField && r.oneOf(modeField, ['mx', 'submission'] as const)) ?? 'mx';
        const base = defaultListener(name ?? '', host ?? '', port ?? 0, mode, haveTls, mxPregreetWaitMs);

        const tlsField = entries.get('tls');
        let tls: ListenerTls = base.tls;
        if (tlsField) tls = r.oneOf(tlsField, ['starttls', 'implicit', 'none'] as const) ?? tls;
        if (mode === 'submission' && tlsField && tls === 'none') {
            // RFC 8314 section 3: passwords only over TLS; a listener without TLS could never log anyone in
            r.fail(
                tlsField,
                'a submission listener needs TLS (starttls or implicit): passwords are never accepted in clear text',
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
        const config: ListenerConfig = {
            ...base,
            tls,
            proxyProtocol: ppField ? proxyProtocol(r, ppField) : null,
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
                (pregreetWaitField && r.duration(pregreetWaitField, 0, MAX_PREGREET_WAIT_MS)) ?? base.pregreetWaitMs,
        };
        const binding =
            host !== null && port !== null && port !== 0 && portField
                ? { host, port, owner: `listener "${name ?? '?'}"`, line: lineOf(r, item), at: portField }
                : null;
        out.push({ config, item, modeField, tlsField, binding });
    }
    return out;
}

function listenerName(r: SourceReader, field: Field): string | null {
    const v = r.string(field, 'a listener name');
    if (v !== null && !LISTENER_NAME_RE.test(v)) {
        r.fail(field, `"${v}" is not a usable name (letters, digits, "-", "_" and "."; up to 64)`);
        return null;
    }
    return v;
}

/** `true` (any client), `false`, or the addresses and CIDRs that must send a PROXY header. */
function proxyProtocol(r: SourceReader, field: Field): readonly string[] | null {
    if (!r.isList(field)) {
        if (!r.isBoolean(field)) {
            r.fail(field, `expected true, false or a list of trusted addresses or CIDRs; got ${r.describe(field)}`);
            return null;
        }
        if (!r.boolean(field)) return null;
        r.warn(
            field,
            'true: every peer may open with a PROXY header and name any client address, so anyone who reaches this port can pass for an address that SPF authorises, that a rule or list allows, or that the upstream trusts (mynetworks), and leave the per-client limits and the login lockout; list the addresses of your load balancers instead ([10.0.0.5, 10.0.0.6])',
        );
        return ['0.0.0.0/0', '::/0'];
    }
    const items = r.list(field, 'trusted addresses or CIDRs, or true or false');
    if (items === null) return null;
    if (items.length === 0) r.fail(field, 'an empty list lets no client send a PROXY header; write false instead');
    return readCidrs(r, items, false);
}
