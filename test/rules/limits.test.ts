/**
 * `limits:` and `greylist:` in rule files: what they compile to (stage, windows, key parts,
 * byte units), the implicit rules they stand for (first in their stage, their replies with
 * the retry time, monitor mode, store errors, a message too big for a byte limit), and
 * `cases:` naming them. Loading and evaluation only; the counting is tested in test/limits.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { loadRules, runCases, type RuleSet } from '../../src/rules/index.ts';
import { parseRate } from '../../src/rules/limits.ts';
import type { Facts } from '../../src/types.ts';
import { cleanup, folderWith, relativeIssues } from './helpers.ts';

after(cleanup);

function load(files: Record<string, string>): RuleSet {
    const dir = folderWith(files);
    const r = loadRules(dir, { softReject: false });
    assert.deepEqual(relativeIssues(r.issues, dir), []);
    return r.ruleSet!;
}

const LIMITS = `limits:
  - { id: sender-rate, key: mail.from, rate: 100/1h }
  - { id: ip-rcpts, key: client.ip/24, rate: [200/1m, 2000/1h], per: recipient, ipv6Prefix: 48 }
  - { id: login-rate, key: auth.user, rate: 500/1d, when: { listener.mode: submission }, onError: tempfail }
  - { id: ip-conns, key: client.ip, concurrency: 10, onError: tempfail }
  - { id: big-senders, key: mail.from.domain, rate: 200MB/1h, per: byte, mode: monitor, onError: tempfail }
  - { id: huge-senders, key: [mail.from.domain, rcpt.to], rate: [10GB/1d, 2MB/1s], per: byte }
  - { id: everyone, key: global, rate: 20/s, per: connection }
greylist:
  - { id: greylist, when: { iprev.result: { ne: pass } }, delay: 5m, retryWindow: 4h, expire: 36d, autoAllowAfter: 5 }
  - { id: greylist-strict, onError: tempfail }
rules:
  - { id: allow-all-mail, stage: mail, action: accept }
  - { id: allow-all-rcpt, stage: rcpt, action: accept }
`;

describe('limits in rule files', () => {
    it('compile each line into a limit counted at the right stage', () => {
        const set = load({ '10-limits.yaml': LIMITS });
        const byId = new Map(set.limits.map((l) => [l.id, l]));
        const s = byId.get('sender-rate')!;
        assert.equal(s.stage, 'mail');
        assert.equal(s.per, 'message');
        assert.deepEqual(s.windows, [{ limit: 100, periodMs: 3_600_000 }]);
        assert.deepEqual(s.key, [{ kind: 'fact', fact: 'mail.from', type: 'address', delimiter: '+' }]);
        const ip = byId.get('ip-rcpts')!;
        assert.equal(ip.stage, 'rcpt');
        assert.deepEqual(ip.key, [{ kind: 'ip', fact: 'client.ip', v4: 24, v6: 48 }]);
        assert.equal(ip.rateText, '200/1m, 2000/1h');
        const conns = byId.get('ip-conns')!;
        assert.equal(conns.stage, 'connect');
        assert.equal(conns.concurrency, 10);
        assert.equal(conns.windows, null);
        assert.deepEqual(conns.key, [{ kind: 'ip', fact: 'client.ip', v4: 32, v6: 64 }]);
        const big = byId.get('big-senders')!;
        assert.equal(big.stage, 'data');
        assert.equal(big.unit, 1, 'exact bytes fit');
        assert.deepEqual(big.windows, [{ limit: 200 * 1024 * 1024, periodMs: 3_600_000 }]);
        const huge = byId.get('huge-senders')!;
        assert.equal(huge.unit, 1024, '10GB a day does not fit in exact bytes: counted in KB');
        assert.deepEqual(huge.windows, [
            { limit: 10 * 1024 * 1024, periodMs: 86_400_000 },
            { limit: 2048, periodMs: 1000 },
        ]);
        assert.equal(huge.keyText, 'mail.from.domain + rcpt.to');
        assert.deepEqual(byId.get('everyone')!.key, [{ kind: 'global' }]);
        assert.deepEqual(
            set.greylists.map((g) => [g.id, g.delayMs, g.retryWindowMs, g.expireMs, g.autoAllowAfter, g.onError]),
            [
                ['greylist', 300_000, 14_400_000, 36 * 86_400_000, 5, 'allow'],
                ['greylist-strict', 300_000, 2 * 86_400_000, 35 * 86_400_000, 5, 'tempfail'],
            ],
        );
    });

    it('stand for implicit tempfail rules placed first in their stage', () => {
        const set = load({ '10-limits.yaml': LIMITS });
        const implicit = set.rules.filter((r) => r.implicit);
        assert.deepEqual(
            implicit.map((r) => `${r.id}@${r.stage}`),
            [
                'sender-rate@mail',
                'ip-rcpts@rcpt',
                'login-rate@mail',
                'ip-conns@connect',
                'big-senders@data',
                'huge-senders@data',
                'everyone@connect',
                'greylist@rcpt',
                'greylist-strict@rcpt',
            ],
        );
        assert.ok(
            set.rules.slice(0, implicit.length).every((r) => r.implicit),
            'before every written rule',
        );
        const trace = set.evaluate('mail', { 'ratelimit.exceeded': [] }).trace;
        assert.deepEqual(
            trace.map((t) => t.id),
            ['sender-rate', 'login-rate', 'allow-all-mail'],
        );
        assert.match(trace[0]!.detail, /^ratelimit\.exceeded = \[\] \(does not hold "sender-rate"\) ✗$/);
        assert.equal(trace[0]!.line, 2);
    });

    it('refuse with 450 4.7.1 and when to retry, before any allow rule', () => {
        const set = load({ '10-limits.yaml': LIMITS });
        const ev = set.evaluate('mail', { 'ratelimit.exceeded': ['sender-rate'], 'ratelimit.retry_after': 36 });
        assert.equal(ev.decision.action, 'tempfail');
        assert.equal(ev.terminal, 'sender-rate');
        assert.deepEqual(ev.decision.reply, {
            code: 450,
            enhanced: '4.7.1',
            text: 'Rate limit reached: too many messages from this sender address. Please try again in 36 seconds (limit sender-rate).',
        });
        assert.deepEqual(ev.matchedRules, [{ id: 'sender-rate', action: 'tempfail', mode: 'enforce' }]);
        const rcpt = set.evaluate('rcpt', { 'ratelimit.exceeded': ['ip-rcpts'], 'ratelimit.retry_after': 1 });
        assert.match(
            rcpt.decision.reply!.text,
            // the IPv6 prefix is the limit's own (ipv6Prefix: 48)
            /^Rate limit reached: too many recipients from your network \(\/24 or IPv6 \/48\)\./,
        );
    });

    it('refuse connections with 421 4.7.0', () => {
        const set = load({ '10-limits.yaml': LIMITS });
        const conc = set.evaluate('connect', { 'ratelimit.exceeded': ['ip-conns'], 'ratelimit.retry_after': 60 });
        assert.deepEqual(conc.decision.reply, {
            code: 421,
            enhanced: '4.7.0',
            text: 'Too many simultaneous connections from your IP address (or IPv6 /64). Please close other connections and try again in 60 seconds (limit ip-conns).',
        });
        const rate = set.evaluate('connect', { 'ratelimit.exceeded': ['everyone'], 'ratelimit.retry_after': 1 });
        assert.match(rate.decision.reply!.text, /^Rate limit reached: too many connections for this server in total\./);
        assert.equal(rate.decision.reply!.code, 421);
    });

    it('answer a store failure with onError: tempfail as a temporary problem, 451 (421 at connect)', () => {
        const set = load({ '10-limits.yaml': LIMITS });
        const mail = set.evaluate('mail', { 'ratelimit.exceeded': [], 'ratelimit.error': ['login-rate'] });
        assert.equal(mail.terminal, 'login-rate');
        assert.equal(mail.decision.reply!.code, 451);
        assert.equal(mail.decision.reply!.enhanced, '4.7.1');
        assert.match(mail.decision.reply!.text, /^Temporary problem applying a sending limit;/);
        const conn = set.evaluate('connect', { 'ratelimit.error': ['ip-conns'] });
        assert.equal(conn.decision.reply!.code, 421);
        // A limit with onError: allow is never refused for an error (the check never lists it).
        const allow = set.evaluate('mail', { 'ratelimit.error': ['sender-rate'] });
        assert.equal(allow.decision.action, 'accept');
    });

    it('count monitor-mode limits as would-tempfail and change nothing', () => {
        const set = load({ '10-limits.yaml': LIMITS });
        const ev = set.evaluate('data', { 'ratelimit.monitor': ['big-senders'], 'ratelimit.retry_after': 5 });
        assert.equal(ev.decision.action, 'accept');
        assert.deepEqual(ev.matchedRules, [{ id: 'big-senders', action: 'tempfail', mode: 'monitor' }]);
        assert.match(ev.decision.reason, /monitor: would tempfail \(big-senders\)/);
        const errored = set.evaluate('data', { 'ratelimit.error': ['big-senders'] });
        assert.equal(errored.decision.action, 'accept', 'a monitor limit never refuses, errors included');
    });

    it('say where a sending identity is counted, and join other key parts with "and"', () => {
        const set = load({
            '10-limits.yaml': `limits:
  - { id: s-net, key: [mail.from, client.ip/24], rate: 1/1h, per: recipient }
  - { id: login-ip, key: [auth.user, client.ip], rate: 1/1h, per: recipient }
  - { id: domain-net, key: [rcpt.domain, client.ip/24], rate: 1/1h, per: recipient }
  - { id: net-ip, key: [client.ip/24, client.ip], rate: 1/1h, per: recipient }
`,
        });
        const text = (id: string): string =>
            set.evaluate('rcpt', { 'ratelimit.exceeded': [id], 'ratelimit.retry_after': 1 }).decision.reply!.text;
        assert.match(
            text('s-net'),
            /too many recipients from this sender address on your network \(\/24 or IPv6 \/64\)\./,
        );
        assert.match(text('login-ip'), /too many recipients for your login at your IP address \(or IPv6 \/64\)\./);
        assert.match(text('domain-net'), /to this recipient domain and from your network \(\/24 or IPv6 \/64\)\./);
        assert.match(
            text('net-ip'),
            /from your network \(\/24 or IPv6 \/64\) and from your IP address \(or IPv6 \/64\)\./,
        );
    });

    it('say so when one message is larger than a byte limit allows at all', () => {
        const set = load({ '10-limits.yaml': LIMITS });
        const facts: Facts = { 'ratelimit.exceeded': ['huge-senders'], 'message.size': 3 * 1024 * 1024 };
        const ev = set.evaluate('data', { ...facts, 'ratelimit.retry_after': 86_400 });
        assert.equal(ev.decision.reply!.code, 450);
        assert.match(
            ev.decision.reply!.text,
            /^Rate limit reached: this message alone is larger than the limit huge-senders allows from this sender domain and to this recipient \(10GB\/1d, 2MB\/1s\)/,
        );
        const small = set.evaluate('data', { ...facts, 'message.size': 1000, 'ratelimit.retry_after': 3 });
        assert.match(small.decision.reply!.text, /^Rate limit reached: too much mail \(in bytes\)/);
    });

    it('greylist new and early triplets with 450 4.7.1 and the wait (RFC 6647)', () => {
        const set = load({ '10-limits.yaml': LIMITS });
        const facts = { 'greylist.id': 'greylist', 'greylist.result': 'early', 'greylist.retry_after': 240 };
        const ev = set.evaluate('rcpt', facts);
        assert.equal(ev.terminal, 'greylist');
        assert.equal(ev.decision.reply!.code, 450);
        assert.match(ev.decision.reply!.text, /^Greylisted: please try again in 240 seconds \(RFC 6647\)\./);
        for (const result of ['pass', 'known-client', 'skipped', 'error']) {
            const r = set.evaluate('rcpt', { ...facts, 'greylist.result': result });
            assert.equal(r.decision.action, 'accept', result);
        }
        const other = set.evaluate('rcpt', { ...facts, 'greylist.id': 'greylist-strict', 'greylist.result': 'error' });
        assert.equal(other.terminal, 'greylist-strict');
        assert.equal(other.decision.reply!.code, 451);
        assert.match(other.decision.reply!.text, /^Temporary problem applying greylisting;/);
    });

    it('can be named by cases, and a case naming an unknown limit is reported', () => {
        const dir = folderWith({
            '10-limits.yaml': `${LIMITS}cases:
  - name: a sender over its rate
    stage: mail
    facts: { mail.from: a@example.org, ratelimit.exceeded: [sender-rate], ratelimit.retry_after: 36 }
    expect: { action: tempfail, rule: sender-rate }
  - name: greylisted
    stage: rcpt
    facts: { greylist.id: greylist, greylist.result: new, greylist.retry_after: 300 }
    expect: { action: tempfail, rule: greylist }
`,
        });
        const r = loadRules(dir, { softReject: false });
        assert.deepEqual(r.issues, []);
        assert.deepEqual(runCases(r.ruleSet!), { passed: 2, failed: [] });
        const bad = folderWith({
            '10-limits.yaml': `${LIMITS}cases:
  - { name: x, stage: mail, facts: {}, expect: { action: accept, rule: sender-rat } }
`,
        });
        assert.deepEqual(relativeIssues(loadRules(bad, { softReject: false }).issues, bad), [
            '10-limits.yaml:16:72: no rule has the id "sender-rat" (did you mean "sender-rate"?)',
        ]);
    });

    it('reload into a rule set without limits when they are removed', () => {
        const set = load({ '10-rules.yaml': 'rules:\n  - { id: a, action: accept }\n' });
        assert.deepEqual(set.limits, []);
        assert.deepEqual(set.greylists, []);
    });
});

describe('parseRate', () => {
    it('reads counts and sizes per period', () => {
        assert.deepEqual(parseRate('100/1h', false), { limit: 100, periodMs: 3_600_000 });
        assert.deepEqual(parseRate('20/m', false), { limit: 20, periodMs: 60_000 });
        assert.deepEqual(parseRate(' 5 / 30s ', false), { limit: 5, periodMs: 30_000 });
        assert.deepEqual(parseRate('200MB/1h', true), { limit: 200 * 1024 * 1024, periodMs: 3_600_000 });
        assert.deepEqual(parseRate('1500/1d', true), { limit: 1500, periodMs: 86_400_000 });
    });

    it('refuses what is not a rate', () => {
        for (const [text, bytes] of [
            ['100', false],
            ['100/1h/2', false],
            ['0/1h', false],
            ['1.5/1h', false],
            ['10MB/1h', false],
            ['x/1h', true],
            ['100/500ms', false],
            ['100/400d', false],
            ['100/hour', false],
        ] as const) {
            assert.ok('error' in parseRate(text, bytes), text);
        }
    });
});
