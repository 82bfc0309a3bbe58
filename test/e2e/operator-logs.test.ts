/**
 * What the logs let an operator on call answer ("why was this refused, where is it?"), end to
 * end through the real listener and a scripted upstream: the decision line names its stage and
 * the upstream's queue id; every refusal before DATA names what it refused (the recipient, the
 * sender, the HELO name) with the accepted recipient count; an upstream that cannot be reached
 * at MAIL leaves a `refused` line; monitor-mode rules of every stage show on the line of the
 * transaction; and what one increment of `mailwarden_messages_total` is.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { readRepo, runShell, shellBlocks, substitute } from '../helpers/guide.ts';
import { startApp, startScriptedGateway, type ScriptedGateway, type TestApp } from '../helpers/app.ts';
import { freePort, sendMail, smtpConnect } from '../helpers/smtp-client.ts';

const MSG =
    'From: a@sender.example\r\nTo: b@example.org\r\nSubject: t\r\nMessage-ID: <m1@sender.example>\r\n\r\nbody\r\n';

const RULES = `limits:
  - { id: rcpt-cap, key: mail.from, rate: 2/1h, per: recipient, when: { mail.from.domain: { domain: [capped.example] } } }

greylist:
  - { id: grey, when: { rcpt.domain: { domain: [grey.example] } }, delay: 5m, retryWindow: 4h, expire: 36d }
  - { id: grey-watch, when: { rcpt.domain: { domain: [watch.example] } }, delay: 5m, retryWindow: 4h, expire: 36d, mode: monitor }

rules:
  - id: closed-domain
    stage: rcpt
    when: { rcpt.domain: { domain: [closed.example] } }
    action: reject
    reply: { code: 550, enhanced: 5.7.1, text: "closed.example takes no mail from outside" }
  - { id: watch-connect, stage: connect, mode: monitor, when: { client.ip: 127.0.0.9 }, action: reject }
  - { id: watch-helo, stage: helo, mode: monitor, when: { helo: watched.example }, action: tempfail }
  - { id: watch-mail, stage: mail, mode: monitor, when: { mail.from.domain: { domain: [watched.example] } }, action: reject }
  - { id: watch-rcpt, stage: rcpt, mode: monitor, when: { rcpt.domain: { domain: [watch.example] } }, action: reject }
  - { id: watch-data, stage: data, mode: monitor, when: { mail.from.domain: { domain: [watched.example] } }, action: tag }
`;

/** The log lines with this message text, written after `from` lines. */
function linesOf(mw: TestApp, msg: string, from = 0): Record<string, unknown>[] {
    return mw.logs.slice(from).filter((l) => l.msg === msg);
}

