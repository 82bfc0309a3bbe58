// The users file backend: loading and FILE:LINE:COL validation (plaintext refused, never
// echoed), verification with argon2id and bcrypt, the dummy-hash path for unknown logins,
// the verification bound, live reload (kept on error), sendAs policies, the sendAs file used
// beside Dovecot, and the `mailwarden check` step.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import bcrypt from 'bcryptjs';
import { runCheck } from '../../src/commands/check.ts';
import { defaultAuthLockout } from '../../src/config/defaults.ts';
import { ConfigError } from '../../src/config/issues.ts';
import type { Config } from '../../src/config/types.ts';
import { submissionFilesCheck } from '../../src/submission/check.ts';
import { hashPassword } from '../../src/submission/hashes.ts';
import { mayUse } from '../../src/submission/sender-policy.ts';
import {
    createSendAsTable,
    createUsersFileBackend,
    loadUsersFile,
    type ReloadEvent,
} from '../../src/submission/users-file.ts';

let dir: string;
let aliceHash: string;
let bobHash: string;

before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mw-users-'));
    aliceHash = await hashPassword('alice-pw');
    bobHash = bcrypt.hashSync('bob-pw', 4).replace(/^\$2b\$/, '$2y$');
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

let counter = 0;
function writeUsers(text: string, name = `users-${++counter}.yaml`): string {
    const file = path.join(dir, name);
    fs.writeFileSync(file, text);
    return file;
}

/** Replaces a file the way editors and `mailwarden users` do: write aside, rename over. */
function replaceFile(file: string, text: string): void {
    const tmp = `${file}.tmp`;
    fs.writeFileSync(tmp, text);
    fs.renameSync(tmp, file);
}

function usersYaml(): string {
    return [
        '# submission users',
        'users:',
        '  - login: alice@example.com',
        `    password: "${aliceHash}"`,
        '    sendAs: [alice@example.com, "@example.org"]',
        '  - login: bob',
        `    password: '${bobHash}'`,
        '',
    ].join('\n');
}

function issuesOf(fn: () => unknown): string[] {
    try {
        fn();
    } catch (err) {
        assert.ok(err instanceof ConfigError, String(err));
        return err.issues.map((i) => `${i.line}:${i.col}: ${i.message}`);
    }
    assert.fail('expected a ConfigError');
}

function nextEvent(events: ReloadEvent[], count: number, timeoutMs = 5000): Promise<ReloadEvent> {
    const start = Date.now();
    return new Promise((resolve, reject) => {
        const poll = (): void => {
            const e = events[count];
            if (e) return resolve(e);
            if (Date.now() - start > timeoutMs) return reject(new Error('no reload event'));
            setTimeout(poll, 20);
        };
        poll();
    });
}

