/**
 * End-to-end through the real listener into a scripted upstream: the no-loss rule (the
 * client hears 250 only after the upstream's 250, every failure is a 4xx), per-recipient
 * relaying, XCLIENT, header handling, size limits and bare line endings. The upstream is
 * scripted so odd replies, silence and dropped connections can be produced on demand.
 */
import assert from 'node:assert/strict';
import { describe, it, after, before } from 'node:test';
import { startApp, decisions, type TestApp } from '../helpers/app.ts';
import {
    startScriptedUpstream,
    unstuff,
    type ScriptedUpstream,
    type ScriptedUpstreamOptions,
} from '../helpers/scripted-upstream.ts';
import { freePort, sendMail, smtpConnect } from '../helpers/smtp-client.ts';

const XCLIENT_EHLO = [
    'XCLIENT NAME ADDR PORT PROTO HELO LOGIN',
    'SIZE 100000000',
    '8BITMIME',
    'SMTPUTF8',
    'PIPELINING',
];
const MSG =
    'From: Alice <alice@example.org>\r\nTo: bob@example.test\r\nSubject: hello\r\n\r\nHello Bob.\r\n.leading dot\r\n';

function config(upstreamPort: number, extra = ''): string {
    return [
        'hostname: mx.example.test',
        'domains: [example.test]',
        'listeners:',
        '  - { name: mx, host: 127.0.0.1, port: 0, mode: mx, maxMessageSize: 100KB }',
        '  - { name: lenient, host: 127.0.0.1, port: 0, mode: mx, bareNewline: normalize }',
        `upstream: { url: "smtp://127.0.0.1:${upstreamPort}", xclient: true, timeout: 2s, dataTimeout: 1s, connectTimeout: 1s }`,
        'http: false',
        extra,
    ].join('\n');
}

async function setup(
    opts: ScriptedUpstreamOptions = {},
    extra = '',
): Promise<{ up: ScriptedUpstream; mw: TestApp; done: () => Promise<void> }> {
    const up = await startScriptedUpstream({ ehlo: XCLIENT_EHLO, ...opts });
    const mw = await startApp(config(up.port, extra));
    return {
        up,
        mw,
        done: async () => {
            await mw.stop();
            await up.close();
        },
    };
}

