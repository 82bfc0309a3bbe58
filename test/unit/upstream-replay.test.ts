/**
 * The replay of an accepted envelope on a new upstream connection (src/upstream/replay.ts),
 * against a recording stand-in for an upstream session: MAIL and every RCPT go in order with
 * their parameters, the replay stops at the first reply that is not a 2xx and says which, and
 * an envelope without a recipient is not replayed. No network, no DATA.
 */
import assert from 'node:assert/strict';
import type { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { replayEnvelope, type AcceptedEnvelope } from '../../src/upstream/replay.ts';
import type { MailParams, RcptParams, UpstreamReply, UpstreamSession } from '../../src/upstream/types.ts';

const OK: UpstreamReply = { code: 250, enhanced: '2.1.0', text: 'Ok' };

/** An upstream session that records each command and answers from `answers` (250 otherwise). */
function recording(answers: Record<string, UpstreamReply> = {}) {
    const sent: Array<[string, MailParams | RcptParams | undefined]> = [];
    const session: UpstreamSession = {
        mailFrom: (address, params) => {
            sent.push([`MAIL ${address}`, params]);
            return Promise.resolve(answers[`MAIL ${address}`] ?? OK);
        },
        rcptTo: (address, params) => {
            sent.push([`RCPT ${address}`, params]);
            return Promise.resolve(answers[`RCPT ${address}`] ?? OK);
        },
        data: (_message: Readable) => Promise.reject(new Error('the replay never sends DATA')),
        reset: () => Promise.reject(new Error('the replay never sends RSET')),
        close: () => Promise.resolve(),
        usable: true,
        peer: 'stand-in',
        capabilities: { size: null, eightBitMime: true, smtputf8: true, dsn: true, requireTls: false },
    };
    return { session, sent };
}

const envelope: AcceptedEnvelope = {
    mail: { address: 'sender@sender.test', params: { size: 4000, body: '8BITMIME', envid: 'x+2Bid' } },
    rcpts: [
        { address: 'a@example.test', params: { notify: 'SUCCESS,FAILURE' } },
        { address: 'b@example.test', params: { orcpt: 'rfc822;b@example.test' } },
    ],
};

describe('replayEnvelope', () => {
    it('sends MAIL and every RCPT in order with their parameters, and counts each reply', async () => {
        const { session, sent } = recording();
        const seen: number[] = [];
        assert.deepEqual(await replayEnvelope(session, envelope, (r) => seen.push(r.code)), { ok: true });
        assert.deepEqual(sent, [
            ['MAIL sender@sender.test', envelope.mail.params],
            ['RCPT a@example.test', envelope.rcpts[0]!.params],
            ['RCPT b@example.test', envelope.rcpts[1]!.params],
        ]);
        assert.deepEqual(seen, [250, 250, 250]);
    });

    it('stops at a recipient now refused and says which', async () => {
        const busy = { code: 450, enhanced: '4.2.1', text: 'mailbox busy' };
        const { session, sent } = recording({ 'RCPT a@example.test': busy });
        const outcome = await replayEnvelope(session, envelope, () => undefined);
        assert.deepEqual(outcome, {
            ok: false,
            reason: 'the upstream answered the replayed RCPT TO:<a@example.test> with 450 4.2.1 mailbox busy',
        });
        assert.equal(sent.length, 2, 'no RCPT after the refused one');
    });

    it('sends no RCPT after a refused MAIL', async () => {
        const { session, sent } = recording({ 'MAIL sender@sender.test': { code: 421, enhanced: null, text: 'bye' } });
        const outcome = await replayEnvelope(session, envelope, () => undefined);
        assert.equal(outcome.ok, false);
        assert.equal(sent.length, 1);
    });

    it('replays nothing without an accepted recipient', async () => {
        const { session, sent } = recording();
        const outcome = await replayEnvelope(session, { ...envelope, rcpts: [] }, () => undefined);
        assert.equal(outcome.ok, false);
        assert.equal(sent.length, 0);
    });
});
