/**
 * `mailwarden auth status|unlock` against a real redis-server: it reads the counts the login
 * lockout keeps for an address (IPv6: its /48) and a login under the configured limits, and
 * clears them so the next attempt is checked again; without Redis it explains why it cannot
 * reach the counts; usage errors exit 2, an unreachable Redis exits 1 and changes nothing.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { runAuth } from '../../src/commands/auth.ts';
import { createRedisStore, type RedisLimitStore } from '../../src/limits/redis-store.ts';
import { createLoginGuard, type LoginGuard } from '../../src/submission/login-guard.ts';
import { startRedis, type RedisInstance } from '../helpers/redis.ts';
import { freePort } from '../helpers/smtp-client.ts';

const T0 = 1_800_000_000_000;

describe('mailwarden auth', () => {
    let redis: RedisInstance;
    let store: RedisLimitStore;
    let guard: LoginGuard;
    let dir: string;
    const lockout = '  lockout: { perIp: 3/15m, perLogin: 5/1h, exempt: [198.51.100.0/24] }';

    const run = async (
        argv: string[],
        config = 'mailwarden.yaml',
    ): Promise<{ code: number; out: string[]; err: string[] }> => {
        const out: string[] = [];
        const err: string[] = [];
        const code = await runAuth([...argv, '-c', config], {
            out: (l) => out.push(l),
            err: (l) => err.push(l),
            env: {},
            cwd: dir,
            now: () => T0,
        });
        return { code, out, err };
    };

    const fail = async (ip: string, login: string, n: number): Promise<void> => {
        for (let i = 0; i < n; i++) {
            const v = await guard.reserve(ip, login, T0);
            if (v.allowed) await guard.settle(v.ticket, 'invalid', T0);
        }
    };

    before(async () => {
        redis = await startRedis();
        dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mw-authcmd-'));
        fs.writeFileSync(path.join(dir, 'users.yaml'), 'users: []\n', { mode: 0o600 });
        const auth = ['auth:', '  users: users.yaml', lockout];
        fs.writeFileSync(path.join(dir, 'mailwarden.yaml'), [...auth, `redis: { url: "${redis.url}" }`, ''].join('\n'));
        fs.writeFileSync(path.join(dir, 'memory.yaml'), [...auth, ''].join('\n'));
        const dead = await freePort();
        fs.writeFileSync(
            path.join(dir, 'dead.yaml'),
            [...auth, `redis: { url: "redis://127.0.0.1:${dead}", connectTimeout: 100ms }`, ''].join('\n'),
        );
        store = createRedisStore({ url: redis.url, commandTimeoutMs: 1_000 });
        await store.waitUntilReady(5_000);
        guard = createLoginGuard({
            store,
            settings: {
                perIp: { limit: 3, periodMs: 15 * 60_000 },
                perLogin: { limit: 5, periodMs: 3_600_000 },
                perSession: 3,
                exempt: [],
                loginKey: 'login',
            },
        });
    });
    after(async () => {
        await store?.close();
        await redis?.stop();
        if (dir) fs.rmSync(dir, { recursive: true, force: true });
    });

    it('shows the counts of an address and a login', async () => {
        await fail('2001:db8:7::1', 'Carol@example.test', 3);
        assert.deepEqual(await run(['status', '--ip', '2001:db8:7::99', '--login', 'carol@example.test']), {
            code: 0,
            out: [
                'ip 2001:db8:7::/48: 3 of 3/15m failed logins counted; locked: no login is checked until one drains (one every 5m)',
                'login carol@example.test: 3 of 5/1h failed logins counted; not locked',
            ],
            err: [],
        });
    });

    it('unlocks an address: its next attempt is checked again', async () => {
        assert.equal((await guard.reserve('2001:db8:7::5', 'x', T0)).allowed, false);
        const r = await run(['unlock', '--ip', '2001:db8:7::5']);
        assert.equal(r.code, 0, r.err.join('\n'));
        assert.equal(r.out[0], 'ip 2001:db8:7::/48: unlocked (3 failed logins forgotten)');
        assert.equal((await guard.reserve('2001:db8:7::5', 'x', T0)).allowed, true);
    });

    it('unlocks a login guessed from many addresses', async () => {
        for (let i = 1; i <= 5; i++) await fail(`192.0.2.${i}`, 'dave@example.test', 1);
        const locked = await guard.reserve('192.0.2.77', 'DAVE@example.test', T0);
        assert.equal(!locked.allowed && locked.scope, 'login');
        const r = await run(['unlock', '--login', 'Dave@Example.Test']);
        assert.equal(r.code, 0, r.err.join('\n'));
        assert.equal(r.out[0], 'login dave@example.test: unlocked (5 failed logins forgotten)');
        assert.equal((await guard.reserve('192.0.2.77', 'dave@example.test', T0)).allowed, true);
    });

    it('says when an address is exempt', async () => {
        const r = await run(['status', '--ip', '198.51.100.4']);
        assert.equal(r.out[0], 'ip 198.51.100.4: exempt (auth.lockout.exempt): never counted, never locked out');
    });

    it('explains that counts kept in memory are out of reach', async () => {
        const r = await run(['unlock', '--ip', '192.0.2.1'], 'memory.yaml');
        assert.equal(r.code, 1);
        assert.match(r.err[0] ?? '', /each running mailwarden counts failed logins in its own memory/);
        assert.match(r.err[0] ?? '', /an address may try again 5m after its last failure; a login may try again 12m/);
    });

    it('fails without changing anything when Redis does not answer', async () => {
        const r = await run(['unlock', '--ip', '192.0.2.1'], 'dead.yaml');
        assert.equal(r.code, 1);
        assert.deepEqual(r.err, ['mailwarden auth: cannot reach Redis (one server); nothing was read or changed']);
    });

    it('answers usage errors with exit code 2', async () => {
        for (const argv of [
            [],
            ['lock', '--ip', '192.0.2.1'],
            ['unlock'],
            ['unlock', '--ip', 'not-an-ip'],
            ['status', '--nope'],
        ]) {
            const r = await run(argv);
            assert.equal(r.code, 2, argv.join(' '));
            assert.match(r.err[0] ?? '', /^mailwarden auth: /);
        }
    });
});