describe('proxy: the happy path', () => {
    let env: Awaited<ReturnType<typeof setup>>;
    before(async () => {
        env = await setup();
    });
    after(() => env.done());

    it('delivers upstream with our headers, relays the queue id, and strips forged own headers', async () => {
        const forged =
            'X-Mailwarden-Verdict: accept; rules=; score=0; id=forged\r\nAuthentication-Results: mx.example.test; dmarc=pass\r\n';
        const r = await sendMail(env.mw.port(), {
            from: 'alice@example.org',
            to: ['bob@example.test'],
            data: forged + MSG,
            helo: 'client.example',
        });
        assert.equal(r.message?.code, 250, r.message?.raw);
        assert.match(r.message.text, /^2\.0\.0 Message accepted for delivery as SCRIPTED\d+ \(id \w+\)$/);
        const tx = env.up.transactions.at(-1)!;
        assert.equal(tx.completed, true);
        assert.equal(tx.mail, 'alice@example.org');
        assert.deepEqual(tx.rcpts, ['bob@example.test']);
        const body = unstuff(tx.data!).toString('latin1');
        assert.match(
            body.replace(/\r\n\t/g, ' '),
            /^Received: from client\.example \(unknown \[127\.0\.0\.1\]\) by mx\.example\.test \(mailwarden\) with ESMTP id \w+ for <bob@example\.test>;/,
        );
        assert.match(body, /\r\nX-Mailwarden-Verdict: accept; rules=; score=0; id=\w+\r\n/);
        assert.doesNotMatch(body, /id=forged/);
        assert.doesNotMatch(body, /dmarc=pass/);
        assert.ok(body.endsWith('\r\n\r\nHello Bob.\r\n.leading dot\r\n'), 'body intact and dots unstuffed back');
        assert.match(tx.data!.toString('latin1'), /\r\n\.\.leading dot\r\n/, 'dot-stuffed on the wire');
    });

    it('passes the real client with XCLIENT and greets again with the client HELO', async () => {
        await sendMail(env.mw.port(), {
            from: 'a@example.org',
            to: ['b@example.test'],
            data: MSG,
            helo: 'client.example',
        });
        const conn = env.up.connections.at(-1)!;
        assert.equal(conn.xclient.length, 1);
        assert.equal(conn.xclient[0]!.ADDR, '127.0.0.1');
        assert.equal(conn.xclient[0]!.HELO, 'client.example');
        assert.equal(conn.xclient[0]!.PROTO, 'ESMTP');
        assert.equal(conn.xclient[0]!.NAME, '[UNAVAILABLE]');
        assert.ok(
            conn.commands.indexOf('EHLO client.example') > conn.commands.findIndex((c) => c.startsWith('XCLIENT')),
        );
    });

    it('passes SIZE and BODY upstream when the client gave them', async () => {
        const c = await smtpConnect(env.mw.port());
        await c.greeting();
        await c.cmd('EHLO client.example');
        assert.equal((await c.cmd('MAIL FROM:<a@example.org> SIZE=120 BODY=8BITMIME')).code, 250);
        c.close();
        await env.up.idle();
        const tx = env.up.transactions.at(-1)!;
        assert.deepEqual(tx.params, ['SIZE=120', 'BODY=8BITMIME']);
    });

    it('logs one decision line per message with no secrets', () => {
        const lines = decisions(env.mw.logs);
        assert.ok(lines.length >= 2);
        const d = lines[0]!;
        for (const key of [
            'session',
            'client',
            'helo',
            'from',
            'rcptCount',
            'size',
            'action',
            'rules',
            'reason',
            'checks',
            'upstream',
        ]) {
            assert.ok(key in d, `decision line has ${key}`);
        }
    });

    it('runs several transactions on one connection, with RSET upstream after a client RSET', async () => {
        const c = await smtpConnect(env.mw.port());
        await c.greeting();
        await c.cmd('EHLO client.example');
        assert.equal((await c.cmd('MAIL FROM:<one@example.org>')).code, 250);
        assert.equal((await c.cmd('RCPT TO:<x@example.test>')).code, 250);
        assert.equal((await c.cmd('RSET')).code, 250);
        assert.equal((await c.cmd('MAIL FROM:<two@example.org>')).code, 250);
        assert.equal((await c.cmd('RCPT TO:<y@example.test>')).code, 250);
        assert.equal((await c.cmd('DATA')).code, 354);
        c.write(MSG + '.\r\n');
        assert.equal((await c.reply()).code, 250);
        await c.cmd('QUIT');
        c.close();
        await env.up.idle();
        const conn = env.up.connections.at(-1)!;
        assert.ok(conn.commands.includes('RSET'), conn.commands.join(' | '));
        const tx = env.up.transactions.at(-1)!;
        assert.equal(tx.mail, 'two@example.org');
        assert.deepEqual(tx.rcpts, ['y@example.test']);
        assert.equal(tx.completed, true);
    });
});

