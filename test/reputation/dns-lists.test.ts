/**
 * DNS list sites in postscreen's syntax, the names asked (IPv4, IPv6 nibbles, domains), what an
 * answer means (only filtered 127.0.0.0/8 answers are listings; refusal codes, bogus answers and
 * DNS failures are errors), and the health probes that take a dead or hostile list out of use.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createResolver } from '../../src/dns/resolver.ts';
import {
    addressQuery,
    classifyAnswer,
    domainQuery,
    parseListSite,
    probeQueries,
    TOO_LONG,
    type ListSite,
} from '../../src/reputation/dns-lists.ts';
import { ZoneHealth, type ZoneState } from '../../src/reputation/zone-health.ts';
import { startDnsServer } from '../helpers/dns-server.ts';

function site(text: string): ListSite {
    const s = parseListSite(text);
    assert.ok(!('error' in s), JSON.stringify(s));
    return s;
}

function dnsErr(code: string): Error {
    return Object.assign(new Error(`queryA ${code} x`), { code });
}

describe('list sites', () => {
    it('reads zone, filter and weight as postscreen does', () => {
        const zen = site('zen.spamhaus.org=127.0.0.[2..11]*3');
        assert.deepEqual([zen.zone, zen.weight], ['zen.spamhaus.org', 3]);
        const wl = site('list.dnswl.org=127.0.[0..255].[1..3]*-5');
        assert.equal(wl.weight, -5);
        const plain = site('bl.example.net');
        assert.deepEqual([plain.zone, plain.filter, plain.weight], ['bl.example.net', null, 1]);
        assert.equal(site('BL.Example.NET.=127.0.0.[2;4;10..11]').zone, 'bl.example.net');
    });

    it('refuses what is not a site', () => {
        for (const bad of [
            '',
            'zen.spamhaus.org=127.0.0.[2..11',
            'zen.spamhaus.org=127.0.[2..11]',
            'zen.spamhaus.org=127.0.0.[11..2]',
            'zen.spamhaus.org=127.0.0.256',
            'zen.spamhaus.org*x',
            'zen.spamhaus.org*99999',
            'localhost',
            '192.0.2.1',
            'zen spamhaus.org',
            'a..b.org',
        ]) {
            assert.ok('error' in parseListSite(bad), bad);
        }
    });
});

describe('query names', () => {
    it('reverses IPv4 octets and IPv6 nibbles under the zone', () => {
        assert.equal(addressQuery('192.0.2.99', 'zen.spamhaus.org'), '99.2.0.192.zen.spamhaus.org');
        assert.equal(addressQuery('::ffff:192.0.2.99', 'bl.test'), '99.2.0.192.bl.test');
        assert.equal(
            addressQuery('2001:db8::1', 'bl.test'),
            '1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test',
        );
        assert.equal(addressQuery('not-an-ip', 'bl.test'), null);
    });

    it('puts a domain under the zone as an A-label, and refuses what is no domain', () => {
        assert.equal(domainQuery('Spam.Example.', 'dbl.test'), 'spam.example.dbl.test');
        assert.equal(domainQuery('bücher.example', 'dbl.test'), 'xn--bcher-kva.example.dbl.test');
        assert.equal(domainQuery('[192.0.2.1]', 'dbl.test'), null);
        assert.equal(domainQuery('192.0.2.1', 'dbl.test'), null);
        assert.equal(domainQuery('localhost', 'dbl.test'), null);
    });

    it('asks the registrable domain when the name is too long under the zone, and never a name above it', () => {
        const labels = `${'a'.repeat(34)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(63)}`;
        // 239 characters: room under dbl.test, none under dbl.spamhaus.org
        assert.equal(`${labels}.spam.example`.length, 239);
        assert.equal(domainQuery(`${labels}.spam.example`, 'dbl.test'), `${labels}.spam.example.dbl.test`);
        assert.equal(domainQuery(`${labels}.spam.example`, 'dbl.spamhaus.org'), 'spam.example.dbl.spamhaus.org');
        // the registrable domain of a name under co.uk has three labels
        assert.equal(domainQuery(`${labels}.spam.co.uk`, 'dbl.spamhaus.org'), 'spam.co.uk.dbl.spamhaus.org');
        // a registrable domain too long for the zone
        const zone = `${'z'.repeat(63)}.${'y'.repeat(63)}.${'x'.repeat(63)}.test`;
        assert.equal(domainQuery(`www.${'s'.repeat(63)}.example`, zone), TOO_LONG);
        // a name longer than any domain name (the envelope takes 255 octets): its registrable domain
        const overlong = `${labels}.${'e'.repeat(20)}.example`;
        assert.equal(overlong.length, 255);
        assert.equal(domainQuery(overlong, 'dbl.test'), `${'e'.repeat(20)}.example.dbl.test`);
    });
});

describe('answers', () => {
    const zen = site('zen.spamhaus.org=127.0.0.[2..11]*3');
    it('counts only filtered 127.0.0.0/8 answers as listings', () => {
        assert.deepEqual(classifyAnswer(zen, { answers: ['127.0.0.4', '127.0.0.2', '127.0.0.4'] }), {
            kind: 'listed',
            codes: ['127.0.0.2', '127.0.0.4'],
        });
        assert.deepEqual(classifyAnswer(zen, { error: dnsErr('ENOTFOUND') }), { kind: 'not-listed' });
        assert.deepEqual(classifyAnswer(zen, { error: dnsErr('ENODATA') }), { kind: 'not-listed' });
    });

    it('takes refusal codes, bogus answers, out-of-filter answers and failures as errors', () => {
        const kind = (r: ReturnType<typeof classifyAnswer>): string => (r.kind === 'error' ? r.error : r.kind);
        for (const code of ['127.255.255.252', '127.255.255.254', '127.255.255.255']) {
            assert.equal(kind(classifyAnswer(zen, { answers: [code] })), 'refused', code);
        }
        // a refusal beside a listing code: the answer as a whole is not trusted
        assert.equal(kind(classifyAnswer(zen, { answers: ['127.0.0.2', '127.255.255.254'] })), 'refused');
        assert.equal(kind(classifyAnswer(zen, { answers: ['192.0.2.80'] })), 'bogus');
        assert.equal(kind(classifyAnswer(zen, { answers: ['127.0.0.1'] })), 'unexpected');
        assert.equal(kind(classifyAnswer(zen, { answers: ['127.0.1.2'] })), 'unexpected');
        assert.equal(kind(classifyAnswer(zen, { error: dnsErr('ETIMEOUT') })), 'dns');
        assert.equal(kind(classifyAnswer(zen, { error: dnsErr('ESERVFAIL') })), 'dns');
        // without a filter every 127/8 answer but 127.0.0.1 counts
        const any = site('bl.example.net');
        assert.equal(kind(classifyAnswer(any, { answers: ['127.0.0.9'] })), 'listed');
        assert.equal(kind(classifyAnswer(any, { answers: ['127.0.0.1'] })), 'unexpected');
    });
});

/** A zone of answers by name; a name missing is NXDOMAIN, `timeout` never answers. */
function resolverOf(zone: Record<string, string[] | 'timeout' | 'servfail'>) {
    const asked: string[] = [];
    const resolve = (name: string): Promise<unknown> => {
        asked.push(name);
        const entry = zone[name];
        if (entry === undefined) return Promise.reject(dnsErr('ENOTFOUND'));
        if (entry === 'timeout') return Promise.reject(dnsErr('ETIMEOUT'));
        if (entry === 'servfail') return Promise.reject(dnsErr('ESERVFAIL'));
        return Promise.resolve(entry);
    };
    return { resolve, asked };
}

