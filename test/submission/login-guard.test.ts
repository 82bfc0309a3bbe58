/**
 * Password-guessing protection and compromised-account signals, against the memory store and a
 * real redis-server: a failure is reserved before any password is checked, so N attempts in
 * parallel after k failures get at most limit − k checks; a success or our own failure gives
 * the reservation back; over the limit even the right password is never checked; IPv6 clients
 * count per /48, so failures spread over its 65,536 /64s are bounded like one address; exempt networks count nothing; with Redis stopped a per-process fallback keeps
 * guessing bounded; operators can read and clear the counts. Time is injected, nothing sleeps.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { defaultAuthLockout } from '../../src/config/defaults.ts';
import { createMemoryStore } from '../../src/limits/memory-store.ts';
import { createRedisStore, type RedisLimitStore } from '../../src/limits/redis-store.ts';
import type { LimitStore } from '../../src/limits/types.ts';
import type { CheckContext } from '../../src/types.ts';
import { createLoginGuard, type LoginGuard, type LoginGuardSettings } from '../../src/submission/login-guard.ts';
import { createLoginSignalsCheck } from '../../src/checks/login-signals.ts';
import { startRedis, type RedisInstance } from '../helpers/redis.ts';

const MIN = 60_000;
const T0 = 1_800_000_000_000;

const settings = (over: Partial<LoginGuardSettings> = {}): LoginGuardSettings => ({
    ...defaultAuthLockout(),
    ...over,
});

/** One login attempt as the listener makes it: reserve, check the password (counted), settle. */
async function attempt(
    guard: LoginGuard,
    ip: string,
    login: string,
    now: number,
    right: boolean,
    checked: { n: number },
): Promise<'ok' | 'invalid' | 'locked'> {
    const v = await guard.reserve(ip, login, now);
    if (!v.allowed) return 'locked';
    checked.n++;
    await new Promise((r) => setImmediate(r)); // the hash takes time: other attempts run meanwhile
    const result = right ? 'ok' : 'invalid';
    await guard.settle(v.ticket, result, now);
    return result;
}

/** The cases every store must pass. */
function guardCases(makeStore: () => LimitStore): void {
    it('N attempts in parallel after k failures check at most limit − k passwords', async () => {
        const guard = createLoginGuard({ store: makeStore(), settings: settings() });
        const ip = `192.0.2.${Math.floor(Math.random() * 250) + 1}`;
        const checked = { n: 0 };
        for (let i = 0; i < 9; i++) await attempt(guard, ip, `u${i}@example.test`, T0, false, checked);
        checked.n = 0;
        const results = await Promise.all(
            Array.from({ length: 10 }, (_, i) => attempt(guard, ip, `p${i}@example.test`, T0, i === 0, checked)),
        );
        assert.equal(checked.n, 1, `10 in parallel after 9 of 10 failures: ${results.join(' ')}`);
        assert.equal(results.filter((r) => r === 'locked').length, 9);
    });

    it('per login: parallel guesses from many addresses check at most the login limit', async () => {
        const guard = createLoginGuard({ store: makeStore(), settings: settings({ perIp: null }) });
        const login = `victim-${Math.random()}@example.test`;
        const checked = { n: 0 };
        await Promise.all(
            Array.from({ length: 50 }, (_, i) => attempt(guard, `198.51.100.${i + 1}`, login, T0, false, checked)),
        );
        assert.equal(checked.n, 20);
        const v = await guard.reserve('203.0.113.9', login.toUpperCase(), T0);
        assert.equal(!v.allowed && v.scope, 'login', 'logins ignore case');
    });

    it('successes give their reservation back: a busy client is never locked out by logging in', async () => {
        const guard = createLoginGuard({ store: makeStore(), settings: settings() });
        const ip = `203.0.113.${Math.floor(Math.random() * 250) + 1}`;
        const checked = { n: 0 };
        for (let i = 0; i < 9; i++) await attempt(guard, ip, 'typo@example.test', T0, false, checked);
        for (let i = 0; i < 50; i++)
            assert.equal(await attempt(guard, ip, 'alice@example.test', T0, true, checked), 'ok');
        assert.equal(await attempt(guard, ip, 'alice@example.test', T0, false, checked), 'invalid');
        // the tenth failure spends the last unit: now even the right password is not checked
        const before = checked.n;
        assert.equal(await attempt(guard, ip, 'alice@example.test', T0, true, checked), 'locked');
        assert.equal(checked.n, before);
    });

    it('failures spread over many /64s of one IPv6 /48 are bounded like one address', async () => {
        const guard = createLoginGuard({ store: makeStore(), settings: settings() });
        const checked = { n: 0 };
        const results = await Promise.all(
            Array.from({ length: 200 }, (_, i) =>
                attempt(guard, `2001:db8:4848:${(i * 300).toString(16)}::1`, `g${i}@example.test`, T0, false, checked),
            ),
        );
        assert.equal(checked.n, 10, `200 /64s of one /48: ${results.filter((r) => r !== 'locked').length} checked`);
        const v = await guard.reserve('2001:db8:4848:ffff:1::9', 'h@example.test', T0);
        assert.equal(!v.allowed && v.scope, 'ip', 'another /64 of the same /48');
        assert.equal((await guard.reserve('2001:db8:4849::1', 'h@example.test', T0)).allowed, true, 'other /48');
    });
}

