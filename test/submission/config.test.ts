// The config keys of this area: `auth` (users file, or Dovecot with an optional sendAs file,
// recipientDelimiter) and `dkim` (signing keys, header list), as loadConfig returns them.
// The bad cases live in the config-errors corpus (30-, 31-, 32-).
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { defaultAuthLockout } from '../../src/config/defaults.ts';
import { ConfigError } from '../../src/config/issues.ts';
import { loadConfig } from '../../src/config/load.ts';

const dirs: string[] = [];
after(() => {
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

function load(
    yaml: string,
    files: Record<string, string> = {},
): { config: ReturnType<typeof loadConfig>; dir: string } {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mw-subcfg-'));
    dirs.push(dir);
    for (const [name, content] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), content);
    fs.writeFileSync(path.join(dir, 'mailwarden.yaml'), yaml);
    return { config: loadConfig(path.join(dir, 'mailwarden.yaml'), {}), dir };
}

function issues(yaml: string, files: Record<string, string> = {}): string[] {
    try {
        load(yaml, files);
    } catch (err) {
        assert.ok(err instanceof ConfigError);
        return err.issues.map((i) => `${i.line}:${i.col}: ${i.message}`);
    }
    return [];
}

const pem = (type: 'rsa' | 'ed25519'): string =>
    (type === 'rsa' ? generateKeyPairSync('rsa', { modulusLength: 1024 }) : generateKeyPairSync('ed25519')).privateKey
        .export({ type: 'pkcs8', format: 'pem' })
        .toString();

describe('auth config', () => {
    it('takes the users file', () => {
        const { config, dir } = load('auth: { users: users.yaml }\n', { 'users.yaml': 'users: []\n' });
        assert.deepEqual(config.auth, {
            users: path.join(dir, 'users.yaml'),
            dovecot: null,
            sendAs: null,
            recipientDelimiter: '+',
            lockout: defaultAuthLockout(),
        });
    });

    it('takes Dovecot over a unix socket or TCP, with an optional sendAs file', () => {
        const unix = load('auth: { dovecot: "unix:/run/dovecot/auth-client" }\n').config.auth;
        assert.deepEqual(unix, {
            users: null,
            dovecot: { kind: 'unix', path: '/run/dovecot/auth-client' },
            sendAs: null,
            recipientDelimiter: '+',
            lockout: defaultAuthLockout(),
        });
        const relative = load('auth: { dovecot: "unix:run/auth" }\n');
        assert.deepEqual(relative.config.auth?.dovecot, { kind: 'unix', path: path.join(relative.dir, 'run', 'auth') });
        assert.deepEqual(load('auth: { dovecot: /run/dovecot/auth-client }\n').config.auth?.dovecot, {
            kind: 'unix',
            path: '/run/dovecot/auth-client',
        });
        const tcp = load('auth:\n  dovecot: "127.0.0.1:12345"\n  sendAs: sendas.yaml\n  recipientDelimiter: "+-"\n', {
            'sendas.yaml': 'users: []\n',
        });
        assert.deepEqual(tcp.config.auth, {
            users: null,
            dovecot: { kind: 'tcp', host: '127.0.0.1', port: 12345 },
            sendAs: path.join(tcp.dir, 'sendas.yaml'),
            recipientDelimiter: '+-',
            lockout: defaultAuthLockout(),
        });
        assert.deepEqual(load('auth: { dovecot: "inet:[::1]:12345" }\n').config.auth?.dovecot, {
            kind: 'tcp',
            host: '::1',
            port: 12345,
        });
        assert.deepEqual(load('auth: { dovecot: "auth.example.com:12345" }\n').config.auth?.dovecot, {
            kind: 'tcp',
            host: 'auth.example.com',
            port: 12345,
        });
        assert.equal(
            load('auth: { dovecot: "127.0.0.1:1", recipientDelimiter: false }\n').config.auth?.recipientDelimiter,
            '',
        );
        assert.equal(
            load('auth: { dovecot: "127.0.0.1:1", recipientDelimiter: "" }\n').config.auth?.recipientDelimiter,
            '',
        );
    });

    it('needs exactly one backend', () => {
        assert.deepEqual(issues('auth: { recipientDelimiter: "+" }\n'), [
            '1:7: auth: missing "users" (the submission users file) or "dovecot" (the address of Dovecot\'s auth service)',
        ]);
        assert.deepEqual(issues('auth: { users: u.yaml, sendAs: u.yaml }\n', { 'u.yaml': '' }), [
            "1:24: auth.sendAs: applies only with auth.dovecot; with auth.users each user's sendAs is in the users file",
        ]);
        assert.equal(issues('auth: { dovecot: "127.0.0.1:70000" }\n').length, 1);
        assert.deepEqual(issues('auth: { dovecot: "unix:" }\n'), [
            '1:18: auth.dovecot: "unix:" names no socket; write unix:PATH (e.g. unix:/run/dovecot/auth-client) or HOST:PORT (an inet_listener of service auth)',
        ]);
    });

    it('takes the login lockout: failure rates per IP and per login (or false), per session, exempt networks', () => {
        const { config } = load(
            [
                'auth:',
                '  dovecot: "127.0.0.1:1"',
                '  lockout:',
                '    perIp: 5/10m',
                '    perLogin: false',
                '    perSession: 2',
                '    exempt: [192.0.2.0/24, "2001:DB8::7", 198.51.100.9]',
                '    loginKey: localPart',
                '',
            ].join('\n'),
        );
        assert.deepEqual(config.auth?.lockout, {
            perIp: { limit: 5, periodMs: 600_000 },
            perLogin: null,
            perSession: 2,
            exempt: ['192.0.2.0/24', '2001:db8::7/128', '198.51.100.9/32'],
            loginKey: 'localPart',
        });
        assert.deepEqual(
            load('auth: { dovecot: "127.0.0.1:1", lockout: { perLogin: 3/h } }\n').config.auth?.lockout,
            { ...defaultAuthLockout(), perLogin: { limit: 3, periodMs: 3_600_000 } },
            'keys left out keep their defaults',
        );
        assert.deepEqual(defaultAuthLockout(), {
            perIp: { limit: 10, periodMs: 900_000 },
            perLogin: { limit: 20, periodMs: 3_600_000 },
            perSession: 3,
            exempt: [],
            loginKey: 'login',
        });
    });

    it('refuses loginKey localPart with a users file, where alice@a.example and alice@b.example are two users', () => {
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mw-lk-'));
        try {
            const users = path.join(dir, 'users.yaml');
            fs.writeFileSync(users, 'users: []\n');
            assert.deepEqual(issues(`auth:\n  users: "${users}"\n  lockout:\n    loginKey: localPart\n`), [
                '4:5: auth.lockout.loginKey: localPart applies only with auth.dovecot (auth_username_format = %Ln); in a users file alice@a.example and alice@b.example are two users, and localPart would lock one out for the failures of the other',
            ]);
            assert.deepEqual(issues(`auth:\n  users: "${users}"\n  lockout: { loginKey: login }\n`), []);
        } finally {
            fs.rmSync(dir, { recursive: true, force: true });
        }
    });

    it('refuses a malformed lockout with FILE:LINE:COL positions', () => {
        assert.deepEqual(
            issues(
                [
                    'auth:',
                    '  dovecot: "127.0.0.1:1"',
                    '  lockout:',
                    '    perIp: 10 per 15m',
                    '    perLogin: 0/1h',
                    '    perSession: 0',
                    '    exempt: [10.0.0.0/33, 10.1.0.0/16, 10.1.0.0/16]',
                    '    perUser: 3/1h',
                    '    loginKey: domain',
                    '',
                ].join('\n'),
            ),
            [
                '4:12: auth.lockout.perIp: "10 per 15m" is not a rate; write a count per period such as 10/15m or 20/1h, or false for no limit',
                '5:15: auth.lockout.perLogin: "0/1h": the count must be a whole number from 1 to 100000',
                '6:17: auth.lockout.perSession: expected a number of failed logins (1 to 100); got 0',
                '7:14: auth.lockout.exempt[0]: "10.0.0.0/33" has a bad prefix length (0 to 32 for IPv4)',
                '7:40: auth.lockout.exempt[2]: "10.1.0.0/16" is listed twice',
                '8:5: unknown key "perUser" in auth.lockout',
                '9:15: auth.lockout.loginKey: expected one of login, localPart; got "domain"',
            ],
        );
        assert.deepEqual(issues('auth: { dovecot: "127.0.0.1:1", lockout: { perIp: true, perLogin: 3/2y } }\n'), [
            '1:51: auth.lockout.perIp: true is not a rate; write a count per period such as 10/15m or 20/1h, or false for no limit',
            '1:67: auth.lockout.perLogin: "3/2y": the period must be a duration from 1s to 366d, such as 15m or 1h',
        ]);
    });

    it('lets a submission listener run on Dovecot', () => {
        assert.deepEqual(
            issues(
                'auth: { dovecot: "127.0.0.1:1" }\nlisteners:\n  - { name: s, host: 127.0.0.1, port: 0, mode: submission, tls: none }\n',
            ),
            [
                '3:65: listeners[0].tls: a submission listener needs TLS (starttls or implicit): passwords are never accepted in clear text',
            ],
            'only the TLS requirement is left',
        );
    });
});

describe('dkim config', () => {
    it('reads signing keys (algorithm from the key type) and the header list', () => {
        const { config, dir } = load(
            'dkim:\n  sign:\n    - { domain: Example.COM, selector: s2024, key: rsa.pem }\n    - { domain: example.org, selector: ed.2024, key: ed.pem, algorithm: ed25519-sha256 }\n  headers: [From, Subject, To]\n',
            { 'rsa.pem': pem('rsa'), 'ed.pem': pem('ed25519') },
        );
        assert.deepEqual(config.dkim, {
            sign: [
                {
                    domain: 'example.com',
                    selector: 's2024',
                    keyFile: path.join(dir, 'rsa.pem'),
                    algorithm: 'rsa-sha256',
                },
                {
                    domain: 'example.org',
                    selector: 'ed.2024',
                    keyFile: path.join(dir, 'ed.pem'),
                    algorithm: 'ed25519-sha256',
                },
            ],
            headers: ['From', 'Subject', 'To'],
        });
        assert.equal(load('{}\n').config.dkim, null);
    });

    it('needs a non-empty sign list', () => {
        assert.deepEqual(issues('dkim: { headers: [From] }\n'), [
            '1:7: dkim: missing "sign" (the domains to sign for: a list of { domain, selector, key })',
        ]);
        assert.deepEqual(issues('dkim: { sign: [] }\n'), [
            '1:15: dkim.sign: an empty list; leave dkim out to sign nothing',
        ]);
    });
});
