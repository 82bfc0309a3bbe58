/**
 * `mailwarden users add|passwd|remove|list [--file FILE]`: manages the submission users file.
 * Passwords are read from the terminal without echo (asked twice), or from standard input when
 * it is not a terminal (the first line, for scripts); never from the command line, where every
 * local user could read them. They are stored only as argon2id hashes. `list` shows logins and
 * sendAs, never hashes. The file is validated before and after every change, edited with the
 * YAML document API (comments survive) and replaced atomically (temporary file + rename, same
 * mode and owner), so a running mailwarden never reads half a file.
 * Exit codes: 0 done, 1 refused or failed, 2 usage error.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { isMap, isScalar, isSeq, parseDocument, Scalar, YAMLMap, YAMLSeq, type Document } from 'yaml';
import { ConfigError, formatIssue, loadConfig, resolveConfigPath } from '../config/load.ts';
import { hashPassword } from '../submission/hashes.ts';
import { parseSendAsEntry } from '../submission/sender-policy.ts';
import { isValidLogin, loginKey, parseUsersText } from '../submission/users-file.ts';

/** A terminal or pipe to read the password from. */
export interface PasswordInput extends AsyncIterable<Buffer | string> {
    readonly isTTY?: boolean;
    setRawMode?(raw: boolean): unknown;
    on(event: 'data', listener: (chunk: Buffer | string) => void): unknown;
    removeListener(event: 'data', listener: (chunk: Buffer | string) => void): unknown;
    resume(): unknown;
    pause(): unknown;
}

export interface UsersIo {
    readonly stdin: PasswordInput;
    /** One line of normal output. */
    readonly out: (line: string) => void;
    /** One line of error output. */
    readonly err: (line: string) => void;
    /** A prompt without a line break (the terminal; standard error in the CLI). */
    readonly prompt: (text: string) => void;
    readonly env: NodeJS.ProcessEnv;
    readonly cwd: string;
}

export const USERS_USAGE = `Usage: mailwarden users <add|passwd|remove|list> [options]

  add LOGIN [--send-as ADDR]...   add a user; ADDR is user@domain or @domain (repeatable;
                                  without it the user may send as LOGIN only)
  passwd LOGIN                    set a new password
  remove LOGIN                    remove a user
  list                            show logins and the addresses each may send as

Options:
  --file FILE          the users file (else auth.users of the configuration)
  -c, --config FILE    the configuration to take auth.users from

The password is asked twice on a terminal without echo, or read from the first line of
standard input, e.g. printf '%s\\n' "$PASS" | mailwarden users passwd alice@example.com
`;

class UsageError extends Error {}
class Refused extends Error {}

/** Runs `mailwarden users …` (argv without the word `users`); returns the exit code. */
export async function runUsers(argv: readonly string[], io: UsersIo): Promise<number> {
    try {
        return await users(argv, io);
    } catch (err) {
        if (err instanceof UsageError) {
            io.err(`mailwarden users: ${err.message}`);
            io.err('');
            for (const line of USERS_USAGE.trimEnd().split('\n')) io.err(line);
            return 2;
        }
        if (err instanceof Refused) {
            for (const line of err.message.split('\n')) io.err(line);
            return 1;
        }
        throw err;
    }
}

