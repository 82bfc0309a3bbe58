/**
 * Slow clients (slowloris) at each step of the session, end to end through the real listener:
 * before EHLO, in the middle of a command line, between commands, inside DATA, during a STARTTLS
 * handshake and inside an AUTH exchange, a client
 * that stops (or trickles one byte at a time, its message data included) is closed within a
 * bounded time with `421 4.4.2`; a client that never reaches DATA, sending a RCPT now and then
 * (RSET and a new MAIL among them), is closed with `421 4.4.2` once `socketTimeout` has passed
 * since its MAIL FROM, while one sending message after message is not; a session that collects
 * 20 error replies is closed with `421 4.7.0`, EHLO, HELO, NOOP, RSET, VRFY, ETRN, HELP and a RCPT
 * repeating an accepted recipient past the 100th of a session counting as errors.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { hash } from '@node-rs/argon2';
import { startScriptedGateway, type ScriptedGateway, type TestApp } from '../helpers/app.ts';
import { smtpConnect, type SmtpClient, type SmtpReply } from '../helpers/smtp-client.ts';
import { createTestCertificate, type TestCertificate } from '../helpers/tls-cert.ts';

/** Writes `text` one byte every `everyMs` until the connection closes. */
function trickle(c: SmtpClient, text: string, everyMs: number): void {
    let i = 0;
    const timer = setInterval(() => {
        if (c.closed) return clearInterval(timer);
        c.write(text[i % text.length]!);
        i++;
    }, everyMs);
    timer.unref();
}

async function closedWith421(c: SmtpClient, boundMs: number, started: number): Promise<number> {
    const reply = await c.reply(boundMs);
    const ms = performance.now() - started;
    assert.equal(reply.code, 421, reply.raw);
    assert.match(reply.text, /^4\.4\.2 /);
    await c.waitClosed(2000);
    return ms;
}

describe('slow clients', () => {
    let gateway: ScriptedGateway;
    let mw: TestApp;
    before(async () => {
        gateway = await startScriptedGateway([
            'hostname: mx.example.test',
            'domains: [example.test]',
            'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx, preTransactionTimeout: 1s, socketTimeout: 1s }]',
        ]);
        mw = gateway.mw;
    });
    after(async () => {
        await gateway.close();
    });

    it('closes a client that says nothing before EHLO', async () => {
        const started = performance.now();
        const c = await smtpConnect(mw.port());
        await c.greeting();
        const ms = await closedWith421(c, 3000, started);
        assert.ok(ms < 2500, `${ms.toFixed(0)} ms`);
    });

    it('closes a client that trickles a command line one byte at a time', async () => {
        const started = performance.now();
        const c = await smtpConnect(mw.port());
        await c.greeting();
        trickle(c, 'EHLO slow.example', 200);
        const ms = await closedWith421(c, 3000, started);
        assert.ok(ms < 2500, `${ms.toFixed(0)} ms`);
    });

    it('closes a client that stops between commands', async () => {
        const started = performance.now();
        const c = await smtpConnect(mw.port());
        await c.greeting();
        assert.equal((await c.cmd('EHLO slow.example')).code, 250);
        const ms = await closedWith421(c, 3000, started);
        assert.ok(ms < 2500, `${ms.toFixed(0)} ms`);
    });

    it('closes a client that stops inside DATA', async () => {
        const c = await smtpConnect(mw.port());
        await c.greeting();
        assert.equal((await c.cmd('EHLO slow.example')).code, 250);
        assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
        assert.equal((await c.cmd('RCPT TO:<b@example.test>')).code, 250);
        assert.equal((await c.cmd('DATA')).code, 354);
        c.write('Subject: slow\r\n\r\nHello');
        const started = performance.now();
        const ms = await closedWith421(c, 4000, started);
        assert.ok(ms < 3500, `${ms.toFixed(0)} ms`);
        await gateway.up.idle();
        assert.notEqual(gateway.up.transactions.at(-1)?.completed, true, 'nothing half-sent was delivered');
    });

    it('closes a client that trickles its message data slower than 500 bytes a second', async () => {
        const c = await smtpConnect(mw.port());
        await c.greeting();
        assert.equal((await c.cmd('EHLO slow.example')).code, 250);
        assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
        assert.equal((await c.cmd('RCPT TO:<b@example.test>')).code, 250);
        assert.equal((await c.cmd('DATA')).code, 354);
        const started = performance.now();
        // a byte every 300 ms never leaves the connection idle for socketTimeout (1 s)
        trickle(c, 'Subject: slow\r\n\r\nHello, one byte at a time\r\n', 300);
        const reply = await c.reply(6000);
        const ms = performance.now() - started;
        assert.equal(reply.code, 421, reply.raw);
        assert.match(reply.text, /^4\.4\.2 Message data arrives slower than 500 bytes a second/);
        await c.waitClosed(2000);
        // socketTimeout plus a second per 500 bytes, checked every second
        assert.ok(ms < 5000, `${ms.toFixed(0)} ms`);
        await gateway.up.idle();
        assert.notEqual(gateway.up.transactions.at(-1)?.completed, true, 'nothing half-sent was delivered');
        const cut = await mw.app.metrics.registry.getSingleMetricAsString('mailwarden_sessions_cut_total');
        assert.match(cut, /mailwarden_sessions_cut_total\{listener="mx",reason="data_rate"\} 1/);
    });
});

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** The client's connection-timeout count on the mx listener, for `timeout`. */
async function timeouts(mw: TestApp, timeout: string): Promise<number> {
    return (
        (await mw.app.metrics.connectionTimeouts.get()).values.find(
            (v) => v.labels.listener === 'mx' && v.labels.timeout === timeout,
        )?.value ?? 0
    );
}

