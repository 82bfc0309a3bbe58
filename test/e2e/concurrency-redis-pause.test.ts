/**
 * Concurrency leases through a real Redis that hangs (SIGSTOP) while clients connect: the
 * limit's `onError: allow` lets each session in without a lease, and once Redis is back each
 * such session's next stage takes its lease (as a lost one is taken back), up to the limit and
 * without refusing the session, so new clients are counted against the sessions already open.
 * Redis is always resumed and stopped, even when an assertion fails.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startApp, type TestApp } from '../helpers/app.ts';
import { concurrencyLeases, startRedis, type RedisInstance } from '../helpers/redis.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { smtpConnect, type SmtpClient } from '../helpers/smtp-client.ts';

const RULES = `limits:
  - { id: conc, key: client.ip, concurrency: 10 }
`;

describe('concurrency leases while Redis hangs', () => {
    let dir: string;
    let up: ScriptedUpstream;
    let redis: RedisInstance | undefined;
    let mw: TestApp | undefined;
    const resume = (): void => {
        try {
            if (redis) process.kill(redis.pid, 'SIGCONT');
        } catch {
            // already gone
        }
    };
    before(async () => {
        dir = await mkdtemp(join(tmpdir(), 'mw-conc-pause-'));
        await writeFile(join(dir, '10.yaml'), RULES);
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'] });
        redis = await startRedis();
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx, maxClientsPerNetwork: 1000 }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                `rules: "${dir}"`,
                `redis: { url: "${redis.url}", commandTimeout: 200ms, connectTimeout: 500ms }`,
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        resume();
        await mw?.stop();
        await up?.close();
        await redis?.stop();
        await rm(dir, { recursive: true, force: true });
    });

    it('sessions let in while Redis hung take their leases at their next stage once it is back', async () => {
        const r = redis!;
        const port = mw!.port();
        const held: SmtpClient[] = [];
        const leases = (): Promise<number> => concurrencyLeases(r);
        try {
            process.kill(r.pid, 'SIGSTOP');
            try {
                const clients = await Promise.all(Array.from({ length: 12 }, () => smtpConnect(port)));
                held.push(...clients);
                const greetings = await Promise.all(clients.map((c) => c.greeting(15_000)));
                assert.deepEqual(
                    greetings.map((g) => g.code),
                    Array(12).fill(220),
                    'onError allow: every client is let in while Redis hangs',
                );
            } finally {
                resume();
            }
            // the late replies of the hung calls come and are undone: nothing is held yet
            await sleep(1000);
            assert.equal(await leases(), 0);
            // each session's next stage (the helo stage runs with the first MAIL) renews its
            // leases: the first ten take one, and no session is refused or cut
            for (const c of held) {
                assert.equal((await c.cmd('EHLO client.example')).code, 250);
                assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
            }
            assert.equal(await leases(), 10);
            for (const c of held) assert.equal((await c.cmd('RSET')).code, 250, 'no session is cut');
            // a new client is counted against the sessions already open
            const extra = await smtpConnect(port);
            held.push(extra);
            const refused = await extra.greeting(15_000);
            assert.equal(refused.code, 421, refused.raw);
            assert.match(refused.text, /\(limit conc\)/);
        } finally {
            resume();
            for (const c of held) c.close();
        }
    });
});
