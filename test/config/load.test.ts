import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { runCheck } from '../../src/commands/check.ts';
import { workerCount } from '../../src/cluster/primary.ts';
import { PACKAGE_RULES_DIR, defaultAuthLockout, defaultSpoolDir } from '../../src/config/defaults.ts';
import { prepareSpoolFolder } from '../../src/data/spool.ts';
import { ConfigError, loadConfig, resolveConfigPath, type Issue } from '../../src/config/load.ts';
import { CERT, KEY, OTHER_KEY, PEM_FILES, cleanup, folderWith, issuesOf, loadText, tempDir } from './helpers.ts';

after(cleanup);

const TLS = 'tls: { cert: tls/cert.pem, key: tls/key.pem }\n';
const AUTH = 'auth: { users: users.yaml }\n';
const USERS = { 'users.yaml': 'users: []\n' };

describe('embedded defaults', () => {
    it('give one mx listener, a maildir upstream under the working folder, and the shipped rules', () => {
        const cwd = tempDir();
        const config = loadConfig(null, {}, { cwd });
        assert.equal(config.source, null);
        assert.equal(config.hostname, os.hostname());
        assert.deepEqual(config.domains, []);
        assert.deepEqual(config.listeners, [
            {
                name: 'mx',
                host: '127.0.0.1',
                port: 2525,
                mode: 'mx',
                tls: 'none',
                proxyProtocol: null,
                maxClients: 2000,
                maxClientsPerNetwork: 50,
                maxMessageSize: 50 * 1024 * 1024,
                bareNewline: 'reject',
                socketTimeoutMs: 300_000,
                maxRecipients: 1000,
                preTransactionTimeoutMs: 30_000,
                pregreetWaitMs: 6000,
            },
        ]);
        assert.deepEqual(config.pregreet, { waitMs: 6000, ttlMs: 24 * 3_600_000 });
        assert.equal(config.tls, null);
        assert.deepEqual(config.upstream, {
            kind: 'maildir',
            url: 'maildir:./data/maildir',
            path: path.join(cwd, 'data', 'maildir'),
        });
        assert.deepEqual(config.dns, { servers: null, timeoutMs: 5000 });
        assert.equal(config.redis, null);
        assert.equal(config.auth, null);
        assert.equal(config.rules, PACKAGE_RULES_DIR);
        assert.equal(path.basename(config.rules), 'rules');
        assert.ok(
            fs.existsSync(path.join(path.dirname(config.rules), 'package.json')),
            'rules/ sits in the package root',
        );
        assert.deepEqual(config.http, { host: '127.0.0.1', port: 9465 });
        assert.deepEqual(config.spool, { dir: defaultSpoolDir(), memoryLimit: 1024 * 1024 });
        assert.ok(config.spool.dir.startsWith(os.tmpdir()), 'a folder of our own under the temporary folder');
        assert.equal(config.shutdownTimeoutMs, 30_000);
        assert.deepEqual(config.log, { level: 'info' });
    });

    it('apply to a config file written {}, relative to the file and not the working folder', () => {
        const { config, dir, file } = loadText('# every key at its default\n{}\n');
        assert.equal(config.source, file);
        assert.deepEqual(config.upstream, {
            kind: 'maildir',
            url: 'maildir:./data/maildir',
            path: path.join(dir, 'data', 'maildir'),
        });
        assert.equal(config.listeners.length, 1);
    });

    it('are not what an emptied file gives: a file with no settings is refused at FILE:1:1', () => {
        // `: > mailwarden.yaml` and a reload would otherwise switch to the shipped rules and
        // reset softReject and dns.servers without a word
        const message =
            'the config file holds no settings (it is empty, or only comments): every key would take its default (the shipped rules among them); write "{}" to run on the defaults with this file, or give no config file at all (no -c, no MAILWARDEN_CONFIG, no ./mailwarden.yaml) for the embedded defaults';
        for (const text of ['', '\n  \n', '# nothing here\n', '---\n# softReject: true\n', '~\n']) {
            assert.deepEqual(issuesOf(text), [`1:1: ${message}`], JSON.stringify(text));
        }
    });

    it('keys written without a value take their defaults', () => {
        const { config } = loadText('dns:\nredis:\nhttp:\nlisteners:\n');
        assert.deepEqual(config.dns, { servers: null, timeoutMs: 5000 });
        assert.equal(config.redis, null);
        assert.deepEqual(config.http, { host: '127.0.0.1', port: 9465 });
        assert.equal(config.listeners[0]?.port, 2525);
    });

    it('per-listener defaults depend on the mode and on top-level tls', () => {
        const { config } = loadText(
            TLS +
                AUTH +
                'listeners:\n  - { name: mx, host: 0.0.0.0, port: 25 }\n  - { name: sub, host: 0.0.0.0, port: 587, mode: submission }\n',
            {},
            { ...PEM_FILES, ...USERS },
        );
        const [mx, sub] = config.listeners;
        assert.equal(mx?.mode, 'mx');
        assert.equal(mx?.tls, 'starttls');
        assert.equal(mx?.bareNewline, 'reject');
        assert.equal(sub?.tls, 'starttls');
        assert.equal(sub?.bareNewline, 'normalize');
    });

    it('the default listener offers STARTTLS once tls is configured', () => {
        const { config } = loadText(TLS, {}, PEM_FILES);
        assert.equal(config.listeners[0]?.tls, 'starttls');
    });
});

