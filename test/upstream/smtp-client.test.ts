// Tests for the SMTP client towards the upstream: XCLIENT, parameter passthrough, reply
// handling, failures (closed, timeout, garbage, failing source), DATA encoding on the wire,
// STARTTLS and implicit TLS against smtp-server, reuse of a session, and the NOOPs that keep a
// transaction alive while it waits for the message.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import net from 'node:net';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { after, before, describe, it } from 'node:test';
import { SMTPServer, type SMTPServerOptions } from 'smtp-server';
import { silentLogger, type UpstreamDeps } from '../../src/upstream/common.ts';
import { createSmtpUpstream, type SmtpUpstreamConfig } from '../../src/upstream/smtp-client.ts';
import type { ClientIdentity } from '../../src/types.ts';
import { UpstreamError, type UpstreamSession } from '../../src/upstream/types.ts';
import { startScriptedUpstream, unstuff, type ScriptedUpstreamOptions } from '../helpers/scripted-upstream.ts';
import { createTestCertificate, type TestCertificate } from '../helpers/tls-cert.ts';
import { until } from '../helpers/until.ts';

const HOSTNAME = 'mx.mailwarden.test';
const FULL_XCLIENT = 'XCLIENT NAME ADDR PORT PROTO HELO LOGIN';

function config(port: number, over: Partial<SmtpUpstreamConfig> = {}): SmtpUpstreamConfig {
    return {
        kind: 'smtp',
        url: `smtp://127.0.0.1:${port}`,
        host: '127.0.0.1',
        port,
        xclient: false,
        starttls: 'off',
        tlsVerify: false,
        connectTimeoutMs: 2000,
        commandTimeoutMs: 2000,
        dataTimeoutMs: 2000,
        keepAliveMs: 5000,
        ...over,
    };
}

function client(over: Partial<ClientIdentity> = {}): ClientIdentity {
    return {
        ip: '192.0.2.10',
        port: 41000,
        ptr: 'mail.example.net',
        helo: 'mail.example.net',
        proto: 'ESMTP',
        login: null,
        ...over,
    };
}

function upstreamError(kind: string): (err: unknown) => boolean {
    return (err: unknown) => {
        assert.ok(err instanceof UpstreamError, `expected UpstreamError, got ${String(err)}`);
        assert.equal(err.kind, kind, err.message);
        return true;
    };
}

/** Starts a scripted upstream for the test and closes it afterwards. */
async function scripted(t: { after(fn: () => Promise<void>): void }, options: ScriptedUpstreamOptions = {}) {
    const up = await startScriptedUpstream(options);
    t.after(() => up.close());
    return up;
}

async function open(port: number, over: Partial<SmtpUpstreamConfig> = {}, who = client()): Promise<UpstreamSession> {
    return createSmtpUpstream(config(port, over), { hostname: HOSTNAME }).open(who);
}

async function send(session: UpstreamSession, message: string | Buffer | Readable) {
    assert.equal((await session.mailFrom('sender@example.org', {})).code, 250);
    assert.equal((await session.rcptTo('rcpt@example.com')).code, 250);
    const source = message instanceof Readable ? message : Readable.from([Buffer.from(message)]);
    return session.data(source);
}

/** A port on which nothing listens. */
async function closedPort(): Promise<number> {
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as net.AddressInfo;
    await new Promise<void>((resolve) => server.close(() => resolve()));
    return port;
}

