/**
 * Hostile openings on a plain SMTP port, end to end through the real listener: an HTTP
 * request (GET, POST, CONNECT, as a browser, a scanner or a cross-protocol page sends them)
 * and a TLS ClientHello (a client that expected implicit TLS) close the connection at once,
 * without a reply to them, with a log line and a count, before anything reaches the upstream.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import { startScriptedGateway, type ScriptedGateway, type TestApp } from '../helpers/app.ts';

/** Connects, waits for the greeting, sends `bytes`; resolves with what came after the greeting and how long the close took. */
async function open(port: number, bytes: Buffer | string): Promise<{ after: string; ms: number }> {
    const socket = net.connect(port, '127.0.0.1');
    let text = '';
    let sentAt = 0;
    let greetingEnd = -1;
    return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`still open: ${JSON.stringify(text)}`)), 3000);
        socket.on('data', (d: Buffer) => {
            text += d.toString('latin1');
            if (greetingEnd < 0 && text.includes('\r\n')) {
                greetingEnd = text.indexOf('\r\n') + 2;
                sentAt = performance.now();
                socket.write(bytes);
            }
        });
        socket.on('error', () => undefined);
        socket.on('close', () => {
            clearTimeout(timer);
            resolve({ after: text.slice(Math.max(greetingEnd, 0)), ms: performance.now() - sentAt });
        });
    });
}

describe('foreign protocols on the SMTP port', () => {
    let gateway: ScriptedGateway;
    let mw: TestApp;
    before(async () => {
        gateway = await startScriptedGateway([
            'hostname: mx.example.test',
            'domains: [example.test]',
            'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
        ]);
        mw = gateway.mw;
    });
    after(async () => {
        await gateway.close();
    });

    const count = async (kind: string): Promise<number> =>
        (await mw.app.metrics.foreignProtocol.get()).values.find((v) => v.labels.kind === kind)?.value ?? 0;

    for (const [name, request] of [
        ['GET', 'GET / HTTP/1.1\r\nHost: mx.example.test\r\n\r\n'],
        ['POST', 'POST /form HTTP/1.1\r\nHost: mx.example.test\r\nContent-Length: 4\r\n\r\nEHLO'],
        ['CONNECT', 'CONNECT mx.example.test:25 HTTP/1.1\r\nHost: mx.example.test:25\r\n\r\n'],
    ] as const) {
        it(`closes a connection that sends an HTTP ${name} request, at once and without a reply`, async () => {
            const before = await count('http');
            const r = await open(mw.port(), request);
            assert.equal(r.after, '', 'nothing is answered');
            assert.ok(r.ms < 1000, `closed after ${r.ms.toFixed(0)} ms`);
            assert.equal(await count('http'), before + 1);
            const line = mw.logs.findLast((l) => l.msg === 'connection closed: HTTP request on the SMTP port');
            assert.ok(line, 'logged');
            assert.equal(line.client, '127.0.0.1');
            assert.equal(line.listener, 'mx');
        });
    }

    it('closes a connection that starts a TLS handshake on the plain port, at once', async () => {
        const before = await count('tls');
        const socket = net.connect(mw.port(), '127.0.0.1');
        await new Promise((resolve) => socket.once('data', resolve)); // the greeting
        const started = performance.now();
        const client = tls.connect({ socket, rejectUnauthorized: false, servername: 'mx.example.test' });
        const outcome = await new Promise<string>((resolve) => {
            client.once('secureConnect', () => resolve('handshake completed'));
            client.once('error', (err: Error) => resolve(`error: ${err.message}`));
            client.once('close', () => resolve('closed'));
        });
        const ms = performance.now() - started;
        client.destroy();
        assert.notEqual(outcome, 'handshake completed');
        assert.ok(ms < 1000, `closed after ${ms.toFixed(0)} ms (${outcome})`);
        assert.equal(await count('tls'), before + 1);
        assert.ok(mw.logs.some((l) => l.msg === 'connection closed: TLS handshake on the SMTP port'));
    });

    it('still serves SMTP, and nothing of the above reached the upstream', async () => {
        const before = gateway.up.connections.length;
        const r = await open(mw.port(), 'QUIT\r\n');
        assert.match(r.after, /^221 /);
        assert.equal(gateway.up.connections.length, before);
    });
});