describe('a complete config', () => {
    const yaml = `
hostname: MX.Example.com
domains: [example.com, Example.ORG]
listeners:
  - { name: mx, host: 0.0.0.0, port: 25, mode: mx, proxyProtocol: [10.0.0.0/8, "2001:db8::1"] }
  - { name: submission, host: "::", port: 587, mode: submission, maxMessageSize: 25MB }
  - name: submissions
    host: 0.0.0.0
    port: 465
    mode: submission
    tls: implicit
    proxyProtocol: true
    maxClients: 20
    maxClientsPerNetwork: 4
    bareNewline: reject
    socketTimeout: 2m
    preTransactionTimeout: 45s
    pregreetWait: 2s
pregreet: { wait: 3s, ttl: 2h }
${TLS}
upstream:
  url: smtp://mail.example.net:10026
  xclient: false
  tlsVerify: true
  connectTimeout: 3s
  timeout: 30s
  dataTimeout: 5m
  keepAlive: 2s
dns: { servers: ["127.0.0.1", "127.0.0.1:5353", "[::1]:53", "::1"], timeout: 2s }
redis: { url: "rediss://:secret@redis.example.net:6380/2" }
${AUTH}
rules: ./my-rules
http: { host: 127.0.0.1, port: 9100 }
spool: { dir: spool, memoryLimit: 256KB }
shutdownTimeout: 1m
log: { level: debug }
`;

    it('is read into the typed shape', () => {
        const { config, dir } = loadText(yaml, {}, { ...PEM_FILES, ...USERS, 'my-rules/.keep': '', 'spool/.keep': '' });
        assert.equal(config.hostname, 'mx.example.com');
        assert.deepEqual(config.domains, ['example.com', 'example.org']);
        assert.deepEqual(config.listeners[0]?.proxyProtocol, ['10.0.0.0/8', '2001:db8::1/128']);
        assert.equal(config.listeners[1]?.host, '::');
        assert.equal(config.listeners[1]?.maxMessageSize, 25 * 1024 * 1024);
        assert.deepEqual(config.listeners[2], {
            name: 'submissions',
            host: '0.0.0.0',
            port: 465,
            mode: 'submission',
            tls: 'implicit',
            proxyProtocol: ['0.0.0.0/0', '::/0'],
            maxClients: 20,
            maxClientsPerNetwork: 4,
            maxMessageSize: 50 * 1024 * 1024,
            bareNewline: 'reject',
            socketTimeoutMs: 120_000,
            maxRecipients: 1000,
            preTransactionTimeoutMs: 45_000,
            pregreetWaitMs: 2000,
        });
        // pregreet.wait is the default of mx listeners only
        assert.equal(config.listeners[0]?.pregreetWaitMs, 3000);
        assert.equal(config.listeners[1]?.pregreetWaitMs, 0);
        assert.deepEqual(config.pregreet, { waitMs: 3000, ttlMs: 2 * 3_600_000 });
        assert.deepEqual(config.tls, { cert: path.join(dir, 'tls/cert.pem'), key: path.join(dir, 'tls/key.pem') });
        assert.deepEqual(config.upstream, {
            kind: 'smtp',
            url: 'smtp://mail.example.net:10026',
            host: 'mail.example.net',
            port: 10026,
            xclient: false,
            starttls: 'opportunistic',
            tlsVerify: true,
            connectTimeoutMs: 3000,
            commandTimeoutMs: 30_000,
            dataTimeoutMs: 300_000,
            keepAliveMs: 2000,
        });
        assert.deepEqual(config.dns, { servers: ['127.0.0.1', '127.0.0.1:5353', '[::1]:53', '::1'], timeoutMs: 2000 });
        assert.deepEqual(config.redis, {
            url: 'rediss://:secret@redis.example.net:6380/2',
            commandTimeoutMs: 250,
            connectTimeoutMs: 1000,
        });
        assert.deepEqual(config.auth, {
            users: path.join(dir, 'users.yaml'),
            dovecot: null,
            sendAs: null,
            recipientDelimiter: '+',
            lockout: defaultAuthLockout(),
        });
        assert.equal(config.rules, path.join(dir, 'my-rules'));
        assert.deepEqual(config.http, { host: '127.0.0.1', port: 9100 });
        assert.deepEqual(config.spool, { dir: path.join(dir, 'spool'), memoryLimit: 256 * 1024 });
        assert.equal(config.shutdownTimeoutMs, 60_000);
        assert.deepEqual(config.log, { level: 'debug' });
    });

    it('is deep-frozen: assignments throw', () => {
        const { config } = loadText(yaml, {}, { ...PEM_FILES, ...USERS, 'my-rules/.keep': '', 'spool/.keep': '' });
        const c = config as unknown as {
            hostname: string;
            listeners: { port: number; proxyProtocol: string[] }[];
            upstream: { port: number };
            dns: { servers: string[] };
        };
        assert.throws(() => {
            c.hostname = 'x';
        }, TypeError);
        assert.throws(() => {
            c.listeners[0]!.port = 1;
        }, TypeError);
        assert.throws(() => {
            c.listeners[0]!.proxyProtocol.push('1.2.3.4/32');
        }, TypeError);
        assert.throws(() => {
            c.listeners.push(c.listeners[0]!);
        }, TypeError);
        assert.throws(() => {
            c.upstream.port = 1;
        }, TypeError);
        assert.throws(() => {
            c.dns.servers[0] = '1.1.1.1';
        }, TypeError);
        assert.ok(Object.isFrozen(loadConfig(null, {}).listeners[0]));
    });
});

