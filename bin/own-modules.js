// Loads mailwarden's own TypeScript modules in the thread that calls loadOwnModules(): the
// command's main thread (bin/mailwarden.js) and the sender-authentication thread
// (src/sender-auth/verify-thread-entry.js), since Node.js does not pass in-thread module hooks on
// to worker threads. Plain JavaScript for the same reason as bin/mailwarden.js. It holds no
// product logic.
/* global process, URL */
import { createHash } from 'crypto';
import { readFileSync } from 'fs';
import * as nodeModule from 'module';
import { join, relative, sep } from 'path';
import { fileURLToPath, pathToFileURL } from 'url';

const root = fileURLToPath(new URL('..', import.meta.url));

/**
 * Loads mailwarden's own .ts files (what Node.js does by itself outside node_modules, but not
 * under it). A file whose source and compiled file still have the SHA-256s dist/manifest.json
 * names (`npm run build`, scripts/build.js) is loaded from dist/ as it was written there; any other is
 * stripped of its types here, as it loads. Node.js's type stripper (about 23 MB of RSS) is only loaded
 * when a file needs it. How many modules came each way is left in
 * globalThis[Symbol.for('mailwarden.modules')] for the start-up log line.
 */
export function loadOwnModules() {
    const { registerHooks, stripTypeScriptTypes } = nodeModule;
    if (typeof registerHooks !== 'function' || typeof stripTypeScriptTypes !== 'function') return;
    const counts = { compiled: 0, stripped: 0 };
    globalThis[Symbol.for('mailwarden.modules')] = counts;
    let built = {};
    try {
        const manifest = JSON.parse(readFileSync(join(root, 'dist', 'manifest.json'), 'utf8'));
        if (manifest && manifest.format === 2 && manifest.files) built = manifest.files;
    } catch {
        // no build: every module is stripped as it loads
    }
    let stripperLoaded = false;
    const strip = (source) => {
        if (!stripperLoaded) {
            // The first call announces an experimental feature; this launcher is what depends on it.
            const emitWarning = process.emitWarning;
            process.emitWarning = () => {};
            try {
                stripTypeScriptTypes('');
            } finally {
                process.emitWarning = emitWarning;
            }
            stripperLoaded = true;
        }
        return stripTypeScriptTypes(source, { mode: 'strip' });
    };
    const own = pathToFileURL(root).href;
    registerHooks({
        load(url, context, nextLoad) {
            if (!url.startsWith(own) || !url.endsWith('.ts')) return nextLoad(url, context);
            const file = fileURLToPath(url);
            const source = readFileSync(file, 'utf8');
            const name = relative(root, file).split(sep).join('/');
            const entry = Object.prototype.hasOwnProperty.call(built, name) ? built[name] : undefined;
            const sha256 = (text) => createHash('sha256').update(text).digest('hex');
            const out = entry && typeof entry.out === 'string' ? join(root, 'dist', entry.out) : '';
            if (out.startsWith(join(root, 'dist', sep)) && sha256(source) === entry.sha256) {
                try {
                    const compiled = readFileSync(out, 'utf8');
                    // the file as the build wrote it, not one changed or cut short since
                    if (sha256(compiled) === entry.outSha256) {
                        counts.compiled++;
                        return { format: 'module', source: compiled, shortCircuit: true };
                    }
                } catch {
                    // unreadable: strip the source instead
                }
            }
            counts.stripped++;
            return { format: 'module', source: strip(source), shortCircuit: true };
        },
    });
}
