/**
 * Runs a real Dovecot (Debian's dovecot-core) for tests with only its auth service: a
 * passwd-file passdb in a fresh temporary folder, an `inet_listener` on a free 127.0.0.1 port
 * and a unix listener (`auth-client`) in its own base_dir, no mail protocols, no TLS, logs to
 * a file. It must not read or change the system's Dovecot (/etc/dovecot, /run/dovecot) and must
 * not listen beyond loopback; stop() ends the process it started and that process's children
 * (by PID, as a service manager stops the whole group: an orphaned auth process would otherwise
 * keep serving its open connections), and removes the folder.
 *
 * API:
 *   const dovecot = await startDovecot({ users: [{ login, password, scheme? }] });
 *   dovecot.port, dovecot.socket (unix socket path), dovecot.log()
 *   await dovecot.stop()
 */
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startDaemon } from './daemon.ts';
import { freePort } from './smtp-client.ts';

export interface DovecotUser {
    readonly login: string;
    readonly password: string;
    /** How the passwd file stores it (default PLAIN). */
    readonly scheme?: 'PLAIN' | 'SHA512-CRYPT';
}

export interface DovecotInstance {
    readonly host: '127.0.0.1';
    readonly port: number;
    /** The auth-client unix socket. */
    readonly socket: string;
    readonly dir: string;
    readonly pid: number;
    /** Dovecot's log so far. */
    log(): Promise<string>;
    stop(): Promise<void>;
}

const DOVECOT = existsSync('/usr/sbin/dovecot') ? '/usr/sbin/dovecot' : 'dovecot';
const DOVEADM = existsSync('/usr/bin/doveadm') ? '/usr/bin/doveadm' : 'doveadm';

function doveadmHash(scheme: string, password: string): Promise<string> {
    return new Promise((resolve, reject) => {
        execFile(DOVEADM, ['pw', '-s', scheme, '-p', password], { timeout: 10_000 }, (err, stdout) => {
            if (err) reject(new Error(`doveadm pw failed: ${err.message}`));
            else resolve(stdout.trim());
        });
    });
}

/** The processes below `pid` (Linux /proc), by PID. */
function descendants(pid: number): number[] {
    const out: number[] = [];
    const walk = (p: number): void => {
        let text = '';
        try {
            text = readFileSync(`/proc/${p}/task/${p}/children`, 'utf8');
        } catch {
            return;
        }
        for (const c of text.trim().split(/\s+/).filter(Boolean).map(Number)) {
            out.push(c);
            walk(c);
        }
    };
    if (pid > 0) walk(pid);
    return out;
}

/** True while a process exists and is not a zombie. */
function alive(pid: number): boolean {
    try {
        const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
        return !/^\d+ \(.*\) Z /.test(stat);
    } catch {
        return false;
    }
}

function canConnect(port: number): Promise<boolean> {
    return new Promise((resolve) => {
        const s = net.connect({ host: '127.0.0.1', port });
        s.once('connect', () => {
            s.destroy();
            resolve(true);
        });
        s.once('error', () => resolve(false));
    });
}

/** `extraConfig`: lines added to dovecot.conf's top level (such as `auth_username_format = %Ln`). */
export async function startDovecot(options: {
    users: readonly DovecotUser[];
    extraConfig?: string;
}): Promise<DovecotInstance> {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'mailwarden-dovecot-'));
    // the auth processes run as the dovecot user and must reach the passwd file
    await chmod(dir, 0o755);
    const port = await freePort();
    const lines: string[] = [];
    for (const u of options.users) {
        const scheme = u.scheme ?? 'PLAIN';
        const stored = scheme === 'PLAIN' ? `{PLAIN}${u.password}` : await doveadmHash(scheme, u.password);
        lines.push(`${u.login}:${stored}`);
    }
    await writeFile(path.join(dir, 'passwd'), lines.join('\n') + '\n', { mode: 0o644 });
    await mkdir(path.join(dir, 'run'));
    await mkdir(path.join(dir, 'state'));
    const conf = `# test instance: auth service only
protocols =
base_dir = ${dir}/run
state_dir = ${dir}/state
log_path = ${dir}/dovecot.log
info_log_path = ${dir}/dovecot.log
ssl = no
default_login_user = dovenull
default_internal_user = dovecot
auth_mechanisms = plain login
auth_failure_delay = 0
${options.extraConfig ?? ''}
passdb {
  driver = passwd-file
  args = ${dir}/passwd
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=${dir}/home
}
service auth {
  inet_listener {
    address = 127.0.0.1
    port = ${port}
  }
  unix_listener auth-client {
    mode = 0666
  }
}
`;
    await writeFile(path.join(dir, 'dovecot.conf'), conf);

    const daemon = startDaemon(DOVECOT, ['-F', '-c', path.join(dir, 'dovecot.conf')]);
    const log = async (): Promise<string> => {
        const file = await readFile(path.join(dir, 'dovecot.log'), 'utf8').catch(() => '');
        return `${daemon.output()}${file}`;
    };
    const stop = async (): Promise<void> => {
        if (daemon.running()) {
            const children = descendants(daemon.pid);
            await daemon.stop(10_000);
            // The master is gone, but its auth process keeps serving the connections it has
            // (answering FAIL) until they close. A service manager stops the whole group; so do we.
            const signalAll = (signal: NodeJS.Signals): void => {
                for (const pid of children.filter(alive)) {
                    try {
                        process.kill(pid, signal);
                    } catch {
                        // gone
                    }
                }
            };
            signalAll('SIGTERM');
            const deadline = Date.now() + 5_000;
            while (Date.now() < deadline && children.some(alive)) await sleep(20);
            signalAll('SIGKILL');
        }
        await rm(dir, { recursive: true, force: true });
    };

    const socket = path.join(dir, 'run', 'auth-client');
    const deadline = Date.now() + 15_000;
    for (;;) {
        await sleep(50);
        if (daemon.spawnError()) {
            await stop();
            throw new Error(
                `dovecot could not be started: ${String(daemon.spawnError())} (install the dovecot-core package)`,
            );
        }
        if (!daemon.running()) {
            const text = await log();
            await stop();
            throw new Error(`dovecot exited during start:\n${text}`);
        }
        if (existsSync(socket) && (await canConnect(port))) break;
        if (Date.now() > deadline) {
            const text = await log();
            await stop();
            throw new Error(`dovecot did not listen on 127.0.0.1:${port}:\n${text}`);
        }
    }
    return { host: '127.0.0.1', port, socket, dir, pid: daemon.pid, log, stop };
}