describe('users file: loading and validation', () => {
    it('loads argon2id and bcrypt users', () => {
        const users = loadUsersFile(writeUsers(usersYaml()), 'required');
        assert.deepEqual(
            users.map((u) => [u.login, u.hashInfo?.kind, u.sendAs, u.line]),
            [
                ['alice@example.com', 'argon2', ['alice@example.com', '@example.org'], 3],
                ['bob', 'bcrypt', null, 6],
            ],
        );
    });

    it('accepts an empty file and an empty list', () => {
        assert.deepEqual(loadUsersFile(writeUsers(''), 'required'), []);
        assert.deepEqual(loadUsersFile(writeUsers('users: []\n'), 'required'), []);
        assert.deepEqual(loadUsersFile(writeUsers('users:\n'), 'required'), []);
    });

    it('refuses plaintext passwords without repeating them', () => {
        const file = writeUsers(
            'users:\n  - login: carol\n    password: hunter2\n  - login: dan\n    password: 12345678\n',
        );
        const issues = issuesOf(() => loadUsersFile(file, 'required'));
        assert.deepEqual(issues, [
            '3:15: users[0].password: is not a password hash (argon2id, or bcrypt $2a$/$2b$/$2y$); plaintext passwords are refused: set it with `mailwarden users passwd`',
            '5:15: users[1].password: expected a password hash written as a string',
        ]);
        assert.ok(!issues.join('\n').includes('hunter2'));
        assert.ok(!issues.join('\n').includes('12345678'));
    });

    it('reports every problem with its position', () => {
        const file = writeUsers(
            [
                'users:',
                '  - login: alice@example.com',
                `    password: "${aliceHash}"`,
                '    sendAs: [alice@example.com, example.org, alice@example.com]',
                '    sendas: []',
                '  - login: ALICE@example.com',
                `    password: "${aliceHash}"`,
                '  - login: "has space"',
                `    password: "${aliceHash}"`,
                '  - password: "$2y$10$abc"',
                '  - login: eve',
                'groups: []',
                '',
            ].join('\n'),
        );
        const issues = issuesOf(() => loadUsersFile(file, 'required'));
        assert.deepEqual(issues, [
            '4:33: users[0].sendAs[1]: "example.org" is neither an address (user@domain) nor a domain (@domain)',
            '4:46: users[0].sendAs[2]: "alice@example.com" is listed twice',
            '5:5: unknown key "sendas" in users[0] (did you mean "sendAs"?)',
            '6:12: users[1].login: login "ALICE@example.com" is already listed (line 2); logins ignore case',
            '8:12: users[2].login: a login may not contain spaces or control characters (at most 256 characters)',
            '10:5: users[3]: missing "login"',
            '10:15: users[3].password: is not a valid bcrypt hash',
            '11:5: users[4]: missing "password" (a hash; set it with `mailwarden users passwd`)',
            '12:1: unknown key "groups"',
        ]);
    });

    it('reports YAML syntax errors and unreadable files', () => {
        const syntax = issuesOf(() => loadUsersFile(writeUsers('users:\n  - login: [\n'), 'required'));
        assert.ok(syntax.length >= 1 && syntax[0]!.includes('YAML syntax'), syntax.join('\n'));
        assert.deepEqual(
            issuesOf(() => loadUsersFile(path.join(dir, 'missing.yaml'), 'required')),
            ['1:1: cannot read the file: no such file'],
        );
    });

    it('names the file as given in FILE:LINE:COL messages', () => {
        const file = writeUsers('users:\n  - login: x\n    password: nope\n');
        try {
            loadUsersFile(file, 'required');
            assert.fail('expected an error');
        } catch (err) {
            assert.ok(err instanceof ConfigError);
            assert.ok(err.message.startsWith(`${file}:3:15: users[0].password: `), err.message);
        }
    });
});

