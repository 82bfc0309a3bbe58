/**
 * The bad-rules corpus: each folder in test/fixtures/rules-errors/ is a broken rules folder
 * with an `expected-error` file holding exactly the lines `mailwarden check` must print
 * (`FILE:LINE:COL: message`, paths relative to the case folder), in order. A folder whose
 * only problem is a case that does not hold gets warnings (`FILE:LINE:COL: warning: …`).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { RuleError, checkRules, loadRuleSet } from '../../src/rules/index.ts';
import { FIXTURES, relativeIssues } from './helpers.ts';

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

    it('reports a missing rules folder', () => {
        const dir = path.join(CORPUS, 'no-such-folder');
        assert.deepEqual(
            checkRules(dir, { softReject: false }).map((i) => `${i.file}:${i.line}:${i.col}: ${i.message}`),
            [`${dir}:1:1: cannot read the rules folder: no such file or folder`],
        );
    });
});
