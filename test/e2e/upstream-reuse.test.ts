/**
 * Idle upstream connections passed to the next client, end to end through the real listener
 * and a scripted upstream. With `upstream.xclient: false` the upstream sees only mailwarden, so
 * a connection that ended cleanly serves the next client after a `250` to RSET (sent alone, or
 * in one write with the client's MAIL to an upstream that offers PIPELINING); one the upstream
 * closed, spoke on while idle, or whose RSET failed is dropped and the mail goes out on a new
 * one; a transaction the upstream refused at the end of data leaves its connection closed, a
 * client gone inside DATA (nothing of it sent upstream) does not; a reload naming another
 * upstream changes nothing until a restart; shutdown QUITs idle ones. A real Postfix takes the
 * messages of clients in turn on one connection, with RSET between them.
 * With XCLIENT every client has a connection of its own, and no RSET is sent. With either, a
 * client that leaves while its upstream connection is being opened leaves no connection (nor a
 * transaction) behind upstream; when idle connections stop answering RSET, one client waits one
 * command timeout, not one per idle connection.
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startApp, startScriptedGateway, type TestApp } from '../helpers/app.ts';
import { startDnsServer } from '../helpers/dns-server.ts';
import { startPostfix } from '../helpers/postfix.ts';
import {
    startScriptedUpstream,
    type ScriptedConnection,
    type ScriptedUpstream,
    type ScriptedUpstreamOptions,
} from '../helpers/scripted-upstream.ts';
import { sendMail, smtpConnect } from '../helpers/smtp-client.ts';
import { until } from '../helpers/until.ts';

const MSG = 'From: a@example.org\r\nTo: b@example.test\r\nSubject: hello\r\n\r\nbody\r\n';
const IDLE = 'upstream connection kept idle';

interface Gateway {
    up: ScriptedUpstream;
    mw: TestApp;
    /** The upstream connections that carried a transaction (the start-up probe does not). */
    used(): ScriptedConnection[];
    /** mailwarden_upstream_connections_total by outcome. */
    counts(): Promise<Record<string, number>>;
    /** Resolves once `n` connections in all were kept idle. */
    idled(n: number): Promise<void>;
    send(): Promise<number | undefined>;
}

async function gateway(t: TestContext, xclient = false, options: ScriptedUpstreamOptions = {}): Promise<Gateway> {
    const g = await startScriptedGateway(
        [
            'hostname: mx.example.test',
            'domains: [example.test]',
            'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
        ],
        {
            xclient,
            upstreamKeys: 'timeout: 1s',
            upstream: {
                ehlo: xclient ? ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN', '8BITMIME'] : ['8BITMIME'],
                ...options,
            },
        },
    );
    t.after(() => g.close());
    const { up, mw } = g;
    return {
        up,
        mw,
        used: () => up.connections.filter((c) => c.commands.some((l) => l.startsWith('MAIL '))),
        async counts() {
            const values = (await mw.app.metrics.upstreamConnections.get()).values;
            return Object.fromEntries(values.map((v) => [String(v.labels.outcome), v.value]));
        },
        idled: (n) =>
            until(`${n} upstream connections were kept idle`, () => mw.logs.filter((l) => l.msg === IDLE).length >= n),
        async send() {
            const r = await sendMail(mw.port(), { from: 'a@example.org', to: ['b@example.test'], data: MSG });
            return r.message?.code;
        },
    };
}

const verbs = (c: ScriptedConnection | undefined): string[] => (c?.commands ?? []).map((l) => l.split(/[ :]/)[0]!);

/** Whether RSET and a MAIL reached the upstream in one read (one write of ours). */
const rsetWithMail = (c: ScriptedConnection | undefined): boolean =>
    (c?.reads ?? []).some((r) => /^RSET\r\nMAIL FROM:<[^>]*>[^\r]*\r\n$/.test(r));

/**
 * An upstream that stops answering a connection at its RSET while `on()`: nothing more is
 * answered on that connection (a hung one, as opposed to one that skips a single reply).
 */
function hangAtRset(on: () => boolean): ScriptedUpstreamOptions['onCommand'] {
    const hung = new Set<number>();
    return (line, ctx) => {
        if (line === 'RSET' && on()) hung.add(ctx.connection.id);
        return hung.has(ctx.connection.id) ? { silent: true } : undefined;
    };
}

