/**
 * The drain on shutdown and the messages in hand when `shutdownTimeout` passes: one whose end of
 * data went upstream is waited for (up to upstream.dataTimeout more), so that its outcome is
 * known, logged and told to its client, whether or not the client is still connected; past that
 * bound it is logged and counted as a possible duplicate (reason shutdown). A message still on
 * its way upstream is abandoned without its end-of-data marker. Each test stops the app itself
 * and checks what was logged by the time stop() resolved (what `serve` has logged when it exits).
 * These tests must not depend on a real Postfix: the upstream is scripted or a fake.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, it } from 'node:test';
import type { Check } from '../../src/types.ts';
import { NO_CAPABILITIES } from '../../src/upstream/capabilities.ts';
import { UpstreamError, type Upstream, type UpstreamReply } from '../../src/upstream/types.ts';
import { decisions, startApp, type TestApp } from '../helpers/app.ts';
import { startScriptedUpstream, type ScriptedUpstreamOptions } from '../helpers/scripted-upstream.ts';
import { smtpConnect, type SmtpClient, type SmtpReply } from '../helpers/smtp-client.ts';

const ID = '<in-flight-1@example.org>';
const MSG = `From: a@example.org\r\nSubject: t\r\nMessage-ID: ${ID}\r\n\r\nbody\r\n`;
const EHLO = ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN', 'SIZE 1000000'];

function config(upstream: string, dataTimeout = '2s'): string {
    return [
        'hostname: mx.example.test',
        'domains: [example.test]',
        'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
        `upstream: { url: "${upstream}", dataTimeout: ${dataTimeout} }`,
        'http: false',
        'shutdownTimeout: 1s',
    ].join('\n');
}

/** A session up to the 354 of its DATA. */
async function untilData(mw: TestApp): Promise<SmtpClient> {
    const c = await smtpConnect(mw.port());
    await c.greeting();
    await c.cmd('EHLO in-flight.example');
    assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
    assert.equal((await c.cmd('RCPT TO:<b@example.test>')).code, 250);
    assert.equal((await c.cmd('DATA')).code, 354);
    return c;
}

/** Sends one message up to its final dot, without waiting for the reply. */
async function sendUpToTheDot(mw: TestApp, message = MSG): Promise<SmtpClient> {
    const c = await untilData(mw);
    c.write(message + '.\r\n');
    return c;
}

/** Stops the app 300 ms after the final dot; resolves with how long stop() took. */
async function stopSoonAfter(mw: TestApp): Promise<number> {
    await sleep(300);
    const started = Date.now();
    await mw.app.stop();
    return Date.now() - started;
}

async function unconfirmed(mw: TestApp, reason: string): Promise<string | undefined> {
    const text = await mw.app.metrics.registry.getSingleMetricAsString('mailwarden_accepted_unconfirmed_total');
    return new RegExp(`reason="${reason}"\\} (\\d+)`).exec(text)?.[1];
}

async function scripted(
    t: { after(fn: () => Promise<void>): void },
    onData: ScriptedUpstreamOptions['onData'],
    dataTimeout: string,
) {
    const up = await startScriptedUpstream({ ehlo: EHLO, onData });
    const mw = await startApp(config(`smtp://127.0.0.1:${up.port}`, dataTimeout));
    t.after(async () => {
        await mw.stop();
        await up.close();
    });
    return { up, mw };
}

describe('shutdown with the end of data sent and the answer outstanding', () => {
    it('waits past shutdownTimeout for the upstream answer and gives the client its 250', async (t) => {
        const { up, mw } = await scripted(t, () => ({ delayMs: 3000 }), '10s');
        const c = await sendUpToTheDot(mw);
        const reply = c.reply(10_000);
        const ms = await stopSoonAfter(mw);
        const answer = await reply;
        assert.equal(answer.code, 250, answer.raw);
        assert.ok(ms >= 2000, `stop() waited for the answer (${ms} ms)`);
        assert.equal(up.transactions.length, 1, 'the upstream has the message once');
        assert.match(up.transactions[0]!.finalReply ?? '', /^250/);
        const [decision] = decisions(mw.logs);
        assert.equal(decision?.action, 'accept');
        assert.match(String(decision?.upstream), /^250 /);
    });

    it('logs the upstream 250 of a client that left, and counts it as client-gone', async (t) => {
        const { up, mw } = await scripted(t, () => ({ delayMs: 3000 }), '10s');
        const c = await sendUpToTheDot(mw);
        await sleep(100);
        c.close();
        await stopSoonAfter(mw);
        assert.equal(up.transactions.length, 1);
        const [decision] = decisions(mw.logs);
        assert.ok(decision, 'the decision line was logged before stop() resolved');
        assert.match(String(decision.upstream), /^250 /);
        assert.equal(await unconfirmed(mw, 'client-gone'), '1');
    });

    it('logs the upstream timeout within the bound as no-upstream-answer', async (t) => {
        const { up, mw } = await scripted(t, () => ({ silent: true }), '2s');
        const c = await sendUpToTheDot(mw);
        const reply = c.reply(10_000);
        const ms = await stopSoonAfter(mw);
        assert.equal((await reply).code, 451);
        // the upstream's own timer (dataTimeout from the end of data) ends the wait, within the bound
        assert.ok(ms >= 1200 && ms < 3000 + 1000, `stop() took ${ms} ms`);
        assert.equal(up.transactions[0]?.completed, true);
        const [decision] = decisions(mw.logs);
        assert.equal(decision?.duplicateRisk, true);
        const warning = mw.logs.find((l) => l.msg !== 'decision' && l.duplicateRisk === true);
        assert.equal(warning?.reason, 'no-upstream-answer');
        assert.equal(warning.messageId, ID);
        assert.equal(await unconfirmed(mw, 'no-upstream-answer'), '1');
    });
});

