/**
 * The submission users file and the sendAs file, and the credential backend built on the first.
 *
 *   users:
 *     - login: alice@example.com
 *       password: "$argon2id$v=19$m=19456,t=2,p=1$…"   # argon2id (preferred) or bcrypt $2a/$2b/$2y$
 *       sendAs: [alice@example.com, "@example.org"]     # optional; absent = the login itself
 *
 * The sendAs file (used with Dovecot) has the same shape without `password`.
 * Files are validated with `FILE:LINE:COL` issues like the config; a value that is not a
 * recognised hash is an error, so plaintext passwords are refused at load. Each file is watched
 * (its folder, so editors' atomic replaces are seen) and reloaded after a short debounce; an
 * invalid new version is reported and the previous set stays in force.
 * Verification (RFC 4954 AUTH, checked here) costs CPU on purpose, so it runs under a small
 * semaphore; an unknown login is verified against a dummy hash of the same cost, and every
 * answer waits (without holding a slot) until the slowest cost in the file would have taken, so
 * the time taken tells neither which logins exist nor which of them have a cheaper hash. A login
 * is handed a fingerprint of its hash, so a session can learn at its next command that the
 * password changed (or the login went away) in a reload. Passwords and hashes never reach logs
 * or messages.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { isScalar } from 'yaml';
import type { AuthOutcome, AuthResult, CredentialState, AuthBackend } from './auth-types.ts';
import { ConfigError, ioReason, type Issue } from '../config/issues.ts';
import { SourceReader, type Field } from '../config/reader.ts';
import { costKey, inspectHash, makeDummyHash, Semaphore, verifyPassword, type HashInfo } from './hashes.ts';
import { compileSenderPolicy, parseSendAsEntry, type SenderPolicy } from './sender-policy.ts';
import { AnswerPace, waitUntil } from './answer-pace.ts';

/** One user as read from a file. */
export interface UserRecord {
    /** As written. */
    readonly login: string;
    /** The stored hash; null in a sendAs file. */
    readonly hash: string | null;
    readonly hashInfo: HashInfo | null;
    /** As written; null when the entry has no `sendAs` (the login itself may be used). */
    readonly sendAs: readonly string[] | null;
    /** 1-based line of the entry. */
    readonly line: number;
}

export type PasswordMode = 'required' | 'forbidden';

const ENTRY_KEYS = { required: ['login', 'password', 'sendAs'], forbidden: ['login', 'sendAs', 'password'] } as const;
// eslint-disable-next-line no-control-regex
const LOGIN_RE = /^[^\s\x00-\x1f\x7f]{1,256}$/u;

/** A login the users file accepts: no spaces or control characters, at most 256 characters. */
export function isValidLogin(login: string): boolean {
    return LOGIN_RE.test(login);
}

/** Logins are matched case-insensitively. */
export function loginKey(login: string): string {
    return login.toLowerCase();
}

/**
 * Validates the text of a users file (`passwords: 'required'`) or a sendAs file
 * (`'forbidden'`). Issues name `file` as given.
 */