describe('upstream', () => {
    const upstream = (url: string): unknown =>
        loadText(`upstream: { url: "${url}" }\ndomains: [example.com]\n`).config.upstream;

    it('smtp:// defaults to port 25 and no STARTTLS on loopback', () => {
        assert.deepEqual(upstream('smtp://127.0.0.1'), {
            kind: 'smtp',
            url: 'smtp://127.0.0.1',
            host: '127.0.0.1',
            port: 25,
            xclient: true,
            starttls: 'off',
            tlsVerify: false,
            connectTimeoutMs: 10_000,
            commandTimeoutMs: 60_000,
            dataTimeoutMs: 100_000,
            keepAliveMs: 5000,
        });
        assert.equal((upstream('smtp://localhost:10026') as { starttls: string }).starttls, 'off');
        assert.equal((upstream('smtp://[::1]:10026') as { host: string }).host, '::1');
    });

    it('smtp:// to another host uses opportunistic STARTTLS; smtps:// defaults to port 465', () => {
        assert.equal((upstream('smtp://10.1.2.3') as { starttls: string }).starttls, 'opportunistic');
        const s = upstream('smtps://mail.example.net') as { kind: string; port: number };
        assert.equal(s.kind, 'smtps');
        assert.equal(s.port, 465);
    });

    it('maildir: paths resolve against the config folder', () => {
        const cwd = process.cwd();
        const { config, dir } = loadText('upstream: { url: "maildir:mail/new-here" }\n');
        assert.equal(process.cwd(), cwd);
        assert.deepEqual(config.upstream, {
            kind: 'maildir',
            url: 'maildir:mail/new-here',
            path: path.join(dir, 'mail', 'new-here'),
        });
        const abs = loadText('upstream: { url: "maildir:/var/spool/mw" }\n').config.upstream;
        assert.equal(abs.kind === 'maildir' && abs.path, '/var/spool/mw');
    });

    it('STARTTLS can be required', () => {
        const u = loadText('upstream: { url: "smtp://127.0.0.1:10026", starttls: required }\ndomains: [example.com]\n')
            .config.upstream;
        assert.equal(u.kind === 'smtp' && u.starttls, 'required');
    });

    it('the upstream keepalive is a duration, or false for none', () => {
        const keepAlive = (value: string): unknown => {
            const u = loadText(
                `upstream: { url: "smtp://127.0.0.1:10026", keepAlive: ${value} }\ndomains: [example.com]\n`,
            ).config.upstream;
            return u.kind === 'smtp' && u.keepAliveMs;
        };
        assert.equal(keepAlive('500ms'), 500);
        assert.equal(keepAlive('false'), null);
        assert.equal(keepAlive('true'), 5000);
        assert.match(
            issuesOf('upstream: { url: "smtp://127.0.0.1", keepAlive: soon }\ndomains: [example.com]\n')[0] ?? '',
            /upstream.keepAlive/,
        );
    });

    it('rejects smtp-only keys on maildir and STARTTLS on smtps', () => {
        assert.deepEqual(issuesOf('upstream:\n  url: maildir:./m\n  xclient: true\n'), [
            '3:3: upstream.xclient: applies only to smtp:// and smtps:// upstreams',
        ]);
        assert.deepEqual(
            issuesOf('upstream:\n  url: smtps://10.0.0.1\n  starttls: required\ndomains: [example.com]\n'),
            ['3:3: upstream.starttls: does not apply to smtps:// (TLS from the first byte)'],
        );
    });

    it('never repeats a user name or password in its messages', () => {
        const cases: [string, RegExp][] = [
            ['upstream: { url: "smtp://user:S3cretUp@127.0.0.1:25" }\n', /"smtp:\/\/\*\*\*@127\.0\.0\.1:25" has parts/],
            [
                'upstream: { url: "smtp://user:S3cretUp@127.0.0.1:bad" }\n',
                /"smtp:\/\/\*\*\*@127\.0\.0\.1:bad" is not a valid URL/,
            ],
            ['upstream: { url: "smtp://u:S3cret@Up@h:70000" }\n', /"smtp:\/\/\*\*\*@h:70000" has a bad port/],
            ['upstream: { url: "lmtp://u:S3cretUp@h" }\n', /unsupported upstream "lmtp:\/\/\*\*\*@h"/],
            ['upstream: "smtp://u:S3cretUp@h"\n', /expected a map .*got "smtp:\/\/\*\*\*@h"/],
            ['redis: { url: "redis://:S3cret@Up@h/x" }\n', /"redis:\/\/\*\*\*@h\/x" has a bad database/],
            [
                'redis: { cluster: ["redis://:S3cretUp@10.0.0.1:6379"] }\n',
                /redis\.cluster\[0\]: "redis:\/\/\*\*\*@10\.0\.0\.1:6379" is not HOST:PORT/,
            ],
            [
                'redis: { sentinels: ["default:S3cretUp@10.0.0.1:26379"], name: m }\n',
                /"\*\*\*@10\.0\.0\.1:26379" is not HOST:PORT/,
            ],
            ['redis: { url: "default:S3cretUp@127.0.0.1:6379" }\n', /"\*\*\*@127\.0\.0\.1:6379"/],
            ['upstream: { url: "smtp:relay:S3cretUp@h" }\n', /"smtp:\/\/\*\*\*@h"|"\*\*\*@h"/],
            [
                'redis: { cluster: ["127.0.0.1:6379"], password: 98765432 }\n',
                /^1:49: redis\.password: expected a password .*; got a number \(not shown; quote it to make it a string\)$/,
            ],
            [
                'redis: { cluster: ["127.0.0.1:6379"], password: [S3cretUp] }\n',
                /redis\.password: expected a password .*; got a list$/,
            ],
        ];
        for (const [yaml, expected] of cases) {
            const issues = issuesOf(yaml);
            assert.equal(issues.length, 1, yaml);
            assert.match(issues[0]!, expected, yaml);
            assert.doesNotMatch(issues[0]!, /S3cret|Up@|98765432/, yaml);
        }
    });

    it('rejects URLs with paths, users or bad ports', () => {
        assert.match(issuesOf('upstream: { url: "smtp://u:p@h/x" }\n')[0] ?? '', /^1:18: upstream.url: .*cannot use/);
        assert.match(issuesOf('upstream: { url: "smtp://h:70000" }\n')[0] ?? '', /bad port/);
        assert.match(issuesOf('upstream: { url: "smtp://h:0" }\n')[0] ?? '', /bad port/);
        assert.match(issuesOf('upstream: { url: "maildir:" }\n')[0] ?? '', /names no folder/);
    });
});

describe('environment expansion', () => {
    it('replaces ${VAR} and ${VAR:-default} in every string value', () => {
        const yaml =
            'hostname: ${MX_HOST}\n' +
            'domains: ["${DOMAIN:-example.com}", "b.${DOMAIN2:-example.net}"]\n' +
            'upstream:\n  url: smtp://${UPSTREAM_HOST:-127.0.0.1}:${UPSTREAM_PORT:-10026}\n';
        const { config } = loadText(yaml, { MX_HOST: 'mx.example.org', DOMAIN2: 'example.io', UPSTREAM_PORT: '' });
        assert.equal(config.hostname, 'mx.example.org');
        assert.deepEqual(config.domains, ['example.com', 'b.example.io']);
        assert.equal(config.upstream.url, 'smtp://127.0.0.1:10026');
    });

    it('reads expanded values as numbers and booleans where those are expected', () => {
        const yaml =
            'listeners:\n  - name: mx\n    host: 127.0.0.1\n    port: ${PORT}\n    proxyProtocol: ${PP:-false}\n' +
            'upstream:\n  url: smtp://127.0.0.1\n  xclient: ${XCLIENT}\ndomains: [example.com]\n';
        const { config } = loadText(yaml, { PORT: '2526', XCLIENT: 'false' });
        assert.equal(config.listeners[0]?.port, 2526);
        assert.equal(config.listeners[0]?.proxyProtocol, null);
        assert.equal(config.upstream.kind === 'smtp' && config.upstream.xclient, false);
        // Written as text without expansion, a number is still a type error.
        assert.match(issuesOf('http: { port: "9100" }\n')[0] ?? '', /^1:15: http.port: expected a port number/);
    });

    it('$${ writes a literal ${', () => {
        const { config } = loadText('upstream: { url: "maildir:./a$${b}" }\n');
        assert.equal(config.upstream.kind === 'maildir' && path.basename(config.upstream.path), 'a${b}');
    });

    it('an unset variable without default is an error at the reference', () => {
        assert.deepEqual(issuesOf('hostname: mx.${ZONE}\nhttp:\n  host: "${HTTP_HOST}"\n'), [
            '1:14: environment variable ZONE is not set',
            '3:10: environment variable HTTP_HOST is not set',
        ]);
        assert.deepEqual(issuesOf('hostname: "${A:-x}${1A}"\n'), [
            '1:19: bad variable reference "${1A}": write ${NAME} or ${NAME:-default} (or "$${" for a literal "${")',
        ]);
    });

    it('does not expand map keys', () => {
        assert.deepEqual(issuesOf('${KEY}: 1\n', { KEY: 'hostname' }), ['1:1: unknown key "${KEY}"']);
    });
});

