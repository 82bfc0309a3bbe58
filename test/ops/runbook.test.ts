/**
 * The runbook (docs/runbook.md) and the deployment guide stay usable by an operator on a stock
 * Debian host: the runbook names every tool its commands use and the package it comes from; no
 * command reads /var/log/mail.log (a stock Debian 12 has no syslog daemon writing it); every
 * `mailwarden` command names the configuration with `-c` (or the users file with `--file`),
 * because only the service has MAILWARDEN_CONFIG; the runbook's `users passwd` finds the users
 * file through the deployed configuration from any folder; and step 6 of the guide tests with a
 * sender of a foreign domain, which own-domain protection does not refuse.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { parse } from 'yaml';
import { runCheck } from '../../src/commands/check.ts';
import { loadRules } from '../../src/rules/index.ts';
import { hashPassword } from '../../src/submission/hashes.ts';
import { allShellBlocks, GUIDE_FILE, readRepo, runShell, section, shellBlocks, substitute } from '../helpers/guide.ts';

const repo = fileURLToPath(new URL('../../', import.meta.url));
const runbook = readRepo('docs/runbook.md');
const guide = readRepo(GUIDE_FILE);

/** Command lines of a Markdown text: every line of its ```sh blocks and every `code span` that starts with a word and a space. */
function commandLines(markdown: string): string[] {
    const spans = [...markdown.replace(/^```[\s\S]*?^```$/gm, '').matchAll(/`([a-z][\w.-]* [^`]+)`/g)].map(
        (m) => m[1]!,
    );
    return [...allShellBlocks(markdown).flatMap((b) => b.split('\n')), ...spans].filter((l) => l.trim() !== '');
}

/** The program of each pipeline stage and `&&` / `;` part of a command line. */
function programs(line: string): string[] {
    return line
        .split(/\|\||&&|\||;/)
        .map((part) => part.trim().split(/\s+/)[0] ?? '')
        .filter((word) => /^[a-z][\w.-]*$/.test(word));
}

function onPath(word: string): boolean {
    try {
        execFileSync('sh', ['-c', `command -v ${word}`], { stdio: 'ignore' });
        return true;
    } catch {
        return false;
    }
}

describe('the runbook', () => {
    const requirements = section(runbook, 'Requirements');
    const listed = new Set(
        requirements
            .split('\n')
            .filter((l) => l.startsWith('| `'))
            .flatMap((l) => [...l.split('|')[1]!.matchAll(/`([^`]+)`/g)].map((m) => m[1]!)),
    );

    it('names every tool its commands use, with its package', () => {
        // Tools an operator may lack even where they are not installed on this machine.
        const known = new Set(['dig', 'iostat', 'redis-cli', 'swaks', 'jq', 'curl', 'mailwarden']);
        // Shell built-ins and what every Debian system has (essential packages).
        const essential = new Set(['apt', 'cat', 'cd', 'echo', 'find', 'grep', 'kill', 'ls', 'sed', 'test', 'true']);
        const used = new Set(commandLines(runbook).flatMap(programs));
        for (const word of used) {
            if (known.has(word) || (onPath(word) && !essential.has(word))) {
                assert.ok(listed.has(word), `the Requirements section lists ${word}`);
            }
        }
        for (const word of ['dig', 'iostat', 'jq', 'journalctl']) assert.ok(used.has(word), `the runbook uses ${word}`);
        assert.match(requirements, /`dig` +\| `bind9-dnsutils`/);
        assert.match(requirements, /`iostat` +\| `sysstat`/);
    });

    it('reads logs from the journal, never from /var/log/mail.log', () => {
        for (const line of [...commandLines(runbook), ...commandLines(guide)]) {
            assert.doesNotMatch(line, /^(grep|tail|less|cat) .*\/var\/log\/mail\.log/, line);
        }
        assert.match(runbook, /journalctl -t postfix\/mailwarden\/smtpd/);
    });

    it('names the configuration in every mailwarden command of the runbook and the guide', () => {
        const lines = [...commandLines(runbook), ...commandLines(guide)].filter((l) =>
            /^(runuser -u mailwarden -- )?mailwarden (check|users|explain|dkim|auth)\b/.test(l),
        );
        assert.ok(lines.length >= 5);
        for (const line of lines) assert.match(line, / -c \/etc\/mailwarden\/mailwarden\.yaml\b| --file /, line);
    });
});

describe('jq over the journal', () => {
    /** What `journalctl -u mailwarden -o cat` prints: JSON lines among systemd's and the check's plain ones. */
    const journal = [
        'Started mailwarden.service - mailwarden anti-abuse SMTP proxy in front of Postfix.',
        'ok: /etc/mailwarden/mailwarden.yaml',
        JSON.stringify({ level: 30, msg: 'decision', action: 'reject', rules: ['x'], reason: 'r', from: 'a@b' }),
        JSON.stringify({
            level: 30,
            msg: 'decision',
            session: '7m3kq0v2hd9s1c4e',
            stage: 'data',
            action: 'accept',
            from: 'a@sender.example',
            messageId: '<20261207.1234@sender.example>',
            queueId: '4Xb2Lk0v1Jz3',
            upstream: '250 2.0.0 Ok: queued as 4Xb2Lk0v1Jz3',
        }),
        JSON.stringify({ level: 50, msg: 'upstream failed' }),
        JSON.stringify({
            level: 50,
            msg: 'worker ended unexpectedly; its sessions are lost, the other workers go on; starting another',
            worker: 2,
            pid: 4242,
            code: null,
            signal: 'SIGKILL',
            reason: 'signal',
            livedMs: 3600000,
            workers: 4,
        }),
        JSON.stringify({
            level: 30,
            msg: 'upstream refused recipient',
            step: 'rcpt',
            stage: 'rcpt',
            // a bounce (the null sender)
            from: '',
            rcpt: 'bob@example.com',
            action: 'tempfail',
            rules: [],
            reason: 'upstream refused the recipient',
            reply: 450,
            enhanced: '4.7.1',
            upstream: '450 4.7.1 <bob@example.com>: Recipient address rejected: try again later',
        }),
        JSON.stringify({ level: 30, msg: 'auth', result: 'invalid', client: '192.0.2.1', login: 'a' }),
        JSON.stringify({
            level: 50,
            msg: 'spool write failed',
            spoolPath: '/var/lib/mailwarden/spool/mailwarden-812-0a1b2c3d-0011223344556677.eml',
            errno: 'ENOSPC',
            err: 'spool write failed: ENOSPC: no space left on device, write',
        }),
        JSON.stringify({
            level: 50,
            msg: 'spool read failed',
            spoolPath: '/var/lib/mailwarden/spool/mailwarden-812-0a1b2c3d-8899aabbccddeeff.eml',
            errno: 'EIO',
            err: 'spool read failed: EIO: i/o error, read',
        }),
        JSON.stringify({ level: 30, msg: 'reloaded', reload: 'config', changed: ['softReject'] }),
        JSON.stringify({ level: 30, msg: 'envelope refused', refused: 'relay', rcptDomain: 'example.org' }),
        JSON.stringify({ level: 40, msg: 'DNS list disabled', zone: 'zen.example', reason: 'refused' }),
        JSON.stringify({
            level: 30,
            msg: 'refused',
            stage: 'rcpt',
            action: 'tempfail',
            reason: 'rule greylist:grey (tempfail)',
        }),
        JSON.stringify({
            level: 30,
            msg: 'decision',
            action: 'tempfail',
            reason: 'check mailauth failed: timeout',
            checks: { ratelimit: 2, mailauth: { ms: 15000, error: 'timeout' } },
        }),
        JSON.stringify({
            level: 40,
            msg: 'sender authentication thread stopped: a verification held it in synchronous work; a new one starts with the next message',
            session: '5c1n8r2kq7d0m3va',
            sessions: ['5c1n8r2kq7d0m3va', '0hd3k2m9s1qv7c4e'],
            why: 'no answer for 2000 ms',
            verifications: 2,
        }),
        'Stopping mailwarden.service - mailwarden anti-abuse SMTP proxy in front of Postfix...',
        '',
    ].join('\n');
    const jqCommands = [...commandLines(runbook), ...commandLines(guide)]
        .filter((l) => /journalctl\b.*\|\s*jq\b/.test(l))
        .map((l) => /\bjq -\w+ '[^']*'/.exec(l)?.[0] ?? l);

    it('reads every line as text and skips what is not JSON (-R, fromjson?)', () => {
        assert.ok(jqCommands.length >= 7, jqCommands.join('\n'));
        for (const jq of jqCommands) assert.match(jq, /^jq -[a-z]*R[a-z]* 'fromjson\?( \||')/, jq);
    });

    it('samples refusals before DATA too (a `refused` line), as a block list makes them', async () => {
        const refusedOnly = JSON.stringify({
            level: 30,
            msg: 'refused',
            stage: 'helo',
            action: 'reject',
            rules: ['dnsbl-reject'],
            client: '192.0.2.1',
            helo: 'mail.example',
            from: 'a@b',
        });
        const samplers = jqCommands.filter((jq) => jq.includes('.action=="reject"'));
        assert.ok(samplers.length >= 1, jqCommands.join('\n'));
        for (const jq of samplers) {
            const r = await runShell(jq, { env: process.env, cwd: tmpdir(), input: `${refusedOnly}\n` });
            assert.equal(r.code, 0, `${jq}: ${r.err}`);
            assert.match(r.out, /dnsbl-reject/, `${jq} finds the refusal`);
            assert.match(r.out, /mail\.example/, `${jq} shows the HELO name to replay it with`);
        }
    });

    it('runs each of them over a journal with systemd lines in it', async () => {
        for (const jq of jqCommands) {
            const r = await runShell(jq, { env: process.env, cwd: tmpdir(), input: journal });
            assert.equal(r.code, 0, `${jq}: ${r.err}`);
            assert.notEqual(r.out, '', `${jq} finds its lines`);
        }
    });
});

describe('the runbook on failures the set-up itself causes', () => {
    it('names the log line of a loopback smtpd without a SASL backend, which the master.cf entry needs', () => {
        assert.match(readRepo('docs/postfix/master.cf'), /^ +-o smtpd_sasl_auth_enable=yes$/m);
        const line = 'fatal: no SASL authentication mechanisms';
        assert.ok(section(runbook, 'MailwardenUpstreamFailing').includes(line));
        assert.ok(section(guide, 'Step 3: Postfix master.cf').includes(line));
    });

    it("points Dovecot logins at a socket of mailwarden's own, not Postfix's private folder", () => {
        for (const file of ['docs/submission.md', 'docs/configuration.md']) {
            const text = readRepo(file);
            assert.match(text, /dovecot: unix:\/run\/dovecot\/auth-mailwarden/, file);
            assert.doesNotMatch(text, /dovecot: unix:\/var\/spool\/postfix\/private\/auth/, file);
        }
        assert.match(
            readRepo('docs/submission.md'),
            /unix_listener \/run\/dovecot\/auth-mailwarden \{.*\n +mode = 0600\n +user = mailwarden/,
        );
    });
});

describe('the runbook replays and unlocks with complete commands', () => {
    it('replays a refused message with the envelope explain needs and a message file, and says where the message comes from', () => {
        const line = commandLines(runbook).find((l) => l.startsWith('mailwarden explain '));
        assert.ok(line, 'the runbook has an explain command');
        for (const option of ['--client-ip \\S+', '--helo \\S+', '--mail-from \\S+@\\S+', '--rcpt \\S+@\\S+']) {
            assert.match(line, new RegExp(` ${option}( |$)`), option);
        }
        assert.match(line, / \S+\.eml$/, 'the message file comes last');
        const spike = section(runbook, 'MailwardenRejectRatioSpike');
        assert.match(spike, /ask the sender for theirs/);
        assert.match(spike, /postcat -bhq QUEUEID/);
    });

    it('says that without Redis a restart clears the login lockout', () => {
        const text = section(runbook, 'MailwardenAuthFailureSpike');
        assert.match(text, /mailwarden auth unlock -c /);
        assert.match(text, /without a `redis:` section[\s\S]*`systemctl restart mailwarden` clears the counts/);
    });
});

describe('the runbook on refusals softReject does not soften', () => {
    it('names every refusal softReject leaves permanent (relay, size, line ends, header section, sender binding), and what to do instead', () => {
        const reload = section(runbook, 'Reloading (SIGHUP)');
        assert.match(reload, /softReject/);
        assert.match(reload, /covers only what rules decide/);
        for (const reply of [
            '550 5.7.1 Relaying denied',
            '552 5.3.4',
            '550 5.5.2',
            'bareNewline: normalize',
            '550 5.6.0',
            '553 5.7.1',
        ]) {
            assert.ok(reload.includes(reply), reply);
        }
        const relay = section(runbook, 'MailwardenRelayRefusalsRising');
        assert.match(relay, /postconf mydestination virtual_mailbox_domains/);
        assert.match(relay, /postmap -s/);
        assert.match(relay, /systemctl restart mailwarden/);
    });
});

describe("the runbook's `users passwd`, typed in root's shell", () => {
    let dir: string;
    before(async () => {
        dir = mkdtempSync(join(tmpdir(), 'mailwarden-runbook-'));
        const etc = join(dir, 'etc/mailwarden');
        mkdirSync(join(dir, 'var/lib/mailwarden/spool'), { recursive: true });
        mkdirSync(etc, { recursive: true });
        cpSync(join(repo, 'rules'), join(etc, 'rules'), { recursive: true });
        cpSync(join(repo, 'test/config/fixtures/tls/cert.pem'), join(etc, 'tls.crt'));
        cpSync(join(repo, 'test/config/fixtures/tls/key.pem'), join(etc, 'tls.key'));
        writeFileSync(
            join(etc, 'users.yaml'),
            `users:\n  - login: alice@example.com\n    password: "${await hashPassword('old password')}"\n`,
        );
        writeFileSync(
            join(etc, 'mailwarden.yaml'),
            substitute(readRepo('deploy/mailwarden.yaml'), {
                '/etc/mailwarden': etc,
                '/var/lib/mailwarden': join(dir, 'var/lib/mailwarden'),
            }).replace(/^redis: .*\n/m, ''),
        );
    });
    after(() => rmSync(dir, { recursive: true, force: true }));

    it('finds the users file through the deployed configuration, from any folder', async () => {
        const line = commandLines(runbook).find((l) => l.startsWith('mailwarden users passwd '));
        assert.ok(line, 'the runbook has a users passwd command');
        const command = substitute(
            line.replace(/^mailwarden /, `"${process.execPath}" "${join(repo, 'bin/mailwarden.js')}" `),
            {
                LOGIN: 'alice@example.com',
                '/etc/mailwarden/': `${join(dir, 'etc/mailwarden')}/`,
            },
        );
        const env: NodeJS.ProcessEnv = { ...process.env };
        delete env.MAILWARDEN_CONFIG;
        const before = readFileSync(join(dir, 'etc/mailwarden/users.yaml'), 'utf8');
        const r = await runShell(command, { env, cwd: tmpdir(), input: 'a new password\n' });
        assert.equal(r.code, 0, `${r.out}${r.err}`);
        const users = parse(readFileSync(join(dir, 'etc/mailwarden/users.yaml'), 'utf8')) as {
            users: { login: string; password: string }[];
        };
        assert.notEqual(readFileSync(join(dir, 'etc/mailwarden/users.yaml'), 'utf8'), before);
        assert.equal(users.users[0]?.login, 'alice@example.com');
        assert.match(users.users[0].password, /^\$argon2id\$/);
    });
});

describe("the guide's step 6", () => {
    it('tests port 25 with a sender of a foreign domain, and says why', () => {
        const config = parse(readRepo('deploy/mailwarden.yaml')) as { domains: string[]; hostname: string };
        const ours = (domain: string): boolean =>
            [...config.domains, config.hostname].some((d) => domain === d || domain.endsWith(`.${d}`));
        const [checks] = shellBlocks(guide, 'Step 6: check that it works');
        const toPort25 = checks!.split('\n').filter((l) => l.startsWith('swaks ') && !/--port|--auth/.test(l));
        assert.ok(toPort25.length >= 2);
        for (const line of toPort25) {
            const from = /--from (\S+)/.exec(line)?.[1] ?? '';
            assert.ok(from.includes('@'), `${line}: names its sender (swaks's default is root@ this host)`);
            assert.ok(!ours(from.split('@')[1]!), `${line}: the sender is not of our domains`);
        }
        assert.match(section(guide, 'Step 6: check that it works'), /swaks's default sender/);
    });
});

