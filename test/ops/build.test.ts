/**
 * `npm run build` (scripts/build.js) and how bin/mailwarden.js uses what it writes, in a copy of
 * the project (bin/, src/, rules/, package.json, the build script; node_modules linked), so the
 * checkout's own dist/ is never touched: every module of src/ is written to dist/ with its types
 * stripped and every line and column where the source has it; `serve` then loads each module
 * from dist/ and never loads Node.js's type stripper (about 23 MB per process); a module whose
 * source changed after the build is stripped as it loads and the others still come from dist/;
 * without dist/ every module is stripped and mailwarden runs all the same. Every server started
 * is stopped.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { stripTypeScriptTypes } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { startServe } from '../helpers/serve.ts';

const repo = fileURLToPath(new URL('../../', import.meta.url));

/** Every .ts file under src/ of a project, relative to it, with forward slashes. */
function sources(root: string): string[] {
    return fs
        .readdirSync(path.join(root, 'src'), { recursive: true, encoding: 'utf8' })
        .filter((f) => f.endsWith('.ts'))
        .map((f) => `src/${f.split(path.sep).join('/')}`)
        .sort();
}

/**
 * Prints at exit whether Node.js's type stripper (amaro), the argon2 password module and
 * Node.js's bundled HTTP client (undici, about 13 MB: src/smtp-server/library.ts) were loaded
 * into the process's main thread.
 */
const REPORT_LOADED = `--import=data:text/javascript,import{createRequire}from"node:module";const c=createRequire("/").cache;process.on("exit",()=>process.stderr.write("type-stripper-loaded:"+process.moduleLoadList.some((m)=>m.includes("amaro"))+" argon2-loaded:"+Object.keys(c).some((k)=>k.includes("@node-rs"))+" undici-loaded:"+process.moduleLoadList.some((m)=>m.includes("undici"))+"\\n"))`;

describe('npm run build and the launcher', () => {
    let dir: string;
    let project: string;
    let config: string;

    const build = (): string =>
        execFileSync(process.execPath, [path.join(project, 'scripts/build.js')], { cwd: project, encoding: 'utf8' });

    /** Starts serve from the copy, waits for its start line, stops it; the modules counts and whether the stripper loaded. */
    const serveOnce = async (): Promise<{
        modules: unknown;
        stripperLoaded: boolean;
        argon2Loaded: boolean;
        undiciLoaded: boolean;
    }> => {
        const serve = startServe(config, dir, {}, [REPORT_LOADED], path.join(project, 'bin/mailwarden.js'));
        try {
            const started = await serve.waitFor((l) => l.msg === 'mailwarden started', { timeoutMs: 60_000 });
            assert.equal(await serve.stop(), 0);
            const report =
                /type-stripper-loaded:(true|false) argon2-loaded:(true|false) undici-loaded:(true|false)/.exec(
                    serve.stderr(),
                );
            assert.ok(report, serve.stderr());
            return {
                modules: started.modules,
                stripperLoaded: report[1] === 'true',
                argon2Loaded: report[2] === 'true',
                undiciLoaded: report[3] === 'true',
            };
        } finally {
            await serve.stop();
        }
    };

    before(() => {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mw-build-'));
        project = path.join(dir, 'project');
        fs.mkdirSync(path.join(project, 'scripts'), { recursive: true });
        for (const entry of ['bin', 'src', 'rules'])
            fs.cpSync(path.join(repo, entry), path.join(project, entry), { recursive: true });
        fs.copyFileSync(path.join(repo, 'package.json'), path.join(project, 'package.json'));
        fs.copyFileSync(path.join(repo, 'scripts/build.js'), path.join(project, 'scripts/build.js'));
        fs.symlinkSync(path.join(repo, 'node_modules'), path.join(project, 'node_modules'));
        config = path.join(dir, 'mailwarden.yaml');
        fs.writeFileSync(
            config,
            [
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "maildir:${path.join(dir, 'maildir')}" }`,
                // the operations endpoint on, as by default: it must not bring an HTTP client with it
                'http: { host: 127.0.0.1, port: 0 }',
                '',
            ].join('\n'),
        );
    });
    after(() => fs.rmSync(dir, { recursive: true, force: true }));

    it('writes every module of src/ with its types stripped, each line where the source has it', () => {
        assert.match(build(), /^build: \d+ modules written to dist\/$/m);
        const manifest = JSON.parse(fs.readFileSync(path.join(project, 'dist/manifest.json'), 'utf8')) as {
            format: number;
            files: Record<string, { sha256: string; out: string }>;
        };
        assert.equal(manifest.format, 2);
        assert.deepEqual(Object.keys(manifest.files).sort(), sources(project));
        for (const [name, entry] of Object.entries(manifest.files)) {
            const source = fs.readFileSync(path.join(project, name), 'utf8');
            assert.equal(entry.sha256, createHash('sha256').update(source).digest('hex'), name);
            const compiled = fs.readFileSync(path.join(project, 'dist', entry.out), 'utf8');
            assert.equal(compiled, stripTypeScriptTypes(source, { mode: 'strip' }), name);
            assert.equal(compiled.length, source.length, `${name}: every character keeps its place`);
        }
        assert.ok(!fs.readdirSync(project).some((f) => f.startsWith('dist.tmp')), 'nothing left of the staging folder');
    });

    it('serves from dist/ without loading the type stripper, nor argon2 without a users file, nor an HTTP client', async () => {
        const { modules, stripperLoaded, argon2Loaded, undiciLoaded } = await serveOnce();
        assert.equal(argon2Loaded, false);
        assert.equal(undiciLoaded, false);
        const m = modules as { compiled: number; stripped: number };
        assert.ok(m.compiled > 100, JSON.stringify(m));
        assert.equal(m.stripped, 0);
        assert.equal(stripperLoaded, false);
    });

    it('strips a module whose source changed after the build, and takes the others from dist/', async () => {
        const before = (await serveOnce()).modules as { compiled: number; stripped: number };
        const file = path.join(project, 'src/app.ts');
        fs.appendFileSync(file, '\nexport const changedAfterTheBuild: number = 1;\n');
        try {
            const { modules, stripperLoaded } = await serveOnce();
            assert.deepEqual(modules, { compiled: before.compiled - 1, stripped: 1 });
            assert.equal(stripperLoaded, true);
        } finally {
            fs.writeFileSync(file, fs.readFileSync(path.join(repo, 'src/app.ts')));
        }
    });

    it('runs without dist/, stripping every module as it loads', async () => {
        fs.rmSync(path.join(project, 'dist'), { recursive: true });
        const { modules, stripperLoaded } = await serveOnce();
        const m = modules as { compiled: number; stripped: number };
        assert.equal(m.compiled, 0);
        assert.ok(m.stripped > 100, JSON.stringify(m));
        assert.equal(stripperLoaded, true);
    });
});
