/**
 * Evaluation beyond the golden cases: the per-rule trace that `mailwarden explain` prints,
 * matched rules for `rule_hits_total`, decide() agreeing with evaluate(), reasons for logs,
 * reply softening, deep freezing, templates and the facts catalogue.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { FACTS } from '../../src/rules/facts.ts';
import { loadRuleSet, softenReply, withRuleHits, type RuleHit, type RuleSet } from '../../src/rules/index.ts';
import { MAX_REPLY_TEXT, parseTemplate, renderTemplate, sanitizeText } from '../../src/rules/template.ts';
import type { Facts } from '../../src/types.ts';
import { cleanup, folderWith } from './helpers.ts';

after(cleanup);

const RULES = `lists:
  senders: { type: address, file: lists/senders.txt }
rules:
  - id: watch-helo
    mode: monitor
    when: { helo: { matches: '^localhost' } }
    action: reject
  - id: spf-tag
    when: { spf.result: fail, not: { dkim.aligned: true } }
    action: tag
    score: 5
    headers: { X-Reason: 'spf {spf.result}' }
  - id: dmarc-reject
    when:
      dmarc.result: fail
      dmarc.policy: { in: [reject] }
      any: [{ mail.from: { list: senders } }, { rcpt.to: { suffix: [example.com] } }]
    action: reject
    reply: { code: 550, enhanced: 5.7.1, text: 'DMARC failed for {header.from.domain}' }
  - id: never-reached
    action: quarantine
`;

function load(softReject = false): RuleSet {
    return loadRuleSet(folderWith({ '10.yaml': RULES, 'lists/senders.txt': 'bad@example.net\n' }), { softReject });
}

const FACTS_IN: Facts = {
    helo: 'localhost.localdomain',
    'spf.result': 'fail',
    'dmarc.result': 'fail',
    'dmarc.policy': 'reject',
    'mail.from': 'BAD@example.net',
    'rcpt.to': ['a@example.org'],
    'header.from.domain': 'example.net',
};

describe('evaluate', () => {
    it('traces every rule of the stage with a reason per condition', () => {
        const ev = load().evaluate('data', FACTS_IN);
        assert.deepEqual(
            ev.trace.map((e) => [e.id, e.mode, e.action, e.matched, e.skipped ?? null, e.line]),
            [
                ['watch-helo', 'monitor', 'reject', true, null, 4],
                ['spf-tag', 'enforce', 'tag', true, null, 8],
                ['dmarc-reject', 'enforce', 'reject', true, null, 13],
                ['never-reached', 'enforce', 'quarantine', false, 'after-terminal', 20],
            ],
        );
        assert.deepEqual(
            ev.trace.map((e) => e.detail),
            [
                'helo = "localhost.localdomain" (matches /^localhost/) ✓',
                'spf.result = "fail" (is fail) ✓; not (dkim.aligned = null (is not true) ✗) ✓',
                'dmarc.result = "fail" (is fail) ✓; dmarc.policy = "reject" (in [reject]) ✓; any of (mail.from = "BAD@example.net" (in list senders) ✓ | rcpt.to = ["a@example.org"] (no element is or is under example.com) ✗) ✓',
                'not evaluated: rule dmarc-reject ended evaluation',
            ],
        );
        assert.ok(ev.trace[0]!.file.endsWith('10.yaml'));
        assert.equal(ev.terminal, 'dmarc-reject');
        assert.deepEqual(ev.matchedRules, [
            { id: 'watch-helo', action: 'reject', mode: 'monitor' },
            { id: 'spf-tag', action: 'tag', mode: 'enforce' },
            { id: 'dmarc-reject', action: 'reject', mode: 'enforce' },
        ]);
        assert.deepEqual(ev.decision, {
            action: 'reject',
            rules: ['spf-tag', 'dmarc-reject'],
            score: 5,
            reason: 'rule dmarc-reject (reject); tagged by spf-tag (score 5); monitor: would reject (watch-helo)',
            reply: { code: 550, enhanced: '5.7.1', text: 'DMARC failed for example.net' },
            headers: [{ name: 'X-Reason', value: 'spf fail' }],
            monitor: ['watch-helo'],
        });
    });

    it('decide() returns what evaluate() decides, and no match is "no rule matched"', () => {
        const set = load();
        assert.deepEqual(set.decide('data', FACTS_IN), set.evaluate('data', FACTS_IN).decision);
        assert.deepEqual(set.decide('connect', {}), {
            action: 'accept',
            rules: [],
            score: 0,
            reason: 'no rule matched',
            headers: [],
        });
        assert.deepEqual(set.evaluate('connect', {}).trace, []);
        assert.deepEqual(set.evaluate('data', FACTS_IN, { trace: false }).trace, []);
    });

    it('softReject turns the reject into a tempfail with the 4xx reply', () => {
        const d = load(true).decide('data', FACTS_IN);
        assert.equal(d.action, 'tempfail');
        assert.deepEqual(d.reply, { code: 450, enhanced: '4.7.1', text: 'DMARC failed for example.net' });
        assert.match(d.reason, /softReject: reject turned into tempfail$/);
        assert.equal(load(true).evaluate('data', FACTS_IN, { softReject: false }).decision.action, 'reject');
        assert.deepEqual(softenReply({ code: 554, enhanced: '5.7.26', text: 't' }), {
            code: 454,
            enhanced: '4.7.26',
            text: 't',
        });
        assert.deepEqual(softenReply({ code: 451, enhanced: '4.7.1', text: 't' }), {
            code: 451,
            enhanced: '4.7.1',
            text: 't',
        });
    });

    it('withRuleHits reports every matched rule, monitor ones included', () => {
        const hits: RuleHit[] = [];
        const decider = withRuleHits(load(), (h) => hits.push(h));
        assert.equal(decider.decide('data', FACTS_IN).action, 'reject');
        assert.deepEqual(
            hits.map((h) => `${h.id}/${h.action}/${h.mode}`),
            ['watch-helo/reject/monitor', 'spf-tag/tag/enforce', 'dmarc-reject/reject/enforce'],
        );
    });

    it('is deeply frozen and never changes the facts', () => {
        const set = load();
        assert.ok(Object.isFrozen(set));
        assert.ok(Object.isFrozen(set.rules));
        assert.ok(Object.isFrozen(set.rules[1]!.headers));
        assert.ok(Object.isFrozen(set.lists));
        assert.throws(() => {
            (set.rules as unknown as unknown[]).push(1);
        });
        const facts = Object.freeze({ ...FACTS_IN });
        set.evaluate('data', facts);
        assert.deepEqual(facts, FACTS_IN);
    });
});

describe('subaddresses', () => {
    const SUB = `lists:
  vips: { type: address, file: lists/vips.txt }
rules:
  - { id: by-in, stage: rcpt, when: { rcpt.to: { in: [bob@example.test] } }, action: reject }
  - { id: by-eq, stage: mail, when: { mail.from: spam@example.net }, action: reject }
  - { id: by-list, stage: rcpt, when: { rcpt.to: { list: vips } }, action: tag }
`;
    const set = (delimiter?: string) =>
        loadRuleSet(folderWith({ '10.yaml': SUB, 'lists/vips.txt': 'carol@example.test\ndan+x@example.test\n' }), {
            softReject: false,
            ...(delimiter === undefined ? {} : { recipientDelimiter: delimiter }),
        });
    const rcpt = (s: RuleSet, to: string) => s.evaluate('rcpt', { 'rcpt.to': [to] }).matchedRules[0]?.id ?? null;
    const mail = (s: RuleSet, from: string) => s.evaluate('mail', { 'mail.from': from }).matchedRules[0]?.id ?? null;

    it('in, eq and address lists match an address by its base address too, as Postfix looks up user+ext@domain then user@domain', () => {
        const s = set();
        assert.equal(rcpt(s, 'bob@example.test'), 'by-in');
        assert.equal(rcpt(s, 'Bob+anything@EXAMPLE.test'), 'by-in');
        assert.equal(rcpt(s, 'bob+@example.test'), 'by-in');
        assert.equal(rcpt(s, '+bob@example.test'), null, 'a leading delimiter is no subaddress');
        assert.equal(rcpt(s, 'bobby@example.test'), null);
        assert.equal(mail(s, 'spam+1@example.net'), 'by-eq');
        assert.equal(rcpt(s, 'carol+2@example.test'), 'by-list');
        // an entry with a subaddress matches that subaddress only
        assert.equal(rcpt(s, 'dan+x@example.test'), 'by-list');
        assert.equal(rcpt(s, 'dan@example.test'), null);
        assert.equal(rcpt(s, 'dan+y@example.test'), null);
        // a quoted local part is read without its quotes, as Postfix reads it
        assert.equal(rcpt(s, '"bob+ x"@example.test'), 'by-in');
        assert.equal(rcpt(s, '"bob+(x)"@example.test'), 'by-in');
        assert.equal(mail(s, '"spam+ a"@example.net'), 'by-eq');
    });

    it('follows the configured delimiter, and none when it is empty', () => {
        assert.equal(rcpt(set('-'), 'bob-x@example.test'), 'by-in');
        assert.equal(rcpt(set('-'), 'bob+x@example.test'), null);
        assert.equal(rcpt(set(''), 'bob+x@example.test'), null);
    });
});

describe('matches and internationalised names', () => {
    const IDN = `lists:
  idn-patterns: { type: pattern, file: lists/p.txt }
rules:
  - { id: by-pattern, stage: mail, when: { mail.from: { matches: '@xn--bcher-kva\\.example$' } }, action: reject }
  - { id: by-domain-pattern, stage: mail, when: { client.ptr: { matches: '^mx\\.xn--mller-kva\\.example$' } }, action: reject }
  - { id: by-pattern-list, stage: mail, when: { mail.from.domain: { list: idn-patterns } }, action: reject }
  - { id: written, stage: mail, when: { mail.from: { matches: '@bücher\\.test$' } }, action: reject }
  - { id: written-domain, stage: mail, when: { mail.from.domain: { matches: '^straße\\.test$' } }, action: reject }
  - { id: by-u-list, stage: mail, when: { mail.from.domain: { list: u-patterns } }, action: reject }
`;
    const s = loadRuleSet(
        folderWith({
            '10.yaml': IDN.replace('lists:\n', 'lists:\n  u-patterns: { type: pattern, file: lists/u.txt }\n'),
            'lists/p.txt': '^xn--caf-dma\\.example$\n',
            'lists/u.txt': '^münchen\\.test$\n',
        }),
        { softReject: false },
    );
    const hit = (facts: Facts) => s.evaluate('mail', facts).matchedRules[0]?.id ?? null;

    it('tests an address or domain in its A-label form too, as in and domain compare it', () => {
        for (const from of ['a@xn--bcher-kva.example', 'a@bücher.example', 'A@BÜCHER.example']) {
            assert.equal(hit({ 'mail.from': from }), 'by-pattern', from);
        }
        assert.equal(hit({ 'mail.from': 'a@bucher.example' }), null);
        assert.equal(hit({ 'client.ptr': 'mx.müller.example' }), 'by-domain-pattern');
        assert.equal(hit({ 'mail.from.domain': 'café.example' }), 'by-pattern-list');
        // the form as written still matches a pattern written with the U-label
        assert.equal(hit({ 'mail.from': 'a@bücher.test' }), 'written');
    });

    it('tests an address or domain sent in A-labels in its U-label form too, as a pattern may be written', () => {
        for (const from of ['a@xn--bcher-kva.test', 'a@XN--BCHER-KVA.test']) {
            assert.equal(hit({ 'mail.from': from }), 'written', from);
        }
        assert.equal(hit({ 'mail.from.domain': 'xn--strae-oqa.test' }), 'written-domain');
        assert.equal(hit({ 'mail.from.domain': 'xn--mnchen-3ya.test' }), 'by-u-list');
        // an A-label that does not decode is only its own spelling
        assert.equal(hit({ 'mail.from': 'a@xn--zz.test' }), null);
    });
});

describe('templates', () => {
    it('parses placeholders and escaped braces', () => {
        const t = parseTemplate('a {x.y} {{literal}} b');
        assert.ok(!('error' in t));
        assert.deepEqual(t.parts, ['a ', { fact: 'x.y', offset: 3 }, ' {literal} b']);
        assert.deepEqual(t.facts, ['x.y']);
        assert.deepEqual(parseTemplate('a {b'), { error: 'unclosed "{" (write {{ for a literal brace)', offset: 2 });
        assert.deepEqual(parseTemplate('a } b'), { error: 'unexpected "}" (write }} for a literal brace)', offset: 2 });
        assert.deepEqual(parseTemplate('{not a name}'), {
            error: '"{not a name}" is not a fact name (write {{ for a literal brace)',
            offset: 0,
        });
    });

    it('renders lists, numbers and missing facts, and makes the result one safe line', () => {
        const t = parseTemplate('[{a}] [{b}] [{c}] [{d}]');
        assert.ok(!('error' in t));
        assert.equal(renderTemplate(t, { a: ['x', 'y'], b: 3, c: null }, 100), '[x, y] [3] [] []');
        assert.equal(sanitizeText('a\r\nb\u0000c\u2028d\u{1F600}e\x7f', 100), 'a b c?d?e ');
        const long = parseTemplate('x{a}');
        assert.ok(!('error' in long));
        const rendered = renderTemplate(long, { a: 'y'.repeat(10_000) + '\r\n250 OK' }, MAX_REPLY_TEXT);
        assert.equal(rendered.length, MAX_REPLY_TEXT);
        assert.match(rendered, /^[\x20-\x7e]+$/);
    });
});

describe('facts catalogue', () => {
    it('holds at least the facts the product contract names, each once, described', () => {
        const names = FACTS.map((f) => f.name);
        assert.equal(new Set(names).size, names.length);
        for (const required of [
            'listener',
            'listener.mode',
            'client.ip',
            'client.ptr',
            'tls',
            'helo',
            'auth.user',
            'mail.from',
            'mail.from.domain',
            'rcpt.to',
            'rcpt.domain',
            'rcpt.count',
            'header.from',
            'header.from.domain',
            'header.from.count',
            'spf.result',
            'spf.domain',
            'dkim.result',
            'dkim.domains',
            'dkim.aligned',
            'dmarc.result',
            'dmarc.policy',
            'dmarc.disposition',
            'dmarc.override',
            'arc.result',
            'arc.trusted',
            'message.size',
            'message.bare_newlines',
            'score',
            'local.sender',
        ]) {
            assert.ok(names.includes(required), required);
        }
        for (const f of FACTS) assert.ok(f.description.length > 10 && /^[A-Z]/.test(f.description), f.name);
        assert.ok(Object.isFrozen(FACTS) && Object.isFrozen(FACTS[0]));
    });
});
