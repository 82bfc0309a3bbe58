/**
 * Listener behaviour end to end: STARTTLS and implicit TLS with a generated certificate
 * (TLS 1.2 or newer only), PROXY protocol (v1 and v2) read only from trusted CIDRs, the HTTP
 * endpoints, the certificate's expiry gauge (at start and at a reload), and the drain on shutdown (421 4.3.2 to idle sessions, transactions in flight
 * finish, from the accepted MAIL to the reply to their DATA, within the shutdown timeout).
 */
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { copyFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import type { App } from '../../src/app.ts';
import { NO_CAPABILITIES } from '../../src/upstream/capabilities.ts';
import type { Upstream } from '../../src/upstream/types.ts';
import { formatProxyHeader } from '../../src/net/proxy-protocol.ts';
import { startApp, startScriptedGateway, type TestApp } from '../helpers/app.ts';
import { startScriptedUpstream, unstuff, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { sendMail, smtpConnect, type SmtpClient } from '../helpers/smtp-client.ts';
import { createTestCertificate, type TestCertificate } from '../helpers/tls-cert.ts';
import { until } from '../helpers/until.ts';

const MSG = 'From: a@example.org\r\nSubject: t\r\n\r\nbody\r\n';
const EHLO = ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN', 'SIZE 1000000'];

describe('TLS', () => {
    let cert: TestCertificate;
    let up: ScriptedUpstream;
    let mw: TestApp;
    before(async () => {
        cert = await createTestCertificate();
        up = await startScriptedUpstream({ ehlo: EHLO });
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                `tls: { cert: "${cert.certPath}", key: "${cert.keyPath}" }`,
                'listeners:',
                '  - { name: mx, host: 127.0.0.1, port: 0, mode: mx }',
                '  - { name: implicit, host: 127.0.0.1, port: 0, mode: mx, tls: implicit }',
                '  - { name: implicit-lb, host: 127.0.0.1, port: 0, mode: mx, tls: implicit, proxyProtocol: [127.0.0.1] }',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw.stop();
        await up.close();
        cert.cleanup();
    });

    it('offers STARTTLS, upgrades with a verified certificate, and records ESMTPS', async () => {
        const c = await smtpConnect(mw.port('mx'));
        await c.greeting();
        const ehlo = await c.cmd('EHLO client.example');
        assert.ok(ehlo.lines.includes('STARTTLS'));
        assert.equal((await c.starttls({ ca: cert.cert, servername: 'localhost' })).code, 220);
        const ehlo2 = await c.cmd('EHLO client.example');
        assert.ok(!ehlo2.lines.includes('STARTTLS'));
        assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
        assert.equal((await c.cmd('RCPT TO:<b@example.test>')).code, 250);
        assert.equal((await c.cmd('DATA')).code, 354);
        c.write(MSG + '.\r\n');
        assert.equal((await c.reply()).code, 250);
        c.close();
        const data = unstuff(up.transactions.at(-1)!.data!)
            .toString('latin1')
            .replace(/\r\n\t/g, ' ');
        assert.match(data, /with ESMTPS \(using TLSv1\.[23] with cipher [A-Z0-9_-]+\) id /);
    });

    it('speaks TLS from the first byte on an implicit-TLS listener', async () => {
        const c = await smtpConnect(mw.port('implicit'), { tls: 'implicit', ca: cert.cert, servername: 'localhost' });
        assert.equal((await c.greeting()).code, 220);
        assert.equal((await c.cmd('EHLO client.example')).code, 250);
        assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
        c.close();
    });

    it('reads a PROXY v2 header before the TLS handshake of an implicit-TLS listener, sent with the ClientHello', async () => {
        const raw = net.connect(mw.port('implicit-lb'), '127.0.0.1');
        await new Promise((resolve) => raw.once('connect', resolve));
        // header and ClientHello leave in one segment
        raw.cork();
        raw.write(formatProxyHeader(2, { address: '198.51.100.4', port: 4444 }, { address: '127.0.0.1', port: 465 }));
        const secure = tls.connect({ socket: raw, ca: cert.cert, servername: 'localhost' });
        process.nextTick(() => raw.uncork());
        await new Promise((resolve, reject) => {
            secure.once('secureConnect', resolve);
            secure.once('error', reject);
        });
        let text = '';
        const until = (re: RegExp): Promise<void> =>
            new Promise((resolve) => {
                const check = (): void => {
                    if (re.test(text)) {
                        secure.off('data', onData);
                        resolve();
                    }
                };
                const onData = (d: Buffer): void => {
                    text += d.toString('latin1');
                    check();
                };
                secure.on('data', onData);
                check();
            });
        await until(/^220 /m);
        // lock-step: EHLO ends a pipelined group (RFC 2920 section 3.1)
        secure.write('EHLO client.example\r\n');
        await until(/^250 /m);
        secure.write('MAIL FROM:<a@example.org>\r\n');
        await until(/^250 [\d.]* ?.*\r\n[\s\S]*^250 /m);
        secure.destroy();
        await up.idle();
        assert.equal(up.connections.at(-1)!.xclient[0]!.ADDR, '198.51.100.4');
    });

    it('serves a renewed certificate after a reload (SIGHUP), and keeps the old one when the new pair is broken', async () => {
        const fingerprint = async (): Promise<string> => {
            const socket = tls.connect({ port: mw.port('implicit'), host: '127.0.0.1', rejectUnauthorized: false });
            await new Promise((resolve, reject) => {
                socket.once('secureConnect', resolve);
                socket.once('error', reject);
            });
            const fp = socket.getPeerCertificate().fingerprint256;
            socket.destroy();
            return fp;
        };
        const expiry = async (): Promise<number | undefined> =>
            (await mw.app.metrics.tlsCertificateExpiry.get()).values[0]?.value;
        const notAfter = (pem: string): number => Date.parse(new X509Certificate(pem).validTo) / 1000;
        const before = await fingerprint();
        // the gauge of the certificate served, set at start
        assert.equal(await expiry(), notAfter(cert.cert));
        const renewed = await createTestCertificate({ days: 90 });
        try {
            copyFileSync(renewed.certPath, cert.certPath);
            copyFileSync(renewed.keyPath, cert.keyPath);
            mw.app.reload();
            const after = await fingerprint();
            assert.notEqual(after, before);
            // and at the reload that put the renewed one in force
            assert.equal(await expiry(), notAfter(renewed.cert));
            assert.ok(notAfter(renewed.cert) - Date.now() / 1000 > 89 * 86400);
            // a certificate without its key: refused, the renewed pair stays in use
            const other = await createTestCertificate();
            copyFileSync(other.certPath, cert.certPath);
            const errors = (await mw.app.metrics.configReloads.get()).values.find(
                (v) => v.labels.result === 'error',
            )!.value;
            mw.app.reload();
            const errorsNow = (await mw.app.metrics.configReloads.get()).values.find(
                (v) => v.labels.result === 'error',
            )!.value;
            // refused twice: by the config reload (its validation checks that the pair matches)
            // and by the certificate reload; both keep what is in force
            assert.equal(errorsNow, errors + 2);
            assert.equal(await fingerprint(), after);
            assert.equal(await expiry(), notAfter(renewed.cert), 'a refused pair leaves the gauge as it was');
            // the certificate reload says which files do not belong together, in check's words
            const failed = mw.logs.filter((l) => l.reload === 'tls' && String(l.msg).startsWith('reload failed'));
            assert.match(
                String(failed.at(-1)?.issues),
                /tls\.key: .*key\.pem is not the private key of the certificate in .*cert\.pem/,
                JSON.stringify(failed.at(-1)),
            );
            other.cleanup();
        } finally {
            renewed.cleanup();
        }
    });

    it('refuses TLS versions older than 1.2', async () => {
        const socket = tls.connect({
            port: mw.port('implicit'),
            host: '127.0.0.1',
            rejectUnauthorized: false,
            minVersion: 'TLSv1',
            maxVersion: 'TLSv1.1',
        });
        const outcome = await new Promise<string>((resolve) => {
            socket.once('secureConnect', () => resolve('connected'));
            socket.once('error', (err: Error) => resolve(`error: ${err.message}`));
        });
        socket.destroy();
        assert.match(outcome, /^error/);
    });
});

describe('PROXY protocol', () => {
    let up: ScriptedUpstream;
    let mw: TestApp;
    before(async () => {
        up = await startScriptedUpstream({ ehlo: EHLO });
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners:',
                '  - { name: trusted, host: 127.0.0.1, port: 0, mode: mx, proxyProtocol: [127.0.0.0/8] }',
                '  - { name: untrusted, host: 127.0.0.1, port: 0, mode: mx, proxyProtocol: [10.0.0.0/8, "2001:db8::/32"] }',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw.stop();
        await up.close();
    });

    it('takes the client address from a trusted proxy and passes it on with XCLIENT', async () => {
        const c = await smtpConnect(mw.port('trusted'));
        c.write('PROXY TCP4 203.0.113.9 127.0.0.1 40000 25\r\n');
        assert.equal((await c.greeting()).code, 220);
        await c.cmd('EHLO client.example');
        assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
        c.close();
        await up.idle();
        assert.equal(up.connections.at(-1)!.xclient[0]!.ADDR, '203.0.113.9');
        assert.equal(up.connections.at(-1)!.xclient[0]!.PORT, '40000');
    });

    it('closes the connection of a peer outside the trusted CIDRs that sends a PROXY header', async () => {
        const c = await smtpConnect(mw.port('untrusted'));
        assert.equal((await c.greeting()).code, 220);
        c.write('PROXY TCP4 203.0.113.9 127.0.0.1 40000 25\r\n');
        await c.waitClosed(3000);
        await assert.rejects(c.reply(100), 'the PROXY line gets no answer');
        const line = mw.logs.find(
            (l) => l.msg === 'connection closed: PROXY header from an untrusted peer' && l.listener === 'untrusted',
        );
        assert.ok(line, 'logged');
        assert.equal(line.client, '127.0.0.1');
    });

    it('serves a peer outside the trusted CIDRs that speaks plain SMTP', async () => {
        const c = await smtpConnect(mw.port('untrusted'));
        assert.equal((await c.greeting()).code, 220);
        await c.cmd('EHLO client.example');
        assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
        c.close();
        await up.idle();
        assert.equal(up.connections.at(-1)!.xclient[0]!.ADDR, '127.0.0.1');
    });
});

describe('HTTP endpoints', () => {
    it('serves /healthz, /metrics and /readyz that follows the upstream', async (t) => {
        const up = await startScriptedUpstream({ ehlo: EHLO });
        const port = await new Promise<number>((resolve) => {
            const s = net.createServer().listen(0, '127.0.0.1', () => {
                const p = (s.address() as net.AddressInfo).port;
                s.close(() => resolve(p));
            });
        });
        const mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}", connectTimeout: 500ms }`,
                `http: { host: 127.0.0.1, port: ${port} }`,
            ].join('\n'),
        );
        t.after(async () => {
            await mw.stop();
            await up.close();
        });
        const base = `http://127.0.0.1:${mw.app.httpPort}`;
        assert.equal((await fetch(`${base}/healthz`)).status, 200);
        assert.equal((await fetch(`${base}/readyz`)).status, 200);
        await sendMail(mw.port(), { from: 'a@example.org', to: ['b@example.test'], data: MSG });
        const metrics = await (await fetch(`${base}/metrics`)).text();
        for (const name of [
            'mailwarden_connections_total{listener="mx"} 1',
            'mailwarden_messages_total{listener="mx",action="accept"} 1',
            'mailwarden_upstream_replies_total{class="2xx",stage="data"}',
            'mailwarden_build_info{version=',
            'mailwarden_message_size_bytes_bucket',
            'process_resident_memory_bytes',
        ]) {
            assert.ok(metrics.includes(name), `metrics has ${name}`);
        }
        assert.doesNotMatch(metrics, /127\.0\.0\.1|example\.org/, 'no address becomes a label value');
        assert.equal((await fetch(`${base}/nope`)).status, 404);
        await up.close();
        // the last answer is given again for 2 s: the upstream's end shows within that
        let notReady = await fetch(`${base}/readyz`);
        const deadline = Date.now() + 5_000;
        while (notReady.status === 200 && Date.now() < deadline) {
            await new Promise((r) => setTimeout(r, 100));
            notReady = await fetch(`${base}/readyz`);
        }
        assert.equal(notReady.status, 503);
        assert.match(await notReady.text(), /not ready: upstream/);
    });
});

