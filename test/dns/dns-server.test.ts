// Tests for the loopback test DNS server itself, seen through node:dns (an independent client):
// negative answers and their SOA, empty non-terminals, CNAME chains, case-insensitive names,
// zone swapping and the query log.
import assert from 'node:assert/strict';
import dns from 'node:dns';
import { after, before, describe, it } from 'node:test';
import { startDnsServer, type DnsTestServer } from '../helpers/dns-server.ts';

describe('test DNS server', () => {
    let server: DnsTestServer;
    let node: dns.promises.Resolver;
    const code = (p: Promise<unknown>) =>
        p.then(
            () => 'ok',
            (e: { code?: string }) => e.code,
        );

    before(async () => {
        server = await startDnsServer({
            'Example.Test.': { A: ['192.0.2.1'], SOA: { minimum: 60 } },
            'sel._domainkey.example.test': { TXT: ['v=DKIM1; p='] },
            'www.example.test': { CNAME: 'example.test' },
        });
        node = new dns.promises.Resolver({ timeout: 1000, tries: 1 });
        node.setServers([server.address]);
    });
    after(() => server.close());

    it('answers case-insensitively and logs each question', async () => {
        assert.deepEqual(await node.resolve4('EXAMPLE.test'), ['192.0.2.1']);
        assert.deepEqual(server.queries.at(-1), { name: 'example.test', type: 'A', transport: 'udp' });
    });

    it('answers NXDOMAIN for absent names, NODATA for empty non-terminals and missing types', async () => {
        assert.equal(await code(node.resolveTxt('nope.example.test')), 'ENOTFOUND');
        assert.equal(await code(node.resolveTxt('_domainkey.example.test')), 'ENODATA');
        assert.equal(await code(node.resolveMx('example.test')), 'ENODATA');
    });

    it('answers a CNAME chain and the target records together', async () => {
        assert.deepEqual(await node.resolve4('www.example.test'), ['192.0.2.1']);
        assert.deepEqual(await node.resolveCname('www.example.test'), ['example.test']);
    });

    it('serves a swapped zone', async () => {
        server.setZone({ 'other.test': { A: ['192.0.2.2'] } });
        try {
            assert.deepEqual(await node.resolve4('other.test'), ['192.0.2.2']);
            assert.equal(await code(node.resolve4('example.test')), 'ENOTFOUND');
        } finally {
            server.setZone({ 'example.test': { A: ['192.0.2.1'] } });
        }
    });
});