export function parseUsersText(
    file: string,
    text: string,
    passwords: PasswordMode,
): { users: UserRecord[]; issues: Issue[] } {
    const r = new SourceReader(file, text);
    if (r.failed) return { users: [], issues: r.issues };
    const users: UserRecord[] = [];
    const root = r.root();
    if (r.isEmpty(root)) return { users, issues: r.issues };
    const top = r.map(root, ['users']);
    const usersField = top?.get('users');
    if (!usersField || r.isEmpty(usersField)) return { users, issues: r.issues };
    const items = r.list(usersField, 'users (each a map with login, password and sendAs)') ?? [];
    const seen = new Map<string, number>();
    for (const item of items) {
        const entries = r.map(item, ENTRY_KEYS[passwords]);
        if (entries === null) continue;
        const line = lineOf(r, item);
        const loginField = entries.get('login');
        const passwordField = entries.get('password');
        const sendAsField = entries.get('sendAs');
        let login: string | null = null;
        if (!loginField || r.isEmpty(loginField)) {
            r.fail(item, 'missing "login"');
        } else {
            login = r.string(loginField, 'a login');
            if (login !== null && !LOGIN_RE.test(login)) {
                r.fail(loginField, 'a login may not contain spaces or control characters (at most 256 characters)');
                login = null;
            }
            if (login !== null) {
                const earlier = seen.get(loginKey(login));
                if (earlier !== undefined) {
                    r.fail(loginField, `login "${login}" is already listed (line ${earlier}); logins ignore case`);
                } else {
                    seen.set(loginKey(login), line);
                }
            }
        }
        let hash: string | null = null;
        let hashInfo: HashInfo | null = null;
        if (passwords === 'forbidden') {
            if (passwordField) {
                r.report(
                    passwordField.keyOffset,
                    `${passwordField.path}: passwords are checked by Dovecot; this file lists only login and sendAs`,
                );
            }
        } else if (!passwordField || r.isEmpty(passwordField)) {
            r.fail(item, 'missing "password" (a hash; set it with `mailwarden users passwd`)');
        } else {
            // never echo the value: it may be a plaintext password written by mistake
            const node = passwordField.node;
            if (node === null || !isScalar(node) || typeof node.value !== 'string') {
                r.fail(passwordField, 'expected a password hash written as a string');
            } else {
                const info = inspectHash(node.value.trim());
                if (info.kind === null) r.fail(passwordField, info.problem);
                else {
                    hash = node.value.trim();
                    hashInfo = info;
                }
            }
        }
        const sendAs = sendAsField && !r.isEmpty(sendAsField) ? readSendAs(r, sendAsField) : null;
        if (login !== null && (passwords === 'forbidden' || hash !== null)) {
            users.push({ login, hash, hashInfo, sendAs, line });
        }
    }
    return { users, issues: r.issues };
}

function readSendAs(r: SourceReader, field: Field): string[] {
    const items = r.list(field, 'addresses (user@domain) or domains (@domain)') ?? [];
    const out: string[] = [];
    const seen = new Set<string>();
    for (const item of items) {
        const text = r.string(item, 'an address (user@domain) or a domain (@domain)');
        if (text === null) continue;
        const entry = parseSendAsEntry(text);
        if (entry === null) {
            r.fail(item, `"${text}" is neither an address (user@domain) nor a domain (@domain)`);
            continue;
        }
        const key = entry.kind === 'address' ? entry.address : `@${entry.domain}`;
        if (seen.has(key)) {
            r.fail(item, `"${text}" is listed twice`);
            continue;
        }
        seen.add(key);
        out.push(text);
    }
    return out;
}

function lineOf(r: SourceReader, field: Field): number {
    return r.text.slice(0, field.offset).split('\n').length;
}

/** Reads and validates a users or sendAs file; throws ConfigError listing every problem. */
export function loadUsersFile(file: string, passwords: PasswordMode): UserRecord[] {
    let text: string;
    try {
        text = fs.readFileSync(file, 'utf8');
    } catch (err) {
        throw new ConfigError([{ file, line: 1, col: 1, message: `cannot read the file: ${ioReason(err)}` }]);
    }
    const { users, issues } = parseUsersText(file, text, passwords);
    if (issues.length > 0) throw new ConfigError(issues);
    return users;
}

/** What an automatic reload (the file changed) came to: for logs and `config_reloads_total`. */
export type ReloadEvent =
    | { readonly ok: true; readonly file: string; readonly users: number }
    | { readonly ok: false; readonly file: string; readonly error: Error };

/**
 * Calls `onChange` (debounced) whenever `file` may have changed. Watches the folder, because
 * editors and `mailwarden users` replace the file by renaming a new one over it.
 * Returns a function that stops watching. Watching is best effort: where the platform cannot
 * watch, nothing is reported and SIGHUP remains.
 */