describe('shutdown', () => {
    /** A gateway in front of a scripted upstream with this shutdownTimeout, both ended after the test. */
    async function gateway(
        t: { after(fn: () => Promise<void>): void },
        shutdownTimeout: string,
        upstreamOptions: Parameters<typeof startScriptedUpstream>[0] = { ehlo: EHLO },
    ) {
        const up = await startScriptedUpstream(upstreamOptions);
        const mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                'http: false',
                `shutdownTimeout: ${shutdownTimeout}`,
            ].join('\n'),
        );
        t.after(async () => {
            await mw.stop();
            await up.close();
        });
        return { up, mw };
    }

    /** A client connected and greeted with EHLO `name`. */
    async function greeted(port: number, name: string) {
        const c = await smtpConnect(port);
        await c.greeting();
        await c.cmd(`EHLO ${name}`);
        return c;
    }

    it('answers 421 4.3.2 to idle sessions, lets a message in flight finish, and stops accepting', async (t) => {
        const { up, mw } = await gateway(t, '5s', { ehlo: EHLO, onData: () => ({ delayMs: 400 }) });
        const port = mw.port();
        const idle = await greeted(port, 'idle.example');
        const busy = await greeted(port, 'busy.example');
        await busy.cmd('MAIL FROM:<a@example.org>');
        await busy.cmd('RCPT TO:<b@example.test>');
        await busy.cmd('DATA');
        busy.write(MSG + '.\r\n');
        await new Promise((r) => setTimeout(r, 100));
        const stopping = mw.stop();
        const bye = await idle.reply();
        assert.equal(bye.code, 421);
        assert.match(bye.text, /^4\.3\.2 /);
        const done = await busy.reply();
        assert.equal(done.code, 250, 'the message in flight finished');
        assert.equal(up.transactions.at(-1)!.completed, true);
        await stopping;
        await assert.rejects(smtpConnect(port), /ECONNREFUSED/);
    });

    it('lets a transaction begun before the shutdown finish (more RCPT, DATA), then answers 421 4.3.2', async (t) => {
        const { up, mw } = await gateway(t, '10s');
        const port = mw.port();
        const idle = await greeted(port, 'idle.example');
        const sending = await greeted(port, 'sending.example');
        assert.equal((await sending.cmd('MAIL FROM:<a@example.org>')).code, 250);
        assert.equal((await sending.cmd('RCPT TO:<b@example.test>')).code, 250);
        const resetting = await greeted(port, 'resetting.example');
        assert.equal((await resetting.cmd('MAIL FROM:<c@example.org>')).code, 250);

        const stopping = mw.stop();
        // The idle session hears the 421 at once: the drain has begun.
        assert.equal((await idle.reply()).code, 421);
        // The open transactions go on.
        assert.equal((await sending.cmd('RCPT TO:<c@example.test>')).code, 250);
        assert.equal((await sending.cmd('DATA')).code, 354);
        const done = await sending.cmd(MSG + '.');
        assert.equal(done.code, 250, done.raw);
        const sent = up.transactions.find((tx) => tx.mail === 'a@example.org')!;
        assert.equal(sent.completed, true);
        assert.deepEqual(sent.rcpts, ['b@example.test', 'c@example.test']);
        // Once its transaction has ended, the session is told 421 without asking.
        const bye = await sending.reply();
        assert.equal(bye.code, 421);
        assert.match(bye.text, /^4\.3\.2 Service shutting down/);
        // RSET ends a transaction too: 250 for it, then the 421.
        assert.equal((await resetting.cmd('RSET')).code, 250);
        assert.equal((await resetting.reply()).code, 421);
        await stopping;
    });

    it('answers 421 4.3.2 to a transaction still open when the shutdown timeout has passed', async (t) => {
        const { up, mw } = await gateway(t, '500ms');
        const c = await greeted(mw.port(), 'slow.example');
        assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
        assert.equal((await c.cmd('RCPT TO:<b@example.test>')).code, 250);
        const stopping = mw.stop();
        // The client says nothing more: the drain waits for it only as long as the timeout.
        const bye = await c.reply(10_000);
        assert.equal(bye.code, 421);
        assert.match(bye.text, /^4\.3\.2 /);
        await stopping;
        assert.ok(up.transactions.every((tx) => !tx.completed));
    });

    it('gives 250 to a message the upstream accepted just as the shutdown began', async (t) => {
        // The upstream answers 250 and, at that very moment, the drain starts: the session is
        // then between the upstream's 250 and its own, removing its spool file. A 421 there
        // would make the client send again a message that was delivered.
        let app: App | null = null;
        const shutdown: { done?: Promise<void> } = {};
        const upstream: Upstream = {
            description: 'accepting upstream that starts the shutdown',
            probe: () => Promise.resolve(NO_CAPABILITIES),
            open: () =>
                Promise.resolve({
                    usable: true,
                    peer: 'test',
                    capabilities: NO_CAPABILITIES,
                    mailFrom: () => Promise.resolve({ code: 250, enhanced: '2.1.0', text: 'ok' }),
                    rcptTo: () => Promise.resolve({ code: 250, enhanced: '2.1.5', text: 'ok' }),
                    async data(message) {
                        for await (const _ of message) void _;
                        shutdown.done = app!.stop();
                        return { code: 250, enhanced: '2.0.0', text: 'queued as ABC123' };
                    },
                    reset: () => Promise.resolve(),
                    close: () => Promise.resolve(),
                }),
        };
        const mw = await startApp(
            [
                'hostname: mx.example.test',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                'http: false',
                'shutdownTimeout: 5s',
                // bigger than the memory limit: the message goes through a spool file
                'spool: { memoryLimit: 1KB }',
            ].join('\n'),
            { upstream },
        );
        app = mw.app;
        t.after(() => mw.stop());
        const result = await sendMail(mw.port(), {
            from: 'a@example.org',
            to: ['b@example.test'],
            data: MSG + 'x'.repeat(4096) + '\r\n',
        });
        assert.equal(result.message?.code, 250, result.message?.raw);
        assert.match(result.message?.text ?? '', /ABC123/);
        await shutdown.done;
    });
});

