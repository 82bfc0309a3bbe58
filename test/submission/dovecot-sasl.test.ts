// The Dovecot SASL client and backend against a real Dovecot (auth service only, TCP and unix
// socket): right and wrong passwords, canonical user names, many requests on one connection,
// Dovecot stopped; and against scripted loopback servers: garbage, silence, FAIL temp, no PLAIN,
// a server that drops kept connections (reconnect), and the sendAs file.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
    createDovecotBackend,
    createDovecotClient,
    tabEscape,
    tabUnescape,
} from '../../src/submission/dovecot-sasl.ts';
import { mayUse } from '../../src/submission/sender-policy.ts';
import { startDovecot, type DovecotInstance } from '../helpers/dovecot.ts';
import { freePort } from '../helpers/smtp-client.ts';

const CONTEXT = { localIp: '127.0.0.1', localPort: 587, remoteIp: '192.0.2.10', remotePort: 40000 };
/** Dovecot delays failures per client IP (its auth penalty): each real-Dovecot test uses its own IP. */
let nextIp = 20;
const fresh = (): typeof CONTEXT => ({ ...CONTEXT, remoteIp: `192.0.2.${nextIp++}` });

describe('Dovecot SASL against a real Dovecot', () => {
    let dovecot: DovecotInstance;
    before(async () => {
        dovecot = await startDovecot({
            users: [
                { login: 'alice@example.com', password: 'alice-pw' },
                { login: 'bob@example.com', password: 'bob pw ✓', scheme: 'SHA512-CRYPT' },
            ],
        });
    });
    after(() => dovecot.stop());

    it('accepts right passwords and refuses wrong ones over TCP', async () => {
        const client = createDovecotClient({ address: { kind: 'tcp', host: '127.0.0.1', port: dovecot.port } });
        try {
            assert.deepEqual(await client.authenticate('alice@example.com', 'alice-pw', fresh()), {
                result: 'ok',
                user: 'alice@example.com',
            });
            assert.equal((await client.authenticate('bob@example.com', 'bob pw ✓', fresh())).result, 'ok');
            assert.equal((await client.authenticate('alice@example.com', 'wrong', fresh())).result, 'invalid');
            assert.equal((await client.authenticate('bob@example.com', 'bob pw', fresh())).result, 'invalid');
            assert.equal((await client.authenticate('nobody@example.com', 'alice-pw')).result, 'invalid');
            assert.equal((await client.authenticate('alice@example.com', 'alice-pw\0x')).result, 'invalid');
        } finally {
            client.close();
        }
    });

    it('runs many requests on one connection over the unix socket', async () => {
        const backend = createDovecotBackend({ address: { kind: 'unix', path: dovecot.socket }, sendAs: null });
        try {
            const attempts = Array.from({ length: 20 }, (_, i) =>
                backend.verify('alice@example.com', i % 2 === 0 ? 'alice-pw' : 'nope', fresh()),
            );
            const results = await Promise.all(attempts);
            assert.deepEqual(
                results,
                Array.from({ length: 20 }, (_, i) => (i % 2 === 0 ? 'ok' : 'invalid')),
            );
            // without a sendAs file a login may send as itself
            const policy = backend.sendAs('alice@example.com');
            assert.equal(mayUse('alice@example.com', 'alice@example.com', policy), true);
            assert.equal(mayUse('alice@example.com', 'bob@example.com', policy), false);
        } finally {
            backend.close();
        }
    });

    it('answers unavailable, quickly, once Dovecot is gone', async () => {
        const extra = await startDovecot({ users: [{ login: 'carol', password: 'c' }] });
        const tcp = createDovecotClient({ address: { kind: 'tcp', host: '127.0.0.1', port: extra.port } });
        const unix = createDovecotClient({ address: { kind: 'unix', path: extra.socket } });
        try {
            assert.equal((await tcp.authenticate('carol', 'c')).result, 'ok');
            assert.equal((await unix.authenticate('carol', 'c')).result, 'ok');
            await extra.stop();
            for (const client of [tcp, unix]) {
                const started = Date.now();
                const outcome = await client.authenticate('carol', 'c');
                assert.equal(outcome.result, 'unavailable');
                assert.ok(Date.now() - started < 1000, `took ${Date.now() - started} ms`);
            }
        } finally {
            tcp.close();
            unix.close();
            await extra.stop();
        }
    });
});

