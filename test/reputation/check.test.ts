/**
 * The reputation check against a real DNS server on loopback serving list zones: listed and
 * not listed, return-code filters, weights summed, IPv6 nibble queries, domain lists on the
 * HELO name and the sender domain (the registrable domain of a name too long for a zone),
 * refusal codes counted as errors (never listings) that disable the list, a list that answers
 * everything disabled by its probe and enabled again once it behaves, the HELO facts and the
 * generic reverse name, and the DNSWL credit answer.
 */
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, it } from 'node:test';
import { createResolver, type Resolver } from '../../src/dns/resolver.ts';
import { createMetrics, type Metrics } from '../../src/metrics.ts';
import type { CheckContext } from '../../src/types.ts';
import { createReputationCheck } from '../../src/checks/reputation.ts';
import { ReputationLookup, type ReputationLists } from '../../src/reputation/check.ts';
import { configuredSites } from '../../src/reputation/sites.ts';
import { ZoneHealth } from '../../src/reputation/zone-health.ts';
import type { Stage } from '../../src/types.ts';
import { startDnsServer, type DnsTestServer, type Zone } from '../helpers/dns-server.ts';
import { until } from '../helpers/until.ts';

/** The RFC 5782 test entries of a healthy address list and of a healthy domain list. */
function healthyAddressList(zone: string): Zone {
    return { [`2.0.0.127.${zone}`]: { A: ['127.0.0.2'] } };
}
function healthyDomainList(zone: string): Zone {
    return { [`test.${zone}`]: { A: ['127.0.1.2'] } };
}

const BASE: Zone = {
    ...healthyAddressList('bl.test'),
    ...healthyAddressList('bl2.test'),
    ...healthyAddressList('wl.test'),
    ...healthyAddressList('refusing.test'),
    ...healthyDomainList('dbl.test'),
    // 192.0.2.10: listed by both block lists, one code inside and one outside bl.test's filter
    '10.2.0.192.bl.test': { A: ['127.0.0.4', '127.0.0.20'] },
    '10.2.0.192.bl2.test': { A: ['127.0.0.2'] },
    // 192.0.2.11: bl.test answers only a code outside its filter: an error, not a listing
    '11.2.0.192.bl.test': { A: ['127.0.0.20'] },
    // 192.0.2.12: allow-listed
    '12.2.0.192.wl.test': { A: ['127.0.10.2'] },
    // 192.0.2.13: the list refuses the query (Spamhaus: public resolver)
    '13.2.0.192.refusing.test': { A: ['127.255.255.254'] },
    // 2001:db8::25 in nibble form
    '5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test': { A: ['127.0.0.3'] },
    'spam.example.dbl.test': { A: ['127.0.1.2'] },
    'spam.example': { A: ['192.0.2.200'] },
    'mail.good.example': { A: ['192.0.2.10'] },
    '10.2.0.192.in-addr.arpa': { PTR: ['192-0-2-10.dyn.isp.example.'] },
    '12.2.0.192.in-addr.arpa': { PTR: ['mail.good.example.'] },
};

function ctx(stage: Stage, ip: string, helo: string | null, facts: Record<string, string> = {}): CheckContext {
    return {
        stage,
        sessionId: 'test',
        facts,
        client: { ip, port: 1, ptr: null, helo, proto: 'ESMTP', login: null },
        envelope: { mailFrom: null, rcptTo: [] },
        message: null,
    };
}

async function value(metrics: Metrics, name: string, labels: Record<string, string>): Promise<number> {
    const metric = metrics.registry.getSingleMetric(`mailwarden_${name}`);
    assert.ok(metric, name);
    const got = await metric.get();
    const v = got.values.find((x) => Object.entries(labels).every(([k, l]) => x.labels[k] === l));
    return v?.value ?? 0;
}

