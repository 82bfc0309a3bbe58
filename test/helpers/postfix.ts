/**
 * Runs a real Postfix (Debian's) for tests and benchmarks: its own config, queue, data and
 * mail folders in a fresh temporary folder, an smtpd on a free loopback port that accepts
 * XCLIENT from loopback, and delivery of `@example.test` recipients into Maildirs.
 * It must not read or change the system's Postfix (/etc/postfix, /var/spool/postfix) and must
 * not listen on anything but 127.0.0.1; stop() stops the instance and removes its folder.
 * For fault tests it can crash (SIGKILL of the master and every process it started, the
 * queue and Maildirs kept) and start again on the same port; it only ever signals processes
 * of its own instance, found by their parent PID.
 * The deployment settings are read from docs/postfix/ (main.cf lines, the master.cf entry, the
 * header_checks table), the files the deployment guide includes, so the documented lines are
 * the tested ones.
 */
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { chmod, chown, mkdir, mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort, smtpConnect } from './smtp-client.ts';

/** The deployment snippets the guide (docs/deploy-postfix.md) includes; the test instance uses them as written. */
const SNIPPETS = new URL('../../docs/postfix/', import.meta.url);

/** Parses main.cf text: `name = value` lines, continuation lines starting with white space, `#` comments. */
export function parseMainCf(text: string): Record<string, string> {
    const out: Record<string, string> = {};
    let last: string | null = null;
    for (const line of text.split('\n')) {
        if (/^\s*(#|$)/.test(line)) continue;
        if (/^\s/.test(line)) {
            if (last === null) throw new Error(`main.cf continuation line without a parameter: ${line}`);
            out[last] = `${out[last]} ${line.trim()}`.trim();
            continue;
        }
        const m = /^([A-Za-z0-9_]+)\s*=\s*(.*)$/.exec(line);
        if (!m) throw new Error(`not a main.cf line: ${line}`);
        last = m[1]!;
        out[last] = m[2]!.trim();
    }
    return out;
}

/**
 * main.cf lines for the Postfix behind mailwarden (docs/postfix/main.cf): hold messages that
 * mailwarden marked for quarantine, normalise bare newlines. Postfix expands `$config_directory`.
 */
export const POSTFIX_DEPLOYMENT_MAIN_CF: Readonly<Record<string, string>> = parseMainCf(
    readFileSync(new URL('main.cf', SNIPPETS), 'utf8'),
);

/** The file named by `header_checks` above (`/etc/postfix/mailwarden_header_checks`), as documented. */
export const POSTFIX_HEADER_CHECKS_FILE = 'mailwarden_header_checks';
export const POSTFIX_HEADER_CHECKS = readFileSync(new URL(POSTFIX_HEADER_CHECKS_FILE, SNIPPETS), 'utf8');

/**
 * Parameters of the documented main.cf that only recent patch releases know (Debian bookworm's
 * 3.7.11 has them); the test instance leaves these, and only these, out where postconf does not
 * know them. Any other unknown parameter fails the start.
 */
const RECENT_PARAMETERS: ReadonlySet<string> = new Set([
    'smtpd_forbid_bare_newline',
    'smtpd_forbid_bare_newline_exclusions',
]);

/** The documented master.cf entry (docs/postfix/master.cf) without its comments. */
const MASTER_CF_ENTRY = readFileSync(new URL('master.cf', SNIPPETS), 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '' && !l.startsWith('#'))
    .join('\n');

/**
 * The documented master.cf entry of the loopback smtpd that mailwarden forwards to
 * (`smtp://127.0.0.1:10026`), with its port and chroot column set for a test instance.
 */
export function postfixUpstreamMasterCf(
    port = 10026,
    chroot: 'y' | 'n' = 'y',
    overrides: Readonly<Record<string, string | null>> = {},
): string {
    const [first = '', ...documented] = MASTER_CF_ENTRY.split('\n');
    const options = documented.filter((o) => {
        const name = /^\s+-o (\w+)=/.exec(o)?.[1];
        return name === undefined || !(name in overrides);
    });
    for (const [name, value] of Object.entries(overrides)) if (value !== null) options.push(`  -o ${name}=${value}`);
    const fields = first.trim().split(/\s+/);
    if (fields[0] !== '127.0.0.1:10026' || fields[1] !== 'inet' || fields[7] !== 'smtpd' || fields.length !== 8) {
        throw new Error(`docs/postfix/master.cf: unexpected service line: ${first}`);
    }
    fields[0] = `127.0.0.1:${port}`;
    fields[4] = chroot;
    return [fields.join(' '), ...options].join('\n');
}

/** The virtual domain whose users get Maildirs, and the instance's host name (seen in Received). */
export const POSTFIX_DOMAIN = 'example.test';
export const POSTFIX_HOSTNAME = 'postfix.test';

export interface PostfixOptions {
    /** Local parts that get a Maildir (default: alice, bob). */
    users?: readonly string[];
    /** Extra or overriding main.cf settings. */
    mainCf?: Readonly<Record<string, string>>;
    /**
     * `-o` settings of the documented loopback service to replace (a value) or drop (null, so
     * main.cf's value applies), as in a deployment whose entry differs from the documented one.
     */
    serviceOptions?: Readonly<Record<string, string | null>>;
}

export interface PostfixInstance {
    readonly host: '127.0.0.1';
    readonly port: number;
    /** The temporary folder holding everything. */
    readonly dir: string;
    readonly configDir: string;
    readonly queueDir: string;
    /** Maildir folder of a virtual user (`alice` or `alice@example.test`). */
    maildir(user: string): string;
    /** Contents of the files in the user's Maildir `new/`, oldest first. */
    messages(user: string): Promise<string[]>;
    /** Waits until the user has at least `n` messages and returns them all. */
    waitForMessages(user: string, n: number, timeoutMs?: number): Promise<string[]>;
    /** Queue ids of messages on hold (quarantined). */
    held(): Promise<string[]>;
    /** The Postfix log so far. */
    log(): Promise<string>;
    /**
     * Messages not yet delivered: complete queue files (Postfix sets the owner-execute bit on a
     * file once it is complete) in incoming, active, deferred and hold. The empty, incomplete
     * files a crash leaves in incoming are not mail and are not counted.
     */
    queued(): Promise<number>;
    /** The processes the master started, by PID and program name (`smtpd`, `qmgr`, `virtual`, …). */
    children(): Promise<{ pid: number; name: string }[]>;
    /** SIGKILLs the `smtpd` processes (sessions in progress break; the master starts new ones). Returns how many. */
    killSmtpd(): Promise<number>;
    /** SIGKILLs the master and every process it started, as a crash would; queue and Maildirs stay. */
    crash(): Promise<void>;
    /** Starts the instance again after crash(), on the same port; resolves when it greets. */
    restart(): Promise<void>;
    stop(): Promise<void>;
}

const MASTER_CF_SERVICES = `
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`;

function sbin(command: string): string {
    return existsSync(`/usr/sbin/${command}`) ? `/usr/sbin/${command}` : command;
}

/** The documented main.cf lines, without the recent parameters this Postfix does not know. */
async function deploymentSettings(): Promise<Readonly<Record<string, string>>> {
    const out: Record<string, string> = {};
    for (const [name, value] of Object.entries(POSTFIX_DEPLOYMENT_MAIN_CF)) {
        if (RECENT_PARAMETERS.has(name)) {
            const known = await run(sbin('postconf'), ['-d', name]);
            if (known.code !== 0 || !known.output.startsWith(`${name} =`)) continue;
        }
        out[name] = value;
    }
    return out;
}

function run(command: string, args: readonly string[]): Promise<{ code: number; output: string }> {
    return new Promise((resolve) => {
        execFile(command, args, { timeout: 30_000 }, (error, stdout, stderr) => {
            const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
            const output = `${stdout}${stderr}${error && typeof error.code !== 'number' ? error.message : ''}`;
            resolve({ code, output });
        });
    });
}

async function userIds(name: string): Promise<{ uid: number; gid: number }> {
    const passwd = await readFile('/etc/passwd', 'utf8');
    for (const line of passwd.split('\n')) {
        const f = line.split(':');
        if (f[0] === name && f[2] !== undefined && f[3] !== undefined) return { uid: Number(f[2]), gid: Number(f[3]) };
    }
    throw new Error(`user ${name} not found in /etc/passwd`);
}

/** True while the process runs (a zombie waiting to be reaped by init counts as gone). */
function alive(pid: number): boolean {
    try {
        process.kill(pid, 0);
    } catch {
        return false;
    }
    try {
        const line = readFileSync(`/proc/${pid}/stat`, 'utf8');
        const state = line.slice(line.lastIndexOf(')') + 2, line.lastIndexOf(')') + 3);
        return state !== 'Z';
    } catch {
        return true;
    }
}

/** Parent PID and program name of a process, or null when it is gone. */
async function processInfo(pid: number): Promise<{ ppid: number; name: string } | null> {
    try {
        const line = await readFile(`/proc/${pid}/stat`, 'utf8');
        const close = line.lastIndexOf(')');
        const name = line.slice(line.indexOf('(') + 1, close);
        const fields = line.slice(close + 2).split(' ');
        return fields[0] === 'Z' ? null : { ppid: Number(fields[1]), name };
    } catch {
        return null;
    }
}

/** The live processes whose parent is `parent`. */
async function childrenOf(parent: number): Promise<{ pid: number; name: string }[]> {
    const out: { pid: number; name: string }[] = [];
    for (const entry of await readdir('/proc')) {
        if (!/^\d+$/.test(entry)) continue;
        const info = await processInfo(Number(entry));
        if (info && info.ppid === parent) out.push({ pid: Number(entry), name: info.name });
    }
    return out;
}

function killQuietly(pid: number): void {
    try {
        process.kill(pid, 'SIGKILL');
    } catch {
        // already gone
    }
}

async function readOr(file: string, fallback: string): Promise<string> {
    try {
        return await readFile(file, 'utf8');
    } catch {
        return fallback;
    }
}

/** Starts a Postfix instance; it is ready to answer SMTP when the promise resolves. */
export async function startPostfix(options: PostfixOptions = {}): Promise<PostfixInstance> {
    if (process.getuid?.() !== 0) {
        throw new Error('the Postfix tests must run as root: the Postfix master process starts as root');
    }
    const users = options.users ?? ['alice', 'bob'];
    const dir = await mkdtemp(path.join(os.tmpdir(), 'mailwarden-postfix-'));
    // The delivery agent runs as `nobody` and must reach the Maildirs below this folder.
    await chmod(dir, 0o755);
    const configDir = path.join(dir, 'etc');
    const queueDir = path.join(dir, 'spool');
    const dataDir = path.join(dir, 'data');
    const mailDir = path.join(dir, 'mail');
    const logFile = path.join(dir, 'maillog');
    // data_directory is left to `postfix start`, which creates it owned by the postfix user.
    for (const d of [configDir, queueDir, mailDir]) await mkdir(d);
    const owner = await userIds('nobody');
    await chown(mailDir, owner.uid, owner.gid);
    const port = await freePort();

    const mailboxes = users.map((u) => `{${u}@${POSTFIX_DOMAIN}=${u}/}`).join(', ');
    const mainCf: Record<string, string> = {
        compatibility_level: '3.6',
        config_directory: configDir,
        queue_directory: queueDir,
        data_directory: dataDir,
        myhostname: POSTFIX_HOSTNAME,
        mydestination: '',
        // Nobody is trusted: after XCLIENT the client is the address passed, as in production.
        mynetworks: '',
        inet_interfaces: '127.0.0.1',
        inet_protocols: 'ipv4',
        alias_maps: '',
        alias_database: '',
        biff: 'no',
        smtpd_peername_lookup: 'no',
        disable_dns_lookups: 'yes',
        smtp_dns_support_level: 'disabled',
        maillog_file: logFile,
        maillog_file_prefixes: dir,
        virtual_mailbox_domains: POSTFIX_DOMAIN,
        virtual_mailbox_base: mailDir,
        virtual_mailbox_maps: `inline:{ ${mailboxes} }`,
        virtual_uid_maps: `static:${owner.uid}`,
        virtual_gid_maps: `static:${owner.gid}`,
        queue_run_delay: '1s',
        minimal_backoff_time: '1s',
        maximal_backoff_time: '2s',
        in_flow_delay: '0s',
        smtpd_error_sleep_time: '0s',
        ...(await deploymentSettings()),
        ...options.mainCf,
    };
    await writeFile(
        path.join(configDir, 'main.cf'),
        Object.entries(mainCf)
            .map(([k, v]) => `${k} = ${v}\n`)
            .join(''),
    );
    await writeFile(
        path.join(configDir, 'master.cf'),
        `${postfixUpstreamMasterCf(port, 'n', options.serviceOptions)}\n${MASTER_CF_SERVICES}`,
    );
    await writeFile(path.join(configDir, POSTFIX_HEADER_CHECKS_FILE), POSTFIX_HEADER_CHECKS);
    // Postfix re-reads a table file until it is older than a second (it might still be being
    // edited); dating the new files back saves that wait in every Postfix command.
    const past = new Date(Date.now() - 60_000);
    for (const file of await readdir(configDir)) await utimes(path.join(configDir, file), past, past);

    const postfix = sbin('postfix');
    const masterPidFile = path.join(queueDir, 'pid', 'master.pid');
    let masterPid: number | null = null;
    let stopped = false;
    /** Set by crash() until restart(): no master runs, and the pid file names a dead process. */
    let crashed = false;

    const maildir = (user: string): string => path.join(mailDir, user.split('@')[0] ?? user);
    const log = (): Promise<string> => readOr(logFile, '');

    const messages = async (user: string): Promise<string[]> => {
        const newDir = path.join(maildir(user), 'new');
        let names: string[];
        try {
            names = await readdir(newDir);
        } catch {
            return [];
        }
        const files = await Promise.all(
            names.map(async (name) => {
                const file = path.join(newDir, name);
                return { name, mtime: (await stat(file)).mtimeMs, body: await readFile(file, 'utf8') };
            }),
        );
        files.sort((a, b) => a.mtime - b.mtime || a.name.localeCompare(b.name));
        return files.map((f) => f.body);
    };

    const waitForMessages = async (user: string, n: number, timeoutMs = 10_000): Promise<string[]> => {
        const deadline = Date.now() + timeoutMs;
        for (;;) {
            const found = await messages(user);
            if (found.length >= n) return found;
            if (Date.now() > deadline) {
                const tail = (await log()).split('\n').slice(-30).join('\n');
                throw new Error(
                    `${user} has ${found.length} of ${n} messages after ${timeoutMs} ms; Postfix log:\n${tail}`,
                );
            }
            await sleep(50);
        }
    };

    const held = async (): Promise<string[]> => {
        try {
            return (await readdir(path.join(queueDir, 'hold'))).sort();
        } catch {
            return [];
        }
    };

    const stop = async (): Promise<void> => {
        if (stopped) return;
        stopped = true;
        if (crashed) {
            await rm(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
            return;
        }
        if (masterPid === null) {
            const pid = Number.parseInt(await readOr(masterPidFile, ''), 10);
            if (pid > 0) masterPid = pid;
        }
        if (masterPid === null) {
            await run(postfix, ['-c', configDir, 'stop']);
        } else {
            // What `postfix stop` does, without its one-second polling: SIGTERM makes the master
            // stop its children and exit. Wait for it before removing its folder.
            if (alive(masterPid)) process.kill(masterPid, 'SIGTERM');
            const deadline = Date.now() + 10_000;
            while (alive(masterPid) && Date.now() < deadline) await sleep(20);
            if (alive(masterPid)) killQuietly(masterPid);
        }
        await rm(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
    };

    const fail = async (reason: string): Promise<never> => {
        const check = await run(postfix, ['-c', configDir, 'check']);
        const maillog = await log();
        await stop();
        throw new Error(
            `Postfix did not start: ${reason}\n--- postfix check (exit ${check.code}) ---\n${check.output}` +
                `\n--- maillog ---\n${maillog}`,
        );
    };

    /** Runs `postfix start` and waits until the smtpd answers with its greeting. */
    const launch = async (): Promise<void> => {
        const started = await run(postfix, ['-c', configDir, 'start']);
        if (started.code !== 0) return fail(`postfix start exited ${started.code}: ${started.output}`);
        const pid = Number.parseInt(await readOr(masterPidFile, ''), 10);
        if (pid > 0) masterPid = pid;

        // Ready when the smtpd answers with its greeting.
        const deadline = Date.now() + 15_000;
        for (;;) {
            let problem: string;
            try {
                const client = await smtpConnect(port, { timeoutMs: 5_000 });
                try {
                    const greeting = await client.greeting();
                    if (greeting.code === 220) break;
                    problem = `greeting ${greeting.raw.trim()}`;
                } finally {
                    client.close();
                }
            } catch (error) {
                problem = String(error);
            }
            if (Date.now() > deadline) return fail(`no SMTP greeting on 127.0.0.1:${port}: ${problem}`);
            await sleep(50);
        }
    };
    await launch();

    const children = async (): Promise<{ pid: number; name: string }[]> =>
        masterPid === null || !alive(masterPid) ? [] : childrenOf(masterPid);

    const killSmtpd = async (): Promise<number> => {
        const smtpd = (await children()).filter((c) => c.name === 'smtpd');
        for (const c of smtpd) killQuietly(c.pid);
        return smtpd.length;
    };

    const crash = async (): Promise<void> => {
        if (masterPid === null) throw new Error('the Postfix master is not running');
        const master = masterPid;
        // Stopped first, the master cannot start a child between the listing and the kill.
        process.kill(master, 'SIGSTOP');
        const kids = await childrenOf(master);
        for (const c of kids) killQuietly(c.pid);
        killQuietly(master);
        const deadline = Date.now() + 10_000;
        while (Date.now() < deadline && (alive(master) || kids.some((c) => alive(c.pid)))) await sleep(20);
        masterPid = null;
        crashed = true;
    };

    const restart = async (): Promise<void> => {
        if (stopped) throw new Error('the Postfix instance was stopped');
        if (masterPid !== null && alive(masterPid)) throw new Error('the Postfix master still runs');
        crashed = false;
        await launch();
    };

    const queued = async (): Promise<number> => {
        let n = 0;
        const walk = async (d: string): Promise<void> => {
            let entries;
            try {
                entries = await readdir(d, { withFileTypes: true });
            } catch {
                return;
            }
            for (const e of entries) {
                const file = path.join(d, e.name);
                if (e.isDirectory()) await walk(file);
                else if (((await stat(file).catch(() => null))?.mode ?? 0) & 0o100) n++;
            }
        };
        for (const folder of ['incoming', 'active', 'deferred', 'hold']) await walk(path.join(queueDir, folder));
        return n;
    };

    return {
        host: '127.0.0.1',
        port,
        dir,
        configDir,
        queueDir,
        maildir,
        messages,
        waitForMessages,
        held,
        log,
        queued,
        children,
        killSmtpd,
        crash,
        restart,
        stop,
    };
}
