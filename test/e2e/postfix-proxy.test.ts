/**
 * End-to-end through mailwarden into a real Postfix: a message lands in the Maildir, Postfix
 * sees the proxy's client (not the proxy) through XCLIENT, both Received lines and the
 * verdict header are there, and Postfix's per-recipient 550 is relayed at RCPT time while
 * the other recipient still gets the message. DNS stays on loopback (every name NXDOMAIN)
 * and the rules folder is empty, so the outcome depends on the transport alone.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { TestApp } from '../helpers/app.ts';
import type { PostfixInstance } from '../helpers/postfix.ts';
import { startPostfixGateway, unfold, type PostfixGateway } from '../helpers/postfix-gateway.ts';
import { sendMail, smtpConnect } from '../helpers/smtp-client.ts';
import { formatProxyHeader, V2_SIGNATURE } from '../../src/net/proxy-protocol.ts';

const MESSAGE =
    'From: Sender <sender@sender.test>\r\nTo: alice@example.test\r\nSubject: through the proxy\r\n' +
    'Message-ID: <proxy-1@sender.test>\r\n\r\nHello Alice.\r\n';

describe('mailwarden in front of Postfix', () => {
    let gateway: PostfixGateway;
    let postfix: PostfixInstance;
    let mw: TestApp;

    before(async () => {
        // as Debian's Postfix: with IPv4 only, it refuses XCLIENT ADDR=IPV6:… (501 Bad ADDR syntax)
        gateway = await startPostfixGateway({ mainCf: { inet_protocols: 'all' } }, [
            '{ name: mx, host: 127.0.0.1, port: 0, mode: mx }',
            '{ name: behind-lb, host: 127.0.0.1, port: 0, mode: mx, proxyProtocol: [127.0.0.1/32], preTransactionTimeout: 1s }',
            '{ name: lb-elsewhere, host: 127.0.0.1, port: 0, mode: mx, proxyProtocol: [10.0.0.0/8] }',
        ]);
        ({ postfix, mw } = gateway);
    });
    after(async () => {
        await gateway?.close();
    });

    it('delivers into the Maildir, with the real client passed to Postfix by XCLIENT', async () => {
        const result = await sendMail(mw.port(), {
            from: 'sender@sender.test',
            to: ['alice@example.test'],
            data: MESSAGE,
            helo: 'proxy-client.example',
        });
        assert.equal(result.message?.code, 250, result.message?.raw);

        const messages = await postfix.waitForMessages('alice', 1);
        const found = messages.find((m) => m.includes('<proxy-1@sender.test>'));
        assert.ok(found, 'the message is in alice/new');
        const message = unfold(found);
        const received = message.split('\n').filter((l) => l.startsWith('Received: '));
        assert.equal(received.length, 2, received.join('\n'));
        // Postfix's own Received line names the proxy's client and its HELO, not the proxy,
        // and mailwarden's comes below it.
        assert.match(
            received[0] ?? '',
            /^Received: from proxy-client\.example \(\S+ \[127\.0\.0\.1\]\) by postfix\.test /,
        );
        assert.match(
            received[1] ?? '',
            /^Received: from proxy-client\.example \(.*\[127\.0\.0\.1\]\) by mx\.test \(mailwarden\) /,
        );
        assert.match(message, /^X-Mailwarden-Verdict: accept; rules=[^;]*; score=[\d.-]+; id=\S+$/m);
        assert.match(message, /^Subject: through the proxy$/m);
        assert.match(await postfix.log(), /client=\S+\[127\.0\.0\.1\]/);
    });

    it('passes a client address that differs from the proxy (learnt by PROXY protocol) to Postfix', async () => {
        const before = (await postfix.messages('alice')).length;
        const c = await smtpConnect(mw.port('behind-lb'));
        try {
            c.write('PROXY TCP4 192.0.2.10 127.0.0.1 40001 25\r\n');
            assert.equal((await c.greeting()).code, 220);
            assert.equal((await c.cmd('EHLO far-client.example')).code, 250);
            assert.equal((await c.cmd('MAIL FROM:<sender@sender.test>')).code, 250);
            assert.equal((await c.cmd('RCPT TO:<alice@example.test>')).code, 250);
            assert.equal((await c.cmd('DATA')).code, 354);
            c.write(MESSAGE.replace('proxy-1@', 'proxy-far@') + '.\r\n');
            assert.equal((await c.reply()).code, 250);
            await c.cmd('QUIT');
        } finally {
            c.close();
        }
        const messages = await postfix.waitForMessages('alice', before + 1);
        const found = messages.find((m) => m.includes('<proxy-far@sender.test>'));
        assert.ok(found, 'delivered');
        const received = unfold(found)
            .split('\n')
            .filter((l) => l.startsWith('Received: '));
        assert.match(
            received[0] ?? '',
            /^Received: from far-client\.example \(\S+ \[192\.0\.2\.10\]\) by postfix\.test /,
        );
        assert.match(
            received[1] ?? '',
            /^Received: from far-client\.example \(.*\[192\.0\.2\.10\]\) by mx\.test \(mailwarden\) /,
        );
        assert.match(await postfix.log(), /client=\S+\[192\.0\.2\.10\]/);
    });

    /** Sends one message through behind-lb after `header`; returns the message as Postfix delivered it. */
    async function throughBalancer(header: Buffer, tag: string, helo: string): Promise<string> {
        const before = (await postfix.messages('alice')).length;
        const c = await smtpConnect(mw.port('behind-lb'));
        try {
            c.write(header);
            assert.equal((await c.greeting()).code, 220);
            assert.equal((await c.cmd(`EHLO ${helo}`)).code, 250);
            const mail = await c.cmd('MAIL FROM:<sender@sender.test>');
            assert.equal(mail.code, 250, mail.raw);
            assert.equal((await c.cmd('RCPT TO:<alice@example.test>')).code, 250);
            assert.equal((await c.cmd('DATA')).code, 354);
            c.write(MESSAGE.replace('proxy-1@', `${tag}@`) + '.\r\n');
            assert.equal((await c.reply()).code, 250);
            await c.cmd('QUIT');
        } finally {
            c.close();
        }
        const messages = await postfix.waitForMessages('alice', before + 1);
        const found = messages.find((m) => m.includes(`<${tag}@sender.test>`));
        assert.ok(found, 'delivered');
        return unfold(found);
    }

    it('gives Postfix the IPv4 client of a PROXY v2 header (with TLVs)', async () => {
        const header = formatProxyHeader(
            2,
            { address: '198.51.100.23', port: 40123 },
            { address: '127.0.0.1', port: 25 },
            [{ type: 0x02, value: Buffer.from('mx.test') }],
        );
        const message = await throughBalancer(header, 'proxy-v2-4', 'v2-four.example');
        assert.match(message, /^Received: from v2-four\.example \(\S+ \[198\.51\.100\.23\]\) by postfix\.test /m);
        assert.match(await postfix.log(), /client=\S+\[198\.51\.100\.23\]/);
    });

    it('gives Postfix the IPv6 client of a PROXY v2 header', async () => {
        const header = formatProxyHeader(
            2,
            { address: '2001:db8::77', port: 40124 },
            { address: '2001:db8::1', port: 25 },
        );
        const message = await throughBalancer(header, 'proxy-v2-6', 'v2-six.example');
        assert.match(message, /^Received: from v2-six\.example \(\S+ \[IPv6:2001:db8::77\]\) by postfix\.test /m);
        assert.match(await postfix.log(), /client=\S+\[2001:db8::77\]/);
    });

    it('serves a PROXY v2 LOCAL connection (a health check) as the balancer itself', async () => {
        const local = Buffer.concat([V2_SIGNATURE, Buffer.from([0x20, 0x00, 0x00, 0x00])]);
        const message = await throughBalancer(local, 'proxy-local', 'health.example');
        assert.match(message, /^Received: from health\.example \(\S+ \[127\.0\.0\.1\]\) by postfix\.test /m);
    });

    it('closes a connection whose PROXY header comes from a peer outside the trusted CIDRs', async () => {
        const c = await smtpConnect(mw.port('lb-elsewhere'));
        c.write(formatProxyHeader(2, { address: '192.0.2.66', port: 1 }, { address: '127.0.0.1', port: 25 }));
        await c.waitClosed(3000);
        const line = mw.logs.find(
            (l) => l.listener === 'lb-elsewhere' && l.msg === 'connection closed: PROXY header from an untrusted peer',
        );
        assert.ok(line, 'logged');
        assert.equal(line.client, '127.0.0.1');
        assert.doesNotMatch(await postfix.log(), /192\.0\.2\.66/);
    });

    for (const [name, bytes] of [
        [
            'a truncated v2 header',
            formatProxyHeader(2, { address: '192.0.2.7', port: 1 }, { address: '127.0.0.1', port: 25 }).subarray(0, 20),
        ],
        ['a v1 header cut before its end', Buffer.from('PROXY TCP4 192.0.2.7 127.0.0.1 1 2')],
        ['a garbled v1 header', Buffer.from('PROXY TCP4 192.0.2.999 127.0.0.1 1 25\r\nEHLO x\r\n')],
        [
            'a v2 signature with a bad version',
            Buffer.concat([V2_SIGNATURE, Buffer.from([0x31, 0x11, 0x00, 0x0c]), Buffer.alloc(12)]),
        ],
        ['plain SMTP from a balancer that should send a header', Buffer.from('EHLO x\r\n')],
    ] as const) {
        it(`closes a trusted connection that sends ${name}, within the timeout, with a log line`, async () => {
            const started = Date.now();
            const c = await smtpConnect(mw.port('behind-lb'));
            c.write(bytes);
            await c.waitClosed(3000);
            const ms = Date.now() - started;
            await assert.rejects(c.reply(50), 'no reply is written');
            assert.ok(ms < 2500, `closed after ${ms} ms`);
            const lines = mw.logs.filter((l) => l.msg === 'connection closed: no valid PROXY header');
            assert.ok(lines.length > 0);
            assert.equal(lines.at(-1)!.listener, 'behind-lb');
            assert.equal(lines.at(-1)!.client, '127.0.0.1');
        });
    }

    it("relays Postfix's 550 5.1.1 at RCPT and still delivers to the other recipient", async () => {
        const before = (await postfix.messages('alice')).length;
        const c = await smtpConnect(mw.port());
        try {
            assert.equal((await c.greeting()).code, 220);
            assert.equal((await c.cmd('EHLO proxy-client.example')).code, 250);
            assert.equal((await c.cmd('MAIL FROM:<sender@sender.test>')).code, 250);
            const alice = await c.cmd('RCPT TO:<alice@example.test>');
            assert.equal(alice.code, 250, alice.raw);
            const nobody = await c.cmd('RCPT TO:<nobody@example.test>');
            assert.equal(nobody.code, 550, nobody.raw);
            assert.match(nobody.text, /^5\.1\.1 /);
            assert.equal((await c.cmd('DATA')).code, 354);
            c.write(MESSAGE.replace('proxy-1@', 'proxy-2@') + '.\r\n');
            const queued = await c.reply();
            assert.equal(queued.code, 250, queued.raw);
            await c.cmd('QUIT');
        } finally {
            c.close();
        }
        const messages = await postfix.waitForMessages('alice', before + 1);
        const message = messages.find((m) => m.includes('<proxy-2@sender.test>'));
        assert.ok(message, 'alice got the second message');
        assert.match(message, /^Delivered-To: alice@example\.test$/m);
        assert.doesNotMatch(message, /nobody@example\.test/);
        assert.match(await postfix.log(), /reject: RCPT from \S+\[127\.0\.0\.1\]: 550 5\.1\.1 <nobody@example\.test>/);
    });
});
