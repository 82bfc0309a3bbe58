// `mailwarden users add|passwd|remove|list` end to end through runUsers with fake standard
// streams and a temporary users file: hashes only argon2id, passwords from a pipe or a
// terminal without echo (never argv), comments kept, atomic replacement with mode kept, list
// without hashes, and the refusals.
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { runUsers, type PasswordInput, type UsersIo } from '../../src/commands/users.ts';
import { createUsersFileBackend, loadUsersFile } from '../../src/submission/users-file.ts';

let dir: string;
before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mw-users-cmd-'));
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

interface Run {
    code: number;
    out: string[];
    err: string[];
    prompts: string[];
}

async function run(argv: string[], stdin: PasswordInput | string = '', env: NodeJS.ProcessEnv = {}): Promise<Run> {
    const out: string[] = [];
    const err: string[] = [];
    const prompts: string[] = [];
    const io: UsersIo = {
        stdin: typeof stdin === 'string' ? Readable.from([Buffer.from(stdin)]) : stdin,
        out: (l) => out.push(l),
        err: (l) => err.push(l),
        prompt: (t) => prompts.push(t),
        env,
        cwd: dir,
    };
    const code = await runUsers(argv, io);
    return { code, out, err, prompts };
}

/** A terminal: raw mode switchable, typed keys delivered as data events after resume(). */
class FakeTty extends EventEmitter implements PasswordInput {
    readonly isTTY = true;
    raw = false;
    rawChanges: boolean[] = [];
    private readonly typed: string[];
    constructor(typed: string[]) {
        super();
        this.typed = [...typed];
    }
    setRawMode(raw: boolean): this {
        this.raw = raw;
        this.rawChanges.push(raw);
        return this;
    }
    resume(): this {
        const next = this.typed.shift();
        if (next !== undefined) setImmediate(() => this.emit('data', Buffer.from(next)));
        return this;
    }
    pause(): this {
        return this;
    }
    async *[Symbol.asyncIterator](): AsyncIterator<Buffer> {
        // a terminal is never read as a stream by the command
    }
}

async function verify(file: string, login: string, password: string): Promise<string> {
    const backend = createUsersFileBackend(file, { watch: false });
    try {
        return await backend.verify(login, password);
    } finally {
        backend.close();
    }
}

