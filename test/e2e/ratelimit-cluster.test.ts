/**
 * A Redis Cluster of three local masters behind two proxy instances configured with
 * `redis: { cluster: [...] }`: a limit holds across both instances for senders whose keys
 * land on different masters, and concurrency leases are shared.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Cluster } from 'ioredis';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startRedisCluster, type RedisClusterInstance } from '../helpers/redis.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { sendMail, smtpConnect, type SmtpClient } from '../helpers/smtp-client.ts';

const MSG = 'From: a@sender.example\r\nSubject: t\r\n\r\nbody\r\n';
const RULES = `limits:
  - { id: cluster-rate, key: mail.from, rate: 4/1h }
  - { id: cluster-conns, key: client.ip, concurrency: 3 }
`;
const SENDERS = Array.from({ length: 6 }, (_, i) => `sender${i}@cluster.example`);

describe('rate limits in a Redis Cluster shared by two instances', () => {
    let dir: string;
    let up: ScriptedUpstream;
    let cluster: RedisClusterInstance;
    let a: TestApp;
    let b: TestApp;
    before(async () => {
        dir = await mkdtemp(join(tmpdir(), 'mw-limits-cluster-'));
        await writeFile(join(dir, '10-limits.yaml'), RULES);
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'] });
        cluster = await startRedisCluster(3);
        const yaml = [
            'hostname: mx.example.test',
            'domains: [example.test]',
            'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
            `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
            `rules: "${dir}"`,
            `redis: { cluster: [${cluster.seeds.map((s) => `"${s}"`).join(', ')}], commandTimeout: 500ms }`,
            'http: false',
        ].join('\n');
        a = await startApp(yaml);
        b = await startApp(yaml);
    });
    after(async () => {
        await a?.stop();
        await b?.stop();
        await up?.close();
        await cluster?.stop();
        await rm(dir, { recursive: true, force: true });
    });

    it('lets exactly 4 messages per sender through across both instances', async () => {
        for (const from of SENDERS) {
            const codes: number[] = [];
            for (let i = 0; i < 5; i++) {
                const r = await sendMail((i % 2 === 0 ? a : b).port(), { from, to: ['b@example.test'], data: MSG });
                codes.push(r.message?.code ?? r.mail.code);
            }
            assert.deepEqual(codes, [250, 250, 250, 250, 450], from);
        }
        const errors = (await a.app.metrics.redisErrors.get()).values[0]?.value ?? 0;
        assert.equal(errors, 0);
        // The senders' keys are spread over the masters (one hash slot per key).
        const raw = new Cluster(cluster.seeds.map((s) => ({ host: '127.0.0.1', port: Number(s.split(':')[1]) })));
        try {
            const slots = new Set<number>();
            for (const from of SENDERS) slots.add(Number(await raw.call('CLUSTER', 'KEYSLOT', `cluster-rate|${from}`)));
            assert.ok(slots.size > 1);
        } finally {
            raw.disconnect();
        }
    });

    it('shares concurrency leases across the instances', async () => {
        const held: SmtpClient[] = [];
        for (const mw of [a, b, a]) {
            const c = await smtpConnect(mw.port());
            assert.equal((await c.greeting()).code, 220);
            held.push(c);
        }
        const fourth = await smtpConnect(b.port());
        assert.equal((await fourth.greeting()).code, 421);
        await fourth.waitClosed(5000);
        for (const h of held) h.close();
    });
});
