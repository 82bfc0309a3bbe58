/**
 * The `ratelimit` check on its own, with real stores: the keys it builds from facts
 * (normalised, prefixed, hashed when hostile), the greylisting triplet, the facts it reports
 * at each stage, concurrency leases given back when a session ends (and taken again when the
 * store is ready after losing them), and each limit's
 * onError applied when the store fails (a Redis store pointed at a port where nothing
 * listens). The clock is the only thing injected.
 */
import assert from 'node:assert/strict';
import { Redis } from 'ioredis';
import { after, describe, it } from 'node:test';
import { createMemoryStore, createRedisStore, type LimitStore, type StageOp } from '../../src/limits/index.ts';
import { createRateLimitCheck } from '../../src/checks/ratelimit.ts';
import { greylistSender, greylistTriplet, ipNetwork, limitKeys, safePart } from '../../src/limits/limit-keys.ts';
import { createMetrics } from '../../src/metrics.ts';
import { loadRules, type RuleSet } from '../../src/rules/index.ts';
import type { Facts, FactValue, Stage, CheckContext } from '../../src/types.ts';
import { cleanup, folderWith } from '../rules/helpers.ts';
import { freePort } from '../helpers/smtp-client.ts';
import { startRedis } from '../helpers/redis.ts';
import { until } from '../helpers/until.ts';

after(cleanup);

function rules(text: string): RuleSet {
    const r = loadRules(folderWith({ '10-limits.yaml': text }), { softReject: false });
    assert.deepEqual(r.issues, []);
    return r.ruleSet!;
}

function ctx(stage: Stage, facts: Facts, sessionId = 's1'): CheckContext {
    const rcpt = facts['rcpt.to'];
    return {
        stage,
        sessionId,
        facts,
        client: {
            ip: String(facts['client.ip'] ?? '192.0.2.1'),
            port: 1,
            ptr: null,
            helo: null,
            proto: 'ESMTP',
            login: null,
        },
        envelope: {
            mailFrom: typeof facts['mail.from'] === 'string' ? facts['mail.from'] : null,
            rcptTo: Array.isArray(rcpt) ? rcpt : [],
        },
        message: null,
    };
}

const signal = new AbortController().signal;

