/**
 * Every fake end-of-data sequence of the SMTP smuggling corpus (test/fixtures/smtp-smuggling,
 * see its README for sources and licences) sent through the proxy: on a `reject` listener
 * the message is refused with 550 5.5.2; on a `normalize` listener exactly one message
 * reaches the upstream and the smuggled commands arrive as harmless, dot-stuffed body text.
 * In no case does a second message reach the upstream.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { smtpConnect } from '../helpers/smtp-client.ts';

interface Sequence {
    id: string;
    sequence: string;
    is_valid_end_of_data: boolean;
}
const corpus = JSON.parse(
    readFileSync(new URL('../fixtures/smtp-smuggling/eod-sequences.json', import.meta.url), 'utf8'),
) as {
    sequences: Sequence[];
    controls: Sequence[];
};

const SMUGGLED =
    'MAIL FROM:<spoofed@victim.example>\r\nRCPT TO:<rcpt@target.example>\r\nDATA\r\nFrom: spoofed@victim.example\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n';

/** Sends one message whose body contains `sequence` followed by a smuggled transaction, then a real terminator. */
async function attempt(port: number, sequence: string): Promise<{ code: number; text: string; after: number }> {
    const c = await smtpConnect(port);
    try {
        await c.greeting();
        await c.cmd('EHLO attacker.example');
        assert.equal((await c.cmd('MAIL FROM:<real@sender.example>')).code, 250);
        assert.equal((await c.cmd('RCPT TO:<bob@example.test>')).code, 250);
        assert.equal((await c.cmd('DATA')).code, 354);
        c.write(`From: real@sender.example\r\nSubject: first\r\n\r\nfirst body${sequence}${SMUGGLED}.\r\n`);
        const reply = await c.reply();
        // the session must be back in command mode: one more command, one reply
        const noop = await c.cmd('NOOP');
        return { code: reply.code, text: reply.text, after: noop.code };
    } finally {
        c.close();
    }
}