describe('XCLIENT', () => {
    it('passes the client with xtext values, IPV6: form and [UNAVAILABLE], then EHLOs in its name', async (t) => {
        const up = await scripted(t, { ehlo: [FULL_XCLIENT, '8BITMIME'] });
        const session = await open(
            up.port,
            { xclient: true },
            client({ ip: '2001:db8::25', ptr: null, helo: 'odd+helo=x y', login: 'user+tag=1 x' }),
        );
        assert.deepEqual(up.commands, [
            `EHLO ${HOSTNAME}`,
            'XCLIENT NAME=[UNAVAILABLE] ADDR=IPV6:2001:db8::25 PORT=41000 PROTO=ESMTP HELO=odd+2Bhelo+3Dx+20y LOGIN=user+2Btag+3D1+20x',
            'EHLO odd+helo=x y',
        ]);
        const conn = up.connections[0];
        assert.ok(conn);
        assert.deepEqual(conn.xclient, [
            {
                NAME: '[UNAVAILABLE]',
                ADDR: 'IPV6:2001:db8::25',
                PORT: '41000',
                PROTO: 'ESMTP',
                HELO: 'odd+helo=x y',
                LOGIN: 'user+tag=1 x',
            },
        ]);
        assert.ok(session.usable);
        assert.match(session.peer, /upstream\.test/);
        await session.close();
    });

    it('greets with HELO after XCLIENT for an SMTP client', async (t) => {
        const up = await scripted(t, { ehlo: [FULL_XCLIENT, 'SIZE 1000'] });
        const session = await open(up.port, { xclient: true }, client({ proto: 'SMTP', helo: 'old.example.net' }));
        await session.mailFrom('a@example.org', { size: 10 });
        assert.deepEqual(up.commands.slice(2), ['HELO old.example.net', 'MAIL FROM:<a@example.org>']);
        await session.close();
    });

    it('omits LOGIN for a client that did not log in and sends only advertised attributes', async (t) => {
        const up = await scripted(t, { ehlo: ['XCLIENT NAME ADDR'] });
        const session = await open(up.port, { xclient: true });
        assert.deepEqual(up.connections[0]?.xclientRaw, [{ NAME: 'mail.example.net', ADDR: '192.0.2.10' }]);
        await session.close();
    });

    it('fails with kind xclient when the upstream does not advertise XCLIENT', async (t) => {
        const up = await scripted(t, { ehlo: ['8BITMIME'] });
        await assert.rejects(open(up.port, { xclient: true }), upstreamError('xclient'));
        await assert.rejects(
            createSmtpUpstream(config(up.port, { xclient: true }), { hostname: HOSTNAME }).probe(),
            upstreamError('xclient'),
        );
        assert.ok(!up.commands.some((c) => c.startsWith('MAIL')));
    });

    it('fails with kind xclient when the upstream refuses XCLIENT', async (t) => {
        const up = await scripted(t, {
            ehlo: [FULL_XCLIENT],
            onCommand: (line) =>
                line.startsWith('XCLIENT') ? '550 5.7.0 Error: insufficient authorization' : undefined,
        });
        await assert.rejects(open(up.port, { xclient: true }), upstreamError('xclient'));
    });

    it('sends XCLIENT before EHLO once a connection within the last minute showed its attributes', async (t) => {
        const up = await scripted(t, { ehlo: [FULL_XCLIENT, '8BITMIME'] });
        let clock = 0;
        const upstream = createSmtpUpstream(config(up.port, { xclient: true }), {
            hostname: HOSTNAME,
            now: () => clock,
        });
        const first = await upstream.open(client());
        await first.close();
        const second = await upstream.open(client({ ip: '192.0.2.11', helo: 'other.example.net' }));
        assert.equal((await send(second, 'Subject: x\r\n\r\nhi\r\n')).code, 250);
        await second.close();
        assert.deepEqual(up.connections[0]?.commands.slice(0, 3), [
            `EHLO ${HOSTNAME}`,
            'XCLIENT NAME=mail.example.net ADDR=192.0.2.10 PORT=41000 PROTO=ESMTP HELO=mail.example.net',
            'EHLO mail.example.net',
        ]);
        assert.deepEqual(up.connections[1]?.commands.slice(0, 3), [
            'XCLIENT NAME=mail.example.net ADDR=192.0.2.11 PORT=41000 PROTO=ESMTP HELO=other.example.net',
            'EHLO other.example.net',
            'MAIL FROM:<sender@example.org>',
        ]);
        assert.equal(second.capabilities.eightBitMime, true);
        // a minute on, the attributes are learnt again
        clock += 60_000;
        await (await upstream.open(client())).close();
        assert.equal(up.connections[2]?.commands[0], `EHLO ${HOSTNAME}`);
        await (await upstream.open(client())).close();
        assert.match(up.connections[3]?.commands[0] ?? '', /^XCLIENT /);
    });

    it('greets first and passes the client again on the same connection when XCLIENT before EHLO is out of sequence', async (t) => {
        let refuseEarly = false;
        const up = await scripted(t, {
            ehlo: [FULL_XCLIENT],
            onCommand: (line, ctx) =>
                refuseEarly && line.startsWith('XCLIENT') && !ctx.connection.commands.some((c) => c.startsWith('EHLO'))
                    ? '503 5.5.1 Bad sequence of commands'
                    : undefined,
        });
        let clock = 0;
        const upstream = createSmtpUpstream(config(up.port, { xclient: true }), {
            hostname: HOSTNAME,
            now: () => clock,
        });
        await (await upstream.open(client())).close();
        refuseEarly = true;
        const session = await upstream.open(client());
        assert.equal((await send(session, 'Subject: x\r\n\r\nhi\r\n')).code, 250);
        await session.close();
        assert.deepEqual(
            up.connections[1]?.commands.slice(0, 4).map((c) => c.split(' ')[0]),
            ['XCLIENT', 'EHLO', 'XCLIENT', 'EHLO'],
        );
        assert.equal(up.connections[1]?.commands[1], `EHLO ${HOSTNAME}`);
        assert.equal(up.connections[1]?.xclient.length, 2);
        // for a minute every connection greets first, as the first one did; then it is tried again
        clock += 59_999;
        await (await upstream.open(client())).close();
        await (await upstream.open(client())).close();
        assert.deepEqual(
            up.connections.slice(2).map((c) => c.commands[0]),
            [`EHLO ${HOSTNAME}`, `EHLO ${HOSTNAME}`],
        );
        clock += 1;
        await (await upstream.open(client())).close();
        refuseEarly = false;
        await (await upstream.open(client())).close();
        assert.deepEqual(
            up.connections.slice(4).map((c) => c.commands[0]?.split(' ')[0]),
            ['EHLO', 'XCLIENT'],
        );
    });

    it('fails a client Postfix refuses at XCLIENT before EHLO as it would after EHLO, and changes nothing for the others', async (t) => {
        // Postfix checks the new client at once: its connection count, its client restrictions
        const refusals: Record<string, string> = {
            '192.0.2.66': '554 5.7.1 <unknown[192.0.2.66]>: Client host rejected: Access denied',
            '192.0.2.67': '421 4.7.0 Error: too many connections from 192.0.2.67',
        };
        const up = await scripted(t, {
            ehlo: [FULL_XCLIENT],
            onCommand: (line) => {
                const addr = /ADDR=(\S+)/.exec(line)?.[1];
                return line.startsWith('XCLIENT') && addr ? refusals[addr] : undefined;
            },
        });
        const lines: string[] = [];
        const logger = { ...silentLogger, info: (_o: object, msg: string) => void lines.push(msg) };
        const upstream = createSmtpUpstream(config(up.port, { xclient: true }), { hostname: HOSTNAME, logger });
        await (await upstream.open(client())).close();
        for (const ip of Object.keys(refusals)) {
            await assert.rejects(upstream.open(client({ ip })), (err: unknown) => {
                assert.ok(err instanceof UpstreamError && err.kind === 'xclient', String(err));
                assert.match(err.message, new RegExp(refusals[ip]!.slice(0, 3)));
                return true;
            });
        }
        await (await upstream.open(client())).close();
        assert.deepEqual(
            up.connections.map((c) => c.commands[0]?.split(' ')[0]),
            ['EHLO', 'XCLIENT', 'XCLIENT', 'XCLIENT'],
        );
        // no second try on the refused connections, nothing logged as the upstream's habit
        for (const c of up.connections.slice(1, 3)) assert.ok(!c.commands.some((l) => l.startsWith('EHLO')));
        assert.ok(!lines.some((l) => l.includes('before EHLO')), lines.join('; '));
    });

    it('asks EHLO again on the next connection once the upstream no longer authorizes XCLIENT', async (t) => {
        let authorized = true;
        const up = await scripted(t, {
            ehlo: [FULL_XCLIENT],
            onCommand: (line) =>
                !authorized && line.startsWith('XCLIENT') ? '550 5.7.0 Error: insufficient authorization' : undefined,
        });
        const upstream = createSmtpUpstream(config(up.port, { xclient: true }), { hostname: HOSTNAME });
        await (await upstream.open(client())).close();
        authorized = false;
        await assert.rejects(upstream.open(client()), upstreamError('xclient'));
        await assert.rejects(upstream.open(client()), upstreamError('xclient'));
        assert.deepEqual(
            up.connections.map((c) => c.commands[0]?.split(' ')[0]),
            ['EHLO', 'XCLIENT', 'EHLO'],
        );
        assert.ok(!up.connections[1]?.commands.some((l) => l.startsWith('EHLO')));
    });

    it('always greets first where TLS is in play', async (t) => {
        const up = await scripted(t, { ehlo: [FULL_XCLIENT, 'STARTTLS'] });
        const upstream = createSmtpUpstream(config(up.port, { xclient: true, starttls: 'opportunistic' }), {
            hostname: HOSTNAME,
        });
        for (let i = 0; i < 2; i++) {
            const s = await upstream.open(client()).catch(() => null);
            await s?.close();
        }
        assert.equal(up.connections.length, 2);
        for (const c of up.connections) assert.equal(c.commands[0], `EHLO ${HOSTNAME}`);
    });

    it('fails with kind xclient when the upstream refuses the greeting after XCLIENT', async (t) => {
        const up = await scripted(t, {
            ehlo: [FULL_XCLIENT],
            onCommand: (line) =>
                line === 'EHLO bad.example' ? '550 5.7.1 <bad.example>: Helo command rejected' : undefined,
        });
        await assert.rejects(
            open(up.port, { xclient: true }, client({ helo: 'bad.example' })),
            upstreamError('xclient'),
        );
    });
});

