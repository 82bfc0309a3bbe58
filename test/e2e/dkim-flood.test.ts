/**
 * A DKIM signature flood through the real proxy (shipped rules, loopback DNS, scripted
 * upstream): one message of 900 DKIM-Signature fields (the most a header section of at most
 * 1,000 fields holds with the message's own), each with its own l= and d=/s= and a
 * right body hash, over a 2 MB body. It is decided (not a 451 after the check's timeout), with
 * at most the capped number of key lookups; the forwarded message shows only the verified
 * signatures; the limit is logged and counted; no DNS query follows the reply; and while it is
 * being checked, other clients get their greeting quickly (measured, with a bound generous
 * enough to tell "bounded" from "several seconds per chunk"). A flood of 3,000 is refused at the
 * end of data for its number of fields, before any key is looked up.
 */
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startDnsServer, type DnsTestServer } from '../helpers/dns-server.ts';
import { canonicalBody, plainFields, signatureFlood } from '../helpers/hostile-mail.ts';
import { startScriptedUpstream, unstuff, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { sendMail, smtpConnect } from '../helpers/smtp-client.ts';

describe('a DKIM signature flood through the proxy', () => {
    let dns: DnsTestServer;
    let up: ScriptedUpstream;
    let mw: TestApp;
    before(async () => {
        dns = await startDnsServer({});
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN', 'SIZE 100000000'] });
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                `dns: { servers: ["${dns.address}"], timeout: 500ms }`,
                'authentication: { timeout: 10s }',
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw.stop();
        await up.close();
        await dns.close();
    });

    it('is decided with 3 key lookups while other clients are greeted at once', async () => {
        const body = canonicalBody(2 * 1024 * 1024);
        const data = signatureFlood({ count: 900, body }) + plainFields('news@bank.example') + '\r\n' + body.toString();
        const before = dns.queries.length;
        let done = false;
        const sending = sendMail(mw.port(), {
            from: 'bounce@flood.example',
            to: ['bob@example.test'],
            data,
            timeoutMs: 120_000,
        }).finally(() => {
            done = true;
        });
        const greetings: number[] = [];
        while (!done) {
            const started = performance.now();
            const c = await smtpConnect(mw.port(), { timeoutMs: 60_000 });
            await c.greeting();
            greetings.push(performance.now() - started);
            c.close();
            await sleep(100);
        }
        const r = await sending;
        assert.equal(r.message?.code, 250, r.message?.raw);
        // distinct names: a resolver retry after a slow answer asks the same name twice
        const keys = new Set(
            dns.queries
                .slice(before)
                .filter((q) => q.name.includes('._domainkey.'))
                .map((q) => q.name),
        );
        assert.equal(keys.size, 3, [...keys].join(', '));
        const forwarded = unstuff(up.transactions.at(-1)!.data!)
            .toString('latin1')
            .replace(/\r\n[ \t]+/g, ' ');
        const ar = /^Authentication-Results: mx\.example\.test; (.*)$/m.exec(forwarded)?.[1] ?? '';
        assert.equal(ar.match(/dkim=/g)?.length, 3, ar);
        const limits = mw.logs.find((l) => l.msg === 'per-message verification limits applied');
        assert.deepEqual(limits?.limits, ['dkim_body_hashes']);
        assert.equal(limits?.dkimSignatures, 900);
        const metrics = await mw.app.metrics.registry.metrics();
        assert.match(metrics, /mailwarden_auth_limits_total\{limit="dkim_body_hashes"\} 1/);
        assert.match(metrics, /mailwarden_dkim_signatures_skipped_total 897/);
        // nothing was left running: no query after the reply
        const atReply = dns.queries.length;
        await sleep(500);
        assert.equal(dns.queries.length, atReply);
        // a greeting is one round trip on loopback; while a chunk of a 3,000-signature flood was
        // hashed by 3,000 hashers it took seconds
        assert.ok(greetings.length > 0);
        assert.ok(Math.max(...greetings) < 2000, `greeting latencies (ms): ${greetings.map(Math.round).join(' ')}`);
    });

    it('refuses a flood of 3,000 signatures for its number of fields, before any key lookup', async () => {
        const body = canonicalBody(64 * 1024);
        const data =
            signatureFlood({ count: 3000, body }) + plainFields('news@bank.example') + '\r\n' + body.toString();
        const before = dns.queries.length;
        const r = await sendMail(mw.port(), { from: 'bounce@flood.example', to: ['bob@example.test'], data });
        assert.equal(r.message?.code, 552, r.message?.raw);
        assert.match(r.message.text, /^5\.3\.4 Message refused: its header section has more than 1000 fields/);
        assert.equal(dns.queries.slice(before).filter((q) => q.name.includes('._domainkey.')).length, 0);
    });
});