describe('a client that hangs up after sending the message', () => {
    it('does not cut the upstream off: the upstream answers, and its 250 is counted as unconfirmed', async (t) => {
        const up = await startScriptedUpstream({ ehlo: EHLO, onData: () => ({ delayMs: 300 }) });
        const mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                'http: false',
            ].join('\n'),
        );
        t.after(async () => {
            await mw.stop();
            await up.close();
        });
        const c = await smtpConnect(mw.port());
        await c.greeting();
        await c.cmd('EHLO leaving.example');
        await c.cmd('MAIL FROM:<a@example.org>');
        await c.cmd('RCPT TO:<b@example.test>');
        await c.cmd('DATA');
        c.write(MSG + '.\r\n');
        await new Promise((r) => setTimeout(r, 50));
        c.close();
        for (let i = 0; i < 100 && !mw.logs.some((l) => l.duplicateRisk === true); i++) {
            await new Promise((r) => setTimeout(r, 20));
        }
        const tx = up.transactions.at(-1)!;
        assert.equal(tx.completed, true);
        assert.match(tx.finalReply ?? '', /^250/);
        const metrics = await mw.app.metrics.registry.getSingleMetricAsString('mailwarden_accepted_unconfirmed_total');
        assert.match(metrics, /mailwarden_accepted_unconfirmed_total\{listener="mx",reason="client-gone"\} 1/);
    });
});