describe('MAIL, RCPT and replies', () => {
    it('passes SIZE, BODY, SMTPUTF8, DSN and REQUIRETLS parameters exactly when advertised', async (t) => {
        const rich = await scripted(t, { ehlo: ['SIZE 1000000', '8BITMIME', 'SMTPUTF8', 'DSN'] });
        const session = await open(rich.port);
        assert.deepEqual(session.capabilities, {
            size: 1000000,
            eightBitMime: true,
            smtputf8: true,
            dsn: true,
            requireTls: false,
        });
        const params = { size: 1234, body: '8BITMIME', smtputf8: true, ret: 'HDRS', envid: 'QQ+2Bid' } as const;
        assert.equal((await session.mailFrom('sender@example.org', params)).code, 250);
        assert.equal(
            (await session.rcptTo('rcpt@example.com', { notify: 'SUCCESS,DELAY', orcpt: 'rfc822;rcpt@example.com' }))
                .code,
            250,
        );
        // REQUIRETLS is never taken on a connection that is not encrypted (RFC 8689 section 4)
        await assert.rejects(
            session.mailFrom('sender@example.org', { requireTls: true }),
            upstreamError('unsupported'),
        );
        await session.close();
        assert.ok(
            rich.commands.includes(
                'MAIL FROM:<sender@example.org> SIZE=1234 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2Bid',
            ),
        );
        assert.ok(
            rich.commands.includes('RCPT TO:<rcpt@example.com> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;rcpt@example.com'),
        );
    });

    it('leaves out SIZE where not advertised, and refuses every other unadvertised parameter without sending anything', async (t) => {
        const plain = await scripted(t, { ehlo: ['PIPELINING'] });
        const session = await open(plain.port);
        assert.equal((await session.mailFrom('sender@example.org', { size: 1234, body: '7BIT' })).code, 250);
        for (const params of [
            { body: '8BITMIME' },
            { smtputf8: true },
            { ret: 'FULL' },
            { envid: 'x' },
            { requireTls: true },
        ] as const) {
            await assert.rejects(
                session.mailFrom('sender@example.org', params),
                upstreamError('unsupported'),
                JSON.stringify(params),
            );
        }
        await assert.rejects(session.rcptTo('rcpt@example.com', { notify: 'NEVER' }), upstreamError('unsupported'));
        await assert.rejects(session.rcptTo('rcpt@example.com', { orcpt: 'rfc822;x@y' }), upstreamError('unsupported'));
        assert.ok(session.usable, 'a refused parameter does not end the connection');
        await session.close();
        assert.deepEqual(plain.commands, [`EHLO ${HOSTNAME}`, 'MAIL FROM:<sender@example.org>', 'QUIT']);
    });

    it('returns each recipient reply with its enhanced status code', async (t) => {
        const up = await scripted(t, {
            onCommand(line) {
                if (line === 'RCPT TO:<nobody@example.com>')
                    return '550 5.1.1 <nobody@example.com>: Recipient address rejected';
                if (line === 'RCPT TO:<busy@example.com>') return '450 4.2.1 Mailbox busy';
                if (line === 'RCPT TO:<multi@example.com>') return ['250-2.1.5 first line', '250 2.1.5 second line'];
                return undefined;
            },
        });
        const session = await open(up.port);
        await session.mailFrom('', {});
        assert.deepEqual(await session.rcptTo('ok@example.com'), { code: 250, enhanced: '2.1.5', text: 'Ok' });
        assert.deepEqual(await session.rcptTo('nobody@example.com'), {
            code: 550,
            enhanced: '5.1.1',
            text: '<nobody@example.com>: Recipient address rejected',
        });
        assert.deepEqual(await session.rcptTo('busy@example.com'), {
            code: 450,
            enhanced: '4.2.1',
            text: 'Mailbox busy',
        });
        assert.deepEqual(await session.rcptTo('multi@example.com'), {
            code: 250,
            enhanced: '2.1.5',
            text: 'first line second line',
        });
        assert.ok(up.commands.includes('MAIL FROM:<>'));
        assert.deepEqual(up.transactions[0]?.rcpts, ['ok@example.com', 'multi@example.com']);
        assert.ok(session.usable);
        await session.close();
    });

    it('returns 4xx and 5xx at MAIL and at the end of DATA', async (t) => {
        let final = '554 5.7.1 Message rejected as spam';
        const up = await scripted(t, {
            onCommand: (line) => (line.startsWith('MAIL FROM:<blocked@') ? '451 4.3.0 Try again later' : undefined),
            onData: () => final,
        });
        const session = await open(up.port);
        assert.deepEqual(await session.mailFrom('blocked@example.org', {}), {
            code: 451,
            enhanced: '4.3.0',
            text: 'Try again later',
        });
        assert.deepEqual(await send(session, 'Subject: x\r\n\r\nbody\r\n'), {
            code: 554,
            enhanced: '5.7.1',
            text: 'Message rejected as spam',
        });
        final = '452 4.3.1 Insufficient system storage';
        assert.equal((await send(session, 'Subject: y\r\n\r\nbody\r\n')).code, 452);
        assert.ok(session.usable);
        await session.close();
    });

    it('returns a refused DATA command as a reply', async (t) => {
        const up = await scripted(t, {
            onCommand: (line) => (line === 'DATA' ? '554 5.5.1 Error: no valid recipients' : undefined),
        });
        const session = await open(up.port);
        assert.equal((await send(session, 'x\r\n')).code, 554);
        assert.equal(up.transactions[0]?.data, null);
        await session.close();
    });

    it('refuses CR, LF and other control characters in addresses without sending anything', async (t) => {
        const up = await scripted(t);
        const session = await open(up.port);
        await assert.rejects(
            session.mailFrom('a@example.org>\r\nRCPT TO:<x@example.com', {}),
            upstreamError('protocol'),
        );
        await assert.rejects(session.mailFrom('a\x00@example.org', {}), upstreamError('protocol'));
        await session.mailFrom('a@example.org', {});
        await assert.rejects(session.rcptTo('b@example.com\nDATA'), upstreamError('protocol'));
        assert.deepEqual(up.commands, [`EHLO ${HOSTNAME}`, 'MAIL FROM:<a@example.org>']);
        assert.ok(session.usable);
        await session.close();
    });

    it('falls back to HELO when EHLO is refused', async (t) => {
        const up = await scripted(t, {
            ehlo: ['SIZE 1000'],
            onCommand: (line) => (line.startsWith('EHLO') ? '502 5.5.2 Error: command not recognized' : undefined),
        });
        const session = await open(up.port);
        await session.mailFrom('a@example.org', { size: 10 });
        assert.deepEqual(up.commands.slice(0, 3), [
            `EHLO ${HOSTNAME}`,
            `HELO ${HOSTNAME}`,
            'MAIL FROM:<a@example.org>',
        ]);
        await session.close();
    });

    it('runs a second transaction on the same session, with RSET before MAIL when one is open', async (t) => {
        const up = await scripted(t);
        const upstream = createSmtpUpstream(config(up.port), { hostname: HOSTNAME });
        const session = await upstream.open(client());
        assert.equal((await send(session, 'Subject: one\r\n\r\n1\r\n')).code, 250);
        await session.mailFrom('sender@example.org', {});
        await session.rcptTo('rcpt@example.com');
        assert.equal((await send(session, 'Subject: two\r\n\r\n2\r\n')).code, 250);
        await session.reset();
        // without XCLIENT the connection, reset, is kept for the next client until the upstream closes
        await session.close();
        await upstream.close?.();
        assert.deepEqual(
            up.commands.map((c) => c.split(/[ :]/)[0]),
            ['EHLO', 'MAIL', 'RCPT', 'DATA', 'MAIL', 'RCPT', 'RSET', 'MAIL', 'RCPT', 'DATA', 'RSET', 'QUIT'],
        );
        assert.equal(up.transactions.length, 3);
        assert.equal(up.transactions[0]?.completed, true);
        assert.equal(up.transactions[1]?.completed, false);
        assert.equal(up.transactions[2]?.completed, true);
        assert.equal(up.transactions[2]?.data?.toString(), 'Subject: two\r\n\r\n2\r\n');
        assert.equal(up.connections.length, 1);
    });

    it('marks the session unusable after a 421 reply', async (t) => {
        const up = await scripted(t, {
            onCommand: (line) => (line.startsWith('MAIL') ? '421 4.4.2 Error: timeout exceeded' : undefined),
        });
        const session = await open(up.port);
        assert.equal((await session.mailFrom('a@example.org', {})).code, 421);
        assert.equal(session.usable, false);
        await session.close();
    });

    it('probe greets, EHLOs and QUITs', async (t) => {
        const up = await scripted(t, { ehlo: [FULL_XCLIENT] });
        await createSmtpUpstream(config(up.port, { xclient: true }), { hostname: HOSTNAME }).probe();
        assert.deepEqual(up.commands, [`EHLO ${HOSTNAME}`, 'QUIT']);
    });
});

