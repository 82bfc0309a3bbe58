/**
 * Rate limits, concurrency limits and greylisting through the real proxy (in-memory store),
 * declared in a rule file: a limit of N lets exactly N through and the next gets `450 4.7.1`
 * with when to retry; recipient, connection (`421 4.7.0`), concurrency and byte limits; the
 * window refills as the injected clock moves; monitor mode counts and never refuses;
 * greylisting's first try, early retry, accepted retry and auto-allow; the metrics; and
 * `explain` showing the implicit limit rules.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startDnsServer } from '../helpers/dns-server.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { sendMail, smtpConnect, type SmtpClient } from '../helpers/smtp-client.ts';

const run = promisify(execFile);
const BIN = new URL('../../bin/mailwarden.js', import.meta.url).pathname;
const MSG = 'From: a@sender.example\r\nTo: b@example.test\r\nSubject: t\r\n\r\nbody\r\n';
const HOUR = 3_600_000;

const RULES = `limits:
  - { id: sender-rate, key: mail.from, rate: 3/1h, when: { mail.from.domain: { domain: [rate.example] } } }
  - id: rcpt-rate
    key: mail.from
    rate: [5/1h]
    per: recipient
    when: { mail.from.domain: { domain: [rcpt.example] } }
  - { id: conn-rate, key: client.ip/24, rate: 4/1h, per: connection, when: { listener: conn } }
  - { id: conn-max, key: client.ip, concurrency: 2, when: { listener: held } }
  - { id: byte-rate, key: mail.from.domain, rate: 10KB/1h, per: byte, when: { mail.from.domain: { domain: [bytes.example] } } }
  - { id: watch-rate, key: mail.from, rate: 1/1h, mode: monitor, when: { mail.from.domain: { domain: [watch.example] } } }

greylist:
  - id: grey
    when: { rcpt.domain: { domain: [grey.example] } }
    delay: 5m
    retryWindow: 4h
    expire: 36d
    autoAllowAfter: 2

rules:
  - id: allow-everything
    stage: mail
    description: an allow rule comes after the limits of its stage and cannot exempt from them
    action: accept
`;

async function metric(mw: TestApp, name: 'ratelimitDecisions' | 'ruleHits', labels: Record<string, string>) {
    const values = (await mw.app.metrics[name].get()).values;
    const hit = values.find((v) =>
        Object.entries(labels).every(([k, x]) => (v.labels as Record<string, string | number | undefined>)[k] === x),
    );
    return hit?.value ?? 0;
}

function retryOf(text: string): number {
    const m = /try again in (\d+) seconds/.exec(text);
    assert.ok(m, `no retry time in: ${text}`);
    return Number(m[1]);
}

describe('rate limits end to end (memory store)', () => {
    let dir: string;
    let up: ScriptedUpstream;
    let mw: TestApp;
    let clock = Date.UTC(2026, 0, 5, 12, 0, 0);
    before(async () => {
        dir = await mkdtemp(join(tmpdir(), 'mw-limits-'));
        await writeFile(join(dir, '10-limits.yaml'), RULES);
        up = await startScriptedUpstream({
            ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'],
            onCommand: (line) => (/^RCPT TO:<nobody/i.test(line) ? '550 5.1.1 no such user' : undefined),
            onData: (tx) => (tx.mail.startsWith('refused@') ? '554 5.7.1 refused' : undefined),
        });
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test, grey.example]',
                'listeners:',
                '  - { name: mx, host: 127.0.0.1, port: 0, mode: mx }',
                '  - { name: conn, host: 127.0.0.1, port: 0, mode: mx }',
                '  - { name: held, host: 127.0.0.1, port: 0, mode: mx }',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                `rules: "${dir}"`,
                'http: false',
            ].join('\n'),
            { now: () => clock },
        );
    });
    after(async () => {
        await mw.stop();
        await up.close();
        await rm(dir, { recursive: true, force: true });
    });

    it('lets exactly N messages through; message N+1 gets 450 4.7.1 with when to retry', async () => {
        for (let i = 1; i <= 3; i++) {
            const r = await sendMail(mw.port(), { from: 'alice@rate.example', to: ['b@example.test'], data: MSG });
            assert.equal(r.mail.code, 250, `message ${i}`);
            assert.equal(r.message?.code, 250, `message ${i}`);
        }
        const refused = await sendMail(mw.port(), { from: 'alice@rate.example', to: ['b@example.test'], data: MSG });
        assert.equal(refused.mail.code, 450);
        assert.match(
            refused.mail.text,
            /^4\.7\.1 Rate limit reached: too many messages from this sender address\. Please try again in 1200 seconds \(limit sender-rate\)\. \(id \w+\)$/,
        );
        // Another sender has its own count; the address is compared case-insensitively.
        const other = await sendMail(mw.port(), { from: 'bob@rate.example', to: ['b@example.test'], data: MSG });
        assert.equal(other.message?.code, 250);
        const upper = await sendMail(mw.port(), { from: 'ALICE@Rate.Example', to: ['b@example.test'], data: MSG });
        assert.equal(upper.mail.code, 450);
        assert.equal(await metric(mw, 'ratelimitDecisions', { limit: 'sender-rate', result: 'allowed' }), 4);
        assert.equal(await metric(mw, 'ratelimitDecisions', { limit: 'sender-rate', result: 'limited' }), 2);
        assert.equal(
            await metric(mw, 'ruleHits', { rule: 'sender-rate', action: 'tempfail', mode: 'enforce' }),
            2,
            'the implicit rule is counted as a rule hit',
        );
        const refusal = mw.logs.find((l) => l.msg === 'refused' && (l.rules as string[]).includes('sender-rate'));
        assert.ok(refusal, 'the refusal is logged with the limit as its rule');
    });

    it('refills the window as the clock moves: one message per 20 minutes at 3/1h', async () => {
        clock += 19 * 60_000;
        const early = await sendMail(mw.port(), { from: 'alice@rate.example', to: ['b@example.test'], data: MSG });
        assert.equal(early.mail.code, 450);
        assert.equal(retryOf(early.mail.text), 60);
        clock += 60_000;
        const one = await sendMail(mw.port(), { from: 'alice@rate.example', to: ['b@example.test'], data: MSG });
        assert.equal(one.message?.code, 250);
        const two = await sendMail(mw.port(), { from: 'alice@rate.example', to: ['b@example.test'], data: MSG });
        assert.equal(two.mail.code, 450);
        assert.equal(retryOf(two.mail.text), 1200);
        clock += HOUR;
        for (let i = 0; i < 3; i++) {
            const r = await sendMail(mw.port(), { from: 'alice@rate.example', to: ['b@example.test'], data: MSG });
            assert.equal(r.message?.code, 250, 'a full hour later the whole burst is back');
        }
        const over = await sendMail(mw.port(), { from: 'alice@rate.example', to: ['b@example.test'], data: MSG });
        assert.equal(over.mail.code, 450, 'but never more than the burst');
    });

    it('counts recipients: the sixth and seventh recipient get 450 4.7.1, the message goes with five', async () => {
        const to = Array.from({ length: 7 }, (_, i) => `user${i}@example.test`);
        const before = up.transactions.length;
        const r = await sendMail(mw.port(), { from: 'list@rcpt.example', to, data: MSG });
        assert.deepEqual(
            r.rcpt.map((x) => x.code),
            [250, 250, 250, 250, 250, 450, 450],
        );
        assert.match(r.rcpt[5]!.text, /^4\.7\.1 Rate limit reached: too many recipients from this sender address\./);
        assert.equal(r.message?.code, 250);
        assert.equal(up.transactions.length, before + 1);
        assert.deepEqual(up.transactions.at(-1)!.rcpts, to.slice(0, 5));
    });

    it('counts connections per network: the fifth connection in the hour gets 421 4.7.0 and is closed', async () => {
        const port = mw.port('conn');
        for (let i = 1; i <= 4; i++) {
            const c = await smtpConnect(port);
            assert.equal((await c.greeting()).code, 220, `connection ${i}`);
            await c.cmd('QUIT');
            c.close();
        }
        const c = await smtpConnect(port);
        const greeting = await c.greeting();
        assert.equal(greeting.code, 421);
        assert.match(
            greeting.text,
            /^4\.7\.0 Rate limit reached: too many connections from your network \(\/24 or IPv6 \/64\)\. Please try again in 900 seconds \(limit conn-rate\)\./,
        );
        await c.waitClosed(5000);
    });

    it('holds concurrency leases: a third simultaneous connection gets 421 4.7.0 until one closes', async () => {
        const port = mw.port('held');
        const held: SmtpClient[] = [];
        for (let i = 0; i < 2; i++) {
            const c = await smtpConnect(port);
            assert.equal((await c.greeting()).code, 220);
            assert.equal((await c.cmd('EHLO held.example')).code, 250);
            held.push(c);
        }
        const third = await smtpConnect(port);
        const refused = await third.greeting();
        assert.equal(refused.code, 421);
        assert.match(
            refused.text,
            /^4\.7\.0 Too many simultaneous connections from your IP address \(or IPv6 \/64\)\. Please close other connections and try again in 60 seconds \(limit conn-max\)\./,
        );
        await third.waitClosed(5000);
        // The held sessions keep working (their leases are renewed at each stage).
        const mail = await held[0]!.cmd('MAIL FROM:<x@held.example>');
        assert.equal(mail.code, 250);
        await held[1]!.cmd('QUIT');
        held[1]!.close();
        // The lease is released when the session ends.
        let ok = false;
        for (let i = 0; i < 50 && !ok; i++) {
            await new Promise((r) => setTimeout(r, 50));
            const c = await smtpConnect(port);
            ok = (await c.greeting()).code === 220;
            c.close();
            await c.waitClosed(5000).catch(() => undefined);
        }
        assert.ok(ok, 'a new connection is admitted once one closed');
        held[0]!.close();
        assert.equal(await metric(mw, 'ratelimitDecisions', { limit: 'conn-max', result: 'limited' }), 1);
    });

    it('counts bytes at the end of DATA, and says so when one message is larger than the limit', async () => {
        const body = 'x'.repeat(76) + '\r\n';
        const data = `From: a@bytes.example\r\nSubject: big\r\n\r\n${body.repeat(50)}`; // about 3.9 KB
        const first = await sendMail(mw.port(), { from: 'a@bytes.example', to: ['b@example.test'], data });
        const second = await sendMail(mw.port(), { from: 'b@bytes.example', to: ['b@example.test'], data });
        assert.equal(first.message?.code, 250);
        assert.equal(second.message?.code, 250);
        const third = await sendMail(mw.port(), { from: 'c@bytes.example', to: ['b@example.test'], data });
        assert.equal(third.message?.code, 450);
        assert.match(
            third.message.text,
            /^4\.7\.1 Rate limit reached: too much mail \(in bytes\) from this sender domain\. Please try again in \d+ seconds \(limit byte-rate\)/,
        );
        clock += HOUR;
        const huge = `From: a@bytes.example\r\nSubject: huge\r\n\r\n${body.repeat(200)}`; // about 15.6 KB
        const tooBig = await sendMail(mw.port(), { from: 'a@bytes.example', to: ['b@example.test'], data: huge });
        assert.equal(tooBig.message?.code, 450);
        assert.match(
            tooBig.message.text,
            /^4\.7\.1 Rate limit reached: this message alone is larger than the limit byte-rate allows from this sender domain \(10KB\/1h\)/,
        );
        const small = await sendMail(mw.port(), { from: 'a@bytes.example', to: ['b@example.test'], data });
        assert.equal(small.message?.code, 250, 'the refused message used up nothing');
    });

    it('counts a monitor-mode limit without refusing anything', async () => {
        for (let i = 0; i < 3; i++) {
            const r = await sendMail(mw.port(), { from: 'w@watch.example', to: ['b@example.test'], data: MSG });
            assert.equal(r.message?.code, 250);
        }
        assert.equal(await metric(mw, 'ratelimitDecisions', { limit: 'watch-rate', result: 'allowed' }), 1);
        assert.equal(await metric(mw, 'ratelimitDecisions', { limit: 'watch-rate', result: 'monitor_limited' }), 2);
        assert.equal(await metric(mw, 'ruleHits', { rule: 'watch-rate', action: 'tempfail', mode: 'monitor' }), 2);
    });

    it('greylists: first try 450, too-early retry 450 with the rest of the wait, retry after the delay 250', async () => {
        const send = () => sendMail(mw.port(), { from: 'newsletter@far.example', to: ['ann@grey.example'], data: MSG });
        const first = await send();
        assert.equal(first.rcpt[0]!.code, 450);
        assert.match(
            first.rcpt[0]!.text,
            /^4\.7\.1 Greylisted: please try again in 300 seconds \(RFC 6647\)\. This server delays mail/,
        );
        assert.equal(first.message, undefined, 'nothing was sent upstream');
        clock += 60_000;
        const early = await send();
        assert.equal(early.rcpt[0]!.code, 450);
        assert.equal(retryOf(early.rcpt[0]!.text), 240);
        clock += 4 * 60_000;
        const retry = await send();
        assert.equal(retry.rcpt[0]!.code, 250);
        assert.equal(retry.message?.code, 250);
        const again = await send();
        assert.equal(again.rcpt[0]!.code, 250, 'a passed triplet stays passed');
        // Recipients outside the entry's when are not greylisted.
        const plain = await sendMail(mw.port(), { from: 'newsletter@far.example', to: ['b@example.test'], data: MSG });
        assert.equal(plain.rcpt[0]!.code, 250);
        assert.equal(await metric(mw, 'ratelimitDecisions', { limit: 'greylist', result: 'new' }), 1);
        assert.equal(await metric(mw, 'ratelimitDecisions', { limit: 'greylist', result: 'early' }), 1);
        assert.equal(await metric(mw, 'ratelimitDecisions', { limit: 'greylist', result: 'pass' }), 2);
    });

    it('stops greylisting a client network after autoAllowAfter passes', async () => {
        const to = (rcpt: string) =>
            sendMail(mw.port(), { from: 'newsletter@far.example', to: [rcpt], data: MSG }).then((r) => r.rcpt[0]!.code);
        assert.equal(await to('bob@grey.example'), 450, 'a second triplet is new');
        clock += 6 * 60_000;
        assert.equal(await to('bob@grey.example'), 250, 'second pass: the client is now known');
        assert.equal(await to('carol@grey.example'), 250, 'a third triplet is not delayed');
        assert.equal(await metric(mw, 'ratelimitDecisions', { limit: 'greylist', result: 'known' }), 1);
    });

    it('counts a pass for the network only for a message the upstream accepted, one per message', async () => {
        // from another /24; the upstream refuses invented recipients, and the message of refused@
        const session = async (steps: readonly { from: string; to: readonly string[] }[]): Promise<number[]> => {
            const c = await smtpConnect(mw.port(), { localAddress: '127.0.12.1' });
            await c.greeting();
            await c.cmd('EHLO bot.example');
            const codes: number[] = [];
            for (const [i, step] of steps.entries()) {
                if (i > 0) await c.cmd('RSET');
                assert.equal((await c.cmd(`MAIL FROM:<${step.from}>`)).code, 250);
                for (const r of step.to) codes.push((await c.cmd(`RCPT TO:<${r}>`)).code);
            }
            if (codes.at(-1) === 250) {
                assert.equal((await c.cmd('DATA')).code, 354);
                codes.push((await c.cmd(`${MSG}.`)).code);
            }
            await c.cmd('QUIT').catch(() => undefined);
            c.close();
            return codes;
        };
        const invented = ['nobody1@grey.example', 'nobody2@grey.example', 'nobody3@grey.example'];
        // the RSET game: passes of abandoned transactions, then a message the upstream refuses
        const game = ['bot1', 'bot2', 'refused'].map((b) => ({
            from: `${b}@far.example`,
            to: ['postmaster@grey.example'],
        }));
        assert.deepEqual(
            await session([{ from: 'bot@far.example', to: invented }, ...game]),
            [450, 450, 450, 450, 450, 450],
        );
        clock += 6 * 60_000;
        assert.deepEqual(
            await session([{ from: 'bot@far.example', to: invented }]),
            [550, 550, 550],
            'passed, refused upstream',
        );
        assert.deepEqual(await session(game), [250, 250, 250, 554], 'passed, message refused upstream');
        assert.deepEqual(await session([{ from: 'other@far.example', to: ['dave@grey.example'] }]), [450], 'not known');
        // a message the upstream accepts, to two recipients that passed: one pass
        const two = { from: 'pair@far.example', to: ['dave@grey.example', 'erin@grey.example'] };
        assert.deepEqual(await session([two]), [450, 450]);
        clock += 6 * 60_000;
        assert.deepEqual(await session([two]), [250, 250, 250]);
        assert.deepEqual(
            await session([{ from: 'other@far.example', to: ['fay@grey.example'] }]),
            [450],
            'one pass of two',
        );
    });
});

describe('explain with limits', () => {
    it('shows the implicit limit and greylisting rules first in their stage', async () => {
        const dns = await startDnsServer({});
        const dir = await mkdtemp(join(tmpdir(), 'mw-limits-explain-'));
        try {
            const rules = join(dir, 'rules');
            await mkdir(rules);
            await writeFile(join(rules, '10-limits.yaml'), RULES);
            const config = join(dir, 'mailwarden.yaml');
            await writeFile(
                config,
                [
                    'hostname: mx.example.test',
                    'listeners: [{ name: mx, host: 127.0.0.1, port: 2525, mode: mx }]',
                    `dns: { servers: ["${dns.address}"], timeout: 500ms }`,
                    `rules: "${rules}"`,
                    'http: false',
                    '',
                ].join('\n'),
            );
            const eml = join(dir, 'm.eml');
            await writeFile(eml, MSG);
            const { stdout } = await run(process.execPath, [
                BIN,
                'explain',
                '-c',
                config,
                '--client-ip',
                '198.51.100.7',
                '--mail-from',
                'alice@rate.example',
                '--rcpt',
                'ann@grey.example',
                eml,
            ]);
            const mail = stdout.slice(stdout.indexOf('== mail =='), stdout.indexOf('== rcpt =='));
            assert.match(mail, /^ {4}sender-rate \(10-limits\.yaml:2\) no match$/m);
            assert.match(mail, /ratelimit\.exceeded = \[\] \(does not hold "sender-rate"\) ✗/);
            assert.ok(mail.indexOf('sender-rate') < mail.indexOf('allow-everything'), 'limits come first');
            const rcpt = stdout.slice(stdout.indexOf('== rcpt =='), stdout.indexOf('== result =='));
            assert.match(rcpt, /^ {4}rcpt-rate \(10-limits\.yaml:\d+\) no match$/m);
            // explain counts against a fresh store: a first message from a new client is greylisted
            assert.match(rcpt, /^ {2}\+ grey \(10-limits\.yaml:\d+\) matched: tempfail$/m);
            assert.match(stdout, /^stopped at: rcpt$/m);
            assert.match(stdout, /^reply: 450 4\.7\.1 Greylisted/m);
            assert.match(stdout, /^ {4}conn-rate \(10-limits\.yaml:\d+\) no match$/m);
        } finally {
            await dns.close();
            await rm(dir, { recursive: true, force: true });
        }
    });
});

describe('the shipped limits', () => {
    it('hold a client to 10 simultaneous connections out of the box', async () => {
        const up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'] });
        const mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                'http: false',
            ].join('\n'),
        );
        const held: SmtpClient[] = [];
        try {
            for (let i = 0; i < 10; i++) {
                const c = await smtpConnect(mw.port());
                held.push(c);
                assert.equal((await c.greeting()).code, 220, `connection ${i + 1}`);
            }
            const eleventh = await smtpConnect(mw.port());
            held.push(eleventh);
            const refused = await eleventh.greeting();
            assert.equal(refused.code, 421);
            assert.match(refused.text, /\(limit client-concurrency\)/);
        } finally {
            for (const c of held) c.close();
            await mw.stop();
            await up.close();
        }
    });

    it('hold one client network to 3000 recipients an hour, bounces (the null sender) included', async () => {
        const up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'] });
        const dns = await startDnsServer({});
        const mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                `dns: { servers: ["${dns.address}"], timeout: 1s }`,
                'http: false',
            ].join('\n'),
        );
        try {
            /** Recipients accepted in transactions of up to 1000 (maxRecipients) until one is refused. */
            const accepted = async (localAddress: string, from: string, want: number) => {
                const c = await smtpConnect(mw.port(), { localAddress });
                try {
                    assert.equal((await c.greeting()).code, 220);
                    await c.cmd('EHLO bulk.example');
                    let n = 0;
                    let refused: { code: number; text: string } | null = null;
                    while (n < want && refused === null) {
                        assert.equal((await c.cmd(`MAIL FROM:<${from}>`)).code, 250);
                        for (let j = 0; j < 1000 && n < want; j++) {
                            const r = await c.cmd(`RCPT TO:<u${localAddress}.${n}@example.test>`);
                            if (r.code !== 250) {
                                refused = r;
                                break;
                            }
                            n++;
                        }
                        await c.cmd('RSET');
                    }
                    return { n, refused };
                } finally {
                    c.close();
                }
            };
            // two addresses of one /24, bounces only: no sender address to count them by
            assert.deepEqual(await accepted('127.0.0.77', '', 2000), { n: 2000, refused: null });
            const second = await accepted('127.0.0.78', '', 2000);
            // 3000 at once, then one every 1.2 seconds as the window refills while the test runs
            assert.ok(second.n >= 1000 && second.n <= 1005, `${second.n} accepted from the second address`);
            assert.equal(second.refused?.code, 450);
            assert.match(second.refused.text, /^4\.7\.1 .*\(limit mx-network-recipients\)/);
            const named = await accepted('127.0.0.79', 'news@bulk.example', 1);
            assert.match(
                named.refused?.text ?? '',
                /\(limit mx-network-recipients\)/,
                'a sender address does not help',
            );
        } finally {
            await mw.stop();
            await dns.close();
            await up.close();
        }
    });
});
