/**
 * Connection slots and timeouts end to end, with clients on many loopback source addresses
 * (127.0.0.0/8 is all local on Linux): idle clients of one /24 cannot take the slots of a
 * client from another network, on a STARTTLS listener and before the handshake of an
 * implicit-TLS listener; a full listener answers 421 4.7.0 with our text; the limits hold
 * under parallel connects; a session without MAIL FROM is closed after preTransactionTimeout
 * with 421 4.4.2, a session with a transaction is not; a client reset is logged once at info
 * with real fields, never at warn or error.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { smtpConnect, type SmtpClient, type SmtpReply } from '../helpers/smtp-client.ts';
import { createTestCertificate, type TestCertificate } from '../helpers/tls-cert.ts';

const EHLO = ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN', 'SIZE 1000000'];

function config(listener: string, upstreamPort: number, extra: string[] = []): string {
    return [
        'hostname: mx.example.test',
        'domains: [example.test]',
        ...extra,
        'listeners:',
        `  - ${listener}`,
        `upstream: { url: "smtp://127.0.0.1:${upstreamPort}" }`,
        'http: false',
    ].join('\n');
}

/** Connects from `localAddress` and reads the first reply (greeting or refusal). */
async function greet(port: number, localAddress: string): Promise<{ client: SmtpClient; reply: SmtpReply }> {
    const client = await smtpConnect(port, { localAddress });
    return { client, reply: await client.greeting() };
}

async function waitFor(what: string, check: () => boolean, timeoutMs = 5000): Promise<void> {
    const until = Date.now() + timeoutMs;
    while (!check()) {
        if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 20));
    }
}

describe('connection slots', () => {
    let up: ScriptedUpstream;
    let mw: TestApp;
    const held: SmtpClient[] = [];
    before(async () => {
        up = await startScriptedUpstream({ ehlo: EHLO });
        mw = await startApp(
            config('{ name: mx, host: 127.0.0.1, port: 0, mode: mx, maxClients: 6, maxClientsPerNetwork: 2 }', up.port),
        );
    });
    after(async () => {
        for (const c of held) c.close();
        await mw.stop();
        await up.close();
    });
    const closeAll = async (): Promise<void> => {
        for (const c of held.splice(0)) c.close();
        await waitForActive(mw, 0);
    };

    it('keeps idle clients of one /24 from taking the slots of another network', async () => {
        const replies: SmtpReply[] = [];
        for (let i = 1; i <= 6; i++) {
            const { client, reply } = await greet(mw.port(), `127.0.1.${i}`);
            held.push(client);
            replies.push(reply);
        }
        assert.deepEqual(
            replies.map((r) => r.code),
            [220, 220, 421, 421, 421, 421],
        );
        assert.equal(
            replies[2]!.text,
            '4.7.0 Too many simultaneous connections from your network 127.0.1.0/24; close some and try again in a few minutes',
        );
        const other = await greet(mw.port(), '127.0.2.1');
        held.push(other.client);
        assert.equal(other.reply.code, 220, other.reply.raw);
        assert.equal((await other.client.cmd('EHLO other.example')).code, 250);
        const refused = await mw.app.metrics.connectionsRefused.get();
        assert.equal(refused.values.find((v) => v.labels.reason === 'network_limit')?.value, 4);
        await closeAll();
    });

    it('answers 421 4.7.0 with our text when the listener is full', async () => {
        for (let i = 1; i <= 6; i++) {
            const { client, reply } = await greet(mw.port(), `127.0.${10 + i}.1`);
            held.push(client);
            assert.equal(reply.code, 220, `client ${i}: ${reply.raw}`);
        }
        const { client, reply } = await greet(mw.port(), '127.0.20.1');
        held.push(client);
        assert.equal(
            reply.raw,
            '421 4.7.0 Too many connections to this server right now; please try again in a few minutes\r\n',
        );
        await client.waitClosed();
        await closeAll();
    });

    it('holds both limits when many clients connect at once', async () => {
        // 24 clients of one network and 3 each of 8 others, all at the same moment
        const addresses = [
            ...Array.from({ length: 24 }, (_, i) => `127.0.30.${i + 1}`),
            ...Array.from({ length: 24 }, (_, i) => `127.0.${31 + (i % 8)}.${Math.floor(i / 8) + 1}`),
        ];
        const results = await Promise.all(addresses.map((a) => greet(mw.port(), a)));
        held.push(...results.map((r) => r.client));
        const greeted = results.filter((r) => r.reply.code === 220);
        assert.equal(greeted.length, 6, 'maxClients holds');
        const fromBig = results.filter((r, i) => i < 24 && r.reply.code === 220).length;
        assert.ok(fromBig <= 2, `one network holds at most maxClientsPerNetwork (${fromBig})`);
        for (const r of results) {
            if (r.reply.code !== 220) assert.match(r.reply.raw, /^421 4\.7\.0 Too many /);
        }
        await closeAll();
    });

    it('frees a slot when its connection ends', async () => {
        const first = await greet(mw.port(), '127.0.40.1');
        const second = await greet(mw.port(), '127.0.40.2');
        const third = await greet(mw.port(), '127.0.40.3');
        held.push(second.client, third.client);
        assert.deepEqual([first.reply.code, second.reply.code, third.reply.code], [220, 220, 421]);
        assert.equal((await first.client.cmd('QUIT')).raw, '221 2.0.0 Goodbye; closing the connection\r\n');
        first.client.close();
        await waitForActive(mw, 1);
        const fourth = await greet(mw.port(), '127.0.40.4');
        held.push(fourth.client);
        assert.equal(fourth.reply.code, 220);
        await closeAll();
    });
});