describe('users file backend', () => {
    it('verifies passwords (argon2id and bcrypt), logins ignore case', async () => {
        const backend = createUsersFileBackend(writeUsers(usersYaml()), { watch: false });
        try {
            assert.equal(await backend.verify('alice@example.com', 'alice-pw'), 'ok');
            assert.equal(await backend.verify('Alice@Example.COM', 'alice-pw'), 'ok');
            assert.equal(await backend.verify('alice@example.com', 'Alice-pw'), 'invalid');
            assert.equal(await backend.verify('bob', 'bob-pw'), 'ok');
            assert.equal(await backend.verify('bob', 'bob-pw '), 'invalid');
            assert.equal(await backend.verify('nobody', 'alice-pw'), 'invalid');
            assert.equal(await backend.verify('', ''), 'invalid');
            assert.equal(await backend.verify('alice@example.com', 'x'.repeat(5000)), 'invalid');
            assert.equal(backend.size, 2);
        } finally {
            backend.close();
        }
    });

    it('verifies an unknown login against a dummy hash, never skipping the hash work', async () => {
        const calls: string[] = [];
        const backend = createUsersFileBackend(writeUsers(usersYaml()), {
            watch: false,
            verifier: (hash) => {
                calls.push(hash);
                return Promise.resolve(true); // even a "match" must not let an unknown login in
            },
        });
        try {
            assert.equal(await backend.verify('mallory@example.com', 'alice-pw'), 'invalid');
            assert.equal(calls.length, 1);
            const dummy = calls[0]!;
            assert.notEqual(dummy, aliceHash);
            assert.notEqual(dummy, bobHash);
            // the users' hashes split 1:1; the dummy takes the cost of one of them
            assert.match(dummy, /^\$argon2id\$v=19\$m=19456,t=2,p=1\$|^\$2[aby]\$04\$/);
            assert.equal(await backend.verify('alice@example.com', 'anything'), 'ok');
            assert.equal(calls[1], aliceHash);
        } finally {
            backend.close();
        }
    });

    it('gives the dummy hash the cost most users have', async () => {
        const a = bcrypt.hashSync('a', 5);
        const b = bcrypt.hashSync('b', 5);
        const file = writeUsers(
            `users:\n  - { login: a, password: "${a}" }\n  - { login: b, password: "${b}" }\n  - { login: c, password: "${aliceHash}" }\n`,
        );
        const calls: string[] = [];
        const backend = createUsersFileBackend(file, {
            watch: false,
            verifier: (hash) => {
                calls.push(hash);
                return Promise.resolve(false);
            },
        });
        try {
            await backend.verify('zed', 'pw');
            assert.match(calls[0]!, /^\$2[aby]\$05\$/);
        } finally {
            backend.close();
        }
    });

    it('answers no sooner than the slowest cost in the file takes: known, unknown, cheap or costly alike', async () => {
        // bcrypt next to argon2id, as after a migration; the checks take 150 ms and 5 ms
        const slow = bcrypt.hashSync('slow-pw', 4);
        const file = writeUsers(
            `users:\n  - { login: fast, password: "${aliceHash}" }\n  - { login: fast2, password: "${aliceHash}" }\n  - { login: slow, password: "${slow}" }\n`,
        );
        // the bcrypt check stalls once (1.5 s), as under a moment of load
        let stall = true;
        const backend = createUsersFileBackend(file, {
            watch: false,
            verifier: (hash) => {
                const ms = hash.startsWith('$2') ? (stall ? 1500 : 150) : 5;
                stall = false;
                return new Promise((resolve) => setTimeout(() => resolve(false), ms));
            },
        });
        const timed = async (login: string): Promise<number> => {
            const started = performance.now();
            assert.equal(await backend.verify(login, 'wrong'), 'invalid');
            return performance.now() - started;
        };
        try {
            // the fake checks take longer than making the (real, cheap) hashes timed at load
            for (let i = 0; i < 6; i++) assert.ok((await timed('slow')) >= 145);
            for (const login of ['fast', 'nobody', 'fast2', 'Nobody-else']) {
                const ms = await timed(login);
                assert.ok(ms >= 140, `${login}: ${ms.toFixed(1)} ms, sooner than the bcrypt user's answer`);
                assert.ok(ms < 1000, `${login}: ${ms.toFixed(1)} ms, held to the one stalled check`);
            }
        } finally {
            backend.close();
        }
    });

    it('bounds concurrent verifications and refuses beyond the queue', async () => {
        let running = 0;
        let peak = 0;
        const release: (() => void)[] = [];
        const backend = createUsersFileBackend(writeUsers(usersYaml()), {
            watch: false,
            maxConcurrent: 2,
            maxQueue: 2,
            verifier: () =>
                new Promise<boolean>((resolve) => {
                    running++;
                    peak = Math.max(peak, running);
                    release.push(() => {
                        running--;
                        resolve(true);
                    });
                }),
        });
        try {
            const pending = Array.from({ length: 4 }, () => backend.verify('bob', 'x'));
            assert.equal(await backend.verify('bob', 'x'), 'unavailable', 'the fifth finds the queue full');
            while (release.length > 0 || running > 0) {
                const r = release.shift();
                if (r) r();
                await new Promise((resolve) => setImmediate(resolve));
            }
            assert.deepEqual(await Promise.all(pending), ['ok', 'ok', 'ok', 'ok']);
            assert.equal(peak, 2);
        } finally {
            backend.close();
        }
    });

    it('answers unavailable when the hash check itself fails', async () => {
        const backend = createUsersFileBackend(writeUsers(usersYaml()), {
            watch: false,
            verifier: () => Promise.reject(new Error('out of memory')),
        });
        try {
            assert.equal(await backend.verify('bob', 'bob-pw'), 'unavailable');
        } finally {
            backend.close();
        }
    });

    it('gives each login its sendAs policy', () => {
        const backend = createUsersFileBackend(writeUsers(usersYaml()), { watch: false });
        try {
            const alice = backend.sendAs('ALICE@example.com');
            assert.equal(mayUse('ALICE@example.com', 'alice+x@example.com', alice), true);
            assert.equal(mayUse('ALICE@example.com', 'x@example.org', alice), true);
            assert.equal(mayUse('ALICE@example.com', 'x@example.com', alice), false);
            const bob = backend.sendAs('bob');
            assert.equal(mayUse('bob', 'bob@example.com', bob), false, 'login "bob" is not an address');
            const nobody = backend.sendAs('nobody@example.com');
            assert.equal(
                mayUse('nobody@example.com', 'nobody@example.com', nobody),
                false,
                'unknown logins own nothing',
            );
        } finally {
            backend.close();
        }
    });

    it('reloads on change, and keeps the previous users when the new file is invalid', async () => {
        const file = writeUsers(usersYaml());
        const events: ReloadEvent[] = [];
        const backend = createUsersFileBackend(file, { debounceMs: 50, onReload: (e) => events.push(e) });
        try {
            const carolHash = await hashPassword('carol-pw');
            replaceFile(file, `${usersYaml()}  - login: carol@example.com\n    password: "${carolHash}"\n`);
            const first = await nextEvent(events, 0);
            assert.deepEqual(first, { ok: true, file, users: 3 });
            assert.equal(await backend.verify('carol@example.com', 'carol-pw'), 'ok');

            replaceFile(file, 'users:\n  - login: carol@example.com\n    password: carol-pw\n');
            const second = await nextEvent(events, 1);
            assert.equal(second.ok, false);
            assert.ok(!second.ok && second.error instanceof ConfigError);
            assert.ok(!second.ok && !second.error.message.includes('carol-pw'));
            assert.equal(backend.size, 3);
            assert.equal(await backend.verify('carol@example.com', 'carol-pw'), 'ok', 'old set still in force');

            // an in-place write (no rename) is seen too
            fs.writeFileSync(file, usersYaml());
            const third = await nextEvent(events, 2);
            assert.deepEqual(third, { ok: true, file, users: 2 });
            assert.equal(await backend.verify('carol@example.com', 'carol-pw'), 'invalid');
        } finally {
            backend.close();
        }
    });

    it('reload() (SIGHUP) throws on an invalid file and keeps the users; only file changes report', async () => {
        const file = writeUsers(usersYaml());
        const events: ReloadEvent[] = [];
        const backend = createUsersFileBackend(file, { watch: false, onReload: (e) => events.push(e) });
        try {
            const carolHash = await hashPassword('carol-pw');
            fs.writeFileSync(file, `${usersYaml()}  - { login: carol, password: "${carolHash}" }\n`);
            backend.reload();
            assert.equal(backend.size, 3);
            fs.writeFileSync(file, 'users: 3\n');
            assert.throws(() => backend.reload(), ConfigError);
            assert.equal(backend.size, 3);
            fs.rmSync(file);
            assert.throws(() => backend.reload(), /no such file/);
            assert.equal(backend.size, 3);
            assert.deepEqual(events, [], 'reload() reports by returning or throwing');
        } finally {
            backend.close();
        }
    });

    it('authenticate() names the login as the file writes it', async () => {
        const backend = createUsersFileBackend(writeUsers(usersYaml()), { watch: false });
        try {
            const ok = await backend.authenticate('ALICE@EXAMPLE.COM', 'alice-pw');
            assert.equal(ok.result, 'ok');
            assert.equal(ok.user, 'alice@example.com');
            assert.match(ok.credential ?? '', /^[A-Za-z0-9_-]{22}$/, 'a fingerprint, never the hash');
            assert.ok(!aliceHash.includes(ok.credential ?? '-'));
            assert.deepEqual(await backend.authenticate('nobody', 'x'), { result: 'invalid', reason: 'unknown login' });
            assert.deepEqual(await backend.authenticate('bob', 'x'), { result: 'invalid', reason: 'wrong password' });
        } finally {
            backend.close();
        }
    });

    it("tells whether a login's credential still holds after reloads: current, changed, removed", async () => {
        const file = writeUsers(usersYaml());
        const backend = createUsersFileBackend(file, { watch: false });
        try {
            const alice = (await backend.authenticate('alice@example.com', 'alice-pw')).credential!;
            const bob = (await backend.authenticate('bob', 'bob-pw')).credential!;
            replaceFile(file, `${usersYaml()}# a comment changes nothing\n`);
            backend.reload();
            assert.equal(backend.credentialState('alice@example.com', alice), 'current');
            assert.equal(backend.credentialState('ALICE@example.com', alice), 'current', 'logins ignore case');
            const newHash = await hashPassword('alice-new');
            replaceFile(
                file,
                usersYaml()
                    .replace(aliceHash, newHash)
                    .replace(/ {2}- login: bob\n.*\n/, ''),
            );
            backend.reload();
            assert.equal(backend.credentialState('alice@example.com', alice), 'changed');
            assert.equal(backend.credentialState('bob', bob), 'removed');
        } finally {
            backend.close();
        }
    });

    it('refuses to start on an invalid file', () => {
        assert.throws(
            () => createUsersFileBackend(writeUsers('users:\n  - login: a\n    password: plain\n'), { watch: false }),
            ConfigError,
        );
    });
});

