/**
 * The iprev check against a real DNS server on loopback: a forward-confirmed PTR gives
 * `client.ptr`; a PTR that does not resolve back, no PTR, or a DNS failure give null with
 * the matching `iprev.result`. Also end to end: the confirmed name reaches the upstream as
 * XCLIENT NAME.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createIprevCheck } from '../../src/checks/iprev.ts';
import { createResolver, type Resolver } from '../../src/dns/resolver.ts';
import { dnsError, type DnsErrorCode } from '../../src/dns/errors.ts';
import type { CheckContext } from '../../src/types.ts';
import { startApp } from '../helpers/app.ts';
import { startDnsServer, type DnsTestServer } from '../helpers/dns-server.ts';
import { startScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { sendMail } from '../helpers/smtp-client.ts';

function ctx(ip: string): CheckContext {
    return {
        stage: 'connect',
        sessionId: 'test',
        facts: {},
        client: { ip, port: 1, ptr: null, helo: null, proto: 'ESMTP', login: null },
        envelope: { mailFrom: null, rcptTo: [] },
        message: null,
    };
}

describe('iprev check', () => {
    let dns: DnsTestServer;
    let resolver: Resolver;
    before(async () => {
        dns = await startDnsServer({
            '1.2.0.192.in-addr.arpa': { PTR: ['mail.good.example.'] },
            'mail.good.example': { A: ['192.0.2.1'] },
            '2.2.0.192.in-addr.arpa': { PTR: ['liar.example.'] },
            'liar.example': { A: ['198.51.100.7'] },
            '4.2.0.192.in-addr.arpa': { SERVFAIL: true },
            '1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa': { PTR: ['v6.good.example'] },
            'v6.good.example': { AAAA: ['2001:db8::1'] },
        });
        resolver = createResolver({ servers: [dns.address], timeoutMs: 300, tries: 1 });
    });
    after(async () => {
        resolver.close();
        await dns.close();
    });
    const check = (): ReturnType<typeof createIprevCheck> => createIprevCheck(resolver, 2000);
    const run = async (ip: string) => (await check().run(ctx(ip), new AbortController().signal)).facts;

    it('confirms a PTR that resolves back to the client', async () => {
        assert.deepEqual(await run('192.0.2.1'), { 'client.ptr': 'mail.good.example', 'iprev.result': 'pass' });
    });
    it('confirms IPv6 too', async () => {
        assert.deepEqual(await run('2001:db8::1'), { 'client.ptr': 'v6.good.example', 'iprev.result': 'pass' });
    });
    it('rejects a PTR that points elsewhere', async () => {
        assert.deepEqual(await run('192.0.2.2'), { 'client.ptr': null, 'iprev.result': 'fail' });
    });
    it('reports no PTR as fail and a DNS failure as temperror', async () => {
        assert.deepEqual(await run('192.0.2.3'), { 'client.ptr': null, 'iprev.result': 'fail' });
        assert.deepEqual(await run('192.0.2.4'), { 'client.ptr': null, 'iprev.result': 'temperror' });
    });

    it('reports FORMERR from the server as temperror, not fail', async () => {
        dns.setZone({ '5.2.0.192.in-addr.arpa': { FORMERR: true } });
        assert.deepEqual(await run('192.0.2.5'), { 'client.ptr': null, 'iprev.result': 'temperror' });
    });

    it('reports every resolver error but NXDOMAIN, NODATA and a bad name as temperror', async () => {
        const failing = (stage: 'reverse' | 'forward', code: DnsErrorCode): Resolver => ({
            resolve: (name: string) =>
                stage === 'forward' ? Promise.reject(dnsError(code, 'queryA', name)) : Promise.resolve([]),
            reverse: (ip: string) =>
                stage === 'reverse'
                    ? Promise.reject(dnsError(code, 'getHostByAddr', ip))
                    : Promise.resolve(['mail.example.test']),
            stats: () => ({ entries: 0, hits: 0, misses: 0, bytes: 0 }),
            close: () => undefined,
        });
        const expected: [DnsErrorCode, string][] = [
            ['EBADRESP', 'temperror'],
            ['EFORMERR', 'temperror'],
            ['ENOTIMP', 'temperror'],
            ['ESERVFAIL', 'temperror'],
            ['ETIMEOUT', 'temperror'],
            // the resolver's refusal with too many lookups in flight, a closed resolver
            ['ECANCELLED', 'temperror'],
            ['ENOTFOUND', 'fail'],
            ['ENODATA', 'fail'],
            ['EBADNAME', 'fail'],
        ];
        for (const stage of ['reverse', 'forward'] as const) {
            for (const [code, result] of expected) {
                const facts = (
                    await createIprevCheck(failing(stage, code), 2000).run(
                        ctx('192.0.2.9'),
                        new AbortController().signal,
                    )
                ).facts;
                assert.deepEqual(facts, { 'client.ptr': null, 'iprev.result': result }, `${stage} ${code}`);
            }
        }
    });

    it('passes the confirmed name upstream as XCLIENT NAME', async (t) => {
        dns.setZone({ '1.0.0.127.in-addr.arpa': { PTR: ['localhost.test.'] }, 'localhost.test': { A: ['127.0.0.1'] } });
        const up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'] });
        const mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                `dns: { servers: ["${dns.address}"], timeout: 1s }`,
                'http: false',
            ].join('\n'),
        );
        t.after(async () => {
            await mw.stop();
            await up.close();
        });
        const r = await sendMail(mw.port(), {
            from: 'a@example.org',
            to: ['b@example.test'],
            data: 'From: a@example.org\r\nSubject: x\r\n\r\nx\r\n',
        });
        assert.equal(r.message?.code, 250);
        assert.equal(up.connections.at(-1)!.xclient[0]!.NAME, 'localhost.test');
        const data = up.transactions.at(-1)!.data!.toString('latin1');
        assert.match(data, /^Received: from client\.example \(localhost\.test \[127\.0\.0\.1\]\)/);
    });
});
