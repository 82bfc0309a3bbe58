/**
 * The upstream transaction kept alive while a client uploads its message slowly, end to end
 * through the real listener: the upstream connection waits between the client's last RCPT and
 * mailwarden's DATA, longer than the upstream lets a client stay silent, and NOOPs
 * (`upstream.keepAlive`) keep it, against a scripted upstream and against a real Postfix with a
 * short smtpd_timeout. A Postfix under stress (junk command and hard error limits of 1) gets no
 * NOOP that would make it refuse the DATA that follows. The silence before a NOOP that a
 * stressed Postfix would count as an error (15 s) is shortened here, to fit the short timeouts.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startApp } from '../helpers/app.ts';
import { startPostfix } from '../helpers/postfix.ts';
import { startScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { smtpConnect, type SmtpReply } from '../helpers/smtp-client.ts';
import { createSmtpUpstream, type SmtpUpstreamConfig } from '../../src/upstream/smtp-client.ts';

const HOSTNAME = 'mx.example.test';

/** An XCLIENT upstream on loopback `port`: NOOPs every `keepAliveMs`, `stressProbeMs` as said above. */
function keptUpstream(port: number, keepAliveMs: number, stressProbeMs: number) {
    const config: SmtpUpstreamConfig = {
        kind: 'smtp',
        url: `smtp://127.0.0.1:${port}`,
        host: '127.0.0.1',
        port,
        xclient: true,
        starttls: 'off',
        tlsVerify: false,
        connectTimeoutMs: 2000,
        commandTimeoutMs: 5000,
        dataTimeoutMs: 5000,
        keepAliveMs,
    };
    return createSmtpUpstream(config, { hostname: HOSTNAME, stressProbeMs });
}

function startGateway(port: number, upstream: ReturnType<typeof keptUpstream>) {
    return startApp(
        [
            `hostname: ${HOSTNAME}`,
            'domains: [example.test]',
            'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
            `upstream: { url: "smtp://127.0.0.1:${port}" }`,
            'http: false',
        ].join('\n'),
        { upstream },
    );
}

/** One message whose text the client writes over `ms`, a line every 250 ms; the reply to its end. */
async function slowUpload(port: number, to: string, subject: string, ms: number): Promise<SmtpReply> {
    const c = await smtpConnect(port, { timeoutMs: 15_000 });
    try {
        assert.equal((await c.greeting()).code, 220);
        assert.equal((await c.cmd('EHLO slow.example')).code, 250);
        assert.equal((await c.cmd('MAIL FROM:<sender@sender.test>')).code, 250);
        assert.equal((await c.cmd(`RCPT TO:<${to}>`)).code, 250);
        assert.equal((await c.cmd('DATA')).code, 354);
        c.write(`From: sender@sender.test\r\nTo: ${to}\r\nSubject: ${subject}\r\n\r\n`);
        for (let elapsed = 0; elapsed < ms; elapsed += 250) {
            c.write(`${'z'.repeat(70)}\r\n`);
            await sleep(250);
        }
        c.write('.\r\n');
        return await c.reply();
    } finally {
        c.close();
    }
}

