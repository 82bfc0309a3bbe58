/**
 * Every fake end-of-data sequence of the SMTP smuggling corpus (test/fixtures/smtp-smuggling,
 * see its README for sources and licences) sent through the proxy: on a `reject` listener
 * the message is refused with 550 5.5.2; on a `normalize` listener exactly one message
 * reaches the upstream and the smuggled commands arrive as harmless, dot-stuffed body text.
 * In no case does a second message reach the upstream.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { Duplex } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import tls from 'node:tls';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { smtpConnect } from '../helpers/smtp-client.ts';
import { createTestCertificate, type TestCertificate } from '../helpers/tls-cert.ts';

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

/** HELP lines (each answered at once) and then `last`, ending exactly 64 KiB (one full socket read) in. */
function endingAtFullRead(last: string): string {
    let text = '';
    for (let left = 64 * 1024 - last.length; left > 0; left -= 16_000) {
        text += `HELP ${'x'.repeat(Math.min(left, 16_000) - 7)}\r\n`;
    }
    assert.equal(text.length + last.length, 64 * 1024);
    return text + last;
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
            // DATA at the very end of a 64 KiB read, after lines answered at once: the rest of the
            // write comes in the next read of the socket, a chunk of its own
            [
                'MAIL FROM:<a@sender.example>\r\nRCPT TO:<bob@example.test>\r\n',
                endingAtFullRead('DATA\r\n') + 'From: a@sender.example\r\nSubject: early\r\n\r\nhi\r\n.\r\n',
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

/**
 * A TLS client on a stream of its own: what TLS writes can be held back, so that records made by
 * separate writes leave in one TCP write and reach the server in one read (as a client that
 * writes DATA and its message one after the other does when its TCP stack sends them together).
 */
async function heldTlsClient(port: number, mode: 'starttls' | 'implicit') {
    const tcp = net.connect(port, '127.0.0.1');
    tcp.setNoDelay(true);
    await once(tcp, 'connect');
    let text = '';
    let closed = false;
    let wake: (() => void) | null = null;
    const received = (chunk: Buffer): void => {
        text += chunk.toString('latin1');
        wake?.();
    };
    tcp.on('close', () => {
        closed = true;
        wake?.();
    });
    /** The next complete reply (all its lines), or null when the connection closed first. */
    const reply = async (): Promise<{ code: number; raw: string } | null> => {
        for (;;) {
            const end = /^\d{3} .*\r\n/m.exec(text);
            if (end) {
                const raw = text.slice(0, end.index + end[0].length);
                text = text.slice(raw.length);
                return { code: Number(raw.slice(end.index, end.index + 3)), raw };
            }
            if (closed) return null;
            await new Promise<void>((resolve) => (wake = resolve));
            wake = null;
        }
    };
    if (mode === 'starttls') {
        tcp.on('data', received);
        assert.equal((await reply())?.code, 220);
        tcp.write('EHLO client.example\r\n');
        assert.equal((await reply())?.code, 250);
        tcp.write('STARTTLS\r\n');
        assert.equal((await reply())?.code, 220);
        tcp.off('data', received);
    }
    let held: Buffer[] | null = null;
    const wire = new Duplex({
        read() {},
        write(chunk: Buffer, _encoding, next) {
            if (held) held.push(chunk);
            else tcp.write(chunk);
            next();
        },
    });
    tcp.on('data', (chunk: Buffer) => wire.push(chunk));
    const secure = tls.connect({ socket: wire, rejectUnauthorized: false });
    await once(secure, 'secureConnect');
    secure.on('data', received);
    const write = (part: string) => new Promise<void>((resolve) => secure.write(part, () => resolve()));
    return {
        reply,
        async cmd(line: string) {
            await write(`${line}\r\n`);
            return reply();
        },
        /** Each part in a TLS record of its own, all the records in one TCP write. */
        async together(...parts: string[]): Promise<void> {
            held = [];
            for (const part of parts) await write(part);
            await new Promise((resolve) => setImmediate(resolve));
            const bytes = Buffer.concat(held);
            held = null;
            let records = 0;
            for (let at = 0; at + 5 <= bytes.length; at += 5 + bytes.readUInt16BE(at + 3)) records++;
            assert.equal(records, parts.length, 'one TLS record per part');
            tcp.write(bytes);
        },
        async closedByServer(): Promise<void> {
            while (!closed) await new Promise<void>((resolve) => (wake = resolve));
        },
        close: () => tcp.destroy(),
    };
}

// TLS hands each record of a TCP read to the parser as a chunk of its own: what came in the
// records after DATA or EHLO was sent before the reply all the same (RFC 2920 section 3.1)
describe('pipelining out of step over TLS', () => {
    let cert: TestCertificate;
    let up: ScriptedUpstream;
    let mw: TestApp;
    before(async () => {
        cert = await createTestCertificate();
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN', 'SIZE 1000000'] });
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                `tls: { cert: "${cert.certPath}", key: "${cert.keyPath}" }`,
                'listeners:',
                '  - { name: starttls, host: 127.0.0.1, port: 0, mode: mx }',
                '  - { name: implicit, host: 127.0.0.1, port: 0, mode: mx, tls: implicit }',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw.stop();
        await up.close();
        cert.cleanup();
    });

    for (const listener of ['starttls', 'implicit'] as const) {
        it(`${listener}: 554 5.5.0 for a record sent after DATA or EHLO in the same TCP write`, async () => {
            const cases: { setup: string[]; parts: string[]; command: string }[] = [
                // DATA refused for want of a recipient: the next record would run as commands
                {
                    setup: ['EHLO client.example', 'MAIL FROM:<a@sender.example>', 'RCPT TO:<u@other.example>'],
                    parts: [
                        'DATA\r\n',
                        'RSET\r\nMAIL FROM:<b@sender.example>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n',
                    ],
                    command: 'DATA',
                },
                // DATA accepted: the message before its 354
                {
                    setup: ['EHLO client.example', 'MAIL FROM:<a@sender.example>', 'RCPT TO:<bob@example.test>'],
                    parts: ['DATA\r\n', 'From: a@sender.example\r\nSubject: early\r\n\r\nhi\r\n.\r\n'],
                    command: 'DATA',
                },
                { setup: [], parts: ['EHLO client.example\r\n', 'MAIL FROM:<b@sender.example>\r\n'], command: 'EHLO' },
            ];
            for (const { setup, parts, command } of cases) {
                const completed = up.transactions.filter((t) => t.completed).length;
                const c = await heldTlsClient(mw.port(listener), listener);
                try {
                    if (listener === 'implicit') assert.equal((await c.reply())?.code, 220);
                    for (const line of setup) assert.ok(((await c.cmd(line))?.code ?? 0) < 600);
                    await c.together(...parts);
                    const r = await c.reply();
                    assert.equal(r?.code, 554, `${command}: ${r?.raw}`);
                    assert.match(
                        r.raw,
                        new RegExp(`^554 5\\.5\\.0 Protocol error: more was sent before the reply to ${command},`),
                    );
                    await c.closedByServer();
                } finally {
                    c.close();
                }
                assert.equal(up.transactions.filter((t) => t.completed).length, completed, 'nothing delivered');
                assert.ok(!up.commands.includes('MAIL FROM:<b@sender.example>'), 'no command after the record');
            }
        });

        it(`${listener}: a client that awaits each reply sends its message as before`, async () => {
            const completed = up.transactions.filter((t) => t.completed).length;
            const c = await heldTlsClient(mw.port(listener), listener);
            try {
                if (listener === 'implicit') assert.equal((await c.reply())?.code, 220);
                assert.equal((await c.cmd('EHLO client.example'))?.code, 250);
                assert.equal((await c.cmd('MAIL FROM:<a@sender.example>'))?.code, 250);
                assert.equal((await c.cmd('RCPT TO:<bob@example.test>'))?.code, 250);
                assert.equal((await c.cmd('DATA'))?.code, 354);
                await c.together('From: a@sender.example\r\nSubject: in step\r\n\r\nhi\r\n', '.\r\nNOOP\r\n');
                assert.equal((await c.reply())?.code, 250);
                assert.equal((await c.reply())?.code, 250);
            } finally {
                c.close();
            }
            assert.equal(up.transactions.filter((t) => t.completed).length, completed + 1);
        });
    }
});