async function users(argv: readonly string[], io: UsersIo): Promise<number> {
    let parsed;
    try {
        parsed = parseArgs({
            args: [...argv],
            allowPositionals: true,
            strict: true,
            options: {
                file: { type: 'string' },
                config: { type: 'string', short: 'c' },
                'send-as': { type: 'string', multiple: true },
                help: { type: 'boolean', short: 'h' },
            },
        });
    } catch (err) {
        throw new UsageError(err instanceof Error ? err.message : String(err));
    }
    const { values, positionals } = parsed;
    const [action, login, ...extra] = positionals;
    if (values.help || action === 'help') {
        for (const line of USERS_USAGE.trimEnd().split('\n')) io.out(line);
        return 0;
    }
    if (action === undefined) throw new UsageError('name an action: add, passwd, remove or list');
    if (!['add', 'passwd', 'remove', 'list'].includes(action)) throw new UsageError(`unknown action '${action}'`);
    if (extra.length > 0) throw new UsageError(`unexpected '${extra[0] ?? ''}'`);
    const sendAs = values['send-as'] ?? [];
    if (sendAs.length > 0 && action !== 'add') throw new UsageError('--send-as goes with add');
    if (action === 'list') {
        if (login !== undefined) throw new UsageError(`unexpected '${login}'`);
    } else if (login === undefined) {
        throw new UsageError(`${action} needs a LOGIN`);
    } else if (!isValidLogin(login)) {
        throw new UsageError(
            `"${login}" is not a usable login (no spaces or control characters, at most 256 characters)`,
        );
    }
    for (const entry of sendAs) {
        if (parseSendAsEntry(entry) === null)
            throw new UsageError(`--send-as "${entry}" is neither user@domain nor @domain`);
    }

    const file = usersFilePath(values.file, values.config, io);
    const display = values.file ?? file;
    const text = readExisting(file, action === 'add');
    const before = parseUsersText(display, text ?? '', 'required');
    if (before.issues.length > 0) {
        throw new Refused(
            [...before.issues.map(formatIssue), `${display}: fix these first; nothing was changed`].join('\n'),
        );
    }

    if (action === 'list') {
        listUsers(before.users, io);
        return 0;
    }
    const name = login as string;
    const existing = before.users.find((u) => loginKey(u.login) === loginKey(name));
    if (action === 'add' && existing)
        throw new Refused(`${display}: "${existing.login}" exists already; use passwd to change its password`);
    if (action !== 'add' && !existing) throw new Refused(`${display}: no user "${name}"`);

    const doc = parseDocument(text ?? '', { keepSourceTokens: false });
    const seq = usersSeq(doc);
    if (action === 'remove') {
        seq.items.splice(indexOf(seq, name), 1);
    } else {
        const password = await readPassword(io);
        const hash = await hashPassword(password);
        const quoted = new Scalar(hash);
        quoted.type = 'QUOTE_DOUBLE';
        if (action === 'add') {
            const entry = new YAMLMap();
            entry.set('login', name);
            entry.set('password', quoted);
            if (sendAs.length > 0) {
                const list = new YAMLSeq();
                list.flow = true;
                for (const a of sendAs) list.items.push(a.startsWith('@') ? quotedScalar(a) : new Scalar(a));
                entry.set('sendAs', list);
            }
            seq.items.push(entry);
        } else {
            const item = seq.items[indexOf(seq, name)];
            if (isMap(item)) item.set('password', quoted);
        }
    }
    const out = doc.toString({ lineWidth: 0 });
    const after = parseUsersText(display, out, 'required');
    if (after.issues.length > 0)
        throw new Error(`the edited users file does not validate: ${after.issues.map(formatIssue).join('; ')}`);
    writeAtomic(file, out);
    const done = { add: 'added', passwd: 'password changed for', remove: 'removed' }[
        action as 'add' | 'passwd' | 'remove'
    ];
    io.out(`${done} ${existing?.login ?? name} (${display})`);
    return 0;
}

function quotedScalar(value: string): Scalar {
    const s = new Scalar(value);
    s.type = 'QUOTE_DOUBLE';
    return s;
}

/** `--file`, else `auth.users` of the configuration. */
function usersFilePath(fileFlag: string | undefined, configFlag: string | undefined, io: UsersIo): string {
    if (fileFlag !== undefined) {
        if (fileFlag === '') throw new UsageError('--file needs a path');
        return path.resolve(io.cwd, fileFlag);
    }
    const configPath = resolveConfigPath({ flag: configFlag, env: io.env, cwd: io.cwd });
    if (configPath === null) throw new UsageError('no configuration file found: name the users file with --file FILE');
    let config;
    try {
        config = loadConfig(configPath, io.env, { cwd: io.cwd });
    } catch (err) {
        if (err instanceof ConfigError) {
            throw new Refused(
                [
                    ...err.issues.map(formatIssue),
                    'the configuration does not load; name the users file with --file FILE',
                ].join('\n'),
            );
        }
        throw err;
    }
    if (config.auth?.users) return config.auth.users;
    if (config.auth?.dovecot) {
        throw new Refused(
            `${configPath}: auth uses Dovecot; manage its users there (this command edits a users file given with --file)`,
        );
    }
    throw new Refused(`${configPath}: has no auth.users; name the users file with --file FILE`);
}

function readExisting(file: string, mayBeMissing: boolean): string | null {
    try {
        return fs.readFileSync(file, 'utf8');
    } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT' && mayBeMissing) return null;
        if (code === 'ENOENT') throw new Refused(`${file}: no such file (add a user to create it)`);
        throw new Refused(`${file}: cannot read it: ${err instanceof Error ? err.message : String(err)}`);
    }
}