describe('upstream keepalive while the client uploads', () => {
    it('an upstream that drops a client silent for 1.5 s takes a message uploaded over 3 s', async () => {
        const up = await startScriptedUpstream({
            ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'],
            idleTimeoutMs: 1500,
        });
        const upstream = keptUpstream(up.port, 500, 1000);
        const mw = await startGateway(up.port, upstream);
        try {
            const reply = await slowUpload(mw.port(), 'b@example.test', 'slow', 3000);
            assert.equal(reply.code, 250, reply.raw);
            assert.equal(up.transactions.at(-1)?.completed, true);
            const commands = up.connections.at(-1)?.commands ?? [];
            const waited = commands.slice(commands.indexOf('RCPT TO:<b@example.test>') + 1, commands.indexOf('DATA'));
            assert.ok(waited.length >= 3 && waited.every((l) => l === 'NOOP'), waited.join(', '));
        } finally {
            await mw.stop();
            await upstream.close?.();
            await up.close();
        }
    });

    it('Postfix with smtpd_timeout 3s delivers a message uploaded over 5 s', async () => {
        const pf = await startPostfix({ serviceOptions: { smtpd_timeout: '3s' } });
        const upstream = keptUpstream(pf.port, 1000, 2000);
        const mw = await startGateway(pf.port, upstream);
        try {
            const reply = await slowUpload(mw.port(), 'alice@example.test', 'kept for 5 s', 5000);
            assert.equal(reply.code, 250, `${reply.raw}\n${await pf.log()}`);
            const delivered = await pf.waitForMessages('alice', 1);
            assert.ok(delivered.some((m) => m.includes('Subject: kept for 5 s')));
            assert.match(await pf.log(), /noop=[3-9]/);
        } finally {
            await mw.stop();
            await upstream.close?.();
            await pf.stop();
        }
    });

    it('Postfix under stress gets no NOOP that would make it refuse the DATA', async () => {
        // stress: what master(8) sets for processes started at the service's process limit;
        // after EHLO, XCLIENT and EHLO a NOOP is the third junk command, and DATA would get 421
        const pf = await startPostfix({
            mainCf: { stress: 'yes' },
            // an entry without the documented normal values, so the stress overrides apply
            serviceOptions: { smtpd_timeout: '3s', smtpd_hard_error_limit: null, smtpd_junk_command_limit: null },
        });
        const upstream = keptUpstream(pf.port, 500, 4000);
        const mw = await startGateway(pf.port, upstream);
        try {
            const reply = await slowUpload(mw.port(), 'alice@example.test', 'under stress', 2000);
            assert.equal(reply.code, 250, `${reply.raw}\n${await pf.log()}`);
            assert.equal((await pf.waitForMessages('alice', 1)).length, 1);
            assert.doesNotMatch(await pf.log(), /too many errors|noop=/);
        } finally {
            await mw.stop();
            await upstream.close?.();
            await pf.stop();
        }
    });
    for (const documented of [true, false]) {
        it(`Postfix under stress with ${documented ? 'the documented entry keeps' : 'an entry without its limits loses'} a transaction after one refused recipient`, async () => {
            const pf = await startPostfix({
                mainCf: { stress: 'yes' },
                serviceOptions: documented ? {} : { smtpd_hard_error_limit: null, smtpd_junk_command_limit: null },
            });
            const mw = await startApp(
                [
                    `hostname: ${HOSTNAME}`,
                    'domains: [example.test]',
                    'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                    `upstream: { url: "smtp://127.0.0.1:${pf.port}" }`,
                    'http: false',
                ].join('\n'),
            );
            const c = await smtpConnect(mw.port(), { timeoutMs: 10_000 });
            try {
                assert.equal((await c.greeting()).code, 220);
                assert.equal((await c.cmd('EHLO client.example')).code, 250);
                assert.equal((await c.cmd('MAIL FROM:<sender@sender.test>')).code, 250);
                const nobody = await c.cmd('RCPT TO:<nobody@example.test>');
                const alice = await c.cmd('RCPT TO:<alice@example.test>');
                if (documented) {
                    assert.equal(nobody.code, 550, nobody.raw);
                    assert.equal(alice.code, 250, alice.raw);
                    assert.equal((await c.cmd('DATA')).code, 354);
                    c.write('From: sender@sender.test\r\nSubject: stress\r\n\r\nhi\r\n.\r\n');
                    assert.equal((await c.reply()).code, 250);
                } else {
                    // a stressed smtpd's limits of 1 are spent by EHLO, XCLIENT and EHLO and
                    // the refusal: it answers 421 too many errors, and the client hears 451
                    assert.notEqual(alice.code, 250, alice.raw);
                    assert.equal(alice.code, 451, alice.raw);
                }
            } finally {
                c.close();
                await mw.stop();
                await pf.stop();
            }
        });
    }
});

describe('upstream keepalive and a stop', () => {
    it('closes a connection whose keepalive NOOP is unanswered within the QUIT bound, not its command timeout', async () => {
        const up = await startScriptedUpstream({
            ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN', 'SIZE 100000'],
            onCommand: (line) => (line === 'NOOP' ? { silent: true } : undefined),
        });
        const mw = await startApp(
            [
                `hostname: ${HOSTNAME}`,
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}", keepAlive: 300ms, timeout: 20s, xclient: false }`,
                'http: false',
                'shutdownTimeout: 500ms',
            ].join('\n'),
        );
        const c = await smtpConnect(mw.port(), { timeoutMs: 30_000 });
        try {
            await c.greeting();
            await c.cmd('EHLO k.example');
            assert.equal((await c.cmd('MAIL FROM:<s@sender.test>')).code, 250);
            assert.equal((await c.cmd('RCPT TO:<a@example.test>')).code, 250);
            await sleep(800); // a NOOP is outstanding now
            assert.ok(up.commands.includes('NOOP'));
            const stopped = Date.now();
            await mw.app.stop();
            const deadline = stopped + 5_000;
            while (!up.connections.every((k) => k.closed) && Date.now() < deadline) await sleep(50);
            assert.ok(
                up.connections.every((k) => k.closed),
                'the upstream connection was still open 5 s after the stop',
            );
        } finally {
            c.close();
            await mw.stop();
            await up.close();
        }
    });
});