describe('SMTP smuggling corpus', () => {
    let up: ScriptedUpstream;
    let mw: TestApp;
    before(async () => {
        up = await startScriptedUpstream({
            ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN', 'SIZE 1000000'],
            // a recipient the upstream answers slowly: what the client sends meanwhile waits in our buffers
            onCommand: (line) => (line === 'RCPT TO:<slow@example.test>' ? { delayMs: 300 } : undefined),
        });
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners:',
                '  - { name: strict, host: 127.0.0.1, port: 0, mode: mx }',
                '  - { name: lenient, host: 127.0.0.1, port: 0, mode: mx, bareNewline: normalize }',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw.stop();
        await up.close();
    });

    it('has the 12 sequences and 2 controls of the corpus', () => {
        assert.equal(corpus.sequences.length, 12);
        assert.equal(corpus.controls.length, 2);
        assert.ok(corpus.sequences.every((s) => !s.is_valid_end_of_data));
    });

    for (const seq of corpus.sequences) {
        it(`${seq.id}: refused with 550 5.5.2 on a reject listener, nothing upstream`, async () => {
            const before = up.transactions.length;
            const r = await attempt(mw.port('strict'), seq.sequence);
            assert.equal(r.code, 550, r.text);
            assert.match(r.text, /^5\.5\.2 /);
            assert.equal(r.after, 250);
            assert.ok(up.transactions.slice(before).every((tx) => !tx.completed));
            assert.ok(!up.commands.includes('MAIL FROM:<spoofed@victim.example>'));
        });

        it(`${seq.id}: normalised into one message on a normalize listener`, async () => {
            const before = up.transactions.length;
            const r = await attempt(mw.port('lenient'), seq.sequence);
            assert.equal(r.code, 250, r.text);
            assert.equal(r.after, 250);
            const txs = up.transactions.slice(before);
            assert.equal(txs.length, 1, 'exactly one transaction upstream');
            const data = txs[0]!.data!.toString('latin1');
            assert.doesNotMatch(data.replace(/\r\n/g, ''), /[\r\n\0]/, 'only CRLF line endings, no NUL');
            assert.ok(!data.includes('\r\n.\r\n'), 'no terminator inside the forwarded data');
            assert.match(data, /\r\nMAIL FROM:<spoofed@victim\.example>\r\n/, 'smuggled text stays body text');
            assert.ok(!up.commands.includes('MAIL FROM:<spoofed@victim.example>'));
        });
    }

    it('control: a dot-stuffed line is content, not an end of data', async () => {
        const before = up.transactions.length;
        const r = await attempt(mw.port('strict'), '\r\n..\r\n');
        assert.equal(r.code, 250);
        assert.equal(up.transactions.length - before, 1);
        assert.ok(!up.commands.includes('MAIL FROM:<spoofed@victim.example>'));
    });

    it('control: pipelined transactions after a valid end of data are two separate messages', async () => {
        // RFC 2920 section 3.1: message content may open a group, DATA must close one
        const before = up.transactions.length;
        const c = await smtpConnect(mw.port('strict'));
        await c.greeting();
        await c.cmd('EHLO client.example');
        c.write('MAIL FROM:<one@sender.example>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n');
        const codes: number[] = [];
        for (let i = 0; i < 3; i++) codes.push((await c.reply()).code);
        c.write(
            'From: one@sender.example\r\nSubject: one\r\n\r\nfirst\r\n.\r\n' +
                'MAIL FROM:<two@sender.example>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n',
        );
        for (let i = 0; i < 4; i++) codes.push((await c.reply()).code);
        c.write('From: two@sender.example\r\nSubject: two\r\n\r\nsecond\r\n.\r\n');
        codes.push((await c.reply()).code);
        c.close();
        assert.deepEqual(codes, [250, 250, 354, 250, 250, 250, 354, 250]);
        const txs = up.transactions.slice(before);
        assert.deepEqual(
            txs.map((t) => [t.mail, t.completed]),
            [
                ['one@sender.example', true],
                ['two@sender.example', true],
            ],
        );
    });

    // The message sent with DATA, before its 354: were DATA refused (no valid recipient), the
    // message's lines would run as commands, a second transaction among them
    it('answers 554 5.5.0 and closes when the message or commands come before the reply to DATA', async () => {
        const sends = [
            // everything in one write, DATA refused for want of a recipient
            [
                'MAIL FROM:<a@sender.example>\r\nRCPT TO:<u@other.example>\r\nDATA\r\n' +
                    'RSET\r\nMAIL FROM:<b@sender.example>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n' +
                    'Subject: injected\r\n\r\nhi\r\n.\r\nQUIT\r\n',
            ],
            // a valid transaction with its message in the same write as DATA
            ['MAIL FROM:<a@sender.example>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nSubject: early\r\n\r\nhi\r\n.\r\n'],
            // the message in a write of its own, queued while the recipient was being checked
            [
                'MAIL FROM:<a@sender.example>\r\nRCPT TO:<slow@example.test>\r\nDATA\r\n',
                'Subject: early\r\n\r\nhi\r\n.\r\n',
            ],
        ];
        for (const writes of sends) {
            const before = up.transactions.filter((t) => t.completed).length;
            const c = await smtpConnect(mw.port('strict'));
            try {
                await c.greeting();
                await c.cmd('EHLO client.example');
                for (const w of writes) {
                    c.write(w);
                    await new Promise((resolve) => setTimeout(resolve, 100));
                }
                const replies = [];
                for (;;) {
                    const r = await c.reply();
                    replies.push(r);
                    if (r.code === 554 || r.code === 354 || replies.length > 8) break;
                }
                const last = replies.at(-1)!;
                assert.equal(last.code, 554, replies.map((r) => r.raw).join(''));
                assert.match(last.text, /^5\.5\.0 Protocol error: .*before the reply to DATA/);
                await c.waitClosed(5000);
            } finally {
                c.close();
            }
            assert.equal(up.transactions.filter((t) => t.completed).length, before, 'nothing reached the upstream');
            assert.ok(!up.commands.includes('MAIL FROM:<b@sender.example>'), 'no injected transaction');
        }
        const cut = mw.logs.filter(
            (l) => l.msg === 'closing: input sent before the reply to a command that ends a pipelined group',
        );
        assert.deepEqual(
            cut.map((l) => l.command),
            sends.map(() => 'DATA'),
        );
    });

    // RFC 2920 section 3.1, as real Postfix answers with smtpd_forbid_unauth_pipelining = yes
    // (the default from 3.9): EHLO, HELO, VRFY and NOOP end a group too; MAIL, RCPT and RSET need not
    it('answers 554 5.5.0 to more sent before the reply to EHLO, HELO, VRFY or NOOP; RSET may be followed', async () => {
        const refused: [string, string][] = [
            ['EHLO client.example\r\nMAIL FROM:<a@sender.example>\r\n', 'EHLO'],
            ['HELO client.example\r\nMAIL FROM:<a@sender.example>\r\n', 'HELO'],
            ['NOOP\r\nMAIL FROM:<a@sender.example>\r\n', 'NOOP'],
            ['VRFY bob\r\nNOOP\r\n', 'VRFY'],
        ];
        for (const [write, command] of refused) {
            const c = await smtpConnect(mw.port('strict'));
            try {
                await c.greeting();
                if (!write.startsWith('EHLO') && !write.startsWith('HELO')) await c.cmd('EHLO client.example');
                c.write(write);
                const r = await c.reply();
                assert.equal(r.code, 554, `${JSON.stringify(write)}: ${r.raw}`);
                assert.match(
                    r.text,
                    new RegExp(`^5\\.5\\.0 Protocol error: more was sent before the reply to ${command},`),
                );
                await c.waitClosed(5000);
            } finally {
                c.close();
            }
        }
        // a group of MAIL, RCPT and RSET ended by NOOP is in step
        const c = await smtpConnect(mw.port('strict'));
        try {
            await c.greeting();
            await c.cmd('EHLO client.example');
            c.write('MAIL FROM:<a@sender.example>\r\nRCPT TO:<bob@example.test>\r\nRSET\r\nNOOP\r\n');
            const codes: number[] = [];
            for (let i = 0; i < 4; i++) codes.push((await c.reply()).code);
            assert.deepEqual(codes, [250, 250, 250, 250]);
        } finally {
            c.close();
        }
    });
});