describe('relative paths', () => {
    it('resolve against the config file folder whatever the working folder', () => {
        const dir = folderWith({ ...PEM_FILES, ...USERS, 'conf/rules/.keep': '' });
        fs.renameSync(path.join(dir, 'tls'), path.join(dir, 'conf', 'tls'));
        fs.renameSync(path.join(dir, 'users.yaml'), path.join(dir, 'conf', 'users.yaml'));
        fs.writeFileSync(path.join(dir, 'conf', 'mw.yaml'), TLS + AUTH + 'rules: rules\n');
        const other = tempDir();
        const config = loadConfig('conf/mw.yaml', {}, { cwd: dir });
        assert.equal(config.source, path.join(dir, 'conf', 'mw.yaml'));
        assert.equal(config.rules, path.join(dir, 'conf', 'rules'));
        assert.equal(config.auth?.users, path.join(dir, 'conf', 'users.yaml'));
        assert.equal(config.tls?.cert, path.join(dir, 'conf', 'tls', 'cert.pem'));
        const again = loadConfig(path.join(dir, 'conf', 'mw.yaml'), {}, { cwd: other });
        assert.deepEqual(again, config);
    });

    it('absolute paths are kept', () => {
        const { config } = loadText(`tls: { cert: "${CERT}", key: "${KEY}" }\n`);
        assert.deepEqual(config.tls, { cert: CERT, key: KEY });
    });
});

describe('resolveConfigPath', () => {
    it('prefers -c, then $MAILWARDEN_CONFIG, then ./mailwarden.yaml, then nothing', () => {
        const withFile = folderWith({ 'mailwarden.yaml': '' });
        const empty = tempDir();
        const env = { MAILWARDEN_CONFIG: '/etc/mailwarden/from-env.yaml' };
        assert.equal(resolveConfigPath({ flag: 'flag.yaml', env, cwd: withFile }), 'flag.yaml');
        assert.equal(resolveConfigPath({ env, cwd: withFile }), '/etc/mailwarden/from-env.yaml');
        assert.equal(resolveConfigPath({ env: {}, cwd: withFile }), 'mailwarden.yaml');
        assert.equal(resolveConfigPath({ env: { MAILWARDEN_CONFIG: '' }, cwd: withFile }), 'mailwarden.yaml');
        assert.equal(resolveConfigPath({ env: {}, cwd: empty }), null);
        assert.equal(resolveConfigPath({ flag: undefined, env: {}, cwd: empty }), null);
    });

    it('its relative answer loads with the same working folder', () => {
        const dir = folderWith({ 'mailwarden.yaml': 'hostname: mx.example.com\n' });
        const found = resolveConfigPath({ env: {}, cwd: dir });
        assert.equal(loadConfig(found, {}, { cwd: dir }).hostname, 'mx.example.com');
    });
});