describe('zone health', () => {
    const zen = site('zen.spamhaus.org=127.0.0.[2..11]*3');
    const dbl = site('dbl.spamhaus.org=127.0.1.[2..99]*3');
    const q = probeQueries('zen.spamhaus.org', 'address');

    it('trusts a list only once it lists its test entry and not its must-not entry', async () => {
        const { resolve } = resolverOf({ [q.listed]: ['127.0.0.2', '127.0.0.10'] });
        const changes: ZoneState[] = [];
        const h = new ZoneHealth([{ site: zen, kind: 'address' }], {
            resolve,
            now: () => 0,
            intervalMs: 300_000,
            retryMs: 60_000,
            onChange: (_s, _k, st) => changes.push(st),
        });
        assert.equal(h.healthy(zen, 'address'), false, 'not trusted before the first probe');
        await h.probeDue();
        assert.equal(h.healthy(zen, 'address'), true);
        assert.deepEqual(
            changes.map((c) => c.healthy),
            [true],
        );
    });

    it('takes out a list that lists everything, lists nothing, refuses or does not answer', async () => {
        const cases: [Record<string, string[] | 'timeout' | 'servfail'>, RegExp][] = [
            [{ [q.listed]: ['127.0.0.2'], [q.unlisted]: ['127.0.0.2'] }, /lists everything/],
            [{}, /lists nothing/],
            [{ [q.listed]: ['127.255.255.254'] }, /refused/],
            [{ [q.listed]: ['127.0.0.2'], [q.unlisted]: ['127.255.255.254'] }, /refused/],
            [{ [q.listed]: ['198.51.100.1'], [q.unlisted]: ['198.51.100.1'] }, /bogus/],
            [{ [q.listed]: 'timeout', [q.unlisted]: 'timeout' }, /not answering \(ETIMEOUT\)/],
            [{ [q.listed]: 'servfail' }, /not answering \(ESERVFAIL\)/],
        ];
        for (const [zone, re] of cases) {
            const h = new ZoneHealth([{ site: zen, kind: 'address' }], {
                resolve: resolverOf(zone).resolve,
                now: () => 0,
                intervalMs: 300_000,
                retryMs: 60_000,
            });
            await h.probeDue();
            const st = h.states()[0]!.state;
            assert.equal(st.healthy, false, JSON.stringify(zone));
            assert.match(st.reason, re);
        }
    });

    it('probes domain lists with test and invalid, and comes back when the list recovers', async () => {
        const dq = probeQueries('dbl.spamhaus.org', 'domain');
        assert.deepEqual(dq, { listed: 'test.dbl.spamhaus.org', unlisted: 'invalid.dbl.spamhaus.org' });
        const zone: Record<string, string[]> = {};
        let now = 0;
        const h = new ZoneHealth([{ site: dbl, kind: 'domain' }], {
            resolve: resolverOf(zone).resolve,
            now: () => now,
            intervalMs: 300_000,
            retryMs: 60_000,
        });
        await h.probeDue();
        assert.equal(h.healthy(dbl, 'domain'), false);
        zone[dq.listed] = ['127.0.1.2'];
        now = 30_000;
        await h.probeDue();
        assert.equal(h.healthy(dbl, 'domain'), false, 'not probed again before retryMs');
        now = 60_000;
        await h.probeDue();
        assert.equal(h.healthy(dbl, 'domain'), true);
    });

    it('a probe through the resolver is not refused when its lookups in flight are at their cap', async () => {
        const server = await startDnsServer({ [q.listed]: { A: ['127.0.0.2'] }, 'held.test': { TIMEOUT: true } });
        const r = createResolver({ servers: [server.address], timeoutMs: 5_000, tries: 1, maxInFlight: 1 });
        try {
            const held = r.resolve('held.test', 'A').catch((e: { code?: string }) => e.code);
            await assert.rejects(r.resolve('other.test', 'A'), { code: 'ECANCELLED' }, 'the cap is reached');
            const h = new ZoneHealth([{ site: zen, kind: 'address' }], {
                resolve: r.resolveFresh!,
                now: () => 0,
                intervalMs: 300_000,
                retryMs: 60_000,
            });
            await h.probeDue();
            assert.deepEqual(h.states()[0]!.state, { healthy: true, reason: 'ok', at: 0 });
            r.close();
            assert.equal(await held, 'ECANCELLED');
        } finally {
            r.close();
            await server.close();
        }
    });

    it('distrusts a list at once when a live answer is a refusal, until a probe passes', async () => {
        let now = 0;
        const h = new ZoneHealth([{ site: zen, kind: 'address' }], {
            resolve: resolverOf({ [q.listed]: ['127.0.0.2'] }).resolve,
            now: () => now,
            intervalMs: 300_000,
            retryMs: 60_000,
        });
        await h.probeDue();
        h.distrust(zen, 'address', 'refused: answer 127.255.255.254');
        assert.equal(h.healthy(zen, 'address'), false);
        now = 60_000;
        await h.probeDue();
        assert.equal(h.healthy(zen, 'address'), true);
    });
});