/** A loopback server that answers each connection with `handler`. */
async function scriptedServer(
    handler: (socket: net.Socket, lines: AsyncIterable<string>) => void,
): Promise<{ port: number; connections: number; close: () => Promise<void> }> {
    const sockets = new Set<net.Socket>();
    const state = { connections: 0 };
    const server = net.createServer((socket) => {
        state.connections++;
        sockets.add(socket);
        socket.on('close', () => sockets.delete(socket));
        socket.on('error', () => {});
        socket.setEncoding('utf8');
        async function* lines(): AsyncIterable<string> {
            let buffer = '';
            for await (const chunk of socket) {
                buffer += chunk as string;
                let nl: number;
                while ((nl = buffer.indexOf('\n')) >= 0) {
                    yield buffer.slice(0, nl);
                    buffer = buffer.slice(nl + 1);
                }
            }
        }
        handler(socket, lines());
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as net.AddressInfo).port;
    return {
        port,
        get connections() {
            return state.connections;
        },
        close: () =>
            new Promise<void>((resolve) => {
                for (const s of sockets) s.destroy();
                server.close(() => resolve());
            }),
    };
}

const HANDSHAKE = 'VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nSPID\t1\nCUID\t1\nCOOKIE\t00\nDONE\n';

/** Answers AUTH lines with `reply(id, login, password)`. */
function fakeDovecot(
    reply: (id: string, login: string, password: string, line: string) => string | null,
    opts: { closeAfterReply?: boolean } = {},
) {
    return scriptedServer((socket, lines) => {
        socket.write(HANDSHAKE);
        void (async () => {
            try {
                for await (const line of lines) {
                    const f = line.split('\t');
                    if (f[0] !== 'AUTH') continue;
                    const resp = f.find((x) => x.startsWith('resp='))?.slice(5) ?? '';
                    const [, login = '', password = ''] = Buffer.from(resp, 'base64').toString('utf8').split('\0');
                    const answer = reply(f[1] ?? '', login, password, line);
                    if (answer !== null) socket.write(answer);
                    if (opts.closeAfterReply) socket.end();
                }
            } catch {
                // the connection was closed under the reader
            }
        })();
    });
}

describe('Dovecot SASL against scripted servers', () => {
    it('sends the AUTH line Postfix sends, with escaped context', async () => {
        const seen: string[] = [];
        const server = await fakeDovecot((id, login, _password, line) => {
            seen.push(line);
            return `OK\t${id}\tuser=${tabEscape(login.toUpperCase())}\n`;
        });
        const client = createDovecotClient({ address: { kind: 'tcp', host: '127.0.0.1', port: server.port } });
        try {
            const outcome = await client.authenticate('a\tb', 'pw', CONTEXT);
            assert.deepEqual(outcome, { result: 'ok', user: 'A\tB' });
            assert.match(
                seen[0] ?? '',
                /^AUTH\t\d+\tPLAIN\tservice=smtp\tnologin\tlip=127\.0\.0\.1\trip=192\.0\.2\.10\tlport=587\trport=40000\tsecured\tresp=[A-Za-z0-9+/=]+$/,
            );
            assert.equal(Buffer.from(/resp=(.*)$/.exec(seen[0] ?? '')?.[1] ?? '', 'base64').toString(), '\0a\tb\0pw');
            assert.equal(tabUnescape(tabEscape('x\x01\t\r\ny')), 'x\x01\t\r\ny');
        } finally {
            client.close();
            await server.close();
        }
    });

    it('treats FAIL temp as unavailable and FAIL as invalid', async () => {
        const server = await fakeDovecot((id, login) =>
            login === 'temp' ? `FAIL\t${id}\ttemp\treason=database down\n` : `FAIL\t${id}\tuser=${login}\n`,
        );
        const client = createDovecotClient({ address: { kind: 'tcp', host: '127.0.0.1', port: server.port } });
        try {
            assert.deepEqual(await client.authenticate('temp', 'x'), {
                result: 'unavailable',
                reason: 'database down',
            });
            assert.equal((await client.authenticate('alice', 'x')).result, 'invalid');
        } finally {
            client.close();
            await server.close();
        }
    });

    it('reconnects when the server drops a kept connection', async () => {
        const server = await fakeDovecot((id) => `OK\t${id}\n`, { closeAfterReply: true });
        const client = createDovecotClient({ address: { kind: 'tcp', host: '127.0.0.1', port: server.port } });
        try {
            for (let i = 0; i < 3; i++) {
                assert.equal((await client.authenticate('a', 'b')).result, 'ok');
                await new Promise((r) => setTimeout(r, 20));
            }
            assert.equal(server.connections, 3);
        } finally {
            client.close();
            await server.close();
        }
    });

    const unavailable: [string, (socket: net.Socket) => void, string][] = [
        ['an SMTP server', (s) => s.write('220 mail.example.com ESMTP\r\n'), 'version 1'],
        ['an HTTP server', (s) => s.end('HTTP/1.1 400 Bad Request\r\n\r\n'), 'version 1'],
        ['a server without PLAIN', (s) => s.write('VERSION\t1\t2\nMECH\tCRAM-MD5\nDONE\n'), 'PLAIN'],
        ['a server that closes at once', (s) => s.end(), 'closed'],
        ['a protocol version 2 server', (s) => s.write('VERSION\t2\t0\n'), 'version 1'],
        ['a server that answers with nonsense', (s) => s.write(`${HANDSHAKE}BOGUS\tline\n`), 'unexpected'],
        ['binary garbage', (s) => s.write(Buffer.alloc(70_000, 0xff)), 'protocol'],
    ];
    for (const [name, behave, reason] of unavailable) {
        it(`answers unavailable for ${name}`, async () => {
            const server = await scriptedServer((socket) => behave(socket));
            const client = createDovecotClient({
                address: { kind: 'tcp', host: '127.0.0.1', port: server.port },
                connectTimeoutMs: 500,
                timeoutMs: 500,
            });
            try {
                const started = Date.now();
                const outcome = await client.authenticate('alice', 'pw');
                assert.equal(outcome.result, 'unavailable');
                assert.ok(Date.now() - started < 2000);
                if (reason !== 'protocol') assert.match(outcome.reason ?? '', new RegExp(reason, 'i'));
            } finally {
                client.close();
                await server.close();
            }
        });
    }

    it('answers unavailable when the server says nothing (handshake and answer timeouts)', async () => {
        const silent = await scriptedServer(() => {});
        const mute = await fakeDovecot(() => null);
        const a = createDovecotClient({
            address: { kind: 'tcp', host: '127.0.0.1', port: silent.port },
            connectTimeoutMs: 200,
        });
        const b = createDovecotClient({ address: { kind: 'tcp', host: '127.0.0.1', port: mute.port }, timeoutMs: 200 });
        try {
            assert.deepEqual(await a.authenticate('x', 'y'), {
                result: 'unavailable',
                reason: 'timed out connecting to Dovecot',
            });
            assert.deepEqual(await b.authenticate('x', 'y'), {
                result: 'unavailable',
                reason: 'Dovecot did not answer in time',
            });
        } finally {
            a.close();
            b.close();
            await silent.close();
            await mute.close();
        }
    });

    it('answers unavailable when nothing listens', async () => {
        const port = await freePort();
        const tcp = createDovecotClient({ address: { kind: 'tcp', host: '127.0.0.1', port } });
        const unix = createDovecotClient({
            address: { kind: 'unix', path: path.join(os.tmpdir(), 'mw-no-such-socket') },
        });
        try {
            assert.equal((await tcp.authenticate('x', 'y')).result, 'unavailable');
            assert.equal((await unix.authenticate('x', 'y')).result, 'unavailable');
        } finally {
            tcp.close();
            unix.close();
        }
    });

    it('takes sender bindings from the sendAs file', async () => {
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mw-sendas-'));
        const file = path.join(dir, 'sendas.yaml');
        fs.writeFileSync(file, 'users:\n  - login: alice\n    sendAs: [alice@example.com, "@example.org"]\n');
        const server = await fakeDovecot((id) => `OK\t${id}\n`);
        const backend = createDovecotBackend({
            address: { kind: 'tcp', host: '127.0.0.1', port: server.port },
            sendAs: file,
            watch: false,
        });
        try {
            assert.equal(await backend.verify('alice', 'pw'), 'ok');
            const policy = backend.sendAs('alice');
            assert.equal(mayUse('alice', 'alice+x@example.com', policy), true);
            assert.equal(mayUse('alice', 'z@example.org', policy), true);
            assert.equal(mayUse('alice', 'alice@example.net', policy), false);
            fs.writeFileSync(file, 'users:\n  - login: alice\n    password: "$2y$10$abc"\n');
            assert.throws(() => backend.reload(), /passwords are checked by Dovecot/);
            assert.equal(
                mayUse('alice', 'z@example.org', backend.sendAs('alice')),
                true,
                'the old file stays in force',
            );
        } finally {
            backend.close();
            await server.close();
            fs.rmSync(dir, { recursive: true, force: true });
        }
    });
});
