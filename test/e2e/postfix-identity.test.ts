/**
 * Each client reaches the real Postfix as itself: clients from different addresses, in turn and
 * at once, through one mailwarden, each get an upstream connection of their own with one XCLIENT
 * naming them, so Postfix's Received line and log show that client's address and HELO name and
 * never another's. And the Postfix fact that rules out handing a connection to the next client:
 * with the documented `smtpd_authorized_xclient_hosts`, Postfix refuses a second XCLIENT on a
 * connection, as it checks it against the address the first XCLIENT set. Postfix runs with
 * smtpd_forbid_unauth_pipelining (the default from Postfix 3.9), under which an EHLO sent behind
 * XCLIENT before its new 220 ends the session: mailwarden waits for each answer. After the first
 * connection, XCLIENT goes right after Postfix's greeting, without an EHLO of mailwarden's own.
 * Postfix's client-name restrictions judge the client's names as mailwarden's DNS found them:
 * a missing or unconfirmed reverse name is refused as Postfix refuses it (never judged as the
 * name of mailwarden's own address), and a DNS failure at mailwarden gets Postfix's 4xx.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { TestApp } from '../helpers/app.ts';
import type { PostfixInstance } from '../helpers/postfix.ts';
import { startPostfixGateway, unfold, type PostfixGateway } from '../helpers/postfix-gateway.ts';
import { sendMail, smtpConnect } from '../helpers/smtp-client.ts';
import { until } from '../helpers/until.ts';

function message(id: string): string {
    return (
        `From: Sender <sender@sender.test>\r\nTo: alice@example.test\r\nSubject: ${id}\r\n` +
        `Message-ID: <${id}@sender.test>\r\n\r\nHello.\r\n`
    );
}

/** Postfix's own Received line (the topmost) of the message with this id. */
function postfixReceived(messages: readonly string[], id: string): string {
    const found = messages.find((m) => m.includes(`<${id}@sender.test>`));
    assert.ok(found, `message ${id} delivered`);
    const line = unfold(found)
        .split('\n')
        .find((l) => l.startsWith('Received: '));
    return line ?? '';
}

