/**
 * Pipelining out of step read as Postfix reads it: the same bytes sent to real Postfix with
 * `smtpd_forbid_unauth_pipelining = yes` (the default from Postfix 3.9) and to mailwarden in
 * front of it get the same answer. More sent before the reply to EHLO, HELO, DATA, VRFY or NOOP
 * is answered 554 5.5.0 and the connection closed; MAIL, RCPT and RSET may be followed, and a
 * group ended by DATA, with the message sent after 354, is in step (RFC 2920 section 3.1).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startPostfix, type PostfixInstance } from '../helpers/postfix.ts';
import { smtpConnect } from '../helpers/smtp-client.ts';

/** What each server answers to `steps`, sent one write per step: the codes after the greeting, until it closes. */
async function answers(port: number, steps: readonly string[], localAddress: string): Promise<number[]> {
    const c = await smtpConnect(port, { localAddress, timeoutMs: 5000 });
    const codes: number[] = [];
    try {
        await c.greeting();
        for (const step of steps) {
            c.write(step);
            // one reply per command line of the step (a 554 ends the conversation early)
            const lines = step.split('\r\n').filter((l) => l !== '').length;
            for (let i = 0; i < lines; i++) {
                const r = await c.reply();
                codes.push(r.code);
                if (r.code === 554) return codes;
            }
        }
        return codes;
    } finally {
        c.close();
    }
}

describe('pipelining out of step, as Postfix reads it', () => {
    let postfix: PostfixInstance;
    let mw: TestApp;
    before(async () => {
        postfix = await startPostfix({ mainCf: { smtpd_forbid_unauth_pipelining: 'yes' } });
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${postfix.port}" }`,
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw?.stop();
        await postfix?.stop();
    });

    const EHLO = 'EHLO client.example\r\n';
    const cases: [string, string[], 'refused' | 'in step'][] = [
        ['MAIL after EHLO in one write', ['EHLO client.example\r\nMAIL FROM:<a@sender.example>\r\n'], 'refused'],
        ['MAIL after HELO in one write', ['HELO client.example\r\nMAIL FROM:<a@sender.example>\r\n'], 'refused'],
        ['MAIL after NOOP', [EHLO, 'NOOP\r\nMAIL FROM:<a@sender.example>\r\n'], 'refused'],
        ['NOOP after VRFY', [EHLO, 'VRFY alice\r\nNOOP\r\n'], 'refused'],
        [
            'the message with DATA',
            [
                EHLO,
                'MAIL FROM:<a@sender.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n',
            ],
            'refused',
        ],
        [
            'MAIL, RCPT, RSET and NOOP in one group',
            [EHLO, 'MAIL FROM:<a@sender.example>\r\nRCPT TO:<alice@example.test>\r\nRSET\r\nNOOP\r\n'],
            'in step',
        ],
        [
            'MAIL, RCPT and DATA, the message after 354',
            [EHLO, 'MAIL FROM:<a@sender.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n'],
            'in step',
        ],
    ];
    let host = 1;
    for (const [what, steps, expected] of cases) {
        it(`${what}: ${expected}, by Postfix and by mailwarden alike`, async () => {
            const direct = await answers(postfix.port, steps, `127.0.78.${host++}`);
            const proxied = await answers(mw.port(), steps, `127.0.78.${host++}`);
            assert.equal(direct.at(-1) === 554, expected === 'refused', `Postfix: ${direct.join(' ')}`);
            assert.deepEqual(
                proxied.map((c) => Math.floor(c / 100)),
                direct.map((c) => Math.floor(c / 100)),
                `Postfix ${direct.join(' ')}, mailwarden ${proxied.join(' ')}`,
            );
        });
    }
});
