/**
 * Login protection on a submission listener, end to end with real TLS, the real users file
 * (argon2id) and, where named, a real redis-server: N connections trying passwords in parallel
 * after k failures get at most limit − k of them checked (memory store, Redis, and Redis stopped
 * with the per-process fallback); the exact reply sequence of a session (the third failure of a
 * connection, wrong password or lockout alike, is answered 421 and closes it); the right password
 * is refused while locked and accepted once a failure has drained; exempt networks are never
 * locked; one log line per attempt with client, port, listener, mechanism, login and result, and
 * never the password; the shipped fail2ban filter, run by fail2ban-regex on those very lines,
 * bans failed and locked attempts only; a session whose password changed or whose login was
 * removed ends at its next command with 421 4.7.0.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { defaultAuthLockout } from '../../src/config/defaults.ts';
import { createMemoryStore, type LimitStore } from '../../src/limits/index.ts';
import { hashPassword } from '../../src/submission/hashes.ts';
import { acceptAll } from '../../src/pipeline.ts';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startRedis, type RedisInstance } from '../helpers/redis.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { smtpConnect, type SmtpClient, type SmtpReply } from '../helpers/smtp-client.ts';
import { createTestCertificate, type TestCertificate } from '../helpers/tls-cert.ts';

const root = new URL('../../', import.meta.url);
const FILTER = 'deploy/fail2ban/filter.d/mailwarden-auth.conf';
const JAIL = 'deploy/fail2ban/jail.d/mailwarden-auth.conf';

const b64 = (text: string): string => Buffer.from(text).toString('base64');
const plain = (user: string, pass: string): string => b64(`\0${user}\0${pass}`);

let cert: TestCertificate;
let up: ScriptedUpstream;
let users: string;
let aliceHash: string;
let bobHash: string;
const apps: TestApp[] = [];

before(async () => {
    cert = await createTestCertificate();
    up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'] });
    users = join(cert.dir, 'users.yaml');
    aliceHash = await hashPassword('right password');
    bobHash = await hashPassword('bob password');
    writeUsers({ 'alice@example.test': aliceHash, 'bob@example.test': bobHash });
});

after(async () => {
    for (const a of apps) await a.stop();
    await up?.close();
    cert?.cleanup();
});

function writeUsers(entries: Record<string, string>): void {
    const body = Object.entries(entries)
        .map(([login, hash]) => `  - login: ${login}\n    password: '${hash}'\n`)
        .join('');
    writeFileSync(users, `users:\n${body}`, { mode: 0o600 });
}

async function start(extra: string[] = [], now?: () => number, store?: LimitStore): Promise<TestApp> {
    const app = await startApp(
        [
            'hostname: mx.example.test',
            'domains: [example.test]',
            `tls: { cert: "${cert.certPath}", key: "${cert.keyPath}" }`,
            `auth:`,
            `  users: "${users}"`,
            ...extra,
            'listeners: [{ name: submissions, host: 127.0.0.1, port: 0, mode: submission, tls: implicit }]',
            `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
            'http: false',
        ].join('\n'),
        // no rule-declared limits: only the login protection is under test
        { decider: acceptAll, ...(now ? { now } : {}), ...(store ? { limitStore: store } : {}) },
    );
    apps.push(app);
    return app;
}

async function session(mw: TestApp): Promise<SmtpClient> {
    const c = await smtpConnect(mw.port(), { tls: 'implicit', ca: cert.cert, servername: 'localhost' });
    await c.greeting();
    await c.cmd('EHLO laptop.example');
    return c;
}

/** `code enhanced` of a reply, e.g. `535 5.7.8`. */
const head = (r: SmtpReply): string => `${r.code} ${r.text.split(' ')[0]}`;

const authLines = (mw: TestApp): Record<string, unknown>[] => mw.logs.filter((l) => l.msg === 'auth');

/** Each of `n` clients connects and tries one password, all at once; resolves the reply codes. */
async function parallel(mw: TestApp, n: number, pass: (i: number) => string): Promise<number[]> {
    const clients = await Promise.all(Array.from({ length: n }, () => session(mw)));
    try {
        const replies = await Promise.all(
            clients.map((c, i) => c.cmd(`AUTH PLAIN ${plain('alice@example.test', pass(i))}`, 30_000)),
        );
        return replies.map((r) => r.code);
    } finally {
        for (const c of clients) c.close();
    }
}