describe('operator logs', () => {
    let dir: string;
    let g: ScriptedGateway;

    before(async () => {
        dir = await mkdtemp(join(tmpdir(), 'mw-operator-logs-'));
        await writeFile(join(dir, '10-rules.yaml'), RULES);
        g = await startScriptedGateway(
            [
                'hostname: mx.example.test',
                'domains: [example.org, closed.example, grey.example, watch.example]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `rules: "${dir}"`,
            ],
            {
                upstream: {
                    onCommand: (line) =>
                        line.startsWith('RCPT TO:<nobody@')
                            ? '550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown'
                            : undefined,
                },
            },
        );
    });
    after(async () => {
        await g.close();
        await rm(dir, { recursive: true, force: true });
    });

    it("the decision line names the upstream's queue id and the message's Message-ID", async () => {
        const from = g.mw.logs.length;
        const r = await sendMail(g.mw.port(), { from: 'a@sender.example', to: ['b@example.org'], data: MSG });
        assert.equal(r.message?.code, 250, r.message?.raw);
        const [d] = linesOf(g.mw, 'decision', from);
        assert.ok(d, 'a decision line');
        const queued = /queued as (SCRIPTED\d+)/.exec(String(d.upstream));
        assert.ok(queued, String(d.upstream));
        assert.equal(d.queueId, queued[1]);
        assert.equal(d.messageId, '<m1@sender.example>');
        assert.equal(d.session, /\(id ([^)\s]+)\)/.exec(r.message.text)?.[1], 'the id in the reply names the session');
    });

    it('the decision line names its stage; the runbook finds a message in the log by session, Message-ID, queue id and sender', async () => {
        const from = g.mw.logs.length;
        const data = MSG.replace('<m1@sender.example>', '<find-me@sender.example>');
        const r = await sendMail(g.mw.port(), { from: 'a@sender.example', to: ['b@example.org'], data });
        assert.equal(r.message?.code, 250, r.message?.raw);
        const [d] = linesOf(g.mw, 'decision', from);
        assert.ok(d, 'a decision line');
        assert.equal(d.stage, 'data');
        assert.equal(typeof d.queueId, 'string');

        // the commands of the runbook's "Find a message", over the real log lines (and a systemd line)
        const commands = shellBlocks(readRepo('docs/runbook.md'), 'Find a message')
            .flatMap((b) => b.split('\n'))
            .filter((l) => /^journalctl -u mailwarden .*\| jq /.test(l))
            .map((l) => /\bjq -\w+ '[^']*'/.exec(l)?.[0] ?? l);
        assert.equal(commands.length, 4, commands.join('\n'));
        const journal = ['Started mailwarden.service - mailwarden.', ...g.mw.lines, ''].join('\n');
        for (const command of commands) {
            const jq = substitute(command, {
                '7m3kq0v2hd9s1c4e': String(d.session),
                '<20261207.1234@sender.example>': '<find-me@sender.example>',
                '4Xb2Lk0v1Jz3': String(d.queueId),
            });
            const out = await runShell(jq, { env: process.env, cwd: tmpdir(), input: journal });
            assert.equal(out.code, 0, `${jq}: ${out.err}`);
            const found = out.out
                .split('\n')
                .filter((l) => l !== '')
                .map((l) => JSON.parse(l) as Record<string, unknown>);
            assert.ok(
                found.some((f) => f.session === d.session && f.stage === 'data' && f.action === 'accept'),
                `${jq} finds the decision line:\n${out.out}`,
            );
        }
    });

    it('counts greylisting in monitor mode apart from what was deferred (monitor_new, monitor_early)', async () => {
        const greylist = async (result: string) =>
            (await g.mw.app.metrics.ratelimitDecisions.get()).values.find(
                (v) => v.labels.limit === 'greylist' && v.labels.result === result,
            )?.value;
        assert.equal(await greylist('monitor_new'), 0, 'present from the start');
        assert.equal(await greylist('monitor_early'), 0, 'present from the start');
        const newBefore = (await greylist('new')) ?? 0;
        const first = await sendMail(g.mw.port(), { from: 'a@sender.example', to: ['w@watch.example'], data: MSG });
        assert.equal(first.rcpt[0]!.code, 250, 'nothing deferred');
        const retry = await sendMail(g.mw.port(), { from: 'a@sender.example', to: ['w@watch.example'], data: MSG });
        assert.equal(retry.rcpt[0]!.code, 250, 'nothing deferred');
        assert.equal(await greylist('monitor_new'), 1);
        assert.equal(await greylist('monitor_early'), 1);
        assert.equal((await greylist('new')) ?? 0, newBefore, 'new counts only what was deferred');
    });

    it('names the refused recipient, the recipients accepted before it, the sender and the HELO name on every RCPT refusal', async (t) => {
        const from = g.mw.logs.length;
        const c = await smtpConnect(g.mw.port());
        t.after(() => c.close());
        assert.equal((await c.greeting()).code, 220);
        assert.equal((await c.cmd('EHLO client.example')).code, 250);
        const rcpts = async (sender: string, to: readonly string[]) => {
            assert.equal((await c.cmd('RSET')).code, 250);
            assert.equal((await c.cmd(`MAIL FROM:<${sender}>`)).code, 250);
            const codes: number[] = [];
            for (const r of to) codes.push((await c.cmd(`RCPT TO:<${r}>`)).code);
            return codes;
        };
        // greylisted, after one accepted recipient
        assert.deepEqual(await rcpts('a@sender.example', ['b@example.org', 'c@grey.example']), [250, 450]);
        // over the recipient rate limit: the third of the transaction
        assert.deepEqual(
            await rcpts('x@capped.example', ['r1@example.org', 'r2@example.org', 'r3@example.org']),
            [250, 250, 450],
        );
        // refused by a rule, by relay control and by the upstream
        assert.deepEqual(
            await rcpts('a@sender.example', [
                'b@example.org',
                'ceo@closed.example',
                'out@elsewhere.example',
                'nobody@example.org',
            ]),
            [250, 550, 550, 550],
        );
        assert.equal((await c.cmd('QUIT')).code, 221);
        const session = linesOf(g.mw, 'refused', from)[0]?.session;
        assert.equal(typeof session, 'string');
        const core = { session, client: '127.0.0.1', helo: 'client.example', stage: 'rcpt' };
        const pick = (l: Record<string, unknown>, keys: readonly string[]) =>
            Object.fromEntries(keys.filter((k) => k in l).map((k) => [k, l[k]]));
        const keys = [
            'session',
            'client',
            'helo',
            'stage',
            'from',
            'rcpt',
            'rcptCount',
            'action',
            'rules',
            'reply',
            'enhanced',
        ];
        const refused = linesOf(g.mw, 'refused', from).map((l) => pick(l, keys));
        assert.deepEqual(refused, [
            {
                ...core,
                from: 'a@sender.example',
                rcpt: 'c@grey.example',
                rcptCount: 1,
                action: 'tempfail',
                rules: ['grey'],
                reply: 450,
                enhanced: '4.7.1',
            },
            {
                ...core,
                from: 'x@capped.example',
                rcpt: 'r3@example.org',
                rcptCount: 2,
                action: 'tempfail',
                rules: ['rcpt-cap'],
                reply: 450,
                enhanced: '4.7.1',
            },
            {
                ...core,
                from: 'a@sender.example',
                rcpt: 'ceo@closed.example',
                rcptCount: 1,
                action: 'reject',
                rules: ['closed-domain'],
                reply: 550,
                enhanced: '5.7.1',
            },
        ]);
        for (const l of linesOf(g.mw, 'refused', from)) assert.equal(typeof l.reason, 'string');
        const relay = linesOf(g.mw, 'envelope refused', from).map((l) => pick(l, [...keys, 'refused', 'rcptDomain']));
        assert.deepEqual(relay, [
            {
                ...core,
                from: 'a@sender.example',
                rcpt: 'out@elsewhere.example',
                rcptCount: 1,
                action: 'reject',
                rules: [],
                reply: 550,
                enhanced: '5.7.1',
                refused: 'relay',
                rcptDomain: 'elsewhere.example',
            },
        ]);
        const upstream = linesOf(g.mw, 'upstream refused recipient', from).map((l) => pick(l, keys));
        assert.deepEqual(upstream, [
            {
                ...core,
                from: 'a@sender.example',
                rcpt: 'nobody@example.org',
                rcptCount: 1,
                action: 'reject',
                rules: [],
                reply: 550,
                enhanced: '5.1.1',
            },
        ]);
        // recipients and senders are in the logs, never in a metric label
        const exposition = await g.mw.app.metrics.registry.metrics();
        for (const address of ['grey.example', 'capped.example', 'closed.example', 'elsewhere.example', 'nobody@']) {
            assert.ok(!exposition.includes(address), address);
        }
    });

    it('counts one decision in messages_total per recipient refused before DATA, and says so', async () => {
        const counted = async (action: string) =>
            (await g.mw.app.metrics.messages.get()).values.find(
                (v) => v.labels.listener === 'mx' && v.labels.action === action,
            )?.value ?? 0;
        const [rejects, accepts] = [await counted('reject'), await counted('accept')];
        const r = await sendMail(g.mw.port(), {
            from: 'a@sender.example',
            to: ['x@closed.example', 'b@example.org', 'y@closed.example'],
            data: MSG,
        });
        assert.deepEqual(
            r.rcpt.map((x) => x.code),
            [550, 250, 550],
        );
        assert.equal(r.message?.code, 250);
        assert.equal((await counted('reject')) - rejects, 2, 'one per refused recipient');
        assert.equal((await counted('accept')) - accepts, 1, 'one for the message');
        const help = (await g.mw.app.metrics.registry.metrics())
            .split('\n')
            .find((l) => l.startsWith('# HELP mailwarden_messages_total '));
        assert.ok(help);
        assert.match(help, /one increment is one decision/);
        assert.match(help, /a message at its end of data/);
        assert.match(help, /a connection, MAIL FROM or RCPT TO refused by the rules before DATA/);
    });
    it('names the monitor-mode rules of every stage on the decision line, and on a refused line', async (t) => {
        const from = g.mw.logs.length;
        const c = await smtpConnect(g.mw.port(), { localAddress: '127.0.0.9' });
        t.after(() => c.close());
        assert.equal((await c.greeting()).code, 220);
        assert.equal((await c.cmd('EHLO watched.example')).code, 250);
        assert.equal((await c.cmd('MAIL FROM:<x@watched.example>')).code, 250);
        assert.equal((await c.cmd('RCPT TO:<b@example.org>')).code, 250);
        assert.equal((await c.cmd('RCPT TO:<w2@watch.example>')).code, 250, 'monitor rules refuse nothing');
        assert.equal((await c.cmd('DATA')).code, 354);
        assert.equal((await c.cmd(`${MSG}.`)).code, 250);
        // a refusal: the rules of the stages before it that matched in monitor mode
        assert.equal((await c.cmd('MAIL FROM:<x@watched.example>')).code, 250);
        assert.equal((await c.cmd('RCPT TO:<ceo@closed.example>')).code, 550);
        assert.equal((await c.cmd('QUIT')).code, 221);
        const [d] = linesOf(g.mw, 'decision', from);
        assert.ok(d, 'a decision line');
        assert.deepEqual(d.monitor, [
            'watch-connect',
            'watch-helo',
            'watch-mail',
            'grey-watch',
            'watch-rcpt',
            'watch-data',
        ]);
        assert.match(
            String(d.reason),
            /monitor: would tag \(watch-data\)/,
            'the data stage says it in the reason as before',
        );
        assert.equal(d.action, 'accept', 'nothing changed');
        const [r] = linesOf(g.mw, 'refused', from);
        assert.ok(r, 'a refused line');
        assert.deepEqual(r.rules, ['closed-domain']);
        assert.deepEqual(r.monitor, ['watch-connect', 'watch-helo', 'watch-mail']);
        // a transaction that matched none has no monitor field
        const plain = g.mw.logs.length;
        await sendMail(g.mw.port(), { from: 'a@sender.example', to: ['b@example.org'], data: MSG });
        assert.ok(!('monitor' in linesOf(g.mw, 'decision', plain)[0]!));
    });
});

