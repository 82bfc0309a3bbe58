/**
 * Brute-force protection and compromised-account signals on the memory store (the Redis store
 * has the same semantics, proven by the store contract suite): failures past the limit lock
 * the IP or the login until they drain (injected clock), a success resets nothing, and the
 * per-login counts of distinct IPs, recipients and failures come out as facts.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createMemoryStore } from '../../src/limits/memory-store.ts';
import type { CheckContext } from '../../src/pipeline.ts';
import { createLoginGuard } from '../../src/submission/login-guard.ts';
import { createLoginSignalsCheck } from '../../src/submission/login-signals.ts';

const MIN = 60_000;

describe('login guard', () => {
    it('locks an IP after its failures, until they drain', async () => {
        const guard = createLoginGuard(createMemoryStore(), {
            perIp: { limit: 3, periodMs: 15 * MIN },
            perLogin: { limit: 100, periodMs: 60 * MIN },
        });
        let now = 1_000_000;
        for (let i = 0; i < 3; i++) {
            assert.deepEqual(await guard.check('192.0.2.1', `u${i}@example.test`, now), { allowed: true });
            await guard.failed('192.0.2.1', `u${i}@example.test`, now);
        }
        const locked = await guard.check('192.0.2.1', 'anyone@example.test', now);
        assert.equal(locked.allowed, false);
        assert.equal(!locked.allowed && locked.scope, 'ip');
        assert.equal(!locked.allowed && locked.retryAfterMs, 5 * MIN);
        assert.deepEqual(
            await guard.check('192.0.2.2', 'anyone@example.test', now),
            { allowed: true },
            'other IPs unaffected',
        );
        now += 5 * MIN;
        assert.deepEqual(
            await guard.check('192.0.2.1', 'anyone@example.test', now),
            { allowed: true },
            'one try again after a third of the window',
        );
    });

    it('locks a login guessed from many IPs, and counts IPv6 clients per /64', async () => {
        const guard = createLoginGuard(createMemoryStore(), {
            perIp: { limit: 100, periodMs: 15 * MIN },
            perLogin: { limit: 2, periodMs: 60 * MIN },
        });
        const now = 5_000_000;
        await guard.failed('2001:db8:1:2::1', 'alice@example.test', now);
        await guard.failed('2001:db8:1:2:ffff::9', 'ALICE@example.test', now);
        const v = await guard.check('198.51.100.1', 'alice@example.test', now);
        assert.equal(!v.allowed && v.scope, 'login');
        const ipStore = createMemoryStore();
        const g2 = createLoginGuard(ipStore, {
            perIp: { limit: 2, periodMs: MIN },
            perLogin: { limit: 100, periodMs: MIN },
        });
        await g2.failed('2001:db8:1:2::1', 'a', now);
        await g2.failed('2001:db8:1:2::2', 'b', now);
        assert.equal((await g2.check('2001:db8:1:2::3', 'c', now)).allowed, false, 'same /64');
        assert.equal((await g2.check('2001:db8:1:3::1', 'c', now)).allowed, true, 'other /64');
    });

    it('does not lock anyone out when the store fails', async () => {
        const store = createMemoryStore();
        const broken = { ...store, take: () => Promise.reject(new Error('down')) };
        const guard = createLoginGuard(broken, {
            perIp: { limit: 1, periodMs: MIN },
            perLogin: { limit: 1, periodMs: MIN },
        });
        await guard.failed('192.0.2.1', 'x', 0);
        assert.deepEqual(await guard.check('192.0.2.1', 'x', 0), { allowed: true });
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
        const guard = createLoginGuard(store);
        const signal = new AbortController().signal;
        await guard.failed('203.0.113.5', 'alice@example.test', now);
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
        assert.deepEqual((await check.run(ctx('mail', '192.0.2.1', null), signal)).facts, {}, 'no login, no facts');
    });
});
