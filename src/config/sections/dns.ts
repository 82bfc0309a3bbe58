/**
 * The `dns:` section: the DNS servers mailwarden asks (the system resolvers when left out) and
 * the timeout of one query. Validation only: it must not query DNS or read resolv.conf.
 */
import { sectionEntries } from '../fields.ts';
import { parseDnsServer } from '../net.ts';
import type { Field, SourceReader } from '../reader.ts';
import { MAX_TIMER_MS } from '../units.ts';

export const DNS_KEYS = ['servers', 'timeout'] as const;

export interface DnsConfig {
    /** `host` or `host:port` entries; null means the system resolvers. */
    readonly servers: readonly string[] | null;
    readonly timeoutMs: number;
}

export const DNS_DEFAULTS = { timeoutMs: 5_000 } as const;

export function defaultDns(): DnsConfig {
    return { servers: null, timeoutMs: DNS_DEFAULTS.timeoutMs };
}

/** Reads `dns: { servers, timeout }`; a key left out or invalid (reported) takes its default. */
export function dnsSection(r: SourceReader, field: Field): DnsConfig {
    const entries = sectionEntries(r, field, DNS_KEYS);
    const serversField = entries.get('servers');
    let servers: string[] | null = null;
    if (serversField) {
        const items = r.list(serversField, 'DNS server addresses');
        if (items?.length === 0) r.fail(serversField, 'an empty list; leave "servers" out to use the system resolvers');
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
        timeoutMs: (timeoutField && r.duration(timeoutField, 1, MAX_TIMER_MS)) ?? DNS_DEFAULTS.timeoutMs,
    };
}
