/**
 * What the build must hold to (scripts/build.js and the launcher), in a copy of the project:
 * two builds at once each leave a complete dist/ (every build has a staging folder of its own
 * and replaces dist/ in one rename), and a dist/ file changed after the build (a hand edit, a
 * file cut short) is never run: the launcher strips the source instead.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';

const run = promisify(execFile);
const repo = fileURLToPath(new URL('../../', import.meta.url));

describe('the build: concurrent builds and changed output', () => {
    let dir: string;
    let project: string;
    before(() => {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mw-build-integrity-'));
        project = path.join(dir, 'project');
        fs.mkdirSync(path.join(project, 'scripts'), { recursive: true });
        for (const entry of ['bin', 'src'])
            fs.cpSync(path.join(repo, entry), path.join(project, entry), { recursive: true });
        fs.copyFileSync(path.join(repo, 'package.json'), path.join(project, 'package.json'));
        fs.copyFileSync(path.join(repo, 'scripts/build.js'), path.join(project, 'scripts/build.js'));
        fs.symlinkSync(path.join(repo, 'node_modules'), path.join(project, 'node_modules'));
    });
    after(() => fs.rmSync(dir, { recursive: true, force: true }));

    it('two builds at once: each that succeeds leaves every module the manifest names', async () => {
        const build = path.join(project, 'scripts/build.js');
        for (let round = 0; round < 3; round++) {
            const results = await Promise.allSettled([
                run(process.execPath, [build], { cwd: project }),
                run(process.execPath, [build], { cwd: project }),
            ]);
            if (results.every((r) => r.status === 'rejected')) continue;
            const manifest = JSON.parse(fs.readFileSync(path.join(project, 'dist/manifest.json'), 'utf8')) as {
                files: Record<string, { out: string }>;
            };
            const missing = Object.values(manifest.files).filter(
                (e) => !fs.existsSync(path.join(project, 'dist', e.out)),
            );
            assert.equal(missing.length, 0, `round ${round}: ${missing.length} modules named but not written`);
        }
    });

    it('runs src/, not a dist/ file changed after the build', () => {
        execFileSync(process.execPath, [path.join(project, 'scripts/build.js')], { cwd: project });
        fs.appendFileSync(path.join(project, 'dist/src/cli.js'), '\nprocess.stderr.write("NOT-IN-SRC\\n");\n');
        let stderr = '';
        try {
            execFileSync(process.execPath, [path.join(project, 'bin/mailwarden.js'), '--version'], {
                cwd: project,
                encoding: 'utf8',
                stdio: ['ignore', 'pipe', 'pipe'],
            });
        } catch (err) {
            stderr = String((err as { stderr?: string }).stderr ?? '');
        }
        const r = execFileSync(
            'sh',
            ['-c', `"${process.execPath}" "${path.join(project, 'bin/mailwarden.js')}" --version 2>&1 >/dev/null`],
            { cwd: project, encoding: 'utf8' },
        );
        stderr += r;
        assert.ok(!stderr.includes('NOT-IN-SRC'), 'a changed dist/ file was run instead of its source');
    });
});
