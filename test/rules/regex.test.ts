/**
 * Regular expressions in rules run on RE2: matching time is linear in the input whatever the
 * pattern (no catastrophic backtracking), backtracking-only features are refused at load,
 * compiled programs and the engine instances of a dropped rule set are freed, and an engine
 * instance that runs out of its fixed heap is replaced without wrong answers.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, describe, it } from 'node:test';
import { loadRules, loadRuleSet } from '../../src/rules/index.ts';
import { ENGINE_HEAP_BYTES, RegexArena, describeRe2Error } from '../../src/rules/regex.ts';
import { cleanup, folderWith, relativeIssues, seeded } from './helpers.ts';

after(cleanup);

function rulesWith(pattern: string): string {
    return `rules:\n  - id: r\n    stage: helo\n    when: { helo: { matches: '${pattern}' } }\n    action: reject\n`;
}

describe('RE2 patterns', () => {
    it('^(a+)+$ against 100,000 a followed by b finishes, and does not match', (t) => {
        const set = loadRuleSet(folderWith({ '10.yaml': rulesWith('^(a+)+$') }), { softReject: false });
        const input = 'a'.repeat(100_000) + 'b';
        const start = process.hrtime.bigint();
        const decision = set.decide('helo', { helo: input });
        const ms = Number(process.hrtime.bigint() - start) / 1e6;
        t.diagnostic(`^(a+)+$ on ${input.length} characters: ${ms.toFixed(1)} ms`);
        assert.equal(decision.action, 'accept');
        assert.equal(set.decide('helo', { helo: 'a'.repeat(100_000) }).action, 'reject');
        // (x+x+)+y and friends: also linear.
        const nested = loadRuleSet(folderWith({ '10.yaml': rulesWith('(x+x+)+y') }), { softReject: false });
        assert.equal(nested.decide('helo', { helo: 'x'.repeat(50_000) }).action, 'accept');
    });

    it('refuses backreferences, lookahead, lookbehind and JavaScript-style named groups at load', () => {
        for (const [pattern, message] of [
            ['^(a+)\\1$', 'invalid escape sequence: \\1 (RE2 has no backreferences)'],
            ['mail(?=\\.example)', 'invalid perl operator: (?= (RE2 has no lookahead or lookbehind)'],
            ['(?<!x)mail', 'invalid perl operator: (?< (RE2 has no lookahead or lookbehind)'],
            ['(?<host>mail)', 'invalid perl operator: (?< (write named groups as (?P<name>…))'],
        ]) {
            const dir = folderWith({ '10.yaml': rulesWith(pattern!) });
            const r = loadRules(dir, { softReject: false });
            assert.equal(r.ruleSet, null);
            assert.deepEqual(relativeIssues(r.issues, dir), [
                `10.yaml:4:30: matches: "${pattern}" is not a valid RE2 pattern: ${message}`,
            ]);
        }
        assert.equal(describeRe2Error('missing )'), 'missing )');
    });

    it('refuses a pattern that matches every value (an allow rule with it would accept every sender), not ^$', () => {
        for (const pattern of ['@partner\\.example$|', '(@partner\\.example)?$', 'x*', '^|y']) {
            const dir = folderWith({ '10.yaml': rulesWith(pattern) });
            const r = loadRules(dir, { softReject: false });
            assert.equal(r.ruleSet, null, pattern);
            const shown = pattern.replace(/\\\\/g, '\\');
            assert.deepEqual(relativeIssues(r.issues, dir), [
                `10.yaml:4:30: matches: "${shown}" matches every value (an empty alternative, or everything optional); use { exists: true } if that is meant`,
            ]);
        }
        // patterns that match the empty value, and only some others, are what they say
        for (const pattern of ['^$', '^(postmaster@.*)?$', '^(localhost)?$']) {
            const r = loadRules(folderWith({ '10.yaml': rulesWith(pattern) }), { softReject: false });
            assert.deepEqual(r.issues, [], pattern);
        }
    });

    it('ignores case, including outside ASCII, and finds matches anywhere unless anchored', () => {
        const arena = new RegexArena();
        const p = arena.add('stra(ss|ß)e');
        assert.ok('pattern' in p);
        assert.equal(p.pattern.test('Hauptstrasse 1'), true);
        assert.equal(p.pattern.test('HAUPTSTRASSE'), true);
        const e = arena.add('^é+$');
        assert.ok('pattern' in e);
        assert.equal(e.pattern.test('ÉéÉ'), true);
        assert.equal(e.pattern.test('xé'), false);
    });

    it('frees what it compiles: 5,000 compilations in one engine instance (about 40 MB if kept)', () => {
        const arena = new RegexArena();
        for (let i = 0; i < 5_000; i++) {
            assert.equal(arena.check(`^[a-z0-9._%+-]+@(?:mail|smtp)\\.example${i}\\.(?:com|net|org)$`), null);
        }
        assert.equal(arena.resets, 0);
    });

    it('frees the engine instances of a dropped rule set: 100 loads of a pattern list and a matches: (200 instances of 16 MB)', (t) => {
        // Each load makes two instances (one per pattern list, one for matches:), as a reload
        // does; the previous set is dropped. Their heaps are WebAssembly memory, counted in
        // process.memoryUsage().external. Run apart, to measure with --expose-gc.
        const dir = folderWith({
            'lists/p.txt': '^spam@x\\.example$\nbulk[0-9]+\\.example\n',
            '10.yaml': [
                'lists:',
                '  p: { type: pattern, file: lists/p.txt }',
                'rules:',
                '  - { id: l, stage: mail, when: { mail.from: { list: p } }, action: reject }',
                "  - { id: m, stage: helo, when: { helo: { matches: '^bad\\.' } }, action: reject }",
            ].join('\n'),
        });
        const code = `
            import { loadRuleSet } from ${JSON.stringify(new URL('../../src/rules/index.ts', import.meta.url).href)};
            const external = () => { gc(); gc(); return process.memoryUsage().external; };
            let set = loadRuleSet(${JSON.stringify(dir)}, { softReject: false });
            const before = external();
            for (let i = 0; i < 100; i++) {
                set = loadRuleSet(${JSON.stringify(dir)}, { softReject: false });
                if (set.decide('mail', { 'mail.from': 'spam@x.example' }).action !== 'reject') throw new Error('list');
                if (set.decide('helo', { helo: 'bad.example' }).action !== 'reject') throw new Error('matches');
            }
            console.log(external() - before);
        `;
        const child = spawnSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', code], {
            encoding: 'utf8',
        });
        assert.equal(child.status, 0, child.stderr);
        const grown = Number(child.stdout.trim());
        t.diagnostic(`external memory after 100 rule loads: ${(grown / 2 ** 20).toFixed(0)} MB more`);
        // kept, they would be 3,200 MB; the live set holds 32 MB
        assert.ok(grown < 20 * ENGINE_HEAP_BYTES, `${(grown / 2 ** 20).toFixed(0)} MB more after 100 loads`);
    });

    it('survives patterns whose automata fill the engine heap, with right answers', (t) => {
        // (a|b)*a(a|b){k}c: the DFA has about 2^k states, so random input fills its cache.
        const rand = seeded(7);
        const arena = new RegexArena();
        const ks = Array.from({ length: 20 }, (_, i) => 18 + (i % 8));
        const patterns = ks.map((k) => {
            const r = arena.add(`(?:a|b)*a(?:a|b){${k}}c`);
            assert.ok('pattern' in r);
            return r.pattern;
        });
        // Reference: is there a c preceded by exactly k a/b letters, the first of them an a?
        const expected = (s: string, k: number): boolean => {
            for (let j = s.indexOf('c'); j >= 0; j = s.indexOf('c', j + 1)) {
                const start = j - k - 1;
                if (start >= 0 && s[start] === 'a' && !s.slice(start + 1, j).includes('c')) return true;
            }
            return false;
        };
        let checked = 0;
        for (let round = 0; round < 12; round++) {
            let s = '';
            for (let i = 0; i < 2000; i++) s += rand() < 0.5 ? 'a' : 'b';
            if (round % 3 === 0) s += 'c';
            else if (round % 3 === 1) s += 'a'.repeat(20) + 'c';
            patterns.forEach((p, i) => {
                assert.equal(p.test(s), expected(s, ks[i]!));
                checked++;
            });
        }
        t.diagnostic(`${checked} matches checked; engine instances replaced: ${arena.resets}`);
    });
});