describe('sendAs file (beside Dovecot)', () => {
    it('maps logins to addresses; unlisted logins may send as themselves', () => {
        const file = writeUsers(
            'users:\n  - login: alice@example.com\n    sendAs: ["@example.org"]\n  - login: svc\n    sendAs: [noreply@example.com]\n',
        );
        const table = createSendAsTable(file, { watch: false });
        try {
            assert.equal(mayUse('alice@example.com', 'alice@example.com', table.sendAs('alice@example.com')), false);
            assert.equal(mayUse('alice@example.com', 'x@example.org', table.sendAs('alice@example.com')), true);
            assert.equal(mayUse('svc', 'noreply@example.com', table.sendAs('SVC')), true);
            assert.equal(mayUse('bob@example.com', 'bob@example.com', table.sendAs('bob@example.com')), true);
            assert.equal(mayUse('bob@example.com', 'bob+x@example.com', table.sendAs('bob@example.com')), true);
        } finally {
            table.close();
        }
    });

    it('refuses passwords in a sendAs file', () => {
        const file = writeUsers(`users:\n  - login: alice\n    password: "${aliceHash}"\n`);
        assert.deepEqual(
            issuesOf(() => createSendAsTable(file, { watch: false })),
            ['3:5: users[0].password: passwords are checked by Dovecot; this file lists only login and sendAs'],
        );
    });
});

