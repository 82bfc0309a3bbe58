/**
 * The bad-rules corpus: each folder in test/fixtures/rules-errors/ is a broken rules folder
 * with an `expected-error` file holding exactly the lines `mailwarden check` must print
 * (`FILE:LINE:COL: message`, paths relative to the case folder), in order. A folder whose
 * only problem is a case that does not hold gets warnings (`FILE:LINE:COL: warning: …`).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { RuleError, checkRules, loadRuleSet } from '../../src/rules/index.ts';
import { MAX_YAML_NESTING } from '../../src/config/reader.ts';
import { FACTS } from '../../src/rules/facts.ts';
import { FIXTURES, cleanup, folderWith, relativeIssues } from './helpers.ts';

after(cleanup);

const CORPUS = path.join(FIXTURES, 'rules-errors');
const cases = fs
    .readdirSync(CORPUS)
    .filter((n) => fs.statSync(path.join(CORPUS, n)).isDirectory())
    .sort();

describe('bad rules corpus', () => {
    it('has at least 15 cases', () => assert.ok(cases.length >= 15, `${cases.length} cases`));

    for (const name of cases) {
        it(name, () => {
            const dir = path.join(CORPUS, name);
            const expected = fs.readFileSync(path.join(dir, 'expected-error'), 'utf8').trimEnd().split('\n');
            const actual = relativeIssues(checkRules(dir, { softReject: false }), dir);
            assert.deepEqual(actual, expected);
            // A folder that does not load throws RuleError carrying the same issues; one whose
            // cases do not hold loads (serve and reload use it; check warns, as they do).
            try {
                loadRuleSet(dir, { softReject: false });
                assert.ok(
                    actual.every((l) => /: warning: case ".*" does not hold: /.test(l)),
                    'loaded although it has problems',
                );
            } catch (err) {
                assert.ok(err instanceof RuleError);
                assert.deepEqual(relativeIssues(err.issues, dir), expected);
                assert.equal(err.message.split(dir + path.sep).join(''), expected.join('\n'));
            }
        });
    }

    it('refuses nested YAML aliases in when: at once, at the first alias (no exponential expansion)', () => {
        // any: [*aN-1, *aN-1] twenty-two deep stands for 4 million conditions. Loaded apart: a
        // load that expands it blocks its event loop, and only killing the process stops it.
        const lines = ['rules:', '  - id: bomb', '    stage: helo', '    action: tag', '    when:', '      any:'];
        lines.push('        - &a0 { helo: nothing.example }');
        for (let i = 1; i <= 22; i++) lines.push(`        - &a${i} { any: [*a${i - 1}, *a${i - 1}] }`);
        const dir = folderWith({ '10-bomb.yaml': lines.join('\n') + '\n' });
        const code = `
            import { checkRules } from ${JSON.stringify(new URL('../../src/rules/index.ts', import.meta.url).href)};
            console.log(JSON.stringify(checkRules(${JSON.stringify(dir)}, { softReject: false })));
        `;
        const child = spawnSync(process.execPath, ['--input-type=module', '-e', code], {
            encoding: 'utf8',
            timeout: 10_000,
        });
        assert.equal(child.signal, null, 'still loading after 10 s');
        assert.equal(child.status, 0, child.stderr);
        const issues = JSON.parse(child.stdout) as { line: number; col: number; message: string }[];
        assert.deepEqual(
            issues.map((i) => `${i.line}:${i.col}: ${i.message}`),
            [
                '8:23: when: YAML aliases such as *a0 are not accepted here (44 in all), because each use would be expanded again; write the conditions out (from &a0 at line 7)',
            ],
        );
    });

    it('refuses maps and lists nested past 64 levels alike in check and load, before the YAML parser can run out of stack', () => {
        // The parser builds documents by recursion: how deep it gets depends on how warmed up
        // the process is (1,000 levels were refused cold and accepted by a later reload).
        const block = (n: number): string => {
            const lines = ['rules:', '  - id: deep', '    stage: helo', '    action: tag', '    when:'];
            for (let i = 0; i < n; i++) lines.push(`${' '.repeat(6 + 2 * i)}not:`);
            lines.push(`${' '.repeat(6 + 2 * n)}helo: deep.example`);
            return lines.join('\n') + '\n';
        };
        const flow = (n: number): string =>
            `rules:\n  - { id: deep, stage: helo, action: tag, when: ${'{ not: '.repeat(n)}{ helo: x }${' }'.repeat(n)} }\n`;
        // the map at level 65 (a when: is at level 4): in block style the one under the 61st not:
        const tooDeep = (at: string): string[] => [
            `10.yaml:${at}: maps and lists nested more than ${MAX_YAML_NESTING} levels deep; write it with fewer levels`,
        ];
        for (const [text, expected] of [
            [block(61), tooDeep('67:129')],
            [block(1_000), tooDeep('67:129')],
            [flow(61), tooDeep(`2:${49 + 7 * 61}`)],
            [flow(1_000), tooDeep(`2:${49 + 7 * 61}`)],
        ] as const) {
            const dir = folderWith({ '10.yaml': text });
            assert.deepEqual(relativeIssues(checkRules(dir, { softReject: false }), dir), expected);
            let thrown: unknown = null;
            try {
                loadRuleSet(dir, { softReject: false });
            } catch (err) {
                thrown = err;
            }
            assert.ok(thrown instanceof RuleError, 'loaded');
            assert.deepEqual(relativeIssues(thrown.issues, dir), expected);
        }
        // 60 levels of not: (an even number) load and hold where the innermost condition holds
        const set = loadRuleSet(folderWith({ '10.yaml': block(60) }), { softReject: false });
        assert.equal(set.decide('helo', { helo: 'deep.example' }).action, 'tag');
        assert.equal(set.decide('helo', { helo: 'other.example' }).action, 'accept');
    });

    it('refuses a file whose loading throws, at FILE:1:1, instead of throwing', () => {
        // A fact catalogue that throws when a rule reads it stands for any unexpected exception.
        const boom = {
            name: 'x.boom',
            type: 'string',
            stage: 'connect',
            description: 'throws when read',
            get values(): readonly string[] {
                throw new Error('boom');
            },
        } as const;
        const dir = folderWith({
            '10-ok.yaml': 'rules:\n  - { id: fine, stage: connect, action: tag }\n',
            '20-boom.yaml': 'rules:\n  - { id: boom, stage: connect, action: tag, when: { x.boom: y } }\n',
        });
        const knownFacts = [...FACTS, boom];
        assert.deepEqual(relativeIssues(checkRules(dir, { softReject: false, knownFacts }), dir), [
            '20-boom.yaml:1:1: cannot load this file: boom',
        ]);
        assert.throws(() => loadRuleSet(dir, { softReject: false, knownFacts }), RuleError);
    });

    it('reports a missing rules folder', () => {
        const dir = path.join(CORPUS, 'no-such-folder');
        assert.deepEqual(
            checkRules(dir, { softReject: false }).map((i) => `${i.file}:${i.line}:${i.col}: ${i.message}`),
            [`${dir}:1:1: cannot read the rules folder: no such file or folder`],
        );
    });

    it('refuses a rules folder without rule files (it would accept every message), not one that asks for no rules', () => {
        const empty = folderWith({ 'README.txt': 'not a rule file\n' });
        assert.deepEqual(
            checkRules(empty, { softReject: false }).map((i) => `${i.file}:${i.line}:${i.col}: ${i.message}`),
            [
                `${empty}:1:1: the rules folder holds no rule files (*.yaml): every message would be accepted unchecked; copy the shipped rules into it, or write a file with "rules: []" to run without rules on purpose`,
            ],
        );
        assert.throws(() => loadRuleSet(empty, { softReject: false }), RuleError);
        const none = folderWith({ '00-none.yaml': 'rules: []\n' });
        assert.deepEqual(checkRules(none, { softReject: false }), []);
        assert.equal(loadRuleSet(none, { softReject: false }).rules.length, 0);
    });

    it('refuses a rule file that declares nothing (emptied, or only comments) at FILE:1:1, not one that asks for no rules', () => {
        // `: > 20-dmarc.yaml` next to other files: the folder still loads, without that file's rules
        const message =
            'the rule file declares nothing (it is empty, or holds only comments): its rules would stop applying unseen; write "rules: []" to keep a file without rules on purpose';
        for (const text of ['', '\n  \n', '# rules:\n#   - id: dmarc-reject\n', '---\n# nothing\n', '~\n']) {
            const dir = folderWith({
                '10-ok.yaml': 'rules:\n  - { id: fine, stage: connect, action: tag }\n',
                '20-emptied.yaml': text,
            });
            const expected = [`20-emptied.yaml:1:1: ${message}`];
            assert.deepEqual(
                relativeIssues(checkRules(dir, { softReject: false }), dir),
                expected,
                JSON.stringify(text),
            );
            assert.throws(() => loadRuleSet(dir, { softReject: false }), RuleError);
        }
        for (const text of ['rules: []\n', '# kept for later\nrules: []\n', '{}\n']) {
            const dir = folderWith({
                '10-ok.yaml': 'rules:\n  - { id: fine, stage: connect, action: tag }\n',
                '20.yaml': text,
            });
            assert.deepEqual(checkRules(dir, { softReject: false }), [], JSON.stringify(text));
            assert.equal(loadRuleSet(dir, { softReject: false }).rules.length, 1);
        }
    });

    it('refuses a rule file name that cannot be read (a symbolic link whose target moved) instead of skipping it', () => {
        const dir = folderWith({
            '10-ok.yaml': 'rules:\n  - { id: fine, stage: connect, action: tag }\n',
            'moved/25-extra.yaml': 'rules:\n  - { id: extra, stage: connect, action: reject }\n',
        });
        fs.symlinkSync(path.join(dir, 'moved', 'gone.yaml'), path.join(dir, '25-extra.yaml'));
        assert.deepEqual(relativeIssues(checkRules(dir, { softReject: false }), dir), [
            `25-extra.yaml:1:1: cannot read the file: no such file or folder (a symbolic link to moved/gone.yaml)`,
        ]);
        assert.throws(() => loadRuleSet(dir, { softReject: false }), RuleError);
        // the only name there: still that problem, not "the folder holds no rule files"
        const alone = folderWith({});
        fs.symlinkSync(path.join(alone, 'gone.yaml'), path.join(alone, '10.yaml'));
        assert.deepEqual(relativeIssues(checkRules(alone, { softReject: false }), alone), [
            `10.yaml:1:1: cannot read the file: no such file or folder (a symbolic link to gone.yaml)`,
        ]);
        // a link to a rule file that is there is read as that file
        fs.symlinkSync(path.join(dir, 'moved', '25-extra.yaml'), path.join(alone, '20.yaml'));
        fs.rmSync(path.join(alone, '10.yaml'));
        assert.deepEqual(
            loadRuleSet(alone, { softReject: false }).rules.map((r) => r.id),
            ['extra'],
        );
    });
});
