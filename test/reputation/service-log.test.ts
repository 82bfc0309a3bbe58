/**
 * The log lines of the DNS lists' health, through a real app and a loopback DNS server: a list's
 * first probe (at start, or for a list a reload adds) that finds it healthy is logged as
 * "DNS list healthy", never as "healthy again", which is kept for a list that was disabled.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startDnsServer, type DnsTestServer } from '../helpers/dns-server.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { until } from '../helpers/until.ts';

describe('DNS list health log lines', () => {
    let dns: DnsTestServer;
    let up: ScriptedUpstream;
    let mw: TestApp;

    before(async () => {
        // both lists list their RFC 5782 test entry and nothing else: healthy at the first probe
        dns = await startDnsServer({
            '2.0.0.127.bl.test': { A: ['127.0.0.2'] },
            '2.0.0.127.bl2.test': { A: ['127.0.0.2'] },
        });
        up = await startScriptedUpstream({ ehlo: ['SIZE 1000000'] });
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                `dns: { servers: ["${dns.address}"], timeout: 1s }`,
                "reputation: { dnsbl: ['bl.test*3'] }",
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw?.stop();
        await up?.close();
        await dns?.close();
    });

    const lines = (zone: string): string[] =>
        mw.logs.filter((l) => l.zone === zone && String(l.msg).startsWith('DNS list')).map((l) => String(l.msg));

    it('logs a list healthy at its first probe, not "healthy again"', () => {
        assert.deepEqual(lines('bl.test'), ['DNS list healthy: asked from now on']);
    });

    it('logs a list a reload adds the same way', async () => {
        const file = join(mw.dir, 'mailwarden.yaml');
        writeFileSync(
            file,
            readFileSync(file, 'utf8').replace("dnsbl: ['bl.test*3']", "dnsbl: ['bl.test*3', 'bl2.test*3']"),
        );
        mw.app.reload();
        await until('the added list is probed', () => lines('bl2.test').length > 0);
        assert.deepEqual(lines('bl2.test'), ['DNS list healthy: asked from now on']);
        assert.ok(!mw.logs.some((l) => String(l.msg).startsWith('DNS list healthy again')));
    });
});