/**
 * An upstream with no timer of its own: it reads the message, then never answers until its
 * connection is closed, which fails the wait as a broken connection after the end of data does.
 */
function unansweringUpstream(): Upstream {
    const ok = (enhanced: string): Promise<UpstreamReply> => Promise.resolve({ code: 250, enhanced, text: 'ok' });
    return {
        description: 'upstream that never answers the end of data',
        probe: () => Promise.resolve(NO_CAPABILITIES),
        open: () => {
            let fail: ((err: Error) => void) | null = null;
            return Promise.resolve({
                usable: true,
                peer: 'test',
                capabilities: NO_CAPABILITIES,
                mailFrom: () => ok('2.1.0'),
                rcptTo: () => ok('2.1.5'),
                async data(message) {
                    for await (const _ of message) void _;
                    return new Promise<UpstreamReply>((_, reject) => (fail = reject));
                },
                reset: () => Promise.resolve(),
                close() {
                    fail?.(new UpstreamError('closed', 'closed while waiting', { endOfDataSent: true }));
                    return Promise.resolve();
                },
            });
        },
    };
}

describe('shutdown with an answer that does not come within the bound', () => {
    it('stops after shutdownTimeout + dataTimeout and logs and counts a possible duplicate (shutdown)', async (t) => {
        const mw = await startApp(config('smtp://127.0.0.1:25'), { upstream: unansweringUpstream() });
        t.after(() => mw.stop());
        const c = await sendUpToTheDot(mw);
        const reply = c.reply(10_000);
        const ms = await stopSoonAfter(mw);
        assert.ok(ms >= 2900 && ms < 4500, `stop() took ${ms} ms, not about 1 s + 2 s`);
        assert.equal((await reply).code, 451);
        const [decision] = decisions(mw.logs);
        assert.equal(decision?.duplicateRisk, true);
        assert.equal(decision.action, 'tempfail');
        assert.match(String(decision.reason), /^shutting down/);
        const warning = mw.logs.find((l) => l.msg !== 'decision' && l.duplicateRisk === true);
        assert.equal(warning?.reason, 'shutdown');
        assert.equal(warning.messageId, ID);
        assert.equal(await unconfirmed(mw, 'shutdown'), '1');
    });
});

describe('shutdown with a message still on its way upstream', () => {
    it('abandons it at shutdownTimeout: no end of data upstream, logged, no duplicate risk', async (t) => {
        let ended: 'whole' | 'cut' | null = null;
        const upstream = unansweringUpstream();
        const open = upstream.open.bind(upstream);
        const slow: Upstream = {
            ...upstream,
            open: async (client) => ({
                ...(await open(client)),
                // reads the first part, then stalls past the shutdown timeout (or until the source fails)
                async data(message) {
                    try {
                        for await (const _ of message) {
                            void _;
                            await Promise.race([sleep(5000), once(message, 'close')]);
                        }
                    } catch (err) {
                        ended = 'cut';
                        throw new UpstreamError('io', `message source failed: ${String(err)}`);
                    }
                    ended = 'whole';
                    return { code: 250, enhanced: '2.0.0', text: 'queued as LATE' };
                },
            }),
        };
        const mw = await startApp(config('smtp://127.0.0.1:25'), { upstream: slow });
        t.after(() => mw.stop());
        const c = await sendUpToTheDot(mw, MSG + 'x'.repeat(100_000) + '\r\n');
        const reply = c.reply(10_000).catch(() => null);
        const ms = await stopSoonAfter(mw);
        assert.ok(ms < 1800, `stop() did not wait for it (${ms} ms)`);
        assert.equal(ended, 'cut', 'the upstream never got the whole message');
        assert.notEqual((await reply)?.code, 250);
        const [decision] = decisions(mw.logs);
        assert.equal(decision?.action, 'tempfail');
        assert.match(String(decision.reason), /^shutting down/);
        assert.equal(decision.duplicateRisk, undefined);
        assert.equal(await unconfirmed(mw, 'shutdown'), '0');
    });
});

