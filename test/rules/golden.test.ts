/**
 * Golden rule cases (Postfix smtpd_check .in/.ref style): each file in
 * test/fixtures/rules-golden/ holds rules (or names a rules folder) and cases, facts in and
 * the expected decision out: action, terminal rule, score, contributing rules, headers, reply
 * and monitor hits. Options for the whole file are top-level keys the runner removes before
 * loading (`softReject: true`, `folder: PATH`); every line keeps its number.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { parse } from 'yaml';
import { loadRules, runCases } from '../../src/rules/index.ts';
import { MAX_HEADER_VALUE, MAX_REPLY_TEXT } from '../../src/rules/template.ts';
import { FIXTURES, cleanup, relativeIssues, tempDir } from './helpers.ts';

after(cleanup);

const GOLDEN = path.join(FIXTURES, 'rules-golden');
const files = fs
    .readdirSync(GOLDEN)
    .filter((n) => n.endsWith('.yaml'))
    .sort();

interface Options {
    softReject?: boolean;
    folder?: string;
    cases?: unknown[];
}

describe('golden rule cases', () => {
    it('has golden files', () => assert.ok(files.length >= 10));

    for (const name of files) {
        it(name, () => {
            const text = fs.readFileSync(path.join(GOLDEN, name), 'utf8');
            const options = (parse(text) ?? {}) as Options;
            const dir = tempDir();
            fs.cpSync(path.join(GOLDEN, 'lists'), path.join(dir, 'lists'), { recursive: true });
            if (options.folder) fs.cpSync(path.join(GOLDEN, options.folder), dir, { recursive: true });
            // The options are not rule-file keys: comment them out, keeping line numbers.
            fs.writeFileSync(path.join(dir, 'zz-golden.yaml'), text.replace(/^(softReject|folder):/gm, '# $1:'));
            const loaded = loadRules(dir, { softReject: options.softReject ?? false });
            assert.deepEqual(relativeIssues(loaded.issues, dir), [], 'the golden rules load');
            const set = loaded.ruleSet!;
            const cases = set.cases.filter((c) => c.file.endsWith('zz-golden.yaml'));
            assert.equal(cases.length, options.cases?.length ?? 0, 'every case was read');
            assert.ok(cases.length > 0);
            const results = runCases(set, { softReject: options.softReject ?? false, cases });
            const failures = results.failed.map(
                (f) => `line ${f.line}: ${f.name}\n    expected ${f.expected}\n    actual   ${f.actual}`,
            );
            assert.deepEqual(failures, []);
            assert.equal(results.passed, cases.length);
            // Whatever the facts, what reaches the wire is one printable line within the limits.
            for (const c of cases) {
                const d = set.evaluate(c.stage, c.facts, { softReject: options.softReject ?? false }).decision;
                if (d.reply) {
                    assert.match(d.reply.text, /^[\x20-\x7e]*$/);
                    assert.ok(d.reply.text.length <= MAX_REPLY_TEXT);
                }
                for (const h of d.headers) {
                    assert.match(h.value, /^[\x20-\x7e]*$/);
                    assert.ok(h.value.length <= MAX_HEADER_VALUE);
                }
            }
        });
    }
});