describe('login guard (memory store)', () => {
    guardCases(() => createMemoryStore());

    it('locks an IP after its failures until one drains, and says which limit and for how long', async () => {
        const guard = createLoginGuard({
            store: createMemoryStore(),
            settings: settings({ perIp: { limit: 3, periodMs: 15 * MIN } }),
        });
        for (let i = 0; i < 3; i++) {
            const v = await guard.reserve('192.0.2.1', `u${i}@example.test`, T0);
            assert.ok(v.allowed);
            await guard.settle(v.ticket, 'invalid', T0);
        }
        const locked = await guard.reserve('192.0.2.1', 'anyone@example.test', T0);
        assert.deepEqual(locked, { allowed: false, scope: 'ip', retryAfterMs: 5 * MIN, store: 'shared' });
        assert.equal((await guard.reserve('192.0.2.2', 'anyone@example.test', T0)).allowed, true, 'other IPs');
        assert.equal((await guard.reserve('192.0.2.1', 'x@example.test', T0 + 5 * MIN - 1)).allowed, false);
        assert.equal((await guard.reserve('192.0.2.1', 'x@example.test', T0 + 5 * MIN)).allowed, true);
    });

    it('counts IPv6 clients per /48 and IPv4-mapped addresses as IPv4', async () => {
        const guard = createLoginGuard({
            store: createMemoryStore(),
            settings: settings({ perIp: { limit: 2, periodMs: MIN } }),
        });
        for (const ip of ['2001:db8:1:2::1', '2001:DB8:1:ffff:ffff::9']) {
            const v = await guard.reserve(ip, 'a', T0);
            assert.ok(v.allowed);
            await guard.settle(v.ticket, 'invalid', T0);
        }
        assert.equal((await guard.reserve('2001:db8:1:3::3', 'c', T0)).allowed, false, 'same /48');
        assert.equal((await guard.reserve('2001:db8:2::1', 'c', T0)).allowed, true, 'other /48');
        for (let i = 0; i < 2; i++) {
            const v = await guard.reserve('::ffff:192.0.2.7', 'a', T0);
            assert.ok(v.allowed);
            await guard.settle(v.ticket, 'invalid', T0);
        }
        assert.equal((await guard.reserve('192.0.2.7', 'a', T0)).allowed, false, 'mapped = IPv4');
    });

    it('gives the reservation back when the login service failed (our failure, not a guess)', async () => {
        const guard = createLoginGuard({
            store: createMemoryStore(),
            settings: settings({ perIp: { limit: 1, periodMs: MIN } }),
        });
        for (let i = 0; i < 5; i++) {
            const v = await guard.reserve('192.0.2.1', 'a', T0);
            assert.ok(v.allowed, `attempt ${i}`);
            await guard.settle(v.ticket, 'unavailable', T0);
        }
    });

    it('neither counts nor refuses exempt networks; false turns a limit off', async () => {
        const guard = createLoginGuard({
            store: createMemoryStore(),
            settings: settings({
                perIp: { limit: 1, periodMs: MIN },
                perLogin: { limit: 1, periodMs: MIN },
                exempt: ['10.0.0.0/8', '2001:db8::/32'],
            }),
        });
        for (const ip of ['10.1.2.3', '10.1.2.3', '2001:db8::1', '::ffff:10.9.9.9']) {
            const v = await guard.reserve(ip, 'alice@example.test', T0);
            assert.deepEqual(v, { allowed: true, ticket: { store: null, counters: [] }, exempt: true, store: null });
            await guard.settle(v.ticket, 'invalid', T0);
        }
        assert.equal((await guard.reserve('192.0.2.1', 'alice@example.test', T0)).allowed, true);
        const off = createLoginGuard({
            store: createMemoryStore(),
            settings: settings({ perIp: null, perLogin: null }),
        });
        for (let i = 0; i < 30; i++) {
            const v = await off.reserve('192.0.2.1', 'a', T0);
            assert.ok(v.allowed);
            await off.settle(v.ticket, 'invalid', T0);
        }
        assert.equal(await off.loginFailures('a', T0), null);
    });

    it('keeps guessing bounded when the shared store fails: this process counts alone', async () => {
        const store = createMemoryStore();
        const broken: LimitStore = { ...store, charge: () => Promise.reject(new Error('down')) };
        let fallbacks = 0;
        const guard = createLoginGuard({ store: broken, settings: settings(), onFallback: () => fallbacks++ });
        const checked = { n: 0 };
        const results = await Promise.all(
            Array.from({ length: 30 }, (_, i) => attempt(guard, '192.0.2.1', `u${i}`, T0, false, checked)),
        );
        assert.equal(checked.n, 10, results.join(' '));
        assert.equal(fallbacks, 30);
        const v = await guard.reserve('192.0.2.1', 'x', T0);
        assert.equal(!v.allowed && v.store, 'fallback');
    });

    it('shows and clears the counts of an IP or a login for operators', async () => {
        const store = createMemoryStore();
        const guard = createLoginGuard({ store, settings: settings() });
        const checked = { n: 0 };
        for (let i = 0; i < 10; i++) await attempt(guard, '2001:db8:5::1', 'Bob@example.test', T0, false, checked);
        assert.deepEqual(await guard.status({ ip: '2001:db8:5::77', login: 'bob@example.test' }, T0), [
            {
                scope: 'ip',
                subject: '2001:db8:5::/48',
                failures: 10,
                limit: 10,
                periodMs: 15 * MIN,
                locked: true,
            },
            {
                scope: 'login',
                subject: 'bob@example.test',
                failures: 10,
                limit: 20,
                periodMs: 60 * MIN,
                locked: false,
            },
        ]);
        assert.equal(await guard.loginFailures('BOB@example.test', T0), 10);
        assert.equal((await guard.reserve('2001:db8:5::2', 'x', T0)).allowed, false);
        assert.equal(await guard.unlock({ ip: '2001:db8:5::9' }, T0), 1);
        assert.equal((await guard.reserve('2001:db8:5::2', 'x', T0)).allowed, true);
        assert.equal(await guard.unlock({ login: 'bob@example.test' }, T0), 1);
        assert.equal(await guard.loginFailures('bob@example.test', T0), 0);
    });
});