describe('a client that pipelines the end of data and QUIT, then hangs up', () => {
    it('has its message forwarded all the same, as Postfix queues it (it will not send it again)', async (t) => {
        // the checks take longer than the client stays
        const slow = {
            name: 'slow',
            stages: ['data'] as const,
            timeoutMs: 5000,
            onError: 'ignore' as const,
            run: () => new Promise<{ facts: Record<string, never> }>((r) => setTimeout(() => r({ facts: {} }), 300)),
        };
        const g = await startScriptedGateway(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
            ],
            { upstream: { ehlo: EHLO }, deps: { checks: [slow] } },
        );
        t.after(() => g.close());
        const { up, mw } = g;
        const c = await smtpConnect(mw.port());
        await c.greeting();
        await c.cmd('EHLO printer.example');
        await c.cmd('MAIL FROM:<scan@example.org>');
        await c.cmd('RCPT TO:<b@example.test>');
        assert.equal((await c.cmd('DATA')).code, 354);
        c.write(MSG + '.\r\nQUIT\r\n');
        c.close();
        await until('a decision', () => mw.logs.some((l) => l.msg === 'decision'));
        assert.equal(mw.logs.find((l) => l.msg === 'decision')?.action, 'accept');
        assert.equal(up.transactions.filter((tx) => tx.completed).length, 1, 'delivered once');
    });
});

