/**
 * A new operator's first deployment as docs/deploy-postfix.md tells it, on Debian's stock Postfix
 * configuration (master.cf.dist, main.cf.debian and what Debian's installer adds), run with the
 * guide's own commands: they are read from the guide and run with `sh -e`, with system paths moved
 * into a temporary folder and stand-ins for useradd, npm and systemctl (which starts and stops a
 * real mailwarden). Step 1 ends with a `mailwarden check` that passes before any service ran;
 * steps 2 and 3 run twice and change nothing the second time; step 5 hands 25, 587 and 465 to
 * mailwarden; step 6's mail arrives over IPv4 and IPv6 and from a logged-in user; the rollback
 * gives port 25 back to Postfix (one smtpd, not Debian's commented postscreen too), and the full
 * removal leaves Debian's services as they were. Postfix and mailwarden run in a private network
 * namespace (unshare), so the real port numbers are used there while the machine's own ports are
 * untouched. Needs root, Postfix, and unshare, nsenter and ip (util-linux, iproute2).
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import {
    copyFileSync,
    existsSync,
    mkdirSync,
    mkdtempSync,
    readdirSync,
    readFileSync,
    rmSync,
    symlinkSync,
    writeFileSync,
    chmodSync,
    statSync,
    chownSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { parseMainCf } from '../helpers/postfix.ts';
import { createTestCertificate, type TestCertificate } from '../helpers/tls-cert.ts';
import {
    GUIDE_FILE,
    readRepo,
    runFile,
    runShell,
    section,
    shellBlocks,
    substitute,
    writeShims,
    type RunResult,
} from '../helpers/guide.ts';

const repo = fileURLToPath(new URL('../../', import.meta.url));
const guide = readRepo(GUIDE_FILE);
const LAUNCHER = join(repo, 'bin/mailwarden.js');
const TOOL = join(repo, 'test/helpers/netns-tool.ts');
/** The mail host's public addresses inside the namespace (RFC 5737, RFC 3849). */
const HOST_V4 = '192.0.2.25';
const HOST_V6 = '2001:db8::25';
const sbin = (name: string): string => (existsSync(`/usr/sbin/${name}`) ? `/usr/sbin/${name}` : name);

/** What Debian's postinst writes after main.cf.debian for an "Internet Site" (TLS lines left out: no snakeoil certificate here). */
const DEBIAN_MAIN_CF: Readonly<Record<string, string>> = {
    smtpd_relay_restrictions: 'permit_mynetworks permit_sasl_authenticated defer_unauth_destination',
    myhostname: 'mail.example.test',
    mydestination: '$myhostname, localhost.localdomain, localhost',
    relayhost: '',
    mynetworks: '127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128',
    mailbox_size_limit: '0',
    recipient_delimiter: '+',
    inet_interfaces: 'all',
    inet_protocols: 'all',
};

/** Active master.cf services as `name/type command`, sorted (`postconf -M` output). */
function services(postconfM: string): string[] {
    return postconfM
        .split('\n')
        .filter((l) => l.trim() !== '')
        .map((l) => {
            const f = l.trim().split(/\s+/);
            return `${f[0]}/${f[1]} ${f[7]}`;
        })
        .sort();
}

/** The process is gone (a zombie counts as gone: nobody may reap it here). */
function gone(pid: number): boolean {
    try {
        const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
        return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) === 'Z';
    } catch {
        return true;
    }
}

function children(pid: number): number[] {
    try {
        return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8')
            .trim()
            .split(/\s+/)
            .filter(Boolean)
            .map(Number);
    } catch {
        return [];
    }
}

