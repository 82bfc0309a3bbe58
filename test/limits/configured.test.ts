/**
 * The `redis:` section as the proxy reads it (one server, Cluster seeds, Sentinel with a
 * master name, passwords from the environment, timeouts) and the store built from it: the
 * memory store without `redis:`, a working store through a real Sentinel, and a start that
 * goes on (logged) when Redis is not there.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { loadConfig } from '../../src/config/load.ts';
import { createConfiguredStore, describeRedis, waitForStore } from '../../src/limits/index.ts';
import { createMetrics } from '../../src/metrics.ts';
import { startRedis, startRedisSentinel } from '../helpers/redis.ts';
import { freePort } from '../helpers/smtp-client.ts';
import { cleanup, tempDir } from '../rules/helpers.ts';

after(cleanup);

function configWith(yaml: string, env: Record<string, string> = {}) {
    const dir = tempDir('mailwarden-redis-config-');
    const file = join(dir, 'mailwarden.yaml');
    writeFileSync(file, yaml);
    return loadConfig(file, env);
}

const quiet = { warn: () => undefined, info: () => undefined };

/** A logger that keeps the messages of warn and info lines. */
function recorder(lines: string[]) {
    const keep = (_obj: unknown, msg: string): void => {
        lines.push(msg);
    };
    return { warn: keep, info: keep } as unknown as Parameters<typeof waitForStore>[3];
}

describe('redis config', () => {
    it('reads the three forms with their defaults', () => {
        assert.deepEqual(configWith('redis: { url: "redis://127.0.0.1:6379/2" }\n').redis, {
            url: 'redis://127.0.0.1:6379/2',
            commandTimeoutMs: 250,
            connectTimeoutMs: 1000,
        });
        assert.deepEqual(
            configWith(
                'redis:\n  cluster: ["10.0.0.1:7000", "Redis-2.example.net:7001", "[2001:db8::5]:7002"]\n  password: ${REDIS_PASSWORD}\n  commandTimeout: 100ms\n',
                { REDIS_PASSWORD: 's3cret' },
            ).redis,
            {
                cluster: ['10.0.0.1:7000', 'redis-2.example.net:7001', '[2001:db8::5]:7002'],
                password: 's3cret',
                commandTimeoutMs: 100,
                connectTimeoutMs: 1000,
            },
        );
        const sentinel = configWith(
            'redis: { sentinels: ["10.0.0.1:26379", "10.0.0.2:26379"], name: mymaster, username: mw, connectTimeout: 2s }\n',
        ).redis!;
        assert.deepEqual(sentinel, {
            sentinels: [
                { host: '10.0.0.1', port: 26379 },
                { host: '10.0.0.2', port: 26379 },
            ],
            name: 'mymaster',
            username: 'mw',
            commandTimeoutMs: 250,
            connectTimeoutMs: 2000,
        });
        assert.equal(describeRedis(sentinel), 'Redis through Sentinel (2 sentinels)');
        assert.equal(configWith('hostname: mx.example.net\n').redis, null);
    });

    it('refuses a password beside a URL, which carries its own', () => {
        assert.throws(
            () => configWith('redis: { url: "redis://127.0.0.1", password: x }\n'),
            /redis\.password: a Redis URL carries its own user and password/,
        );
    });
});

describe('the configured store', () => {
    it('is the memory store without redis:', async () => {
        const store = createConfiguredStore(null, { metrics: createMetrics('t'), logger: quiet });
        assert.equal(store.kind, 'memory');
        await waitForStore(store, null, 100, quiet);
        await store.close();
    });

    it('finds the master through a real Sentinel and enforces limits there', async () => {
        const master = await startRedis();
        const sentinel = await startRedisSentinel(master);
        const config = configWith(
            `redis: { sentinels: ["127.0.0.1:${sentinel.port}"], name: ${sentinel.masterName}, commandTimeout: 500ms }\n`,
        );
        const store = createConfiguredStore(config.redis, { metrics: createMetrics('t'), logger: quiet });
        try {
            const lines: string[] = [];
            await waitForStore(store, config.redis, 5000, recorder(lines));
            assert.deepEqual(lines, ['limit store connected']);
            const windows = [{ limit: 2, periodMs: 60_000 }];
            const results = [];
            for (let i = 0; i < 3; i++) results.push((await store.take('k', windows, 1, 1_000_000)).allowed);
            assert.deepEqual(results, [true, true, false]);
            assert.equal(await store.ping(), true);
        } finally {
            await store.close();
            await sentinel.stop();
            await master.stop();
        }
    });

    it('lets the start go on, with a warning, when Redis is not there', async () => {
        const port = await freePort();
        const config = configWith(`redis: { url: "redis://127.0.0.1:${port}", connectTimeout: 100ms }\n`);
        const store = createConfiguredStore(config.redis, { metrics: createMetrics('t'), logger: quiet });
        try {
            const lines: string[] = [];
            const started = Date.now();
            await waitForStore(store, config.redis, 300, recorder(lines));
            assert.ok(Date.now() - started < 2000);
            assert.deepEqual(lines, [
                'limit store not reachable yet; limits apply their onError setting until it answers',
            ]);
            assert.equal(await store.ping(), false);
        } finally {
            await store.close();
        }
    });
});