for (const pipelining of [false, true]) {
    /** The upstream's EHLO: with PIPELINING, RSET goes out with the next client's MAIL. */
    const offer: ScriptedUpstreamOptions = { ehlo: pipelining ? ['8BITMIME', 'PIPELINING'] : ['8BITMIME'] };
    const upstreamKind = pipelining ? 'an upstream that offers PIPELINING' : 'an upstream without PIPELINING';
    describe(`upstream connections with upstream.xclient: false, to ${upstreamKind}`, () => {
        it('serve the next client after RSET: one connection for two clients', async (t) => {
            const g = await gateway(t, false, offer);
            assert.equal(await g.send(), 250);
            await g.idled(1);
            assert.equal(await g.send(), 250);
            const used = g.used();
            assert.equal(used.length, 1, 'one upstream connection for both clients');
            assert.deepEqual(verbs(used[0]), ['EHLO', 'MAIL', 'RCPT', 'DATA', 'RSET', 'MAIL', 'RCPT', 'DATA']);
            assert.equal(rsetWithMail(used[0]), pipelining, `reads: ${JSON.stringify(used[0]?.reads)}`);
            assert.equal(g.up.transactions.length, 2);
            assert.ok(g.up.transactions.every((tx) => tx.completed && tx.finalReply?.startsWith('250')));
            assert.deepEqual(await g.counts(), { opened: 1, reused: 1 });
        });

        it("pass the upstream's answer to the next client's MAIL on to that client", async (t) => {
            let refuse = false;
            const g = await gateway(t, false, {
                ...offer,
                onCommand: (line) =>
                    refuse && line.startsWith('MAIL')
                        ? '550 5.7.1 <a@example.org>: Sender address rejected'
                        : undefined,
            });
            assert.equal(await g.send(), 250);
            await g.idled(1);
            refuse = true;
            const c = await smtpConnect(g.mw.port());
            await c.greeting();
            assert.equal((await c.cmd('EHLO client.example')).code, 250);
            const mail = await c.cmd('MAIL FROM:<a@example.org>');
            assert.equal(mail.code, 550, mail.raw);
            assert.match(mail.raw, /^550 5\.7\.1 The destination mail server refused the sender/);
            refuse = false;
            assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
            assert.equal((await c.cmd('RCPT TO:<b@example.test>')).code, 250);
            c.close();
            assert.equal(g.used().length, 1, 'the same connection throughout');
            assert.deepEqual(await g.counts(), { opened: 1, reused: 1 });
        });

        for (const [name, spoil] of [
            ['the upstream closed it', (c: ScriptedConnection) => c.destroy()],
            [
                'the upstream said 421 on it',
                (c: ScriptedConnection) => c.write('421 4.4.2 upstream.test Error: timeout exceeded\r\n'),
            ],
        ] as const) {
            it(`is dropped when ${name} while idle; the next client's mail goes on a new one`, async (t) => {
                const g = await gateway(t, false, offer);
                assert.equal(await g.send(), 250);
                await g.idled(1);
                spoil(g.used()[0]!);
                assert.equal(await g.send(), 250);
                const used = g.used();
                assert.equal(used.length, 2);
                // a 421 still on its way when the next client came may meet the RSET, and with
                // PIPELINING the MAIL sent with it: nothing of a transaction follows on that connection
                const completed = g.up.transactions.filter((tx) => tx.completed);
                assert.equal(completed.length, 2);
                assert.equal(completed[1]?.connection, used[1]?.id);
                const after = used[0]!.commands.slice(4);
                assert.ok(
                    !after.some((l) => l.startsWith(pipelining ? 'RCPT' : 'MAIL')),
                    `nothing more on the old one: ${after.join(' | ')}`,
                );
                assert.deepEqual(await g.counts(), { opened: 2, discarded: 1 });
                const line = g.mw.logs.find((l) => l.msg === 'idle upstream connection discarded');
                assert.equal(line?.level, 20, 'logged at debug level');
            });
        }

        for (const [name, answer] of [
            ['refuses RSET with 4xx', '421 4.3.2 going down'],
            ['refuses RSET with 5xx', '502 5.5.2 Error: command not recognized'],
            ['does not answer RSET', null],
        ] as const) {
            it(`drops an idle connection whose upstream ${name}, and delivers on a new one`, async (t) => {
                let refuse = false;
                const hang = hangAtRset(() => refuse);
                const g = await gateway(t, false, {
                    ...offer,
                    onCommand: (line, ctx) =>
                        answer === null ? hang?.(line, ctx) : line === 'RSET' && refuse ? answer : undefined,
                });
                assert.equal(await g.send(), 250);
                await g.idled(1);
                refuse = true;
                assert.equal(await g.send(), 250);
                const used = g.used();
                assert.equal(used.length, 2);
                // with PIPELINING the MAIL came with the RSET (and starts nothing without RCPT and DATA)
                const withMail = pipelining ? ['MAIL'] : [];
                assert.deepEqual(verbs(used[0]), [
                    'EHLO',
                    'MAIL',
                    'RCPT',
                    'DATA',
                    'RSET',
                    ...(answer === null ? (pipelining ? verbs(used[0]).slice(5) : []) : [...withMail, 'QUIT']),
                ]);
                assert.ok(!verbs(used[0]).slice(5).includes('RCPT'), 'nothing of the new transaction after its MAIL');
                assert.deepEqual(verbs(used[1]), ['EHLO', 'MAIL', 'RCPT', 'DATA']);
                const last = g.up.transactions.at(-1);
                assert.equal(last?.connection, used[1]?.id);
                assert.equal(last?.completed, true);
                assert.deepEqual(await g.counts(), { opened: 2, discarded: 1 });
            });
        }

        for (const final of ['451 4.3.0 Error: queue file write error', '554 5.7.1 Error: content rejected']) {
            it(`closes a connection whose last message was answered ${final.slice(0, 3)} at the end of data`, async (t) => {
                let first = true;
                const g = await gateway(t, false, {
                    ...offer,
                    onData: () => {
                        if (!first) return undefined;
                        first = false;
                        return final;
                    },
                });
                assert.equal(await g.send(), Number(final.slice(0, 3)));
                await until('the first connection was closed', () => g.used()[0]?.closed === true);
                assert.equal(verbs(g.used()[0]).at(-1), 'QUIT');
                assert.equal(await g.send(), 250);
                assert.equal(g.used().length, 2);
                assert.deepEqual(await g.counts(), { opened: 2 });
            });
        }

        it('keeps a connection whose client went away inside DATA: nothing of that message reached the upstream', async (t) => {
            const g = await gateway(t, false, offer);
            const c = await smtpConnect(g.mw.port());
            await c.greeting();
            assert.equal((await c.cmd('EHLO client.example')).code, 250);
            assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
            assert.equal((await c.cmd('RCPT TO:<b@example.test>')).code, 250);
            assert.equal((await c.cmd('DATA')).code, 354);
            c.write('Subject: cut\r\n\r\nhalf a mess');
            await sleep(50);
            c.close();
            await g.idled(1);
            assert.equal(await g.send(), 250);
            const used = g.used();
            assert.equal(used.length, 1);
            // the abandoned transaction was reset before the connection was kept, and once more when taken
            assert.deepEqual(verbs(used[0]), ['EHLO', 'MAIL', 'RCPT', 'RSET', 'RSET', 'MAIL', 'RCPT', 'DATA']);
            assert.equal(g.up.transactions.length, 2);
            assert.equal(g.up.transactions[0]?.data, null, 'DATA never went upstream for the first client');
            assert.equal(g.up.transactions[1]?.completed, true);
            assert.deepEqual(await g.counts(), { opened: 1, reused: 1 });
        });

        it('keep going to the upstream in force after a reload that names another (it needs a restart)', async (t) => {
            const g = await gateway(t, false, offer);
            const other = await startScriptedUpstream({ ehlo: ['8BITMIME'] });
            t.after(() => other.close());
            assert.equal(await g.send(), 250);
            await g.idled(1);
            const file = join(g.mw.dir, 'mailwarden.yaml');
            await writeFile(file, (await readFile(file, 'utf8')).replace(`:${g.up.port}"`, `:${other.port}"`));
            g.mw.app.reload();
            assert.ok(
                g.mw.logs.some((l) => /needs a restart: upstream\.url/.test(String(l.msg))),
                'the change is named as needing a restart',
            );
            assert.equal(await g.send(), 250);
            assert.equal(other.connections.length, 0, 'nothing reached the upstream named by the reload');
            assert.equal(g.used().length, 1);
            assert.deepEqual(await g.counts(), { opened: 1, reused: 1 });
        });

        it('are closed with QUIT when mailwarden stops', async (t) => {
            const g = await gateway(t, false, offer);
            assert.equal(await g.send(), 250);
            await g.idled(1);
            const idle = g.used()[0]!;
            assert.equal(idle.closed, false);
            await g.mw.stop();
            assert.equal(verbs(idle).at(-1), 'QUIT');
            await until('the idle connection was closed', () => idle.closed);
        });

        it('cost one client at most one command timeout when they stopped answering', async (t) => {
            let silent = false;
            const g = await gateway(t, false, { ...offer, onCommand: hangAtRset(() => silent) });
            // four clients at once leave four idle connections
            const N = 4;
            const codes = await Promise.all(Array.from({ length: N }, () => g.send()));
            assert.deepEqual(codes, Array(N).fill(250));
            await until(`${N} kept idle`, () => g.mw.logs.filter((l) => l.msg === IDLE).length >= N);
            silent = true;
            const rsetsBefore = g.up.commands.filter((l) => l === 'RSET').length;
            const started = Date.now();
            assert.equal(await g.send(), 250);
            const waited = Date.now() - started;
            const unanswered = g.up.commands.filter((l) => l === 'RSET').length - rsetsBefore;
            assert.ok(
                unanswered <= 1,
                `one client waited for ${unanswered} unanswered RSETs (${waited} ms with a 1 s timeout) before a new connection`,
            );
            assert.deepEqual(await g.counts(), { opened: N + 1, discarded: N });
        });
    });
}