describe('DATA on the wire', () => {
    it('dot-stuffs and turns bare CR and bare LF into CRLF', async (t) => {
        const up = await scripted(t);
        const session = await open(up.port);
        const source = Readable.from([Buffer.from('a\n.b\r\n..c\rd\r'), Buffer.from('\n.\r\nend')]);
        assert.equal((await send(session, source)).code, 250);
        await session.close();
        const tx = up.transactions[0];
        assert.ok(tx?.completed);
        assert.equal(tx.data?.toString('latin1'), 'a\r\n..b\r\n...c\r\nd\r\n..\r\nend\r\n');
        assert.equal(unstuff(tx.data ?? Buffer.alloc(0)).toString('latin1'), 'a\r\n.b\r\n..c\r\nd\r\n.\r\nend\r\n');
    });

    it('streams a large message with backpressure', async (t) => {
        const up = await scripted(t);
        const session = await open(up.port);
        const line = Buffer.from('x'.repeat(998) + '\r\n');
        const chunks = Array.from({ length: 4000 }, () => line);
        assert.equal((await send(session, Readable.from(chunks))).code, 250);
        await session.close();
        assert.equal(up.transactions[0]?.data?.length, 4000 * 1000);
    });

    it('gives kind closed and no terminator when the upstream closes mid-DATA', async (t) => {
        const up = await scripted(t, {
            onCommand: (line) => (line === 'DATA' ? { closeAfterDataBytes: 1000 } : undefined),
        });
        const session = await open(up.port);
        const chunks = Array.from({ length: 2000 }, () => Buffer.from('y'.repeat(1022) + '\r\n'));
        await assert.rejects(send(session, Readable.from(chunks)), upstreamError('closed'));
        assert.equal(session.usable, false);
        await session.close();
        const tx = up.transactions[0];
        assert.equal(tx?.completed, false);
        assert.equal(tx.data?.length, 1000);
        assert.ok(!tx.data.includes('\r\n.\r\n'));
    });

    it("never sends the terminator when the message source fails, and rejects with the source's own error", async (t) => {
        const up = await scripted(t);
        const session = await open(up.port);
        const vanished = new Error('spool file vanished');
        async function* failing() {
            yield Buffer.from('Subject: partial\r\n\r\nfirst part\r\n.\r\n');
            await new Promise((resolve) => setTimeout(resolve, 20));
            throw vanished;
        }
        // not an upstream failure: the caller tells the source's fault apart
        await assert.rejects(send(session, Readable.from(failing())), (err) => err === vanished);
        assert.equal(session.usable, false);
        await session.close();
        await up.idle();
        const tx = up.transactions[0];
        assert.equal(tx?.completed, false);
        assert.equal(tx.data?.toString(), 'Subject: partial\r\n\r\nfirst part\r\n..\r\n');
        assert.ok(!tx.data.includes('\r\n.\r\n'));
        assert.equal(tx.finalReply, null);
    });
});

describe('failures', () => {
    it('gives kind timeout when the upstream never answers a command', async (t) => {
        const up = await scripted(t, { onCommand: (line) => (line.startsWith('MAIL') ? { silent: true } : undefined) });
        const session = await open(up.port, { commandTimeoutMs: 300 });
        const started = Date.now();
        await assert.rejects(session.mailFrom('a@example.org', {}), upstreamError('timeout'));
        const elapsed = Date.now() - started;
        assert.ok(elapsed >= 250 && elapsed < 1500, `${elapsed} ms`);
        assert.equal(session.usable, false);
        await assert.rejects(session.rcptTo('b@example.com'), upstreamError('closed'));
        await session.close();
    });

    it('gives kind timeout when the final DATA reply never comes', async (t) => {
        const up = await scripted(t, { onData: () => ({ silent: true }) });
        const session = await open(up.port, { dataTimeoutMs: 300 });
        const started = Date.now();
        await assert.rejects(send(session, 'x\r\n'), upstreamError('timeout'));
        assert.ok(Date.now() - started < 1500);
        assert.equal(up.transactions[0]?.completed, true);
        await session.close();
    });

    it('marks a failure after the end of data was sent: the upstream may have taken the message', async (t) => {
        const silent = await scripted(t, { onData: () => ({ silent: true }) });
        const session = await open(silent.port, { dataTimeoutMs: 300 });
        await assert.rejects(send(session, 'x\r\n'), (err: unknown) => {
            assert.ok(err instanceof UpstreamError && err.kind === 'timeout', String(err));
            assert.equal(err.endOfDataSent, true);
            return true;
        });
        const closing = await scripted(t, { onData: () => ({ close: true }) });
        const other = await open(closing.port);
        await assert.rejects(send(other, 'x\r\n'), (err: unknown) => {
            assert.ok(err instanceof UpstreamError && err.kind === 'closed', String(err));
            assert.equal(err.endOfDataSent, true);
            return true;
        });
        assert.equal(closing.transactions[0]?.completed, true);
    });

    it('does not mark a failure before the end of data: the upstream cannot have taken the message', async (t) => {
        const cut = await scripted(t, {
            onCommand: (line) => (line === 'DATA' ? { closeAfterDataBytes: 10 } : undefined),
        });
        const session = await open(cut.port);
        async function* slow() {
            yield Buffer.from('Subject: cut\r\n\r\nfirst part\r\n');
            // the upstream closes meanwhile; the client notices before sending more
            await new Promise((resolve) => setTimeout(resolve, 100));
            yield Buffer.from('second part\r\n');
        }
        await assert.rejects(send(session, Readable.from(slow())), (err: unknown) => {
            assert.ok(err instanceof UpstreamError && err.kind === 'closed', String(err));
            assert.equal(err.endOfDataSent, false);
            return true;
        });
        const silent = await scripted(t, { onCommand: (line) => (line === 'DATA' ? { silent: true } : undefined) });
        const other = await open(silent.port, { commandTimeoutMs: 300 });
        await assert.rejects(send(other, 'x\r\n'), (err: unknown) => {
            assert.ok(err instanceof UpstreamError && err.kind === 'timeout', String(err));
            assert.equal(err.endOfDataSent, false);
            return true;
        });
    });

    describe('a reply out of step never becomes a success: kind protocol, nothing taken for delivered', () => {
        const cases: Record<string, ScriptedUpstreamOptions> = {
            'DATA answered 250 instead of 354': {
                onCommand: (line) => (line === 'DATA' ? '250 2.0.0 Ok' : undefined),
            },
            'DATA answered with a code neither 354 nor a refusal': {
                onCommand: (line) => (line === 'DATA' ? '334 go on' : undefined),
            },
            'MAIL answered twice': {
                onCommand: (line) => (line.startsWith('MAIL') ? ['250 2.1.0 Ok', '250 2.1.0 Ok'] : undefined),
            },
            'RCPT answered twice': {
                onCommand: (line) => (line.startsWith('RCPT') ? ['250 2.1.5 Ok', '250 2.1.5 Ok'] : undefined),
            },
            'a 250 right behind the 354': {
                onCommand: (line) => (line === 'DATA' ? ['354 go ahead', '250 2.0.0 early'] : undefined),
                onData: () => '554 5.7.1 refused after all',
            },
        };
        for (const [name, options] of Object.entries(cases)) {
            it(name, async (t) => {
                const up = await scripted(t, options);
                const session = await open(up.port);
                const outcome = (async () => {
                    await session.mailFrom('sender@example.org', {});
                    await session.rcptTo('rcpt@example.com');
                    return session.data(Readable.from([Buffer.from('Subject: x\r\n\r\nbody\r\n')]));
                })();
                await assert.rejects(outcome, upstreamError('protocol'));
                assert.equal(session.usable, false);
                await session.close();
            });
        }

        it('an early refusal during the text is still the answer to the end of data', async (t) => {
            const up = await scripted(t, {
                onCommand: (line) => (line === 'DATA' ? ['354 go ahead', '552 5.3.4 too big for us'] : undefined),
            });
            const session = await open(up.port);
            assert.deepEqual(await send(session, 'Subject: x\r\n\r\nbody\r\n'), {
                code: 552,
                enhanced: '5.3.4',
                text: 'too big for us',
            });
            assert.equal(session.usable, false);
            await session.close();
            // the end-of-data marker was withheld: the upstream (which reads the text on after its
            // early reply) cannot take the message after all
            await until('the upstream connection ends', () => up.connections[0]?.closed === true);
            assert.equal(up.transactions[0]?.completed, false);
        });

        it('an early refusal stops the text: the rest of a large message is not sent', async (t) => {
            const up = await scripted(t, {
                onCommand: (line) => (line === 'DATA' ? ['354 go ahead', '451 4.3.0 not now'] : undefined),
            });
            const session = await open(up.port);
            const chunk = Buffer.alloc(64 * 1024, 'a');
            let pulled = 0;
            async function* big() {
                yield Buffer.from('Subject: x\r\n\r\n');
                // paced, so the early refusal arrives while the text is still being sent
                for (let i = 0; i < 200; i++) {
                    pulled++;
                    await sleep(2);
                    yield chunk;
                }
            }
            const reply = await send(session, Readable.from(big()));
            assert.equal(reply.code, 451);
            assert.ok(pulled < 200, `the whole message was read (${pulled} chunks)`);
            await until('the upstream saw the connection end', () => up.connections[0]?.closed === true);
            assert.equal(up.transactions[0]?.completed, false);
            await session.close();
        });

        it('an idle connection that speaks unasked is dropped at once', async (t) => {
            const up = await scripted(t);
            const session = await open(up.port);
            up.connections[0]!.write('250 2.0.0 nobody asked\r\n');
            await until('the connection is dropped', () => !session.usable);
            await session.close();
        });
    });

    const garbageLines: [string, string][] = [
        ['a malformed line', 'oops'],
        ['an over-long line', `250 ${'x'.repeat(5000)}`],
    ];
    for (const [name, garbage] of garbageLines) {
        it(`a 250 to the end of data read together with ${name} is still the answer; the connection is dropped`, async (t) => {
            // one write: the reply and the garbage arrive in one read
            const up = await scripted(t, { onData: () => ['250 2.0.0 Ok: queued as Q1', garbage] });
            const session = await open(up.port);
            assert.deepEqual(await send(session, 'Subject: x\r\n\r\nbody\r\n'), {
                code: 250,
                enhanced: '2.0.0',
                text: 'Ok: queued as Q1',
            });
            await until('the connection is dropped', () => !session.usable);
            await session.close();
        });
    }

    it('gives kind timeout when there is no greeting', async (t) => {
        const up = await scripted(t, { greeting: { silent: true } });
        await assert.rejects(open(up.port, { commandTimeoutMs: 300 }), upstreamError('timeout'));
    });

    it('gives kind connect when nothing listens', async () => {
        await assert.rejects(open(await closedPort()), upstreamError('connect'));
    });

    it('gives kind connect for a refusing greeting', async (t) => {
        const up = await scripted(t, { greeting: { reply: '554 5.3.2 Service unavailable', close: true } });
        await assert.rejects(open(up.port), upstreamError('connect'));
    });

    it('gives kind protocol for garbage replies', async (t) => {
        const up = await scripted(t, { greeting: 'hello, this is not SMTP' });
        await assert.rejects(open(up.port), upstreamError('protocol'));
        const mixed = await scripted(t, {
            onCommand: (line) => (line.startsWith('MAIL') ? ['250-2.1.0 one', '550 5.1.0 two'] : undefined),
        });
        const session = await open(mixed.port);
        await assert.rejects(session.mailFrom('a@example.org', {}), upstreamError('protocol'));
        assert.equal(session.usable, false);
    });

    it('gives kind closed when the upstream drops the connection after a command', async (t) => {
        const up = await scripted(t, { onCommand: (line) => (line.startsWith('RCPT') ? { close: true } : undefined) });
        const session = await open(up.port);
        await session.mailFrom('a@example.org', {});
        await assert.rejects(session.rcptTo('b@example.com'), upstreamError('closed'));
        assert.equal(session.usable, false);
        await session.close();
    });

    it('close() during DATA drops the connection without the terminator', async (t) => {
        const up = await scripted(t);
        const session = await open(up.port);
        async function* slow() {
            yield Buffer.from('Subject: slow\r\n\r\n');
            await new Promise((resolve) => setTimeout(resolve, 200));
            yield Buffer.from('never sent\r\n');
        }
        const sending = send(session, Readable.from(slow()));
        await new Promise((resolve) => setTimeout(resolve, 50));
        await session.close();
        await assert.rejects(sending, upstreamError('closed'));
        await up.idle();
        assert.equal(up.transactions[0]?.completed, false);
        assert.ok(!up.commands.includes('QUIT'));
    });

    it('logs commands and replies at debug level', async (t) => {
        const up = await scripted(t);
        const lines: Array<{ obj: Record<string, unknown>; msg: string | undefined }> = [];
        const record = (obj: object, msg?: string): void => {
            lines.push({ obj: obj as Record<string, unknown>, msg });
        };
        const logger = { debug: record, info: record, warn: record, error: record };
        const upstream = createSmtpUpstream(config(up.port), { hostname: HOSTNAME, logger });
        const session = await upstream.open(client());
        await session.close();
        await upstream.close?.();
        assert.ok(lines.some((l) => l.obj.command === `EHLO ${HOSTNAME}`));
        assert.ok(lines.some((l) => typeof l.obj.reply === 'string' && l.obj.reply.startsWith('220 ')));
        assert.ok(lines.some((l) => l.obj.reply === '221 2.0.0 Bye'));
    });

    it('builds no debug line while the level is above debug, and logs them once it is debug', async (t) => {
        const up = await scripted(t);
        let level = 'info';
        let built = 0;
        const record = (): void => {
            built++;
        };
        const logger = {
            debug: record,
            info: record,
            warn: record,
            error: record,
            isLevelEnabled: (l: string) => l !== 'debug' || level === 'debug',
        };
        const upstream = createSmtpUpstream(config(up.port), { hostname: HOSTNAME, logger });
        const quiet = await upstream.open(client());
        await send(quiet, 'x\r\n');
        await quiet.close();
        assert.equal(built, 0);
        level = 'debug'; // as a reload of log.level does
        const loud = await upstream.open(client());
        await loud.close();
        assert.ok(built > 0);
    });

    it('close() never throws, also on a dead connection', async (t) => {
        const up = await scripted(t);
        const session = await open(up.port);
        await up.close();
        await session.close();
        await session.close();
        assert.equal(session.usable, false);
    });
});