describe('a new operator follows docs/deploy-postfix.md on a stock Debian Postfix', { timeout: 600_000 }, () => {
    let dir: string;
    let conf: string;
    let queue: string;
    let cert: TestCertificate;
    let holder: ChildProcess;
    let netns: string;
    let dns: ChildProcess | undefined;
    let dnsAddress: string;
    let env: NodeJS.ProcessEnv;
    let table: Record<string, string>;
    const paths = {
        calls: '',
        mwPid: '',
        mwLog: '',
        mwConfig: '',
    };

    /** Runs one of the guide's blocks in the sandbox. */
    const step = (block: string, input?: string): Promise<RunResult> =>
        runShell(substitute(block, table), { env, cwd: dir, ...(input === undefined ? {} : { input }) });

    const inNetns = (command: string, args: readonly string[], timeoutMs = 60_000): Promise<RunResult> =>
        runFile('nsenter', [`--net=${netns}`, '--', command, ...args], { timeoutMs });

    const tool = async (...args: string[]): Promise<Record<string, unknown>> => {
        const r = await inNetns(process.execPath, [TOOL, ...args]);
        const line = r.out.trim().split('\n').pop() ?? '';
        try {
            return JSON.parse(line) as Record<string, unknown>;
        } catch {
            throw new Error(`netns-tool ${args.join(' ')}: ${r.out}${r.err}`);
        }
    };

    const greeting = async (host: string, port: number): Promise<{ code: number; text: string } | null> => {
        const r = await tool('greet', host, String(port));
        return 'error' in r ? null : (r as unknown as { code: number; text: string });
    };

    /** Waits until HOST:PORT greets with a 220 that matches. */
    const waitForGreeting = async (host: string, port: number, match: RegExp, timeoutMs = 60_000): Promise<string> => {
        const deadline = Date.now() + timeoutMs;
        let last = '';
        while (Date.now() < deadline) {
            const g = await greeting(host, port);
            last = g ? `${g.code} ${g.text}` : 'no answer';
            if (g?.code === 220 && match.test(g.text)) return last;
            await sleep(250);
        }
        throw new Error(`[${host}]:${port} answered "${last}", not 220 ${String(match)}`);
    };

    const postconf = async (...args: string[]): Promise<string> => {
        const r = await runFile(sbin('postconf'), ['-c', conf, ...args]);
        assert.equal(r.code, 0, r.err);
        return r.out;
    };

    const mailwardenPid = (): number | null => {
        const text = existsSync(paths.mwPid) ? readFileSync(paths.mwPid, 'utf8').trim() : '';
        return text ? Number(text) : null;
    };

    before(async () => {
        dir = mkdtempSync(join(tmpdir(), 'mailwarden-walk-'));
        chmodSync(dir, 0o755);
        conf = join(dir, 'etc/postfix');
        queue = join(dir, 'var/spool/postfix');
        for (const d of [
            conf,
            queue,
            join(dir, 'var/lib'),
            join(dir, 'etc/systemd/system'),
            join(dir, 'mail'),
            join(dir, 'npm-root'),
        ]) {
            mkdirSync(d, { recursive: true });
        }
        chownSync(join(dir, 'mail'), 65534, 65534);
        cert = await createTestCertificate();
        const live = join(dir, 'etc/letsencrypt/live/mx.example.com');
        mkdirSync(live, { recursive: true });
        mkdirSync(join(dir, 'etc/letsencrypt/renewal-hooks/deploy'), { recursive: true });
        copyFileSync(cert.certPath, join(live, 'fullchain.pem'));
        copyFileSync(cert.keyPath, join(live, 'privkey.pem'));
        symlinkSync(repo, join(dir, 'npm-root/mailwarden'));

        // Debian's stock Postfix configuration, with its state moved into the temporary folder
        // and delivery of example.com into Maildirs.
        copyFileSync('/usr/share/postfix/master.cf.dist', join(conf, 'master.cf'));
        const main = {
            ...DEBIAN_MAIN_CF,
            alias_maps: '',
            alias_database: '',
            queue_directory: queue,
            data_directory: join(dir, 'var/lib/postfix'),
            maillog_file: join(dir, 'maillog'),
            maillog_file_prefixes: dir,
            virtual_mailbox_domains: 'example.com',
            virtual_mailbox_base: join(dir, 'mail'),
            virtual_mailbox_maps: 'inline:{ {postmaster@example.com=postmaster/} }',
            virtual_uid_maps: 'static:65534',
            virtual_gid_maps: 'static:65534',
            smtpd_error_sleep_time: '0s',
        };
        writeFileSync(
            join(conf, 'main.cf'),
            readFileSync('/usr/share/postfix/main.cf.debian', 'utf8') +
                Object.entries(main)
                    .map(([k, v]) => `${k} = ${v}\n`)
                    .join(''),
        );

        // A private network namespace with its own loopback, kept by a process that waits. The
        // host's public addresses are documentation ones there: clients from them are not in
        // Debian's mynetworks, as the senders of step 6 are not.
        const up = `ip link set lo up && ip addr add ${HOST_V4}/32 dev lo && ip -6 addr add ${HOST_V6}/128 dev lo`;
        holder = spawn('unshare', ['--net', 'sh', '-c', `${up} && echo up && exec sleep 3600`], {
            stdio: ['ignore', 'pipe', 'inherit'],
        });
        await new Promise<void>((resolve, reject) => {
            holder.stdout!.once('data', () => resolve());
            holder.once('exit', (code) => reject(new Error(`unshare exited ${code}`)));
        });
        netns = `/proc/${holder.pid}/ns/net`;
        dns = spawn('nsenter', [`--net=${netns}`, '--', process.execPath, TOOL, 'dns'], {
            stdio: ['ignore', 'pipe', 'inherit'],
        });
        dnsAddress = await new Promise<string>((resolve, reject) => {
            dns!.stdout!.once('data', (d: Buffer) =>
                resolve((JSON.parse(d.toString()) as { address: string }).address),
            );
            dns!.once('exit', (code) => reject(new Error(`DNS server exited ${code}`)));
        });

        paths.calls = join(dir, 'calls');
        paths.mwPid = join(dir, 'mailwarden.pid');
        paths.mwLog = join(dir, 'mailwarden.log');
        paths.mwConfig = join(dir, 'etc/mailwarden/mailwarden.yaml');
        const shims = writeShims(join(dir, 'shims'), {
            postconf: `exec ${sbin('postconf')} -c "$PF_CONF" "$@"`,
            postfix: `exec ${sbin('postfix')} -c "$PF_CONF" "$@"`,
            npm: 'case "$1" in root) echo "$NPM_ROOT" ;; *) echo "npm $*" >>"$CALLS" ;; esac',
            useradd: 'echo "useradd $*" >>"$CALLS"',
            chgrp: 'echo "chgrp $*" >>"$CALLS"',
            // runs the command as root here: the mailwarden user does not exist
            runuser: 'echo "runuser $*" >>"$CALLS"; while [ "$1" != -- ]; do shift; done; shift; exec "$@"',
            // install without -o and -g: the mailwarden user does not exist here
            install: [
                'n=$#',
                'while [ "$n" -gt 0 ]; do',
                '    a=$1; shift; n=$((n - 1))',
                '    case $a in -o | -g) shift; n=$((n - 1)) ;; *) set -- "$@" "$a" ;; esac',
                'done',
                'exec /usr/bin/install "$@"',
            ].join('\n'),
            mailwarden: `exec "${LAUNCHER}" "$@"`,
            // the listeners of the namespace Postfix and mailwarden run in
            ss: 'exec nsenter --net="$NETNS" -- /usr/bin/ss "$@"',
            systemctl: [
                'echo "systemctl $*" >>"$CALLS"',
                'case "$*" in',
                '"start mailwarden" | "enable --now mailwarden")',
                `    nsenter --net="$NETNS" -- env MAILWARDEN_CONFIG="$MW_CONFIG" "${LAUNCHER}" serve >>"$MW_LOG" 2>&1 </dev/null &`,
                '    echo $! >"$MW_PID" ;;',
                // as systemd: the stop job begins (SIGTERM) and systemctl returns at once
                '"stop --no-block mailwarden")',
                '    if [ -s "$MW_PID" ]; then kill -TERM "$(cat "$MW_PID")" 2>/dev/null || true; fi ;;',
                '"stop mailwarden" | "disable --now mailwarden")',
                '    if [ -s "$MW_PID" ]; then',
                '        pid=$(cat "$MW_PID"); kill -TERM "$pid" 2>/dev/null || true; i=0',
                "        while [ $i -lt 600 ] && [ -e /proc/$pid ] && ! grep -q ') Z ' /proc/$pid/stat 2>/dev/null; do sleep 0.1; i=$((i + 1)); done",
                '        rm -f "$MW_PID"',
                '    fi ;;',
                'esac',
            ].join('\n'),
        });
        env = {
            // the machine's own node first, as root's shell on Debian has it
            PATH: `${shims}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`,
            HOME: dir,
            LANG: 'C.UTF-8',
            PF_CONF: conf,
            NPM_ROOT: join(dir, 'npm-root'),
            CALLS: paths.calls,
            NETNS: netns,
            MW_CONFIG: paths.mwConfig,
            MW_LOG: paths.mwLog,
            MW_PID: paths.mwPid,
            // where the certbot hook writes (its default is /etc/mailwarden)
            MAILWARDEN_ETC: join(dir, 'etc/mailwarden'),
        };
        table = {
            '/etc/postfix': conf,
            '/var/spool/postfix': queue,
            '/etc/mailwarden': join(dir, 'etc/mailwarden'),
            '/var/lib/mailwarden': join(dir, 'var/lib/mailwarden'),
            '/etc/letsencrypt': join(dir, 'etc/letsencrypt'),
            '/etc/systemd/system': join(dir, 'etc/systemd/system'),
        };

        const check = await runFile(sbin('postfix'), ['-c', conf, 'check']);
        assert.equal(check.code, 0, check.err);
        const started = await inNetns(sbin('postfix'), ['-c', conf, 'start']);
        assert.equal(started.code, 0, started.err);
        await waitForGreeting('127.0.0.1', 25, /ESMTP Postfix/);
    });

    after(async () => {
        const pid = mailwardenPid();
        if (pid !== null && !gone(pid)) {
            const kids = children(pid);
            process.kill(pid, 'SIGTERM');
            for (let i = 0; i < 100 && !gone(pid); i++) await sleep(100);
            for (const p of [pid, ...kids]) if (!gone(p)) process.kill(p, 'SIGKILL');
        }
        if (conf) await runFile(sbin('postfix'), ['-c', conf, 'stop']);
        dns?.kill('SIGTERM');
        holder?.kill('SIGKILL');
        cert?.cleanup();
        if (dir) rmSync(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
    });

    it("starts from Debian's stock set-up: Postfix on 25, over IPv4 and IPv6", async () => {
        assert.deepEqual(
            services(await postconf('-M')).filter((s) => s.includes('/inet')),
            ['smtp/inet smtpd'],
        );
        await waitForGreeting(HOST_V6, 25, /ESMTP Postfix/);
    });

    it('step 1: installs the configuration, and `mailwarden check` passes before any service ran', async () => {
        const [source, install, folders, hook, users] = shellBlocks(guide, 'Step 1: install mailwarden');
        assert.ok(source && install && folders && hook && users, 'step 1 has its five command blocks');
        // The package is made from the project's source at a tag (not run here: no network); the
        // folder it is made in is where the install runs.
        assert.match(
            source,
            /^git clone https:\/\/github\.com\/mailwarden\/mailwarden\.git (\S+)\ncd \1 && git checkout v\d+\.\d+\.\d+ && npm pack\n$/,
        );
        assert.match(section(guide, 'Step 1: install mailwarden'), /`apt install git`/);
        const i = await step(install);
        assert.equal(i.code, 0, i.err);
        assert.match(i.out, /^mailwarden \d+\.\d+\.\d+$/m);
        assert.doesNotMatch(i.err, /ERR_UNKNOWN_FILE_EXTENSION/);
        assert.match(readFileSync(paths.calls, 'utf8'), /^npm install -g \.\/mailwarden-[\d.]+\.tgz$/m);
        const f = await step(folders);
        assert.equal(f.code, 0, f.err);
        assert.ok(existsSync(join(dir, 'var/lib/mailwarden/spool')), 'the spool folder exists before the first check');
        assert.match(readFileSync(paths.calls, 'utf8'), /^chgrp -R mailwarden \S+\/etc\/mailwarden\/rules$/m);
        const ruleFile = join(
            dir,
            'etc/mailwarden/rules',
            readdirSync(join(dir, 'etc/mailwarden/rules')).find((f) => f.endsWith('.yaml'))!,
        );
        assert.equal(statSync(ruleFile).mode & 0o040, 0o040, 'rule files are readable by the group');

        // The certbot hook is installed with the certificate, and tried once: nothing runs yet.
        writeFileSync(join(dir, 'etc/mailwarden/tls.crt'), 'stale\n');
        const h = await step(hook);
        assert.equal(h.code, 0, `${h.out}${h.err}`);
        assert.equal(
            readFileSync(join(dir, 'etc/letsencrypt/renewal-hooks/deploy/mailwarden'), 'utf8'),
            readRepo('deploy/tls/certbot-deploy-hook.sh'),
        );
        assert.equal(readFileSync(join(dir, 'etc/mailwarden/tls.crt'), 'utf8'), readFileSync(cert.certPath, 'utf8'));
        assert.match(readFileSync(paths.calls, 'utf8'), /^systemctl is-active --quiet mailwarden\.service$/m);

        // The operator's edits: hostname and domains stay the example's; no Redis here. The test
        // also moves the paths and points DNS at the namespace's resolver.
        const edited = substitute(readFileSync(paths.mwConfig, 'utf8'), table)
            .replace(/^redis: .*\n/m, '')
            .concat(`dns: { servers: ["${dnsAddress}"], timeout: 2s }\n`);
        writeFileSync(paths.mwConfig, edited);
        const u = await step(users, 'correct horse battery\n');
        assert.equal(u.code, 0, `${u.out}${u.err}`);
        assert.match(u.out, /^ok: /m);
        assert.match(readFileSync(paths.calls, 'utf8'), /^runuser -u mailwarden -- mailwarden check -c /m);
        // The example's names are still there: check warns, at their lines, and still passes.
        assert.match(u.err, /mailwarden\.yaml:\d+:\d+: warning: hostname: still the example's "mx\.example\.com"/);
        assert.match(u.err, /mailwarden\.yaml:\d+:\d+: warning: domains: still the example's "example\.com"/);
        const usersFile = readFileSync(join(dir, 'etc/mailwarden/users.yaml'), 'utf8');
        assert.match(usersFile, /alice@example\.com/);

        // Running the folder commands again keeps the edited configuration and the users.
        const again = await step(folders);
        assert.equal(again.code, 0, again.err);
        assert.equal(readFileSync(paths.mwConfig, 'utf8'), edited);
        assert.equal(readFileSync(join(dir, 'etc/mailwarden/users.yaml'), 'utf8'), usersFile);
        assert.ok(!existsSync(join(dir, 'etc/mailwarden/rules/rules')), 'the rules are not copied into themselves');
    });

    it('step 2: shows the header_checks settings before replacing them, then adds the main.cf lines (twice: no change)', async () => {
        const [show, apply] = shellBlocks(guide, 'Step 2: Postfix main.cf');
        assert.equal(show!.trim(), 'postconf header_checks mime_header_checks nested_header_checks');
        const before = await step(show!);
        assert.equal(
            before.out,
            'header_checks =\nmime_header_checks = $header_checks\nnested_header_checks = $header_checks\n',
            "Debian's values, shown first",
        );
        for (let i = 0; i < 2; i++) {
            const r = await step(apply!);
            assert.equal(r.code, 0, r.err);
        }
        const main = parseMainCf(await postconf('-n'));
        for (const [name, value] of Object.entries(parseMainCf(readRepo('docs/postfix/main.cf')))) {
            assert.equal(main[name], value, `main.cf ${name}`);
        }
        assert.equal(
            readFileSync(join(conf, 'mailwarden_header_checks'), 'utf8'),
            readRepo('docs/postfix/mailwarden_header_checks'),
        );
    });

    it('step 3: adds the loopback smtpd (twice: still one entry); it answers without offering AUTH', async () => {
        const blocks = shellBlocks(guide, 'Step 3: Postfix master.cf');
        const apply = blocks[0];
        const resize = blocks.find((b) => b.includes('process_limit='));
        for (let i = 0; i < 2; i++) {
            const r = await step(apply!);
            assert.equal(r.code, 0, r.err);
            assert.match(r.out, /^127\.0\.0\.1:10026 +inet /m);
        }
        const active = services(await postconf('-M'));
        assert.deepEqual(
            active.filter((s) => s.includes('/inet')),
            ['127.0.0.1:10026/inet smtpd', 'smtp/inet smtpd'],
        );
        const options = await postconf('-P');
        for (const m of readRepo('docs/postfix/master.cf').matchAll(/^ +-o (\w+)=(.*)$/gm)) {
            // postconf writes an empty value as `name =`
            const shown = m[2] === '' ? `${m[1]} =` : `${m[1]} = ${m[2]}`;
            assert.ok(options.includes(`127.0.0.1:10026/inet/${shown}\n`), `-o ${m[1]}`);
        }
        await waitForGreeting('127.0.0.1', 10026, /ESMTP Postfix/);
        const ehlo = (await tool('ehlo', '127.0.0.1', '10026')) as { ehlo: { text: string }; auth: { code: number } };
        assert.doesNotMatch(ehlo.ehlo.text, /^AUTH\b/m, 'no AUTH offered on the loopback smtpd');
        assert.match(ehlo.ehlo.text, /^XCLIENT .*\bLOGIN\b/m, 'XCLIENT with LOGIN for mailwarden');
        assert.ok(ehlo.auth.code >= 500, `AUTH refused: ${ehlo.auth.code}`);
        await waitForGreeting('127.0.0.1', 25, /ESMTP Postfix/);

        // The sizing command of "How many at once".
        assert.match(resize!, /process_limit=/);
        const r = await step(resize!);
        assert.equal(r.code, 0, r.err);
        assert.match(await postconf('-F', '127.0.0.1:10026/inet/process_limit'), /= 500$/m);
    });

    it('step 4: installs the unit', async () => {
        const blocks = shellBlocks(guide, 'Step 4: the systemd unit, and ports without root');
        const r = await step(blocks[0]!);
        assert.equal(r.code, 0, r.err);
        assert.equal(
            readFileSync(join(dir, 'etc/systemd/system/mailwarden.service'), 'utf8'),
            readRepo('deploy/systemd/mailwarden.service'),
        );
        // Enabled at boot only by step 5: a reboot before it must leave port 25 to Postfix.
        assert.doesNotMatch(readFileSync(paths.calls, 'utf8'), /^systemctl (enable|start)/m);
    });

    it('step 5: hands 25, 587 and 465 to mailwarden, on IPv4 and IPv6', async () => {
        const [review, precheck, switchOver, goNoGo] = shellBlocks(guide, 'Step 5: the switch-over');
        // The review lists every inet service, whatever its address.
        const listed = await step(review!);
        assert.equal(listed.code, 0, listed.err);
        assert.deepEqual(
            listed.out
                .trim()
                .split('\n')
                .map((l) => l.split(/\s+/)[0])
                .sort(),
            ['127.0.0.1:10026', 'smtp'],
        );
        const checked = await step(precheck!);
        assert.equal(checked.code, 0, `${checked.out}${checked.err}`);
        assert.match(precheck!, /^runuser -u mailwarden -- mailwarden check -c /m);
        const r = await step(switchOver!);
        assert.equal(r.code, 0, `${r.out}${r.err}`);
        assert.match(readFileSync(paths.calls, 'utf8'), /^systemctl enable --now mailwarden$/m);
        assert.deepEqual(
            services(await postconf('-M')).filter((s) => s.includes('/inet')),
            ['127.0.0.1:10026/inet smtpd'],
        );
        for (const host of [HOST_V4, HOST_V6]) {
            for (const port of [25, 587]) await waitForGreeting(host, port, /mx\.example\.com/);
        }
        // One dual-stack socket per port, as the guide says ss shows it.
        const listening = await inNetns('ss', ['-ltnH']);
        for (const port of [25, 587, 465]) assert.match(listening.out, new RegExp(` \\*:${port} `), `*:${port}`);
        assert.match(section(guide, 'Step 5: the switch-over'), /`\*:25`, `\*:587` and\s+`\*:465`/);
        // Go or no-go: mailwarden on port 25, /readyz 200.
        const go = await inNetns('sh', ['-e', '-c', goNoGo!]);
        assert.equal(go.code, 0, go.err);
        assert.match(go.out, /\*:25 .*users:\(\("MainThread",/, 'Node.js 24 names its process as the guide says');
        assert.match(go.out, /^200$/m);
    });

    it('step 6: mail arrives over IPv4 and IPv6 from another domain, relaying needs a login', async () => {
        const [checks] = shellBlocks(guide, 'Step 6: check that it works');
        const lines = checks!.split('\n');
        const swaks = lines.filter((l) => l.startsWith('swaks '));
        const arg = (line: string, name: string): string => new RegExp(`--${name} (\\S+)`).exec(line)?.[1] ?? '';
        const [v4, v6, relay, submission] = swaks as [string, string, string, string];
        assert.match(v4, /^swaks -4 /);
        assert.match(v6, /^swaks -6 /);

        const ready = await inNetns('sh', ['-c', lines.find((l) => l.startsWith('curl '))!]);
        assert.match(ready.out, /^ready/);
        for (const [line, host] of [
            [v4, HOST_V4],
            [v6, HOST_V6],
        ] as const) {
            const r = (await tool('send', host, '25', arg(line, 'from'), arg(line, 'to'))) as {
                message: { code: number; text: string } | null;
            };
            assert.equal(r.message?.code, 250, `${line}: ${JSON.stringify(r)}`);
        }
        const refused = (await tool('send', HOST_V4, '25', arg(relay, 'from'), arg(relay, 'to'))) as {
            rcpt: { code: number }[];
        };
        assert.ok((refused.rcpt[0]?.code ?? 0) >= 400, `relaying refused: ${JSON.stringify(refused)}`);
        const sent = (await tool(
            'submit',
            HOST_V4,
            arg(submission, 'port'),
            arg(submission, 'auth-user'),
            'correct horse battery',
            arg(submission, 'from'),
            arg(submission, 'to'),
        )) as { message: { code: number } | null };
        assert.equal(sent.message?.code, 250, JSON.stringify(sent));

        const deadline = Date.now() + 20_000;
        const maildir = join(dir, 'mail/postmaster/new');
        while ((existsSync(maildir) ? readdirSync(maildir).length : 0) < 2 && Date.now() < deadline) await sleep(100);
        const delivered = readdirSync(maildir).map((f) => readFileSync(join(maildir, f), 'utf8'));
        assert.equal(delivered.length, 2);
        assert.ok(delivered.every((m) => /^X-Mailwarden-Verdict: accept;/m.test(m)));
        const log = readFileSync(join(dir, 'maillog'), 'utf8');
        // Postfix judged the real clients, over IPv4 and IPv6 (XCLIENT).
        assert.match(log, /postfix\/mailwarden\/smtpd\[\d+\]: \w+: client=\S*\[192\.0\.2\.25\]/);
        assert.match(log, /postfix\/mailwarden\/smtpd\[\d+\]: \w+: client=\S*\[2001:db8::25\]/);
        assert.match(
            log,
            /postfix\/mailwarden\/smtpd\[\d+\]: \w+: client=\S+, sasl_method=XCLIENT, sasl_username=alice@example\.com/,
        );
    });

    it('rolling back gives port 25 to Postfix again, without its commented postscreen', async () => {
        const [rollback, removal] = shellBlocks(guide, 'Rolling back');
        // Postfix checks the restored services while mailwarden still holds the ports; then
        // mailwarden closes its listeners, Postfix takes the ports as soon as they are free, and
        // only then does the drain's wait begin.
        assert.match(
            rollback!,
            /^cat .*\npostfix check\nsystemctl disable mailwarden\nsystemctl stop --no-block mailwarden\nwhile ss .*; done; postfix reload\nsystemctl stop mailwarden\n$/,
        );
        const r = await step(rollback!);
        assert.equal(r.code, 0, `${r.out}${r.err}`);
        assert.match(
            readFileSync(paths.calls, 'utf8'),
            /^systemctl disable mailwarden\nsystemctl stop --no-block mailwarden\nsystemctl stop mailwarden$/m,
        );
        assert.equal(mailwardenPid(), null, 'mailwarden was stopped');
        const inet = services(await postconf('-M')).filter((s) => s.includes('/inet'));
        assert.deepEqual(inet, ['127.0.0.1:10026/inet smtpd', 'smtp/inet smtpd'], 'one smtp service: smtpd');
        for (const host of [HOST_V4, HOST_V6]) await waitForGreeting(host, 25, /ESMTP Postfix/);
        assert.ok(!existsSync(join(conf, 'master.cf.mailwarden-rollback')));

        // The full removal: Debian's services and main.cf as before.
        const stock = mkdtempSync(join(tmpdir(), 'mailwarden-stock-'));
        try {
            copyFileSync('/usr/share/postfix/master.cf.dist', join(stock, 'master.cf'));
            writeFileSync(join(stock, 'main.cf'), '');
            const expected = services((await runFile(sbin('postconf'), ['-c', stock, '-M'])).out);
            const x = await step(removal!);
            assert.equal(x.code, 0, `${x.out}${x.err}`);
            assert.deepEqual(services(await postconf('-M')), expected);
        } finally {
            rmSync(stock, { recursive: true, force: true });
        }
        const main = parseMainCf(await postconf('-n'));
        for (const name of Object.keys(parseMainCf(readRepo('docs/postfix/main.cf')))) {
            assert.equal(main[name], undefined, `main.cf ${name} removed`);
        }
        await waitForGreeting('127.0.0.1', 25, /ESMTP Postfix/);
    });

    it('shows, in the guide, no command that edits master.cf by hand', () => {
        const text = section(guide, 'Rolling back') + section(guide, 'Step 5: the switch-over');
        assert.doesNotMatch(text, /remove the '#'|sed -i/);
    });
});
