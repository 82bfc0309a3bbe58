/**
 * Checks the Postfix test peer itself, without mailwarden: XCLIENT from loopback is honoured,
 * mail for a listed recipient lands in its Maildir, an unlisted recipient is refused at RCPT
 * time, and the documented quarantine header_checks entry puts a message on hold.
 * It must not depend on any mailwarden code, so a failure here points at the test peer.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startPostfix, type PostfixInstance } from '../helpers/postfix.ts';
import { sendMail, smtpConnect } from '../helpers/smtp-client.ts';

describe('Postfix test peer', () => {
    let postfix: PostfixInstance;
    before(async () => {
        postfix = await startPostfix();
    });
    after(async () => {
        await postfix?.stop();
    });

    it('takes the client from XCLIENT and delivers to the Maildir', async () => {
        const c = await smtpConnect(postfix.port);
        try {
            assert.equal((await c.greeting()).code, 220);
            const ehlo = await c.cmd('EHLO proxy.example');
            assert.ok(
                ehlo.lines.some((l) => l.startsWith('XCLIENT')),
                ehlo.text,
            );
            const xclient = await c.cmd('XCLIENT ADDR=192.0.2.10 NAME=[UNAVAILABLE] HELO=client.example PROTO=ESMTP');
            assert.equal(xclient.code, 220, xclient.text);
            assert.equal((await c.cmd('EHLO client.example')).code, 250);
            assert.equal((await c.cmd('MAIL FROM:<sender@sender.test>')).code, 250);
            assert.equal((await c.cmd('RCPT TO:<alice@example.test>')).code, 250);
            assert.equal((await c.cmd('DATA')).code, 354);
            c.write('From: sender@sender.test\r\nTo: alice@example.test\r\nSubject: harness\r\n\r\nhello\r\n.\r\n');
            const queued = await c.reply();
            assert.equal(queued.code, 250, queued.text);
            await c.cmd('QUIT');
        } finally {
            c.close();
        }
        const [message] = await postfix.waitForMessages('alice', 1);
        assert.ok(message);
        assert.match(message, /^Received: from client\.example \(unknown \[192\.0\.2\.10\]\)\n\s+by postfix\.test/m);
        assert.match(message, /^Subject: harness$/m);
        assert.match(await postfix.log(), /client=unknown\[192\.0\.2\.10\]/);
    });

    it('refuses an unknown recipient at RCPT with 550 5.1.1', async () => {
        const result = await sendMail(postfix.port, {
            from: 'sender@sender.test',
            to: ['nobody@example.test'],
            data: 'Subject: nobody\r\n\r\nhello\r\n',
        });
        const [rcpt] = result.rcpt;
        assert.equal(rcpt?.code, 550);
        assert.match(rcpt.text, /^5\.1\.1 /);
        assert.equal(result.data, undefined);
    });

    it('holds a message carrying X-Mailwarden-Quarantine', async () => {
        const result = await sendMail(postfix.port, {
            from: 'sender@sender.test',
            to: ['bob@example.test'],
            data: 'X-Mailwarden-Quarantine: q1\r\nSubject: quarantined\r\n\r\nhello\r\n',
        });
        assert.equal(result.message?.code, 250, result.message?.text);
        const queueId = /queued as (\w+)/.exec(result.message.text)?.[1];
        assert.ok(queueId, result.message.text);
        assert.deepEqual(await postfix.held(), [queueId]);
        assert.deepEqual(await postfix.messages('bob'), []);
    });
});
