/**
 * The upstream transaction replayed at DATA, end to end through the real listener: a client whose
 * upload outlasts the upstream's patience for a silent client (here with no keepalive NOOPs at
 * all) finds the transaction's connection dropped at its end of data; mailwarden opens a new one
 * as at MAIL (XCLIENT, EHLO), sends the same MAIL and every accepted RCPT again with their
 * parameters, and only then DATA. The message arrives once, on the second connection; a replay
 * the upstream does not take in full gets the client `451 4.4.1` and delivers nothing. Against a
 * scripted upstream and against a real Postfix with a short smtpd_timeout.
 * It must not reach beyond loopback, nor leave a server running.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startPostfix } from '../helpers/postfix.ts';
import { startScriptedUpstream, unstuff, type ScriptedUpstreamOptions } from '../helpers/scripted-upstream.ts';
import { smtpConnect, type SmtpClient, type SmtpReply } from '../helpers/smtp-client.ts';

const HOSTNAME = 'mx.example.test';
const EHLO = ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN', 'SIZE 10000000', '8BITMIME'];
const MAIL = 'MAIL FROM:<sender@sender.test> SIZE=4000 BODY=8BITMIME';

/** mailwarden in front of loopback `port`, with no keepalive NOOPs: the first silence is fatal. */
function startGateway(port: number): Promise<TestApp> {
    return startApp(
        [
            `hostname: ${HOSTNAME}`,
            'domains: [example.test]',
            'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
            `upstream: { url: "smtp://127.0.0.1:${port}", keepAlive: false }`,
            'http: false',
        ].join('\n'),
    );
}

/** The envelope, each reply what is expected of it; `refused` recipients are answered 550 upstream. */
async function envelope(c: SmtpClient, rcpts: readonly string[], refused: readonly string[] = []): Promise<void> {
    assert.equal((await c.greeting()).code, 220);
    assert.equal((await c.cmd('EHLO slow.example')).code, 250);
    assert.equal((await c.cmd(MAIL)).code, 250);
    for (const to of rcpts) {
        const reply = await c.cmd(`RCPT TO:<${to}>`);
        assert.equal(reply.code, refused.includes(to) ? 550 : 250, reply.raw);
    }
}

/** The message text, written over `ms` (a line every 250 ms); the reply to its end. */
async function slowText(c: SmtpClient, subject: string, ms: number): Promise<SmtpReply> {
    assert.equal((await c.cmd('DATA')).code, 354);
    c.write(`From: sender@sender.test\r\nTo: a@example.test\r\nSubject: ${subject}\r\n\r\n`);
    for (let elapsed = 0; elapsed < ms; elapsed += 250) {
        c.write(`${'z'.repeat(70)}\r\n`);
        await sleep(250);
    }
    c.write('last line\r\n.\r\n');
    return c.reply();
}

/** A scripted upstream that drops a connection silent for 1 s, as Postfix after smtpd_timeout. */
function impatientUpstream(onCommand?: ScriptedUpstreamOptions['onCommand']) {
    return startScriptedUpstream({ ehlo: EHLO, idleTimeoutMs: 1000, onCommand });
}