describe('reputation check', () => {
    let dns: DnsTestServer;
    let resolver: Resolver;
    let metrics: Metrics;
    let health: ZoneHealth;
    let lists: ReputationLists;
    let lookup: ReputationLookup;
    before(async () => {
        dns = await startDnsServer(BASE);
    });
    after(async () => {
        await dns.close();
    });
    beforeEach(async () => {
        dns.setZone(BASE);
        // no cache: each scenario sees the zone as it is now
        resolver?.close();
        resolver = createResolver({ servers: [dns.address], timeoutMs: 500, cache: { maxEntries: 0 } });
        metrics = createMetrics('test');
        lists = {
            dnsbl: configuredSites(
                ['bl.test=127.0.0.[2..11]*2 https://bl.test/lookup', 'bl2.test*1.5', 'refusing.test*3'],
                'dnsbl',
            ),
            dnswl: configuredSites(['wl.test=127.0.[0..255].[1..3]*-5'], 'dnswl'),
            rhsbl: configuredSites(['dbl.test=127.0.1.[2..99]*3'], 'rhsbl'),
        };
        health = new ZoneHealth(
            [
                ...[...lists.dnsbl, ...lists.dnswl].map((s) => ({ site: s.site, kind: 'address' as const })),
                ...lists.rhsbl.map((s) => ({ site: s.site, kind: 'domain' as const })),
            ],
            { resolve: resolver.resolve, now: Date.now, intervalMs: 0, retryMs: 0 },
        );
        await health.probeDue();
        lookup = new ReputationLookup({
            resolve: resolver.resolve,
            reverse: resolver.reverse,
            lists,
            health,
            dnsTimeoutMs: 500,
            own: { hostname: 'mx.example.com', domains: ['example.com'], addresses: ['192.0.2.1'] },
            metrics,
        });
    });
    after(() => resolver.close());

    const run = async (c: CheckContext): Promise<Record<string, unknown>> =>
        (await createReputationCheck(lookup, 2000).run(c, new AbortController().signal)).facts;

    it('probes every configured list healthy', () => {
        assert.ok(
            health.states().every((s) => s.state.healthy),
            JSON.stringify(health.states()),
        );
    });

    it('sums the weights of the lists that list a client, keeping only codes inside each filter', async () => {
        const f = await run(ctx('helo', '192.0.2.10', 'mail.good.example'));
        assert.equal(f['dnsbl.score'], 3.5);
        assert.deepEqual(f['dnsbl.listed'], ['bl.test=127.0.0.4', 'bl2.test=127.0.0.2']);
        assert.deepEqual(f['dnsbl.zones'], ['bl.test', 'bl2.test']);
        assert.deepEqual(f['dnsbl.delist'], ['https://bl.test/lookup']);
        assert.equal(f['dnswl.score'], 0);
        assert.equal(await value(metrics, 'dnsbl_hits_total', { zone: 'bl.test' }), 1);
        assert.equal(await value(metrics, 'dnsbl_hits_total', { zone: 'bl2.test' }), 1);
    });

    it('counts a listing once per client: not the prefetch at connect, nor the allow-list credit', async () => {
        const check = createReputationCheck(lookup, 2000);
        const hits = (): Promise<number | undefined> => value(metrics, 'dnsbl_hits_total', { zone: 'bl2.test' });
        const before = (await hits()) ?? 0;
        const c = ctx('helo', '192.0.2.10', 'mail.good.example');
        check.prefetch?.(c.client, new AbortController().signal);
        assert.equal(await lookup.dnswlCredit('192.0.2.10'), false);
        await check.run(c, new AbortController().signal);
        // the prefetch is not waited for by anyone: give it time to finish (and be counted, if it were)
        await new Promise((r) => setTimeout(r, 300));
        assert.equal(await hits(), before + 1);
    });

    it('reports a client no list names with score 0', async () => {
        const f = await run(ctx('helo', '198.51.100.1', 'mail.good.example'));
        assert.equal(f['dnsbl.score'], 0);
        assert.deepEqual(f['dnsbl.listed'], []);
        assert.deepEqual(f['dnsbl.errors'], []);
    });

    it('counts an answer outside the filter as an error, never a listing', async () => {
        const f = await run(ctx('helo', '192.0.2.11', null));
        assert.equal(f['dnsbl.score'], 0);
        assert.deepEqual(f['dnsbl.listed'], []);
        assert.match(
            String((f['dnsbl.errors'] as string[])[0]),
            /^bl\.test: answer 127\.0\.0\.20 is outside the filter/,
        );
        assert.equal(await value(metrics, 'dnsbl_errors_total', { zone: 'bl.test', kind: 'unexpected' }), 1);
    });

    it('counts a refusal code as an error and stops asking that list until a probe passes', async () => {
        const f = await run(ctx('helo', '192.0.2.13', null));
        assert.equal(f['dnsbl.score'], 0, 'a weight-3 list refusing must not list the client');
        assert.equal(await value(metrics, 'dnsbl_errors_total', { zone: 'refusing.test', kind: 'refused' }), 1);
        const site = lists.dnsbl[2]!.site;
        assert.equal(health.healthy(site, 'address'), false);
        const before = dns.queries.length;
        await run(ctx('helo', '192.0.2.13', null));
        assert.ok(
            dns.queries.slice(before).every((q) => !q.name.endsWith('refusing.test')),
            'a distrusted list is not asked',
        );
        await health.probeDue();
        assert.equal(health.healthy(site, 'address'), true, 'its probe passes again');
    });

    it('counts each error answer once: a refusal the prefetch met (the check then skips the list), another error by the check', async () => {
        const check = createReputationCheck(lookup, 2000);
        const errors = (zone: string, kind: string): Promise<number | undefined> =>
            value(metrics, 'dnsbl_errors_total', { zone, kind });
        const refusedBefore = (await errors('refusing.test', 'refused')) ?? 0;
        const unexpectedBefore = (await errors('bl.test', 'unexpected')) ?? 0;
        for (const ip of ['192.0.2.13', '192.0.2.11']) {
            const c = ctx('helo', ip, null);
            check.prefetch?.(c.client, new AbortController().signal);
            await new Promise((r) => setTimeout(r, 300));
            await check.run(c, new AbortController().signal);
        }
        assert.equal(await errors('refusing.test', 'refused'), refusedBefore + 1);
        assert.equal(await errors('bl.test', 'unexpected'), unexpectedBefore + 1);
        await health.probeDue();
    });

    it('gives allow-list credit as a negative dnswl.score, and answers the pregreet exemption', async () => {
        const f = await run(ctx('helo', '192.0.2.12', 'mail.good.example'));
        assert.equal(f['dnswl.score'], -5);
        assert.deepEqual(f['dnswl.listed'], ['wl.test=127.0.10.2']);
        assert.equal(await lookup.dnswlCredit('192.0.2.12'), true);
        assert.equal(await lookup.dnswlCredit('192.0.2.10'), false);
    });

    it('asks IPv6 clients in nibble form', async () => {
        const f = await run(ctx('helo', '2001:db8::25', null));
        assert.deepEqual(f['dnsbl.listed'], ['bl.test=127.0.0.3']);
        assert.ok(
            dns.queries.some(
                (q) => q.name === '5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test',
            ),
        );
    });

    it('asks domain lists about the HELO name at the helo stage and the sender domain at the mail stage', async () => {
        const helo = await run(ctx('helo', '198.51.100.1', 'spam.example'));
        assert.equal(helo['rhsbl.helo.score'], 3);
        assert.deepEqual(helo['rhsbl.helo.listed'], ['dbl.test=127.0.1.2']);
        const mail = await run(ctx('mail', '198.51.100.1', 'x', { 'mail.from.domain': 'spam.example' }));
        assert.deepEqual(mail, { 'rhsbl.sender.score': 3, 'rhsbl.sender.listed': ['dbl.test=127.0.1.2'] });
        const clean = await run(ctx('mail', '198.51.100.1', 'x', { 'mail.from.domain': 'mail.good.example' }));
        assert.equal(clean['rhsbl.sender.score'], 0);
    });

    it('asks a domain list about the registrable domain of a name too long for its zone, and counts an error when even that does not fit', async () => {
        // a key zone, as Spamhaus's Data Query Service has, and a zone that leaves room for little
        const dqs = 'dqs0123456789abcdefghijklm.dbl.test';
        const narrow = `${'z'.repeat(63)}.${'y'.repeat(63)}.${'x'.repeat(63)}.test`;
        dns.setZone({
            ...BASE,
            ...healthyDomainList(dqs),
            ...healthyDomainList(narrow),
            [`spam.example.${dqs}`]: { A: ['127.0.1.2'] },
        });
        const rhsbl = configuredSites([`${dqs}=127.0.1.[2..99]*3`, `${narrow}*2`], 'rhsbl');
        const zoneHealth = new ZoneHealth(
            rhsbl.map((s) => ({ site: s.site, kind: 'domain' as const })),
            { resolve: resolver.resolve, now: Date.now, intervalMs: 0, retryMs: 0 },
        );
        await zoneHealth.probeDue();
        const long = new ReputationLookup({ ...lookup.opts, lists: { ...lists, rhsbl }, health: zoneHealth });
        const check = createReputationCheck(long, 2000);
        const runLong = async (c: CheckContext): Promise<Record<string, unknown>> =>
            (await check.run(c, new AbortController().signal)).facts;

        // a wildcard subdomain of a listed domain, 239 characters: too long to ask under either zone
        const sub = `${'a'.repeat(34)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(63)}.spam.example`;
        assert.equal(sub.length, 239);
        const before = dns.queries.length;
        const mail = await runLong(ctx('mail', '198.51.100.1', 'x', { 'mail.from.domain': sub }));
        assert.deepEqual(mail, { 'rhsbl.sender.score': 3, 'rhsbl.sender.listed': [`${dqs}=127.0.1.2`] });
        const helo = await runLong(ctx('helo', '198.51.100.1', sub));
        assert.equal(helo['rhsbl.helo.score'], 3);
        const asked = dns.queries.slice(before).map((q) => q.name);
        assert.ok(asked.includes(`spam.example.${dqs}`), asked.join(' '));
        assert.ok(asked.includes(`spam.example.${narrow}`), asked.join(' '));

        // a registrable domain too long for the narrow zone: an error of that list, not "not listed"
        const v = await long.domain(`www.${'s'.repeat(63)}.example`);
        assert.equal(v.score, 0);
        assert.deepEqual(v.errors, [`${narrow}: the registrable domain is too long to ask under the zone`]);
        assert.equal(v.queries, 1, 'the other list is asked');
        assert.equal(await value(metrics, 'dnsbl_errors_total', { zone: narrow, kind: 'too_long' }), 1);
    });

    it('reports the HELO facts and a generic reverse name', async () => {
        const a = await run(ctx('helo', '192.0.2.10', 'mail.good.example'));
        assert.deepEqual(
            [a['helo.syntax'], a['helo.literal_mismatch'], a['helo.claims_us'], a['helo.resolves']],
            ['domain', false, false, true],
        );
        assert.equal(a['client.ptr.generic'], true, '192-0-2-10.dyn.isp.example');
        const b = await run(ctx('helo', '192.0.2.12', '[192.0.2.99]'));
        assert.deepEqual(
            [b['helo.syntax'], b['helo.literal_mismatch'], b['helo.resolves']],
            ['address-literal', true, null],
        );
        assert.equal(b['client.ptr.generic'], false, 'mail.good.example');
        const c = await run(ctx('helo', '198.51.100.1', 'mx.example.com'));
        assert.equal(c['helo.claims_us'], true);
        assert.equal(c['client.ptr.generic'], null, 'no reverse name');
        const d = await run(ctx('helo', '198.51.100.1', 'nowhere.example'));
        assert.equal(d['helo.resolves'], false);
        const e = await run(ctx('helo', '198.51.100.1', 'not a name'));
        assert.equal(e['helo.syntax'], 'invalid');
        assert.equal(await value(metrics, 'helo_checks_total', { check: 'resolves', result: 'fail' }), 2);
        assert.equal(await value(metrics, 'helo_checks_total', { check: 'claims_us', result: 'fail' }), 1);
    });

    it('disables a list that answers for everything, so it cannot list anyone, and enables it again', async () => {
        // the list now lists every address, its "must not" test entry 127.0.0.1 included
        const hostile: Zone = { ...BASE, '1.0.0.127.bl.test': { A: ['127.0.0.2'] } };
        for (let i = 0; i < 256; i++) hostile[`${i}.100.51.198.bl.test`] = { A: ['127.0.0.2'] };
        dns.setZone(hostile);
        await health.probeDue();
        const site = lists.dnsbl[0]!.site;
        assert.equal(health.healthy(site, 'address'), false);
        assert.match(
            health.states().find((s) => s.site === site)!.state.reason,
            /lists everything: 1\.0\.0\.127\.bl\.test is listed/,
        );
        const f = await run(ctx('helo', '198.51.100.7', null));
        assert.equal(f['dnsbl.score'], 0, 'the hostile list counts for nothing');
        dns.setZone(BASE);
        await health.probeDue();
        assert.equal(health.healthy(site, 'address'), true);
        const g = await run(ctx('helo', '192.0.2.10', null));
        assert.ok((g['dnsbl.zones'] as string[]).includes('bl.test'));
    });

    it('disables a list that lists nothing (its test entry 127.0.0.2 not listed)', async () => {
        const dead: Zone = { ...BASE };
        delete dead['2.0.0.127.bl2.test'];
        dns.setZone(dead);
        await health.probeDue();
        assert.equal(health.healthy(lists.dnsbl[1]!.site, 'address'), false);
    });

    it('waits at most the DNS timeout for a list that does not answer, and keeps the other answers', async () => {
        dns.setZone({ ...BASE, '10.2.0.192.bl2.test': { TIMEOUT: true } });
        const started = Date.now();
        const f = await run(ctx('helo', '192.0.2.10', null));
        assert.ok(Date.now() - started < 1500, `${Date.now() - started} ms`);
        assert.deepEqual(f['dnsbl.zones'], ['bl.test']);
        assert.equal(f['dnsbl.score'], 2);
        assert.deepEqual(f['dnsbl.errors'], ['bl2.test: timeout']);
        assert.equal(await value(metrics, 'dnsbl_errors_total', { zone: 'bl2.test', kind: 'timeout' }), 1);
    });

    it('gives up the HELO name lookups when the check ends', async () => {
        dns.setZone({ ...BASE, 'h1.silent.test': { TIMEOUT: true } });
        // one try of 5 s: the lookup outlives the check, which waits 500 ms for it
        const slow = createResolver({ servers: [dns.address], timeoutMs: 5_000, tries: 1 });
        try {
            const own = new ReputationLookup({ ...lookup.opts, resolve: slow.resolve, reverse: slow.reverse });
            const controller = new AbortController();
            const f = (
                await createReputationCheck(own, 2000).run(
                    ctx('helo', '192.0.2.10', 'h1.silent.test'),
                    controller.signal,
                )
            ).facts;
            assert.equal(f['helo.resolves'], null);
            controller.abort(); // as the pipeline does when a check returns
            const sent = () => dns.queries.filter((q) => q.name === 'h1.silent.test' && q.type === 'A').length;
            assert.equal(sent(), 1);
            // given up and no longer shared: asking again sends a new query
            const again = slow.resolve('h1.silent.test', 'A').catch(() => undefined);
            await until('a new query was sent', () => sent() === 2);
            slow.close();
            await again;
        } finally {
            slow.close();
        }
    });

    it('starts no query once the check was given up on', async () => {
        const controller = new AbortController();
        controller.abort();
        const before = dns.queries.length;
        const check = createReputationCheck(lookup, 2000);
        const f = (await check.run(ctx('helo', '192.0.2.10', null), controller.signal)).facts;
        assert.equal(f['dnsbl.score'], 0);
        assert.ok(
            dns.queries.slice(before).every((q) => !q.name.includes('.bl')),
            'no list query after the abort',
        );
    });
});
