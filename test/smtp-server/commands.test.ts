/**
 * The command gate wraps smtp-server internals, so this fails loudly when an upgrade changes
 * them: the pinned version is the one the gate was written for, the wrapped method exists with
 * its arity, and on a real smtp-server the gate runs before each command of a logged-in session
 * only (not before AUTH, not for the continuation lines of AUTH LOGIN, not for QUIT), and a
 * 421 from it is sent instead of the command and closes the connection.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import type { SMTPServerSession } from 'smtp-server';
import { SMTPServer } from '../../src/smtp-server/library.ts';
import {
    checkCommandGateSupport,
    gateConnectionCommands,
    GATED_SMTP_SERVER,
    type GatedSession,
} from '../../src/smtp-server/commands.ts';
import { smtpConnect } from '../helpers/smtp-client.ts';

const b64 = (text: string): string => Buffer.from(text).toString('base64');

describe('smtp-server command gate', () => {
    const seen: string[] = [];
    let endSession = false;
    let server: SMTPServer;
    let port = 0;

    before(async () => {
        class Gated extends SMTPServer {
            override connect(
                socket: Parameters<SMTPServer['connect']>[0],
                options?: Parameters<SMTPServer['connect']>[1],
            ) {
                super.connect(socket, options);
                const connection = [...(this as unknown as { connections: Set<unknown> }).connections].at(-1);
                gateConnectionCommands(connection, (session: GatedSession, command: string) => {
                    seen.push(`${session.id.length > 0 ? 'session' : '?'} ${command}`);
                    return endSession ? { code: 421, enhanced: '4.7.0', text: 'gone' } : null;
                });
            }
        }
        server = new Gated({
            authOptional: true,
            allowInsecureAuth: true,
            disabledCommands: ['STARTTLS'],
            authMethods: ['PLAIN', 'LOGIN'],
            logger: false,
            onAuth(auth, _session: SMTPServerSession, cb) {
                cb(null, auth.password === 'pw' ? { user: auth.username } : undefined);
            },
        });
        await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
        const address = server.server.address();
        port = typeof address === 'object' && address ? address.port : 0;
    });
    after(async () => {
        await new Promise<void>((resolve) => server.close(() => resolve()));
    });

    it('is written for the pinned smtp-server, whose internals it wraps are present', () => {
        const pkg = JSON.parse(
            readFileSync(new URL('../../node_modules/smtp-server/package.json', import.meta.url), 'utf8'),
        ) as {
            version: string;
        };
        assert.ok(
            pkg.version.startsWith(`${GATED_SMTP_SERVER}.`),
            `smtp-server ${pkg.version} is installed; src/smtp-server/commands.ts wraps internals of ${GATED_SMTP_SERVER}.x: ` +
                're-read SMTPConnection._onCommand and the AUTH handlers, then update GATED_SMTP_SERVER',
        );
        assert.doesNotThrow(() => checkCommandGateSupport());
    });

    it('runs before each command of a logged-in session only, never for AUTH lines or QUIT', async () => {
        const c = await smtpConnect(port);
        await c.greeting();
        await c.cmd('EHLO client.example');
        assert.equal((await c.cmd('NOOP')).code, 250);
        assert.equal((await c.cmd('AUTH LOGIN')).code, 334);
        assert.equal((await c.cmd(b64('alice'))).code, 334);
        assert.equal((await c.cmd(b64('pw'))).code, 235);
        assert.deepEqual(seen, [], 'nothing before the login');
        assert.equal((await c.cmd('NOOP')).code, 250);
        assert.equal((await c.cmd('MAIL FROM:<a@example.test>')).code, 250);
        assert.equal((await c.cmd('QUIT')).code, 221);
        await c.waitClosed();
        assert.deepEqual(seen, ['session NOOP', 'session MAIL']);
    });

    it('sends the reply of the gate instead of the command, and a 421 closes the connection', async () => {
        const c = await smtpConnect(port);
        await c.greeting();
        await c.cmd('EHLO client.example');
        assert.equal((await c.cmd(`AUTH PLAIN ${b64('\0alice\0pw')}`)).code, 235);
        endSession = true;
        const r = await c.cmd('MAIL FROM:<a@example.test>');
        assert.equal(r.raw, '421 4.7.0 gone\r\n');
        await c.waitClosed();
        endSession = false;
    });
});
