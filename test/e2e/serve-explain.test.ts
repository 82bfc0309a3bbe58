/**
 * `mailwarden explain` tells what `serve` does: the same scripted transactions go through a
 * running mailwarden (real sockets, a scripted upstream, the loopback DNS server) and through
 * `explain` with the same configuration and rules, and the step where each stops, the decision,
 * the reply (the session id aside) and the header fields added to a forwarded message (our
 * Received aside) must be the same. The cases cover refusals at every stage (connect, helo, mail,
 * relay, rcpt, the protocol refusals of the data stage, data rules, submission sender binding),
 * tags carried to the end, monitor rules and limits, rate limits, greylisting, a quarantine, a
 * DMARC reject, the rcpt-stage facts (rcpt.domain, greylist.*) that data-stage rules read, and
 * the tls fact of a session in clear text and of one that used STARTTLS (explain --tls).
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { hash } from '@node-rs/argon2';
import { explainMessage } from '../../src/commands/explain.ts';
import { loadConfig } from '../../src/config/load.ts';
import type { Config } from '../../src/config/types.ts';
import { formatField } from '../../src/headers.ts';
import { loadRuleSet, type RuleSet } from '../../src/rules/index.ts';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startDnsServer, type DnsTestServer } from '../helpers/dns-server.ts';
import { startScriptedUpstream, unstuff, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { smtpConnect, type SmtpReply } from '../helpers/smtp-client.ts';
import { createTestCertificate, type TestCertificate } from '../helpers/tls-cert.ts';

const RULES = `limits:
  - { id: rcpt-cap, key: mail.from, rate: 1/1h, per: recipient, when: { mail.from.domain: { domain: [capped.example] } } }
  - { id: rcpt-watch, key: mail.from, rate: 1/1h, per: recipient, mode: monitor, when: { mail.from.domain: { domain: [watched.example] } } }

greylist:
  - { id: grey, when: { rcpt.domain: { domain: [grey.example] } }, delay: 5m, retryWindow: 4h, expire: 36d }

rules:
  - { id: connect-block, stage: connect, when: { listener: blocked }, action: reject }
  - { id: helo-block, stage: helo, when: { helo: bad.example }, action: reject }
  - { id: helo-cleartext, stage: helo, when: { helo: cleartext.example, tls: false }, action: reject }
  - id: helo-tag
    stage: helo
    when: { helo: odd.example }
    action: tag
    score: 2
    headers: { X-Odd-Helo: 'yes' }
  - id: sender-block
    stage: mail
    when: { mail.from.domain: { domain: [blocked.example] } }
    action: reject
    reply: { code: 550, enhanced: 5.7.1, text: 'Sender {mail.from} is refused here' }
  - { id: sender-later, stage: mail, when: { mail.from.domain: { domain: [later.example] } }, action: tempfail }
  - id: sender-tag
    stage: mail
    when: { mail.from.domain: { domain: [tagged.example] } }
    action: tag
    score: 3
    headers: { X-Sender-Tag: '{mail.from.domain}' }
  - { id: rcpt-closed, stage: rcpt, when: { rcpt.domain: { domain: [closed.example] } }, action: reject }
  - id: data-rcpt-domain
    stage: data
    when: { rcpt.domain: { domain: [more.example] } }
    action: tag
    headers: { X-Last-Rcpt-Domain: '{rcpt.domain}' }
  - id: data-greylist-skipped
    stage: data
    when: { greylist.result: skipped, header.from.domain: { domain: [carry.example] } }
    action: tag
    headers: { X-Greylist: '{greylist.result}' }
  - { id: data-watch, stage: data, mode: monitor, when: { header.from.domain: { domain: [watch.example] } }, action: reject }
  - { id: data-quarantine, stage: data, when: { header.from.domain: { domain: [hold.example] } }, action: quarantine }
  - { id: data-spam, stage: data, when: { header.from.domain: { domain: [spam.example] } }, action: reject }
  - { id: data-later, stage: data, when: { header.from.domain: { domain: [slow.example] } }, action: tempfail }
  - id: dmarc-reject
    stage: data
    when: { dmarc.result: fail, dmarc.disposition: reject }
    action: reject
    reply: { code: 550, enhanced: 5.7.1, text: 'Message refused: it failed the DMARC policy of {header.from.domain}' }
`;

const ZONE = {
    'good.example': { TXT: ['v=spf1 ip4:127.0.0.1 -all'] },
    'bank.example': { TXT: ['v=spf1 ip4:192.0.2.10 -all'] },
    '_dmarc.bank.example': { TXT: ['v=DMARC1; p=reject; adkim=s; aspf=s'] },
};

function msg(from: string, extra = ''): string {
    return `${extra}From: ${from}\r\nTo: bob@example.test\r\nSubject: parity\r\nDate: Sun, 29 Nov 2026 01:00:00 +0000\r\nMessage-ID: <parity@test>\r\n\r\nHello.\r\n`;
}

interface Case {
    readonly name: string;
    readonly listener?: string;
    readonly helo?: string;
    readonly from: string;
    readonly to: readonly string[];
    readonly data: string;
    /** Log in as alice on the submission listener. */
    readonly login?: boolean;
    /** Use STARTTLS after EHLO (and EHLO again), as `explain --tls` says. */
    readonly starttls?: boolean;
    /** What the live session must answer, so the comparison is never between two empty results. */
    readonly expect: { readonly step: Step; readonly code: number; readonly action: string };
}