describe('upstream connections with upstream.xclient: false, in front of a real Postfix', () => {
    it('carry the messages of clients in turn on one connection; Postfix takes RSET between them, sent with the MAIL', async (t) => {
        // as the default of Postfix 3.9 and later: a client that pipelines where RFC 2920 does not allow it is dropped
        const postfix = await startPostfix({ mainCf: { smtpd_forbid_unauth_pipelining: 'yes' } });
        t.after(() => postfix.stop());
        const dns = await startDnsServer({});
        t.after(() => dns.close());
        // Postfix offers PIPELINING, so the RSET before each later client's MAIL goes with it
        const probe = await smtpConnect(postfix.port);
        await probe.greeting();
        assert.match((await probe.cmd('EHLO probe.test')).raw, /^250[- ]PIPELINING\r?$/m);
        probe.close();
        const mw = await startApp(
            [
                'hostname: mx.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${postfix.port}", xclient: false }`,
                `dns: { servers: ["${dns.address}"], timeout: 1s }`,
                'http: false',
            ].join('\n'),
        );
        t.after(() => mw.stop());
        for (let i = 1; i <= 3; i++) {
            const r = await sendMail(mw.port(), {
                from: 'sender@sender.test',
                to: ['alice@example.test'],
                data: `From: sender@sender.test\r\nTo: alice@example.test\r\nSubject: turn ${i}\r\n\r\nHello.\r\n`,
            });
            assert.equal(r.message?.code, 250, r.message?.raw);
            await until(`connection ${i} kept idle`, () => mw.logs.filter((l) => l.msg === IDLE).length >= i);
        }
        const messages = await postfix.waitForMessages('alice', 3);
        assert.deepEqual(
            messages.map((m) => /^Subject: (.*)$/m.exec(m)?.[1]?.trim()),
            ['turn 1', 'turn 2', 'turn 3'],
        );
        const values = (await mw.app.metrics.upstreamConnections.get()).values;
        assert.deepEqual(Object.fromEntries(values.map((v) => [String(v.labels.outcome), v.value])), {
            opened: 1,
            reused: 2,
        });
        // Postfix's log: the three messages came in on the last connection it accepted
        const log = await postfix.log();
        const last = log.slice(log.lastIndexOf(': connect from '));
        assert.equal(last.match(/: client=unknown\[127\.0\.0\.1\]/g)?.length, 3, log);
        assert.doesNotMatch(log, /improper command pipelining/);
    });
});

