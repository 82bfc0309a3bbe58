/**
 * The README stays true: its example configuration loads without a single issue (with the
 * certificate and users-file paths pointed at test files), its two front-door commands are
 * the package scripts that exist, and every document it links to exists.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile, copyFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import { loadConfig } from '../../src/config/load.ts';

const root = new URL('../../', import.meta.url);
const readme = readFileSync(new URL('README.md', root), 'utf8');

describe('README', () => {
    it('has the example configuration, and it validates', async () => {
        const section = readme.slice(readme.indexOf('## Configuration'));
        const yaml = /```yaml\n([\s\S]*?)```/.exec(section)?.[1];
        assert.ok(yaml, 'a yaml block under Configuration');
        const dir = await mkdtemp(join(tmpdir(), 'mw-readme-'));
        try {
            await copyFile(new URL('test/config/fixtures/tls/cert.pem', root), join(dir, 'tls.crt'));
            await copyFile(new URL('test/config/fixtures/tls/key.pem', root), join(dir, 'tls.key'));
            await writeFile(join(dir, 'users.yaml'), 'users: []\n');
            const file = join(dir, 'mailwarden.yaml');
            await writeFile(file, yaml.replaceAll('/etc/mailwarden/', `${dir}/`));
            const config = loadConfig(file, {});
            assert.equal(config.hostname, 'mx.example.com');
            assert.deepEqual(
                config.listeners.map((l) => [l.name, l.port, l.mode, l.tls]),
                [
                    ['mx', 25, 'mx', 'starttls'],
                    ['submission', 587, 'submission', 'starttls'],
                    ['submissions', 465, 'submission', 'implicit'],
                ],
            );
        } finally {
            await rm(dir, { recursive: true, force: true });
        }
    });

    it('names npm start and npm test, which exist', () => {
        const scripts = (
            JSON.parse(readFileSync(new URL('package.json', root), 'utf8')) as { scripts: Record<string, string> }
        ).scripts;
        assert.match(readme, /^npm start\s/m);
        assert.match(readme, /^npm test\s/m);
        assert.ok(scripts.start && scripts.test);
        const ci = readFileSync(new URL('.ci/run', root), 'utf8');
        assert.match(ci, /^npm test$/m, '.ci/run runs the README test command');
    });

    it('lists every command of `mailwarden help` in its command table', () => {
        const help = execFileSync(process.execPath, [fileURLToPath(new URL('bin/mailwarden.js', root)), 'help'], {
            encoding: 'utf8',
        });
        const commands = [
            ...help.slice(help.indexOf('Commands:'), help.indexOf('Options:')).matchAll(/^ {2}([a-z]+)\b/gm),
        ].map((m) => m[1]!);
        assert.ok(commands.length >= 7, help);
        const table = readme.slice(readme.indexOf('## Commands'));
        const listed = new Set([...table.matchAll(/^\| `mailwarden ([a-z-]+)/gm)].map((m) => m[1]!));
        for (const command of commands) {
            assert.ok(
                listed.has(command) || table.includes(`\`mailwarden ${command}\``),
                `the README lists ${command}`,
            );
        }
    });

    it('links only to files that exist', () => {
        for (const m of readme.matchAll(/\]\(([^)#:]+)(#[^)]*)?\)/g)) {
            assert.ok(existsSync(new URL(m[1]!, root)), `README links to ${m[1]}`);
        }
    });
});
