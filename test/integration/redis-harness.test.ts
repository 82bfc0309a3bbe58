/**
 * Checks the Redis test peer itself: it starts on a loopback port, answers ioredis, keeps
 * nothing on disk and is gone after stop(). It must not depend on any mailwarden code.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { startRedis, type RedisInstance } from '../helpers/redis.ts';

function refused(port: number): Promise<boolean> {
    return new Promise((resolve) => {
        const socket = net.connect({ host: '127.0.0.1', port });
        socket.once('connect', () => {
            socket.destroy();
            resolve(false);
        });
        socket.once('error', () => resolve(true));
    });
}

describe('Redis test peer', () => {
    let redis: RedisInstance;
    before(async () => {
        redis = await startRedis();
    });
    after(async () => {
        await redis?.stop();
    });

    it('answers ioredis on its loopback port without persistence', async () => {
        const client = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 0 });
        try {
            await client.connect();
            assert.equal(await client.ping(), 'PONG');
            await client.set('k', 'v');
            assert.equal(await client.get('k'), 'v');
            assert.deepEqual(await client.config('GET', 'save'), ['save', '']);
            assert.deepEqual(await client.config('GET', 'bind'), ['bind', '127.0.0.1']);
        } finally {
            client.disconnect();
        }
    });

    it('is gone after stop()', async () => {
        const other = await startRedis();
        assert.notEqual(other.port, redis.port);
        await other.stop();
        assert.equal(await refused(other.port), true);
    });
});