describe('login guard (redis-server)', () => {
    let redis: RedisInstance;
    let store: RedisLimitStore;
    before(async () => {
        redis = await startRedis();
        store = createRedisStore({ url: redis.url, commandTimeoutMs: 500 });
        await store.waitUntilReady(5_000);
    });
    after(async () => {
        await store?.close();
        await redis?.stop();
    });

    guardCases(() => store);

    it('two instances sharing Redis count together', async () => {
        const a = createLoginGuard({ store, settings: settings() });
        const other = createRedisStore({ url: redis.url, commandTimeoutMs: 500 });
        await other.waitUntilReady(5_000);
        try {
            const b = createLoginGuard({ store: other, settings: settings() });
            const checked = { n: 0 };
            await Promise.all(
                Array.from({ length: 30 }, (_, i) =>
                    attempt(i % 2 ? a : b, '198.51.100.200', `u${i}`, T0, false, checked),
                ),
            );
            assert.equal(checked.n, 10);
        } finally {
            await other.close();
        }
    });

    it('with Redis stopped, the per-process fallback bounds the guesses; clearing needs Redis back', async () => {
        const own = await startRedis();
        const s = createRedisStore({ url: own.url, commandTimeoutMs: 200, connectTimeoutMs: 200 });
        await s.waitUntilReady(5_000);
        let fallbacks = 0;
        const guard = createLoginGuard({ store: s, settings: settings(), onFallback: () => fallbacks++ });
        try {
            const checked = { n: 0 };
            for (let i = 0; i < 4; i++) await attempt(guard, '192.0.2.50', `u${i}`, T0, false, checked);
            await own.stop();
            const results = await Promise.all(
                Array.from({ length: 25 }, (_, i) => attempt(guard, '192.0.2.50', `p${i}`, T0, false, checked)),
            );
            // 4 counted in Redis before it stopped; the fallback starts afresh and allows 10 more
            assert.equal(checked.n, 14, results.join(' '));
            assert.equal(fallbacks, 25);
            await assert.rejects(guard.unlock({ ip: '192.0.2.50' }, T0));
        } finally {
            await s.close();
            await own.stop();
        }
    });
});