describe('validation', () => {
    it('reports every issue of a file in one pass, in file order', () => {
        const yaml = [
            'hostname: "bad host"', // 1
            'listners: []', // 2
            'listeners:', // 3
            '  - { name: mx, host: 127.0.0.1, port: 99999, maxClients: 0 }', // 4
            '  - { name: mx, host: 127.0.0.1, port: 2526, mode: submission, tls: implicit }', // 5
            'upstream: { url: "lmtp://127.0.0.1:24" }', // 6
            'dns: { timeout: 5 }', // 7
            'shutdownTimeout: 30 s', // 8
            'log: { level: loud }', // 9
            '',
        ].join('\n');
        assert.deepEqual(issuesOf(yaml), [
            '1:11: hostname: "bad host" is not a valid host name',
            '2:1: unknown key "listners" (did you mean "listeners"?)',
            '4:40: listeners[0].port: expected a port number (0 to 65535); got 99999',
            '4:59: listeners[0].maxClients: expected a whole number (1 or more); got 0',
            '5:13: listeners[1].name: listener name "mx" is already used (line 4)',
            '5:52: listeners[1].mode: a submission listener needs the auth section (auth.users or auth.dovecot)',
            '5:69: listeners[1].tls: "implicit" needs the top-level tls section (cert and key)',
            '6:18: upstream.url: unsupported upstream "lmtp://127.0.0.1:24": write smtp://HOST[:PORT], smtps://HOST[:PORT] or maildir:PATH',
            '7:17: dns.timeout: expected a duration such as 500ms, 5s, 10m, 1h or 2d; got 5 (add a unit: 5s, 5ms, …)',
            '9:15: log.level: expected one of trace, debug, info, warn, error; got "loud"',
        ]);
    });

    it('accepts "30 s" with a space but nothing unit-less', () => {
        assert.equal(loadText('shutdownTimeout: 30 s\n').config.shutdownTimeoutMs, 30_000);
    });

    it('points YAML syntax errors at their line and column', () => {
        assert.deepEqual(issuesOf('hostname: mx.example.com\nlisteners:\n  - { name: mx\n'), [
            '4:1: YAML syntax: Flow map in block collection must be sufficiently indented and end with a }',
        ]);
        assert.deepEqual(issuesOf('hostname: a\nhostname: b\n'), ['2:1: YAML syntax: Map keys must be unique']);
        assert.deepEqual(issuesOf('http: { port: ${P} }\n'), [
            '1:16: YAML syntax: Unexpected flow-map-start at node end (inside { } or [ ], put values that contain ${…} in quotes)',
        ]);
    });

    it('reports a file that cannot be read', () => {
        const dir = tempDir();
        assert.throws(
            () => loadConfig(path.join(dir, 'absent.yaml'), {}),
            (e: unknown) =>
                e instanceof ConfigError &&
                e.message === `${path.join(dir, 'absent.yaml')}:1:1: cannot read config file: no such file`,
        );
    });

    it('ConfigError.message is the issues rendered FILE:LINE:COL, one per line', () => {
        const { file } = { file: path.join(folderWith({ 'c.yaml': 'a: 1\nb: 2\n' }), 'c.yaml') };
        try {
            loadConfig(file, {});
            assert.fail('expected an error');
        } catch (e) {
            assert.ok(e instanceof ConfigError);
            assert.equal(e.message, `${file}:1:1: unknown key "a"\n${file}:2:1: unknown key "b"`);
            assert.deepEqual(e.issues[1], { file, line: 2, col: 1, message: 'unknown key "b"' });
        }
    });

    it('suggests nested key names, ignoring case and separators', () => {
        assert.deepEqual(
            issuesOf('listeners:\n  - { name: mx, host: 127.0.0.1, port: 25, max_clients: 5 }\ntls: { crt: x }\n'),
            [
                '2:44: unknown key "max_clients" in listeners[0] (did you mean "maxClients"?)',
                '3:6: tls: missing "cert" (the certificate chain file, PEM)',
                '3:6: tls: missing "key" (the private key file, PEM)',
                '3:8: unknown key "crt" in tls (did you mean "cert"?)',
            ],
        );
    });

    it('checks tls files: present, PEM, and a matching pair', () => {
        const files = {
            ...PEM_FILES,
            'tls/not-pem.txt': 'hello\n',
            'tls/other-key.pem': fs.readFileSync(OTHER_KEY, 'utf8'),
        };
        const [notPem] = issuesOf('tls: { cert: tls/not-pem.txt, key: tls/key.pem }\n', {}, files);
        assert.match(notPem ?? '', /^1:14: tls.cert: .*not-pem.txt is not a PEM file/);
        const [mismatch] = issuesOf('tls: { cert: tls/cert.pem, key: tls/other-key.pem }\n', {}, files);
        assert.match(mismatch ?? '', /^1:33: tls.key: .*other-key.pem is not the private key of the certificate/);
        const [folder] = issuesOf('tls: { cert: tls, key: tls/key.pem }\n', {}, files);
        assert.match(folder ?? '', /^1:14: tls.cert: .*tls is not a file$/);
    });

    it('derives maxClientsPerNetwork from maxClients when it is not set: 50, or a quarter, at least 1', () => {
        const perNetwork = (maxClients: number): number =>
            loadText(`listeners: [{ name: mx, host: 127.0.0.1, port: 0, maxClients: ${maxClients} }]`).config
                .listeners[0]!.maxClientsPerNetwork;
        assert.deepEqual([5000, 200, 100, 20, 3, 1].map(perNetwork), [50, 50, 25, 5, 1, 1]);
        const same = loadText(
            'listeners: [{ name: mx, host: 127.0.0.1, port: 0, maxClients: 8, maxClientsPerNetwork: 8 }]',
        );
        assert.equal(same.config.listeners[0]!.maxClientsPerNetwork, 8, 'equal to maxClients is allowed');
    });

    it('reads proxyProtocol as false, true or a list of CIDRs', () => {
        const pp = (v: string): unknown =>
            loadText(`listeners:\n  - { name: mx, host: 127.0.0.1, port: 25, proxyProtocol: ${v} }\n`).config
                .listeners[0]?.proxyProtocol;
        assert.equal(pp('false'), null);
        assert.deepEqual(pp('true'), ['0.0.0.0/0', '::/0']);
        assert.deepEqual(pp('[192.0.2.1, "2001:DB8::/32"]'), ['192.0.2.1/32', '2001:db8::/32']);
        assert.deepEqual(issuesOf('listeners:\n  - { name: mx, host: 127.0.0.1, port: 25, proxyProtocol: [] }\n'), [
            '2:59: listeners[0].proxyProtocol: an empty list lets no client send a PROXY header; write false instead',
        ]);
        assert.match(
            issuesOf('listeners:\n  - { name: mx, host: 127.0.0.1, port: 25, proxyProtocol: yes }\n')[0] ?? '',
            /expected true, false or a list/,
        );
    });

    it('allows port 0 (any free port) on several listeners', () => {
        const { config } = loadText(
            'listeners:\n  - { name: a, host: 127.0.0.1, port: 0 }\n  - { name: b, host: 127.0.0.1, port: 0 }\nhttp: { port: 0 }\n',
        );
        assert.deepEqual(
            config.listeners.map((l) => l.port),
            [0, 0],
        );
        assert.equal(config.http?.port, 0);
    });

    it('finds listeners that clash with each other or with HTTP', () => {
        assert.deepEqual(
            issuesOf(
                'listeners:\n  - { name: a, host: 0.0.0.0, port: 25 }\n  - { name: b, host: 192.0.2.1, port: 25 }\n  - { name: c, host: 127.0.0.1, port: 9465 }\n',
            ),
            [
                '3:39: listeners[1].port: 192.0.2.1:25 overlaps 0.0.0.0:25, which is already used by listener "a" (line 2)',
                '4:39: listeners[2].port: 127.0.0.1:9465 is also where HTTP (metrics, health) listens by default; move one of them (http: { port: … })',
            ],
        );
        assert.deepEqual(issuesOf('listeners:\n  - { name: a, host: 127.0.0.1, port: 8080 }\nhttp: { port: 8080 }\n'), [
            '3:15: http.port: 127.0.0.1:8080 is already used by listener "a" (line 2)',
        ]);
        // Different addresses of the same port do not clash.
        loadText(
            'listeners:\n  - { name: a, host: 127.0.0.1, port: 25 }\n  - { name: b, host: 127.0.0.2, port: 25 }\n',
        );
    });

    it('finds a clash between localhost, its addresses and IPv4-mapped forms without DNS', () => {
        assert.deepEqual(
            issuesOf(
                'listeners:\n  - { name: a, host: localhost, port: 25254 }\n  - { name: b, host: 127.0.0.1, port: 25254 }\n',
            ),
            [
                '3:39: listeners[1].port: 127.0.0.1:25254 overlaps localhost:25254, which is already used by listener "a" (line 2) (localhost is 127.0.0.1 or ::1)',
            ],
        );
        assert.deepEqual(
            issuesOf('listeners:\n  - { name: a, host: "::1", port: 25 }\nhttp: { host: localhost, port: 25 }\n'),
            [
                '3:32: http.port: localhost:25 overlaps [::1]:25, which is already used by listener "a" (line 2) (localhost is 127.0.0.1 or ::1)',
            ],
        );
        assert.deepEqual(
            issuesOf(
                'listeners:\n  - { name: a, host: 127.0.0.1, port: 25 }\n  - { name: b, host: "::ffff:127.0.0.1", port: 25 }\n',
            ),
            [
                '3:48: listeners[1].port: [::ffff:127.0.0.1]:25 overlaps 127.0.0.1:25, which is already used by listener "a" (line 2)',
            ],
        );
        assert.deepEqual(
            issuesOf(
                'listeners:\n  - { name: a, host: "0:0:0:0:0:0:0:1", port: 25 }\n  - { name: b, host: "::1", port: 25 }\n',
            ),
            [
                '3:35: listeners[1].port: [::1]:25 overlaps [0:0:0:0:0:0:0:1]:25, which is already used by listener "a" (line 2)',
            ],
        );
        // a wildcard still covers localhost; distinct loopback addresses still do not clash
        assert.equal(
            issuesOf(
                'listeners:\n  - { name: a, host: 0.0.0.0, port: 25 }\n  - { name: b, host: localhost, port: 25 }\n',
            ).length,
            1,
        );
        loadText(
            'listeners:\n  - { name: a, host: localhost, port: 25 }\n  - { name: b, host: 127.0.0.2, port: 25 }\n',
        );
    });

    it('turns HTTP off with false', () => {
        assert.equal(loadText('http: false\n').config.http, null);
    });

    it('requires an existing rules folder; spool.dir is a folder or one serve will create', () => {
        assert.match(issuesOf('rules: ./absent\n')[0] ?? '', /^1:8: rules: no such folder: .*absent$/);
        assert.match(
            issuesOf('spool: { dir: x.txt }\n', {}, { 'x.txt': '' })[0] ?? '',
            /^1:15: spool.dir: .*x.txt is not a folder$/,
        );
        // the same file that `check` accepts before the first start is what serve starts with
        const { config } = loadText('spool: { dir: ./not-yet/spool }\n');
        assert.match(config.spool.dir, /not-yet\/spool$/);
    });

    it("refuses a spool.dir serve would refuse (another user's folder, a symbolic link), at spool.dir, for the user it runs as", async () => {
        const uid = process.getuid!();
        const dir = folderWith({ 'link-target/.keep': '' });
        // as root: a folder given to nobody (65534); as another user: the root folder
        let target = '/';
        if (uid === 0) {
            target = path.join(dir, 'theirs');
            fs.mkdirSync(target);
            fs.chownSync(target, 65534, 65534);
        }
        const owner = fs.statSync(target).uid;
        assert.notEqual(owner, uid, 'a folder of another user');
        const file = path.join(dir, 'mw.yaml');
        fs.writeFileSync(file, `spool: { dir: "${target}" }\n`);
        const expected =
            `mw.yaml:1:15: spool.dir: ${target} belongs to uid ${owner}, not to uid ${uid} that this process runs as; ` +
            'the spool folder holds message text, so mailwarden uses only one of the user it runs as: give the folder ' +
            'to the user serve runs as, and run check as that user too (for example runuser -u mailwarden -- mailwarden check)';
        const err: string[] = [];
        const check = { configPath: 'mw.yaml', cwd: dir, env: {}, out: () => {}, err: (l: string) => err.push(l) };
        // check run as root does not judge the owner (it cannot know the user serve runs as)
        assert.equal(await runCheck(check), uid === 0 ? 0 : 1);
        assert.deepEqual(err, uid === 0 ? [] : [expected]);
        // serve (start and reload) loads it the same way, and its start refuses that folder with the same test
        assert.throws(
            () => loadConfig('mw.yaml', {}, { cwd: dir, forServe: true }),
            (e: unknown) => e instanceof ConfigError && e.message === expected,
        );
        await assert.rejects(
            prepareSpoolFolder(target),
            /belongs to uid \d+, not to uid \d+ that this process runs as/,
        );
        // commands that only read the config (users, auth) are run as root on the service user's config
        assert.equal(loadConfig('mw.yaml', {}, { cwd: dir }).spool.dir, target);

        // a symbolic link to a folder: serve's start does not follow it, and neither does the loader
        const link = path.join(dir, 'spool-link');
        fs.symlinkSync(path.join(dir, 'link-target'), link);
        assert.deepEqual(issuesOf(`spool: { dir: "${link}" }\n`), [
            `1:15: spool.dir: ${link} is a symbolic link, not a folder: name the folder itself`,
        ]);
        await assert.rejects(prepareSpoolFolder(link), /is a symbolic link, not a folder/);
        // the folder itself, the running user's: accepted by both
        const own = path.join(dir, 'link-target');
        fs.writeFileSync(file, `spool: { dir: "${own}" }\n`);
        assert.equal(loadConfig(file, {}, { forServe: true }).spool.dir, own);
        await prepareSpoolFolder(own);
    });

    it('check run as root does not judge the owner of spool.dir, serve run as root does; a symbolic link is refused by both', () => {
        const dir = folderWith({ 'link-target/.keep': '', 'a-file': '' });
        // a folder of a user other than root, as the service user's is
        const target = path.join(dir, 'service-user');
        fs.mkdirSync(target);
        if (process.getuid!() === 0) fs.chownSync(target, 65534, 65534);
        const owner = fs.statSync(target).uid;
        assert.notEqual(owner, 0);
        const file = path.join(dir, 'mw.yaml');
        const load = (spool: string, options: { check?: boolean; uid: number }) => {
            fs.writeFileSync(file, `spool: { dir: "${spool}" }\n`);
            return loadConfig(file, {}, { forServe: true, ...options }).spool.dir;
        };
        assert.equal(load(target, { check: true, uid: 0 }), target);
        assert.throws(
            () => load(target, { uid: 0 }),
            (e: unknown) =>
                e instanceof ConfigError &&
                e.message.includes(`belongs to uid ${owner}, not to uid 0 that this process runs as`),
        );
        // check run as another user judges for that user
        assert.throws(
            () => load(target, { check: true, uid: owner + 1 }),
            (e: unknown) => e instanceof ConfigError && e.message.includes(`not to uid ${owner + 1} that`),
        );
        assert.equal(load(target, { check: true, uid: owner }), target);
        // what is not a folder is refused by check as root too
        const link = path.join(dir, 'spool-link');
        fs.symlinkSync(path.join(dir, 'link-target'), link);
        assert.throws(
            () => load(link, { check: true, uid: 0 }),
            (e: unknown) => e instanceof ConfigError && e.message.includes('is a symbolic link, not a folder'),
        );
        assert.throws(
            () => load(path.join(dir, 'a-file'), { check: true, uid: 0 }),
            (e: unknown) => e instanceof ConfigError && e.message.includes('is not a folder'),
        );
    });

    it('checks hostnames and domains', () => {
        assert.deepEqual(issuesOf('domains: [example.com, "exa mple.org", EXAMPLE.com, 42]\n'), [
            '1:24: domains[1]: "exa mple.org" is not a valid domain name',
            '1:40: domains[2]: "EXAMPLE.com" is listed twice',
            '1:53: domains[3]: expected a domain name; got 42',
        ]);
        assert.deepEqual(loadText('domains: [bücher.example]\n').config.domains, ['xn--bcher-kva.example']);
    });

    it('checks redis URLs and DNS servers', () => {
        assert.match(
            issuesOf('redis: { url: "http://x" }\n')[0] ?? '',
            /^1:15: redis.url: unsupported Redis URL "http:\/\/x"/,
        );
        assert.match(
            issuesOf('redis: { url: "redis://:pw@h/x" }\n')[0] ?? '',
            /"redis:\/\/\*\*\*@h\/x" has a bad database/,
        );
        assert.deepEqual(
            loadText('dns: { servers: ["[0:0:0:0:0:0:0:1]:53", "[::0001]:5353", "0::1", "[::FFFF:127.0.0.1]:53"] }\n')
                .config.dns.servers,
            ['[::1]:53', '[::1]:5353', '::1', '127.0.0.1:53'],
        );
        assert.deepEqual(issuesOf('dns: { servers: [ns.example.com, "[::1]:99999"] }\n'), [
            '1:18: dns.servers[0]: "ns.example.com" is not a DNS server address (write an IP address, IP:PORT, or [IPv6]:PORT)',
            '1:34: dns.servers[1]: "[::1]:99999" has a bad port (1 to 65535)',
        ]);
        // a link-local server keeps its zone, as the resolver reads it; any other address loses it
        assert.deepEqual(
            loadText('dns: { servers: ["[FE80:0::53%eth0]", "fe80::53%eth0", "[::1%lo]:53", "[fe80::1%2]:5353"] }\n')
                .config.dns.servers,
            ['[fe80::53%eth0]:53', 'fe80::53%eth0', '[::1]:53', '[fe80::1%2]:5353'],
        );
        assert.deepEqual(issuesOf('dns: { servers: ["[127.0.0.1]:53", "127.0.0.1:0", "fe80::53%"] }\n'), [
            '1:18: dns.servers[0]: "[127.0.0.1]:53" is not a DNS server address (write an IP address, IP:PORT, or [IPv6]:PORT)',
            '1:36: dns.servers[1]: "127.0.0.1:0" has a bad port (1 to 65535)',
            '1:51: dns.servers[2]: "fe80::53%" is not a DNS server address (write an IP address, IP:PORT, or [IPv6]:PORT)',
        ]);
    });

    it('reads workers as a number of processes or auto, and refuses several without redis', () => {
        assert.equal(loadText('hostname: mx.example.com\n').config.workers, 'auto');
        assert.equal(loadText('workers: auto\n').config.workers, 'auto');
        assert.equal(loadText('workers: 1\n').config.workers, 1);
        assert.equal(loadText('workers: 4\nredis: { url: "redis://127.0.0.1:6379" }\n').config.workers, 4);
        assert.equal(
            loadText('workers: ${N}\nredis: { url: "redis://127.0.0.1:6379" }\n', { N: '3' }).config.workers,
            3,
        );
        assert.deepEqual(issuesOf('workers: 2\n'), [
            '1:10: workers: 2 processes need redis: rate limits, greylisting and login failures kept in memory are counted per process, so every limit would let 2 times as much through; configure redis: or write workers: 1',
        ]);
        assert.deepEqual(issuesOf('workers: 0\n'), [
            '1:10: workers: expected a number of processes, or auto (1 to 256); got 0',
        ]);
        assert.deepEqual(issuesOf('workers: many\n'), [
            '1:10: workers: expected a number of processes, or auto (1 to 256); got "many"',
        ]);
    });

    it('runs one worker per core with Redis and one with the in-memory store when workers is auto', () => {
        const redis = loadText('redis: { url: "redis://127.0.0.1:6379" }\n').config;
        assert.equal(workerCount(redis, 8), 8);
        assert.equal(workerCount(loadText('hostname: mx.example.com\n').config, 8), 1);
        assert.equal(workerCount(loadText('workers: 1\nredis: { url: "redis://127.0.0.1:6379" }\n').config, 8), 1);
    });

    it('rejects durations beyond what timers support', () => {
        assert.deepEqual(issuesOf('shutdownTimeout: 30d\n'), [
            '1:18: shutdownTimeout: must be between 0ms and 2147483647ms',
        ]);
    });
});

