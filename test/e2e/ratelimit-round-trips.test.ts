/**
 * Round trips to Redis per SMTP stage, counted by the server itself (INFO commandstats of a
 * real redis-server): with a concurrency limit, rate limits at every stage (several windows,
 * several limits per stage) and greylisting at RCPT, each stage costs one script call and no
 * other command (lease renewals, when due, ride in the stage's call); the lease is given back
 * with one command when the session ends, and a message the upstream accepted costs one more
 * call when it has a new triplet of a greylisting entry in monitor mode (its record is kept). The
 * decisions stay those of the limits (the metrics show every limit and the greylisting counted).
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startRedis, type RedisInstance } from '../helpers/redis.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { sendMail, smtpConnect } from '../helpers/smtp-client.ts';
import { until } from '../helpers/until.ts';

const RULES = `limits:
  - { id: conns, key: client.ip, concurrency: 5 }
  - { id: conn-rate, key: client.ip/24, rate: [100/1m, 1000/1h], per: connection }
  - { id: sender-rate, key: mail.from, rate: [100/1h, 1000/1d] }
  - { id: domain-rate, key: mail.from.domain, rate: 100/1h, mode: monitor }
  - { id: rcpt-rate, key: mail.from, rate: 100/1h, per: recipient }
  - { id: rcpt-domain-rate, key: rcpt.domain, rate: 100/1h, per: recipient }
  - { id: byte-rate, key: mail.from.domain, rate: 10MB/1h, per: byte }
greylist:
  - { id: grey, when: { rcpt.domain: { domain: [example.test] } }, delay: 5m, retryWindow: 4h, mode: monitor }
`;
const MSG = 'From: a@sender.example\r\nTo: b@example.test\r\nSubject: t\r\n\r\nbody\r\n';

/**
 * Commands mailwarden sent since the last CONFIG RESETSTAT: script calls and lease releases
 * (the commands a script runs inside Redis are counted apart by Redis and left out here).
 */
async function commands(redis: Redis): Promise<Record<string, number>> {
    const out: Record<string, number> = {};
    for (const m of (await redis.info('commandstats')).matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) {
        if (['evalsha', 'eval', 'zrem'].includes(m[1]!)) out[m[1]!] = Number(m[2]);
    }
    return out;
}

describe('Redis round trips per SMTP stage', () => {
    let dir: string;
    let up: ScriptedUpstream;
    let redis: RedisInstance;
    let raw: Redis;
    let mw: TestApp;
    let clock = Date.UTC(2026, 0, 5, 12, 0, 0);
    before(async () => {
        dir = await mkdtemp(join(tmpdir(), 'mw-limits-trips-'));
        await writeFile(join(dir, '10-limits.yaml'), RULES);
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'] });
        redis = await startRedis();
        raw = new Redis(redis.url, { maxRetriesPerRequest: 1 });
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                `rules: "${dir}"`,
                `redis: { url: "${redis.url}", commandTimeout: 2s }`,
                'http: false',
            ].join('\n'),
            { now: () => clock },
        );
    });
    after(async () => {
        await mw?.stop();
        raw?.disconnect();
        await up?.close();
        await redis?.stop();
        await rm(dir, { recursive: true, force: true });
    });

    it('costs one script call per stage, and one command to give the lease back', async () => {
        // A first session loads the script into Redis (EVALSHA, then EVAL once).
        const warm = await sendMail(mw.port(), { from: 'warm@sender.example', to: ['w@example.test'], data: MSG });
        assert.equal(warm.message?.code, 250);
        await sleep(100);
        await raw.config('RESETSTAT');

        const perStage: Record<string, Record<string, number>> = {};
        const c = await smtpConnect(mw.port());
        const step = async (stage: string, send: () => Promise<{ code: number }>, code: number, calls = 0) => {
            assert.equal((await send()).code, code, stage);
            // a call sent after the stage's answer (not awaited by the session) may reach Redis later
            await until(`${calls} calls at ${stage}`, async () => ((await commands(raw)).evalsha ?? 0) >= calls);
            perStage[stage] = await commands(raw);
            await raw.config('RESETSTAT');
        };
        await step('connect', () => c.greeting(), 220);
        await step('EHLO', () => c.cmd('EHLO client.example'), 250);
        // The helo stage runs at the first MAIL FROM after EHLO, just before the mail stage.
        await step('helo+mail', () => c.cmd('MAIL FROM:<a@sender.example>'), 250);
        // Four minutes later the session's lease is due for renewal: it rides in the RCPT call.
        clock += 4 * 60_000;
        await step('rcpt', () => c.cmd('RCPT TO:<b@example.test>'), 250);
        const lease = await raw.zrange('mw:cc:v1:{conns|127.0.0.1}', '0', '-1', 'WITHSCORES');
        await step(
            'data',
            async () => {
                assert.equal((await c.cmd('DATA')).code, 354);
                c.write(`${MSG}.\r\n`);
                return c.reply();
            },
            250,
            2,
        );
        await c.cmd('QUIT');
        c.close();
        await c.waitClosed(5000);
        let closing: Record<string, number> = {};
        for (let i = 0; i < 50 && closing.zrem === undefined; i++) {
            await sleep(20);
            closing = await commands(raw);
        }

        // The helo stage has no limit of its own and no renewal due: no call at all. Once the
        // upstream took the message, the monitor-mode record of its new triplet is kept: one call.
        const expected = { connect: 1, EHLO: 0, 'helo+mail': 1, rcpt: 1, data: 2 };
        for (const [stage, calls] of Object.entries(expected)) {
            assert.deepEqual(
                perStage[stage],
                calls === 0 ? {} : { evalsha: calls },
                `${stage}: ${JSON.stringify(perStage[stage])}`,
            );
        }
        assert.deepEqual(closing, { zrem: 1 }, 'the lease is given back when the session ends');
        assert.equal(lease.length, 2);
        assert.equal(Number(lease[1]), clock + 10 * 60_000, 'the RCPT call renewed the lease for 10 minutes');

        // Every limit and the greylisting were decided in those calls.
        const decided = (await mw.app.metrics.ratelimitDecisions.get()).values
            .filter((v) => v.value > 0)
            .map((v) => `${v.labels.limit} ${v.labels.result}`)
            .sort();
        assert.deepEqual(
            [...new Set(decided)],
            [
                'byte-rate allowed',
                'conn-rate allowed',
                'conns allowed',
                'domain-rate allowed',
                'greylist monitor_new',
                'rcpt-domain-rate allowed',
                'rcpt-rate allowed',
                'sender-rate allowed',
            ],
        );
    });
});
