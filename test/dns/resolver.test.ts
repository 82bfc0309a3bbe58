// Tests for the DNS stub resolver against the loopback test DNS server, over real UDP and TCP
// packets: node:dns answer shapes and error codes, CNAME chains, server failover, TCP fallback
// on truncation, RFC 5452 answer matching, the TTL-bound cache (positive and RFC 2308 negative),
// in-flight coalescing, the LRU bound, metrics, and mailauth running SPF through it.
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { spawn } from 'node:child_process';
import dns from 'node:dns';
import { once } from 'node:events';
import { after, before, beforeEach, describe, it } from 'node:test';
import dnsPacket from 'dns-packet';
import { authenticate, type DNSResolver } from 'mailauth';
import { createMetrics } from '../../src/metrics.ts';
import {
    createResolver,
    lookupCap,
    smtpServerResolver,
    type Resolver,
    type ResolverOptions,
} from '../../src/dns/resolver.ts';
import { startDnsServer, type DnsTestServer, type Zone } from '../helpers/dns-server.ts';
import { until } from '../helpers/until.ts';

const TIMEOUT = 200;

/** Asserts that a promise rejects with a node:dns-style error carrying `code`. */
async function rejectsWith(p: Promise<unknown>, code: string, extra: Record<string, unknown> = {}): Promise<void> {
    await assert.rejects(p, (err: unknown) => {
        assert.ok(err instanceof Error, `expected an Error, got ${String(err)}`);
        assert.equal((err as { code?: unknown }).code, code, err.message);
        for (const [k, v] of Object.entries(extra)) assert.equal((err as unknown as Record<string, unknown>)[k], v);
        return true;
    });
}

/** A UDP port on 127.0.0.1 where nothing listens (bound, then released). */
async function closedPort(): Promise<number> {
    const s = dgram.createSocket('udp4');
    await new Promise<void>((resolve) => s.bind(0, '127.0.0.1', resolve));
    const { port } = s.address();
    await new Promise<void>((resolve) => s.close(() => resolve()));
    return port;
}

/** A UDP socket on 127.0.0.1 that reads queries and never answers. */
async function silentServer(): Promise<{ address: string; seen: number; close(): Promise<void> }> {
    const s = dgram.createSocket('udp4');
    const state = { seen: 0 };
    s.on('message', () => state.seen++);
    await new Promise<void>((resolve) => s.bind(0, '127.0.0.1', resolve));
    return {
        address: `127.0.0.1:${s.address().port}`,
        get seen() {
            return state.seen;
        },
        close: () => new Promise<void>((resolve) => s.close(() => resolve())),
    };
}

const BASE_ZONE: Zone = {
    'example.test': {
        A: ['192.0.2.1', '192.0.2.2'],
        AAAA: ['2001:db8:0:0:0:0:0:1'],
        MX: [
            { exchange: 'mx1.example.test', priority: 10 },
            { exchange: 'mx2.example.test', priority: 20 },
        ],
        TXT: ['v=spf1 ip4:192.0.2.1 -all', ['part one ', 'part two'], 'k'.repeat(300)],
        NS: ['ns1.example.test'],
        SOA: { mname: 'ns1.example.test', rname: 'hostmaster.example.test', serial: 7, minimum: 120, ttl: 3600 },
    },
    'alias.example.test': { CNAME: 'hop.example.test' },
    'hop.example.test': { CNAME: 'example.test', ttl: 30 },
    'dangling.example.test': { CNAME: 'missing.example.test' },
    'nodata.example.test': { A: ['192.0.2.9'] },
    'servfail.example.test': { SERVFAIL: true },
    'refused.example.test': { REFUSED: true },
    'formerr.example.test': { FORMERR: true },
    'silent.example.test': { TIMEOUT: true },
    'nx.example.test': { NXDOMAIN: true },
    '1.2.0.192.in-addr.arpa': { PTR: ['host.example.test'] },
    '1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa': { PTR: ['v6host.example.test'] },
};

