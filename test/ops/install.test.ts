/**
 * Installing and upgrading mailwarden as docs/deploy-postfix.md says, with the machine's own npm
 * and its older Node.js (a stock Debian has Node.js 18; /usr/bin/node must be older than 24
 * here): `npm pack` makes the release package, the guide's `npm install -g` puts it into a
 * temporary prefix, and the `mailwarden` command then runs `--version`, `check` and `serve`
 * (signals included) with the Node.js 24 that came with it; with Node.js 24 first on the PATH
 * it runs from under node_modules itself. Without that runtime it says what to do, never
 * ERR_UNKNOWN_FILE_EXTENSION. The guide's upgrade commands check the configuration with the new
 * release first, then replace the installation and leave configuration, rules, users and data
 * alone. Needs the npm registry (npm caches it).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
    chmodSync,
    chownSync,
    copyFileSync,
    cpSync,
    existsSync,
    mkdirSync,
    mkdtempSync,
    readdirSync,
    readFileSync,
    rmSync,
    statSync,
    writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { GUIDE_FILE, readRepo, runFile, runShell, shellBlocks, substitute, writeShims } from '../helpers/guide.ts';

const repo = fileURLToPath(new URL('../../', import.meta.url));
const guide = readRepo(GUIDE_FILE);
const pkg = JSON.parse(readRepo('package.json')) as { version: string; bin: Record<string, string> };
const OLD_NODE = '/usr/bin/node';
const NODE24_BIN = dirname(process.execPath);

/** The environment of root's shell on a stock Debian: the system's node and npm, no npm_* variables. */
function operatorEnv(extra: Record<string, string>, path: string): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!/^npm_/i.test(k)) env[k] = v;
    return { ...env, PATH: path, ...extra };
}