export function watchFile(file: string, debounceMs: number, onChange: () => void): () => void {
    const dir = path.dirname(file);
    const base = path.basename(file);
    let timer: NodeJS.Timeout | null = null;
    let watcher: fs.FSWatcher | null = null;
    try {
        watcher = fs.watch(dir, { persistent: false }, (_event, name) => {
            if (name !== null && name !== base) return;
            if (timer) clearTimeout(timer);
            timer = setTimeout(() => {
                timer = null;
                onChange();
            }, debounceMs);
            timer.unref();
        });
        watcher.on('error', () => {
            watcher?.close();
            watcher = null;
        });
    } catch {
        watcher = null;
    }
    return () => {
        if (timer) clearTimeout(timer);
        timer = null;
        watcher?.close();
        watcher = null;
    };
}

export interface TableOptions {
    /** Watch the file and reload on change (default true). */
    readonly watch?: boolean;
    /** Quiet time after the last change before reloading (default 250 ms). */
    readonly debounceMs?: number;
    /** Every automatic reload (the file changed), successful or not; reload() reports by throwing. */
    readonly onReload?: (event: ReloadEvent) => void;
}

/** A users or sendAs file held in memory, replaced as a whole on reload. */
class UserTable {
    readonly file: string;
    private readonly passwords: PasswordMode;
    private byLogin = new Map<string, UserRecord>();
    private lastText: string | null = null;
    private readonly stopWatching: () => void;
    private readonly onReload: ((event: ReloadEvent) => void) | undefined;
    /** Called after each successful swap. */
    onSwap: (() => void) | null = null;

    constructor(file: string, passwords: PasswordMode, opts: TableOptions) {
        this.file = file;
        this.passwords = passwords;
        this.onReload = opts.onReload;
        this.load();
        this.stopWatching =
            opts.watch === false ? () => {} : watchFile(file, opts.debounceMs ?? 250, () => this.reloadOnChange());
    }

    get size(): number {
        return this.byLogin.size;
    }

    get users(): IterableIterator<UserRecord> {
        return this.byLogin.values();
    }

    get(login: string): UserRecord | undefined {
        return this.byLogin.get(loginKey(login));
    }

    /** Reads the file; throws ConfigError and keeps the current set when it is invalid. */
    private load(): boolean {
        let text: string;
        try {
            text = fs.readFileSync(this.file, 'utf8');
        } catch (err) {
            throw new ConfigError([
                { file: this.file, line: 1, col: 1, message: `cannot read the file: ${ioReason(err)}` },
            ]);
        }
        if (text === this.lastText) return false;
        const { users, issues } = parseUsersText(this.file, text, this.passwords);
        if (issues.length > 0) throw new ConfigError(issues);
        this.byLogin = new Map(users.map((u) => [loginKey(u.login), u]));
        this.lastText = text;
        this.onSwap?.();
        return true;
    }

    /** Re-reads the file when asked (SIGHUP): throws ConfigError and keeps the current set when invalid. */
    reload(): void {
        this.load();
    }

    /** Re-reads the file after a change was seen, and reports how that went. */
    private reloadOnChange(): void {
        let changed: boolean;
        try {
            changed = this.load();
        } catch (err) {
            this.onReload?.({ ok: false, file: this.file, error: err instanceof Error ? err : new Error(String(err)) });
            return;
        }
        if (changed) this.onReload?.({ ok: true, file: this.file, users: this.byLogin.size });
    }

    close(): void {
        this.stopWatching();
    }
}

export interface UsersFileBackendOptions extends TableOptions {
    /** See SenderPolicy.recipientDelimiter (default `+`). */
    readonly recipientDelimiter?: string;
    /** Verifications running at once (default 2). */
    readonly maxConcurrent?: number;
    /** Verifications waiting for a slot; beyond this AUTH gets 'unavailable' (default 64). */
    readonly maxQueue?: number;
    /** Replaces the hash check (tests). */
    readonly verifier?: (hash: string, password: string) => Promise<boolean>;
}

