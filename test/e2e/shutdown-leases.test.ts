/**
 * A stop gives every concurrency lease back to the shared store before it closes the store,
 * also the leases of clients that close their side only some time after the 421: smtp-server
 * forgets a connection when it sends the 421, while the session (and the release of its leases)
 * ended only when the client closed; a stop in between closed Redis first, and each such lease
 * counted against its client for the lease's whole TTL (10 minutes) after the restart.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startApp, type TestApp } from '../helpers/app.ts';
import { concurrencyLeases, startRedis, type RedisInstance } from '../helpers/redis.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';

const RULES = `limits:
  - { id: conc, key: client.ip, concurrency: 10 }
`;

/** A client that reads replies line by line and closes its side only when told to (half-open allowed). */
function slowCloser(
    port: number,
): Promise<{ next: () => Promise<string>; write: (s: string) => void; end: () => void }> {
    return new Promise((resolve, reject) => {
        const socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
        const lines: string[] = [];
        const waiting: ((line: string) => void)[] = [];
        let buf = '';
        socket.setEncoding('latin1');
        socket.on('data', (d: string) => {
            buf += d;
            for (let i = buf.indexOf('\r\n'); i >= 0; i = buf.indexOf('\r\n')) {
                const line = buf.slice(0, i);
                buf = buf.slice(i + 2);
                const w = waiting.shift();
                if (w) w(line);
                else lines.push(line);
            }
        });
        socket.on('error', () => undefined);
        socket.once('connect', () =>
            resolve({
                next: () => {
                    const l = lines.shift();
                    return l !== undefined ? Promise.resolve(l) : new Promise((r) => waiting.push(r));
                },
                write: (s) => socket.write(s),
                end: () => socket.end(),
            }),
        );
        socket.once('error', reject);
    });
}

describe('leases at a stop', () => {
    let dir: string;
    let up: ScriptedUpstream;
    let redis: RedisInstance;
    let mw: TestApp;
    before(async () => {
        dir = await mkdtemp(join(tmpdir(), 'mw-stop-leases-'));
        await writeFile(join(dir, '10.yaml'), RULES);
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'] });
        redis = await startRedis();
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                `rules: "${dir}"`,
                `redis: { url: "${redis.url}" }`,
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw.stop();
        await up.close();
        await redis.stop();
        await rm(dir, { recursive: true, force: true });
    });

    it('gives back the leases of clients that close 200 ms after the 421', async () => {
        const leases = (): Promise<number> => concurrencyLeases(redis);
        const clients = await Promise.all(Array.from({ length: 4 }, () => slowCloser(mw.port())));
        for (const c of clients) {
            assert.match(await c.next(), /^220 /);
            c.write('EHLO client.example\r\n');
            while (!/^250 /.test(await c.next()));
        }
        assert.equal(await leases(), 4, 'one lease per idle session');
        const stopped = mw.stop();
        await Promise.all(
            clients.map(async (c) => {
                assert.match(await c.next(), /^421 4\.3\.2 /);
                await sleep(200);
                c.end();
            }),
        );
        await stopped;
        assert.equal(await leases(), 0, 'no lease left in Redis');
    });
});