describe('limit keys', () => {
    const set = rules(`limits:
  - { id: ip, key: client.ip, concurrency: 5 }
  - { id: net, key: client.ip/24, rate: 5/1m, per: connection }
  - { id: net48, key: client.ip/16, ipv6Prefix: 48, rate: 5/1m, per: connection }
  - { id: sender, key: mail.from, rate: 5/1m }
  - { id: login-ip, key: [auth.user, client.ip], rate: 5/1m }
  - { id: rcpt, key: rcpt.to, rate: 5/1m, per: recipient }
  - { id: rcpt-bytes, key: rcpt.domain, rate: 5MB/1h, per: byte }
  - { id: address, key: rcpt.address, rate: 5/1m, per: recipient }
  - { id: address-bytes, key: rcpt.address, rate: 5MB/1h, per: byte }
  - { id: helo, key: helo, rate: 5/1m }
  - { id: all, key: global, rate: 5/1m }
`);
    const spec = (id: string) => set.limits.find((l) => l.id === id)!;

    it('cut client addresses to their prefix, IPv4-mapped IPv6 counting as IPv4', () => {
        assert.deepEqual(limitKeys(spec('ip'), { 'client.ip': '203.0.113.7' }, 'connect'), ['ip|203.0.113.7']);
        assert.deepEqual(limitKeys(spec('ip'), { 'client.ip': '::ffff:203.0.113.7' }, 'connect'), ['ip|203.0.113.7']);
        assert.deepEqual(limitKeys(spec('ip'), { 'client.ip': '2001:db8:1:2:a:b:c:d' }, 'connect'), [
            'ip|2001:db8:1:2::/64',
        ]);
        assert.deepEqual(limitKeys(spec('net'), { 'client.ip': '203.0.113.7' }, 'connect'), ['net|203.0.113.0/24']);
        assert.deepEqual(limitKeys(spec('net48'), { 'client.ip': '2001:db8:1:2::9' }, 'connect'), [
            'net48|2001:db8:1::/48',
        ]);
        assert.equal(ipNetwork('10.1.2.3', 8, 64), '10.0.0.0/8');
    });

    it('lower-case addresses, skip missing facts, and join several facts', () => {
        assert.deepEqual(limitKeys(spec('sender'), { 'mail.from': 'Alice@Example.ORG' }, 'mail'), [
            'sender|alice@example.org',
        ]);
        assert.deepEqual(limitKeys(spec('sender'), { 'mail.from': '' }, 'mail'), [], 'the null sender');
        assert.deepEqual(limitKeys(spec('login-ip'), { 'auth.user': null, 'client.ip': '192.0.2.1' }, 'mail'), []);
        assert.deepEqual(limitKeys(spec('login-ip'), { 'auth.user': 'Bob', 'client.ip': '192.0.2.1' }, 'mail'), [
            'login-ip|bob|192.0.2.1',
        ]);
        assert.deepEqual(limitKeys(spec('all'), {}, 'mail'), ['all|*']);
    });

    it('count the recipient being checked at RCPT, and every recipient domain at DATA', () => {
        const facts = { 'rcpt.to': ['a@x.example', 'B@Y.example', 'c@x.example'] };
        assert.deepEqual(limitKeys(spec('rcpt'), facts, 'rcpt'), ['rcpt|c@x.example']);
        assert.deepEqual(limitKeys(spec('rcpt-bytes'), facts, 'data'), [
            'rcpt-bytes|x.example',
            'rcpt-bytes|y.example',
        ]);
        // rcpt.address is the recipient being checked; at DATA it counts every recipient, as rcpt.to
        assert.deepEqual(limitKeys(spec('address'), { 'rcpt.address': 'B@Y.example' }, 'rcpt'), [
            'address|b@y.example',
        ]);
        assert.deepEqual(limitKeys(spec('address-bytes'), { ...facts, 'rcpt.address': 'c@x.example' }, 'data'), [
            'address-bytes|a@x.example',
            'address-bytes|b@y.example',
            'address-bytes|c@x.example',
        ]);
    });

    it('count an address with a subaddress as its base address, with the configured delimiter', () => {
        assert.deepEqual(limitKeys(spec('sender'), { 'mail.from': 'News+1@Example.ORG' }, 'mail'), [
            'sender|news@example.org',
        ]);
        assert.deepEqual(limitKeys(spec('rcpt'), { 'rcpt.to': ['alice+2@x.example'] }, 'rcpt'), [
            'rcpt|alice@x.example',
        ]);
        assert.deepEqual(limitKeys(spec('address'), { 'rcpt.address': 'alice+a+b@x.example' }, 'rcpt'), [
            'address|alice@x.example',
        ]);
        assert.deepEqual(
            limitKeys(spec('address-bytes'), { 'rcpt.to': ['alice+1@x.example', 'alice@x.example'] }, 'data'),
            ['address-bytes|alice@x.example'],
            'one counter for the mailbox',
        );
        // a quoted local part is read without its quotes; its base in canonical form again
        assert.deepEqual(limitKeys(spec('rcpt'), { 'rcpt.to': ['"ceo+ x"@x.example'] }, 'rcpt'), [
            'rcpt|ceo@x.example',
        ]);
        assert.deepEqual(
            limitKeys(spec('rcpt'), { 'rcpt.to': ['"a b+c"@x.example'] }, 'rcpt'),
            limitKeys(spec('rcpt'), { 'rcpt.to': ['"a b"@x.example'] }, 'rcpt'),
        );
        // a local part that starts with the delimiter has no subaddress
        assert.deepEqual(limitKeys(spec('sender'), { 'mail.from': '+news@example.org' }, 'mail'), [
            'sender|+news@example.org',
        ]);
        const other = (delimiter: string) =>
            loadRules(folderWith({ '10.yaml': 'limits:\n  - { id: s, key: mail.from, rate: 5/1m }\n' }), {
                softReject: false,
                recipientDelimiter: delimiter,
            }).ruleSet!.limits[0]!;
        assert.deepEqual(limitKeys(other(''), { 'mail.from': 'a+b@x.example' }, 'mail'), ['s|a+b@x.example']);
        assert.deepEqual(limitKeys(other('-+'), { 'mail.from': 'a-b@x.example' }, 'mail'), ['s|a@x.example']);
        assert.deepEqual(limitKeys(other('-'), { 'mail.from': 'a+b@x.example' }, 'mail'), ['s|a+b@x.example']);
    });

    it('write an address literal in one form: IPv6 per RFC 5952, IPv4-mapped IPv6 as IPv4', () => {
        const key = (from: string) => limitKeys(spec('sender'), { 'mail.from': from }, 'mail');
        for (const from of [
            'a@[IPv6:2001:db8::1]',
            'a@[IPv6:2001:DB8:0:0::1]',
            'a@[IPv6:2001:db8:0:0:0:0:0:1]',
            'a@[ipv6:2001:db8::0:1]',
        ]) {
            assert.deepEqual(key(from), ['sender|a@[ipv6:2001:db8::1]'], from);
        }
        for (const from of ['b@[192.0.2.1]', 'b@[IPv6:::ffff:192.0.2.1]', 'b@[IPv6:::ffff:c000:201]']) {
            assert.deepEqual(key(from), ['sender|b@[192.0.2.1]'], from);
        }
        assert.deepEqual(limitKeys(spec('rcpt-bytes'), { 'rcpt.to': ['x@[IPv6:::FFFF:192.0.2.1]'] }, 'data'), [
            'rcpt-bytes|[192.0.2.1]',
        ]);
    });

    it('hash values that are long or could break the key format', () => {
        const long = limitKeys(spec('helo'), { helo: 'a'.repeat(10_000) }, 'mail');
        assert.equal(long.length, 1);
        assert.ok(long[0]!.length < 40, long[0]);
        const [braces] = limitKeys(spec('helo'), { helo: 'evil}{x' }, 'mail');
        assert.match(braces!, /^helo\|#[\w-]{27}$/);
        assert.notEqual(
            limitKeys(spec('helo'), { helo: 'a b' }, 'mail')[0],
            limitKeys(spec('helo'), { helo: 'a c' }, 'mail')[0],
        );
        assert.equal(safePart('mx.example.org'), 'mx.example.org');
        assert.match(safePart('a|b'), /^#/);
    });

    it('compare greylisting senders as postgrey does', () => {
        assert.equal(greylistSender(''), '<>');
        assert.equal(greylistSender('prvs=1234abcd=Bob@Example.org'), 'bob@example.org');
        assert.equal(greylistSender('list-bounces+123-456@lists.example'), 'list-bounces+#-#@lists.example');
        assert.deepEqual(greylistTriplet('grey', '198.51.100.77', 'a@b.example', 'Ann@Grey.Example'), {
            triplet: 'grey|198.51.100.0/24|a@b.example|ann@grey.example',
            client: 'grey|198.51.100.0/24',
            network: 'grey|198.51.100.0/24',
        });
        assert.equal(greylistTriplet('grey', '2001:db8:5:6::1', '', 'x@y.example').client, 'grey|2001:db8:5:6::/64');
        // new records are capped per IPv6 /48: the holder of one has 65,536 /64s
        assert.equal(greylistTriplet('grey', '2001:db8:5:6::1', '', 'x@y.example').network, 'grey|2001:db8:5::/48');
    });
});

describe('ratelimit check', () => {
    const set = rules(`limits:
  - { id: conns, key: client.ip, concurrency: 2 }
  - { id: sender, key: mail.from, rate: 2/1h }
  - { id: watch, key: mail.from, rate: 1/1h, mode: monitor }
  - { id: strict, key: mail.from.domain, rate: 100/1h, onError: tempfail }
greylist:
  - { id: grey, when: { rcpt.domain: { domain: [grey.example] } }, delay: 5m, retryWindow: 4h }
`);
    const clock = 1_000_000_000;
    const make = (store: LimitStore, metrics = createMetrics('test')) => ({
        metrics,
        check: createRateLimitCheck({
            store,
            declarations: () => set,
            metrics,
            now: () => clock,
            instanceId: 'test',
            storeTimeoutMs: 100,
        }),
    });
    const mailFacts = { 'client.ip': '192.0.2.1', 'mail.from': 'a@b.example', 'mail.from.domain': 'b.example' };

    it('reports exceeded, monitored and retry facts at each stage', async () => {
        const { check, metrics } = make(createMemoryStore());
        const run = async () => (await check.run(ctx('mail', mailFacts), signal)).facts;
        assert.deepEqual(await run(), {
            'ratelimit.exceeded': [],
            'ratelimit.monitor': [],
            'ratelimit.error': [],
            'ratelimit.error_allowed': [],
            'ratelimit.retry_after': null,
        });
        assert.deepEqual(await run(), {
            'ratelimit.exceeded': [],
            'ratelimit.monitor': ['watch'],
            'ratelimit.error': [],
            'ratelimit.error_allowed': [],
            'ratelimit.retry_after': 3600,
        });
        assert.deepEqual(await run(), {
            'ratelimit.exceeded': ['sender'],
            'ratelimit.monitor': ['watch'],
            'ratelimit.error': [],
            'ratelimit.error_allowed': [],
            'ratelimit.retry_after': 1800,
        });
        const helo = await check.run(ctx('helo', mailFacts), signal);
        assert.deepEqual(helo.facts['ratelimit.exceeded'], [], 'stale facts of an earlier stage are replaced');
        // the series initialised to 0 (metrics.ts) aside
        const values = (await metrics.ratelimitDecisions.get()).values
            .filter((v) => v.value > 0)
            .map((v) => `${v.labels.limit} ${v.labels.result} ${v.value}`);
        assert.deepEqual(values.sort(), [
            'sender allowed 2',
            'sender limited 1',
            'strict allowed 3',
            'watch allowed 1',
            'watch monitor_limited 2',
        ]);
    });

    it('reports nothing when no limits are declared', async () => {
        const check = createRateLimitCheck({
            store: createMemoryStore(),
            declarations: () => null,
            metrics: createMetrics('test'),
            now: () => clock,
            instanceId: 'x',
        });
        assert.deepEqual((await check.run(ctx('mail', mailFacts), signal)).facts, {});
    });

    it('gives concurrency leases back when the session ends', async () => {
        const store = createMemoryStore();
        const { check } = make(store);
        const connect = (id: string) => check.run(ctx('connect', { 'client.ip': '192.0.2.9' }, id), signal);
        assert.deepEqual((await connect('a')).facts['ratelimit.exceeded'], []);
        assert.deepEqual((await connect('b')).facts['ratelimit.exceeded'], []);
        assert.deepEqual((await connect('c')).facts['ratelimit.exceeded'], ['conns']);
        await check.end!('c');
        assert.deepEqual((await connect('d')).facts['ratelimit.exceeded'], ['conns'], 'a refused session held nothing');
        await check.end!('a');
        assert.deepEqual((await connect('e')).facts['ratelimit.exceeded'], []);
        // A session that ended before its connect stage finished keeps nothing.
        await check.end!('late');
        await check.end!('b');
        assert.deepEqual((await connect('late')).facts['ratelimit.exceeded'], []);
        assert.deepEqual((await connect('f')).facts['ratelimit.exceeded'], [], 'the late lease was given back');
        for (const id of ['d', 'e', 'f']) await check.end!(id);
    });

    it('gives back, before end() resolves, a lease granted while the session ends (a stop closes the store next)', async () => {
        const memory = createMemoryStore();
        let closed = false;
        const releases: string[] = [];
        const store: LimitStore = {
            ...memory,
            stage: async (ops: readonly StageOp[], at: number) => {
                await new Promise((r) => setTimeout(r, 50));
                return memory.stage(ops, at);
            },
            release: async (key: string, holder: string) => {
                releases.push(closed ? 'after the store closed' : 'before');
                return memory.release(key, holder);
            },
        };
        const { check } = make(store);
        const connecting = check.run(ctx('connect', { 'client.ip': '192.0.2.77' }, 'ending'), signal);
        await new Promise((r) => setTimeout(r, 5));
        await check.end!('ending');
        closed = true;
        await connecting;
        await new Promise((r) => setTimeout(r, 20));
        assert.deepEqual(releases, ['before']);
    });

    it('asks the store once per stage, renewing leases in that call when a renewal is due', async () => {
        const store = createMemoryStore();
        const batches: string[][] = [];
        const counting: LimitStore = {
            ...store,
            stage: (ops: readonly StageOp[], nowMs: number) => {
                batches.push(ops.map((o) => `${o.op} ${'key' in o ? o.key : o.triplet}`));
                return store.stage(ops, nowMs);
            },
        };
        let now = clock;
        const check = createRateLimitCheck({
            store: counting,
            declarations: () => set,
            metrics: createMetrics('test'),
            now: () => now,
            instanceId: 'test',
            leaseTtlMs: 90_000,
        });
        const facts = { ...mailFacts, 'client.ip': '192.0.2.44', 'mail.from': 'renew@b.example' };
        const stage = async (s: Stage, at: number) => {
            now = clock + at;
            batches.length = 0;
            await check.run(ctx(s, facts, 'renewing'), signal);
            return batches;
        };
        assert.deepEqual(await stage('connect', 0), [['acquire conns|192.0.2.44']]);
        assert.deepEqual(await stage('helo', 1_000), [], 'no limit and no renewal due: no store call');
        const limits = ['take sender|renew@b.example', 'take watch|renew@b.example', 'take strict|b.example'];
        assert.deepEqual(await stage('mail', 29_999), [limits]);
        // A third of the TTL after the last renewal, the next stage renews, in its one call.
        assert.deepEqual(await stage('mail', 30_000), [['acquire conns|192.0.2.44', ...limits]]);
        assert.deepEqual(await stage('helo', 59_999), []);
        assert.deepEqual(await stage('helo', 60_000), [['acquire conns|192.0.2.44']]);
        // The renewed lease holds a second session off until its TTL after that renewal.
        const other = async (at: number) => {
            now = clock + at;
            const ids = [`x${at}`, `y${at}`];
            await check.run(ctx('connect', facts, ids[0]), signal);
            const r = await check.run(ctx('connect', facts, ids[1]), signal);
            for (const id of ids) await check.end!(id);
            return r.facts['ratelimit.exceeded'];
        };
        assert.deepEqual(await other(149_999), ['conns']);
        assert.deepEqual(await other(150_000), []);
        await check.end!('renewing');
    });

    it('takes every open session’s leases again when the store is ready again (Redis restarted empty): one call per session', async () => {
        let backend = createMemoryStore();
        let ready: (() => void) | undefined;
        const calls: string[][] = [];
        const store: LimitStore = {
            ...backend,
            stage: (ops: readonly StageOp[], nowMs: number) => {
                calls.push(ops.map((o) => `${o.op} ${'key' in o ? o.key : o.triplet}`));
                return backend.stage(ops, nowMs);
            },
            release: (key: string, holder: string) => backend.release(key, holder),
            onReady: (listener: () => void) => {
                ready = listener;
            },
        };
        const { check } = make(store);
        const connect = (id: string) => check.run(ctx('connect', { 'client.ip': '192.0.2.60' }, id), signal);
        assert.deepEqual((await connect('a')).facts['ratelimit.exceeded'], []);
        assert.deepEqual((await connect('b')).facts['ratelimit.exceeded'], []);
        assert.ok(ready, 'the check listens for the store being ready');
        backend = createMemoryStore(); // every lease is gone
        calls.length = 0;
        ready();
        ready(); // ready twice before the renewals answered: still one call per session
        await new Promise((resolve) => setImmediate(resolve));
        assert.deepEqual(calls, [['acquire conns|192.0.2.60'], ['acquire conns|192.0.2.60']]);
        assert.deepEqual((await connect('c')).facts['ratelimit.exceeded'], ['conns'], 'both sessions count again');
        for (const id of ['a', 'b', 'c']) await check.end!(id);
    });

    it('greylists the recipient being checked', async () => {
        const { check } = make(createMemoryStore());
        const facts = {
            ...mailFacts,
            'rcpt.to': ['x@other.example', 'ann@grey.example'],
            'rcpt.domain': 'grey.example',
        };
        const r = await check.run(ctx('rcpt', facts), signal);
        assert.equal(r.facts['greylist.id'], 'grey');
        assert.equal(r.facts['greylist.result'], 'new');
        assert.equal(r.facts['greylist.retry_after'], 300);
        const other = await check.run(
            ctx('rcpt', { ...facts, 'rcpt.to': ['x@other.example'], 'rcpt.domain': 'other.example' }),
            signal,
        );
        assert.deepEqual(
            [other.facts['greylist.id'], other.facts['greylist.result'], other.facts['greylist.retry_after']],
            [null, 'skipped', null],
        );
    });

    it('applies each limit’s onError when the store fails', async () => {
        const port = await freePort();
        const store = createRedisStore({
            url: `redis://127.0.0.1:${port}`,
            commandTimeoutMs: 100,
            connectTimeoutMs: 100,
        });
        try {
            const { check, metrics } = make(store);
            const mail = await check.run(ctx('mail', mailFacts), signal);
            assert.deepEqual(mail.facts, {
                'ratelimit.exceeded': [],
                'ratelimit.monitor': [],
                'ratelimit.error': ['strict'],
                'ratelimit.error_allowed': ['sender', 'watch'],
                'ratelimit.retry_after': null,
            });
            const connect = await check.run(ctx('connect', { 'client.ip': '192.0.2.1' }), signal);
            assert.deepEqual(connect.facts['ratelimit.error'], [], 'onError allow: the connection goes on');
            assert.deepEqual(connect.facts['ratelimit.error_allowed'], ['conns']);
            // The ids of the earlier stages (carried in the facts) are kept, each once.
            const carried = { ...mailFacts, 'ratelimit.error_allowed': ['conns', 'sender'] };
            const later = await check.run(ctx('mail', carried), signal);
            assert.deepEqual(later.facts['ratelimit.error_allowed'], ['conns', 'sender', 'watch']);
            const rcpt = await check.run(
                ctx('rcpt', { ...mailFacts, 'rcpt.to': ['ann@grey.example'], 'rcpt.domain': 'grey.example' }),
                signal,
            );
            assert.equal(rcpt.facts['greylist.result'], 'error');
            // the greylisting entry let the mail through too: named with the limits that did
            assert.ok((rcpt.facts['ratelimit.error_allowed'] as string[]).includes('grey'));
            const values = (await metrics.ratelimitDecisions.get()).values
                .filter((v) => v.value > 0)
                .map((v) => `${v.labels.limit} ${v.labels.result}`);
            assert.deepEqual(values.sort(), [
                'conns error_allowed',
                'greylist error_allowed',
                'sender error_allowed',
                'strict error_tempfail',
                'watch error_allowed',
            ]);
            const decision = set.decide('mail', { ...mailFacts, ...mail.facts });
            assert.equal(decision.action, 'tempfail');
            assert.equal(decision.reply?.code, 451);
        } finally {
            await store.close();
        }
    });
});

describe('ratelimit check: new greylisting records per client network', () => {
    const set = rules(`greylist:
  - { id: grey, when: { rcpt.domain: { domain: [grey.example] } }, delay: 5m, retryWindow: 4h }
  - { id: watch, when: { rcpt.domain: { domain: [watch.example] } }, delay: 5m, retryWindow: 4h, mode: monitor }
`);
    const clock = 1_000_000_000;

    for (const kind of ['memory', 'redis'] as const) {
        it(`${kind} store: 1000 an hour per IPv6 /48, whatever its /64s; past that let through, not recorded`, async () => {
            const redis = kind === 'redis' ? await startRedis() : null;
            const store = redis ? createRedisStore({ url: redis.url, commandTimeoutMs: 2_000 }) : createMemoryStore();
            try {
                if (redis) await (store as ReturnType<typeof createRedisStore>).waitUntilReady(5_000);
                const metrics = createMetrics('test');
                let now = clock;
                const check = createRateLimitCheck({
                    store,
                    declarations: () => set,
                    metrics,
                    now: () => now,
                    instanceId: 'test',
                    storeTimeoutMs: 2_000,
                });
                const rcpt = async (ip: string, to: string): Promise<Facts> => {
                    const facts = { 'client.ip': ip, 'mail.from': 'a@b.example', 'rcpt.to': [to] };
                    const f = { ...facts, 'rcpt.domain': to.slice(to.indexOf('@') + 1) };
                    const r = await check.run(ctx('rcpt', f), signal);
                    return { ...f, ...r.facts };
                };
                const hosts = (n: number) => `2001:db8:5:${n.toString(16)}::1`;
                for (const domain of ['grey.example', 'watch.example']) {
                    // a new /64 of the /48 for every recipient: the /64 counts of the limits do not see them together
                    for (let i = 0; i < 1000; i++)
                        assert.equal((await rcpt(hosts(i), `u${i}@${domain}`))['greylist.result'], 'new', `${i}`);
                }
                // another /64 of that /48 (a neighbour): not recorded, so not deferred either, as
                // its retry could never pass
                const capped = await rcpt(hosts(5000), 'late@grey.example');
                assert.equal(capped['greylist.result'], 'capped');
                assert.equal(capped['greylist.retry_after'], null);
                assert.equal(set.decide('rcpt', capped).action, 'accept');
                // mode: monitor the same, counted alike
                const watched = await rcpt(hosts(5000), 'late@watch.example');
                assert.equal(watched['greylist.result'], 'capped');
                assert.equal(set.decide('rcpt', watched).action, 'accept');
                // not recorded: a retry after the delay is new, not a pass (the cap has room again by then)
                now += 5 * 60_000;
                assert.equal((await rcpt(hosts(5000), 'late@grey.example'))['greylist.result'], 'new');
                assert.equal((await rcpt(hosts(0), 'u0@grey.example'))['greylist.result'], 'pass');
                // another /48 has a cap of its own
                now = clock;
                assert.equal((await rcpt('2001:db8:6::1', 'x@grey.example'))['greylist.result'], 'new');
                const counted = (await metrics.ratelimitDecisions.get()).values
                    .filter((v) => v.value > 0)
                    .map((v) => `${v.labels.result} ${v.value}`);
                assert.deepEqual(counted.sort(), ['capped 2', 'monitor_new 1000', 'new 1002', 'pass 1']);
            } finally {
                await store.close();
                await redis?.stop();
            }
        });
    }
});

describe('ratelimit check: new greylisting records of an entry, all networks together', () => {
    const set = rules(`greylist:
  - { id: grey, when: { rcpt.domain: { domain: [grey.example] } }, delay: 5m, retryWindow: 2d }
`);
    it('memory store: 10,000 an hour from any number of networks; past that let through, not recorded', async () => {
        const store = createMemoryStore();
        const metrics = createMetrics('test');
        const check = createRateLimitCheck({
            store,
            declarations: () => set,
            metrics,
            now: () => 1_000_000_000,
            instanceId: 'test',
            storeTimeoutMs: 2_000,
        });
        const rcpt = async (ip: string, to: string): Promise<Facts> => {
            const f = { 'client.ip': ip, 'mail.from': 'a@b.example', 'rcpt.to': [to], 'rcpt.domain': 'grey.example' };
            return { ...f, ...(await check.run(ctx('rcpt', f), signal)).facts };
        };
        // 20 /24s, 500 new triplets each: each network well under its own cap of 1000
        for (let i = 0; i < 10_000; i++) {
            const r = await rcpt(`198.51.${Math.floor(i / 500)}.1`, `u${i}@grey.example`);
            assert.equal(r['greylist.result'], 'new', `${i}`);
        }
        const late = await rcpt('203.0.113.9', 'late@grey.example');
        assert.equal(late['greylist.result'], 'capped_global');
        assert.equal(late['greylist.retry_after'], null);
        assert.equal(set.decide('rcpt', late).action, 'accept');
        const counted = (await metrics.ratelimitDecisions.get()).values
            .filter((v) => v.value > 0)
            .map((v) => `${v.labels.result} ${v.value}`);
        assert.deepEqual(counted.sort(), ['capped_global 1', 'new 10000']);
        await store.close();
    });
});

describe('ratelimit check: greylisting records in monitor mode', () => {
    const set = rules(`greylist:
  - { id: watch, when: { rcpt.domain: { domain: [watch.example] } }, delay: 5m, retryWindow: 4h, mode: monitor }
`);
    const clock = 1_000_000_000;

    for (const kind of ['memory', 'redis'] as const) {
        it(`${kind} store: kept for the retry window only for a message the upstream accepted; otherwise for the delay`, async () => {
            const redis = kind === 'redis' ? await startRedis() : null;
            const store = redis ? createRedisStore({ url: redis.url, commandTimeoutMs: 2_000 }) : createMemoryStore();
            const raw = redis ? new Redis(redis.url) : null;
            try {
                if (redis) await (store as ReturnType<typeof createRedisStore>).waitUntilReady(5_000);
                let now = clock;
                const check = createRateLimitCheck({
                    store,
                    declarations: () => set,
                    metrics: createMetrics('test'),
                    now: () => now,
                    instanceId: 'test',
                    storeTimeoutMs: 2_000,
                });
                const mail = { 'client.ip': '192.0.2.1', 'mail.from': 'a@b.example' };
                const rcpt = async (session: string, to: string): Promise<FactValue> => {
                    const facts = { ...mail, 'rcpt.to': [to], 'rcpt.domain': 'watch.example' };
                    return (await check.run(ctx('rcpt', facts, session), signal)).facts['greylist.result']!;
                };
                /** Milliseconds the triplet's record has to live in Redis (the memory store keeps no real TTL). */
                const ttl = async (to: string) => raw!.pttl(`mw:glt:v1:{watch|192.0.2.0/24|a@b.example|${to}}`);
                // one message: the upstream accepts it for ann and bob, refuses nobody
                await check.run(ctx('mail', mail, 'm1'), signal);
                for (const to of ['ann@watch.example', 'nobody@watch.example', 'bob@watch.example'])
                    assert.equal(await rcpt('m1', to), 'new');
                if (raw)
                    for (const to of ['ann', 'nobody', 'bob']) assert.ok((await ttl(`${to}@watch.example`)) <= 300_000);
                // a transaction abandoned (a new MAIL) keeps nothing
                await check.run(ctx('mail', mail, 'm2'), signal);
                assert.equal(await rcpt('m2', 'carl@watch.example'), 'new');
                await check.run(ctx('mail', mail, 'm2'), signal);
                check.delivered!('m2', ['carl@watch.example']);
                now += 60_000;
                check.delivered!('m1', ['ann@watch.example', 'bob@watch.example']);
                if (raw) {
                    // the memory store keeps them at once; Redis when the call (sent, not awaited) arrives
                    await until('the records are kept', async () => (await ttl('bob@watch.example')) > 300_000);
                    const kept = await ttl('ann@watch.example');
                    assert.ok(
                        kept > 4 * 3_600_000 - 120_000 && kept <= 4 * 3_600_000 + 1,
                        `kept for the retry window: ${kept}`,
                    );
                    assert.ok((await ttl('nobody@watch.example')) <= 300_000);
                }
                // after the delay, the next message of a kept triplet counts as a pass (what enforcing would do)
                now = clock + 5 * 60_000;
                assert.equal(await rcpt('m3', 'ann@watch.example'), 'pass');
                assert.equal(await rcpt('m3', 'bob@watch.example'), 'pass');
                assert.equal(await rcpt('m3', 'nobody@watch.example'), 'new');
                assert.equal(await rcpt('m3', 'carl@watch.example'), 'new');
            } finally {
                raw?.disconnect();
                await store.close();
                await redis?.stop();
            }
        });
    }
});