/** An AuthBackend over the users file. */
export interface UsersFileBackend extends AuthBackend {
    verify(login: string, password: string): Promise<AuthResult>;
    /** Like verify, with the login as the users file writes it. */
    authenticate(login: string, password: string): Promise<AuthOutcome>;
    /** The addresses `login` may send as (nothing for an unknown login). */
    sendAs(login: string): SenderPolicy;
    /** Whether the credential a login was handed (AuthOutcome.credential) is still the one in force. */
    credentialState(login: string, credential: string): CredentialState;
    /** Re-reads the file now (SIGHUP); throws ConfigError and keeps the current users when invalid. */
    reload(): void;
    /** Users currently loaded. */
    readonly size: number;
    close(): void;
}

/**
 * Longest an answer is held to hide the cost of a hash: about what the costliest hash an
 * operator would keep takes (bcrypt at cost 14, argon2id with a large memory cost).
 */
const PAD_CAP_MS = 2000;

/** Longest login and password considered; longer ones are refused without hashing. */
const MAX_LOGIN = 256;
const MAX_PASSWORD = 1024;

/** A fingerprint of a stored hash: tells a changed password apart without keeping or showing the hash. */
function fingerprint(hash: string): string {
    return createHash('sha256').update(hash).digest('base64url').slice(0, 22);
}

