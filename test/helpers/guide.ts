/**
 * Reads the shell commands of a Markdown guide (docs/deploy-postfix.md) so that tests run the
 * documented commands themselves, and runs them with `sh -e` in a sandbox: a table of text
 * substitutions moves system paths into a temporary folder, and stand-in commands on the PATH
 * (shims) replace what a test must not do to the machine (create users, talk to systemd, edit
 * /etc/postfix). It must not change the commands in any other way, and never runs them unmoved.
 */
import { execFile, spawn } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const ROOT = new URL('../../', import.meta.url);
export const GUIDE_FILE = 'docs/deploy-postfix.md';

export function readRepo(file: string): string {
    return readFileSync(new URL(file, ROOT), 'utf8');
}

/** The text under a `##` or `###` heading, up to the next heading of the same or a higher level. */
export function section(markdown: string, heading: string): string {
    const lines = markdown.split('\n');
    const start = lines.findIndex((l) => /^#{2,3} /.test(l) && l.replace(/^#+ /, '') === heading);
    if (start < 0) throw new Error(`no section "${heading}"`);
    const level = /^#+/.exec(lines[start]!)![0].length;
    let end = lines.length;
    let fenced = false;
    for (let i = start + 1; i < lines.length; i++) {
        if (lines[i]!.startsWith('```')) fenced = !fenced;
        const m = fenced ? null : /^(#+) /.exec(lines[i]!);
        if (m && m[1]!.length <= level) {
            end = i;
            break;
        }
    }
    return lines.slice(start + 1, end).join('\n');
}

/** The bodies of the ```sh blocks of a section, in order. */
export function shellBlocks(markdown: string, heading: string): string[] {
    return [...section(markdown, heading).matchAll(/^```sh\n([\s\S]*?)^```$/gm)].map((m) => m[1]!);
}

/** Every ```sh block of the whole document. */
export function allShellBlocks(markdown: string): string[] {
    return [...markdown.matchAll(/^```sh\n([\s\S]*?)^```$/gm)].map((m) => m[1]!);
}

/** Replaces each key by its value (longest keys first, so nested paths move together). */
export function substitute(text: string, table: Readonly<Record<string, string>>): string {
    let out = text;
    for (const key of Object.keys(table).sort((a, b) => b.length - a.length)) out = out.replaceAll(key, table[key]!);
    return out;
}

/** Writes executable stand-ins: `name` → shell script body (after `#!/bin/sh`). Returns their folder. */
export function writeShims(dir: string, shims: Readonly<Record<string, string>>): string {
    mkdirSync(dir, { recursive: true });
    for (const [name, body] of Object.entries(shims)) {
        const file = join(dir, name);
        writeFileSync(file, `#!/bin/sh\n${body}\n`);
        chmodSync(file, 0o755);
    }
    return dir;
}

export interface RunResult {
    readonly code: number;
    readonly out: string;
    readonly err: string;
}

/**
 * Runs a script with `sh -e` (a failing command fails the script, as it would stop a careful
 * operator), in a process group of its own: past `timeoutMs` (default 100 s, under the runner's
 * 120 s per test, so the test fails with the script's output rather than timing out) the whole
 * group is killed, the commands the script started (npm, …) included.
 */
export function runShell(
    script: string,
    options: { env: NodeJS.ProcessEnv; cwd: string; input?: string; timeoutMs?: number },
): Promise<RunResult> {
    return new Promise((resolve) => {
        const child = spawn('sh', ['-e', '-c', script], { env: options.env, cwd: options.cwd, detached: true });
        let out = '';
        let err = '';
        child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
        child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
        const timer = setTimeout(() => {
            err += `\n(killed after ${options.timeoutMs ?? 100_000} ms)\n`;
            try {
                process.kill(-child.pid!, 'SIGKILL');
            } catch {
                child.kill('SIGKILL');
            }
        }, options.timeoutMs ?? 100_000);
        child.on('close', (code) => {
            clearTimeout(timer);
            resolve({ code: code ?? 1, out, err });
        });
        child.stdin.end(options.input ?? '');
    });
}

/** Runs one program without a shell. */
export function runFile(
    command: string,
    args: readonly string[],
    options: { env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number } = {},
): Promise<RunResult> {
    return new Promise((resolve) => {
        execFile(
            command,
            args,
            { env: options.env ?? process.env, cwd: options.cwd, timeout: options.timeoutMs ?? 60_000 },
            (error, stdout, stderr) => {
                const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
                resolve({
                    code,
                    out: stdout,
                    err: stderr + (error && typeof error.code !== 'number' ? error.message : ''),
                });
            },
        );
    });
}
