/**
 * Measures what the reputation check costs per connection: CPU time of this process
 * (process.cpuUsage: the lookups, the answers' classification, the HELO and reverse-name
 * facts) and the DNS queries that reach a loopback DNS server serving the list zones, for
 * clients never seen (every answer from the network) and for the same clients again (every
 * answer from the resolver's cache), with two address lists, one allow list and one domain list.
 *
 *   node scripts/reputation-cost.ts [CLIENTS]     # default 2000 distinct client addresses
 *
 * Development tool: it is not part of the running product. Loopback only.
 */
import { createResolver } from '../src/dns/resolver.ts';
import { createMetrics } from '../src/metrics.ts';
import type { CheckContext } from '../src/types.ts';
import { createReputationCheck } from '../src/checks/reputation.ts';
import { ReputationLookup } from '../src/reputation/check.ts';
import { configuredSites } from '../src/reputation/sites.ts';
import { ZoneHealth } from '../src/reputation/zone-health.ts';
import { startDnsServer, type Zone } from '../test/helpers/dns-server.ts';

const clients = Number(process.argv[2] ?? 2000);

const zone: Zone = {
    '2.0.0.127.bl.test': { A: ['127.0.0.2'], ttl: 3600 },
    '2.0.0.127.bl2.test': { A: ['127.0.0.2'], ttl: 3600 },
    '2.0.0.127.wl.test': { A: ['127.0.0.2'], ttl: 3600 },
    'test.dbl.test': { A: ['127.0.1.2'], ttl: 3600 },
    'mail.sender.example': { A: ['192.0.2.1'], ttl: 3600 },
    // negative answers are cached for an hour too (the SOA minimum)
    soa: { minimum: 3600, ttl: 3600 },
};
// one client in ten is listed by the first list
for (let i = 0; i < clients; i += 10) zone[`${i % 250}.${Math.floor(i / 250)}.51.198.bl.test`] = { A: ['127.0.0.2'] };

const dns = await startDnsServer(zone);
const resolver = createResolver({ servers: [dns.address], timeoutMs: 1000, cache: { maxEntries: 100_000 } });
const lists = {
    dnsbl: configuredSites(['bl.test=127.0.0.[2..11]*3', 'bl2.test*2'], 'dnsbl'),
    dnswl: configuredSites(['wl.test*-5'], 'dnswl'),
    rhsbl: configuredSites(['dbl.test'], 'rhsbl'),
};
const health = new ZoneHealth(
    [
        ...[...lists.dnsbl, ...lists.dnswl].map((s) => ({ site: s.site, kind: 'address' as const })),
        ...lists.rhsbl.map((s) => ({ site: s.site, kind: 'domain' as const })),
    ],
    { resolve: resolver.resolve, now: Date.now, intervalMs: 3_600_000, retryMs: 3_600_000 },
);
await health.probeDue();
const lookup = new ReputationLookup({
    resolve: resolver.resolve,
    reverse: resolver.reverse,
    lists,
    health,
    dnsTimeoutMs: 1000,
    own: { hostname: 'mx.example.test', domains: ['example.test'], addresses: [] },
    metrics: createMetrics('bench'),
});
const check = createReputationCheck(lookup, 2000);

function ctx(stage: 'helo' | 'mail', ip: string): CheckContext {
    return {
        stage,
        sessionId: 'bench',
        facts: stage === 'mail' ? { 'mail.from.domain': 'sender.example' } : {},
        client: { ip, port: 1, ptr: null, helo: 'mail.sender.example', proto: 'ESMTP', login: null },
        envelope: { mailFrom: null, rcptTo: [] },
        message: null,
    };
}

const ip = (i: number): string => `198.51.${Math.floor(i / 250)}.${i % 250}`;

/** One connection as the session makes it: prefetch at connect, then the helo and mail stages. */
async function connection(i: number): Promise<void> {
    const signal = new AbortController().signal;
    check.prefetch?.(ctx('helo', ip(i)).client, signal);
    await check.run(ctx('helo', ip(i)), signal);
    await check.run(ctx('mail', ip(i)), signal);
}

async function measure(label: string): Promise<void> {
    const queriesBefore = dns.queries.length;
    const cpu = process.cpuUsage();
    const started = performance.now();
    // 20 connections at a time, as a busy MX sees them
    for (let i = 0; i < clients; i += 20) {
        await Promise.all(Array.from({ length: Math.min(20, clients - i) }, (_, k) => connection(i + k)));
    }
    const used = process.cpuUsage(cpu);
    const wall = performance.now() - started;
    const queries = dns.queries.length - queriesBefore;
    console.log(
        `${label.padEnd(9)} ${clients} connections: ${((used.user + used.system) / clients).toFixed(0)} µs CPU ` +
            `(user ${(used.user / clients).toFixed(0)}, system ${(used.system / clients).toFixed(0)}), ` +
            `${(queries / clients).toFixed(2)} DNS queries sent, ${(wall / clients).toFixed(2)} ms wall per connection`,
    );
}

await measure('uncached');
await measure('cached');
resolver.close();
await dns.close();
