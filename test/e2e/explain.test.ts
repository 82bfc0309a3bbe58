/**
 * `mailwarden explain` through the real command line, with the shipped rules and a DNS
 * server on loopback: a spoofed message from a p=reject domain shows the failing facts, the
 * matching rule with its reasons, the 550 reply and no headers; a clean, DKIM-signed one
 * shows dkim=pass, the accept decision and the headers that would be added. Also --json.
 * The service's spool folder is never created, cleaned or changed: explain spools to a
 * temporary folder of its own, removed at the end and when a signal ends it. The session is
 * encrypted (the tls fact) as serve's would be, or as --tls / --no-tls say.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { hash } from '@node-rs/argon2';
import { rsaKey, sign } from '../sender-auth/helpers.ts';
import { startDnsServer, type DnsTestServer } from '../helpers/dns-server.ts';
import { createTestCertificate } from '../helpers/tls-cert.ts';
import { until } from '../helpers/until.ts';

const run = promisify(execFile);
const BIN = new URL('../../bin/mailwarden.js', import.meta.url).pathname;
const key = rsaKey();

describe('mailwarden explain', () => {
    let dns: DnsTestServer;
    let dir: string;
    let config: string;
    let spoofed: string;
    let clean: string;
    before(async () => {
        dns = await startDnsServer({
            'bank.example': { TXT: ['v=spf1 ip4:192.0.2.10 -all'] },
            '_dmarc.bank.example': { TXT: ['v=DMARC1; p=reject'] },
            'news.example': { TXT: ['v=spf1 -all'] },
            '_dmarc.news.example': { TXT: ['v=DMARC1; p=reject'] },
            'sel._domainkey.news.example': { TXT: [key.record] },
            // the reverse lookup of this client never answers: explain waits at the helo stage
            '99.100.51.198.in-addr.arpa': { TIMEOUT: true },
        });
        dir = await mkdtemp(join(tmpdir(), 'mw-explain-'));
        config = join(dir, 'mailwarden.yaml');
        await writeFile(
            config,
            [
                'hostname: mx.example.test',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 2525, mode: mx }]',
                `dns: { servers: ["${dns.address}"], timeout: 500ms }`,
                'http: false',
                '',
            ].join('\n'),
        );
        spoofed = join(dir, 'spoofed.eml');
        await writeFile(
            spoofed,
            'From: CEO <ceo@bank.example>\r\nTo: bob@example.test\r\nSubject: wire money\r\n\r\nPlease pay.\r\n',
        );
        clean = join(dir, 'clean.eml');
        await writeFile(
            clean,
            await sign(
                'From: News <letters@news.example>\r\nTo: bob@example.test\r\nSubject: news\r\nDate: Sun, 29 Nov 2026 01:00:00 +0000\r\nMessage-ID: <n1@news.example>\r\n\r\nToday.\r\n',
                'news.example',
                'sel',
                key,
            ),
        );
    });
    after(async () => {
        await dns.close();
        await rm(dir, { recursive: true, force: true });
    });

    const explain = (file: string, from: string, ...extra: string[]) =>
        run(process.execPath, [
            BIN,
            'explain',
            '-c',
            config,
            '--client-ip',
            '198.51.100.7',
            '--helo',
            'mail.sender.example',
            '--mail-from',
            from,
            '--rcpt',
            'bob@example.test',
            ...extra,
            file,
        ]);

    it('explains why a spoofed message is refused', async () => {
        const { stdout } = await explain(spoofed, 'ceo@bank.example');
        assert.match(stdout, /== data ==/);
        assert.match(stdout, /dmarc\.result = "fail"/);
        assert.match(stdout, /spf\.result = "fail"/);
        assert.match(stdout, /\+ dmarc-reject \(20-dmarc\.yaml:\d+\) matched: reject/);
        assert.match(stdout, /dmarc\.result = "fail" .*✓/);
        assert.match(stdout, /^decision: reject; rules: dmarc-reject/m);
        assert.match(stdout, /^reply: 550 5\.7\.1 Message refused: it claims to be from bank\.example/m);
        assert.match(stdout, /headers added: none/);
    });

    it('explains why a clean, signed message is accepted and what it would carry', async () => {
        const { stdout } = await explain(clean, 'bounce@other.example');
        assert.match(stdout, /dkim\.result = "pass"/);
        assert.match(stdout, /dkim\.aligned = true/);
        assert.match(stdout, /dmarc\.result = "pass"/);
        assert.match(stdout, / {2}dmarc-reject \(20-dmarc\.yaml:\d+\) no match/);
        assert.match(stdout, /^decision: accept;/m);
        assert.match(stdout, /^reply: 250 2\.0\.0 /m);
        assert.match(
            stdout,
            /^ {2}Received: from mail\.sender\.example \(unknown \[198\.51\.100\.7\]\) by mx\.example\.test/m,
        );
        assert.match(stdout, /^ {2}Authentication-Results: mx\.example\.test;/m);
        assert.match(stdout, /^ {2}X-Mailwarden-Verdict: accept;/m);
    });

    it('reads a file saved with Unix line ends (postcat) as it crossed SMTP, and says so; --raw takes it as is', async () => {
        const unix = join(dir, 'unix.eml');
        await writeFile(
            unix,
            'From: CEO <ceo@bank.example>\nTo: bob@example.test\nSubject: wire money\n\nPlease pay.\n',
        );
        const read = await explain(unix, 'ceo@bank.example');
        assert.match(read.stderr, /note: .*unix\.eml has no CR at all; read with CRLF line ends/);
        assert.match(read.stdout, /^decision: reject; rules: dmarc-reject/m, 'the verdict the message got on the wire');
        const raw = await explain(unix, 'ceo@bank.example', '--raw');
        assert.equal(raw.stderr, '');
        assert.match(raw.stdout, /^reply: 550 5\.5\.2 /m, 'byte for byte: the bare LFs are refused');
        // one CR anywhere: the file is taken as it is
        const mixed = join(dir, 'mixed.eml');
        await writeFile(mixed, 'From: CEO <ceo@bank.example>\r\nTo: bob@example.test\nSubject: x\n\nPay.\n');
        const m = await explain(mixed, 'ceo@bank.example');
        assert.equal(m.stderr, '');
        assert.match(m.stdout, /^reply: 550 5\.5\.2 /m);
    });

    it('prints JSON for scripts', async () => {
        const { stdout } = await explain(spoofed, 'ceo@bank.example', '--json');
        const report = JSON.parse(stdout) as {
            decision: { action: string; rules: string[] };
            reply: { code: number };
            stages: { stage: string }[];
        };
        assert.equal(report.decision.action, 'reject');
        assert.deepEqual(report.decision.rules, ['dmarc-reject']);
        assert.equal(report.reply.code, 550);
        assert.deepEqual(
            report.stages.map((s) => s.stage),
            ['connect', 'helo', 'mail', 'rcpt', 'data'],
        );
    });

    it('prints its usage and options for --help, and exits 0', async () => {
        for (const flag of ['--help', '-h']) {
            const { stdout, stderr } = await run(process.execPath, [BIN, 'explain', flag]);
            assert.match(stdout, /^usage: mailwarden explain \[-c FILE\] --client-ip IP /);
            assert.match(stdout, /^ {2}--rcpt ADDR {9}envelope recipient/m);
            assert.match(stdout, /^ {2}--tls, --no-tls {5}whether the session is encrypted/m);
            assert.equal(stderr, '');
        }
    });

    it('reads --client-ip as the session does: an IPv4-mapped address as IPv4; not an address: exit 2', async () => {
        const args = (ip: string): string[] => [
            BIN,
            'explain',
            '-c',
            config,
            '--client-ip',
            ip,
            '--mail-from',
            'ceo@bank.example',
            '--rcpt',
            'bob@example.test',
            '--json',
            spoofed,
        ];
        const ipOf = (stdout: string): unknown =>
            (JSON.parse(stdout) as { stages: { facts: Record<string, unknown> }[] }).stages[0]!.facts['client.ip'];
        assert.equal(ipOf((await run(process.execPath, args('::FFFF:198.51.100.7'))).stdout), '198.51.100.7');
        await assert.rejects(run(process.execPath, args('mail.example')), (err: { code: number; stderr: string }) => {
            assert.equal(err.code, 2);
            assert.match(err.stderr, /--client-ip mail\.example is not an IP address/);
            return true;
        });
    });

    it("never creates, cleans or changes the service's spool folder; spools in a private folder removed at the end", async () => {
        const spoolDir = join(dir, 'service-spool');
        await mkdir(spoolDir, { mode: 0o755 });
        await chmod(spoolDir, 0o755);
        // named as a spool file of a process that no longer runs: serve would remove it at start
        const held = join(spoolDir, 'mailwarden-99999999-0123abcd-0123456789abcdef.eml');
        await writeFile(held, 'kept by the service\r\n');
        const missing = join(dir, 'not-yet', 'spool');
        const tmp = join(dir, 'tmp');
        await mkdir(tmp);
        for (const folder of [spoolDir, missing]) {
            const file = join(dir, 'spool-config.yaml');
            // a memory limit of 100 bytes: the signed message goes to a spool file
            await writeFile(
                file,
                [
                    'hostname: mx.example.test',
                    'listeners: [{ name: mx, host: 127.0.0.1, port: 2525, mode: mx }]',
                    `dns: { servers: ["${dns.address}"], timeout: 500ms }`,
                    `spool: { dir: "${folder}", memoryLimit: 100 }`,
                    'http: false',
                    '',
                ].join('\n'),
            );
            const { stdout } = await run(
                process.execPath,
                [
                    BIN,
                    'explain',
                    '-c',
                    file,
                    '--client-ip',
                    '198.51.100.7',
                    '--mail-from',
                    'bounce@other.example',
                ].concat(['--rcpt', 'bob@example.test', clean]),
                { env: { ...process.env, TMPDIR: tmp } },
            );
            assert.match(stdout, /dkim\.result = "pass"/, 'the spooled message was read whole');
            assert.match(stdout, /^reply: 250 2\.0\.0 /m);
            assert.deepEqual(await readdir(tmp), [], 'the private spool folder is removed');
        }
        assert.equal(await readFile(held, 'utf8'), 'kept by the service\r\n');
        assert.deepEqual(await readdir(spoolDir), ['mailwarden-99999999-0123abcd-0123456789abcdef.eml']);
        assert.equal((await stat(spoolDir)).mode & 0o777, 0o755, 'its mode is left alone');
        assert.equal(existsSync(join(dir, 'not-yet')), false, 'a missing spool folder is not created');
        // no temporary folder to be had: one line that says so, no stack trace
        await assert.rejects(
            run(
                process.execPath,
                [BIN, 'explain', '-c', config, '--client-ip', '198.51.100.7'].concat([
                    '--mail-from',
                    'bounce@other.example',
                    '--rcpt',
                    'bob@example.test',
                    clean,
                ]),
                { env: { ...process.env, TMPDIR: join(dir, 'no-such-folder') } },
            ),
            (err: { code: number; stderr: string }) => {
                assert.equal(err.code, 1);
                assert.match(
                    err.stderr,
                    /^mailwarden explain: cannot make a temporary spool folder in .*no-such-folder/,
                );
                assert.equal(err.stderr.trimEnd().split('\n').length, 1, err.stderr);
                return true;
            },
        );
    });

    it('removes its private spool folder when a signal ends it during a lookup', async () => {
        const tmp = join(dir, 'tmp-signal');
        await mkdir(tmp);
        const slow = join(dir, 'slow-dns.yaml');
        await writeFile(
            slow,
            [
                'hostname: mx.example.test',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 2525, mode: mx }]',
                `dns: { servers: ["${dns.address}"], timeout: 60s }`,
                'http: false',
                '',
            ].join('\n'),
        );
        const child = spawn(
            process.execPath,
            [BIN, 'explain', '-c', slow, '--client-ip', '198.51.100.99', '--mail-from', 'bounce@other.example'].concat([
                '--rcpt',
                'bob@example.test',
                clean,
            ]),
            { env: { ...process.env, TMPDIR: tmp }, stdio: 'ignore' },
        );
        const ended = new Promise<NodeJS.Signals | null>((resolve) =>
            child.on('exit', (_code, signal) => resolve(signal)),
        );
        await until('explain made its private spool folder', async () => (await readdir(tmp)).length === 1, 20_000);
        child.kill('SIGINT');
        assert.equal(await ended, 'SIGINT', 'it ends as the signal would');
        assert.deepEqual(await readdir(tmp), []);
    });

    it('names the listeners when --listener names none of them, in one line without a stack trace', async () => {
        await assert.rejects(
            explain(spoofed, 'ceo@bank.example', '--listener', 'nope'),
            (err: { code: number; stderr: string }) => {
                assert.equal(err.code, 1);
                assert.equal(err.stderr, 'mailwarden explain: no listener named nope in the configuration (mx)\n');
                return true;
            },
        );
    });

    it('takes the session as encrypted where serve would (submission, a login, implicit TLS), else as --tls or --no-tls say', async () => {
        const cert = await createTestCertificate();
        try {
            const users = join(dir, 'users.yaml');
            await writeFile(
                users,
                `users:\n  - login: alice@example.test\n    password: '${await hash('alice secret')}'\n    sendAs: [alice@example.test]\n`,
            );
            const rules = join(dir, 'tls-rules');
            await mkdir(rules);
            await writeFile(
                join(rules, '10-tls.yaml'),
                'rules:\n  - { id: cleartext, stage: mail, when: { listener.mode: mx, tls: false }, action: tag, score: 1 }\n',
            );
            const file = join(dir, 'tls.yaml');
            await writeFile(
                file,
                [
                    'hostname: mx.example.test',
                    'domains: [example.test]',
                    `tls: { cert: "${cert.certPath}", key: "${cert.keyPath}" }`,
                    `auth: { users: "${users}" }`,
                    'listeners:',
                    '  - { name: mx, host: 127.0.0.1, port: 2525, mode: mx }',
                    '  - { name: plain, host: 127.0.0.1, port: 2526, mode: mx, tls: none }',
                    '  - { name: smtps, host: 127.0.0.1, port: 2465, mode: mx, tls: implicit }',
                    '  - { name: submission, host: 127.0.0.1, port: 2587, mode: submission }',
                    `rules: "${rules}"`,
                    `dns: { servers: ["${dns.address}"], timeout: 500ms }`,
                    'http: false',
                    '',
                ].join('\n'),
            );
            const alice = join(dir, 'alice.eml');
            await writeFile(
                alice,
                'From: Alice <alice@example.test>\r\nTo: carol@elsewhere.example\r\nSubject: hi\r\nDate: Sun, 29 Nov 2026 01:00:00 +0000\r\nMessage-ID: <a1@example.test>\r\n\r\nHello.\r\n',
            );
            const mx = ['--mail-from', 'bounce@other.example', '--rcpt', 'bob@example.test', clean];
            const submission = ['--listener', 'submission', '--mail-from', 'alice@example.test'].concat([
                '--rcpt',
                'carol@elsewhere.example',
                alice,
            ]);
            const args = (extra: string[]): string[] =>
                [
                    BIN,
                    'explain',
                    '-c',
                    file,
                    '--client-ip',
                    '198.51.100.7',
                    '--helo',
                    'mail.sender.example',
                    '--json',
                ].concat(extra);
            const session = async (...extra: string[]) => {
                const report = JSON.parse((await run(process.execPath, args(extra))).stdout) as {
                    stages: { facts: Record<string, unknown> }[];
                    decision: { action: string };
                    headers: { name: string; value: string }[];
                };
                const received = report.headers.find((h) => h.name === 'Received')?.value ?? '';
                return {
                    tls: report.stages.map((st) => st.facts['tls']),
                    action: report.decision.action,
                    protocol: / with (E?SMTP\w*) /.exec(received)?.[1],
                };
            };
            const plainText = { tls: [false, false, false, false, false], action: 'tag', protocol: 'ESMTP' };
            const encrypted = { tls: [true, true, true, true, true], action: 'accept', protocol: 'ESMTPS' };
            // port 25: a client that did not use STARTTLS, unless --tls says it did
            assert.deepEqual(await session(...mx), plainText);
            assert.deepEqual(await session('--no-tls', ...mx), plainText);
            assert.deepEqual(await session('--tls', ...mx), encrypted);
            assert.deepEqual(await session('--listener', 'plain', ...mx), plainText);
            assert.deepEqual(await session('--listener', 'smtps', ...mx), encrypted);
            // submission: a client that has not logged in yet has used STARTTLS to log in at all
            assert.equal((await session('--listener', 'submission', ...mx)).tls[0], true);
            // a login is only taken over TLS
            assert.deepEqual(await session('--auth-user', 'alice@example.test', ...submission), {
                ...encrypted,
                protocol: 'ESMTPSA',
            });
            assert.deepEqual(await session('--auth-user', 'alice@example.test', '--tls', ...submission), {
                ...encrypted,
                protocol: 'ESMTPSA',
            });
            // what serve never has: a usage error in one line, exit 2
            for (const [extra, message] of [
                [
                    ['--no-tls', '--auth-user', 'alice@example.test', ...submission],
                    /--no-tls with --auth-user: serve takes a login only over TLS/,
                ],
                [['--no-tls', '--listener', 'smtps', ...mx], /--no-tls: listener smtps uses implicit TLS/],
                [['--tls', '--listener', 'plain', ...mx], /--tls: listener plain offers no TLS \(tls: none\)/],
                [['--tls', '--no-tls', ...mx], /--tls and --no-tls together/],
            ] as const) {
                await assert.rejects(
                    run(process.execPath, args([...extra])),
                    (err: { code: number; stderr: string }) => {
                        assert.equal(err.code, 2, err.stderr);
                        assert.match(err.stderr, new RegExp(`^mailwarden explain: ${message.source}`));
                        assert.doesNotMatch(err.stderr, /^\s+at /m);
                        return true;
                    },
                );
            }
        } finally {
            cert.cleanup();
        }
    });

    it('says how to use it when arguments are missing', async () => {
        await assert.rejects(
            run(process.execPath, [BIN, 'explain', '-c', config]),
            (err: { code: number; stderr: string }) => {
                assert.equal(err.code, 2);
                assert.match(err.stderr, /^usage: mailwarden explain/);
                return true;
            },
        );
    });
});