/** The `users:` sequence of the document, created (block style) when missing or empty. */
function usersSeq(doc: Document): YAMLSeq {
    if (!isMap(doc.contents)) doc.contents = new YAMLMap();
    const root = doc.contents as YAMLMap;
    const found: unknown = root.get('users', true);
    let seq: YAMLSeq;
    if (isSeq(found)) {
        seq = found;
    } else {
        seq = new YAMLSeq();
        root.set('users', seq);
    }
    if (seq.items.length === 0) seq.flow = false;
    return seq;
}

function indexOf(seq: YAMLSeq, login: string): number {
    return seq.items.findIndex((item) => {
        if (!isMap(item)) return false;
        const value = item.get('login', true);
        return isScalar(value) && typeof value.value === 'string' && loginKey(value.value.trim()) === loginKey(login);
    });
}

function listUsers(users: readonly { login: string; sendAs: readonly string[] | null }[], io: UsersIo): void {
    if (users.length === 0) {
        io.out('no users');
        return;
    }
    const width = Math.max('LOGIN'.length, ...users.map((u) => u.login.length));
    io.out(`${'LOGIN'.padEnd(width)}  SENDS AS`);
    for (const u of users) {
        const sends =
            u.sendAs === null ? `${u.login} (its login)` : u.sendAs.length === 0 ? '(nothing)' : u.sendAs.join(', ');
        io.out(`${u.login.padEnd(width)}  ${sends}`);
    }
}

/** Reads the new password: twice without echo on a terminal, else the first line of stdin. */
async function readPassword(io: UsersIo): Promise<string> {
    let password: string;
    if (io.stdin.isTTY && io.stdin.setRawMode) {
        password = await readHidden(io, 'Password: ');
        const again = await readHidden(io, 'Repeat password: ');
        if (again !== password) throw new Refused('the passwords differ; nothing was changed');
    } else {
        let text = '';
        for await (const chunk of io.stdin) {
            text += typeof chunk === 'string' ? chunk : chunk.toString('utf8');
            if (text.includes('\n') || text.length > 65_536) break;
        }
        password = text.split('\n')[0]?.replace(/\r$/, '') ?? '';
    }
    if (password === '') throw new Refused('an empty password is refused; nothing was changed');
    if (password.includes('\0')) throw new Refused('a password may not contain NUL; nothing was changed');
    if (Buffer.byteLength(password) > 1024)
        throw new Refused('a password of more than 1024 bytes is refused; nothing was changed');
    return password;
}

/** One line from a terminal in raw mode, not echoed. Ctrl-C or Ctrl-D on an empty line aborts. */
function readHidden(io: UsersIo, prompt: string): Promise<string> {
    const input = io.stdin;
    io.prompt(prompt);
    return new Promise((resolve, reject) => {
        let value = '';
        const finish = (err: Error | null): void => {
            input.removeListener('data', onData);
            input.setRawMode?.(false);
            input.pause();
            io.prompt('\n');
            if (err) reject(err);
            else resolve(value);
        };
        const onData = (chunk: Buffer | string): void => {
            for (const ch of typeof chunk === 'string' ? chunk : chunk.toString('utf8')) {
                if (ch === '\r' || ch === '\n') return finish(null);
                if (ch === '\u0003' || (ch === '\u0004' && value === ''))
                    return finish(new Refused('aborted; nothing was changed'));
                if (ch === '\u007f' || ch === '\b') value = [...value].slice(0, -1).join('');
                else if (ch >= ' ') value += ch;
            }
        };
        input.setRawMode?.(true);
        input.on('data', onData);
        input.resume();
    });
}

/** Replaces `file` with `text` atomically, keeping its mode and owner (new files: 0600). */
export function writeAtomic(file: string, text: string): void {
    let mode = 0o600;
    let owner: { uid: number; gid: number } | null = null;
    try {
        const st = fs.statSync(file);
        mode = st.mode & 0o777;
        owner = { uid: st.uid, gid: st.gid };
    } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    const dir = path.dirname(file);
    const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
    const fd = fs.openSync(tmp, 'wx', mode);
    try {
        try {
            fs.writeSync(fd, text);
            fs.fchmodSync(fd, mode);
            if (owner) {
                try {
                    fs.fchownSync(fd, owner.uid, owner.gid);
                } catch {
                    // not root: the file becomes ours, as with any editor
                }
            }
            fs.fsyncSync(fd);
        } finally {
            fs.closeSync(fd);
        }
        fs.renameSync(tmp, file);
    } catch (err) {
        fs.rmSync(tmp, { force: true });
        throw err;
    }
}
