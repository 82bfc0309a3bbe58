/**
 * Rate limits and greylisting in a real redis-server shared by two proxy instances: one limit
 * holds across both, concurrency leases and greylisting triplets are seen by both, and every
 * key Redis holds has a TTL. Then Redis is killed mid-test: a limit with `onError: allow`
 * lets mail through (and `redis_errors_total` rises, the decision line names it), one with
 * `onError: tempfail` answers 451 4.7.1, `/readyz` reports it; when Redis is back on the same
 * port the limits apply again without restarting either instance. Redis restarted empty under
 * open sessions: they take their leases again at once. And when Redis answers only after the
 * command timeout, the limit's onError verdict is all that happens: what the late calls did (a
 * lease taken, a rate charged) is taken back.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { keyNames } from '../../src/limits/index.ts';
import { decisions, startApp, type TestApp } from '../helpers/app.ts';
import { startRedis, type RedisInstance } from '../helpers/redis.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { sendMail, smtpConnect, type SmtpClient } from '../helpers/smtp-client.ts';
import { until } from '../helpers/until.ts';

const MSG = 'From: a@sender.example\r\nTo: b@example.test\r\nSubject: t\r\n\r\nbody\r\n';

const RULES = `limits:
  - { id: shared-rate, key: mail.from, rate: [5/1h, 50/1d], when: { mail.from.domain: { domain: [shared.example] } } }
  - { id: strict-rate, key: mail.from, rate: 100/1h, onError: tempfail, when: { mail.from.domain: { domain: [strict.example] } } }
  - { id: conn-max, key: client.ip, concurrency: 2 }
greylist:
  - { id: grey, when: { rcpt.domain: { domain: [grey.example] } }, delay: 5m, retryWindow: 4h }
`;

async function counter(mw: TestApp, name: 'ratelimitDecisions' | 'redisErrors', labels: Record<string, string> = {}) {
    const values = (await mw.app.metrics[name].get()).values;
    return values
        .filter((v) =>
            Object.entries(labels).every(
                ([k, x]) => (v.labels as Record<string, string | number | undefined>)[k] === x,
            ),
        )
        .reduce((sum, v) => sum + v.value, 0);
}

const send = (mw: TestApp, from: string, to = 'b@example.test') => sendMail(mw.port(), { from, to: [to], data: MSG });

describe('rate limits in Redis shared by two instances', () => {
    let dir: string;
    let up: ScriptedUpstream;
    let redis: RedisInstance;
    let a: TestApp;
    let b: TestApp;
    let clock = Date.UTC(2026, 0, 5, 12, 0, 0);
    before(async () => {
        dir = await mkdtemp(join(tmpdir(), 'mw-limits-redis-'));
        await writeFile(join(dir, '10-limits.yaml'), RULES);
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'] });
        redis = await startRedis();
        const yaml = [
            'hostname: mx.example.test',
            'domains: [example.test, grey.example]',
            'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
            `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
            `rules: "${dir}"`,
            `redis: { url: "${redis.url}", commandTimeout: 200ms, connectTimeout: 500ms }`,
            'http: { host: 127.0.0.1, port: 0 }',
        ].join('\n');
        a = await startApp(yaml, { now: () => clock });
        b = await startApp(yaml, { now: () => clock });
    });
    after(async () => {
        await a?.stop();
        await b?.stop();
        await up?.close();
        await redis?.stop();
        await rm(dir, { recursive: true, force: true });
    });

    it('enforces one limit across both instances: 5 in all, the sixth gets 450 4.7.1 on either', async () => {
        const codes: number[] = [];
        for (let i = 0; i < 5; i++) {
            const r = await send(i % 2 === 0 ? a : b, 'alice@shared.example');
            codes.push(r.message?.code ?? r.mail.code);
        }
        assert.deepEqual(codes, [250, 250, 250, 250, 250]);
        for (const mw of [a, b]) {
            const r = await send(mw, 'alice@shared.example');
            assert.equal(r.mail.code, 450);
            assert.match(
                r.mail.text,
                /^4\.7\.1 Rate limit reached: .* Please try again in 720 seconds \(limit shared-rate\)/,
            );
        }
        assert.equal(
            (await counter(a, 'ratelimitDecisions', { limit: 'shared-rate', result: 'allowed' })) +
                (await counter(b, 'ratelimitDecisions', { limit: 'shared-rate', result: 'allowed' })),
            5,
        );
    });

    it('shares concurrency leases: two held on one instance, the third on the other is refused', async () => {
        const held: SmtpClient[] = [];
        for (let i = 0; i < 2; i++) {
            const c = await smtpConnect(a.port());
            assert.equal((await c.greeting()).code, 220);
            held.push(c);
        }
        const c = await smtpConnect(b.port());
        const refused = await c.greeting();
        assert.equal(refused.code, 421);
        assert.match(refused.text, /^4\.7\.0 Too many simultaneous connections .*\(limit conn-max\)/);
        await c.waitClosed(5000);
        for (const h of held) {
            await h.cmd('QUIT');
            h.close();
        }
        // Released when the sessions end: the other instance admits connections again.
        let code = 0;
        for (let i = 0; i < 50 && code !== 220; i++) {
            await sleep(50);
            const again = await smtpConnect(b.port());
            code = (await again.greeting()).code;
            again.close();
            await again.waitClosed(5000).catch(() => undefined);
        }
        assert.equal(code, 220);
    });

    it('shares greylisting: first try on one instance, the retry on the other passes', async () => {
        const first = await send(a, 'news@far.example', 'ann@grey.example');
        assert.equal(first.rcpt[0]!.code, 450);
        assert.match(first.rcpt[0]!.text, /^4\.7\.1 Greylisted: please try again in 300 seconds \(RFC 6647\)/);
        clock += 2 * 60_000;
        const early = await send(b, 'news@far.example', 'ann@grey.example');
        assert.match(early.rcpt[0]!.text, /please try again in 180 seconds/);
        clock += 3 * 60_000;
        const retry = await send(b, 'news@far.example', 'ann@grey.example');
        assert.equal(retry.rcpt[0]!.code, 250);
        assert.equal(retry.message?.code, 250);
    });

    it('gives every key it wrote a TTL', async () => {
        const raw = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 1 });
        try {
            await raw.connect();
            const keys: string[] = [];
            let cursor = '0';
            do {
                const [next, batch] = await raw.scan(cursor, 'COUNT', 1000);
                cursor = next;
                keys.push(...batch);
            } while (cursor !== '0');
            assert.ok(
                keys.some((k) => k.startsWith('mw:rl:v1:{shared-rate|alice@shared.example}:')),
                keys.join(' '),
            );
            assert.ok(
                keys.some((k) => k.startsWith('mw:glt:v1:{grey|127.0.0.0/24|news@far.example|ann@grey.example}')),
            );
            for (const k of keys) {
                const ttl = await raw.pttl(k);
                assert.ok(ttl > 0, `${k} has TTL ${ttl}`);
            }
        } finally {
            raw.disconnect();
        }
    });

    it('fails open or tempfails as each limit says while Redis is down, and recovers without a restart', async () => {
        const readyz = async (mw: TestApp) => (await fetch(`http://127.0.0.1:${mw.app.httpPort}/readyz`)).status;
        assert.equal(await readyz(a), 200);
        const errorsBefore = await counter(a, 'redisErrors');
        const port = redis.port;
        process.kill(redis.pid, 'SIGKILL');
        await redis.stop();

        // onError: allow (the default): over the limit or not, mail goes through.
        const open = await send(a, 'alice@shared.example');
        assert.equal(open.message?.code, 250, 'fails open');
        assert.ok((await counter(a, 'redisErrors')) > errorsBefore, 'redis_errors_total rises');
        // The message's decision line names the limits that let it through uncounted.
        const passed = decisions(a.logs).filter((l) => l.from === 'alice@shared.example');
        assert.deepEqual(passed.at(-1)?.limitErrors, ['conn-max', 'shared-rate'], JSON.stringify(passed.at(-1)));
        assert.ok((await counter(a, 'ratelimitDecisions', { limit: 'shared-rate', result: 'error_allowed' })) >= 1);
        // onError: tempfail: the sender is asked to retry, never refused for good.
        const strict = await send(a, 'bob@strict.example');
        assert.equal(strict.mail.code, 451);
        assert.match(
            strict.mail.text,
            /^4\.7\.1 Temporary problem applying a sending limit; nothing is wrong with your mail\..*\(limit strict-rate\)/,
        );
        assert.equal(await counter(a, 'ratelimitDecisions', { limit: 'strict-rate', result: 'error_tempfail' }), 1);
        // Its refused line tells the failure from the limit being exceeded.
        const refused = a.logs.filter((l) => l.msg === 'refused' && l.from === 'bob@strict.example');
        assert.deepEqual(refused.at(-1)?.limitErrors, ['strict-rate', 'conn-max'], JSON.stringify(refused.at(-1)));
        // Greylisting fails open too (its onError is allow).
        const grey = await send(b, 'other@far.example', 'bob@grey.example');
        assert.equal(grey.rcpt[0]!.code, 250);
        // Connections are not held up by the concurrency limit either.
        const c = await smtpConnect(a.port());
        assert.equal((await c.greeting()).code, 220);
        c.close();
        // /readyz gives an answer again for 2 s: it reports Redis within that
        await until('/readyz reports Redis', async () => (await readyz(a)) === 503, 5_000, 100);

        redis = await startRedis({ port });
        let code = 0;
        const deadline = Date.now() + 10_000;
        while (code !== 250 && Date.now() < deadline) {
            await sleep(100);
            code = (await send(a, 'bob@strict.example')).message?.code ?? 0;
        }
        assert.equal(code, 250, 'the tempfail limit passes again once Redis answers');
        // each instance reconnects on its own back-off: count only once both answer again
        const both = Date.now() + 10_000;
        while ((await readyz(a)) !== 200 || (await readyz(b)) !== 200) {
            if (Date.now() > both) break;
            await sleep(100);
        }
        // The new server starts empty: the shared limit counts afresh, across both instances.
        const codes: number[] = [];
        for (let i = 0; i < 6; i++) {
            const r = await send(i % 2 === 0 ? b : a, 'carol@shared.example');
            codes.push(r.message?.code ?? r.mail.code);
        }
        assert.deepEqual(codes, [250, 250, 250, 250, 250, 450]);
        assert.equal(await readyz(a), 200);
    });

    it('Redis restarted empty: the open sessions on both instances take their leases again at once, so the limit still holds', async () => {
        const address = '127.0.0.31';
        const leaseKey = keyNames().lease(`conn-max|${address}`);
        const held: SmtpClient[] = [];
        const open = async (mw: TestApp) => {
            const c = await smtpConnect(mw.port(), { localAddress: address });
            held.push(c);
            return (await c.greeting()).code;
        };
        const raw = new Redis(redis.url);
        try {
            assert.deepEqual([await open(a), await open(b)], [220, 220]);
            assert.equal(await raw.zcard(leaseKey), 2);
            raw.disconnect();
            const port = redis.port;
            await redis.stop();
            redis = await startRedis({ port });
            // Their next renewal is minutes away: each instance renews its sessions' leases as
            // soon as its connection is ready again.
            const fresh = new Redis(redis.url);
            try {
                await until(
                    'the open sessions hold their leases again',
                    async () => (await fresh.zcard(leaseKey)) === 2,
                );
            } finally {
                fresh.disconnect();
            }
            assert.deepEqual([await open(a), await open(b)], [421, 421], 'two sessions are open: the limit is 2');
        } finally {
            raw.disconnect();
            for (const c of held) c.close();
        }
    });
});

describe('rate limits when Redis answers after the command timeout', () => {
    const LATE_RULES = `limits:
  - { id: late-rate, key: mail.from, rate: 2/1h, onError: tempfail, when: { mail.from.domain: { domain: [late.example] } } }
  - { id: late-conn, key: client.ip, concurrency: 2 }
`;
    let dir: string;
    let up: ScriptedUpstream;
    let redis: RedisInstance;
    let mw: TestApp;
    let admin: Redis;
    before(async () => {
        dir = await mkdtemp(join(tmpdir(), 'mw-limits-late-'));
        await writeFile(join(dir, '10-limits.yaml'), LATE_RULES);
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'] });
        redis = await startRedis({ settings: { 'enable-debug-command': 'yes' } });
        admin = new Redis(redis.url);
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                `rules: "${dir}"`,
                `redis: { url: "${redis.url}", commandTimeout: 200ms, connectTimeout: 500ms }`,
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        admin?.disconnect();
        await mw?.stop();
        await up?.close();
        await redis?.stop();
        await rm(dir, { recursive: true, force: true });
    });

    /** Runs `step` while Redis sleeps for `seconds` (DEBUG SLEEP), and waits for it to wake up. */
    const whileRedisSleeps = async <T>(seconds: number, step: () => Promise<T>): Promise<T> => {
        const sleeping = admin.debug('SLEEP', String(seconds));
        await sleep(20);
        try {
            return await step();
        } finally {
            await sleeping;
        }
    };
    const keys = async (pattern: string) => (await admin.keys(pattern)).length;

    it('a lease granted after the timeout is given back: connections let in by onError do not fill the limit', async () => {
        for (let i = 0; i < 3; i++) {
            const code = await whileRedisSleeps(0.5, async () => {
                const c = await smtpConnect(mw.port());
                const greeting = await c.greeting();
                c.close();
                return greeting.code;
            });
            assert.equal(code, 220, 'onError: allow lets the connection in');
        }
        await until('the leases granted late are released', async () => (await keys('mw:cc:*')) === 0);
        // Both slots of the limit are free: two connections at once are let in.
        const held = [await smtpConnect(mw.port()), await smtpConnect(mw.port())];
        try {
            for (const c of held) assert.equal((await c.greeting()).code, 220);
        } finally {
            for (const c of held) c.close();
        }
        await until('the sessions ended gave their leases back', async () => (await keys('mw:cc:*')) === 0);
    });

    it('a take charged after the timeout is refunded: a sender told 451 by onError is not charged', async () => {
        // From an address of its own, so that no lease of the case before counts here.
        const localAddress = '127.0.2.1';
        for (let i = 0; i < 3; i++) {
            const c = await smtpConnect(mw.port(), { localAddress });
            try {
                await c.greeting();
                await c.cmd('EHLO client.example');
                const mail = await whileRedisSleeps(0.4, () => c.cmd('MAIL FROM:<slow@late.example>'));
                assert.equal(mail.code, 451, 'onError: tempfail');
            } finally {
                c.close();
            }
        }
        await until('the late takes are refunded', async () => (await keys('mw:rl:*')) === 0);
        // The limit (2 an hour) is whole: two messages pass, the third is limited.
        const codes: number[] = [];
        for (let i = 0; i < 3; i++) {
            const r = await sendMail(mw.port(), {
                from: 'slow@late.example',
                to: ['b@example.test'],
                data: MSG,
                localAddress,
            });
            codes.push(r.message?.code ?? r.mail.code);
        }
        assert.deepEqual(codes, [250, 250, 450]);
    });
});