/** A digest of every file below a folder (names, modes and contents). */
function digest(dir: string): string {
    const hash = createHash('sha256');
    const walk = (d: string): void => {
        for (const entry of readdirSync(d, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
            const file = join(d, entry.name);
            hash.update(`${relative(dir, file)}:${statSync(file).mode}\n`);
            if (entry.isDirectory()) walk(file);
            else hash.update(readFileSync(file));
        }
    };
    walk(dir);
    return hash.digest('hex');
}

describe('installing with npm on a machine whose Node.js is older than 24', { timeout: 900_000 }, () => {
    let dir: string;
    let prefix: string;
    let tarball: string;
    let nextTarball: string;
    let nextVersion: string;
    let etc: string;
    let oldPath: string;

    const mailwarden = (args: readonly string[], path = oldPath): Promise<{ code: number; out: string; err: string }> =>
        runFile(join(prefix, 'bin/mailwarden'), args, { env: operatorEnv({}, path), cwd: dir, timeoutMs: 120_000 });

    before(async () => {
        const old = await runFile(OLD_NODE, ['-p', 'process.versions.node']);
        assert.equal(old.code, 0, `${OLD_NODE} runs`);
        assert.ok(Number(old.out.split('.')[0]) < 24, `${OLD_NODE} is older than Node.js 24 (it is ${old.out.trim()})`);
        dir = mkdtempSync(join(tmpdir(), 'mailwarden-install-'));
        prefix = join(dir, 'usr-local');
        oldPath = `${join(prefix, 'bin')}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`;

        // The release package, as `npm pack` in a checkout makes it.
        const packed = await runFile('npm', ['pack', '--pack-destination', dir], {
            cwd: repo,
            env: operatorEnv({}, '/usr/local/bin:/usr/bin:/bin'),
            timeoutMs: 120_000,
        });
        assert.equal(packed.code, 0, packed.err);
        tarball = join(dir, `mailwarden-${pkg.version}.tgz`);
        assert.ok(existsSync(tarball), packed.out);
        assert.ok(!existsSync(join(repo, 'npm-shrinkwrap.json')), 'postpack removed the shrinkwrap copy');

        // A newer release: the same package with the next patch version.
        const [major, minor, patch] = pkg.version.split('.').map(Number) as [number, number, number];
        nextVersion = `${major}.${minor}.${patch + 1}`;
        const next = join(dir, 'next');
        mkdirSync(next);
        const untar = await runFile('tar', ['-xzf', tarball, '-C', next]);
        assert.equal(untar.code, 0, untar.err);
        const nextPkg = join(next, 'package/package.json');
        writeFileSync(
            nextPkg,
            readFileSync(nextPkg, 'utf8').replace(`"version": "${pkg.version}"`, `"version": "${nextVersion}"`),
        );
        const repacked = await runFile('npm', ['pack', '--ignore-scripts', '--pack-destination', dir], {
            cwd: join(next, 'package'),
            env: operatorEnv({}, '/usr/local/bin:/usr/bin:/bin'),
            timeoutMs: 120_000,
        });
        assert.equal(repacked.code, 0, repacked.err);
        nextTarball = join(dir, `mailwarden-${nextVersion}.tgz`);

        // /etc/mailwarden and /var/lib/mailwarden of step 1, moved into the temporary folder.
        etc = join(dir, 'etc/mailwarden');
        mkdirSync(join(dir, 'var/lib/mailwarden/spool'), { recursive: true });
        mkdirSync(etc, { recursive: true });
        cpSync(join(repo, 'rules'), join(etc, 'rules'), { recursive: true });
        copyFileSync(join(repo, 'test/config/fixtures/tls/cert.pem'), join(etc, 'tls.crt'));
        copyFileSync(join(repo, 'test/config/fixtures/tls/key.pem'), join(etc, 'tls.key'));
        writeFileSync(join(etc, 'users.yaml'), 'users: []\n');
        writeFileSync(
            join(etc, 'mailwarden.yaml'),
            readRepo('deploy/mailwarden.yaml')
                .replaceAll('/etc/mailwarden', etc)
                .replaceAll('/var/lib/mailwarden', join(dir, 'var/lib/mailwarden'))
                .replace(/^redis: .*\n/m, ''),
        );
    });

    after(() => {
        if (dir) rmSync(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
    });

    it("installs with the guide's `npm install -g` and runs on the Node.js 24 that came with it", async () => {
        // The block that installs (the one before it makes the package from the source).
        const install = shellBlocks(guide, 'Step 1: install mailwarden').find((b) => b.startsWith('npm install -g '));
        assert.match(
            install!,
            new RegExp(`\\./mailwarden-${pkg.version.replaceAll('.', '\\.')}\\.tgz`),
            'the guide names this release',
        );
        const r = await runShell(substitute(install!, { [`./mailwarden-${pkg.version}.tgz`]: tarball }), {
            env: operatorEnv({ npm_config_prefix: prefix }, oldPath),
            cwd: dir,
            timeoutMs: 100_000,
        });
        assert.equal(r.code, 0, `${r.out}\n${r.err}`);
        assert.match(r.out, new RegExp(`^mailwarden ${pkg.version}$`, 'm'));
        assert.doesNotMatch(r.err, /ERR_UNKNOWN_FILE_EXTENSION|ERR_UNSUPPORTED_NODE_MODULES_TYPE_STRIPPING/);
        const installed = join(prefix, 'lib/node_modules/mailwarden');
        assert.ok(
            existsSync(join(installed, `node_modules/node-${process.platform}-${process.arch}/bin/node`)),
            'the Node.js 24 runtime is in place',
        );
        assert.doesNotMatch(r.err, /install-scripts/, 'no install script to allow');
        // The unit's ExecStart names the command npm installed.
        assert.ok(Object.keys(pkg.bin).includes('mailwarden'));
        assert.ok(existsSync(join(prefix, 'bin/mailwarden')));
        // What the guide copies from the installation exists in it.
        for (const m of guide.matchAll(/"\$\(npm root -g\)\/mailwarden\/([^"]+)"/g)) {
            assert.ok(existsSync(join(installed, m[1]!)), `the package has ${m[1]}`);
        }
    });

    it('checks the deployment configuration with the Node.js of the system', async () => {
        const r = await mailwarden(['check', '-c', join(etc, 'mailwarden.yaml')]);
        assert.equal(r.code, 0, `${r.out}${r.err}`);
        assert.match(r.out, /^ok: /m);
    });

    it('runs from under node_modules when Node.js 24 comes first on the PATH', async () => {
        const path = `${NODE24_BIN}:${oldPath}`;
        const v = await mailwarden(['--version'], path);
        assert.equal(v.code, 0, v.err);
        assert.equal(v.out, `mailwarden ${pkg.version}\n`);
        const c = await mailwarden(['check', '-c', join(etc, 'mailwarden.yaml')], path);
        assert.equal(c.code, 0, `${c.out}${c.err}`);
    });

    /**
     * `serve` through the installed command (the launcher on the old Node.js, mailwarden in its
     * Node.js 24 child), in a process group of its own: a kill of the launcher alone would leave
     * the child running when a test fails. `end()` kills whatever of the group is left.
     */
    const serveInstalled = (name: string) => {
        const config = join(dir, `${name}.yaml`);
        writeFileSync(
            config,
            [
                'listeners:',
                '  - { name: mx, host: 127.0.0.1, port: 0, mode: mx }',
                `upstream: { url: "maildir:${join(dir, 'maildir')}" }`,
                'http: false',
            ].join('\n'),
        );
        const child = spawn(join(prefix, 'bin/mailwarden'), ['serve', '-c', config], {
            env: operatorEnv({}, oldPath),
            cwd: dir,
            stdio: ['ignore', 'pipe', 'pipe'],
            detached: true,
        });
        let out = '';
        child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
        child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
        const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
        const ended = (): boolean => child.exitCode !== null || child.signalCode !== null;
        return {
            child,
            exited,
            out: () => out,
            waitFor: async (pattern: RegExp): Promise<void> => {
                const deadline = Date.now() + 60_000;
                while (!pattern.test(out) && Date.now() < deadline && !ended()) {
                    await new Promise((r) => setTimeout(r, 20));
                }
                assert.match(out, pattern, `exit ${child.exitCode} ${child.signalCode}`);
            },
            end: (): void => {
                try {
                    process.kill(-child.pid!, 'SIGKILL');
                } catch {
                    // the group is gone: everything in it exited
                }
            },
        };
    };

    it('passes SIGHUP and SIGTERM on to mailwarden and exits as it does', async () => {
        const serve = serveInstalled('serve');
        try {
            await serve.waitFor(/"msg":"listening"/);
            // The package carries the build `npm pack` made (scripts/build.js): every module
            // loads from it, none is stripped at start.
            await serve.waitFor(/"msg":"mailwarden started"/);
            assert.match(serve.out(), /"modules":\{"compiled":\d+,"stripped":0\}/);
            serve.child.kill('SIGHUP');
            await serve.waitFor(/"msg":"reload requested"/);
            serve.child.kill('SIGTERM');
            assert.equal(await serve.exited, 0, serve.out());
            assert.match(serve.out(), /"msg":"stopped"/);
        } finally {
            serve.end();
        }
    });

    it('holds a SIGHUP sent as soon as it started, while its Node.js 24 child still starts', async () => {
        const serve = serveInstalled('serve-early');
        try {
            // the launcher (on the old Node.js) catches SIGHUP from its first statement on
            const deadline = Date.now() + 10_000;
            for (;;) {
                const status = readFileSync(`/proc/${serve.child.pid}/status`, 'utf8');
                const mask = /^SigCgt:\s*([0-9a-f]+)$/m.exec(status)?.[1] ?? '0';
                if ((BigInt(`0x${mask}`) & 1n) === 1n) break;
                assert.ok(Date.now() < deadline, 'the launcher never caught SIGHUP');
                await new Promise((r) => setTimeout(r, 2));
            }
            serve.child.kill('SIGHUP');
            await serve.waitFor(/"msg":"listening"/);
            await serve.waitFor(/"msg":"(reload requested|signals received during start-up)"/);
            assert.equal(serve.child.exitCode, null, serve.out());
            serve.child.kill('SIGTERM');
            assert.equal(await serve.exited, 0, serve.out());
        } finally {
            serve.end();
        }
    });

    it('listens on 25, 587 and 465 as the unit runs it: an unprivileged user with CAP_NET_BIND_SERVICE only', async () => {
        // The unit's User= and AmbientCapabilities=, in a private network namespace (unshare) so
        // that the real port numbers are free; the capability must reach the Node.js 24 child.
        const unit = readRepo('deploy/systemd/mailwarden.service');
        assert.match(unit, /^AmbientCapabilities=CAP_NET_BIND_SERVICE$/m);
        const config = join(dir, 'unit.yaml');
        writeFileSync(config, readFileSync(join(etc, 'mailwarden.yaml'), 'utf8').replace(/^http: .*$/m, 'http: false'));
        chmodSync(dir, 0o755);
        // as step 1 of the guide makes it (install -d -o mailwarden): the service user owns the spool
        chownSync(join(dir, 'var/lib/mailwarden/spool'), 65534, 65534);
        const script = [
            'ip link set lo up',
            `setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=+net_bind_service --ambient-caps=+net_bind_service "${join(prefix, 'bin/mailwarden')}" serve -c "${config}" >"${join(dir, 'unit.log')}" 2>&1 &`,
            'pid=$!',
            'i=0; while [ $i -lt 600 ] && ! grep -q \'"port":465\' "' +
                join(dir, 'unit.log') +
                '"; do sleep 0.1; i=$((i + 1)); done',
            'ss -ltnH',
            'kill -TERM $pid; wait $pid',
        ].join('\n');
        const r = await runFile('unshare', ['--net', 'sh', '-c', script], {
            env: operatorEnv({}, oldPath),
            timeoutMs: 120_000,
        });
        const log = readFileSync(join(dir, 'unit.log'), 'utf8');
        assert.equal(r.code, 0, `${r.out}${r.err}${log}`);
        for (const port of [25, 587, 465]) assert.match(r.out, new RegExp(` \\*:${port} `), `${port}: ${log}`);
        assert.match(log, /"msg":"stopped"/);
    });

    it('without its Node.js 24 runtime, says so and what to do', async () => {
        const bare = join(dir, 'bare');
        mkdirSync(join(bare, 'bin'), { recursive: true });
        const installed = join(prefix, 'lib/node_modules/mailwarden');
        cpSync(join(installed, 'bin'), join(bare, 'bin'), { recursive: true });
        copyFileSync(join(installed, 'package.json'), join(bare, 'package.json'));
        cpSync(join(installed, 'src'), join(bare, 'src'), { recursive: true });
        const r = await runFile(OLD_NODE, [join(bare, 'bin/mailwarden.js'), '--version'], {
            env: operatorEnv({}, oldPath),
            cwd: dir,
        });
        assert.equal(r.code, 1);
        assert.match(r.err, /^mailwarden: Node\.js 24 is required; this is Node\.js \d+\.\d+\.\d+ \(/);
        assert.match(r.err, new RegExp(`npm install -g mailwarden-${pkg.version.replaceAll('.', '\\.')}\\.tgz`));
        assert.doesNotMatch(r.err, /ERR_UNKNOWN_FILE_EXTENSION/);
    });

    it("upgrades with the guide's commands: the new release checks first; configuration and data stay", async () => {
        const [stage, upgrade] = shellBlocks(guide, 'Upgrading mailwarden');
        const calls = join(dir, 'calls');
        const shims = writeShims(join(dir, 'shims'), {
            systemctl: `echo "systemctl $*" >>"${calls}"`,
            // runs the command as this user: the mailwarden user does not exist here
            runuser: `echo "runuser $*" >>"${calls}"; while [ "$1" != -- ]; do shift; done; shift; exec "$@"`,
        });
        // The unit and the certbot hook as step 1 and step 4 installed them.
        mkdirSync(join(dir, 'etc/systemd/system'), { recursive: true });
        mkdirSync(join(dir, 'etc/letsencrypt/renewal-hooks/deploy'), { recursive: true });
        copyFileSync(
            join(repo, 'deploy/systemd/mailwarden.service'),
            join(dir, 'etc/systemd/system/mailwarden.service'),
        );
        copyFileSync(
            join(repo, 'deploy/tls/certbot-deploy-hook.sh'),
            join(dir, 'etc/letsencrypt/renewal-hooks/deploy/mailwarden'),
        );
        const table = {
            './mailwarden-0.2.0.tgz': nextTarball,
            '/var/tmp/mailwarden-next': join(dir, 'mailwarden-next'),
            '/etc/mailwarden': etc,
            '/etc/systemd/system': join(dir, 'etc/systemd/system'),
            '/etc/letsencrypt': join(dir, 'etc/letsencrypt'),
        };
        const run = async (): Promise<{ code: number; out: string; err: string }> => {
            let out = '';
            let err = '';
            for (const block of [stage!, upgrade!]) {
                const r = await runShell(substitute(block, table), {
                    env: operatorEnv({ npm_config_prefix: prefix }, `${shims}:${oldPath}`),
                    cwd: dir,
                    timeoutMs: 100_000,
                });
                out += r.out;
                err += r.err;
                if (r.code !== 0) return { code: r.code, out, err };
            }
            return { code: 0, out, err };
        };
        const version = async (): Promise<string> => (await mailwarden(['--version'])).out.trim();
        assert.equal(await version(), `mailwarden ${pkg.version}`);

        // Nothing is replaced or restarted unless the new release accepted the configuration.
        assert.match(
            upgrade!,
            /^runuser -u mailwarden -- \/var\/tmp\/mailwarden-next\/bin\/mailwarden check -c \/etc\/mailwarden\/mailwarden\.yaml && npm install -g \S+ && systemctl restart mailwarden$/m,
        );
        writeFileSync(join(dir, 'var/lib/mailwarden/spool/kept'), 'data\n');
        const before = [digest(etc), digest(join(dir, 'var/lib/mailwarden'))];
        const r = await run();
        assert.equal(r.code, 0, `${r.out}\n${r.err}`);
        assert.equal(await version(), `mailwarden ${nextVersion}`);
        assert.deepEqual(
            [digest(etc), digest(join(dir, 'var/lib/mailwarden'))],
            before,
            'configuration and data unchanged',
        );
        assert.match(
            readFileSync(calls, 'utf8'),
            /^runuser -u mailwarden -- \S+ check -c \S+\nsystemctl restart mailwarden\n$/,
        );
        // The staged release is compared with the installed rules, unit and hook before anything changes.
        for (const path of [
            '/etc/mailwarden/rules',
            '/etc/systemd/system/mailwarden.service',
            '/etc/letsencrypt/renewal-hooks/deploy/mailwarden',
        ]) {
            assert.match(
                stage!,
                new RegExp(`^diff -r?u ${path.replaceAll('.', '\\.')} /var/tmp/mailwarden-next/`, 'm'),
                path,
            );
        }
        assert.doesNotMatch(
            stage!,
            /^(cp|install) .*\/etc\/mailwarden\/rules/m,
            'new rule files are not copied in before the restart',
        );
        assert.ok(!existsSync(join(dir, 'mailwarden-next')), 'the staging copy is removed');
        const check = await mailwarden(['check', '-c', join(etc, 'mailwarden.yaml')]);
        assert.equal(check.code, 0, `the upgraded release runs on Node.js 24: ${check.err}`);
    });
});