describe("the runbook's rule file against backscatter", () => {
    let dir: string;
    before(() => {
        dir = mkdtempSync(join(tmpdir(), 'mailwarden-backscatter-'));
        const etc = join(dir, 'etc/mailwarden');
        mkdirSync(join(dir, 'var/lib/mailwarden/spool'), { recursive: true });
        mkdirSync(etc, { recursive: true });
        cpSync(join(repo, 'rules'), join(etc, 'rules'), { recursive: true });
        cpSync(join(repo, 'test/config/fixtures/tls/cert.pem'), join(etc, 'tls.crt'));
        cpSync(join(repo, 'test/config/fixtures/tls/key.pem'), join(etc, 'tls.key'));
        writeFileSync(join(etc, 'users.yaml'), 'users: []\n');
        writeFileSync(
            join(etc, 'mailwarden.yaml'),
            substitute(readRepo('deploy/mailwarden.yaml'), {
                '/etc/mailwarden': etc,
                '/var/lib/mailwarden': join(dir, 'var/lib/mailwarden'),
            }),
        );
        const text = section(runbook, 'Backscatter or a spam wave');
        const yaml = [...text.matchAll(/^```yaml\n([\s\S]*?)^```$/gm)].map((m) => m[1]!);
        assert.equal(yaml.length, 1, 'one rule file');
        const file = /saved as\s+`\/etc\/mailwarden\/rules\/([\w.-]+\.yaml)`/.exec(text)?.[1];
        assert.ok(file, 'the section names the file to save it as');
        writeFileSync(join(etc, 'rules', file), yaml[0]!);
        assert.match(text, /`\/etc\/mailwarden\/rules\/lists\/no-bounces\.txt`/);
        writeFileSync(join(etc, 'rules/lists/no-bounces.txt'), 'noreply@example.com\n');
    });
    after(() => rmSync(dir, { recursive: true, force: true }));

    it('passes mailwarden check beside the shipped rules and the deployed configuration', async () => {
        const printed: string[] = [];
        const code = await runCheck({
            configPath: join(dir, 'etc/mailwarden/mailwarden.yaml'),
            env: {},
            out: (l) => printed.push(l),
            err: (l) => printed.push(l),
        });
        assert.equal(code, 0, printed.join('\n'));
        // the example configuration's own warnings (hostname, domains) aside, nothing about the rules
        assert.doesNotMatch(printed.join('\n'), /rules\/.*warning/);
    });

    it('refuses a bounce to an address of the list, defers bounces past the limit, and lets the rest through', () => {
        const loaded = loadRules(join(dir, 'etc/mailwarden/rules'), { softReject: false });
        assert.deepEqual(loaded.issues, []);
        const set = loaded.ruleSet!;
        const limit = set.limits.find((l) => l.id === 'bounces-per-recipient');
        assert.equal(`${limit?.stage} ${limit?.keyText} ${limit?.rateText}`, 'rcpt rcpt.address 20/1h, 100/1d');
        const rcpt = (from: string, to: string, more: Record<string, unknown> = {}) =>
            set.decide('rcpt', {
                listener: 'mx',
                'listener.mode': 'mx',
                'client.ip': '203.0.113.7',
                'mail.from': from,
                'mail.from.domain': from === '' ? null : from.split('@')[1]!,
                'rcpt.address': to,
                'rcpt.domain': to.split('@')[1]!,
                'rcpt.to': [to],
                'rcpt.count': 1,
                ...more,
            });
        const bounce = rcpt('', 'noreply@example.com');
        assert.equal(bounce.action, 'reject');
        assert.deepEqual(bounce.rules, ['bounce-to-no-bounce-address']);
        assert.match(bounce.reply?.text ?? '', /^Bounce refused: noreply@example\.com sends no mail/);
        assert.equal(rcpt('', 'alice@example.com').action, 'accept');
        assert.equal(rcpt('news@sender.example', 'noreply@example.com').action, 'accept');
        const over = rcpt('', 'alice@example.com', { 'ratelimit.exceeded': ['bounces-per-recipient'] });
        assert.equal(over.action, 'tempfail');
        assert.deepEqual(over.rules, ['bounces-per-recipient']);
    });
});