describe('runCheck', () => {
    it('prints ok for a valid file and returns 0', async () => {
        const dir = folderWith({ 'mw.yaml': 'hostname: mx.example.org\n' });
        const out: string[] = [];
        const err: string[] = [];
        const code = await runCheck({
            configPath: 'mw.yaml',
            cwd: dir,
            env: {},
            out: (l) => out.push(l),
            err: (l) => err.push(l),
        });
        assert.equal(code, 0);
        assert.deepEqual(out, ['ok: mw.yaml']);
        assert.deepEqual(err, []);
    });

    it('prints ok for the embedded defaults', async () => {
        const out: string[] = [];
        assert.equal(await runCheck({ configPath: null, env: {}, out: (l) => out.push(l), err: () => {} }), 0);
        assert.deepEqual(out, ['ok: embedded defaults']);
    });

    it('refuses an emptied config file, and runs on the defaults with {}', async () => {
        const dir = folderWith({ 'empty.yaml': '', 'defaults.yaml': '{}\n' });
        const run = async (configPath: string): Promise<[number, string[], string[]]> => {
            const out: string[] = [];
            const err: string[] = [];
            const code = await runCheck({
                configPath,
                cwd: dir,
                env: {},
                out: (l) => out.push(l),
                err: (l) => err.push(l),
            });
            return [code, out, err];
        };
        const [code, out, err] = await run('empty.yaml');
        assert.equal(code, 1);
        assert.deepEqual(out, []);
        assert.equal(err.length, 1);
        assert.match(
            err[0]!,
            /^empty\.yaml:1:1: the config file holds no settings \(it is empty, or only comments\): /,
        );
        assert.deepEqual(await run('defaults.yaml'), [0, ['ok: defaults.yaml'], []]);
    });

    it('prints each issue as FILE:LINE:COL and returns 1', async () => {
        const dir = folderWith({ 'mw.yaml': 'hostnme: x\nlog: { level: 3 }\n' });
        const err: string[] = [];
        const code = await runCheck({
            configPath: 'mw.yaml',
            cwd: dir,
            env: {},
            out: () => {},
            err: (l) => err.push(l),
        });
        assert.equal(code, 1);
        assert.deepEqual(err, [
            'mw.yaml:1:1: unknown key "hostnme" (did you mean "hostname"?)',
            'mw.yaml:2:15: log.level: expected one of trace, debug, info, warn, error; got 3',
        ]);
    });

    it('escapes unprintable characters from the config, rule and list files and cuts long quoted values', async () => {
        const long = `x_${'y'.repeat(298)}`;
        const dir = folderWith({
            'mw.yaml': 'hostname: "mx\\e[31m.example"\nrules: ./rules\n',
            'rules/10.yaml': [
                'lists:',
                '  feed-domains: { type: domain, file: lists/feed.txt }',
                'rules:',
                '  - { id: feed-block, stage: mail, when: { mail.from.domain: { list: feed-domains } }, action: reject }',
                '',
            ].join('\n'),
            'rules/lists/feed.txt': `good.example\n\u001b]0;pwned-title\u0007\u001b[2J\u001b[31mevil.example\nbad\u202eexample.\u0085x\n${long}\n`,
        });
        const run = async (config: string): Promise<string[]> => {
            const err: string[] = [];
            await runCheck({ configPath: config, cwd: dir, env: {}, out: () => {}, err: (l) => err.push(l) });
            return err;
        };
        const configLines = await run('mw.yaml');
        assert.equal(configLines.length, 1);
        assert.match(configLines[0]!, /^mw\.yaml:1:11: hostname: "mx\\x1b\[31m\.example" is not a valid host name$/);
        fs.writeFileSync(path.join(dir, 'mw.yaml'), 'hostname: mx.example\nrules: ./rules\n');
        const listLines = await run('mw.yaml');
        const feed = path.join(dir, 'rules', 'lists', 'feed.txt');
        assert.deepEqual(listLines, [
            `${feed}:2:1: "\\x1b]0;pwned-title\\x07\\x1b[2J\\x1b[31mevil.example" is not a domain name`,
            `${feed}:3:1: "bad\\u{202e}example.\\x85x" is not a domain name`,
            `${feed}:4:1: "x_${'y'.repeat(98)}…" (300 characters) is not a domain name`,
        ]);
        for (const line of [...configLines, ...listLines]) assert.doesNotMatch(line, /[\p{Cc}\u202e]/u);
    });

    it('runs further validators on a loaded config and reports their issues', async () => {
        const err: string[] = [];
        const seen: string[] = [];
        const code = await runCheck({
            configPath: null,
            env: {},
            out: () => {},
            err: (l) => err.push(l),
            validators: [
                {
                    name: 'rules',
                    validate: (config) => {
                        seen.push(config.rules);
                        return [{ file: 'rules/10-x.yaml', line: 3, col: 7, message: 'unknown fact "clientip"' }];
                    },
                },
            ],
        });
        assert.equal(code, 1);
        assert.deepEqual(seen, [PACKAGE_RULES_DIR]);
        assert.deepEqual(err, ['rules/10-x.yaml:3:7: unknown fact "clientip"']);
    });

    it('prints warnings after errors; warnings alone exit 0, or 1 with --strict', async () => {
        const warning = { file: 'rules/10-x.yaml', line: 9, col: 5, message: 'case "y" does not hold' } as const;
        const run = async (issues: Issue[], strict = false) => {
            const out: string[] = [];
            const err: string[] = [];
            const code = await runCheck({
                configPath: null,
                env: {},
                out: (l) => out.push(l),
                err: (l) => err.push(l),
                strict,
                validators: [{ name: 'rules', validate: () => issues }],
            });
            return { code, out, err };
        };
        const warned = await run([{ ...warning, severity: 'warning' }]);
        assert.equal(warned.code, 0);
        assert.deepEqual(warned.err, ['rules/10-x.yaml:9:5: warning: case "y" does not hold']);
        assert.deepEqual(warned.out, [
            'ok: embedded defaults (1 warning; serve and reload accept these files as they are)',
        ]);
        const strict = await run([{ ...warning, severity: 'warning' }], true);
        assert.equal(strict.code, 1);
        assert.deepEqual(strict.out, []);
        const both = await run([
            { ...warning, severity: 'warning' },
            { file: 'rules/10-x.yaml', line: 3, col: 7, message: 'unknown fact "clientip"' },
        ]);
        assert.equal(both.code, 1);
        assert.deepEqual(both.err, [
            'rules/10-x.yaml:3:7: unknown fact "clientip"',
            'rules/10-x.yaml:9:5: warning: case "y" does not hold',
        ]);
    });
});

