/**
 * MessageWork, the drain's record of a message in hand: a message abandoned before its end of
 * data keeps that reason when the drain later cuts what is left; one whose end of data went
 * upstream is cut with its own reason, and the cut ends its upstream connection. stopBoundMs, the
 * bound the primary waits before killing a worker: it includes the Redis QUIT.
 */
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { MessageWork, stopBoundMs } from '../../src/drain.ts';
import type { Config } from '../../src/config/types.ts';

describe('MessageWork', () => {
    it('keeps the abandon reason of a message that never reached its end of data', () => {
        const registry = new Set<MessageWork>();
        const work = new MessageWork(registry, 's1');
        let stops = 0;
        work.forwarding(new Readable({ read() {} }), () => stops++);
        work.abandon();
        work.cut();
        assert.equal(work.stopped, 'shutting down: the message was not sent upstream in full');
        assert.equal(stops, 1);
        work.done();
        assert.equal(registry.size, 0);
    });

    it('cuts a message whose end of data went upstream with its own reason', async () => {
        const work = new MessageWork(new Set(), 's2');
        const source = work.forwarding(Readable.from([Buffer.from('body\r\n')]), () => undefined);
        for await (const chunk of source) void chunk;
        assert.equal(work.awaitingAnswer, true);
        work.cut();
        assert.equal(work.stopped, 'shutting down: the upstream had not answered the end of the message');
    });
});

describe('stopBoundMs', () => {
    const base = { shutdownTimeoutMs: 30_000, upstream: { kind: 'smtp', dataTimeoutMs: 10_000 } };
    it('adds the wait for answers and the Redis QUIT to shutdownTimeout', () => {
        const withRedis = { ...base, redis: { commandTimeoutMs: 3000 } } as unknown as Config;
        assert.equal(stopBoundMs(withRedis), 43_000);
        assert.equal(stopBoundMs({ ...base, redis: null } as unknown as Config), 40_000);
    });
    it('waits for no answer from a maildir', () => {
        const maildir = { ...base, upstream: { kind: 'maildir' }, redis: null } as unknown as Config;
        assert.equal(stopBoundMs(maildir), 30_000);
    });
});