// socketTimeout bounds the envelope: from the first MAIL FROM (since the start or the last DATA)
// the client must reach DATA within it. A client sending a RCPT just inside every socketTimeout
// never went idle and never erred, and held its slot (and an upstream session) for ever: 20 of
// them held every slot of a listener.
describe('a client that never reaches DATA', () => {
    let gateway: ScriptedGateway;
    let mw: TestApp;
    before(async () => {
        gateway = await startScriptedGateway([
            'hostname: mx.example.test',
            'domains: [example.test]',
            'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx, preTransactionTimeout: 30s, socketTimeout: 2s }]',
        ]);
        mw = gateway.mw;
    });
    after(async () => {
        await gateway.close();
    });

    /** Sends `step` (its commands in turn) every second until a 421 comes, at most `rounds` times. */
    async function untilCut(
        c: SmtpClient,
        step: (round: number) => readonly string[],
        rounds: number,
    ): Promise<{ reply: SmtpReply; round: number }> {
        for (let round = 1; round <= rounds; round++) {
            await sleep(1000);
            for (const command of step(round)) {
                // the 421 may have come while the client waited: it is the next reply read
                const r = await c.cmd(command, 5000);
                if (r.code === 421) return { reply: r, round };
                assert.equal(r.code, 250, `${command}: ${r.raw}`);
            }
        }
        assert.fail(`still served after ${rounds} rounds`);
    }

    it('closes a client trickling RCPTs once socketTimeout has passed since its MAIL FROM', async () => {
        const before = await timeouts(mw, 'envelope');
        const c = await smtpConnect(mw.port());
        try {
            await c.greeting();
            assert.equal((await c.cmd('EHLO trickle.example')).code, 250);
            assert.equal((await c.cmd('MAIL FROM:<>')).code, 250);
            // a RCPT a second never leaves the session idle for socketTimeout (2 s)
            const { reply } = await untilCut(c, (i) => [`RCPT TO:<user${i}@example.test>`], 6);
            assert.match(reply.text, /^4\.4\.2 No message sent within 2 seconds of MAIL FROM; closing the connection$/);
            await c.waitClosed(2000);
        } finally {
            c.close();
        }
        assert.equal(await timeouts(mw, 'envelope'), before + 1);
        const line = mw.logs.find((l) => l.msg === 'closing: no message sent in time after MAIL FROM');
        assert.equal(line?.stage, 'transaction');
        assert.equal(line?.seconds, 2);
        await gateway.up.idle();
        assert.notEqual(gateway.up.transactions.at(-1)?.completed, true, 'nothing was delivered');
    });

    it('does not start the time again at RSET and a new MAIL FROM', async () => {
        const c = await smtpConnect(mw.port());
        try {
            await c.greeting();
            assert.equal((await c.cmd('EHLO trickle.example')).code, 250);
            assert.equal((await c.cmd('MAIL FROM:<>')).code, 250);
            // a new MAIL FROM every second: were the time counted from the latest, this would go on for ever
            const { reply } = await untilCut(
                c,
                (i) => [`RCPT TO:<user${i}@example.test>`, 'RSET', 'MAIL FROM:<a@example.org>'],
                6,
            );
            assert.match(reply.text, /^4\.4\.2 No message sent within 2 seconds of MAIL FROM/);
            await c.waitClosed(2000);
        } finally {
            c.close();
        }
    });

    it('leaves a client alone that sends message after message, each in time', async () => {
        const before = await timeouts(mw, 'envelope');
        const c = await smtpConnect(mw.port());
        try {
            await c.greeting();
            assert.equal((await c.cmd('EHLO busy.example')).code, 250);
            // three messages over more than twice socketTimeout: the time runs from each MAIL FROM after a DATA
            for (let i = 1; i <= 3; i++) {
                assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
                assert.equal((await c.cmd(`RCPT TO:<b${i}@example.test>`)).code, 250);
                await sleep(1200);
                assert.equal((await c.cmd(`RCPT TO:<c${i}@example.test>`)).code, 250);
                assert.equal((await c.cmd('DATA')).code, 354);
                assert.equal((await c.cmd(`From: <a@example.org>\r\nSubject: ${i}\r\n\r\nbody\r\n.`)).code, 250);
            }
            assert.equal((await c.cmd('QUIT')).code, 221);
        } finally {
            c.close();
        }
        assert.equal(await timeouts(mw, 'envelope'), before);
    });
});