/** Waits until the listener `mx` has `n` open sessions. */
async function waitForActive(mw: TestApp, n: number): Promise<void> {
    const until = Date.now() + 5000;
    for (;;) {
        const v = (await mw.app.metrics.sessionsActive.get()).values.find((x) => x.labels.listener === 'mx');
        if ((v?.value ?? 0) === n) return;
        if (Date.now() > until) throw new Error(`sessions_active stayed at ${v?.value} (waiting for ${n})`);
        await new Promise((r) => setTimeout(r, 20));
    }
}

describe('implicit TLS: the handshake queue', () => {
    let cert: TestCertificate;
    let up: ScriptedUpstream;
    let mw: TestApp;
    before(async () => {
        cert = await createTestCertificate();
        up = await startScriptedUpstream({ ehlo: EHLO });
        mw = await startApp(
            config(
                '{ name: smtps, host: 127.0.0.1, port: 0, mode: mx, tls: implicit, maxClients: 4, maxClientsPerNetwork: 2, preTransactionTimeout: 1s, socketTimeout: 60s }',
                up.port,
                [`tls: { cert: "${cert.certPath}", key: "${cert.keyPath}" }`],
            ),
        );
    });
    after(async () => {
        await mw.stop();
        await up.close();
        cert.cleanup();
    });

    it('lets one network hold only its share of handshakes, and closes silent ones after preTransactionTimeout', async () => {
        // raw TCP connections that never start the TLS handshake
        const silent = await Promise.all(
            [1, 2, 3, 4].map(
                (i) =>
                    new Promise<net.Socket>((resolve, reject) => {
                        const s = net.connect({ host: '127.0.0.1', port: mw.port(), localAddress: `127.0.50.${i}` });
                        s.once('connect', () => resolve(s));
                        s.once('error', reject);
                    }),
            ),
        );
        const closedAt = silent.map(
            (s) => new Promise<number>((resolve) => s.once('close', () => resolve(Date.now()))),
        );
        for (const s of silent) s.on('error', () => undefined);
        const started = Date.now();
        const c = await smtpConnect(mw.port(), { tls: 'implicit', localAddress: '127.0.51.1' });
        assert.equal((await c.greeting()).code, 220, 'a client of another network is served');
        c.close();
        const times = (await Promise.all(closedAt)).map((t) => t - started).sort((a, b) => a - b);
        // two are refused at once; the two that held a slot are closed after 1 s, not 60 s
        assert.ok(times[1]! < 500, `refused at accept: ${times.join(', ')}`);
        assert.ok(times[3]! >= 800 && times[3]! < 5000, `closed by the pre-transaction timeout: ${times.join(', ')}`);
    });
});