describe('a client that goes away while the upstream accepts', () => {
    it('is counted and logged as a possible duplicate', async (t) => {
        let client: SmtpClient | null = null;
        const upstream: Upstream = {
            description: 'upstream that accepts after the client left',
            probe: () => Promise.resolve(NO_CAPABILITIES),
            open: () =>
                Promise.resolve({
                    usable: true,
                    peer: 'test',
                    capabilities: NO_CAPABILITIES,
                    mailFrom: () => Promise.resolve({ code: 250, enhanced: '2.1.0', text: 'ok' }),
                    rcptTo: () => Promise.resolve({ code: 250, enhanced: '2.1.5', text: 'ok' }),
                    async data(message) {
                        for await (const _ of message) void _;
                        client!.socket.destroy();
                        await new Promise((r) => setTimeout(r, 50));
                        return { code: 250, enhanced: '2.0.0', text: 'queued as DUP1' };
                    },
                    reset: () => Promise.resolve(),
                    close: () => Promise.resolve(),
                }),
        };
        const mw = await startApp(
            [
                'hostname: mx.example.test',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                'http: false',
            ].join('\n'),
            { upstream },
        );
        t.after(() => mw.stop());
        client = await smtpConnect(mw.port());
        await client.greeting();
        await client.cmd('EHLO gone.example');
        await client.cmd('MAIL FROM:<a@example.org>');
        await client.cmd('RCPT TO:<b@example.test>');
        await client.cmd('DATA');
        client.write(MSG + '.\r\n');
        await client.waitClosed();
        for (let i = 0; i < 50 && !mw.logs.some((l) => l.duplicateRisk === true); i++) {
            await new Promise((r) => setTimeout(r, 20));
        }
        assert.ok(
            mw.logs.some((l) => l.duplicateRisk === true && l.level === 40),
            'a warning names the risk',
        );
        const metrics = await mw.app.metrics.registry.getSingleMetricAsString('mailwarden_accepted_unconfirmed_total');
        assert.match(metrics, /mailwarden_accepted_unconfirmed_total\{listener="mx",reason="client-gone"\} 1/);
    });
});