describe('docs/configuration.md', () => {
    it('its complete example is a valid config', () => {
        const doc = fs.readFileSync(path.join(import.meta.dirname, '..', '..', 'docs', 'configuration.md'), 'utf8');
        const section = doc.slice(doc.indexOf('## A complete example'));
        const yaml = /```yaml\n([\s\S]*?)```/.exec(section)?.[1];
        assert.ok(yaml, 'the example is a yaml block');
        const dkimKey = generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
        const dir = folderWith({
            ...USERS,
            'rules/.keep': '',
            'spool/.keep': '',
            'dkim/example.com.s2026.key': dkimKey,
        });
        fs.copyFileSync(CERT, path.join(dir, 'tls.crt'));
        fs.copyFileSync(KEY, path.join(dir, 'tls.key'));
        const local = yaml
            .replaceAll('/etc/mailwarden/', `${dir}/`)
            .replaceAll('/var/lib/mailwarden/spool', `${dir}/spool`);
        fs.writeFileSync(path.join(dir, 'mailwarden.yaml'), local);
        const config = loadConfig(path.join(dir, 'mailwarden.yaml'), {});
        assert.deepEqual(
            config.listeners.map((l) => `${l.name} ${l.mode} ${l.tls}`),
            ['mx mx starttls', 'submission submission starttls', 'submissions submission implicit'],
        );
        assert.deepEqual(config.redis, {
            url: 'redis://127.0.0.1:6379',
            commandTimeoutMs: 250,
            connectTimeoutMs: 1000,
        });
        assert.deepEqual(
            config.dkim?.sign.map((k) => `${k.domain} ${k.selector}`),
            ['example.com s2026'],
        );
        assert.deepEqual(config.auth?.lockout.exempt, ['192.0.2.0/24']);
    });
});