/**
 * Runs, in a child process, a session that opens `cfg`'s upstream and closes cleanly, so the
 * connection is kept idle, and nothing else; resolves with the exit code, or null when the
 * process was still running after `boundMs` (the idle connection kept it alive).
 */
async function exitsWhileIdle(cfg: SmtpUpstreamConfig, boundMs: number): Promise<number | null> {
    const module = new URL('../../src/upstream/smtp-client.ts', import.meta.url).href;
    const script = [
        `import { createSmtpUpstream } from ${JSON.stringify(module)};`,
        `const upstream = createSmtpUpstream(${JSON.stringify(cfg)}, { hostname: 'mx.mailwarden.test' });`,
        `const session = await upstream.open(${JSON.stringify(client())});`,
        'await session.close();',
    ].join('\n');
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: 'inherit' });
    const timer = setTimeout(() => child.kill(), boundMs);
    const [code] = (await once(child, 'exit')) as [number | null];
    clearTimeout(timer);
    return code;
}

describe('idle connections (upstream.xclient: false)', () => {
    it('keep nothing of the messages they carried before the last one', async (t) => {
        // The garbage collector, reachable without --expose-gc on the command line.
        setFlagsFromString('--expose-gc');
        const gc = runInNewContext('gc') as () => void;
        const up = await scripted(t);
        const upstream = createSmtpUpstream(config(up.port), { hostname: HOSTNAME });
        const chunks: WeakRef<Buffer>[] = [];
        for (let i = 0; i < 4; i++) {
            const session = await upstream.open(client());
            const head = Buffer.from(`Subject: ${i}\r\n\r\n${'x'.repeat(64 * 1024)}\r\n`);
            const tail = Buffer.from(`${'y'.repeat(1024)}\r\n`);
            chunks.push(new WeakRef(head), new WeakRef(tail));
            assert.equal((await send(session, Readable.from([head, tail]))).code, 250);
            await session.close();
        }
        assert.equal(up.connections.length, 1, 'one connection carried the four messages');
        for (let i = 0; i < 2; i++) {
            await new Promise((resolve) => setImmediate(resolve));
            gc();
        }
        // The last message may keep a chunk referenced (in the socket's write state) until the
        // connection's next use or end: one chunk per idle connection at most, never a growing list.
        assert.deepEqual(
            chunks.slice(0, 6).map((c) => c.deref() === undefined),
            [true, true, true, true, true, true],
            'every chunk of the earlier messages can be collected while the connection is kept',
        );
        await upstream.close?.();
    });

    it('are not kept once a minute old, however often they are used (postfix reload reaches new clients)', async (t) => {
        const up = await scripted(t);
        let now = 0;
        const upstream = createSmtpUpstream(config(up.port), { hostname: HOSTNAME, now: () => now });
        const deliver = async (): Promise<void> => {
            const session = await upstream.open(client());
            assert.equal((await send(session, 'Subject: x\r\n\r\nx\r\n')).code, 250);
            await session.close();
        };
        await deliver(); // opened at 0, kept
        now = 59_999;
        await deliver(); // reused, still kept
        now = 60_000;
        await deliver(); // reused, then closed: a minute old
        await deliver(); // a new connection
        await upstream.close?.();
        assert.equal(up.connections.length, 2);
        assert.deepEqual(
            up.transactions.map((tx) => tx.connection),
            [1, 1, 1, 2],
        );
        assert.equal(up.connections[0]?.commands.at(-1), 'QUIT');
    });

    it('are taken by one session at a time: a second one opened meanwhile gets a new connection', async (t) => {
        const up = await scripted(t);
        const upstream = createSmtpUpstream(config(up.port), { hostname: HOSTNAME });
        const first = await upstream.open(client());
        await first.close();
        const [a, b] = await Promise.all([upstream.open(client()), upstream.open(client())]);
        assert.equal(up.connections.length, 2);
        assert.deepEqual(up.connections[0]?.commands, [`EHLO ${HOSTNAME}`, 'RSET']);
        assert.deepEqual(up.connections[1]?.commands, [`EHLO ${HOSTNAME}`]);
        assert.equal((await send(a, 'Subject: a\r\n\r\na\r\n')).code, 250);
        assert.equal((await send(b, 'Subject: b\r\n\r\nb\r\n')).code, 250);
        assert.deepEqual(up.transactions.map((tx) => tx.connection).sort(), [1, 2]);
        await Promise.all([a.close(), b.close()]);
        await upstream.close?.();
        assert.ok(up.connections.every((c) => c.commands.at(-1) === 'QUIT'));
    });

    it('are dropped when RSET gets more than one reply: the extra one would answer the next command', async (t) => {
        const up = await scripted(t, {
            onCommand: (line) => (line === 'RSET' ? ['250 2.0.0 Ok', '250 2.0.0 Ok'] : undefined),
        });
        const outcomes: string[] = [];
        const upstream = createSmtpUpstream(config(up.port), {
            hostname: HOSTNAME,
            onConnection: (o) => outcomes.push(o),
        });
        await (await upstream.open(client())).close();
        const session = await upstream.open(client());
        assert.deepEqual(outcomes, ['opened', 'discarded', 'opened']);
        assert.equal((await send(session, 'Subject: x\r\n\r\nx\r\n')).code, 250);
        assert.equal(up.transactions[0]?.connection, 2);
        await session.close();
        await upstream.close?.();
    });

    it("are not kept near Postfix's junk command limit: not after 50 RSETs without a delivery", async (t) => {
        const up = await scripted(t);
        const upstream = createSmtpUpstream(config(up.port), { hostname: HOSTNAME });
        for (let i = 0; i < 40; i++) {
            const session = await upstream.open(client());
            assert.equal((await session.mailFrom('sender@example.org', {})).code, 250);
            await session.reset();
            await session.close();
        }
        await upstream.close?.();
        const rsets = up.connections.map((c) => c.commands.filter((l) => l === 'RSET').length);
        // each client after the first: RSET when taken, RSET to abandon its transaction; kept
        // after 49 (client 25), not after 51 (client 26); the 14 clients left on a new one
        assert.deepEqual(rsets, [51, 27]);
        assert.ok(up.connections.every((c) => c.commands.at(-1) === 'QUIT'));
    });

    it("are not kept near Postfix's error limit: at most 5 error replies without a delivery", async (t) => {
        const up = await scripted(t, {
            onCommand: (line) => (line.startsWith('RCPT TO:<nobody@') ? '550 5.1.1 no such user' : undefined),
        });
        const upstream = createSmtpUpstream(config(up.port), { hostname: HOSTNAME });
        const deliver = async (refused: number, delivered: boolean): Promise<void> => {
            const session = await upstream.open(client());
            assert.equal((await session.mailFrom('sender@example.org', {})).code, 250);
            for (let i = 0; i < refused; i++) assert.equal((await session.rcptTo('nobody@example.com')).code, 550);
            if (delivered) {
                assert.equal((await session.rcptTo('rcpt@example.com')).code, 250);
                assert.equal((await session.data(Readable.from([Buffer.from('x\r\n')]))).code, 250);
            } else {
                await session.reset();
            }
            await session.close();
        };
        // a delivery starts the count again: 4 errors before each of 3 deliveries keep one connection
        for (let i = 0; i < 3; i++) await deliver(4, true);
        assert.equal(up.connections.length, 1);
        await deliver(4, false);
        await deliver(1, false);
        await deliver(0, false);
        assert.equal(up.connections.length, 2, 'the fifth error since the last delivery ended the first');
        assert.equal(up.connections[0]?.commands.at(-1), 'QUIT');
        await upstream.close?.();
    });

    it('do not keep the process alive', async (t) => {
        const up = await scripted(t);
        assert.equal(await exitsWhileIdle(config(up.port), 4000), 0);
        assert.deepEqual(up.commands, [`EHLO ${HOSTNAME}`], 'it ended with the connection idle');
    });

    it('are not kept with XCLIENT: close() QUITs', async (t) => {
        const up = await scripted(t, { ehlo: [FULL_XCLIENT] });
        const upstream = createSmtpUpstream(config(up.port, { xclient: true }), { hostname: HOSTNAME });
        const session = await upstream.open(client());
        assert.equal((await send(session, 'Subject: x\r\n\r\nx\r\n')).code, 250);
        await session.close();
        assert.equal(up.connections[0]?.commands.at(-1), 'QUIT');
        const next = await upstream.open(client());
        assert.equal(up.connections.length, 2);
        assert.ok(!up.commands.includes('RSET'));
        await next.close();
    });
});