describe('upstream connections with upstream.xclient: true', () => {
    it('are one per client, each with its XCLIENT (after the first, without an EHLO of ours), never reset for another client', async (t) => {
        const g = await gateway(t, true);
        assert.equal(await g.send(), 250);
        await until('the first connection was closed', () => g.used()[0]?.closed === true);
        assert.equal(await g.send(), 250);
        await until('the second connection was closed', () => g.used()[1]?.closed === true);
        const used = g.used();
        assert.equal(used.length, 2);
        assert.deepEqual(verbs(used[0]), ['EHLO', 'XCLIENT', 'EHLO', 'MAIL', 'RCPT', 'DATA', 'QUIT']);
        assert.deepEqual(verbs(used[1]), ['XCLIENT', 'EHLO', 'MAIL', 'RCPT', 'DATA', 'QUIT']);
        for (const c of used) assert.equal(c.xclient.length, 1);
        assert.ok(!g.up.commands.includes('RSET'));
        assert.deepEqual(await g.counts(), { opened: 2 });
        assert.ok(!g.mw.logs.some((l) => l.msg === IDLE));
    });
});

/** A client that sends MAIL and leaves 100 ms later, before it could have the answer. */
async function mailThenLeave(port: number): Promise<void> {
    const c = await smtpConnect(port);
    await c.greeting();
    assert.equal((await c.cmd('EHLO client.example')).code, 250);
    c.write('MAIL FROM:<a@example.org>\r\n');
    await sleep(100);
    c.close();
}

