/**
 * Test helpers for config tests: throw-away folders holding a config file and the files it names.
 * Test support only; nothing here is used by the product.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ConfigError, type Issue } from '../../src/config/issues.ts';
import { loadConfig } from '../../src/config/load.ts';
import type { Config } from '../../src/config/types.ts';

export const FIXTURES = path.join(import.meta.dirname, 'fixtures');
export const CERT = path.join(FIXTURES, 'tls', 'cert.pem');
export const KEY = path.join(FIXTURES, 'tls', 'key.pem');
export const OTHER_KEY = path.join(FIXTURES, 'tls', 'other-key.pem');

const made: string[] = [];

/** A new empty folder, removed by `cleanup()`. */
export function tempDir(): string {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mailwarden-config-'));
    made.push(dir);
    return dir;
}

export function cleanup(): void {
    for (const dir of made.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
}

/** Writes `files` (relative name → content) into a new folder and returns the folder. */
export function folderWith(files: Readonly<Record<string, string>>): string {
    const dir = tempDir();
    for (const [name, content] of Object.entries(files)) {
        const file = path.join(dir, name);
        fs.mkdirSync(path.dirname(file), { recursive: true });
        fs.writeFileSync(file, content);
    }
    return dir;
}

/** Loads `yaml` written as `<new folder>/mailwarden.yaml` (plus `files`). */
export function loadText(
    yaml: string,
    env: NodeJS.ProcessEnv = {},
    files: Readonly<Record<string, string>> = {},
): { config: Config; dir: string; file: string } {
    const dir = folderWith({ ...files, 'mailwarden.yaml': yaml });
    const file = path.join(dir, 'mailwarden.yaml');
    return { config: loadConfig(file, env), dir, file };
}

/** The issues `yaml` produces, rendered `LINE:COL: message` (file name left out). */
export function issuesOf(
    yaml: string,
    env: NodeJS.ProcessEnv = {},
    files: Readonly<Record<string, string>> = {},
): string[] {
    try {
        loadText(yaml, env, files);
    } catch (e) {
        if (e instanceof ConfigError) return e.issues.map((i: Issue) => `${i.line}:${i.col}: ${i.message}`);
        throw e;
    }
    throw new Error('expected the config to be rejected');
}

export const PEM_FILES: Readonly<Record<string, string>> = {
    'tls/cert.pem': fs.readFileSync(CERT, 'utf8'),
    'tls/key.pem': fs.readFileSync(KEY, 'utf8'),
};
