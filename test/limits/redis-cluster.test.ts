/**
 * The Redis store against a real three-master Redis Cluster on loopback (and against a
 * Sentinel set-up): the core contract, all windows of one limit key in one slot, keys of
 * many limit keys spread over the masters, and greylisting whose triplet and client keys sit
 * in different slots. If the cluster cannot be started this file fails with the reason; it
 * never skips.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Cluster } from 'ioredis';
import { createRedisStore, keyNames, type RedisLimitStore } from '../../src/limits/index.ts';
import { hashSlot } from '../../src/limits/slot.ts';
import {
    startRedis,
    startRedisCluster,
    startRedisSentinel,
    type RedisClusterInstance,
    type RedisInstance,
    type RedisSentinelInstance,
} from '../helpers/redis.ts';
import { coreContract, fresh, GREY, T0 } from './contract.ts';

describe('redis store on a 3-master Redis Cluster', () => {
    let cluster: RedisClusterInstance;
    let store: RedisLimitStore;
    let raw: Cluster;
    before(async () => {
        cluster = await startRedisCluster(3);
        store = createRedisStore({ cluster: cluster.seeds, commandTimeoutMs: 1_000 });
        raw = new Cluster(cluster.seeds.map((s) => ({ host: '127.0.0.1', port: Number(s.split(':')[1]) })));
        await store.waitUntilReady(10_000);
    });
    after(async () => {
        await store?.close();
        raw?.disconnect();
        await cluster?.stop();
    });

    coreContract(() => store);

    it('puts every window of one limit key in one slot, and spreads limit keys over all masters', async () => {
        const names = keyNames();
        const windows = [
            { limit: 10, periodMs: 60_000 },
            { limit: 100, periodMs: 3_600_000 },
            { limit: 500, periodMs: 86_400_000 },
        ];
        const key = fresh('user:alice@example.org');
        assert.equal((await store.take(key, windows, 1, T0)).remaining, 9);
        const node = raw.nodes('master')[0]!;
        const slots = await Promise.all(windows.map((w) => node.cluster('KEYSLOT', names.rate(key, w))));
        assert.equal(new Set(slots).size, 1, `slots ${slots.join(', ')}`);
        for (const w of windows) assert.ok((await raw.pttl(names.rate(key, w))) > 0);

        // 60 limit keys: every master holds some, and each window set stayed together.
        const run = fresh('spread');
        const keys = Array.from({ length: 60 }, (_, i) => `${run}:ip:192.0.2.${i}`);
        for (const k of keys) assert.equal((await store.take(k, windows, 2, T0)).allowed, true);
        const perMaster = await Promise.all(raw.nodes('master').map((n) => n.keys(`*${run}*`)));
        assert.equal(perMaster.length, 3);
        assert.ok(
            perMaster.every((ks) => ks.length > 0),
            `keys per master: ${perMaster.map((ks) => ks.length).join(', ')}`,
        );
        for (const ks of perMaster) {
            const tags = ks.map((k) => /\{([^}]*)\}/.exec(k)![1]!);
            for (const tag of tags) assert.equal(tags.filter((t) => t === tag).length, windows.length, tag);
        }
        assert.equal(perMaster.flat().length, keys.length * windows.length);
    });

    it('computes the hash slot of a key as the Cluster does (the store groups a stage by slot)', async () => {
        const names = keyNames();
        const w = { limit: 10, periodMs: 60_000 };
        const keys = [
            '123456789',
            'plain',
            '{}{tag}',
            'a{b}c{d}',
            'é{ü}',
            ...Array.from({ length: 40 }, (_, i) => names.rate(`sender|user${i}@example.org`, w)),
            ...Array.from({ length: 40 }, (_, i) => names.lease(`conns|192.0.2.${i}`)),
        ];
        const node = raw.nodes('master')[0]!;
        for (const key of keys) assert.equal(hashSlot(key), Number(await node.cluster('KEYSLOT', key)), key);
    });

    it('greylists with triplet and client keys in different slots', async () => {
        const names = keyNames();
        const client = fresh('192.0.2.0/24');
        const node = raw.nodes('master')[0]!;
        let t = T0;
        for (let i = 0; i < GREY.autoAllowAfter; i++) {
            const triplet = `${client}|s${i}@example.org|r@example.net`;
            assert.equal((await store.greylist(triplet, client, GREY, t)).verdict, 'new');
            assert.equal((await store.greylist(triplet, client, GREY, t + GREY.delayMs)).verdict, 'pass');
            await store.greylistCredit(client, GREY.passTtlMs, t + GREY.delayMs);
            t += GREY.delayMs;
        }
        assert.equal((await store.greylist(`${client}|z|z`, client, GREY, t)).verdict, 'known-client');
        const slots = await Promise.all(
            [
                names.client(client),
                ...[0, 1, 2].map((i) => names.triplet(`${client}|s${i}@example.org|r@example.net`)),
            ].map((k) => node.cluster('KEYSLOT', k)),
        );
        assert.ok(new Set(slots).size > 1, 'the keys happened to share one slot');
    });

    it("one master hung: its keys fail with 'timeout' within the command timeout, the others keep working", async () => {
        const names = keyNames();
        const w = [{ limit: 10, periodMs: 60_000 }];
        const run = fresh('hung');
        const byPort = new Map<number, string>();
        for (let i = 0; byPort.size < 3 && i < 200; i++) {
            const key = `${run}:${i}`;
            await store.take(key, w, 1, T0);
            const slot = await raw.nodes('master')[0]!.cluster('KEYSLOT', names.rate(key, w[0]!));
            const owner = raw.slots[slot]?.[0]; // "host:port" of the slot's master
            if (owner) byPort.set(Number(owner.split(':').pop()), key);
        }
        assert.equal(byPort.size, 3);
        const fast = createRedisStore({ cluster: cluster.seeds, commandTimeoutMs: 200 });
        try {
            await fast.waitUntilReady(10_000);
            const [victim, ...others] = cluster.nodes;
            const victimKey = byPort.get(victim!.port)!;
            // Shorter than cluster-node-timeout (2 s), so the cluster never marks the node failed.
            process.kill(victim!.pid, 'SIGSTOP');
            try {
                const start = performance.now();
                await assert.rejects(fast.take(victimKey, w, 1, T0), { name: 'StoreError', kind: 'timeout' });
                const ms = performance.now() - start;
                assert.ok(ms < 1_000, `${ms} ms`);
                for (const node of others)
                    assert.equal((await fast.take(byPort.get(node.port)!, w, 1, T0)).allowed, true);
            } finally {
                process.kill(victim!.pid, 'SIGCONT');
            }
            assert.equal((await fast.take(victimKey, w, 1, T0)).allowed, true);
        } finally {
            await fast.close();
        }
    });

    it('exactness holds across masters under parallel load', async () => {
        const keys = Array.from({ length: 10 }, (_, i) => fresh(`par${i}`));
        const results = await Promise.all(
            keys.flatMap((k) =>
                Array.from({ length: 15 }, () => store.take(k, [{ limit: 10, periodMs: 60_000 }], 1, T0)),
            ),
        );
        for (let i = 0; i < keys.length; i++)
            assert.equal(results.slice(i * 15, i * 15 + 15).filter((r) => r.allowed).length, 10);
    });
});

describe('redis store through Redis Sentinel', () => {
    let master: RedisInstance;
    let sentinel: RedisSentinelInstance;
    let store: RedisLimitStore;
    before(async () => {
        master = await startRedis();
        sentinel = await startRedisSentinel(master);
        store = createRedisStore({
            sentinels: [{ host: sentinel.host, port: sentinel.port }],
            sentinelName: sentinel.masterName,
            commandTimeoutMs: 1_000,
        });
        await store.waitUntilReady(10_000);
    });
    after(async () => {
        await store?.close();
        await sentinel?.stop();
        await master?.stop();
    });

    it('finds the master through the sentinel and limits there', async () => {
        const key = fresh('sentinel');
        const w = [{ limit: 2, periodMs: 60_000 }];
        assert.equal((await store.take(key, w, 1, T0)).allowed, true);
        assert.equal((await store.take(key, w, 1, T0)).allowed, true);
        assert.deepEqual(await store.take(key, w, 1, T0), { allowed: false, retryAfterMs: 30_000, remaining: 0 });
        assert.equal(await store.ping(), true);
    });
});