describe('each client reaches Postfix as itself', () => {
    let gateway: PostfixGateway;
    let postfix: PostfixInstance;
    let mw: TestApp;

    before(async () => {
        gateway = await startPostfixGateway({ mainCf: { smtpd_forbid_unauth_pipelining: 'yes' } }, [
            '{ name: mx, host: 127.0.0.1, port: 0, mode: mx }',
        ]);
        ({ postfix, mw } = gateway);
    });
    after(async () => {
        await gateway?.close();
    });

    it('names each client in its own message, in turn and at once', async () => {
        const clients = [
            { id: 'turn-a', addr: '127.0.0.2', helo: 'first-client.example' },
            { id: 'turn-b', addr: '127.0.0.3', helo: 'second-client.example' },
        ];
        const together = [
            { id: 'once-c', addr: '127.0.0.4', helo: 'third-client.example' },
            { id: 'once-d', addr: '127.0.0.5', helo: 'fourth-client.example' },
            { id: 'once-e', addr: '127.0.0.6', helo: 'fifth-client.example' },
        ];
        const send = async (c: { id: string; addr: string; helo: string }): Promise<void> => {
            const result = await sendMail(mw.port(), {
                from: 'sender@sender.test',
                to: ['alice@example.test'],
                data: message(c.id),
                helo: c.helo,
                localAddress: c.addr,
            });
            assert.equal(result.message?.code, 250, result.message?.raw);
        };
        for (const c of clients) await send(c);
        await Promise.all(together.map(send));

        const all = [...clients, ...together];
        const messages = await postfix.waitForMessages('alice', all.length);
        for (const c of all) {
            const received = postfixReceived(messages, c.id);
            const helo = c.helo.replace(/\./g, '\\.');
            const addr = c.addr.replace(/\./g, '\\.');
            assert.match(received, new RegExp(`^Received: from ${helo} \\(\\S+ \\[${addr}\\]\\) by postfix\\.test `));
        }
        // every upstream connection carried one client, passed on by one XCLIENT (Postfix counts
        // the attempts after the slash: `xclient=0/1`, as a successful XCLIENT restarts its counts)
        // Postfix logs a session's disconnect after it queued the message: wait for every client's
        const disconnected = (text: string, addr: string): boolean =>
            new RegExp(
                `postfix/mailwarden/smtpd\\[\\d+\\]: disconnect from \\S+\\[${addr.replace(/\./g, '\\.')}\\]`,
            ).test(text);
        await until('Postfix logged every client disconnecting', async () => {
            const text = await postfix.log();
            return all.every((c) => disconnected(text, c.addr));
        });
        const log = await postfix.log();
        assert.doesNotMatch(log, /improper command pipelining/);
        const disconnects = log
            .split('\n')
            .filter((l) => /postfix\/mailwarden\/smtpd\[\d+\]: disconnect from /.test(l));
        assert.ok(disconnects.length >= all.length, log);
        for (const l of disconnects.filter((d) => / xclient=/.test(d))) assert.match(l, / xclient=(?:1|\d+\/1) /, l);
        for (const c of all) {
            assert.equal(
                disconnects.filter((l) => l.includes(`[${c.addr}]`)).length,
                1,
                `one upstream connection for ${c.addr}`,
            );
        }
        // the first connection greeted before XCLIENT (Postfix counts both EHLOs); the later
        // ones sent XCLIENT right after the greeting, with the attributes the first one learnt
        const ehlos = (addr: string): string | undefined =>
            / ehlo=(\d+) /.exec(disconnects.find((l) => l.includes(`[${addr}]`)) ?? '')?.[1];
        assert.equal(ehlos(all[0]!.addr), '2');
        for (const c of all.slice(1)) assert.equal(ehlos(c.addr), '1', c.addr);
    });

    it('keeps one client on its connection for several messages', async () => {
        const before = (await postfix.messages('alice')).length;
        const c = await smtpConnect(mw.port(), { localAddress: '127.0.0.7' });
        try {
            assert.equal((await c.greeting()).code, 220);
            assert.equal((await c.cmd('EHLO sixth-client.example')).code, 250);
            for (const id of ['again-1', 'again-2']) {
                assert.equal((await c.cmd('MAIL FROM:<sender@sender.test>')).code, 250);
                assert.equal((await c.cmd('RCPT TO:<alice@example.test>')).code, 250);
                assert.equal((await c.cmd('DATA')).code, 354);
                c.write(message(id) + '.\r\n');
                assert.equal((await c.reply()).code, 250);
            }
            await c.cmd('QUIT');
        } finally {
            c.close();
        }
        const messages = await postfix.waitForMessages('alice', before + 2);
        for (const id of ['again-1', 'again-2']) {
            assert.match(
                postfixReceived(messages, id),
                /^Received: from sixth-client\.example \(\S+ \[127\.0\.0\.7\]\) by postfix\.test /,
            );
        }
        let log = '';
        for (let i = 0; i < 50 && !/disconnect from \S+\[127\.0\.0\.7\]/.test(log); i++) {
            await new Promise((r) => setTimeout(r, 100));
            log = await postfix.log();
        }
        assert.match(log, /disconnect from \S+\[127\.0\.0\.7\] .*xclient=(?:1|\d+\/1) mail=2 /);
    });

    it('Postfix refuses a second XCLIENT on one connection: a connection never serves a second client', async () => {
        const c = await smtpConnect(postfix.port);
        try {
            assert.equal((await c.greeting()).code, 220);
            assert.equal((await c.cmd('EHLO mx.test')).code, 250);
            const first = await c.cmd('XCLIENT NAME=[UNAVAILABLE] ADDR=192.0.2.10 PORT=1111 PROTO=ESMTP HELO=a.test');
            assert.equal(first.code, 220);
            assert.equal((await c.cmd('EHLO a.test')).code, 250);
            // outside a transaction, as reuse would send it
            assert.equal((await c.cmd('RSET')).code, 250);
            const second = await c.cmd('XCLIENT NAME=[UNAVAILABLE] ADDR=192.0.2.11 PORT=2222 PROTO=ESMTP HELO=b.test');
            assert.equal(second.code, 550, second.raw);
            await c.cmd('QUIT');
        } finally {
            c.close();
        }
    });

    it('Postfix ends the session when EHLO is pipelined behind XCLIENT: the EHLO waits for the new 220', async () => {
        const c = await smtpConnect(postfix.port);
        try {
            assert.equal((await c.greeting()).code, 220);
            assert.equal((await c.cmd('EHLO mx.test')).code, 250);
            c.write('XCLIENT NAME=[UNAVAILABLE] ADDR=192.0.2.12 PORT=3333 PROTO=ESMTP HELO=c.test\r\nEHLO c.test\r\n');
            assert.equal((await c.reply()).code, 554);
            await c.waitClosed();
        } finally {
            c.close();
        }
    });
});