describe('pre-transaction timeout', () => {
    let up: ScriptedUpstream;
    let mw: TestApp;
    before(async () => {
        up = await startScriptedUpstream({ ehlo: EHLO });
        mw = await startApp(
            config(
                '{ name: mx, host: 127.0.0.1, port: 0, mode: mx, preTransactionTimeout: 1s, socketTimeout: 60s }',
                up.port,
            ),
        );
    });
    after(async () => {
        await mw.stop();
        await up.close();
    });

    it('closes a session that started no transaction with 421 4.4.2', async () => {
        const c = await smtpConnect(mw.port(), { localAddress: '127.0.60.1' });
        await c.greeting();
        await c.cmd('EHLO idle.example');
        const started = Date.now();
        const bye = await c.reply(5000);
        assert.equal(bye.raw, '421 4.4.2 No mail transaction started within 1 second; closing the connection\r\n');
        assert.ok(Date.now() - started < 1500);
        await c.waitClosed();
        const timeouts = await mw.app.metrics.connectionTimeouts.get();
        assert.equal(timeouts.values.find((v) => v.labels.timeout === 'pre_transaction')?.value, 1);
        const line = mw.logs.find((l) => l.msg === 'closing: no mail transaction started in time');
        assert.ok(line, 'logged');
        assert.equal(line.level, 30);
        assert.equal(line.client, '127.0.60.1');
        assert.equal(line.stage, 'before MAIL');
    });

    it('leaves a session alone once MAIL FROM was accepted', async () => {
        const c = await smtpConnect(mw.port(), { localAddress: '127.0.60.2' });
        await c.greeting();
        await c.cmd('EHLO busy.example');
        assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
        await new Promise((r) => setTimeout(r, 1500));
        assert.equal((await c.cmd('RSET')).raw, '250 2.0.0 Reset: no mail transaction is open\r\n');
        await new Promise((r) => setTimeout(r, 700));
        assert.equal((await c.cmd('NOOP')).code, 250);
        c.close();
    });
});

describe('client resets', () => {
    let up: ScriptedUpstream;
    let mw: TestApp;
    before(async () => {
        up = await startScriptedUpstream({ ehlo: EHLO });
        mw = await startApp(config('{ name: mx, host: 127.0.0.1, port: 0, mode: mx }', up.port));
    });
    after(async () => {
        await mw.stop();
        await up.close();
    });

    const scenarios: { name: string; stage: string; steps: string[]; data?: boolean }[] = [
        { name: 'right after the greeting', stage: 'before HELO', steps: [] },
        {
            name: 'in a transaction',
            stage: 'transaction',
            steps: ['EHLO c.example', 'MAIL FROM:<a@example.org>', 'RCPT TO:<b@example.test>'],
        },
        {
            name: 'in the middle of DATA',
            stage: 'data',
            steps: ['EHLO c.example', 'MAIL FROM:<a@example.org>', 'RCPT TO:<b@example.test>', 'DATA'],
            data: true,
        },
    ];
    for (const s of scenarios) {
        it(`logs a reset ${s.name} once, at info, with real fields`, async () => {
            const before = mw.logs.length;
            const c = await smtpConnect(mw.port(), { localAddress: '127.0.70.1' });
            await c.greeting();
            for (const step of s.steps) assert.ok((await c.cmd(step)).code < 400, step);
            if (s.data) c.write('Subject: half\r\n\r\nhalf a message');
            const port = c.socket.localPort;
            await new Promise((r) => setTimeout(r, 50));
            c.socket.resetAndDestroy();
            await waitFor('the reset to be logged', () =>
                mw.logs.slice(before).some((l) => String(l.msg).startsWith('connection ended by the client')),
            );
            await new Promise((r) => setTimeout(r, 200));
            const lines = mw.logs.slice(before);
            assert.deepEqual(
                lines.filter((l) => Number(l.level) >= 40),
                [],
                'nothing at warn or above',
            );
            const resets = lines.filter((l) => String(l.msg).startsWith('connection ended by the client'));
            assert.equal(resets.length, 1);
            const r = resets[0]!;
            assert.equal(r.msg, 'connection ended by the client: client reset');
            assert.equal(r.level, 30);
            assert.equal(r.listener, 'mx');
            assert.equal(r.client, '127.0.70.1');
            assert.equal(r.clientPort, port);
            assert.equal(r.code, 'ECONNRESET');
            assert.equal(r.stage, s.stage);
            assert.match(String(r.session), /^[0-9a-v]{16}$/);
            for (const l of lines) assert.doesNotMatch(JSON.stringify(l), /%s/);
        });
    }
});