/** k failures from this client, three connections' worth at most per connection. */
async function fail(mw: TestApp, k: number): Promise<void> {
    let c: SmtpClient | null = null;
    for (let i = 0; i < k; i++) {
        if (i % 2 === 0) {
            c?.close();
            c = await session(mw);
        }
        const r: SmtpReply = await c!.cmd(`AUTH PLAIN ${plain(`guess${i}@example.test`, 'guess')}`);
        assert.equal(r.code, 535, r.raw);
    }
    c?.close();
}

/** Passwords checked so far: every attempt that was not refused by the lockout. */
const checked = (mw: TestApp): number =>
    authLines(mw).filter((l) => l.result === 'invalid' || l.result === 'ok').length;

describe('parallel password guessing is bounded', () => {
    it('memory store: 10 connections at once after 9 of 10 failures get one password checked', async () => {
        const mw = await start();
        await fail(mw, 9);
        const before = checked(mw);
        const codes = await parallel(mw, 10, (i) => (i === 3 ? 'right password' : `guess ${i}`));
        assert.equal(checked(mw) - before, 1, `replies: ${codes.join(' ')}`);
        assert.equal(codes.filter((c) => c === 454).length, 9, codes.join(' '));
    });

    it('memory store: a lockout outlives counters made at will elsewhere (each in a store of its own)', async () => {
        // the limits' store, small: a client on port 25 makes a counter per sender address at will
        const limits = createMemoryStore({ maxKeys: 16 });
        const mw = await start(['  lockout: { perIp: 3/1h }'], undefined, limits);
        await fail(mw, 3);
        let c = await session(mw);
        assert.equal((await c.cmd(`AUTH PLAIN ${plain('alice@example.test', 'right password')}`)).code, 454);
        c.close();
        for (let i = 0; i < 200; i++)
            await limits.take(`sender:${i}@spam.example`, [{ limit: 10, periodMs: 3_600_000 }], 1, Date.now());
        c = await session(mw);
        const after = await c.cmd(`AUTH PLAIN ${plain('alice@example.test', 'right password')}`);
        assert.equal(after.code, 454, `still locked: ${after.raw}`);
        c.close();
        await limits.close();
    });

    describe('with Redis', () => {
        let redis: RedisInstance;
        before(async () => {
            redis = await startRedis();
        });
        after(async () => {
            await redis?.stop();
        });

        it('10 connections at once after 9 of 10 failures get one password checked', async () => {
            const mw = await start([`redis: { url: "${redis.url}", commandTimeout: 300ms }`]);
            await fail(mw, 9);
            const before = checked(mw);
            const codes = await parallel(mw, 10, (i) => `guess ${i}`);
            assert.equal(checked(mw) - before, 1, `replies: ${codes.join(' ')}`);
            assert.deepEqual(codes.sort(), [535, 454, 454, 454, 454, 454, 454, 454, 454, 454].sort());
        });

        it('with Redis stopped, this process counts alone: 15 connections at once get 10 checked', async () => {
            const own = await startRedis();
            const mw = await start([`redis: { url: "${own.url}", commandTimeout: 200ms, connectTimeout: 200ms }`]);
            await own.stop();
            const codes = await parallel(mw, 15, (i) => `guess ${i}`);
            assert.equal(checked(mw), 10, `replies: ${codes.join(' ')}`);
            assert.equal(codes.filter((c) => c === 454).length, 5, codes.join(' '));
            const lines = authLines(mw);
            assert.ok(
                lines.every((l) => l.store === 'fallback'),
                'each line says the fallback counted it',
            );
            const metrics = await mw.app.metrics.registry.metrics();
            assert.match(metrics, /mailwarden_smtp_auth_fallback_total\{listener="submissions"\} 15/);
        });
    });
});

