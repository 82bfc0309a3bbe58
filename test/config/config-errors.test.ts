/**
 * The bad-config corpus: each folder of test/fixtures/config-errors holds a `config.yaml` and
 * the exact lines `mailwarden check` must print for it in `expected-error` (file names written
 * relative to the folder, e.g. `config.yaml:3:5: …`). One test per folder.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { runCheck } from '../../src/commands/check.ts';

const CORPUS = path.join(import.meta.dirname, '..', 'fixtures', 'config-errors');

/** What `check` prints for one case, with the case folder removed from every path. */
async function checkOutput(dir: string): Promise<{ code: number; lines: string[] }> {
    const lines: string[] = [];
    const code = await runCheck({
        configPath: path.join(dir, 'config.yaml'),
        env: {},
        out: (l) => lines.push(l),
        err: (l) => lines.push(l),
    });
    return { code, lines: lines.map((l) => l.split(dir + path.sep).join('')) };
}

const cases = fs
    .readdirSync(CORPUS, { withFileTypes: true })
    .filter((e) => e.isDirectory())
    .map((e) => e.name)
    .sort();

describe('bad-config corpus', () => {
    it('has cases', () => {
        assert.ok(cases.length >= 15);
    });

    for (const name of cases) {
        it(name, async () => {
            const dir = path.join(CORPUS, name);
            const expected = fs.readFileSync(path.join(dir, 'expected-error'), 'utf8').trimEnd().split('\n');
            const { code, lines } = await checkOutput(dir);
            assert.deepEqual(lines, expected);
            assert.equal(code, 1);
        });
    }
});