describe('shutdown while a client is still sending its message', () => {
    it('tells the client 421 4.3.2 at shutdownTimeout and logs the shutdown as the reason', async (t) => {
        const { mw } = await scripted(t, undefined, '2s');
        const c = await untilData(mw);
        c.write('From: a@example.org\r\nSubject: slow\r\n\r\n');
        // a line every 200 ms, past the 1 s shutdownTimeout
        const trickle = setInterval(() => {
            if (!c.closed) c.write('more\r\n');
        }, 200);
        t.after(() => clearInterval(trickle));
        const reply = c.reply(10_000);
        const started = Date.now();
        await mw.app.stop();
        clearInterval(trickle);
        const bye = await reply;
        assert.equal(`${bye.code} ${bye.text.split(' ')[0]}`, '421 4.3.2', bye.raw);
        assert.ok(Date.now() - started < 3000);
        const [decision] = decisions(mw.logs);
        assert.equal(decision?.action, 'tempfail');
        assert.match(String(decision.reason), /^shutting down: the message was not received in full/);
    });
});

describe('shutdown while a message waits before its forwarding starts', () => {
    /** Runs `fn` with uncaught exceptions collected instead of ending the test process. */
    async function collectingUncaught(fn: () => Promise<void>): Promise<string[]> {
        const uncaught: string[] = [];
        const previous = process.listeners('uncaughtException');
        process.removeAllListeners('uncaughtException');
        const collect = (err: Error): void => void uncaught.push(String(err));
        process.on('uncaughtException', collect);
        try {
            await fn();
            await sleep(200);
        } finally {
            process.removeListener('uncaughtException', collect);
            for (const l of previous) process.on('uncaughtException', l);
        }
        return uncaught;
    }

    /** A data-stage check that takes `ms`. */
    const slowCheck = (ms: number): Check => ({
        name: 'slow_check',
        stages: ['data'],
        timeoutMs: 8000,
        onError: 'ignore',
        run: async () => {
            await sleep(ms);
            return { facts: {} };
        },
    });

    /** A gateway in front of a scripted upstream, both ended after the test. */
    async function gateway(
        t: { after(fn: () => Promise<void>): void },
        dataTimeout: string,
        options: { upstream?: Parameters<typeof startScriptedUpstream>[0]; checks?: Check[] } = {},
    ) {
        const up = await startScriptedUpstream(options.upstream ?? { ehlo: EHLO });
        const mw = await startApp(config(`smtp://127.0.0.1:${up.port}`, dataTimeout), {
            ...(options.checks ? { checks: options.checks } : {}),
        });
        t.after(async () => {
            await mw.stop();
            await up.close();
        });
        return { up, mw };
    }

    /** Sends a message up to its dot, stops the app soon after, and returns the client's reply (null: closed). */
    async function stopDuringIt(mw: TestApp): Promise<SmtpReply | null> {
        const c = await sendUpToTheDot(mw);
        const reply = c.reply(10_000).catch(() => null);
        await stopSoonAfter(mw);
        return reply;
    }

    it('abandons a message whose upstream has not yet answered DATA with 354, without an uncaught error', async (t) => {
        const { up, mw } = await gateway(t, '10s', {
            upstream: { ehlo: EHLO, onCommand: (line) => (/^DATA/i.test(line) ? { delayMs: 1500 } : undefined) },
        });
        const uncaught = await collectingUncaught(async () => {
            assert.notEqual((await stopDuringIt(mw))?.code, 250);
        });
        assert.deepEqual(uncaught, []);
        const [decision] = decisions(mw.logs);
        assert.equal(decision?.action, 'tempfail');
        assert.equal(decision.duplicateRisk, undefined);
        assert.ok(
            up.transactions.every((tx) => !tx.completed),
            'nothing completed upstream',
        );
    });

    it('abandons a message whose checks end after shutdownTimeout, without opening anything upstream for it', async (t) => {
        const { up, mw } = await gateway(t, '10s', { checks: [slowCheck(1500)] });
        const uncaught = await collectingUncaught(async () => {
            assert.notEqual((await stopDuringIt(mw))?.code, 250);
        });
        assert.deepEqual(uncaught, []);
        const [decision] = decisions(mw.logs);
        assert.equal(decision?.action, 'tempfail');
        assert.match(String(decision.reason), /^shutting down/);
        assert.ok(
            up.transactions.every((tx) => tx.data === null),
            'no DATA upstream',
        );
    });

    it('says so when a message is still being checked when the stop ends', async (t) => {
        const { mw } = await gateway(t, '1s', { checks: [slowCheck(5000)] });
        const reply = await stopDuringIt(mw);
        const warned = mw.logs.find((l) =>
            String(l.msg).startsWith('stopped with a message still being received or checked'),
        );
        assert.ok(warned, JSON.stringify(mw.logs.map((l) => l.msg)));
        assert.equal(warned.duplicateRisk, false);
        assert.notEqual(reply?.code, 250);
    });
});
