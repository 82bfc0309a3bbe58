/**
 * Finds the system's DNS servers when the config names none: the `nameserver` lines of
 * /etc/resolv.conf read as glibc reads them (resolv.conf(5): the first word after `nameserver`,
 * at most MAXNS servers), else the servers node:dns was initialised with
 * (`dns.getServers()` only reads configuration and sends nothing), else 127.0.0.1.
 * Search lists, `ndots` and `options` are ignored: the product only looks up fully
 * qualified names. Must not send any query.
 */
import { readFileSync } from 'node:fs';
import dns from 'node:dns';
import net from 'node:net';

export const RESOLV_CONF = '/etc/resolv.conf';

/** The most servers glibc takes from resolv.conf (MAXNS in resolv.h); later `nameserver` lines are ignored. */
export const MAXNS = 3;

/**
 * The `nameserver` addresses of a resolv.conf text, in order, as server entries: the first word
 * after `nameserver` (the rest of the line is ignored) and the first MAXNS valid ones, as glibc.
 */
export function parseResolvConf(text: string): string[] {
    const servers: string[] = [];
    for (const raw of text.split('\n')) {
        const line = raw.replace(/[#;].*$/, '').trim();
        const m = /^nameserver\s+(\S+)/.exec(line);
        if (!m?.[1]) continue;
        const addr = m[1];
        if (net.isIP(addr) !== 0) servers.push(net.isIPv6(addr) ? `[${addr}]:53` : addr);
        if (servers.length === MAXNS) break;
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
