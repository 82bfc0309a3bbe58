// The pipeline's check contract: a check that times out gets a 4xx verdict and its work stops:
// the message stream it was reading is destroyed (nothing more is read from it) and its signal
// is aborted; a check that returns leaves nothing behind either (streams it opened and did not
// finish are destroyed). Work is counted (chunks read), never timed.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, it } from 'node:test';
import type { Check, CheckContext, MessageSource } from '../../src/types.ts';
import { acceptAll, CheckEnded, runStage } from '../../src/pipeline.ts';

/** A message that never ends: every chunk read is counted; `closed` tells when its stream was torn down. */
function endlessMessage(): { source: MessageSource; read: () => number; closed: () => boolean } {
    let read = 0;
    let closed = false;
    const source: MessageSource = {
        size: Infinity,
        stream() {
            async function* chunks(): AsyncGenerator<Buffer> {
                try {
                    for (;;) {
                        read++;
                        yield Buffer.alloc(1024, 'a');
                        await sleep(1);
                    }
                } finally {
                    closed = true;
                }
            }
            return Readable.from(chunks());
        },
    };
    return { source, read: () => read, closed: () => closed };
}

function context(message: MessageSource | null): Omit<CheckContext, 'stage'> {
    return {
        sessionId: 's1',
        facts: {},
        client: { ip: '192.0.2.1', port: 1, ptr: null, helo: 'c.test', proto: 'ESMTP', login: null },
        envelope: { mailFrom: 'a@b.test', rcptTo: ['c@d.test'] },
        message,
    };
}

describe('pipeline: a check that ends stops its work', () => {
    it('a timed-out check: 451 4.4.3, its signal aborted, the stream it reads destroyed, nothing more read', async () => {
        const m = endlessMessage();
        let signalSeen: AbortSignal | null = null;
        const hasher: Check = {
            name: 'hasher',
            stages: ['data'],
            timeoutMs: 100,
            onError: 'tempfail',
            async run(ctx, signal) {
                signalSeen = signal;
                // reads the whole message, as a body hash does; this one never ends
                for await (const chunk of ctx.message!.stream()) void chunk;
                return { facts: {} };
            },
        };
        const r = await runStage('data', [hasher], context(m.source), acceptAll);
        assert.equal(r.checks[0]!.error, 'timeout');
        assert.equal(r.decision.action, 'tempfail');
        assert.equal(r.decision.reply?.enhanced, '4.4.3');
        assert.equal((signalSeen as AbortSignal | null)?.aborted, true);
        const reason: unknown = (signalSeen as AbortSignal | null)?.reason;
        assert.ok(reason instanceof CheckEnded);
        assert.equal(reason.message, 'check hasher timed out');
        await sleep(50);
        assert.equal(m.closed(), true, 'the message stream was not destroyed');
        const atVerdict = m.read();
        await sleep(200);
        assert.equal(m.read(), atVerdict, 'the check went on reading the message after its timeout');
    });

    it('a check that returns: streams it opened and left are destroyed, its signal is aborted', async () => {
        const m = endlessMessage();
        let signalSeen: AbortSignal | null = null;
        const lazy: Check = {
            name: 'lazy',
            stages: ['data'],
            timeoutMs: 5000,
            onError: 'ignore',
            async run(ctx, signal) {
                signalSeen = signal;
                // starts reading the message and walks away from it, with nobody listening for errors
                const stream = ctx.message!.stream();
                stream.resume();
                await once(stream, 'data');
                return { facts: { 'lazy.done': true } };
            },
        };
        const r = await runStage('data', [lazy], context(m.source), acceptAll);
        assert.equal(r.facts['lazy.done'], true);
        assert.equal((signalSeen as AbortSignal | null)?.aborted, true);
        const reason: unknown = (signalSeen as AbortSignal | null)?.reason;
        assert.ok(reason instanceof CheckEnded);
        assert.equal(reason.message, 'check returned');
        await sleep(50);
        assert.equal(m.closed(), true);
        const after = m.read();
        await sleep(100);
        assert.equal(m.read(), after);
    });

    it('a stream asked for after the check ended is destroyed at once', async () => {
        const m = endlessMessage();
        let late: (() => Readable) | null = null;
        const leaky: Check = {
            name: 'leaky',
            stages: ['data'],
            timeoutMs: 5000,
            onError: 'ignore',
            run(ctx) {
                late = () => ctx.message!.stream();
                return Promise.resolve({ facts: {} });
            },
        };
        await runStage('data', [leaky], context(m.source), acceptAll);
        const s = (late as (() => Readable) | null)!();
        assert.equal(s.destroyed, true);
    });
});

describe('pipeline: how a check ends', () => {
    it('a check that throws before returning a promise fails like one that rejects; its signal is aborted', async () => {
        let signalSeen: AbortSignal | null = null;
        const thrower: Check = {
            name: 'thrower',
            stages: ['rcpt'],
            timeoutMs: 5000,
            onError: 'tempfail',
            run(_ctx, signal) {
                signalSeen = signal;
                throw new Error('no resolver');
            },
        };
        const r = await runStage('rcpt', [thrower], context(null), acceptAll);
        assert.equal(r.checks[0]!.error, 'no resolver');
        assert.equal(r.facts['thrower.error'], 'no resolver');
        assert.equal(r.decision.action, 'tempfail');
        const reason: unknown = (signalSeen as AbortSignal | null)?.reason;
        assert.ok(reason instanceof CheckEnded);
        assert.equal(reason.message, 'check thrower failed');
    });

    it('each check has its own signal: one that fails does not abort the others early', async () => {
        const seen: { name: string; abortedWhileRunning: boolean }[] = [];
        const make = (name: string, fail: boolean): Check => ({
            name,
            stages: ['rcpt'],
            timeoutMs: 5000,
            onError: 'ignore',
            async run(_ctx, signal) {
                await sleep(fail ? 1 : 20);
                seen.push({ name, abortedWhileRunning: signal.aborted });
                if (fail) throw new Error('bad');
                return { facts: { [`${name}.ok`]: true } };
            },
        });
        const r = await runStage('rcpt', [make('a', true), make('b', false)], context(null), acceptAll);
        assert.equal(r.facts['b.ok'], true);
        assert.equal(r.checks[0]!.error, 'bad');
        assert.deepEqual(seen, [
            { name: 'a', abortedWhileRunning: false },
            { name: 'b', abortedWhileRunning: false },
        ]);
    });
});
