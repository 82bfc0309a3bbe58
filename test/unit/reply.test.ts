/**
 * The reply table: every situation has a well-formed code and enhanced code of the same
 * class, refusals carry the session id, and relayed upstream refusals keep their class;
 * the shutdown reply says "restarting" only for a restart.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
    asGreeting,
    formatReply,
    relayedReply,
    replyFor,
    replyForDecision,
    softenReply,
    toCallbackError,
    type Situation,
} from '../../src/reply.ts';

const situations: Situation[] = [
    'accepted',
    'policy-reject',
    'policy-tempfail',
    'connect-tempfail',
    'message-too-big',
    'header-too-big',
    'bare-newline',
    'upstream-unavailable',
    'internal-error',
    'shutting-down',
    'auth-required',
    'auth-tls-required',
    'auth-invalid',
    'auth-unavailable',
    'auth-locked',
    'auth-locked-disconnect',
    'auth-failures-disconnect',
    'auth-revoked',
    'sender-not-owned',
    'header-malformed',
    'header-sender-invalid',
    'restarting',
    'too-many-connections',
    'too-many-network-connections',
    'no-transaction-timeout',
    'envelope-timeout',
];

describe('reply table', () => {
    for (const s of situations) {
        it(`${s} is well formed`, () => {
            const r = replyFor(s, { id: 'SID1', limit: 10 });
            assert.match(String(r.code), /^[2-5]\d\d$/);
            assert.equal(r.enhanced[0], String(r.code)[0], 'enhanced code class matches');
            assert.doesNotMatch(r.text, /[\r\n]/);
        });
    }
    it('matches the SPEC codes', () => {
        const codes = Object.fromEntries(situations.map((s) => [s, formatReply(replyFor(s, { id: 'x' })).slice(0, 9)]));
        assert.equal(codes['message-too-big'], '552 5.3.4');
        assert.equal(codes['bare-newline'], '550 5.5.2');
        assert.equal(codes['upstream-unavailable'], '451 4.4.1');
        assert.equal(codes['internal-error'], '451 4.3.0');
        assert.equal(codes['shutting-down'], '421 4.3.2');
        assert.equal(codes['auth-required'], '530 5.7.0');
        assert.equal(codes['auth-invalid'], '535 5.7.8');
        assert.equal(codes['auth-unavailable'], '454 4.7.0');
        assert.equal(codes['sender-not-owned'], '553 5.7.1');
        assert.equal(codes['header-sender-invalid'], '553 5.7.1');
        assert.equal(codes['header-malformed'], '550 5.6.0');
        assert.equal(codes['restarting'], '421 4.3.2');
        assert.equal(codes['too-many-connections'], '421 4.7.0');
        assert.equal(codes['too-many-network-connections'], '421 4.7.0');
        assert.equal(codes['no-transaction-timeout'], '421 4.4.2');
        assert.equal(codes['envelope-timeout'], '421 4.4.2');
    });
    it('writes the envelope deadline from the setting, in minutes when it is whole minutes', () => {
        const text = (seconds: number): string => replyFor('envelope-timeout', { id: 'x', seconds }).text;
        assert.equal(text(300), 'No message sent within 5 minutes of MAIL FROM; closing the connection');
        assert.match(text(60), /within 1 minute of/);
        assert.match(text(90), /within 90 seconds of/);
        assert.match(text(2), /within 2 seconds of/);
        assert.match(text(1), /within 1 second of/);
    });
    it('says "shutting down" on a stop and "restarting" only on a restart', () => {
        assert.match(replyFor('shutting-down', { id: 'x' }).text, /^Service shutting down;/);
        assert.match(replyFor('restarting', { id: 'x' }).text, /^Service restarting;/);
    });
    it('names the session id in refusals people may report', () => {
        for (const s of [
            'policy-reject',
            'bare-newline',
            'upstream-unavailable',
            'internal-error',
            'sender-not-owned',
            'header-malformed',
            'header-sender-invalid',
        ] as const) {
            assert.match(replyFor(s, { id: 'SID42' }).text, /SID42/);
        }
    });
    it('names the header line and the author-field problem in plain words', () => {
        const malformed = replyFor('header-malformed', { id: 'S', line: 3, headerProblem: 'no-colon' });
        assert.match(malformed.text, /^Message refused: line 3 of the header section has no colon/);
        const several = replyFor('header-sender-invalid', {
            id: 'S',
            login: 'alice@example.com',
            senderProblem: 'several-from',
            count: 2,
        });
        assert.match(several.text, /the message has 2 From fields, and exactly one is allowed/);
        assert.match(several.text, /login alice@example\.com/);
    });
    it('maps decisions: forwarding actions have no refusal reply', () => {
        const base = { rules: [], score: 0, reason: '', headers: [] };
        assert.equal(replyForDecision({ ...base, action: 'accept' }, { id: 'x' }), null);
        assert.equal(replyForDecision({ ...base, action: 'quarantine' }, { id: 'x' }), null);
        assert.equal(replyForDecision({ ...base, action: 'reject' }, { id: 'x' })?.code, 550);
        assert.equal(replyForDecision({ ...base, action: 'tempfail' }, { id: 'x' })?.code, 451);
    });
    it('sends a refusal at connect as 554 or 421 only (RFC 5321 section 4.3.2)', () => {
        const base = { rules: [], score: 0, reason: '', headers: [] };
        const tempfail = replyForDecision({ ...base, action: 'tempfail' }, { id: 'x' }, 'connect');
        assert.deepEqual([tempfail?.code, tempfail?.enhanced], [421, '4.7.0']);
        assert.match(tempfail?.text ?? '', /try again later; closing the connection \(id x\)$/);
        const failedCheck = replyForDecision(
            { ...base, action: 'tempfail', reply: replyFor('check-failed', { id: 'x' }) },
            { id: 'x' },
            'connect',
        );
        assert.deepEqual([failedCheck?.code, failedCheck?.enhanced], [421, '4.7.0']);
        const softened = replyForDecision(
            { ...base, action: 'tempfail', reply: { code: 454, enhanced: '4.5.1', text: 'Protocol error: too soon.' } },
            { id: 'x' },
            'connect',
        );
        assert.equal(
            softened && formatReply(softened),
            '421 4.7.0 Protocol error: too soon. Please try again later; closing the connection (id x)',
        );
        const reject = replyForDecision(
            { ...base, action: 'reject', reply: { code: 553, enhanced: '5.7.1', text: 'no' } },
            { id: 'x' },
            'connect',
        );
        assert.deepEqual([reject?.code, reject?.enhanced], [554, '5.7.1']);
        // our own failure at connect (the listener's internal error) and a limit's 421 as they are
        const internal = asGreeting(replyFor('internal-error', { id: 'x' }), { id: 'x' });
        assert.deepEqual([internal.code, internal.enhanced], [421, '4.7.0']);
        assert.equal((internal.text.match(/\(id x\)/g) ?? []).length, 1, internal.text);
        const limit = replyFor('connection-limit-exceeded', { id: 'x', limitId: 'l', retry: '60' });
        assert.deepEqual(asGreeting(limit, { id: 'x' }), limit);
        // the same decisions at later stages keep their codes
        assert.equal(replyForDecision({ ...base, action: 'tempfail' }, { id: 'x' }, 'mail')?.code, 451);
    });
    it('softens a 5xx into its 4xx equivalent without saying it was refused', () => {
        const s = softenReply({ code: 550, enhanced: '5.7.1', text: 'Message refused: it failed DMARC' });
        assert.deepEqual(s, { code: 450, enhanced: '4.7.1', text: 'Message deferred: it failed DMARC' });
        assert.equal(
            softenReply({ code: 553, enhanced: '5.7.1', text: 'Sender refused: x' }).text,
            'Sender deferred: x',
        );
        assert.equal(
            softenReply({ code: 554, enhanced: '5.7.1', text: 'Connection refused: y' }).text,
            'Connection deferred: y',
        );
        assert.equal(softenReply({ code: 550, enhanced: '5.7.1', text: 'Spam here' }).text, 'Spam here');
    });
    it('builds callback errors with responseCode and no control characters', () => {
        const e = toCallbackError({ code: 550, enhanced: '5.7.1', text: 'bad\r\nthing' });
        assert.equal(e.responseCode, 550);
        assert.equal(e.message, '5.7.1 bad thing');
    });
    it('relays upstream refusals keeping code and enhanced code, with our own text', () => {
        const r = relayedReply('rcpt', { code: 550, enhanced: '5.1.1', text: 'User unknown in virtual mailbox table' });
        assert.deepEqual([r.code, r.enhanced], [550, '5.1.1']);
        assert.match(r.text, /does not exist/);
        assert.doesNotMatch(r.text, /virtual mailbox/);
        const t = relayedReply('data', { code: 452, enhanced: null, text: 'full' });
        assert.deepEqual([t.code, t.enhanced], [452, '4.0.0']);
        const odd = relayedReply('mail', { code: 250, enhanced: '2.0.0', text: '' });
        assert.equal(odd.code, 451);
    });
    it("relays an upstream 530 (STARTTLS or authentication required of the gateway's own connection) as a 4xx", () => {
        for (const step of ['mail', 'rcpt', 'data'] as const) {
            const r = relayedReply(step, { code: 530, enhanced: '5.7.0', text: 'Must issue a STARTTLS command first' });
            assert.deepEqual([r.code, r.enhanced], [451, '4.7.0'], step);
            assert.match(r.text, /try again later/);
        }
    });
});
