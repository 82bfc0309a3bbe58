// Tests for the scripted upstream test helper itself: end-of-data detection across
// packet boundaries and recording, so other tests can rely on what it reports.
import assert from 'node:assert/strict';
import net from 'node:net';
import { describe, it } from 'node:test';
import { startScriptedUpstream } from '../helpers/scripted-upstream.ts';

/** A raw client that sends pieces one at a time and collects what comes back. */
async function converse(port: number, pieces: readonly string[]): Promise<string> {
    const socket = net.connect(port, '127.0.0.1');
    let received = '';
    socket.on('data', (c: Buffer) => (received += c.toString('latin1')));
    await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
    for (const piece of pieces) {
        socket.write(piece);
        await new Promise((resolve) => setTimeout(resolve, 15));
    }
    await new Promise<void>((resolve) => socket.once('close', () => resolve()));
    return received;
}

describe('scripted upstream helper', () => {
    it('finds the terminator split across packets and records the stuffed data', async (t) => {
        const up = await startScriptedUpstream();
        t.after(() => up.close());
        const transcript = await converse(up.port, [
            'EHLO client.test\r\nMAIL FROM:<a@example.org> SIZE=10\r\nRCPT TO:<b@example.com>\r\nDATA\r\n',
            'line\r\n..dot\r\n.',
            '\r',
            '\nMAIL FROM:<>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n.\r\nQUIT\r\n',
        ]);
        assert.match(transcript, /^220 upstream\.test ESMTP/);
        assert.match(transcript, /250 2\.0\.0 Ok: queued as SCRIPTED1\r\n/);
        assert.match(transcript, /221 2\.0\.0 Bye\r\n$/);
        assert.equal(up.transactions.length, 2);
        const [first, second] = up.transactions;
        assert.equal(first?.data?.toString(), 'line\r\n..dot\r\n');
        assert.deepEqual(first.params, ['SIZE=10']);
        assert.equal(first.completed, true);
        assert.equal(second?.mail, '');
        assert.equal(second.data?.length, 0);
        assert.equal(second.completed, true);
        assert.deepEqual(up.commands.at(-1), 'QUIT');
    });

    it('keeps what arrived when the client goes away mid-DATA', async (t) => {
        const up = await startScriptedUpstream();
        t.after(() => up.close());
        const socket = net.connect(up.port, '127.0.0.1');
        socket.on('error', () => {});
        // the message starts only once DATA was answered with 354, however long that takes
        const dataMode = new Promise<void>((resolve) => {
            let seen = '';
            socket.on('data', (c: Buffer) => {
                seen += c.toString('latin1');
                if (/^354 /m.test(seen)) resolve();
            });
        });
        socket.write('HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n');
        await dataMode;
        socket.end('partial\r\n');
        await up.idle();
        assert.equal(up.transactions[0]?.data?.toString(), 'partial\r\n');
        assert.equal(up.transactions[0]?.completed, false);
    });
});