describe('the dashboard panels the runbook names', () => {
    const panels = (
        JSON.parse(readRepo('grafana/dashboard.json')) as {
            panels: { title: string; targets?: { expr: string }[] }[];
        }
    ).panels;
    /** The runbook's paragraphs and list items, each as one line. */
    const blocks = runbook
        .split(/\n(?=\s*(?:\d+\.|-) )|\n\n/)
        .map((b) => b.replace(/\s+/g, ' '))
        .filter((b) => /"[^"]+" (?:and "[^"]+" )?panels?\b/.test(b));

    it('show the result of rate-limit decisions (error_allowed, error_tempfail) the text next to them speaks of', () => {
        assert.ok(blocks.some((b) => /error_\w+/.test(b)));
        for (const block of blocks) {
            const named = [...block.matchAll(/"([^"]+)"/g)]
                .map((m) => m[1]!)
                .filter((t) => panels.some((p) => p.title === t));
            const results = [...block.matchAll(/result="?(error_\w+)/g), ...block.matchAll(/`(error_\w+)`/g)].map(
                (m) => m[1]!,
            );
            for (const result of results) {
                const shows = named.every((t) => {
                    const exprs = panels.find((p) => p.title === t)!.targets!.map((x) => x.expr);
                    return exprs.some((e) => {
                        const filter = /result=~?"([^"]+)"/.exec(e)?.[1];
                        return filter === undefined || new RegExp(`^(?:${filter})$`).test(result);
                    });
                });
                assert.ok(
                    named.length > 0 && shows,
                    `the panels named beside ${result} show it: ${block.slice(0, 120)}`,
                );
            }
        }
    });
});
