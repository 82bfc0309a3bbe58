/**
 * The iprev check against a real DNS server on loopback: a forward-confirmed PTR gives
 * `client.ptr`; a PTR that does not resolve back, no PTR, or a DNS failure give null with
 * the matching `iprev.result`, and `iprev.ptr` is the reverse name confirmed or not. The
 * lookups started at connect (prefetch) are given up when the session ends, and none start for
 * a client refused at connect. Also end to end: the confirmed name reaches the upstream as
 * XCLIENT NAME, the reverse name as REVERSE_NAME.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createIprevCheck } from '../../src/checks/iprev.ts';
import { createResolver, type Resolver } from '../../src/dns/resolver.ts';
import { createMetrics, type Metrics } from '../../src/metrics.ts';
import { dnsError, type DnsErrorCode } from '../../src/dns/errors.ts';
import { acceptAll, runStage } from '../../src/pipeline.ts';
import { MessageFlow } from '../../src/transaction.ts';
import type { CheckContext } from '../../src/types.ts';
import { xclientCommand } from '../../src/upstream/xtext.ts';
import { startApp } from '../helpers/app.ts';
import { startDnsServer, type DnsTestServer } from '../helpers/dns-server.ts';
import { startScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { sendMail, smtpConnect } from '../helpers/smtp-client.ts';
import { until } from '../helpers/until.ts';

/** PTR names whose addresses never answer, as a client that runs its reverse zone can have. */
function neverAnswering(domain: string): { names: string[]; zone: Record<string, { TIMEOUT: true }> } {
    const names = Array.from({ length: 10 }, (_, i) => `h${i}.${domain}`);
    return { names, zone: Object.fromEntries(names.map((n) => [n, { TIMEOUT: true as const }])) };
}