describe('DNS resolver', () => {
    let server: DnsTestServer;
    const resolvers: Resolver[] = [];
    let clock = 1_000_000;

    /** A resolver pointed at the test server, closed after the suite. */
    function make(opts: Partial<ResolverOptions> = {}): Resolver {
        const r = createResolver({ servers: [server.address], timeoutMs: TIMEOUT, now: () => clock, ...opts });
        resolvers.push(r);
        return r;
    }

    /** Queries the server saw for `name` (any type unless given). */
    const seen = (name: string, type?: string): number =>
        server.queries.filter((q) => q.name === name && (type === undefined || q.type === type)).length;

    before(async () => {
        server = await startDnsServer(BASE_ZONE);
    });
    after(async () => {
        for (const r of resolvers) r.close();
        await server.close();
    });
    beforeEach(() => {
        server.setZone(BASE_ZONE);
        server.queries.length = 0;
        clock = 1_000_000;
    });

    describe('answer shapes', () => {
        it('returns every record type in the shape node:dns resolve() uses', async () => {
            const r = make();
            assert.deepEqual(await r.resolve('example.test', 'A'), ['192.0.2.1', '192.0.2.2']);
            assert.deepEqual(await r.resolve('example.test', 'AAAA'), ['2001:db8::1']);
            assert.deepEqual(await r.resolve('example.test', 'MX'), [
                { exchange: 'mx1.example.test', priority: 10, type: 'MX' },
                { exchange: 'mx2.example.test', priority: 20, type: 'MX' },
            ]);
            assert.deepEqual(await r.resolve('example.test', 'TXT'), [
                ['v=spf1 ip4:192.0.2.1 -all'],
                ['part one ', 'part two'],
                ['k'.repeat(255), 'k'.repeat(45)],
            ]);
            assert.deepEqual(await r.resolve('example.test', 'NS'), ['ns1.example.test']);
            assert.deepEqual(await r.resolve('alias.example.test', 'CNAME'), ['hop.example.test']);
            assert.deepEqual(await r.resolve('1.2.0.192.in-addr.arpa', 'PTR'), ['host.example.test']);
            assert.deepEqual(await r.resolve('example.test', 'SOA'), {
                nsname: 'ns1.example.test',
                hostmaster: 'hostmaster.example.test',
                serial: 7,
                refresh: 3600,
                retry: 600,
                expire: 86400,
                minttl: 120,
            });
        });

        it('gives the same answers and errors as node:dns against the same server', async () => {
            const r = make({ cache: { maxEntries: 0 } });
            const node = new dns.promises.Resolver({ timeout: 1000, tries: 1 });
            node.setServers([server.address]);
            const cases: [string, string][] = [
                ['example.test', 'A'],
                ['example.test', 'AAAA'],
                ['example.test', 'MX'],
                ['example.test', 'TXT'],
                ['example.test', 'NS'],
                ['example.test', 'SOA'],
                ['alias.example.test', 'A'],
                ['alias.example.test', 'CNAME'],
                ['1.2.0.192.in-addr.arpa', 'PTR'],
                ['nowhere.example.test', 'TXT'],
                ['nodata.example.test', 'TXT'],
                ['dangling.example.test', 'A'],
                ['servfail.example.test', 'A'],
                ['refused.example.test', 'A'],
            ];
            // (JSON drops node's `type: undefined` on SOA answers)
            const outcome = (p: Promise<unknown>) =>
                p.then(
                    (v) => ({ ok: JSON.parse(JSON.stringify(v)) as unknown }),
                    (e: Error & { code?: string; syscall?: string; hostname?: string }) => ({
                        err: [e.code, e.syscall, e.hostname, e.message],
                    }),
                );
            for (const [name, type] of cases) {
                assert.deepEqual(
                    await outcome(r.resolve(name, type)),
                    await outcome(node.resolve(name, type)),
                    `${type} ${name}`,
                );
            }
            assert.deepEqual(await r.reverse('192.0.2.1'), await node.reverse('192.0.2.1'));
            assert.deepEqual(await outcome(r.reverse('192.0.2.77')), await outcome(node.reverse('192.0.2.77')));
        });

        it('reverse() looks up PTR under in-addr.arpa and ip6.arpa', async () => {
            const r = make();
            assert.deepEqual(await r.reverse('192.0.2.1'), ['host.example.test']);
            assert.deepEqual(await r.reverse('2001:db8::1'), ['v6host.example.test']);
            await rejectsWith(r.reverse('192.0.2.200'), 'ENOTFOUND', {
                syscall: 'getHostByAddr',
                hostname: '192.0.2.200',
            });
            await rejectsWith(r.reverse('not-an-ip'), 'EINVAL');
        });

        it('smtpServerResolver() adapts reverse() to the callback form smtp-server takes', async () => {
            const adapter = smtpServerResolver(make());
            const names = await new Promise<string[] | undefined>((resolve, reject) =>
                adapter.reverse('192.0.2.1', (err, hostnames) => (err ? reject(err) : resolve(hostnames))),
            );
            assert.deepEqual(names, ['host.example.test']);
            const failure = await new Promise<Error | null>((resolve) =>
                adapter.reverse('192.0.2.201', (err) => resolve(err)),
            );
            assert.equal((failure as { code?: string } | null)?.code, 'ENOTFOUND');
        });

        it('follows a CNAME chain in the answer and returns the final records', async () => {
            const r = make();
            assert.deepEqual(await r.resolve('alias.example.test', 'A'), ['192.0.2.1', '192.0.2.2']);
            assert.deepEqual(await r.resolve('ALIAS.example.test.', 'TXT'), await r.resolve('example.test', 'TXT'));
            assert.equal(seen('alias.example.test', 'A'), 1);
            assert.equal(seen('example.test', 'A'), 0, 'the chain came in one answer');
            // RFC 6604: the RCODE is the chain target's
            await rejectsWith(r.resolve('dangling.example.test', 'A'), 'ENOTFOUND');
        });

        it('normalises names: case and a trailing dot make no difference', async () => {
            const r = make();
            assert.deepEqual(await r.resolve('Example.TEST.', 'A'), ['192.0.2.1', '192.0.2.2']);
            assert.deepEqual(await r.resolve('example.test', 'A'), ['192.0.2.1', '192.0.2.2']);
            assert.equal(seen('example.test', 'A'), 1);
        });
    });

    describe('errors', () => {
        it('NXDOMAIN is ENOTFOUND and NODATA is ENODATA, named like node:dns', async () => {
            const r = make();
            await rejectsWith(r.resolve('nowhere.example.test', 'TXT'), 'ENOTFOUND', {
                syscall: 'queryTxt',
                hostname: 'nowhere.example.test',
                message: 'queryTxt ENOTFOUND nowhere.example.test',
            });
            await rejectsWith(r.resolve('nx.example.test', 'A'), 'ENOTFOUND');
            await rejectsWith(r.resolve('nodata.example.test', 'MX'), 'ENODATA', { syscall: 'queryMx' });
        });

        it('a negative answer from the cache is the same error as the first one, a new object each time', async () => {
            const r = make();
            const shapeOf = async (name: string, type: string): Promise<Error> => {
                const err = await r.resolve(name, type).then(
                    () => assert.fail('resolved'),
                    (e: unknown) => e,
                );
                assert.ok(err instanceof Error);
                return err;
            };
            for (const [name, type, code] of [
                ['nowhere.example.test', 'TXT', 'ENOTFOUND'],
                ['nodata.example.test', 'MX', 'ENODATA'],
            ] as const) {
                const first = await shapeOf(name, type);
                const cached = await shapeOf(name, type);
                assert.equal(seen(name), 1, 'the second answer came from the cache');
                assert.notEqual(cached, first);
                for (const err of [first, cached]) {
                    const e = err as Error & { code?: string; syscall?: string; hostname?: string };
                    assert.equal(e.code, code);
                    assert.equal(e.syscall, type === 'TXT' ? 'queryTxt' : 'queryMx');
                    assert.equal(e.hostname, name);
                    assert.equal(e.message, `${e.syscall} ${code} ${name}`);
                    assert.equal(e.name, 'Error');
                    assert.deepEqual(Object.keys(e).sort(), ['code', 'hostname', 'syscall']);
                }
            }
        });

        it('SERVFAIL, REFUSED and FORMERR map to ESERVFAIL, EREFUSED and EFORMERR', async () => {
            const r = make({ tries: 1 });
            await rejectsWith(r.resolve('servfail.example.test', 'TXT'), 'ESERVFAIL');
            await rejectsWith(r.resolve('refused.example.test', 'TXT'), 'EREFUSED');
            await rejectsWith(r.resolve('formerr.example.test', 'TXT'), 'EFORMERR');
            // RFC 6891 section 7: FORMERR without OPT means "no EDNS here", so it asked again without it
            assert.equal(seen('formerr.example.test'), 2);
        });

        it('a silent server gives ETIMEOUT after timeout × tries', async () => {
            const r = make({ tries: 2 });
            const started = Date.now();
            await rejectsWith(r.resolve('silent.example.test', 'TXT'), 'ETIMEOUT', { syscall: 'queryTxt' });
            const elapsed = Date.now() - started;
            assert.ok(elapsed >= 2 * TIMEOUT - 20, `gave up too early: ${elapsed} ms`);
            assert.ok(elapsed < 2 * TIMEOUT + 300, `took too long: ${elapsed} ms`);
            assert.equal(seen('silent.example.test'), 2);
        });

        it('a closed port gives ECONNREFUSED at once', async () => {
            const r = make({ servers: [`127.0.0.1:${await closedPort()}`], tries: 1, timeoutMs: 2000 });
            const started = Date.now();
            await rejectsWith(r.resolve('example.test', 'A'), 'ECONNREFUSED');
            assert.ok(Date.now() - started < 1000);
        });

        it('rejects invalid names with EBADNAME without sending anything', async () => {
            const r = make();
            const bad = [
                '',
                '.',
                'a..b',
                '.leading.test',
                `${'x'.repeat(64)}.test`,
                `${'abcdefghi.'.repeat(25)}toolong`,
                'with space.test',
            ];
            for (const name of bad) await rejectsWith(r.resolve(name, 'A'), 'EBADNAME', { hostname: name });
            assert.deepEqual(
                await r.resolve(`${'x'.repeat(63)}.test`, 'A').catch((e: { code: string }) => e.code),
                'ENOTFOUND',
            );
            assert.equal(server.queries.length, 1);
        });

        it('rejects record types it does not support', async () => {
            const r = make();
            await rejectsWith(r.resolve('example.test', 'HINFO'), 'ERR_INVALID_ARG_VALUE');
        });

        it('after close() lookups in flight and new lookups fail with ECANCELLED', async () => {
            const r = make({ timeoutMs: 5000 });
            const pending = r.resolve('silent.example.test', 'A');
            await new Promise((resolve) => setTimeout(resolve, 20));
            r.close();
            await rejectsWith(pending, 'ECANCELLED');
            await rejectsWith(r.resolve('example.test', 'A'), 'ECANCELLED');
        });

        it('past maxInFlight lookups on the network, a new one fails at once with ECANCELLED, counted as busy', async () => {
            const names = ['s1', 's2', 's3', 's4'].map((n) => `${n}.silent.test`);
            server.setZone({ ...BASE_ZONE, ...Object.fromEntries(names.map((n) => [n, { TIMEOUT: true }])) });
            const metrics = createMetrics('test');
            const r = make({ metrics, maxInFlight: 3, tries: 1, timeoutMs: 1000 });
            await r.resolve('example.test', 'A'); // cached
            const held = names.slice(0, 3).map((n) => r.resolve(n, 'A'));
            // a lookup already in flight is shared, the cache still answers
            const shared = r.resolve(names[0]!, 'A');
            const settled = held.map(() => false);
            for (const [i, p] of held.entries()) p.catch(() => (settled[i] = true));
            shared.catch(() => undefined);
            assert.deepEqual(await r.resolve('example.test', 'A'), ['192.0.2.1', '192.0.2.2']);
            await rejectsWith(r.resolve(names[3]!, 'A'), 'ECANCELLED', { syscall: 'queryA', hostname: names[3] });
            await rejectsWith(r.reverse('192.0.2.1'), 'ECANCELLED', { syscall: 'getHostByAddr' });
            assert.deepEqual(settled, [false, false, false], 'refused while the three were still waiting');
            assert.equal(seen(names[3]!), 0, 'nothing sent for it');
            assert.equal(seen('1.2.0.192.in-addr.arpa'), 0);
            const counter = await metrics.dnsQueries.get();
            const value = (type: string, result: string) =>
                counter.values.find((v) => v.labels.type === type && v.labels.result === result)?.value ?? 0;
            assert.equal(value('A', 'busy'), 1);
            assert.equal(value('PTR', 'busy'), 1);
            // once they have timed out, lookups go to the network again
            const ended = await Promise.allSettled([...held, shared]);
            assert.deepEqual(
                ended.map((e) => e.status === 'rejected' && (e.reason as { code?: unknown }).code),
                ['ETIMEOUT', 'ETIMEOUT', 'ETIMEOUT', 'ETIMEOUT'],
            );
            await rejectsWith(r.resolve(names[3]!, 'A'), 'ETIMEOUT');
            assert.equal(seen(names[3]!), 1);
        });

        it('warns of lookups refused at the cap at most once per 10 s, with the count since the last warning', async () => {
            const warnings: { fields: Record<string, unknown>; msg: string }[] = [];
            const logger = { warn: (fields: Record<string, unknown>, msg: string) => warnings.push({ fields, msg }) };
            const r = make({
                logger: logger as unknown as ResolverOptions['logger'],
                maxInFlight: 1,
                tries: 1,
                timeoutMs: 5_000,
            });
            const held = r.resolve('silent.example.test', 'A').catch(() => undefined);
            const refuse = (n: string) => rejectsWith(r.resolve(`${n}.example.test`, 'A'), 'ECANCELLED');
            await refuse('r1');
            assert.deepEqual(
                warnings.map((w) => w.fields),
                [{ refused: 1, maxInFlight: 1 }],
            );
            assert.match(warnings[0]!.msg, /^DNS lookups refused/);
            await refuse('r2');
            clock += 9_999;
            await refuse('r3');
            assert.equal(warnings.length, 1, 'one warning in 10 s');
            clock += 1;
            await refuse('r4');
            assert.deepEqual(
                warnings.map((w) => w.fields),
                [
                    { refused: 1, maxInFlight: 1 },
                    { refused: 3, maxInFlight: 1 },
                ],
            );
            r.close();
            await held;
        });

        it('warns of lookups no server answered once no server has answered for 10 s, at most once per 10 s', async () => {
            const warnings: { fields: Record<string, unknown>; msg: string }[] = [];
            const logger = { warn: (fields: Record<string, unknown>, msg: string) => warnings.push({ fields, msg }) };
            const names = ['a', 'b', 'c', 'd', 'e', 'f'].map((n) => `${n}.silent.test`);
            server.setZone({ ...BASE_ZONE, ...Object.fromEntries(names.map((n) => [n, { TIMEOUT: true }])) });
            const r = make({ logger: logger as unknown as ResolverOptions['logger'], tries: 1, timeoutMs: 50 });
            const silent = (n: string) => rejectsWith(r.resolve(`${n}.silent.test`, 'A'), 'ETIMEOUT');
            await r.resolve('example.test', 'A');
            // one slow name while the server answers others: no warning
            clock += 5_000;
            await silent('a');
            assert.equal(warnings.length, 0);
            // nothing answered for 10 s: the next failure is warned of, with the count
            clock += 5_000;
            await silent('b');
            assert.equal(warnings.length, 1);
            assert.match(warnings[0]!.msg, /^DNS servers not answering/);
            assert.deepEqual(warnings[0]!.fields, { failed: 2, silentForMs: 10_000, servers: [server.address] });
            // at most one per 10 s
            await silent('c');
            clock += 9_999;
            await silent('d');
            assert.equal(warnings.length, 1);
            clock += 1;
            await silent('e');
            assert.equal(warnings.length, 2);
            assert.equal(warnings[1]!.fields.failed, 3);
            // an answer (NXDOMAIN counts) ends the silence
            await rejectsWith(r.resolve('nx.example.test', 'A'), 'ENOTFOUND');
            clock += 9_999;
            await silent('f');
            assert.equal(warnings.length, 2, 'an answer came less than 10 s before');
            r.close();
        });

        it('gives up a lookup once every caller that passed a signal has aborted, and starts none for an aborted one', async () => {
            const metrics = createMetrics('test');
            const r = make({ metrics, tries: 2, timeoutMs: 5_000 });
            const codeOf = (p: Promise<unknown>) =>
                p.then(
                    () => 'answered',
                    (e: { code?: string }) => e.code,
                );
            // one caller: given up when its signal aborts, and not cached
            const one = new AbortController();
            const alone = codeOf(r.resolve('silent.example.test', 'A', one.signal));
            await until('the query was sent', () => seen('silent.example.test', 'A') === 1);
            one.abort();
            assert.equal(await alone, 'ECANCELLED');
            // two callers with signals: given up when the second aborts, not before
            const a = new AbortController();
            const b = new AbortController();
            let firstEnded = false;
            const first = codeOf(r.resolve('silent.example.test', 'TXT', a.signal)).finally(() => (firstEnded = true));
            const second = codeOf(r.resolve('silent.example.test', 'TXT', b.signal));
            await until('the query was sent', () => seen('silent.example.test', 'TXT') === 1);
            a.abort();
            await new Promise((resolve) => setImmediate(resolve));
            assert.equal(firstEnded, false, 'still looked up for the second caller');
            b.abort();
            assert.deepEqual(await Promise.all([first, second]), ['ECANCELLED', 'ECANCELLED']);
            // a caller without a signal keeps it to its end
            const c = new AbortController();
            const held = codeOf(r.reverse('192.0.2.99', c.signal));
            const kept = codeOf(r.reverse('192.0.2.99'));
            c.abort();
            assert.deepEqual(await Promise.all([held, kept]), ['ENOTFOUND', 'ENOTFOUND']);
            // a caller whose signal has aborted gets ECANCELLED at once, and nothing is sent
            const before = server.queries.length;
            await rejectsWith(r.resolve('example.test', 'MX', one.signal), 'ECANCELLED', { syscall: 'queryMx' });
            await rejectsWith(r.reverse('192.0.2.1', one.signal), 'ECANCELLED', { syscall: 'getHostByAddr' });
            assert.equal(server.queries.length, before);
            assert.equal(
                seen('silent.example.test', 'A'),
                1,
                'one try of the first lookup, given up before the second',
            );
            assert.equal(r.stats().entries, 1, 'only the NXDOMAIN answer is cached');
            const counter = await metrics.dnsQueries.get();
            const value = (type: string, result: string) =>
                counter.values.find((v) => v.labels.type === type && v.labels.result === result)?.value ?? 0;
            assert.equal(value('A', 'error'), 1);
            assert.equal(value('TXT', 'error'), 2);
        });

        it('a lookup its last caller gave up is no longer shared: a caller joining in the same tick starts another', async () => {
            const r = make();
            const gone = new AbortController();
            const given = r.resolve('example.test', 'A', gone.signal);
            gone.abort();
            const joined = r.resolve('example.test', 'A');
            await rejectsWith(given, 'ECANCELLED');
            assert.deepEqual(await joined, ['192.0.2.1', '192.0.2.2']);
        });

        it('caps lookups in flight at a quarter of the soft open-file limit, at least 256', () => {
            const limits = (soft: string, hard: string) =>
                'Limit                     Soft Limit           Hard Limit           Units     \n' +
                'Max cpu time              unlimited            unlimited            seconds   \n' +
                `Max open files            ${soft.padEnd(20)} ${hard.padEnd(20)} files     \n` +
                'Max locked memory         8388608              8388608              bytes     \n';
            assert.equal(lookupCap(limits('65536', '65536')), 16_384);
            assert.equal(lookupCap(limits('20000', '1048576')), 5000, 'the soft limit');
            assert.equal(lookupCap(limits('1024', '524288')), 256, 'at least 256');
            assert.equal(lookupCap(limits('unlimited', 'unlimited')), 4096);
            assert.equal(
                lookupCap('Max cpu time              unlimited            unlimited            seconds\n'),
                4096,
            );
            assert.equal(lookupCap(null), 4096, 'not Linux, or unreadable');
        });

        it('by default sends at most a quarter of the open-file limit of lookups at once', async () => {
            const silent = await silentServer();
            // a process limited to 1,200 files (Node raises a soft limit to the hard one): 300 lookups, the 301st refused without a packet
            const script = `
                import { createResolver } from ${JSON.stringify(new URL('../../src/dns/resolver.ts', import.meta.url).href)};
                const r = createResolver({ servers: [${JSON.stringify(silent.address)}], timeoutMs: 5000, tries: 1 });
                const held = Array.from({ length: 300 }, (_, i) => r.resolve('n' + i + '.silent.test', 'A').catch((e) => e.code));
                const refused = await r.resolve('n300.silent.test', 'A').catch((e) => e.code);
                r.close();
                console.log(JSON.stringify({ refused, held: [...new Set(await Promise.all(held))] }));
            `;
            try {
                const child = spawn(
                    'sh',
                    ['-c', 'ulimit -n 1200 && exec "$0" --input-type=module -e "$1"', process.execPath, script],
                    {
                        stdio: ['ignore', 'pipe', 'inherit'],
                    },
                );
                let out = '';
                child.stdout.on('data', (d: Buffer) => (out += d.toString()));
                const [code] = (await once(child, 'exit')) as [number | null];
                assert.equal(code, 0);
                assert.deepEqual(JSON.parse(out), { refused: 'ECANCELLED', held: ['ECANCELLED'] });
            } finally {
                await silent.close();
            }
        });
    });

    describe('servers and transport', () => {
        it('uses the second server when the first one is silent', async () => {
            const silent = await silentServer();
            try {
                const r = make({ servers: [silent.address, server.address], tries: 1 });
                const started = Date.now();
                assert.deepEqual(await r.resolve('example.test', 'A'), ['192.0.2.1', '192.0.2.2']);
                assert.ok(Date.now() - started >= TIMEOUT - 20, 'waited for the first server');
                assert.equal(silent.seen, 1);
            } finally {
                await silent.close();
            }
        });

        it('uses the next server after a refused port, a SERVFAIL or a REFUSED', async () => {
            const other = await startDnsServer({ 'example.test': { SERVFAIL: true }, 'b.test': { REFUSED: true } });
            try {
                const r = make({
                    servers: [`127.0.0.1:${await closedPort()}`, other.address, server.address],
                    tries: 1,
                });
                assert.deepEqual(await r.resolve('example.test', 'A'), ['192.0.2.1', '192.0.2.2']);
                assert.equal(other.queries.length, 1);
                // every server failing: the most telling error wins (a server's answer over a refused port)
                const r2 = make({ servers: [other.address, `127.0.0.1:${await closedPort()}`], tries: 1 });
                await rejectsWith(r2.resolve('example.test', 'A'), 'ESERVFAIL');
            } finally {
                await other.close();
            }
        });

        it('uses the next server when the first one cannot be connected to', async () => {
            // Linux refuses a UDP connect to a link-local address without a zone (EINVAL) and to
            // the broadcast address (EACCES); a host without IPv6 refuses the first one's socket
            const r = make({ servers: ['[fe80::1]:53', '255.255.255.255:53', server.address], tries: 1 });
            assert.deepEqual(await r.resolve('example.test', 'A'), ['192.0.2.1', '192.0.2.2']);
            assert.equal(seen('example.test', 'A'), 1);
            // alone it is a refused server, told at once
            const alone = make({ servers: ['255.255.255.255:53'], tries: 1 });
            await rejectsWith(alone.resolve('example.test', 'A'), 'ECONNREFUSED');
        });

        it('repeats a truncated UDP answer over TCP and returns the full answer (RFC 7766)', async () => {
            // Six 255-byte strings: about 1.6 KB, over the EDNS(0) UDP size of 1232.
            const big = Array.from({ length: 6 }, (_, i) => `${i}`.repeat(255));
            server.setZone({ 'big.example.test': { TXT: big } });
            const r = make();
            const txt = (await r.resolve('big.example.test', 'TXT')) as string[][];
            assert.deepEqual(
                txt,
                big.map((s) => [s]),
            );
            assert.deepEqual(
                server.queries.map((q) => q.transport),
                ['udp', 'tcp'],
            );
        });

        it('the test server truncates at 512 bytes for a query without EDNS(0)', async () => {
            server.setZone({ 'mid.example.test': { TXT: ['m'.repeat(600)] } });
            const s = dgram.createSocket('udp4');
            try {
                const reply = await new Promise<Buffer>((resolve) => {
                    s.on('message', (msg) => resolve(msg));
                    s.send(
                        dnsPacket.encode({
                            type: 'query',
                            id: 4242,
                            flags: dnsPacket.RECURSION_DESIRED,
                            questions: [{ name: 'mid.example.test', type: 'TXT', class: 'IN' }],
                        }),
                        server.port,
                        '127.0.0.1',
                    );
                });
                const p = dnsPacket.decode(reply);
                assert.equal(p.flag_tc, true);
                assert.equal(p.answers?.length, 0);
            } finally {
                s.close();
            }
            const r = make();
            assert.deepEqual(await r.resolve('mid.example.test', 'TXT'), [
                ['m'.repeat(255), 'm'.repeat(255), 'm'.repeat(90)],
            ]);
        });

        it('takes answers from an IPv6 server written in a non-canonical form', async () => {
            const s = dgram.createSocket('udp6');
            s.on('message', (msg, peer) => {
                const q = dnsPacket.decode(msg);
                const name = q.questions?.[0]?.name ?? '';
                const reply = dnsPacket.encode({
                    type: 'response',
                    id: q.id ?? 0,
                    flags: dnsPacket.RECURSION_DESIRED,
                    questions: q.questions ?? [],
                    answers: [{ type: 'A', name, ttl: 60, data: '192.0.2.81' }],
                });
                s.send(reply, peer.port, peer.address);
            });
            await new Promise<void>((resolve) => s.bind(0, '::1', resolve));
            try {
                const port = s.address().port;
                // a zone on an address that is not link-local: the answer comes from ::1, without one
                for (const server of [
                    `[0:0:0:0:0:0:0:1]:${port}`,
                    `[::0001]:${port}`,
                    `[0000::1]:${port}`,
                    `[::1%lo]:${port}`,
                ]) {
                    const r = make({ servers: [server], tries: 1, cache: { maxEntries: 0 } });
                    assert.deepEqual(await r.resolve('v6.example.test', 'A'), ['192.0.2.81'], server);
                }
            } finally {
                await new Promise<void>((resolve) => s.close(() => resolve()));
            }
        });

        it('accepts only an answer with its own ID and question, and randomises ID and source port (RFC 5452)', async () => {
            const s = dgram.createSocket('udp4');
            const ports: number[] = [];
            const ids: number[] = [];
            s.on('message', (msg, peer) => {
                const q = dnsPacket.decode(msg);
                ports.push(peer.port);
                ids.push(q.id ?? -1);
                const reply = (id: number, name: string, ip: string) =>
                    dnsPacket.encode({
                        type: 'response',
                        id,
                        flags: dnsPacket.RECURSION_DESIRED,
                        questions: [{ name, type: 'A', class: 'IN' }],
                        answers: [{ type: 'A', name, ttl: 60, data: ip }],
                    });
                const name = q.questions?.[0]?.name ?? '';
                // forged: wrong ID, then right ID but another question; then the real answer
                s.send(reply(((q.id ?? 0) + 1) & 0xffff, name, '203.0.113.66'), peer.port, peer.address);
                s.send(reply(q.id ?? 0, `evil.${name}`, '203.0.113.67'), peer.port, peer.address);
                setTimeout(() => s.send(reply(q.id ?? 0, name, '192.0.2.80'), peer.port, peer.address), 10);
            });
            await new Promise<void>((resolve) => s.bind(0, '127.0.0.1', resolve));
            try {
                const r = make({ servers: [`127.0.0.1:${s.address().port}`], tries: 1 });
                for (let i = 0; i < 6; i++)
                    assert.deepEqual(await r.resolve(`h${i}.example.test`, 'A'), ['192.0.2.80']);
                assert.ok(new Set(ports).size >= 5, `source ports were not randomised: ${ports.join(',')}`);
                assert.ok(new Set(ids).size >= 5, `ids were not randomised: ${ids.join(',')}`);
            } finally {
                await new Promise<void>((resolve) => s.close(() => resolve()));
            }
        });
    });

    describe('cache', () => {
        it('serves repeated lookups from the cache until the TTL expires', async () => {
            server.setZone({ 'ttl.example.test': { TXT: ['hello'], ttl: 60 } });
            const r = make();
            for (let i = 0; i < 5; i++) assert.deepEqual(await r.resolve('ttl.example.test', 'TXT'), [['hello']]);
            assert.equal(seen('ttl.example.test'), 1);
            clock += 59_999;
            await r.resolve('ttl.example.test', 'TXT');
            assert.equal(seen('ttl.example.test'), 1);
            clock += 1;
            await r.resolve('ttl.example.test', 'TXT');
            assert.equal(seen('ttl.example.test'), 2);
            assert.deepEqual({ ...r.stats(), bytes: 0 }, { entries: 1, hits: 5, misses: 2, bytes: 0 });
        });

        it('a CNAME chain is cached for the smallest TTL along it', async () => {
            const r = make();
            await r.resolve('alias.example.test', 'A'); // hop has TTL 30, the rest 300
            clock += 29_999;
            await r.resolve('alias.example.test', 'A');
            assert.equal(seen('alias.example.test'), 1);
            clock += 1;
            await r.resolve('alias.example.test', 'A');
            assert.equal(seen('alias.example.test'), 2);
        });

        it('clamps TTLs to [minTtl, maxTtl]', async () => {
            server.setZone({
                'short.example.test': { A: ['192.0.2.3'], ttl: 0 },
                'long.example.test': { A: ['192.0.2.4'], ttl: 86400 },
            });
            const r = make({ cache: { minTtlMs: 5000, maxTtlMs: 3_600_000 } });
            await r.resolve('short.example.test', 'A');
            await r.resolve('long.example.test', 'A');
            clock += 4999;
            await r.resolve('short.example.test', 'A');
            assert.equal(seen('short.example.test'), 1, 'TTL 0 still cached for minTtl');
            clock += 1;
            await r.resolve('short.example.test', 'A');
            assert.equal(seen('short.example.test'), 2);
            clock = 1_000_000 + 3_599_999;
            await r.resolve('long.example.test', 'A');
            assert.equal(seen('long.example.test'), 1);
            clock += 1;
            await r.resolve('long.example.test', 'A');
            assert.equal(seen('long.example.test'), 2, 'TTL 86400 capped at maxTtl');
        });

        it('caches NXDOMAIN and NODATA for min(SOA TTL, SOA MINIMUM) (RFC 2308)', async () => {
            const r = make();
            // apex example.test: SOA TTL 3600, MINIMUM 120 → 120 s
            await rejectsWith(r.resolve('nowhere.example.test', 'TXT'), 'ENOTFOUND');
            await rejectsWith(r.resolve('nodata.example.test', 'TXT'), 'ENODATA');
            clock += 119_999;
            await rejectsWith(r.resolve('nowhere.example.test', 'TXT'), 'ENOTFOUND');
            await rejectsWith(r.resolve('nodata.example.test', 'TXT'), 'ENODATA');
            assert.equal(seen('nowhere.example.test'), 1);
            assert.equal(seen('nodata.example.test'), 1);
            clock += 1;
            await rejectsWith(r.resolve('nowhere.example.test', 'TXT'), 'ENOTFOUND');
            await rejectsWith(r.resolve('nodata.example.test', 'TXT'), 'ENODATA');
            assert.equal(seen('nowhere.example.test'), 2);
            assert.equal(seen('nodata.example.test'), 2);
        });

        it('uses the SOA TTL when it is below MINIMUM, and caps at maxNegativeTtl', async () => {
            server.setZone({
                'a.test': { SOA: { ttl: 30, minimum: 600 } },
                'b.test': { SOA: { ttl: 86400, minimum: 86400 } },
            });
            const r = make({ cache: { maxNegativeTtlMs: 900_000 } });
            await rejectsWith(r.resolve('x.a.test', 'A'), 'ENOTFOUND');
            await rejectsWith(r.resolve('x.b.test', 'A'), 'ENOTFOUND');
            clock += 30_000;
            await rejectsWith(r.resolve('x.a.test', 'A'), 'ENOTFOUND');
            assert.equal(seen('x.a.test'), 2);
            clock = 1_000_000 + 899_999;
            await rejectsWith(r.resolve('x.b.test', 'A'), 'ENOTFOUND');
            assert.equal(seen('x.b.test'), 1);
            clock += 1;
            await rejectsWith(r.resolve('x.b.test', 'A'), 'ENOTFOUND');
            assert.equal(seen('x.b.test'), 2);
        });

        it('does not cache a negative answer without an SOA', async () => {
            server.setZone({ soa: null, 'present.test': { A: ['192.0.2.5'] } });
            const r = make();
            await rejectsWith(r.resolve('absent.test', 'A'), 'ENOTFOUND');
            await rejectsWith(r.resolve('absent.test', 'A'), 'ENOTFOUND');
            await rejectsWith(r.resolve('present.test', 'TXT'), 'ENODATA');
            await rejectsWith(r.resolve('present.test', 'TXT'), 'ENODATA');
            assert.equal(seen('absent.test'), 2);
            assert.equal(seen('present.test'), 2);
        });

        it('never caches SERVFAIL, REFUSED or timeouts', async () => {
            const r = make({ tries: 1, timeoutMs: 100 });
            for (let i = 0; i < 2; i++) {
                await rejectsWith(r.resolve('servfail.example.test', 'A'), 'ESERVFAIL');
                await rejectsWith(r.resolve('refused.example.test', 'A'), 'EREFUSED');
                await rejectsWith(r.resolve('silent.example.test', 'A'), 'ETIMEOUT');
            }
            assert.equal(seen('servfail.example.test'), 2);
            assert.equal(seen('refused.example.test'), 2);
            assert.equal(seen('silent.example.test'), 2);
            assert.equal(r.stats().entries, 0);
        });

        it('coalesces identical lookups in flight into one query', async () => {
            const r = make();
            const answers = await Promise.all(
                Array.from({ length: 10 }, () => r.resolve('example.test', 'TXT') as Promise<string[][]>),
            );
            assert.equal(seen('example.test', 'TXT'), 1);
            for (const a of answers) assert.deepEqual(a, answers[0]);
            // each caller has its own copy
            answers[0]?.[0]?.push('changed');
            assert.notDeepEqual(answers[1], answers[0]);
            const errors = await Promise.allSettled(
                Array.from({ length: 10 }, () => r.resolve('silent.example.test', 'A')),
            );
            assert.ok(errors.every((e) => e.status === 'rejected'));
            assert.equal(seen('silent.example.test'), 2, 'one exchange per try, shared by all ten');
        });

        it('runs many different lookups at once without warnings', async () => {
            const warnings: Error[] = [];
            const spy = (w: Error) => warnings.push(w);
            process.on('warning', spy);
            try {
                const r = make();
                const names = Array.from({ length: 60 }, (_, i) => `n${i}.example.test`);
                const results = await Promise.allSettled(names.map((n) => r.resolve(n, 'A')));
                assert.ok(results.every((x) => x.status === 'rejected'));
                assert.equal(server.queries.length, 60);
                await new Promise((resolve) => setImmediate(resolve));
                assert.deepEqual(
                    warnings.map((w) => w.message),
                    [],
                );
            } finally {
                process.off('warning', spy);
            }
        });

        it('hands out copies: a caller editing its answer does not change the cache', async () => {
            const r = make();
            const first = (await r.resolve('example.test', 'MX')) as { exchange: string }[];
            first.reverse();
            (first[0] as { exchange: string }).exchange = 'evil.test';
            const second = (await r.resolve('example.test', 'MX')) as { exchange: string }[];
            assert.equal(second[0]?.exchange, 'mx1.example.test');
        });

        it('is bounded: the least recently used entry goes first', async () => {
            server.setZone({
                'a.test': { A: ['192.0.2.1'] },
                'b.test': { A: ['192.0.2.2'] },
                'c.test': { A: ['192.0.2.3'] },
            });
            const r = make({ cache: { maxEntries: 2 } });
            await r.resolve('a.test', 'A');
            await r.resolve('b.test', 'A');
            await r.resolve('a.test', 'A'); // a is now the most recent
            await r.resolve('c.test', 'A'); // evicts b
            assert.equal(r.stats().entries, 2);
            await r.resolve('a.test', 'A');
            assert.equal(seen('a.test'), 1);
            await r.resolve('b.test', 'A');
            assert.equal(seen('b.test'), 2);
        });

        it('is bounded by bytes too: large answers push out the oldest ones long before the entry bound', async () => {
            const zone: Zone = {};
            const addresses = Array.from({ length: 20 }, (_, i) => `198.51.100.${i + 1}`);
            for (let i = 0; i < 200; i++) zone[`big${i}.test`] = { A: addresses };
            server.setZone(zone);
            const maxBytes = 128 * 1024;
            const r = make({ cache: { maxBytes } });
            for (let i = 0; i < 200; i++) assert.deepEqual(await r.resolve(`big${i}.test`, 'A'), addresses);
            const { entries, bytes } = r.stats();
            assert.ok(bytes <= maxBytes, `${bytes} bytes cached, bound ${maxBytes}`);
            assert.ok(entries > 50 && entries < 200, `${entries} entries`);
            // each answer is counted for at least what its strings and array hold
            assert.ok(bytes / entries > 20 * (32 + 12), `${bytes / entries} bytes per entry`);
            await r.resolve('big199.test', 'A');
            assert.equal(seen('big199.test'), 1);
            await r.resolve('big0.test', 'A');
            assert.equal(seen('big0.test'), 2);
        });

        it('does not cache an answer larger than 1/64 of the byte bound', async () => {
            server.setZone({
                'wide.test': { A: Array.from({ length: 40 }, (_, i) => `198.51.100.${i + 1}`) },
                'narrow.test': { A: ['198.51.100.1'] },
            });
            const r = make({ cache: { maxBytes: 64 * 1024 } }); // 1 KiB per answer at most
            for (let i = 0; i < 3; i++) {
                assert.equal(((await r.resolve('wide.test', 'A')) as string[]).length, 40);
                await r.resolve('narrow.test', 'A');
            }
            assert.equal(seen('wide.test'), 3);
            assert.equal(seen('narrow.test'), 1);
            assert.equal(r.stats().entries, 1);
        });

        it('drops expired entries as new answers are stored, not only when they are read again', async () => {
            const zone: Zone = {};
            for (let i = 10; i < 50; i++) zone[`n${i}.test`] = { A: ['192.0.2.1'], ttl: 60 };
            server.setZone(zone);
            const r = make();
            for (let i = 10; i < 30; i++) await r.resolve(`n${i}.test`, 'A');
            assert.equal(r.stats().entries, 20);
            const early = r.stats().bytes;
            clock += 61_000; // all twenty have expired; none is asked again
            for (let i = 30; i < 50; i++) await r.resolve(`n${i}.test`, 'A');
            assert.equal(r.stats().entries, 20);
            assert.equal(r.stats().bytes, early);
        });

        it('keeps 10 names of a PTR answer, as many as any caller reads', async () => {
            const names = Array.from({ length: 30 }, (_, i) => `host${i}.example.test`);
            server.setZone({ '7.2.0.192.in-addr.arpa': { PTR: names } });
            const r = make();
            assert.deepEqual(await r.reverse('192.0.2.7'), names.slice(0, 10));
            assert.deepEqual(await r.resolve('7.2.0.192.in-addr.arpa', 'PTR'), names.slice(0, 10));
        });

        it('a cached or shared failure never becomes an unhandled rejection', async () => {
            const unhandled: unknown[] = [];
            const spy = (reason: unknown) => unhandled.push(reason);
            process.on('unhandledRejection', spy);
            try {
                const r = make({ tries: 1, timeoutMs: 50 });
                // negative answers cached, then served from the cache several times
                for (let i = 0; i < 3; i++) await rejectsWith(r.resolve('nowhere.example.test', 'A'), 'ENOTFOUND');
                // shared failures where only some callers are still awaited
                await Promise.allSettled([
                    r.resolve('silent.example.test', 'A'),
                    r.resolve('silent.example.test', 'A'),
                ]);
                await new Promise((resolve) => setTimeout(resolve, 50));
                assert.deepEqual(unhandled, []);
            } finally {
                process.off('unhandledRejection', spy);
            }
        });
    });

    describe('metrics', () => {
        it('tells when a cached answer expires, in its clock, and counts hits served from a copy elsewhere', async () => {
            server.setZone({ 'ttl.example.test': { TXT: ['hello'], ttl: 60 } });
            const metrics = createMetrics('test');
            const r = make({ metrics, tries: 1 });
            assert.equal(r.expiresAt!('ttl.example.test', 'TXT'), null, 'nothing cached yet');
            await r.resolve('ttl.example.test', 'TXT');
            assert.equal(r.now!(), clock);
            // the spelling the cache normalises to is the same question
            assert.equal(r.expiresAt!('TTL.example.test.', 'txt'), clock + 60_000);
            assert.equal(r.expiresAt!('ttl.example.test', 'A'), null, 'another type');
            assert.equal(r.expiresAt!('bad..name', 'TXT'), null);
            assert.equal(r.expiresAt!('ttl.example.test', 'NOPE'), null);
            // a negative answer: min(SOA TTL, MINIMUM) of the default SOA, 300 s
            await rejectsWith(r.resolve('nowhere.example.test', 'TXT'), 'ENOTFOUND');
            assert.equal(r.expiresAt!('nowhere.example.test', 'TXT'), clock + 300_000);
            clock += 60_000;
            assert.equal(r.expiresAt!('ttl.example.test', 'TXT'), null, 'expired');
            const before = r.stats().hits;
            r.countHits!('txt', 3);
            r.countHits!('TXT', 0);
            r.countHits!('NOPE', 5);
            assert.equal(r.stats().hits, before + 3);
            const text = await metrics.registry.metrics();
            assert.match(text, /mailwarden_dns_queries_total\{type="TXT",result="hit"\} 3/);
        });

        it('counts hits, misses and errors by type and times network lookups', async () => {
            const metrics = createMetrics('test');
            const r = make({ metrics, tries: 1 });
            await r.resolve('example.test', 'TXT'); // miss
            await r.resolve('example.test', 'TXT'); // hit
            await rejectsWith(r.resolve('nowhere.example.test', 'TXT'), 'ENOTFOUND'); // miss (negative answer)
            await rejectsWith(r.resolve('nowhere.example.test', 'TXT'), 'ENOTFOUND'); // hit (negative cache)
            await rejectsWith(r.resolve('servfail.example.test', 'A'), 'ESERVFAIL'); // error
            await rejectsWith(r.resolve('bad..name', 'MX'), 'EBADNAME'); // error
            const counter = await metrics.dnsQueries.get();
            const value = (type: string, result: string) =>
                counter.values.find((v) => v.labels.type === type && v.labels.result === result)?.value ?? 0;
            assert.equal(value('TXT', 'miss'), 2);
            assert.equal(value('TXT', 'hit'), 2);
            assert.equal(value('TXT', 'error'), 0);
            assert.equal(value('A', 'error'), 1);
            assert.equal(value('MX', 'error'), 1);
            const text = await metrics.registry.metrics();
            assert.match(text, /mailwarden_dns_queries_total\{type="TXT",result="hit"\} 2/);
            assert.match(text, /mailwarden_dns_query_duration_seconds_count\{type="TXT"\} 2/);
            assert.match(text, /mailwarden_dns_query_duration_seconds_count\{type="A"\} 1/);
        });
    });

    describe('mailauth 7.1.0 through the resolver', () => {
        const message = [
            'From: Sender <user@spf.example.test>',
            'To: rcpt@example.net',
            'Subject: hello',
            'Message-ID: <1@spf.example.test>',
            'Date: Mon, 30 Nov 2026 10:00:00 +0000',
            '',
            'Hello.',
            '',
        ].join('\r\n');
        const opts = {
            ip: '192.0.2.1',
            helo: 'mail.spf.example.test',
            sender: 'user@spf.example.test',
            mta: 'mx.example.net',
            disableBimi: true,
        };

        it('gives spf=pass for an ip4 mechanism that matches', async () => {
            server.setZone({ 'spf.example.test': { TXT: ['v=spf1 ip4:192.0.2.1 -all'] } });
            const r = make();
            const res = await authenticate(message, { ...opts, resolver: r.resolve as DNSResolver });
            assert.equal(res.spf && res.spf.status.result, 'pass');
            assert.match(res.headers, /spf=pass/);
            assert.ok(seen('spf.example.test', 'TXT') >= 1);
        });

        it('gives spf=temperror when the zone does not answer', async () => {
            server.setZone({ 'spf.example.test': { TIMEOUT: true } });
            const r = make({ tries: 1 });
            const res = await authenticate(message, { ...opts, resolver: r.resolve as DNSResolver });
            assert.equal(res.spf && res.spf.status.result, 'temperror');
        });
    });
});