describe('keepalive while a transaction waits for the message (upstream.keepAlive)', () => {
    const MESSAGE = 'Subject: k\r\n\r\nkept\r\n';
    const noops = (commands: readonly string[]): number => commands.filter((l) => l === 'NOOP').length;
    const source = (): Readable => Readable.from([Buffer.from(MESSAGE)]);

    /** A session with `keepAliveMs`, a third NOOP after `stressProbeMs` of silence. */
    async function kept(port: number, over: Partial<SmtpUpstreamConfig>, deps: Partial<UpstreamDeps> = {}) {
        const upstream = createSmtpUpstream(config(port, over), { hostname: HOSTNAME, ...deps });
        return { upstream, session: await upstream.open(client()) };
    }

    async function envelope(session: UpstreamSession): Promise<void> {
        assert.equal((await session.mailFrom('sender@example.org', {})).code, 250);
        assert.equal((await session.rcptTo('rcpt@example.com')).code, 250);
    }

    /**
     * Postfix under stress: its junk command limit and hard error limit are 1, so the command after
     * the third junk command (EHLO, HELO, RSET, NOOP) since the connection opened or the last
     * delivery is answered 421 and the connection ends.
     */
    function stressed(): Pick<ScriptedUpstreamOptions, 'onCommand' | 'onData'> {
        let junk = 0;
        return {
            onCommand: (line) => {
                if (junk > 2) return { reply: '421 4.7.0 upstream.test Error: too many errors', close: true };
                if (/^(EHLO|HELO|RSET|NOOP)\b/.test(line)) junk++;
                return undefined;
            },
            onData: () => {
                junk = 0;
                return undefined;
            },
        };
    }

    it('outlasts an upstream that drops a client silent for less than the wait (smtpd_timeout)', async (t) => {
        const up = await scripted(t, { idleTimeoutMs: 800 });
        const { session } = await kept(up.port, { keepAliveMs: 200 }, { stressProbeMs: 500 });
        await envelope(session);
        await sleep(1800);
        const reply = await session.data(source());
        assert.equal(reply.code, 250, `${reply.code} ${reply.text}`);
        assert.equal(up.transactions[0]?.completed, true);
        const commands = up.connections[0]?.commands ?? [];
        assert.ok(noops(commands) >= 4, commands.join(', '));
        assert.deepEqual(commands.slice(0, 3), [
            `EHLO ${HOSTNAME}`,
            'MAIL FROM:<sender@example.org>',
            'RCPT TO:<rcpt@example.com>',
        ]);
        assert.deepEqual(commands.slice(3 + noops(commands)), ['DATA']);
        await session.close();
    });

    it('without it (false), the same wait loses the connection: the message is not sent', async (t) => {
        const up = await scripted(t, { idleTimeoutMs: 500 });
        const { session } = await kept(up.port, { keepAliveMs: null });
        await envelope(session);
        await sleep(800);
        assert.equal(session.usable, false);
        await assert.rejects(session.data(source()), upstreamError('closed'));
        assert.equal(up.transactions[0]?.completed, false);
        assert.equal(noops(up.commands), 0);
        await session.close();
    });

    it('a third junk command waits out the smtpd_timeout of a Postfix under stress, which it would end', async (t) => {
        // under stress: smtpd_timeout 400 ms here (10 s in Postfix), junk and hard error limits 1
        const up = await scripted(t, { idleTimeoutMs: 400, ...stressed() });
        const { session } = await kept(up.port, { keepAliveMs: 150 }, { stressProbeMs: 600 });
        await envelope(session);
        await sleep(450); // EHLO, a NOOP at 150 ms; another at 300 ms would make DATA fail
        const reply = await session.data(source());
        assert.equal(reply.code, 250, `${reply.code} ${reply.text}`);
        assert.equal(noops(up.commands), 1);
        // a delivery starts the count again: two NOOPs, then 400 ms of silence end the connection
        await envelope(session);
        await until('the connection ended', () => !session.usable);
        assert.equal(noops(up.commands), 3);
        assert.match(up.connections[0]?.commands.at(-1) ?? '', /^NOOP$/);
        await session.close();
    });

    it('an upstream that answers after that silence is not under stress: NOOPs at the interval again', async (t) => {
        const up = await scripted(t, { idleTimeoutMs: 1000 });
        const { session } = await kept(up.port, { keepAliveMs: 100 }, { stressProbeMs: 500 });
        await envelope(session);
        await until('5 NOOPs went out', () => noops(up.commands) >= 5);
        const reply = await session.data(source());
        assert.equal(reply.code, 250, `${reply.code} ${reply.text}`);
        await session.close();
    });

    it('DATA waits for the reply to a NOOP in flight, which is not taken for its own', async (t) => {
        let dataBeforeNoopReply: boolean | null = null;
        const up = await scripted(t, {
            async onCommand(line, ctx) {
                if (line !== 'NOOP') return undefined;
                await sleep(300);
                dataBeforeNoopReply = ctx.connection.reads.some((r) => r.includes('DATA'));
                return '250 2.0.0 Ok';
            },
        });
        const { session } = await kept(up.port, { keepAliveMs: 100 });
        await envelope(session);
        await sleep(200); // the NOOP went out at 100 ms; its reply comes at 400 ms
        const reply = await session.data(source());
        assert.equal(reply.code, 250, `${reply.code} ${reply.text}`);
        assert.equal(dataBeforeNoopReply, false, 'DATA went out only after the NOOP was answered');
        assert.deepEqual(up.connections[0]?.commands.slice(3), ['NOOP', 'DATA']);
        assert.equal(up.transactions[0]?.completed, true);
        assert.equal(session.usable, true);
        await session.close();
    });

    it('sends at most 50 NOOPs per transaction (Postfix counts them as junk commands)', async (t) => {
        const up = await scripted(t);
        const { session } = await kept(up.port, { keepAliveMs: 2 }, { stressProbeMs: 20 });
        await envelope(session);
        await until('50 NOOPs went out', () => noops(up.commands) >= 50);
        await sleep(200);
        assert.equal(noops(up.commands), 50);
        assert.equal((await session.data(source())).code, 250);
        // a delivery starts the count again, for the next transaction
        await envelope(session);
        await until('NOOPs went out in the second transaction', () => noops(up.commands) >= 60);
        assert.equal((await session.data(source())).code, 250);
        await session.close();
    });

    it('stops short of the junk command limit across transactions that deliver nothing', async (t) => {
        const up = await scripted(t, { onData: () => '550 5.7.1 refused' });
        const { session } = await kept(up.port, { keepAliveMs: 2 }, { stressProbeMs: 20 });
        // 50 in the first transaction, 39 in the second, then none: with the EHLO, 90 junk commands
        for (const total of [50, 89, 89]) {
            await envelope(session);
            await until(`${total} NOOPs went out`, () => noops(up.commands) >= total);
            await sleep(100);
            assert.equal((await session.data(source())).code, 550);
        }
        assert.equal(noops(up.commands), 89);
        await session.close();
    });

    it('a NOOP answered 421 ends the connection: DATA is never sent', async (t) => {
        const up = await scripted(t, {
            onCommand: (line) =>
                line === 'NOOP' ? { reply: '421 4.4.2 upstream.test Error: timeout exceeded', close: true } : undefined,
        });
        const logged: string[] = [];
        const logger = { ...silentLogger, warn: (_o: object, msg?: string) => void logged.push(msg ?? '') };
        const { session } = await kept(up.port, { keepAliveMs: 50 }, { logger });
        await envelope(session);
        await until('the connection ended', () => !session.usable);
        await assert.rejects(session.data(source()), upstreamError('closed'));
        assert.deepEqual(up.commands.slice(-1), ['NOOP']);
        assert.equal(noops(up.commands), 1);
        assert.deepEqual(logged, ['upstream connection lost while its transaction waited for the message']);
        await session.close();
    });

    it('a NOOP not answered in time ends the connection', async (t) => {
        const up = await scripted(t, { onCommand: (line) => (line === 'NOOP' ? { silent: true } : undefined) });
        const { session } = await kept(up.port, { keepAliveMs: 50, commandTimeoutMs: 200 });
        await envelope(session);
        await until('the connection ended', () => !session.usable);
        await assert.rejects(session.data(source()), upstreamError('closed'));
        assert.ok(!up.commands.includes('DATA'));
        await session.close();
    });

    it('nothing outside a transaction, nor on a connection kept idle for the next client', async (t) => {
        let counted = 0;
        const up = await scripted(t);
        const { upstream, session } = await kept(up.port, { keepAliveMs: 20 }, { onKeepAlive: () => counted++ });
        await sleep(100);
        await envelope(session);
        assert.equal(session.usable, true);
        await session.reset();
        await sleep(100);
        assert.equal((await send(session, MESSAGE)).code, 250);
        await sleep(100);
        await session.close();
        await sleep(100);
        assert.equal(noops(up.commands), 0, up.commands.join(', '));
        assert.equal(counted, 0);
        assert.equal(up.connections[0]?.closed, false, 'kept idle');
        await upstream.close?.();
    });

    it('close() during a NOOP QUITs after its reply', async (t) => {
        const up = await scripted(t, {
            onCommand: (line) => (line === 'NOOP' ? { reply: '250 2.0.0 Ok', delayMs: 200 } : undefined),
        });
        let counted = 0;
        const { session } = await kept(up.port, { keepAliveMs: 50 }, { onKeepAlive: () => counted++ });
        await envelope(session);
        await sleep(120);
        await session.close();
        assert.deepEqual(up.connections[0]?.commands.slice(3), ['NOOP', 'QUIT']);
        assert.equal(counted, 1);
        await up.idle();
    });
});