describe('greylisting in monitor mode, in Redis: a record lives the retry window only for mail the upstream took', () => {
    let dir: string;
    let up: ScriptedUpstream;
    let redis: RedisInstance;
    let raw: Redis;
    let mw: TestApp;
    let clock = Date.UTC(2026, 0, 5, 12, 0, 0);
    before(async () => {
        dir = await mkdtemp(join(tmpdir(), 'mw-limits-monitor-'));
        await writeFile(
            join(dir, '10-limits.yaml'),
            `greylist:
  - { id: watch, when: { rcpt.domain: { domain: [watch.example] } }, delay: 5m, retryWindow: 2d, mode: monitor }
`,
        );
        up = await startScriptedUpstream({
            ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'],
            onCommand: (line) => (/^RCPT TO:<nobody/i.test(line) ? '550 5.1.1 no such user' : undefined),
        });
        redis = await startRedis();
        raw = new Redis(redis.url, { maxRetriesPerRequest: 1 });
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [watch.example]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                `rules: "${dir}"`,
                `redis: { url: "${redis.url}", commandTimeout: 2s }`,
                'http: false',
            ].join('\n'),
            { now: () => clock },
        );
    });
    after(async () => {
        await mw?.stop();
        raw?.disconnect();
        await up?.close();
        await redis?.stop();
        await rm(dir, { recursive: true, force: true });
    });

    it('recipients Postfix refuses leave records for the delay (5 minutes), not for 2 days; the next message counts as enforcing would', async () => {
        const to = ['ann@watch.example', ...Array.from({ length: 5 }, (_, i) => `nobody${i}@watch.example`)];
        const first = await sendMail(mw.port(), { from: 'news@far.example', to, data: MSG });
        assert.deepEqual(
            first.rcpt.map((r) => r.code),
            [250, 550, 550, 550, 550, 550],
        );
        assert.equal(first.message?.code, 250);
        const record = (rcpt: string) => `mw:glt:v1:{watch|127.0.0.0/24|news@far.example|${rcpt}}`;
        const day = 24 * 3_600_000;
        await until('the delivered recipient’s record is kept', async () => (await raw.pttl(record(to[0]!))) > day);
        assert.ok((await raw.pttl(record(to[0]!))) <= 2 * day + 1);
        for (const rcpt of to.slice(1)) {
            const ttl = await raw.pttl(record(rcpt));
            assert.ok(ttl > 0 && ttl <= 300_000, `${rcpt}: PTTL ${ttl}`);
        }
        // after the delay the delivered triplet passes; the refused ones are first tries again
        clock += 5 * 60_000;
        const before = await greyCount(mw);
        const second = await sendMail(mw.port(), { from: 'news@far.example', to: to.slice(0, 2), data: MSG });
        assert.equal(second.message?.code, 250);
        const after = await greyCount(mw);
        assert.equal(after.pass - before.pass, 1);
        assert.equal(after.monitor_new - before.monitor_new, 1);
    });
});

async function greyCount(mw: TestApp): Promise<{ pass: number; monitor_new: number }> {
    const values = (await mw.app.metrics.ratelimitDecisions.get()).values.filter((v) => v.labels.limit === 'greylist');
    const of = (result: string) => values.find((v) => v.labels.result === result)?.value ?? 0;
    return { pass: of('pass'), monitor_new: of('monitor_new') };
}