describe('a client behind which the upstream is slow', () => {
    let gateway: ScriptedGateway;
    let mw: TestApp;
    before(async () => {
        gateway = await startScriptedGateway(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx, preTransactionTimeout: 30s, socketTimeout: 2s }]',
            ],
            // Postfix asking a verification or policy service for each recipient
            { upstream: { onCommand: (line) => (line.startsWith('RCPT ') ? { delayMs: 400 } : undefined) } },
        );
        mw = gateway.mw;
    });
    after(async () => {
        await gateway.close();
    });

    it('is not cut at the envelope deadline for the time our answers take: only its own counts', async () => {
        const before = await timeouts(mw, 'envelope');
        const c = await smtpConnect(mw.port(), { timeoutMs: 15_000 });
        try {
            await c.greeting();
            assert.equal((await c.cmd('EHLO prompt.example')).code, 250);
            assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
            // 4 recipients: 1.6 s of upstream answers, 1.4 s of the client's own time (a round trip
            // each), 3 s in all against a socketTimeout of 2 s
            for (let i = 1; i <= 4; i++) {
                await sleep(350);
                const r = await c.cmd(`RCPT TO:<r${i}@example.test>`, 5000);
                assert.equal(r.code, 250, `RCPT ${i}: ${r.raw}`);
            }
            assert.equal((await c.cmd('DATA', 5000)).code, 354);
            assert.equal((await c.cmd('From: <a@example.org>\r\nSubject: many\r\n\r\nbody\r\n.', 5000)).code, 250);
        } finally {
            c.close();
        }
        assert.equal(await timeouts(mw, 'envelope'), before);
    });

    it('is cut once our answers have pushed the deadline back by another socketTimeout', async () => {
        const before = await timeouts(mw, 'envelope');
        const c = await smtpConnect(mw.port(), { timeoutMs: 15_000 });
        try {
            await c.greeting();
            assert.equal((await c.cmd('EHLO eager.example')).code, 250);
            assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
            // no time of its own: each RCPT goes as soon as the slow answer to the one before came
            let cut: SmtpReply | null = null;
            for (let i = 1; i <= 25 && cut === null; i++) {
                const r = await c.cmd(`RCPT TO:<r${i}@example.test>`, 5000);
                if (r.code === 421) cut = r;
                else assert.equal(r.code, 250, `RCPT ${i}: ${r.raw}`);
            }
            assert.ok(cut, 'still served after 25 slow recipients (10 s)');
            assert.match(cut.text, /^4\.4\.2 No message sent within 2 seconds of MAIL FROM/);
        } finally {
            c.close();
        }
        assert.equal(await timeouts(mw, 'envelope'), before + 1);
    });
});