type Step = 'connect' | 'mail' | 'rcpt' | 'data';

const CASES: readonly Case[] = [
    {
        name: 'a clean message with SPF pass is accepted',
        from: 'a@good.example',
        to: ['bob@example.test'],
        data: msg('a@good.example'),
        expect: { step: 'data', code: 250, action: 'accept' },
    },
    {
        name: 'a connect rule refuses the connection with 554',
        listener: 'blocked',
        from: 'a@good.example',
        to: ['bob@example.test'],
        data: msg('a@good.example'),
        expect: { step: 'connect', code: 554, action: 'reject' },
    },
    {
        name: 'a helo rule refuses at the first MAIL',
        helo: 'bad.example',
        from: 'a@good.example',
        to: ['bob@example.test'],
        data: msg('a@good.example'),
        expect: { step: 'mail', code: 550, action: 'reject' },
    },
    {
        name: 'a rule on tls: false refuses a session in clear text',
        helo: 'cleartext.example',
        from: 'a@good.example',
        to: ['bob@example.test'],
        data: msg('a@good.example'),
        expect: { step: 'mail', code: 550, action: 'reject' },
    },
    {
        name: 'the same rule lets a STARTTLS session on mx through',
        helo: 'cleartext.example',
        starttls: true,
        from: 'a@good.example',
        to: ['bob@example.test'],
        data: msg('a@good.example'),
        expect: { step: 'data', code: 250, action: 'accept' },
    },
    {
        name: 'a helo tag carries to the end: accept becomes tag',
        helo: 'odd.example',
        from: 'a@good.example',
        to: ['bob@example.test'],
        data: msg('a@good.example'),
        expect: { step: 'data', code: 250, action: 'tag' },
    },
    {
        name: 'a mail rule refuses with its own reply',
        from: 'x@blocked.example',
        to: ['bob@example.test'],
        data: msg('x@blocked.example'),
        expect: { step: 'mail', code: 550, action: 'reject' },
    },
    {
        // the session reads the sender in its canonical form: the rule on blocked.example applies
        name: 'a quoted sender is its canonical address to the mail rules',
        from: '"x"@blocked.example',
        to: ['bob@example.test'],
        data: msg('x@blocked.example'),
        expect: { step: 'mail', code: 550, action: 'reject' },
    },
    {
        name: 'a sender that does not parse is refused with 553 5.1.7',
        from: 'a@good.example.',
        to: ['bob@example.test'],
        data: msg('a@good.example'),
        expect: { step: 'mail', code: 553, action: 'reject' },
    },
    {
        name: 'a recipient that does not parse is refused with 553 5.1.3',
        from: 'a@good.example',
        to: ['bob@example..test'],
        data: msg('a@good.example'),
        expect: { step: 'rcpt', code: 553, action: 'reject' },
    },
    {
        name: 'a mail rule defers',
        from: 'x@later.example',
        to: ['bob@example.test'],
        data: msg('x@later.example'),
        expect: { step: 'mail', code: 451, action: 'tempfail' },
    },
    {
        name: 'a mail tag carries to the end with its header field and score',
        from: 'x@tagged.example',
        to: ['bob@example.test'],
        data: msg('x@tagged.example'),
        expect: { step: 'data', code: 250, action: 'tag' },
    },
    {
        name: 'relaying is denied for a foreign recipient domain',
        from: 'a@good.example',
        to: ['someone@elsewhere.example'],
        data: msg('a@good.example'),
        expect: { step: 'rcpt', code: 550, action: 'reject' },
    },
    {
        name: 'a rcpt rule refuses a recipient',
        from: 'a@good.example',
        to: ['bob@example.test', 'c@closed.example'],
        data: msg('a@good.example'),
        expect: { step: 'rcpt', code: 550, action: 'reject' },
    },
    {
        name: 'a recipient rate limit refuses the second recipient',
        from: 'x@capped.example',
        to: ['bob@example.test', 'carol@example.test'],
        data: msg('x@capped.example'),
        expect: { step: 'rcpt', code: 450, action: 'tempfail' },
    },
    {
        name: 'a monitor limit counts and refuses nothing',
        from: 'x@watched.example',
        to: ['bob@example.test', 'carol@example.test'],
        data: msg('x@watched.example'),
        expect: { step: 'data', code: 250, action: 'accept' },
    },
    {
        name: 'greylisting defers a first try',
        from: 'x@good.example',
        to: ['g@grey.example'],
        data: msg('x@good.example'),
        expect: { step: 'rcpt', code: 450, action: 'tempfail' },
    },
    {
        name: 'a data rule refuses the message',
        from: 'a@good.example',
        to: ['bob@example.test'],
        data: msg('x@spam.example'),
        expect: { step: 'data', code: 550, action: 'reject' },
    },
    {
        name: 'a data rule defers the message',
        from: 'a@good.example',
        to: ['bob@example.test'],
        data: msg('x@slow.example'),
        expect: { step: 'data', code: 451, action: 'tempfail' },
    },
    {
        name: 'a monitor rule only watches',
        from: 'a@good.example',
        to: ['bob@example.test'],
        data: msg('x@watch.example'),
        expect: { step: 'data', code: 250, action: 'accept' },
    },
    {
        name: 'a quarantine rule forwards with the quarantine field',
        from: 'a@good.example',
        to: ['bob@example.test'],
        data: msg('x@hold.example'),
        expect: { step: 'data', code: 250, action: 'quarantine' },
    },
    {
        name: 'DMARC p=reject refuses a spoofed author',
        from: 'ceo@bank.example',
        to: ['bob@example.test'],
        data: msg('CEO <ceo@bank.example>'),
        expect: { step: 'data', code: 550, action: 'reject' },
    },
    {
        name: 'data rules read rcpt.domain of the last accepted recipient',
        from: 'a@good.example',
        to: ['bob@example.test', 'm@more.example'],
        data: msg('a@good.example'),
        expect: { step: 'data', code: 250, action: 'tag' },
    },
    {
        name: 'data rules read the greylisting facts of the rcpt stage',
        from: 'a@good.example',
        to: ['bob@example.test'],
        data: msg('x@carry.example'),
        expect: { step: 'data', code: 250, action: 'tag' },
    },
    {
        name: 'a message over maxMessageSize is refused',
        listener: 'small',
        from: 'a@good.example',
        to: ['bob@example.test'],
        data: msg('a@good.example') + 'x'.repeat(3000) + '\r\n',
        expect: { step: 'data', code: 552, action: 'reject' },
    },
    {
        name: 'a bare LF is refused on mx',
        from: 'a@good.example',
        to: ['bob@example.test'],
        data: msg('a@good.example') + 'one\ntwo\r\n',
        expect: { step: 'data', code: 550, action: 'reject' },
    },
    {
        name: 'a header line that is not a field is refused',
        from: 'a@good.example',
        to: ['bob@example.test'],
        data: msg('a@good.example', 'no colon here\r\n'),
        expect: { step: 'data', code: 550, action: 'reject' },
    },
    {
        name: 'a header section over the limit is refused',
        from: 'a@good.example',
        to: ['bob@example.test'],
        data: msg('a@good.example', `X-Big: ${'y'.repeat(1024 * 1024 + 10)}\r\n`),
        expect: { step: 'data', code: 552, action: 'reject' },
    },
    {
        name: 'submission: a logged-in sender is accepted',
        listener: 'submissions',
        login: true,
        from: 'alice@example.test',
        to: ['bob@elsewhere.example'],
        data: msg('Alice <alice@example.test>'),
        expect: { step: 'data', code: 250, action: 'accept' },
    },
    {
        name: 'submission: an envelope sender the login does not own is refused',
        listener: 'submissions',
        login: true,
        from: 'ceo@victim.test',
        to: ['bob@elsewhere.example'],
        data: msg('ceo@victim.test'),
        expect: { step: 'mail', code: 553, action: 'reject' },
    },
    {
        name: 'submission: an author the login does not own is refused',
        listener: 'submissions',
        login: true,
        from: 'alice@example.test',
        to: ['bob@elsewhere.example'],
        data: msg('ceo@victim.test'),
        expect: { step: 'data', code: 553, action: 'reject' },
    },
];