describe('the reply sequence of a session', () => {
    it('the third wrong password of a connection is answered 421 4.7.0 and the connection closes', async () => {
        const mw = await start();
        const c = await session(mw);
        const seen: string[] = [];
        seen.push(head(await c.cmd(`AUTH PLAIN ${plain('alice@example.test', 'one')}`)));
        seen.push(head(await c.cmd('AUTH LOGIN')));
        seen.push(head(await c.cmd(b64('alice@example.test'))));
        seen.push(head(await c.cmd(b64('two'))));
        const third = await c.cmd(`AUTH PLAIN ${plain('alice@example.test', 'three')}`);
        seen.push(head(third));
        assert.deepEqual(seen, ['535 5.7.8', '334 VXNlcm5hbWU6', '334 UGFzc3dvcmQ6', '535 5.7.8', '421 4.7.0']);
        assert.match(third.text, /Too many failed logins on this connection/);
        await c.waitClosed();
    });

    it('earlier 535s count towards the three: 535, 535 | 535, 535, 421 locked | 454, 454, 421; then 235 after a drain', async () => {
        let now = Date.UTC(2026, 10, 29, 12, 0, 0);
        const mw = await start(['  lockout: { perIp: 4/1h }'], () => now);
        const tries = async (c: SmtpClient, passwords: string[]): Promise<string[]> => {
            const out: string[] = [];
            for (const p of passwords) out.push(head(await c.cmd(`AUTH PLAIN ${plain('alice@example.test', p)}`)));
            return out;
        };
        let c = await session(mw);
        assert.deepEqual(await tries(c, ['a', 'b']), ['535 5.7.8', '535 5.7.8']);
        c.close();
        c = await session(mw);
        // the fourth failure of the address is admitted; the fifth attempt is refused unchecked,
        // and as the third failure of this connection it closes it
        const second = await tries(c, ['c', 'd', 'right password']);
        assert.deepEqual(second, ['535 5.7.8', '535 5.7.8', '421 4.7.0']);
        await c.waitClosed();
        c = await session(mw);
        const locked = await c.cmd(`AUTH PLAIN ${plain('alice@example.test', 'right password')}`);
        assert.equal(head(locked), '454 4.7.0');
        assert.match(locked.text, /Too many failed logins from your address or for this user; try again in 15 minutes/);
        const rest = await tries(c, ['right password', 'right password']);
        assert.deepEqual(rest, ['454 4.7.0', '421 4.7.0']);
        await c.waitClosed();
        const refusedUnchecked = authLines(mw).filter((l) => l.result === 'locked');
        assert.equal(refusedUnchecked.length, 4, 'the right password was never checked while locked');
        now += 15 * 60_000; // one failure drains every 15 minutes (4 per hour)
        c = await session(mw);
        assert.equal((await c.cmd(`AUTH PLAIN ${plain('alice@example.test', 'right password')}`)).code, 235);
        c.close();
        const metrics = await mw.app.metrics.registry.metrics();
        assert.match(metrics, /mailwarden_smtp_auth_locked_total\{listener="submissions",scope="ip"\} 4/);
        assert.match(metrics, /mailwarden_smtp_auth_locked_total\{listener="submissions",scope="login"\} 0/);
    });

    it('is the sequence docs/flow.md and docs/security.md describe', () => {
        const read = (f: string): string => readFileSync(new URL(f, root), 'utf8').replace(/ +/g, ' ');
        const flow = read('docs/flow.md')
            .split('\n')
            .find((l) => l.startsWith('| AUTH (submission)'));
        assert.equal(defaultAuthLockout().perSession, 3);
        assert.match(
            flow ?? '',
            /the third failure of a connection \(`535` or lockout `454`\) is `421 4\.7\.0` and closes it/,
        );
        const security = read('docs/security.md');
        for (const row of [
            '| three wrong passwords | `535 5.7.8`, `535 5.7.8`, `421 4.7.0` and close |',
            '| while locked, even with the right password | `454 4.7.0`, `454 4.7.0`, `421 4.7.0` and close |',
            '| two wrong passwords, then the limit is reached | `535 5.7.8`, `535 5.7.8`, `421 4.7.0` and close |',
        ]) {
            assert.ok(security.includes(row), row);
        }
    });

    it('an exempt network is never locked out, and its lines say so', async () => {
        const mw = await start(['  lockout: { perIp: 2/1h, perLogin: 2/1h, exempt: [127.0.0.0/8] }']);
        for (let s = 0; s < 3; s++) {
            const c = await session(mw);
            assert.equal((await c.cmd(`AUTH PLAIN ${plain('alice@example.test', 'x')}`)).code, 535);
            assert.equal((await c.cmd(`AUTH PLAIN ${plain('alice@example.test', 'y')}`)).code, 535);
            c.close();
        }
        const c = await session(mw);
        assert.equal((await c.cmd(`AUTH PLAIN ${plain('alice@example.test', 'right password')}`)).code, 235);
        c.close();
        assert.ok(authLines(mw).every((l) => l.exempt === true));
    });
});