describe('a client that sits between messages', () => {
    let gateway: ScriptedGateway;
    let mw: TestApp;
    before(async () => {
        gateway = await startScriptedGateway([
            'hostname: mx.example.test',
            'domains: [example.test]',
            'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx, preTransactionTimeout: 2s, socketTimeout: 30s }]',
        ]);
        mw = gateway.mw;
    });
    after(async () => {
        await gateway.close();
    });

    async function oneMessage(c: SmtpClient, n: number): Promise<void> {
        assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
        assert.equal((await c.cmd(`RCPT TO:<b${n}@example.test>`)).code, 250);
        assert.equal((await c.cmd('DATA')).code, 354);
        assert.equal((await c.cmd(`From: <a@example.org>\r\nSubject: ${n}\r\n\r\nbody\r\n.`)).code, 250);
    }

    it('closes a client that sends NOOPs after its message instead of a new MAIL FROM', async () => {
        const before = await timeouts(mw, 'pre_transaction');
        const c = await smtpConnect(mw.port());
        try {
            await c.greeting();
            assert.equal((await c.cmd('EHLO idle.example')).code, 250);
            await oneMessage(c, 1);
            // a NOOP a second never leaves the session idle for socketTimeout (30 s)
            let cut: SmtpReply | null = null;
            for (let round = 1; round <= 6 && cut === null; round++) {
                await sleep(1000);
                const r = await c.cmd('NOOP', 5000);
                if (r.code === 421) cut = r;
                else assert.equal(r.code, 250, r.raw);
            }
            assert.ok(cut, 'still served after 6 NOOPs');
            assert.match(cut.text, /^4\.4\.2 No mail transaction started within 2 seconds; closing the connection$/);
            await c.waitClosed(2000);
        } finally {
            c.close();
        }
        assert.equal(await timeouts(mw, 'pre_transaction'), before + 1);
        const line = mw.logs.findLast((l) => l.msg === 'closing: no mail transaction started in time');
        assert.equal(line?.stage, 'between transactions');
    });

    it('leaves a client alone that sends its next MAIL FROM in time, after a deadline from its start has passed', async () => {
        const before = await timeouts(mw, 'pre_transaction');
        const c = await smtpConnect(mw.port());
        try {
            await c.greeting();
            assert.equal((await c.cmd('EHLO busy.example')).code, 250);
            // each message starts within 2 s of the one before; together past the first deadline
            for (let i = 1; i <= 3; i++) {
                await sleep(900);
                await oneMessage(c, i);
            }
            assert.equal((await c.cmd('QUIT')).code, 221);
        } finally {
            c.close();
        }
        assert.equal(await timeouts(mw, 'pre_transaction'), before);
    });
});

/** The 421 4.7.0 of the error limit, then the connection closed. */
async function assertCutForErrors(c: SmtpClient): Promise<void> {
    const cut = await c.reply(2000);
    assert.equal(cut.code, 421, cut.raw);
    assert.match(cut.text, /^4\.7\.0 Too many errors in this session/);
    await c.waitClosed(2000);
}