describe('proxy: upstream answers and failures', () => {
    it('relays a per-recipient refusal and delivers to the other recipients', async (t) => {
        const env = await setup({
            onCommand: (line) =>
                line.startsWith('RCPT TO:<nobody@')
                    ? '550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown in virtual mailbox table'
                    : undefined,
        });
        t.after(() => env.done());
        const r = await sendMail(env.mw.port(), {
            from: 'a@example.org',
            to: ['bob@example.test', 'nobody@example.test'],
            data: MSG,
        });
        assert.equal(r.rcpt[0]!.code, 250);
        assert.equal(r.rcpt[1]!.code, 550);
        assert.match(
            r.rcpt[1]!.text,
            /^5\.1\.1 The destination mail server refused this recipient: the recipient address does not exist there \(id \w+\)$/,
        );
        assert.doesNotMatch(r.rcpt[1]!.text, /virtual mailbox/);
        assert.equal(r.message?.code, 250);
        assert.deepEqual(env.up.transactions.at(-1)!.rcpts, ['bob@example.test']);
    });

    it('relays 4xx and 5xx at MAIL FROM', async (t) => {
        const env = await setup({
            onCommand: (line) =>
                line.includes('<temp@')
                    ? '451 4.3.0 try later'
                    : line.includes('<perm@')
                      ? '553 5.1.8 bad sender domain'
                      : undefined,
        });
        t.after(() => env.done());
        const a = await sendMail(env.mw.port(), { from: 'temp@example.org', to: ['b@example.test'], data: MSG });
        assert.equal(a.mail.code, 451);
        assert.match(a.mail.text, /^4\.3\.0 .*try again later/);
        const b = await sendMail(env.mw.port(), { from: 'perm@example.org', to: ['b@example.test'], data: MSG });
        assert.equal(b.mail.code, 553);
        assert.match(b.mail.text, /^5\.1\.8 /);
    });

    for (const [code, enhanced] of [
        [452, '4.3.1'],
        [554, '5.7.1'],
    ] as const) {
        it(`relays ${code} at the end of DATA, never 250`, async (t) => {
            const env = await setup({ onData: () => `${code} ${enhanced} upstream says no` });
            t.after(() => env.done());
            const r = await sendMail(env.mw.port(), { from: 'a@example.org', to: ['b@example.test'], data: MSG });
            assert.equal(r.message?.code, code);
            assert.match(
                r.message.text,
                new RegExp(`^${enhanced.replaceAll('.', '\\.')} The destination mail server refused the message`),
            );
            const d = decisions(env.mw.logs).at(-1)!;
            assert.equal(d.action, code >= 500 ? 'reject' : 'tempfail');
            assert.match(String(d.upstream), /upstream says no/);
        });
    }

    it("counts the upstream's replies by stage: a milter deferring every message is one 4xx a message, whatever its recipients", async (t) => {
        const env = await setup({ onData: () => '451 4.7.1 Service unavailable - try again later' });
        t.after(() => env.done());
        const to = ['a@example.test', 'b@example.test', 'c@example.test'];
        for (let i = 0; i < 2; i++) {
            const r = await sendMail(env.mw.port(), { from: 'a@example.org', to, data: MSG });
            assert.equal(r.message?.code, 451);
        }
        const counted = (await env.mw.app.metrics.upstreamReplies.get()).values.map(
            (v) => `${v.labels.stage} ${v.labels.class} ${v.value}`,
        );
        assert.deepEqual(counted.sort(), ['data 4xx 2', 'mail 2xx 2', 'rcpt 2xx 6']);
        // every reply deferred is one in 5 of the replies, but every message
        const d = decisions(env.mw.logs).at(-1)!;
        assert.equal(d.action, 'tempfail');
        assert.equal(d.reason, 'upstream refused the message');
    });

    it('answers 451 4.4.1 when the upstream closes mid-DATA, and the upstream never saw a complete message', async (t) => {
        const env = await setup({
            onCommand: (line) => (line === 'DATA' ? { reply: '354 go ahead', closeAfterDataBytes: 50 } : undefined),
        });
        t.after(() => env.done());
        const r = await sendMail(env.mw.port(), {
            from: 'a@example.org',
            to: ['b@example.test'],
            data: MSG + 'x'.repeat(5000) + '\r\n',
        });
        assert.equal(r.message?.code, 451);
        assert.match(r.message.text, /^4\.4\.1 /);
        assert.equal(env.up.transactions.at(-1)!.completed, false);
    });

    it('answers 451 4.4.1 when the upstream never answers the end of data', async (t) => {
        const env = await setup({ onData: () => ({ silent: true }) });
        t.after(() => env.done());
        const started = Date.now();
        const r = await sendMail(env.mw.port(), { from: 'a@example.org', to: ['b@example.test'], data: MSG });
        assert.equal(r.message?.code, 451);
        assert.match(r.message.text, /^4\.4\.1 /);
        assert.ok(Date.now() - started < 5000);
    });

    it('answers 451 4.4.1 at MAIL FROM when the upstream is unreachable', async (t) => {
        const port = await freePort();
        const mw = await startApp(config(port));
        t.after(() => mw.stop());
        const r = await sendMail(mw.port(), { from: 'a@example.org', to: ['b@example.test'], data: MSG });
        assert.equal(r.mail.code, 451);
        assert.match(r.mail.text, /^4\.4\.1 The mail server behind this gateway is not answering/);
    });

    it('refuses to deliver without XCLIENT when XCLIENT is configured but not offered', async (t) => {
        const env = await setup({ ehlo: ['SIZE 1000000', '8BITMIME'] });
        t.after(() => env.done());
        const r = await sendMail(env.mw.port(), { from: 'a@example.org', to: ['b@example.test'], data: MSG });
        assert.equal(r.mail.code, 451);
        assert.equal(env.up.transactions.length, 0);
    });

    it('drops nothing when the client disconnects mid-DATA: the upstream gets no complete message', async (t) => {
        const env = await setup();
        t.after(() => env.done());
        const c = await smtpConnect(env.mw.port());
        await c.greeting();
        await c.cmd('EHLO client.example');
        await c.cmd('MAIL FROM:<a@example.org>');
        await c.cmd('RCPT TO:<b@example.test>');
        assert.equal((await c.cmd('DATA')).code, 354);
        c.write('Subject: partial\r\n\r\nhalf a message');
        await new Promise((r) => setTimeout(r, 100));
        c.close();
        await env.up.idle();
        assert.ok(env.up.transactions.every((tx) => !tx.completed));
    });
});