describe('auth log lines and the fail2ban filter', () => {
    let mw: TestApp;
    let exempt: TestApp;
    const attempts: string[] = [];
    before(async () => {
        mw = await start(['  lockout: { perIp: 3/1h }']);
        let c = await session(mw);
        await c.cmd(`AUTH PLAIN ${plain('alice@example.test', 'right password')}`);
        c.close();
        c = await session(mw);
        await c.cmd(`AUTH PLAIN ${plain('alice@example.test', 'Tr0ub4dor&3')}`);
        // a login that tries to smuggle another address into the log line
        await c.cmd(`AUTH PLAIN ${plain('x","client":"203.0.113.66","result":"invalid', 'wrong')}`);
        c.close();
        c = await session(mw);
        await c.cmd('AUTH LOGIN');
        await c.cmd(b64('mallory@example.test'));
        await c.cmd(b64('Tr0ub4dor&3'));
        await c.cmd(`AUTH PLAIN ${plain('alice@example.test', 'right password')}`); // locked
        c.close();
        attempts.push('ok', 'invalid', 'invalid', 'invalid', 'locked');
        exempt = await start(['  lockout: { exempt: [127.0.0.1] }']);
        c = await session(exempt);
        await c.cmd(`AUTH PLAIN ${plain('alice@example.test', 'wrong password')}`);
        c.close();
    });

    it('logs one line per attempt with session, client address and port, listener, mechanism, login and result', () => {
        const lines = authLines(mw);
        assert.deepEqual(
            lines.map((l) => l.result),
            attempts,
        );
        for (const l of lines) {
            assert.equal(l.level, 30, 'info');
            assert.equal(l.listener, 'submissions');
            assert.equal(l.client, '127.0.0.1');
            assert.equal(typeof l.clientPort, 'number');
            assert.match(String(l.session), /\S/);
            assert.ok(l.mechanism === 'PLAIN' || l.mechanism === 'LOGIN');
            assert.equal(typeof l.login, 'string');
        }
        assert.deepEqual(
            lines.map((l) => l.mechanism),
            ['PLAIN', 'PLAIN', 'PLAIN', 'LOGIN', 'PLAIN'],
        );
        assert.equal(lines[4]!.lockout, 'ip');
        assert.equal(lines[0]!.user, 'alice@example.test');
        const raw = mw.lines.join('\n');
        assert.ok(!raw.includes('Tr0ub4dor') && !raw.includes('right password'), 'no password is logged');
    });

    it('the shipped filter, run by fail2ban-regex, finds failed and locked attempts only, by the real client', async () => {
        const dir = mkdtempSync(join(tmpdir(), 'mw-f2b-'));
        try {
            const lines = [...mw.lines, ...exempt.lines];
            // as written to a file, and as fail2ban's systemd backend reads them from the journal
            writeFileSync(join(dir, 'file.log'), `${lines.join('\n')}\n`);
            writeFileSync(join(dir, 'journal.log'), `${lines.map((l) => `mx1 node[812]: ${l}`).join('\n')}\n`);
            const filter = join(dir, 'mailwarden-auth.conf');
            writeFileSync(filter, readFileSync(new URL(FILTER, root)));
            for (const log of ['file.log', 'journal.log']) {
                const out = await fail2banRegex(join(dir, log), filter);
                const hosts = [...out.matchAll(/^\|\s{4,}(\S+)\s+\w{3} \w{3} /gm)].map((m) => m[1]);
                assert.deepEqual(hosts, Array(4).fill('127.0.0.1'), `${log}:\n${out}`);
                const summary = /Lines: (\d+) lines, (\d+) ignored, (\d+) matched/.exec(out);
                assert.deepEqual(summary?.slice(1).map(Number), [lines.length, 1, 4], `${log}:\n${out}`);
            }
        } finally {
            rmSync(dir, { recursive: true, force: true });
        }
    });

    it('the documented filter and jail are the shipped files', () => {
        const docs = readFileSync(new URL('docs/security.md', root), 'utf8');
        for (const file of [FILTER, JAIL]) {
            const text = readFileSync(new URL(file, root), 'utf8');
            assert.ok(docs.includes(text.trimEnd()), `docs/security.md shows ${file} as it is`);
        }
    });
});