describe('a client gone while its upstream connection is being opened', () => {
    it('closes a taken idle connection whose RSET, sent with the MAIL, was still unanswered (PIPELINING)', async (t) => {
        let slow = false;
        const g = await gateway(t, false, {
            ehlo: ['8BITMIME', 'PIPELINING'],
            onCommand: (line) => (slow && line === 'RSET' ? { delayMs: 300 } : undefined),
        });
        assert.equal(await g.send(), 250);
        await g.idled(1);
        slow = true;
        const connections = g.up.connections.length;
        await mailThenLeave(g.mw.port());
        const conn = g.used()[0]!;
        await until('the connection was closed', () => conn.closed, 2000);
        assert.ok(rsetWithMail(conn), 'RSET and MAIL went out together');
        assert.ok(!verbs(conn).slice(4).includes('RCPT'), 'no transaction went on after the client left');
        assert.equal(g.mw.logs.filter((l) => l.msg === IDLE).length, 1, 'not kept for another client');
        // and no other connection is taken or opened for the MAIL of a client that left
        await sleep(500);
        assert.equal(g.up.connections.length, connections, 'no connection opened after the client left');
        assert.deepEqual(await g.counts(), { opened: 1 });
    });

    for (const xclient of [false, true]) {
        it(`sends no MAIL for it and leaves no connection open (xclient: ${xclient})`, async (t) => {
            let slow = false;
            const g = await gateway(t, xclient, {
                // reused connection: RSET slow; new connection: EHLO slow (after the start-up probe)
                onCommand: (line) =>
                    slow && (line === 'RSET' || line.startsWith('EHLO') || line.startsWith('XCLIENT'))
                        ? { delayMs: 300 }
                        : undefined,
            });
            assert.equal(await g.send(), 250);
            if (!xclient) await until('kept idle', () => g.mw.logs.some((l) => l.msg === IDLE));
            slow = true;
            const before = g.up.connections.length;
            await mailThenLeave(g.mw.port());
            const goneAt = Date.now();
            await sleep(1500);
            // the connection that was being opened (or taken) for the client that left
            const conn = xclient ? g.up.connections[before] : g.up.connections.find((x) => x.commands.includes('RSET'));
            assert.ok(conn, 'a connection was being opened');
            assert.ok(
                !conn.commands.some((l, i) => i > 0 && l.startsWith('MAIL') && conn.commands.indexOf('RSET') < i) &&
                    !(xclient && conn.commands.some((l) => l.startsWith('MAIL'))),
                `no MAIL after the client left (${Date.now() - goneAt} ms ago; upstream connection closed: ${conn.closed}): ${conn.commands.join(' | ')}`,
            );
            assert.ok(
                conn.closed || g.mw.logs.filter((l) => l.msg === IDLE).length >= 2,
                `closed or back in the pool, not held by a session that ended: ${conn.commands.join(' | ')}`,
            );
        });
    }
});