describe("Postfix's client-name restrictions judge the client's names", () => {
    let gateway: PostfixGateway;
    let postfix: PostfixInstance;
    let mw: TestApp;

    before(async () => {
        gateway = await startPostfixGateway(
            {
                mainCf: {
                    // Postfix's default, off in the test instance: Postfix looks up the name of
                    // its peer (mailwarden, 127.0.0.1 is localhost), which XCLIENT must replace
                    smtpd_peername_lookup: 'yes',
                    smtpd_client_restrictions: [
                        'check_reverse_client_hostname_access inline:{{dyn.isp.example=REJECT dynamic reverse name}}',
                        'reject_unknown_reverse_client_hostname',
                        'reject_unknown_client_hostname',
                    ].join(', '),
                    // 550 rather than the default 450: a name unknown for good and one unknown
                    // for now get different answers
                    unknown_client_reject_code: '550',
                },
            },
            ['{ name: mx, host: 127.0.0.1, port: 0, mode: mx }'],
            {
                '2.0.0.127.in-addr.arpa': { PTR: ['mail2.good.example.'] },
                'mail2.good.example': { A: ['127.0.0.2'] },
                // 127.0.0.3 has no PTR record (NXDOMAIN)
                '4.0.0.127.in-addr.arpa': { PTR: ['4-0-0-127.dyn.isp.example.'] },
                '5.0.0.127.in-addr.arpa': { SERVFAIL: true },
                '6.0.0.127.in-addr.arpa': { PTR: ['mail6.slow.example.'] },
                'mail6.slow.example': { SERVFAIL: true },
            },
        );
        ({ postfix, mw } = gateway);
    });
    after(async () => {
        await gateway?.close();
    });

    /** What the client hears for its recipient, and Postfix's log line refusing it, if any. */
    const send = async (addr: string): Promise<{ rcpt: string; refused: string | undefined }> => {
        const result = await sendMail(mw.port(), {
            from: 'sender@sender.test',
            to: ['alice@example.test'],
            data: message(`names-${addr}`),
            helo: 'client.example',
            localAddress: addr,
        });
        const rcpt = result.rcpt[0]!;
        const refusal = async (): Promise<string | undefined> =>
            (await postfix.log()).split('\n').find((l) => l.includes(`NOQUEUE: reject: RCPT from unknown[${addr}]`));
        // Postfix's log lines are written after the reply, by another process
        if (rcpt.code !== 250)
            await until(`Postfix logged refusing ${addr}`, async () => (await refusal()) !== undefined);
        return { rcpt: `${rcpt.code} ${rcpt.text.split(' ')[0]}`, refused: await refusal() };
    };

    it('lets a forward-confirmed client through', async () => {
        const { rcpt, refused } = await send('127.0.0.2');
        assert.equal(rcpt, '250 2.1.5');
        assert.equal(refused, undefined);
        const messages = await postfix.waitForMessages('alice', 1);
        assert.match(
            postfixReceived(messages, 'names-127.0.0.2'),
            /^Received: from client\.example \(mail2\.good\.example \[127\.0\.0\.2\]\)/,
        );
    });

    it('refuses a client without a reverse name as reject_unknown_reverse_client_hostname does', async () => {
        const { rcpt, refused } = await send('127.0.0.3');
        assert.equal(rcpt, '550 5.7.1');
        assert.match(
            refused ?? '',
            /: 550 5\.7\.1 Client host rejected: cannot find your reverse hostname, \[127\.0\.0\.3\]/,
        );
    });

    it('looks the unconfirmed reverse name up in check_reverse_client_hostname_access', async () => {
        const { rcpt, refused } = await send('127.0.0.4');
        assert.equal(rcpt, '554 5.7.1');
        assert.match(refused ?? '', /: 554 5\.7\.1 <4-0-0-127\.dyn\.isp\.example>: .*dynamic reverse name/);
    });

    it('answers 4xx when the PTR lookup failed at mailwarden (SERVFAIL)', async () => {
        const { rcpt, refused } = await send('127.0.0.5');
        assert.equal(rcpt, '450 4.7.1');
        assert.match(
            refused ?? '',
            /: 450 4\.7\.1 Client host rejected: cannot find your reverse hostname, \[127\.0\.0\.5\]/,
        );
    });

    it('answers 4xx when the address lookup of the PTR name failed at mailwarden (SERVFAIL)', async () => {
        const { rcpt, refused } = await send('127.0.0.6');
        assert.equal(rcpt, '450 4.7.25');
        assert.match(refused ?? '', /: 450 4\.7\.25 Client host rejected: cannot find your hostname, \[127\.0\.0\.6\]/);
    });
});
