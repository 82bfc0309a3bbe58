// The adapter's own record of open connections (MailwardenSmtpServer, by session id): a closed
// connection is forgotten whether it stayed plain or moved to TLS with STARTTLS (smtp-server's
// upgrade removes every listener of the plain socket, so a forget tied to that socket's close
// event never ran and each STARTTLS session stayed in memory), and its network slot is given back.
// A command line the client never ended with CRLF is not run when it closes its side.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { createLogger } from '../../src/log.ts';
import { createMetrics } from '../../src/metrics.ts';
import { MailwardenSmtpServer } from '../../src/smtp-server/adapter.ts';
import { smtpConnect } from '../helpers/smtp-client.ts';
import { createTestCertificate, type TestCertificate } from '../helpers/tls-cert.ts';

let cert: TestCertificate;
let server: MailwardenSmtpServer;
let port: number;
/** The reverse paths of the MAIL FROM commands the server ran. */
const mailFrom: string[] = [];

before(async () => {
    cert = await createTestCertificate();
    server = new MailwardenSmtpServer(
        {
            key: cert.key,
            cert: cert.cert,
            authOptional: true,
            disabledCommands: ['AUTH'],
            logger: false,
            onMailFrom(address, _session, callback) {
                if (address) mailFrom.push(address.address);
                callback();
            },
        },
        {
            listener: 'mx',
            submission: false,
            trustProxy: () => false,
            proxyEnabled: false,
            maxClientsPerNetwork: 100,
            preTransactionTimeoutMs: 60_000,
            socketTimeoutMs: 60_000,
            log: createLogger('silent'),
            metrics: createMetrics('test'),
        },
    );
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.server.address() as { port: number }).port;
});

after(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    cert.cleanup();
});

/** Waits until the server knows `n` connections (closes reach it a moment after the client's). */
async function known(n: number): Promise<void> {
    for (let i = 0; i < 100 && server.knownConnections !== n; i++) await sleep(20);
    assert.equal(server.knownConnections, n);
}

describe('open connections by session id', () => {
    it('forgets a closed connection, plain or after STARTTLS, and gives its network slot back', async () => {
        for (let i = 0; i < 5; i++) {
            const plain = await smtpConnect(port);
            await plain.greeting();
            await plain.cmd('EHLO client.example');
            const secure = await smtpConnect(port);
            await secure.greeting();
            await secure.cmd('EHLO client.example');
            assert.equal((await secure.starttls({ ca: cert.cert, servername: 'localhost' })).code, 220);
            assert.equal((await secure.cmd('EHLO client.example')).code, 250);
            await known(2);
            plain.close();
            await secure.cmd('QUIT');
            secure.close();
            await known(0);
        }
        assert.equal(server.networkConnections('127.0.0.1'), 0);
    });
});

describe('the end of input', () => {
    it('runs no command line left without its CRLF when the client closes its side (RFC 5321 section 2.3.8)', async () => {
        const c = await smtpConnect(port);
        await c.greeting();
        assert.equal((await c.cmd('EHLO client.example')).code, 250);
        assert.equal((await c.cmd('MAIL FROM:<ended@sender.example>')).code, 250);
        assert.equal((await c.cmd('RSET')).code, 250);
        c.write('MAIL FROM:<unended@sender.example>');
        c.socket.end();
        await c.waitClosed();
        // the server ran whatever it would at the end of input before its connection closed
        await known(0);
        assert.deepEqual(mailFrom, ['ended@sender.example']);
    });
});