describe('login signals', () => {
    const ctx = (stage: 'mail' | 'rcpt', ip: string, login: string | null): CheckContext => ({
        stage,
        sessionId: 's',
        facts: {},
        client: { ip, port: 1, ptr: null, helo: 'h', proto: 'ESMTP', login },
        envelope: { mailFrom: 'a@example.test', rcptTo: [] },
        message: null,
    });

    it('counts distinct IPs, recipients and failures per login over the window', async () => {
        const store = createMemoryStore();
        let now = 10_000_000;
        const check = createLoginSignalsCheck({ store, windowMs: 60 * MIN, now: () => now });
        const guard = createLoginGuard({ store });
        const signal = new AbortController().signal;
        const v = await guard.reserve('203.0.113.5', 'alice@example.test', now);
        assert.ok(v.allowed);
        await guard.settle(v.ticket, 'invalid', now);
        for (const ip of ['192.0.2.1', '192.0.2.1', '192.0.2.2', '198.51.100.3']) {
            await check.run(ctx('mail', ip, 'alice@example.test'), signal);
        }
        for (let i = 0; i < 7; i++) await check.run(ctx('rcpt', '192.0.2.1', 'alice@example.test'), signal);
        const facts = (await check.run(ctx('mail', '192.0.2.1', 'alice@example.test'), signal)).facts;
        assert.equal(facts['auth.login.ips'], 3);
        assert.equal(facts['auth.login.recipients'], 7);
        assert.equal(facts['auth.login.failures'], 1);
        now += 61 * MIN;
        const later = (await check.run(ctx('mail', '192.0.2.9', 'alice@example.test'), signal)).facts;
        assert.equal(later['auth.login.ips'], 1, 'the window has passed');
        assert.equal(later['auth.login.recipients'], 0);
        assert.equal(later['auth.login.failures'], 0);
        assert.deepEqual((await check.run(ctx('mail', '192.0.2.1', null), signal)).facts, {}, 'no login, no facts');
    });
});