describe('mailwarden check: submission files', () => {
    const configWith = (auth: Config['auth']): Config => ({ auth }) as Config;

    it('validates the users file or the sendAs file named by the config', async () => {
        const good = writeUsers(usersYaml());
        const bad = writeUsers('users:\n  - login: a\n    password: plain\n');
        const base = { dovecot: null, sendAs: null, recipientDelimiter: '+', lockout: defaultAuthLockout() };
        assert.deepEqual(await submissionFilesCheck.validate(configWith({ ...base, users: good })), []);
        const issues = await submissionFilesCheck.validate(configWith({ ...base, users: bad }));
        assert.equal(issues.length, 1);
        assert.equal(issues[0]?.line, 3);
        const dovecot = { kind: 'tcp' as const, host: '127.0.0.1', port: 1 };
        const sendAs = await submissionFilesCheck.validate(
            configWith({ users: null, dovecot, sendAs: good, recipientDelimiter: '+', lockout: defaultAuthLockout() }),
        );
        assert.equal(sendAs.length, 2, 'passwords are refused in a sendAs file');
        assert.deepEqual(await submissionFilesCheck.validate(configWith(null)), []);
    });

    it('warns (exit code 0, 1 with --strict) about a users file other users can read, or anyone but its owner can write', async () => {
        const file = writeUsers(usersYaml());
        const configFile = path.join(dir, `perm-${++counter}.yaml`);
        fs.writeFileSync(configFile, `auth: { users: "${file}" }\n`);
        const run = async (mode: number, strict = false): Promise<{ code: number; out: string[]; err: string[] }> => {
            fs.chmodSync(file, mode);
            const out: string[] = [];
            const err: string[] = [];
            const code = await runCheck({
                configPath: configFile,
                env: {},
                out: (l) => out.push(l),
                err: (l) => err.push(l),
                strict,
            });
            return { code, out, err };
        };
        const fix = `Fix: chmod 600 ${file} (or 640 with a group only mailwarden is in)`;
        const readable = `${file}: warning: readable by every user of this machine, and the password hashes in it can be cracked offline (mode 0644). ${fix}`;
        assert.deepEqual(await run(0o644), {
            code: 0,
            out: [`ok: ${configFile} (1 warning; serve and reload accept these files as they are)`],
            err: [readable],
        });
        // --strict counts them like every other warning, and exits 1
        assert.deepEqual(await run(0o644, true), {
            code: 1,
            out: [],
            err: [
                readable,
                `${configFile}: 1 warning, and --strict refuses warnings (serve and reload would accept these files)`,
            ],
        });
        assert.deepEqual(await run(0o600, true), { code: 0, out: [`ok: ${configFile}`], err: [] });
        assert.deepEqual((await run(0o660)).err, [
            `${file}: warning: writable by its group (mode 0660); a writer could add a login or replace a hash. ${fix}`,
        ]);
        assert.deepEqual((await run(0o606)).err, [
            `${file}: warning: readable by every user of this machine, and the password hashes in it can be cracked offline, and writable by every user of this machine (mode 0606); a writer could add a login or replace a hash. ${fix}`,
        ]);
        for (const quiet of [0o600, 0o640, 0o400]) {
            assert.deepEqual(await run(quiet), { code: 0, out: [`ok: ${configFile}`], err: [] }, quiet.toString(8));
        }
        // the sendAs file beside Dovecot holds no hashes: only writers are a problem
        const sendAs = writeUsers('users:\n  - login: a@example.com\n    sendAs: ["@example.com"]\n');
        const dovecot = { kind: 'tcp' as const, host: '127.0.0.1', port: 1 };
        const withSendAs = configWith({
            users: null,
            dovecot,
            sendAs,
            recipientDelimiter: '+',
            lockout: defaultAuthLockout(),
        });
        fs.chmodSync(sendAs, 0o644);
        assert.deepEqual(submissionFilesCheck.warn?.(withSendAs), []);
        fs.chmodSync(sendAs, 0o666);
        assert.match(
            submissionFilesCheck.warn?.(withSendAs)[0]?.message ?? '',
            /^writable by every user of this machine \(mode 0666\); a writer could let a login send as any address\. Fix: chmod 644 /,
        );
    });
});
