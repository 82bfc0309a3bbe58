/**
 * Finds the system's DNS servers when the config names none: the `nameserver` lines of
 * /etc/resolv.conf (resolv.conf(5)), else the servers node:dns was initialised with
 * (`dns.getServers()` only reads configuration and sends nothing), else 127.0.0.1.
 * Search lists, `ndots` and `options` are ignored: the product only looks up fully
 * qualified names. Must not send any query.
 */
import { readFileSync } from 'node:fs';
import dns from 'node:dns';
import net from 'node:net';

export const RESOLV_CONF = '/etc/resolv.conf';

/** The `nameserver` addresses of a resolv.conf text, in order, as server entries. */
export function parseResolvConf(text: string): string[] {
    const servers: string[] = [];
    for (const raw of text.split('\n')) {
        const line = raw.replace(/[#;].*$/, '').trim();
        const m = /^nameserver\s+(\S+)$/.exec(line);
        if (!m?.[1]) continue;
        const addr = m[1];
        if (net.isIP(addr) !== 0) servers.push(net.isIPv6(addr) ? `[${addr}]:53` : addr);
    }
    return servers;
}

export function systemServers(path: string = RESOLV_CONF): string[] {
    try {
        const found = parseResolvConf(readFileSync(path, 'utf8'));
        if (found.length > 0) return found;
    } catch {
        // no resolv.conf: fall through
    }
    const fromNode = dns.getServers();
    return fromNode.length > 0 ? fromNode : ['127.0.0.1'];
}
