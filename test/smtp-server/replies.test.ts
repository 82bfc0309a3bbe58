/**
 * smtp-server's own replies rewritten: each gets exactly one enhanced code of its class (by
 * smtp-server's context where it names the situation: MAIL 2.1.0, RCPT 2.1.5, bad sender
 * syntax 5.1.7, bad recipient syntax 5.1.3), texts that stand for a situation of the reply
 * table take its text, replies we built pass through unchanged, and 3xx replies get none.
 * A property test checks "exactly one code, never doubled" for arbitrary texts.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { rewriteBuiltinReply } from '../../src/smtp-server/replies.ts';

describe('rewriteBuiltinReply', () => {
    it('codes the successes by what they answer', () => {
        assert.equal(rewriteBuiltinReply(250, 'Accepted', 'MAIL_FROM_OK'), '2.1.0 Sender accepted');
        assert.equal(rewriteBuiltinReply(250, 'Accepted', 'RCPT_TO_OK'), '2.1.5 Recipient accepted');
        assert.equal(rewriteBuiltinReply(250, 'OK'), '2.0.0 OK');
        assert.equal(rewriteBuiltinReply(250, 'Flushed'), '2.0.0 Reset: no mail transaction is open');
        assert.equal(rewriteBuiltinReply(221, 'Bye'), '2.0.0 Goodbye; closing the connection');
        assert.equal(rewriteBuiltinReply(235, 'Authentication successful'), '2.7.0 Authentication succeeded');
        assert.equal(rewriteBuiltinReply(220, 'Ready to start TLS'), '2.0.0 Ready to start TLS');
    });

    it('codes the refusals, and drops the "Error:" prefix', () => {
        assert.equal(
            rewriteBuiltinReply(501, 'Error: Bad sender address syntax', 'SENDER_SYNTAX_ERROR'),
            '5.1.7 Bad sender address syntax',
        );
        assert.equal(
            rewriteBuiltinReply(501, 'Error: Bad recipient address syntax', 'MAILBOX_SYNTAX_ERROR'),
            '5.1.3 Bad recipient address syntax',
        );
        assert.equal(rewriteBuiltinReply(500, 'Error: command not recognized', 'FOO'), '5.5.2 Command not recognized');
        assert.equal(
            rewriteBuiltinReply(503, 'Error: need MAIL command'),
            '5.5.1 Bad sequence of commands: send MAIL FROM first',
        );
    });

    it('takes the reply table text for its situations', () => {
        assert.equal(
            rewriteBuiltinReply(421, 'mx.example.test Too many connected clients, try again in a moment'),
            '4.7.0 Too many connections to this server right now; please try again in a few minutes',
        );
        assert.equal(
            rewriteBuiltinReply(421, 'Server shutting down'),
            '4.3.2 Service shutting down; please try again later',
        );
        assert.match(rewriteBuiltinReply(421, 'Timeout - closing connection'), /^4\.4\.2 /);
    });

    it('leaves replies that have their code, and 3xx, alone', () => {
        assert.equal(rewriteBuiltinReply(550, '5.7.1 Message refused (id x)'), '5.7.1 Message refused (id x)');
        assert.equal(rewriteBuiltinReply(354, 'End data with <CR><LF>.<CR><LF>'), 'End data with <CR><LF>.<CR><LF>');
        assert.equal(rewriteBuiltinReply(334, 'VXNlcm5hbWU6'), 'VXNlcm5hbWU6');
    });

    it('never doubles a code, whatever the text (property)', (t) => {
        const seed = Number(process.env.MW_FC_SEED ?? Date.now() % 2 ** 31);
        t.diagnostic(`fast-check seed ${seed} (rerun with MW_FC_SEED=${seed})`);
        const code = fc.constantFrom(
            211,
            214,
            220,
            221,
            235,
            250,
            252,
            421,
            450,
            451,
            452,
            454,
            500,
            501,
            502,
            503,
            504,
            530,
            535,
            538,
            550,
            552,
            553,
            554,
            555,
        );
        const context = fc.option(
            fc.constantFrom(
                'MAIL_FROM_OK',
                'RCPT_TO_OK',
                'SENDER_SYNTAX_ERROR',
                'MAILBOX_SYNTAX_ERROR',
                'TOO_MANY_RECIPIENTS',
                'MAIL',
                'QUIT',
            ),
            { nil: undefined },
        );
        fc.assert(
            fc.property(code, fc.string({ maxLength: 40 }), context, (c, text, ctx) => {
                const out = rewriteBuiltinReply(c, text, ctx);
                const m = /^([245])\.\d{1,3}\.\d{1,3}(?: |$)/.exec(out);
                assert.ok(m, `${c} ${JSON.stringify(text)} → ${JSON.stringify(out)}`);
                assert.equal(m[1], String(c)[0]);
                if (/^[245]\.\d{1,3}\.\d{1,3}(?: |$)/.test(text)) assert.equal(out, text, 'a coded text is kept');
                else assert.doesNotMatch(out.slice(m[0].length), /^[245]\.\d{1,3}\.\d{1,3}(?: |$)/);
            }),
            { numRuns: 500, seed },
        );
    });
});