describe('mailwarden users', () => {
    it('add creates the file (mode 0600) with an argon2id hash read from a pipe', async () => {
        const file = path.join(dir, 'new.yaml');
        const r = await run(
            [
                'add',
                'alice@example.com',
                '--file',
                'new.yaml',
                '--send-as',
                'alice@example.com',
                '--send-as',
                '@example.org',
            ],
            'alice pw\n',
        );
        assert.equal(r.code, 0, r.err.join('\n'));
        assert.deepEqual(r.out, ['added alice@example.com (new.yaml)']);
        assert.equal(fs.statSync(file).mode & 0o777, 0o600);
        const text = fs.readFileSync(file, 'utf8');
        assert.match(text, /password: "\$argon2id\$v=19\$m=19456,t=2,p=1\$[^"]+"/);
        assert.ok(!text.includes('alice pw'));
        assert.deepEqual(
            loadUsersFile(file, 'required').map((u) => [u.login, u.sendAs]),
            [['alice@example.com', ['alice@example.com', '@example.org']]],
        );
        assert.equal(await verify(file, 'alice@example.com', 'alice pw'), 'ok', 'inner spaces kept, line end removed');
        assert.deepEqual(
            fs.readdirSync(dir).filter((n) => n.includes('.tmp')),
            [],
            'no temporary file left',
        );
    });

    it('passwd and remove keep comments, other users, mode and layout', async () => {
        const file = path.join(dir, 'kept.yaml');
        assert.equal((await run(['add', 'bob', '--file', file], 'bob-1\n')).code, 0);
        assert.equal((await run(['add', 'carol@example.com', '--file', file], 'carol-1\r\n')).code, 0);
        fs.writeFileSync(file, `# who may submit\n${fs.readFileSync(file, 'utf8')}`);
        fs.chmodSync(file, 0o640);

        const p = await run(['passwd', 'BOB', '--file', file], 'bob-2\n');
        assert.equal(p.code, 0, p.err.join('\n'));
        assert.deepEqual(p.out, [`password changed for bob (${file})`]);
        assert.equal(await verify(file, 'bob', 'bob-2'), 'ok');
        assert.equal(await verify(file, 'bob', 'bob-1'), 'invalid');
        assert.equal(await verify(file, 'carol@example.com', 'carol-1'), 'ok');
        assert.ok(fs.readFileSync(file, 'utf8').startsWith('# who may submit\n'));
        assert.equal(fs.statSync(file).mode & 0o777, 0o640);

        const rm = await run(['remove', 'bob', '--file', file]);
        assert.equal(rm.code, 0, rm.err.join('\n'));
        assert.deepEqual(
            loadUsersFile(file, 'required').map((u) => u.login),
            ['carol@example.com'],
        );
        assert.ok(fs.readFileSync(file, 'utf8').startsWith('# who may submit\n'));
    });

    it('list shows logins and sendAs, never hashes', async () => {
        const file = path.join(dir, 'list.yaml');
        await run(['add', 'dave@example.com', '--file', file, '--send-as', '@example.net'], 'x\n');
        await run(['add', 'erin', '--file', file], 'y\n');
        const r = await run(['list', '--file', file]);
        assert.equal(r.code, 0);
        assert.deepEqual(r.out, [
            'LOGIN             SENDS AS',
            'dave@example.com  @example.net',
            'erin              erin (its login)',
        ]);
        assert.ok(!r.out.join('\n').includes('$argon2'));
        const empty = path.join(dir, 'empty.yaml');
        fs.writeFileSync(empty, 'users: []\n');
        assert.deepEqual((await run(['list', '--file', empty])).out, ['no users']);
    });

    it('reads the password twice from a terminal without echo', async () => {
        const file = path.join(dir, 'tty.yaml');
        const tty = new FakeTty(['s3cret\r', 's3cr\x7fret\r']);
        const r = await run(['add', 'frank', '--file', file], tty);
        assert.equal(r.code, 0, r.err.join('\n'));
        assert.deepEqual(r.prompts, ['Password: ', '\n', 'Repeat password: ', '\n']);
        assert.ok(!r.out.concat(r.err, r.prompts).join('').includes('s3cret'));
        assert.deepEqual(tty.rawChanges, [true, false, true, false]);
        assert.equal(await verify(file, 'frank', 's3cret'), 'ok');

        const mismatch = await run(['passwd', 'frank', '--file', file], new FakeTty(['one\r', 'two\r']));
        assert.equal(mismatch.code, 1);
        assert.deepEqual(mismatch.err, ['the passwords differ; nothing was changed']);
        assert.equal(await verify(file, 'frank', 's3cret'), 'ok');

        const aborted = await run(['passwd', 'frank', '--file', file], new FakeTty(['ab\x03']));
        assert.equal(aborted.code, 1);
        assert.deepEqual(aborted.err, ['aborted; nothing was changed']);
    });

    it('refuses what it must refuse, leaving the file as it was', async () => {
        const file = path.join(dir, 'refuse.yaml');
        await run(['add', 'gina', '--file', file], 'g\n');
        const before = fs.readFileSync(file, 'utf8');

        const cases: [string[], string, number, RegExp][] = [
            [['add', 'GINA', '--file', file], 'x\n', 1, /"gina" exists already/],
            [['passwd', 'nobody', '--file', file], 'x\n', 1, /no user "nobody"/],
            [['remove', 'nobody', '--file', file], '', 1, /no user "nobody"/],
            [['passwd', 'gina', '--file', file], '\n', 1, /an empty password is refused/],
            [['passwd', 'gina', '--file', file, '--password', 'x'], '', 2, /Unknown option '--password'/],
            [['add', 'has space', '--file', file], 'x\n', 2, /not a usable login/],
            [['add', 'h', '--file', file, '--send-as', 'example.org'], 'x\n', 2, /--send-as "example.org" is neither/],
            [['passwd', 'gina', '--file', file, '--send-as', 'a@b.example'], 'x\n', 2, /--send-as goes with add/],
            [['list', 'extra', '--file', file], '', 2, /unexpected 'extra'/],
            [['rename', 'gina', '--file', file], '', 2, /unknown action 'rename'/],
            [[], '', 2, /name an action/],
            [['passwd', '--file', file], '', 2, /passwd needs a LOGIN/],
        ];
        for (const [argv, stdin, code, message] of cases) {
            const r = await run(argv, stdin);
            assert.equal(r.code, code, argv.join(' '));
            assert.match(r.err.join('\n'), message, argv.join(' '));
            assert.equal(fs.readFileSync(file, 'utf8'), before, argv.join(' '));
        }
        assert.equal((await run(['passwd', 'gina', '--file', path.join(dir, 'absent.yaml')], 'x\n')).code, 1);
    });

    it('does not touch a users file that does not validate', async () => {
        const file = path.join(dir, 'broken.yaml');
        fs.writeFileSync(file, 'users:\n  - login: h\n    password: plaintext\n');
        const r = await run(['add', 'i', '--file', file], 'x\n');
        assert.equal(r.code, 1);
        assert.match(r.err[0] ?? '', /broken\.yaml:3:15: users\[0\]\.password: is not a password hash/);
        assert.match(r.err.at(-1) ?? '', /fix these first; nothing was changed/);
        assert.equal(fs.readFileSync(file, 'utf8'), 'users:\n  - login: h\n    password: plaintext\n');
    });

    it('takes the file from auth.users of the configuration', async () => {
        const file = path.join(dir, 'from-config.yaml');
        fs.writeFileSync(file, 'users: []\n');
        const config = path.join(dir, 'mailwarden.yaml');
        fs.writeFileSync(config, 'auth: { users: ./from-config.yaml }\n');
        const r = await run(['add', 'jo', '-c', config], 'pw\n');
        assert.equal(r.code, 0, r.err.join('\n'));
        assert.equal(await verify(file, 'jo', 'pw'), 'ok');
        const viaEnv = await run(['list'], '', { MAILWARDEN_CONFIG: config });
        assert.equal(viaEnv.out[1], 'jo     jo (its login)');

        const dovecot = path.join(dir, 'dovecot.yaml');
        fs.writeFileSync(dovecot, 'auth: { dovecot: "127.0.0.1:12345" }\n');
        const d = await run(['list', '-c', dovecot]);
        assert.equal(d.code, 1);
        assert.match(d.err[0] ?? '', /auth uses Dovecot/);
        fs.rmSync(config);
    });

    it('prints its usage', async () => {
        const r = await run(['--help']);
        assert.equal(r.code, 0);
        assert.match(r.out[0] ?? '', /^Usage: mailwarden users/);
    });
});
