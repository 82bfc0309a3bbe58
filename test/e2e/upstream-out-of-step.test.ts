/**
 * An upstream whose replies get out of step with the commands sent (a 250 to DATA instead of
 * 354, two replies to one command, a 250 right behind the 354), end to end through the real
 * listener: the client never hears 250 for a message the upstream did not take; it hears the
 * 451 of an upstream protocol failure, and the upstream has no complete transaction. A 250 to
 * the end of data that arrives together with garbage is still the upstream's answer: the client
 * hears 250 for the message the upstream took.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { decisions, startScriptedGateway } from '../helpers/app.ts';
import type { ScriptedUpstreamOptions } from '../helpers/scripted-upstream.ts';
import { sendMail } from '../helpers/smtp-client.ts';

const LINES = [
    'hostname: mx.example.test',
    'domains: [example.test]',
    'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
];
const MSG = 'From: a@example.org\r\nSubject: t\r\nMessage-ID: <d1@example.org>\r\n\r\nbody\r\n';

const CASES: Record<string, ScriptedUpstreamOptions> = {
    'DATA answered 250 instead of 354': { onCommand: (l) => (l === 'DATA' ? '250 2.0.0 Ok' : undefined) },
    'MAIL answered twice': {
        onCommand: (l) => (l.startsWith('MAIL') ? ['250 2.1.0 Ok', '250 2.1.0 Ok'] : undefined),
    },
    'RCPT answered twice': {
        onCommand: (l) => (l.startsWith('RCPT') ? ['250 2.1.5 Ok', '250 2.1.5 Ok'] : undefined),
    },
    'a 250 right behind the 354': {
        onCommand: (l) => (l === 'DATA' ? ['354 go ahead', '250 2.0.0 early'] : undefined),
        onData: () => '554 5.7.1 refused after all',
    },
};

describe('an upstream out of step', () => {
    for (const [name, upstream] of Object.entries(CASES)) {
        it(`${name}: 451, never 250, and nothing delivered`, async () => {
            const g = await startScriptedGateway(LINES, { upstream });
            try {
                const r = await sendMail(g.mw.port(), { from: 'a@example.org', to: ['b@example.test'], data: MSG });
                const codes = [r.mail.code, ...r.rcpt.map((x) => x.code), r.data?.code, r.message?.code];
                assert.notEqual(r.message?.code, 250, `heard ${JSON.stringify(codes)}`);
                assert.ok(codes.includes(451), `heard ${JSON.stringify(codes)}`);
                assert.equal(g.up.transactions.filter((t) => t.completed).length, 0);
            } finally {
                await g.close();
            }
        });
    }
});

describe('an upstream 250 to the end of data with garbage behind it in the same read', () => {
    it('is relayed: the client hears 250 and the decision says accept', async () => {
        const g = await startScriptedGateway(LINES, {
            upstream: { onData: () => ['250 2.0.0 Ok: queued as Q1', 'oops'] },
        });
        try {
            const r = await sendMail(g.mw.port(), { from: 'a@example.org', to: ['b@example.test'], data: MSG });
            assert.equal(r.message?.code, 250, r.message?.raw);
            assert.equal(g.up.transactions.filter((t) => t.completed).length, 1);
            const [decision] = decisions(g.mw.logs);
            assert.equal(decision?.action, 'accept');
            assert.equal(decision.queueId, 'Q1');
        } finally {
            await g.close();
        }
    });
});