function fail2banRegex(log: string, filter: string): Promise<string> {
    return new Promise((resolve, reject) => {
        execFile(
            'fail2ban-regex',
            ['-v', '--print-all-missed', log, filter],
            { timeout: 60_000, env: { ...process.env, LANG: 'C.UTF-8' } },
            (error, stdout, stderr) => {
                if (error)
                    reject(new Error(`fail2ban-regex failed (install the fail2ban package): ${stderr}${stdout}`));
                else resolve(stdout);
            },
        );
    });
}

describe('a changed password ends the sessions logged in with the old one', () => {
    let mw: TestApp;
    before(async () => {
        writeUsers({ 'alice@example.test': aliceHash, 'bob@example.test': bobHash });
        mw = await start();
    });
    after(() => writeUsers({ 'alice@example.test': aliceHash, 'bob@example.test': bobHash }));

    async function loggedIn(login: string, password: string): Promise<SmtpClient> {
        const c = await session(mw);
        const r = await c.cmd(`AUTH PLAIN ${plain(login, password)}`);
        assert.equal(r.code, 235, r.raw);
        return c;
    }

    it('at its next command, with 421 4.7.0, after the users file was reloaded with a new hash', async () => {
        const alice = await loggedIn('alice@example.test', 'right password');
        const bob = await loggedIn('bob@example.test', 'bob password');
        assert.equal((await alice.cmd('MAIL FROM:<alice@example.test>')).code, 250);
        writeUsers({ 'alice@example.test': await hashPassword('new password'), 'bob@example.test': bobHash });
        mw.app.reload();
        const r = await alice.cmd('RCPT TO:<carol@example.net>');
        assert.equal(head(r), '421 4.7.0', r.raw);
        assert.match(r.text, /password was changed or your login was removed/);
        await alice.waitClosed();
        // bob's password did not change: his session goes on
        assert.equal((await bob.cmd('MAIL FROM:<bob@example.test>')).code, 250);
        bob.close();
        const line = authLines(mw).at(-1)!;
        assert.equal(line.result, 'revoked');
        assert.equal(line.reason, 'password changed');
        assert.equal(line.login, 'alice@example.test');
        assert.equal(line.client, '127.0.0.1');
        const fresh = await loggedIn('alice@example.test', 'new password');
        assert.equal((await fresh.cmd('MAIL FROM:<alice@example.test>')).code, 250);
        fresh.close();
    });

    it('when the login was removed, also on the watch-triggered reload', async () => {
        writeUsers({ 'alice@example.test': aliceHash, 'bob@example.test': bobHash });
        mw.app.reload();
        const bob = await loggedIn('bob@example.test', 'bob password');
        writeUsers({ 'alice@example.test': aliceHash });
        // no SIGHUP: the file watcher picks the change up by itself
        const deadline = Date.now() + 10_000;
        let r: SmtpReply = await bob.cmd('NOOP');
        while (r.code === 250 && Date.now() < deadline) {
            await new Promise((res) => setTimeout(res, 100));
            r = await bob.cmd('NOOP');
        }
        assert.equal(head(r), '421 4.7.0', r.raw);
        await bob.waitClosed();
        assert.equal(authLines(mw).at(-1)!.reason, 'login removed');
        const metrics = await mw.app.metrics.registry.metrics();
        assert.match(metrics, /mailwarden_smtp_auth_revoked_total\{listener="submissions"\} 2/);
    });
});