describe('the upstream transaction replayed at DATA', () => {
    it('a message uploaded for longer than the upstream waits is delivered once, on a new connection', async () => {
        const up = await impatientUpstream((line) =>
            line.startsWith('RCPT TO:<nobody@') ? '550 5.1.1 no such user' : undefined,
        );
        const mw = await startGateway(up.port);
        const c = await smtpConnect(mw.port(), { timeoutMs: 15_000 });
        try {
            await envelope(c, ['a@example.test', 'nobody@example.test', 'b@example.test'], ['nobody@example.test']);
            const reply = await slowText(c, 'replayed', 2500);
            assert.equal(reply.code, 250, reply.raw);

            const completed = up.transactions.filter((t) => t.completed);
            assert.equal(completed.length, 1, 'the message arrives exactly once');
            const tx = completed[0]!;
            const first = up.transactions[0]!;
            assert.notEqual(tx.connection, first.connection, 'on the second connection');
            assert.equal(first.data, null, 'nothing of the message went on the first one');
            assert.deepEqual(tx.rcpts, ['a@example.test', 'b@example.test']);
            assert.equal(tx.mail, 'sender@sender.test');
            const second = up.connections.find((k) => k.id === tx.connection)!;
            assert.equal(second.xclient[0]?.HELO, 'slow.example', 'opened for the client, as at MAIL');
            const envelopeLines = second.commands.filter((l) => /^(MAIL|RCPT|DATA)/.test(l));
            assert.deepEqual(envelopeLines, [MAIL, 'RCPT TO:<a@example.test>', 'RCPT TO:<b@example.test>', 'DATA']);
            const text = unstuff(tx.data!).toString('latin1');
            assert.match(text, /Subject: replayed\r\n/);
            assert.match(text, /last line\r\n$/);
            assert.equal(text.split('z'.repeat(70)).length - 1, 10, 'every line of the message');

            const decision = mw.logs.find((l) => l.msg === 'decision');
            assert.equal(decision?.upstreamReplayed, true);
            assert.equal(decision?.action, 'accept');
            const metrics = await mw.app.metrics.registry.metrics();
            assert.match(metrics, /mailwarden_upstream_replays_total\{result="ok"\} 1/);
            assert.match(metrics, /mailwarden_upstream_replays_total\{result="failed"\} 0/);
        } finally {
            c.close();
            await mw.stop();
            await up.close();
        }
    });

    it('a recipient the new connection refuses gets the client 451 4.4.1 and delivers nothing', async () => {
        // the connection of the first transaction takes the recipient, the one of the replay does not
        let firstTx: number | null = null;
        const up = await impatientUpstream((line, ctx) => {
            if (line.startsWith('RCPT ')) firstTx ??= ctx.connection.id;
            return ctx.connection.id !== firstTx && line === 'RCPT TO:<b@example.test>'
                ? '450 4.2.1 mailbox busy'
                : undefined;
        });
        const mw = await startGateway(up.port);
        const c = await smtpConnect(mw.port(), { timeoutMs: 15_000 });
        try {
            await envelope(c, ['a@example.test', 'b@example.test']);
            const reply = await slowText(c, 'not replayed', 1500);
            assert.equal(reply.code, 451, reply.raw);
            assert.match(reply.raw, /^451 4\.4\.1 /);

            assert.equal(
                up.transactions.some((t) => t.data !== null),
                false,
                'no DATA on any connection',
            );
            const second = up.connections.at(-1)!;
            assert.notEqual(second.id, firstTx);
            // the replay, then the transaction left open on the new connection abandoned
            const replayed = second.commands.filter((l) => /^(MAIL|RCPT|DATA|RSET)/.test(l));
            assert.deepEqual(replayed, [MAIL, 'RCPT TO:<a@example.test>', 'RCPT TO:<b@example.test>', 'RSET']);
            const decision = mw.logs.find((l) => l.msg === 'decision');
            assert.equal(decision?.upstreamReplayed, false);
            assert.equal(decision?.action, 'tempfail');
            assert.match(String(decision?.reason), /replayed RCPT TO:<b@example\.test> with 450 4\.2\.1/);
            const metrics = await mw.app.metrics.registry.metrics();
            assert.match(metrics, /mailwarden_upstream_replays_total\{result="failed"\} 1/);
        } finally {
            c.close();
            await mw.stop();
            await up.close();
        }
    });

    it('a new connection that cannot be opened gets the client 451 4.4.1', async () => {
        const up = await impatientUpstream();
        const mw = await startGateway(up.port);
        const c = await smtpConnect(mw.port(), { timeoutMs: 15_000 });
        try {
            await envelope(c, ['a@example.test']);
            assert.equal((await c.cmd('DATA')).code, 354);
            c.write('From: sender@sender.test\r\nSubject: gone\r\n\r\n');
            await up.close();
            c.write('text\r\n.\r\n');
            const reply = await c.reply();
            assert.match(reply.raw, /^451 4\.4\.1 /);
            const decision = mw.logs.find((l) => l.msg === 'decision');
            assert.equal(decision?.upstreamReplayed, false);
        } finally {
            c.close();
            await mw.stop();
        }
    });

    it('Postfix with smtpd_timeout 3s delivers a message uploaded over 5 s without keepalive', async () => {
        const pf = await startPostfix({ serviceOptions: { smtpd_timeout: '3s' } });
        const mw = await startGateway(pf.port);
        const c = await smtpConnect(mw.port(), { timeoutMs: 15_000 });
        try {
            assert.equal((await c.greeting()).code, 220);
            assert.equal((await c.cmd('EHLO slow.example')).code, 250);
            assert.equal((await c.cmd('MAIL FROM:<sender@sender.test>')).code, 250);
            assert.equal((await c.cmd('RCPT TO:<alice@example.test>')).code, 250);
            const reply = await slowText(c, 'replayed for 5 s', 5000);
            assert.equal(reply.code, 250, `${reply.raw}\n${await pf.log()}`);
            const delivered = await pf.waitForMessages('alice', 1);
            assert.equal(delivered.filter((m) => m.includes('Subject: replayed for 5 s')).length, 1);
            assert.match(await pf.log(), /timeout after RCPT/);
            assert.equal(mw.logs.find((l) => l.msg === 'decision')?.upstreamReplayed, true);
        } finally {
            c.close();
            await mw.stop();
            await pf.stop();
        }
    });
});