describe('a session that collects errors', () => {
    let gateway: ScriptedGateway;
    let mw: TestApp;
    before(async () => {
        gateway = await startScriptedGateway([
            'hostname: mx.example.test',
            'domains: [example.test]',
            'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
        ]);
        mw = gateway.mw;
    });
    after(async () => {
        await gateway.close();
    });

    it('is closed with 421 4.7.0 at its 20th error reply, as Postfix smtpd_hard_error_limit', async () => {
        const c = await smtpConnect(mw.port());
        try {
            await c.greeting();
            assert.equal((await c.cmd('EHLO probe.example')).code, 250);
            assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
            // relay probing: every recipient outside our domains is refused
            for (let i = 1; i < 20; i++) {
                const r = await c.cmd(`RCPT TO:<user${i}@elsewhere.example>`);
                assert.equal(r.code, 550, `error ${i}: ${r.raw}`);
            }
            const twentieth = await c.cmd('RCPT TO:<user20@elsewhere.example>');
            assert.equal(twentieth.code, 550, twentieth.raw);
            await assertCutForErrors(c);
        } finally {
            c.close();
        }
        const cut = await mw.app.metrics.registry.getSingleMetricAsString('mailwarden_sessions_cut_total');
        assert.match(cut, /mailwarden_sessions_cut_total\{listener="mx",reason="error_limit"\} 1/);
    });

    it('leaves a session with fewer errors alone', async () => {
        const c = await smtpConnect(mw.port());
        try {
            await c.greeting();
            assert.equal((await c.cmd('EHLO probe.example')).code, 250);
            assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
            for (let i = 1; i < 20; i++) assert.equal((await c.cmd(`RCPT TO:<u${i}@elsewhere.example>`)).code, 550);
            assert.equal((await c.cmd('RCPT TO:<b@example.test>')).code, 250);
            assert.equal((await c.cmd('RSET')).code, 250);
        } finally {
            c.close();
        }
    });

    // Postfix's smtpd_junk_command_limit: past 100 EHLO, HELO, NOOP, RSET, VRFY, ETRN or HELP each
    // counts as an error; a message accepted starts the count again. A client sending NOOP now and
    // then held its slot and an upstream connection for ever; one sending EHLO with a new name had
    // each name checked in DNS and a new upstream connection opened, without end.
    it('counts each EHLO, HELO, NOOP, RSET, VRFY, ETRN or HELP past the 100th as an error, until a message is accepted', async () => {
        const errorLimitCuts = async (): Promise<number> =>
            (await mw.app.metrics.sessionsCut.get()).values.find(
                (v) => v.labels.listener === 'mx' && v.labels.reason === 'error_limit',
            )?.value ?? 0;
        const cutsBefore = await errorLimitCuts();
        const c = await smtpConnect(mw.port());
        try {
            await c.greeting();
            assert.equal((await c.cmd('EHLO idler.example')).code, 250);
            assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
            // the EHLO was the first
            for (let i = 2; i <= 100; i++) assert.equal((await c.cmd(i % 2 ? 'NOOP' : 'RSET')).code, 250, `junk ${i}`);
            // a message accepted: the count starts again
            assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
            assert.equal((await c.cmd('RCPT TO:<b@example.test>')).code, 250);
            assert.equal((await c.cmd('DATA')).code, 354);
            assert.equal((await c.cmd('From: <a@example.org>\r\nSubject: x\r\n\r\nbody\r\n.')).code, 250);
            // `Rſet` (U+017F) is RSET to smtp-server, which upper-cases the UTF-8 name: counted as one
            const junk = ['NOOP', 'R\u017fET', 'EHLO idler.example', 'HELP', 'HELO idler.example'];
            for (let i = 1; i <= 100; i++) {
                const r = await c.cmd(junk[i % junk.length]!);
                assert.ok(r.code === 250 || r.code === 214, `junk ${i} again: ${r.raw}`);
            }
            for (let i = 1; i < 20; i++) {
                const r = await c.cmd(i % 2 ? 'R\u017fET' : `EHLO name${i}.example`);
                assert.equal(r.code, 250, `counted as error ${i}`);
            }
            assert.equal((await c.cmd('NOOP')).code, 250);
            await assertCutForErrors(c);
        } finally {
            c.close();
        }
        assert.equal(await errorLimitCuts(), cutsBefore + 1);
    });

    // a RCPT naming a recipient already accepted adds nothing: a client repeating one address
    // held its slot as a NOOP did
    it('counts a RCPT repeating a recipient of the transaction as a junk command', async () => {
        const c = await smtpConnect(mw.port());
        try {
            await c.greeting();
            assert.equal((await c.cmd('EHLO repeat.example')).code, 250);
            assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
            assert.equal((await c.cmd('RCPT TO:<b@example.test>')).code, 250);
            // the EHLO was the first junk command; a new recipient is none
            for (let i = 2; i <= 100; i++) {
                const rcpt = i === 50 ? 'other@example.test' : i % 2 ? 'b@example.test' : 'B@example.test';
                assert.equal((await c.cmd(`RCPT TO:<${rcpt}>`)).code, 250, `rcpt ${i}`);
            }
            assert.equal((await c.cmd('RCPT TO:<other@example.test>')).code, 250);
            for (let i = 1; i < 20; i++) {
                assert.equal((await c.cmd('RCPT TO:<b@example.test>')).code, 250, `counted as error ${i}`);
            }
            assert.equal((await c.cmd('RCPT TO:<b@example.test>')).code, 250);
            await assertCutForErrors(c);
        } finally {
            c.close();
        }
    });
});