describe('proxy: size and line endings', () => {
    let env: Awaited<ReturnType<typeof setup>>;
    before(async () => {
        env = await setup();
    });
    after(() => env.done());

    it('advertises SIZE and refuses an oversized message with 552 5.3.4 after draining it', async () => {
        const c = await smtpConnect(env.mw.port());
        await c.greeting();
        const ehlo = await c.cmd('EHLO client.example');
        assert.ok(ehlo.lines.includes('SIZE 102400'), ehlo.text);
        for (const l of ['PIPELINING', '8BITMIME', 'SMTPUTF8']) assert.ok(ehlo.lines.includes(l), l);
        c.close();
        const before = env.up.transactions.filter((tx) => tx.completed).length;
        const r = await sendMail(env.mw.port(), {
            from: 'a@example.org',
            to: ['b@example.test'],
            data: MSG + ('y'.repeat(998) + '\r\n').repeat(120),
        });
        assert.equal(r.message?.code, 552);
        assert.match(r.message.text, /^5\.3\.4 Message too big: this server accepts at most 102400 bytes/);
        assert.equal(r.quit?.code, 221, 'the session is still in sync after the refusal');
        assert.equal(env.up.transactions.filter((tx) => tx.completed).length, before);
    });

    it('refuses bare LF on an mx listener with 550 5.5.2', async () => {
        const r = await sendMail(env.mw.port('mx'), {
            from: 'a@example.org',
            to: ['b@example.test'],
            data: 'Subject: x\r\n\r\nline one\nline two\r\n',
        });
        assert.equal(r.message?.code, 550);
        assert.match(r.message.text, /^5\.5\.2 /);
    });

    it('normalises bare LF and CR where configured, and forwards canonical CRLF', async () => {
        const r = await sendMail(env.mw.port('lenient'), {
            from: 'a@example.org',
            to: ['b@example.test'],
            data: 'From: a@example.org\r\nSubject: x\r\n\r\nline one\nline two\rline three\r\n',
        });
        assert.equal(r.message?.code, 250);
        const data = env.up.transactions.at(-1)!.data!.toString('latin1');
        assert.ok(data.endsWith('\r\n\r\nline one\r\nline two\r\nline three\r\n'), JSON.stringify(data.slice(-60)));
        assert.doesNotMatch(data.replace(/\r\n/g, ''), /[\r\n]/);
    });
});

describe('proxy: listener limits', () => {
    it('answers 421 to clients beyond maxClients', async (t) => {
        const up = await startScriptedUpstream({ ehlo: XCLIENT_EHLO });
        const mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx, maxClients: 1 }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                'http: false',
            ].join('\n'),
        );
        t.after(async () => {
            await mw.stop();
            await up.close();
        });
        const first = await smtpConnect(mw.port());
        assert.equal((await first.greeting()).code, 220);
        // from another network, so that the listener's limit and not the network's share refuses it
        const second = await smtpConnect(mw.port(), { localAddress: '127.0.2.1' });
        const g = await second.greeting();
        assert.equal(g.code, 421);
        assert.match(g.text, /^4\.7\.0 Too many connections to this server/);
        first.close();
        second.close();
    });
});