/** Loads the users file (throws ConfigError when invalid) and returns the backend. */
export function createUsersFileBackend(file: string, opts: UsersFileBackendOptions = {}): UsersFileBackend {
    const table = new UserTable(file, 'required', opts);
    const semaphore = new Semaphore(opts.maxConcurrent ?? 2, opts.maxQueue ?? 64);
    const verifier = opts.verifier ?? verifyPassword;
    const delimiter = opts.recipientDelimiter;

    // the dummy hash follows the cost most users' hashes have
    let dummyKey = 'default';
    let dummy: Promise<string> | null = null;
    /**
     * How long checking a hash of each cost takes: first the time making hashes of that cost
     * took (three, at load, in the background; the dummy is one of them), then the checks
     * measured (AnswerPace: a median, at most PAD_CAP_MS). Every check is answered no sooner
     * than the slowest cost in the file takes, so that in a file of mixed costs (bcrypt users
     * next to argon2id ones, as after a migration) the time an answer takes tells neither which
     * logins exist nor which cost a login's hash has.
     */
    const paces = new Map<string, AnswerPace>();
    let costs: ReadonlyMap<string, HashInfo> = new Map();
    const observe = (key: string, ms: number): void => {
        let pace = paces.get(key);
        if (!pace) paces.set(key, (pace = new AnswerPace(0, PAD_CAP_MS)));
        pace.record(ms);
    };
    const slowest = (): number => {
        let ms = 0;
        for (const key of costs.keys()) ms = Math.max(ms, paces.get(key)?.ms ?? 0);
        return ms;
    };
    const timedHash = async (info: HashInfo | null, key: string): Promise<string> => {
        const started = performance.now();
        const hash = await makeDummyHash(info);
        observe(key, performance.now() - started);
        return hash;
    };
    let calibrating = Promise.resolve();
    const refreshDummy = (): void => {
        const counts = new Map<string, { n: number; info: HashInfo }>();
        for (const u of table.users) {
            const key = u.hashInfo ? costKey(u.hashInfo) : null;
            if (key === null || !u.hashInfo) continue;
            const c = counts.get(key) ?? { n: 0, info: u.hashInfo };
            c.n++;
            counts.set(key, c);
        }
        let best: { n: number; info: HashInfo } | null = null;
        for (const c of counts.values()) if (best === null || c.n > best.n) best = c;
        const key = (best && costKey(best.info)) ?? 'default';
        costs = new Map([...counts].map(([k, c]) => [k, c.info]));
        if (key !== dummyKey || !dummy) {
            dummyKey = key;
            const made = timedHash(best?.info ?? null, key);
            made.catch(() => {});
            dummy = made;
        }
        // more hashes of each cost not timed yet, one after the other
        for (const [k, info] of costs) {
            if (paces.get(k)?.measured) continue;
            for (let n = k === key ? 2 : 3; n > 0; n--) {
                calibrating = calibrating.then(() =>
                    timedHash(info, k).then(
                        () => undefined,
                        () => undefined,
                    ),
                );
            }
        }
    };
    table.onSwap = refreshDummy;
    refreshDummy();

    const check = async (login: string, password: string): Promise<{ outcome: AuthOutcome; started: number }> => {
        const started = performance.now();
        const user = table.get(login);
        const info = user?.hashInfo ?? null;
        const key = info ? costKey(info) : dummyKey;
        let match: boolean;
        try {
            // an unknown login costs the same hash work as a known one
            const hash = user?.hash ?? (await (dummy ?? makeDummyHash(null)));
            const checking = performance.now();
            match = await verifier(hash, password);
            if (key !== null) observe(key, performance.now() - checking);
        } catch {
            return { outcome: { result: 'unavailable', reason: 'the password hash could not be checked' }, started };
        }
        if (user?.hash && match) {
            return { outcome: { result: 'ok', user: user.login, credential: fingerprint(user.hash) }, started };
        }
        return { outcome: { result: 'invalid', reason: user ? 'wrong password' : 'unknown login' }, started };
    };

    const authenticate = async (login: string, password: string): Promise<AuthOutcome> => {
        if (login === '' || login.length > MAX_LOGIN || password.length > MAX_PASSWORD) {
            return { result: 'invalid', reason: 'malformed credentials' };
        }
        const busy = {
            outcome: { result: 'unavailable', reason: 'too many authentications at once' },
            started: -1,
        } as const;
        const { outcome, started } = await semaphore.run(() => check(login, password), busy);
        if (started < 0) return outcome;
        // the slot is free again: the wait up to the slowest cost costs no CPU
        await waitUntil(started + slowest());
        return outcome;
    };

    return {
        authenticate,
        async verify(login: string, password: string): Promise<AuthResult> {
            return (await authenticate(login, password)).result;
        },
        sendAs(login: string): SenderPolicy {
            const user = table.get(login);
            const entries = user ? user.sendAs : [];
            return compileSenderPolicy(
                login,
                entries,
                delimiter === undefined ? {} : { recipientDelimiter: delimiter },
            );
        },
        credentialState(login: string, credential: string): CredentialState {
            const user = table.get(login);
            if (!user?.hash) return 'removed';
            return fingerprint(user.hash) === credential ? 'current' : 'changed';
        },
        reload: () => table.reload(),
        get size() {
            return table.size;
        },
        close: () => table.close(),
    };
}

/** The sendAs file used beside Dovecot: login → addresses. */
export interface SendAsTable {
    /** The addresses `login` may send as: its entry, or the login itself when it has none. */
    sendAs(login: string): SenderPolicy;
    reload(): void;
    readonly size: number;
    close(): void;
}

/** Loads a sendAs file (throws ConfigError when invalid). */
export function createSendAsTable(
    file: string,
    opts: TableOptions & { readonly recipientDelimiter?: string } = {},
): SendAsTable {
    const table = new UserTable(file, 'forbidden', opts);
    const delimiter = opts.recipientDelimiter;
    return {
        sendAs(login: string): SenderPolicy {
            const user = table.get(login);
            return compileSenderPolicy(
                login,
                user ? user.sendAs : null,
                delimiter === undefined ? {} : { recipientDelimiter: delimiter },
            );
        },
        reload: () => table.reload(),
        get size() {
            return table.size;
        },
        close: () => table.close(),
    };
}