describe('TLS', () => {
    let cert: TestCertificate;
    before(async () => {
        cert = await createTestCertificate();
    });
    after(() => cert.cleanup());

    interface Received {
        secure: boolean;
        from: string;
        data: string;
    }

    /** An smtp-server upstream with the test certificate, closed after the test. */
    async function tlsServer(t: { after(fn: () => Promise<void>): void }, options: SMTPServerOptions) {
        const received: Received[] = [];
        const server = new SMTPServer({
            key: cert.key,
            cert: cert.cert,
            name: 'tls.upstream.test',
            logger: false,
            disabledCommands: ['AUTH'],
            ...options,
            onData(stream, session, callback) {
                const chunks: Buffer[] = [];
                stream.on('data', (c: Buffer) => chunks.push(c));
                stream.on('end', () => {
                    received.push({
                        secure: session.secure,
                        from: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
                        data: Buffer.concat(chunks).toString(),
                    });
                    callback(null);
                });
            },
        });
        await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
        t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
        return { port: (server.server.address() as net.AddressInfo).port, received };
    }

    for (const mode of ['opportunistic', 'required'] as const) {
        it(`uses STARTTLS when offered (${mode})`, async (t) => {
            const up = await tlsServer(t, {});
            const session = await open(up.port, { starttls: mode });
            assert.equal((await send(session, 'Subject: tls\r\n\r\nsecret\r\n')).code, 250);
            await session.close();
            assert.equal(up.received.length, 1);
            assert.equal(up.received[0]?.secure, true);
            assert.match(up.received[0]?.data ?? '', /secret/);
        });
    }

    it('fails with kind tls when STARTTLS is required but not offered', async (t) => {
        const up = await tlsServer(t, { hideSTARTTLS: true });
        await assert.rejects(open(up.port, { starttls: 'required' }), upstreamError('tls'));
    });

    it('continues in plain text when STARTTLS is opportunistic and not offered', async (t) => {
        const up = await tlsServer(t, { hideSTARTTLS: true });
        const session = await open(up.port, { starttls: 'opportunistic' });
        assert.equal((await send(session, 'x\r\n')).code, 250);
        await session.close();
        assert.equal(up.received[0]?.secure, false);
    });

    it('opportunistic: a failed TLS handshake sends the mail without TLS, counted, and TLS is tried again 10 minutes later', async (t) => {
        // answers STARTTLS with 220, then goes on in plain text: the handshake fails
        const up = await scripted(t, {
            ehlo: [FULL_XCLIENT, 'STARTTLS'],
            onCommand: (line) => (line === 'STARTTLS' ? '220 2.0.0 Ready to start TLS' : undefined),
        });
        let clock = 1_000;
        let fallbacks = 0;
        // XCLIENT: a connection of its own for each client, none kept idle
        const upstream = createSmtpUpstream(config(up.port, { starttls: 'opportunistic', xclient: true }), {
            hostname: HOSTNAME,
            now: () => clock,
            onTlsFallback: () => fallbacks++,
        });
        const deliver = async (): Promise<void> => {
            const session = await upstream.open(client());
            assert.equal((await send(session, 'Subject: plain\r\n\r\nbody\r\n')).code, 250);
            await session.close();
        };
        const startTlsTried = (): number => up.connections.filter((c) => c.commands.includes('STARTTLS')).length;
        await deliver();
        assert.equal(fallbacks, 1);
        assert.equal(startTlsTried(), 1, 'the failed connection; the mail went on a new one, without STARTTLS');
        await deliver();
        assert.equal(startTlsTried(), 1, 'not tried again within 10 minutes');
        clock += 10 * 60_000;
        await deliver();
        assert.equal(startTlsTried(), 2, 'tried again after 10 minutes');
        assert.equal(fallbacks, 2);
        // required, or a verified certificate: no mail without TLS
        await assert.rejects(open(up.port, { starttls: 'required', xclient: true }), upstreamError('tls'));
        assert.equal(fallbacks, 2);
        await assert.rejects(
            open(up.port, { starttls: 'opportunistic', tlsVerify: true, xclient: true }),
            upstreamError('tls'),
        );
    });

    it('opportunistic: a TLS handshake that times out is not a reason to go without TLS', async (t) => {
        // greets, offers STARTTLS, answers it 220, then says nothing: the handshake times out
        const sockets: net.Socket[] = [];
        const server = net.createServer((socket) => {
            sockets.push(socket);
            let starttls = false;
            socket.write('220 silent.test ESMTP\r\n');
            socket.on('data', (chunk: Buffer) => {
                if (starttls) return;
                for (const line of chunk.toString('latin1').split('\r\n').filter(Boolean)) {
                    if (/^EHLO /i.test(line))
                        socket.write(`250-silent.test\r\n250-${FULL_XCLIENT}\r\n250 STARTTLS\r\n`);
                    else if (line === 'STARTTLS') {
                        starttls = true;
                        socket.write('220 2.0.0 Ready to start TLS\r\n');
                    }
                }
            });
        });
        await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
        t.after(
            () =>
                new Promise<void>((resolve) => {
                    for (const s of sockets) s.destroy();
                    server.close(() => resolve());
                }),
        );
        let fallbacks = 0;
        const port = (server.address() as net.AddressInfo).port;
        const upstream = createSmtpUpstream(
            config(port, { starttls: 'opportunistic', xclient: true, connectTimeoutMs: 300 }),
            { hostname: HOSTNAME, onTlsFallback: () => fallbacks++ },
        );
        await assert.rejects(upstream.open(client()), upstreamError('timeout'));
        assert.equal(fallbacks, 0);
    });

    it('fails with kind tls when the certificate is verified and self-signed', async (t) => {
        const up = await tlsServer(t, {});
        await assert.rejects(open(up.port, { starttls: 'required', tlsVerify: true }), upstreamError('tls'));
    });

    it('speaks implicit TLS for smtps', async (t) => {
        const up = await tlsServer(t, { secure: true });
        const session = await open(up.port, { kind: 'smtps', url: `smtps://127.0.0.1:${up.port}` });
        assert.equal((await send(session, 'Subject: smtps\r\n\r\nbody\r\n')).code, 250);
        await session.close();
        assert.equal(up.received[0]?.secure, true);
        assert.equal(up.received[0]?.from, 'sender@example.org');
    });

    it('sends ENVID last on the MAIL line, after REQUIRETLS', async (t) => {
        // the one value a client writes as it likes: whatever it holds, no parameter follows it
        // for an upstream's command reader to join to it (Postfix's smtpd_token.c)
        const up = await scripted(t, { tls: { key: cert.key, cert: cert.cert }, ehlo: ['DSN', 'REQUIRETLS'] });
        const session = await open(up.port, { kind: 'smtps', url: `smtps://127.0.0.1:${up.port}` });
        const params = { ret: 'FULL', envid: 'QQ+22id', requireTls: true } as const;
        assert.equal((await session.mailFrom('sender@example.org', params)).code, 250);
        await session.close();
        assert.deepEqual(
            up.commands.filter((c) => c.startsWith('MAIL')),
            ['MAIL FROM:<sender@example.org> RET=FULL REQUIRETLS ENVID=QQ+22id'],
        );
    });

    for (const [name, over] of [
        ['after STARTTLS', { starttls: 'required' }],
        ['over implicit TLS', { kind: 'smtps', secure: true }],
    ] as const) {
        it(`an idle connection ${name} does not keep the process alive`, async (t) => {
            const up = await tlsServer(t, { secure: 'secure' in over });
            const cfg = config(up.port, 'kind' in over ? { kind: 'smtps' } : { starttls: over.starttls });
            assert.equal(await exitsWhileIdle(cfg, 4000), 0);
        });
    }

    it('fails with kind tls when an smtps upstream speaks plain text', async (t) => {
        const up = await scripted(t);
        await assert.rejects(open(up.port, { kind: 'smtps' }), upstreamError('tls'));
    });
});