describe('an upstream whose answer to the end of data never comes', () => {
    const ID = '<unanswered-1@example.org>';
    const message = `From: a@example.org\r\nSubject: t\r\nMessage-ID: ${ID}\r\n\r\nbody\r\n`;

    async function through(t: { after(fn: () => Promise<void>): void }, onData: () => { silent?: true; close?: true }) {
        const up = await startScriptedUpstream({ ehlo: EHLO, onData });
        const mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}", dataTimeout: 1s }`,
                'http: false',
            ].join('\n'),
        );
        t.after(async () => {
            await mw.stop();
            await up.close();
        });
        const result = await sendMail(mw.port(), { from: 'a@example.org', to: ['b@example.test'], data: message });
        return { up, mw, result };
    }

    for (const [name, onData] of [
        ['times out', () => ({ silent: true as const })],
        ['closes the connection', () => ({ close: true as const })],
    ] as const) {
        it(`is a possible duplicate when the upstream ${name} after the end of data: logged and counted`, async (t) => {
            const { up, mw, result } = await through(t, onData);
            assert.equal(result.message?.code, 451, result.message?.raw);
            assert.match(result.message?.text ?? '', /^4\.4\.1 /);
            assert.equal(up.transactions[0]?.completed, true, 'the upstream got the whole message');
            const warning = mw.logs.find((l) => l.duplicateRisk === true);
            assert.ok(warning, 'a warning names the risk');
            assert.equal(warning.level, 40);
            assert.equal(warning.messageId, ID);
            assert.equal(warning.reason, 'no-upstream-answer');
            const metrics = await mw.app.metrics.registry.getSingleMetricAsString(
                'mailwarden_accepted_unconfirmed_total',
            );
            assert.match(
                metrics,
                /mailwarden_accepted_unconfirmed_total\{listener="mx",reason="no-upstream-answer"\} 1/,
            );
        });
    }

    it('is no duplicate risk when the upstream fails before the end of data', async (t) => {
        const up = await startScriptedUpstream({
            ehlo: EHLO,
            onCommand: (line) => (line === 'DATA' ? { silent: true } : undefined),
        });
        const mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}", timeout: 1s }`,
                'http: false',
            ].join('\n'),
        );
        t.after(async () => {
            await mw.stop();
            await up.close();
        });
        const result = await sendMail(mw.port(), { from: 'a@example.org', to: ['b@example.test'], data: message });
        assert.equal(result.message?.code, 451);
        assert.equal(up.transactions[0]?.data, null, 'DATA was never answered');
        assert.ok(!mw.logs.some((l) => l.duplicateRisk === true));
    });
});