describe('slow clients during STARTTLS and AUTH', () => {
    let gateway: ScriptedGateway;
    let mw: TestApp;
    let cert: TestCertificate;
    before(async () => {
        cert = await createTestCertificate();
        const users = join(cert.dir, 'users.yaml');
        writeFileSync(users, `users:\n  - login: alice@example.test\n    password: '${await hash('correct horse')}'\n`);
        gateway = await startScriptedGateway([
            'hostname: mx.example.test',
            'domains: [example.test]',
            `tls: { cert: "${cert.certPath}", key: "${cert.keyPath}" }`,
            `auth: { users: "${users}" }`,
            'listeners:',
            '  - { name: mx, host: 127.0.0.1, port: 0, mode: mx, preTransactionTimeout: 1s, socketTimeout: 1s }',
            '  - { name: submissions, host: 127.0.0.1, port: 0, mode: submission, tls: implicit, preTransactionTimeout: 1s, socketTimeout: 1s }',
            '  - { name: patient, host: 127.0.0.1, port: 0, mode: submission, tls: implicit, preTransactionTimeout: 1s, socketTimeout: 5s }',
        ]);
        mw = gateway.mw;
    });
    after(async () => {
        await gateway.close();
        cert.cleanup();
    });

    it('closes a client that asks for STARTTLS and then never starts the handshake', async () => {
        const started = performance.now();
        const c = await smtpConnect(mw.port('mx'));
        await c.greeting();
        assert.equal((await c.cmd('EHLO slow.example')).code, 250);
        assert.equal((await c.cmd('STARTTLS')).code, 220);
        // no ClientHello follows: no reply can be written in the middle of a handshake
        await c.waitClosed(4000);
        const ms = performance.now() - started;
        assert.ok(ms < 3500, `${ms.toFixed(0)} ms`);
    });

    it('lets a logged-in mail program pause between two messages for longer than preTransactionTimeout', async () => {
        const c = await smtpConnect(mw.port('patient'), { tls: 'implicit' });
        try {
            await c.greeting();
            assert.equal((await c.cmd('EHLO laptop.example')).code, 250);
            const plain = Buffer.from('\0alice@example.test\0correct horse').toString('base64');
            assert.equal((await c.cmd(`AUTH PLAIN ${plain}`)).code, 235);
            for (let i = 1; i <= 2; i++) {
                assert.equal((await c.cmd('MAIL FROM:<alice@example.test>')).code, 250);
                assert.equal((await c.cmd('RCPT TO:<bob@example.org>')).code, 250);
                assert.equal((await c.cmd('DATA')).code, 354);
                const r = await c.cmd(`From: <alice@example.test>\r\nSubject: ${i}\r\n\r\nbody\r\n.`);
                assert.equal(r.code, 250, r.raw);
                // the user writes the next one: twice preTransactionTimeout, within socketTimeout
                if (i === 1) await sleep(2000);
            }
            assert.equal((await c.cmd('QUIT')).code, 221);
        } finally {
            c.close();
        }
    });

    it('closes a client that stops in the middle of an AUTH exchange', async () => {
        const started = performance.now();
        const c = await smtpConnect(mw.port('submissions'), { tls: 'implicit' });
        await c.greeting();
        assert.equal((await c.cmd('EHLO slow.example')).code, 250);
        assert.equal((await c.cmd('AUTH LOGIN')).code, 334);
        // the user name never comes
        const ms = await closedWith421(c, 4000, started);
        assert.ok(ms < 3500, `${ms.toFixed(0)} ms`);
    });
});