/** Lookups of `type` counted with `result` (dns_queries_total). */
async function counted(metrics: Metrics, type: string, result: string): Promise<number> {
    const c = await metrics.dnsQueries.get();
    return c.values.find((v) => v.labels.type === type && v.labels.result === result)?.value ?? 0;
}

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
        assert.deepEqual(await run('192.0.2.1'), {
            'client.ptr': 'mail.good.example',
            'iprev.ptr': 'mail.good.example',
            'iprev.result': 'pass',
        });
    });
    it('confirms IPv6 too', async () => {
        assert.deepEqual(await run('2001:db8::1'), {
            'client.ptr': 'v6.good.example',
            'iprev.ptr': 'v6.good.example',
            'iprev.result': 'pass',
        });
    });
    it('rejects a PTR that points elsewhere, reporting it as the unconfirmed reverse name', async () => {
        assert.deepEqual(await run('192.0.2.2'), {
            'client.ptr': null,
            'iprev.ptr': 'liar.example',
            'iprev.result': 'fail',
        });
    });
    it('reports no PTR as fail and a DNS failure as temperror', async () => {
        assert.deepEqual(await run('192.0.2.3'), { 'client.ptr': null, 'iprev.ptr': null, 'iprev.result': 'fail' });
        assert.deepEqual(await run('192.0.2.4'), {
            'client.ptr': null,
            'iprev.ptr': null,
            'iprev.result': 'temperror',
        });
    });

    it('reports FORMERR from the server as temperror, not fail', async () => {
        dns.setZone({ '5.2.0.192.in-addr.arpa': { FORMERR: true } });
        assert.deepEqual(await run('192.0.2.5'), {
            'client.ptr': null,
            'iprev.ptr': null,
            'iprev.result': 'temperror',
        });
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
                // a failed address lookup still leaves the PTR name as the reverse name
                const ptr = stage === 'forward' ? 'mail.example.test' : null;
                assert.deepEqual(
                    facts,
                    { 'client.ptr': null, 'iprev.ptr': ptr, 'iprev.result': result },
                    `${stage} ${code}`,
                );
            }
        }
    });

    it('leaves both names unknown for now when the check times out, as XCLIENT says', async () => {
        dns.setZone({ '7.2.0.192.in-addr.arpa': { TIMEOUT: true } });
        // the resolver waits longer for the answer that never comes than the check may take
        const slow = createResolver({ servers: [dns.address], timeoutMs: 5000, tries: 1 });
        try {
            const flow = new MessageFlow('test', { name: 'mx', mode: 'mx', bareNewline: 'reject' });
            const client = {
                ip: '192.0.2.7',
                port: 1,
                ptr: null,
                helo: 'c.test',
                proto: 'ESMTP',
                login: null,
            } as const;
            const facts = flow.heloStageFacts({ identity: client, tls: false });
            const result = await runStage(
                'helo',
                [createIprevCheck(slow, 100)],
                flow.context(facts, client),
                acceptAll,
            );
            assert.equal(result.checks[0]?.error, 'timeout');
            const names = flow.heloDone(result);
            assert.deepEqual(names, { ptr: null, reverse: { name: null, temporary: true } });
            assert.equal(
                xclientCommand({ ...client, ...names }, new Set(['NAME', 'REVERSE_NAME', 'ADDR'])),
                'XCLIENT NAME=[TEMPUNAVAIL] REVERSE_NAME=[TEMPUNAVAIL] ADDR=192.0.2.7',
            );
        } finally {
            slow.close();
        }
    });

    it('gives up the lookups started at connect when the session ends, and starts no forward lookup after', async () => {
        const { names, zone } = neverAnswering('gone.example');
        dns.setZone({ '20.2.0.192.in-addr.arpa': { PTR: names }, '21.2.0.192.in-addr.arpa': { PTR: names }, ...zone });
        const metrics = createMetrics('test');
        const slow = createResolver({ servers: [dns.address], timeoutMs: 30_000, tries: 2, metrics });
        try {
            const check = createIprevCheck(slow, 2000);
            const session = new AbortController();
            const client = ctx('192.0.2.20').client;
            const sent = (type: string) => dns.queries.filter((q) => q.type === type).length;
            const before = sent('A');
            check.prefetch?.(client, session.signal);
            await until('the five forward lookups were sent', () => sent('A') === before + 5);
            session.abort();
            await new Promise((resolve) => setImmediate(resolve));
            // given up at once, not after 30 s × 2 tries
            assert.equal(await counted(metrics, 'A', 'error'), 5);
            // a session that ended before its PTR answer came: the PTR lookup is given up, or, when
            // another caller waits for it too (the check's run), no forward lookup starts after it
            const misses = slow.stats().misses;
            const gone = new AbortController();
            check.prefetch?.(ctx('192.0.2.21').client, gone.signal);
            gone.abort();
            await until('its PTR lookup was given up', async () => (await counted(metrics, 'PTR', 'error')) === 1);
            const late = new AbortController();
            check.prefetch?.(ctx('192.0.2.21').client, late.signal);
            const run = slow.reverse('192.0.2.21');
            late.abort();
            assert.deepEqual(await run, names);
            assert.equal(slow.stats().misses, misses + 2, 'the two PTR lookups alone');
        } finally {
            slow.close();
        }
    });

    it('starts no lookup for a client refused at connect; those of a client that leaves are given up', async (t) => {
        const refused = neverAnswering('refused.example');
        const leaving = neverAnswering('leaving.example');
        dns.setZone({
            '2.0.5.127.in-addr.arpa': { PTR: refused.names },
            '3.0.5.127.in-addr.arpa': { PTR: leaving.names },
            ...refused.zone,
            ...leaving.zone,
        });
        const rules = mkdtempSync(join(tmpdir(), 'mw-iprev-rules-'));
        writeFileSync(
            join(rules, 'connect.yaml'),
            'rules:\n  - id: refuse-at-connect\n    stage: connect\n    when: { client.ip: 127.5.0.2 }\n    action: reject\n',
        );
        const up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'] });
        const mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                `rules: "${rules}"`,
                // a lookup that is not given up takes 30 s × 2 tries
                `dns: { servers: ["${dns.address}"], timeout: 30s }`,
                'http: false',
            ].join('\n'),
        );
        t.after(async () => {
            await mw.stop();
            await up.close();
            rmSync(rules, { recursive: true, force: true });
        });
        const asked = (name: string) => dns.queries.filter((q) => q.name === name).length;
        const refusedClient = await smtpConnect(mw.port(), { localAddress: '127.5.0.2' });
        assert.equal((await refusedClient.greeting()).code, 554);
        refusedClient.close();
        const c = await smtpConnect(mw.port(), { localAddress: '127.5.0.3' });
        assert.equal((await c.greeting()).code, 220);
        await until('the forward lookups of the client let in were sent', () =>
            leaving.names.slice(0, 5).every((n) => asked(n) === 1),
        );
        // the refused client connected first: its PTR query would have been sent by now
        assert.equal(asked('2.0.5.127.in-addr.arpa'), 0);
        assert.equal(asked('3.0.5.127.in-addr.arpa'), 1);
        const before = await counted(mw.app.metrics, 'A', 'error');
        c.close();
        await until('the client that left has its five forward lookups given up', async () => {
            return (await counted(mw.app.metrics, 'A', 'error')) === before + 5;
        });
        assert.ok(refused.names.every((n) => asked(n) === 0));
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

    it('passes the reverse name upstream as XCLIENT REVERSE_NAME, and a DNS failure as [TEMPUNAVAIL]', async (t) => {
        dns.setZone({
            '1.0.0.127.in-addr.arpa': { PTR: ['localhost.test.'] },
            'localhost.test': { A: ['127.0.0.1'] },
            '2.0.0.127.in-addr.arpa': { PTR: ['2-0-0-127.dyn.isp.example.'] },
            '4.0.0.127.in-addr.arpa': { SERVFAIL: true },
            '5.0.0.127.in-addr.arpa': { TIMEOUT: true },
            '6.0.0.127.in-addr.arpa': { PTR: ['mail6.slow.example.'] },
            'mail6.slow.example': { SERVFAIL: true },
        });
        const up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO REVERSE_NAME LOGIN'] });
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
        const names = async (localAddress: string): Promise<string> => {
            const r = await sendMail(mw.port(), {
                from: 'a@example.org',
                to: ['b@example.test'],
                data: 'From: a@example.org\r\nSubject: x\r\n\r\nx\r\n',
                localAddress,
            });
            assert.equal(r.message?.code, 250, localAddress);
            const xclient = up.connections.at(-1)!.xclient[0]!;
            assert.equal(xclient.ADDR, localAddress);
            return `NAME=${xclient.NAME} REVERSE_NAME=${xclient.REVERSE_NAME}`;
        };
        // forward-confirmed
        assert.equal(await names('127.0.0.1'), 'NAME=localhost.test REVERSE_NAME=localhost.test');
        // a PTR name that does not resolve back: not verified, yet it is the reverse name
        assert.equal(await names('127.0.0.2'), 'NAME=[UNAVAILABLE] REVERSE_NAME=2-0-0-127.dyn.isp.example');
        // no PTR at all (NXDOMAIN): unknown for good
        assert.equal(await names('127.0.0.3'), 'NAME=[UNAVAILABLE] REVERSE_NAME=[UNAVAILABLE]');
        // the PTR lookup failed (SERVFAIL) or never got an answer: unknown for now
        assert.equal(await names('127.0.0.4'), 'NAME=[TEMPUNAVAIL] REVERSE_NAME=[TEMPUNAVAIL]');
        assert.equal(await names('127.0.0.5'), 'NAME=[TEMPUNAVAIL] REVERSE_NAME=[TEMPUNAVAIL]');
        // the PTR name is known, its address lookup failed: only the verified name is unknown for now
        assert.equal(await names('127.0.0.6'), 'NAME=[TEMPUNAVAIL] REVERSE_NAME=mail6.slow.example');
    });
});
