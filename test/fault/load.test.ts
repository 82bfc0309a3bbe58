/**
 * The load run (test/fault/load.ts) at CI size: 500 messages over 20 concurrent sessions through
 * a real mailwarden process into a real Postfix, then 500 idle connections. Nothing may be lost
 * or duplicated, and afterwards nothing may be left behind: file descriptors back to where they
 * were before the traffic, no spool file, no session. The figures are printed, not judged (no
 * timing assertions); `npm run load` runs the full size (docs/reliability.md).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { runLoad } from './load.ts';

describe('load: concurrent sessions and idle connections', () => {
    it('delivers 500 messages over 20 sessions with nothing lost, and leaks nothing after 500 idle connections', async () => {
        const r = await runLoad({ messages: 500, concurrency: 20, messagesPerConnection: 10, idleConnections: 500 });
        const m = r.messages;
        const summary = JSON.stringify({ ...r, messages: { ...m, details: m.details.slice(0, 10) } }, null, 2);
        console.log(
            `load: ${r.messagesPerSecond.toFixed(0)} messages/s; ` +
                `${(r.idle.rssPerConnection / 1024).toFixed(1)} KB RSS and ` +
                `${(r.idle.heapPerConnection / 1024).toFixed(1)} KB heap per idle connection; ` +
                `descriptors ${r.fds.atStart} / ${r.fds.afterMessages} / ${r.fds.withIdle} / ${r.fds.afterIdleClosed}`,
        );
        assert.equal(m.lost, 0, summary);
        assert.equal(m.unexpected5xx, 0, summary);
        assert.equal(m.duplicatesOutsideWindow, 0, summary);
        assert.equal(m.delivered + m.refused5xx, m.recipients, summary);
        assert.equal(r.idle.sessionsActive, 500, `every idle connection is a session\n${summary}`);
        assert.ok(r.fds.withIdle >= r.fds.atStart + 500, `the idle connections held descriptors\n${summary}`);
        assert.ok(r.fds.afterMessages <= r.fds.atStart, `no descriptor leaked by the messages\n${summary}`);
        assert.ok(r.fds.afterIdleClosed <= r.fds.atStart, `no descriptor leaked by the idle connections\n${summary}`);
        assert.equal(r.spoolFiles.afterMessages, 0, summary);
        assert.equal(r.spoolFiles.atEnd, 0, summary);
        assert.equal(r.sessionsLeft, 0, summary);
    });
});