describe('operator logs: the upstream down at MAIL', () => {
    it('leaves a refused line (stage mail, the sender, tempfail, upstream unavailable)', async (t) => {
        const closed = await freePort();
        const mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.org]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${closed}", timeout: 2s }`,
                'http: false',
            ].join('\n'),
        );
        t.after(() => mw.stop());
        const c = await smtpConnect(mw.port());
        t.after(() => c.close());
        assert.equal((await c.greeting()).code, 220);
        assert.equal((await c.cmd('EHLO client.example')).code, 250);
        const mail = await c.cmd('MAIL FROM:<a@sender.example>');
        assert.equal(mail.code, 451, mail.raw);
        assert.match(mail.text, /^4\.4\.1 .*\(id ([^)\s]+)\)/);
        const session = /\(id ([^)\s]+)\)/.exec(mail.text)![1];
        const [refused] = linesOf(mw, 'refused');
        assert.ok(refused, JSON.stringify(mw.logs.map((l) => l.msg)));
        assert.equal(refused.session, session);
        assert.equal(refused.stage, 'mail');
        assert.equal(refused.from, 'a@sender.example');
        assert.equal(refused.helo, 'client.example');
        assert.equal(refused.action, 'tempfail');
        assert.deepEqual(refused.rules, []);
        assert.equal(refused.reason, 'upstream unavailable: connect');
        assert.equal(refused.reply, 451);
        assert.equal(refused.enhanced, '4.4.1');
    });
});