interface Outcome {
    readonly step: Step;
    readonly reply: string;
    readonly action: string;
    /** Our header fields of a forwarded message, as written, without our Received. */
    readonly headers: readonly string[];
}

/** The session id written as ID, and a header field unfolded (the id's length changes the folding). */
const anonymous = (text: string, id: string): string =>
    text
        .split(id)
        .join('ID')
        .replace(/\r\n[ \t]+/g, ' ');

/** The reply without the session id and the upstream's queue id (explain has neither). */
const shape = (code: number, text: string, id: string): string =>
    `${code} ${anonymous(text, id).replace(/ as \S+ \(id ID\)$/, ' (id ID)')}`;

describe('serve and explain take the same decisions', () => {
    let dir: string;
    let dns: DnsTestServer;
    let up: ScriptedUpstream;
    let cert: TestCertificate;
    let mw: TestApp;
    let config: Config;
    let rules: RuleSet;
    before(async () => {
        dir = await mkdtemp(join(tmpdir(), 'mw-parity-'));
        await writeFile(join(dir, '10-parity.yaml'), RULES);
        dns = await startDnsServer(ZONE);
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'] });
        cert = await createTestCertificate();
        const users = join(cert.dir, 'users.yaml');
        await writeFile(
            users,
            `users:\n  - login: alice@example.test\n    password: '${await hash('alice secret')}'\n    sendAs: [alice@example.test]\n`,
        );
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test, grey.example, more.example, closed.example]',
                `tls: { cert: "${cert.certPath}", key: "${cert.keyPath}" }`,
                `auth: { users: "${users}" }`,
                'listeners:',
                '  - { name: mx, host: 127.0.0.1, port: 0, mode: mx }',
                '  - { name: blocked, host: 127.0.0.1, port: 0, mode: mx }',
                '  - { name: small, host: 127.0.0.1, port: 0, mode: mx, maxMessageSize: 2KB }',
                '  - { name: submissions, host: 127.0.0.1, port: 0, mode: submission, tls: implicit }',
                `upstream: { url: "smtp://127.0.0.1:${up.port}", xclient: true }`,
                `rules: "${dir}"`,
                `dns: { servers: ["${dns.address}"], timeout: 1s }`,
                'http: false',
            ].join('\n'),
        );
        config = loadConfig(join(mw.dir, 'mailwarden.yaml'), {});
        rules = loadRuleSet(config.rules, { softReject: config.softReject });
    });
    after(async () => {
        await mw.stop();
        await up.close();
        await dns.close();
        cert.cleanup();
        await rm(dir, { recursive: true, force: true });
    });

    /** The action the live session logged for this transaction (refusals before the rules: by code). */
    const loggedAction = (from: number, reply: SmtpReply): string => {
        const line = mw.logs.slice(from).find((l) => l.msg === 'decision' || l.msg === 'refused');
        if (line && typeof line.action === 'string') return line.action;
        return reply.code >= 500 ? 'reject' : 'tempfail';
    };

    const live = async (c: Case): Promise<Outcome> => {
        const logsFrom = mw.logs.length;
        const sent = up.transactions.filter((t) => t.completed).length;
        const client = await smtpConnect(
            mw.port(c.listener ?? 'mx'),
            c.listener === 'submissions' ? { tls: 'implicit', ca: cert.cert, servername: 'localhost' } : {},
        );
        // the connection's log lines name its session id
        const id = (): string => {
            const line = mw.logs.slice(logsFrom).find((l) => typeof l.session === 'string');
            assert.ok(line, 'the session logged its id');
            return line.session as string;
        };
        const stop = (step: Step, reply: SmtpReply): Outcome => ({
            step,
            reply: shape(reply.code, reply.text, id()),
            action: loggedAction(logsFrom, reply),
            headers: [],
        });
        try {
            const greeting = await client.greeting();
            if (greeting.code !== 220) return stop('connect', greeting);
            assert.equal((await client.cmd(`EHLO ${c.helo ?? 'client.example'}`)).code, 250);
            if (c.starttls) {
                assert.equal((await client.starttls({ ca: cert.cert, servername: 'localhost' })).code, 220);
                assert.equal((await client.cmd(`EHLO ${c.helo ?? 'client.example'}`)).code, 250);
            }
            if (c.login) {
                const auth = await client.cmd(
                    `AUTH PLAIN ${Buffer.from('\0alice@example.test\0alice secret').toString('base64')}`,
                );
                assert.equal(auth.code, 235, auth.raw);
            }
            const mail = await client.cmd(`MAIL FROM:<${c.from}>`);
            if (mail.code !== 250) return stop('mail', mail);
            for (const to of c.to) {
                const rcpt = await client.cmd(`RCPT TO:<${to}>`);
                if (rcpt.code !== 250) return stop('rcpt', rcpt);
            }
            assert.equal((await client.cmd('DATA')).code, 354);
            client.write(Buffer.from(`${c.data.replace(/\r\n\./g, '\r\n..')}.\r\n`, 'utf8'));
            const reply = await client.reply();
            if (reply.code !== 250) return stop('data', reply);
            const done = up.transactions.filter((t) => t.completed);
            assert.equal(done.length, sent + 1, 'the accepted message reached the upstream');
            const head = unstuff(done.at(-1)!.data!).toString('utf8').split('\r\n\r\n')[0]!;
            const fields = head.split(/\r\n(?![ \t])/).map((f) => `${f}\r\n`);
            return {
                step: 'data',
                reply: shape(reply.code, reply.text, id()),
                action: loggedAction(logsFrom, reply),
                headers: fields.map((f) => anonymous(f, id())),
            };
        } finally {
            await client.cmd('QUIT').catch(() => undefined);
            client.close();
        }
    };

    const explained = async (c: Case): Promise<Outcome> => {
        const report = await explainMessage(config, rules, {
            clientIp: '127.0.0.1',
            helo: c.helo ?? 'client.example',
            mailFrom: c.from,
            rcpts: c.to,
            listener: c.listener ?? 'mx',
            authUser: c.login ? 'alice@example.test' : null,
            ...(c.starttls ? { tls: true } : {}),
            message: Buffer.from(c.data, 'utf8'),
        });
        const step: Step = report.stoppedAt === 'helo' ? 'mail' : report.stoppedAt;
        return {
            step,
            reply: shape(report.reply.code, `${report.reply.enhanced} ${report.reply.text}`, 'explain'),
            action: report.decision.action,
            headers: report.headers.map((h) => anonymous(formatField(h), 'explain')),
        };
    };

    it('has at least 20 transactions', () => assert.ok(CASES.length >= 20));

    for (const c of CASES) {
        it(c.name, async () => {
            const l = await live(c);
            assert.deepEqual(
                { step: l.step, code: Number(l.reply.slice(0, 3)), action: l.action },
                c.expect,
                `live: ${l.reply}`,
            );
            const e = await explained(c);
            assert.equal(e.step, l.step);
            assert.equal(e.reply, l.reply);
            assert.equal(e.action, l.action);
            if (l.step === 'data' && c.expect.code === 250) {
                // ours come first; the Received fields differ (time, TLS, protocol) and are left aside
                assert.ok(e.headers.length > 1);
                assert.match(l.headers[0]!, /^Received: /);
                assert.match(e.headers[0]!, /^Received: /);
                assert.deepEqual(l.headers.slice(1, e.headers.length), e.headers.slice(1));
            }
        });
    }
});
