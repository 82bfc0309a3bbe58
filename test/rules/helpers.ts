/**
 * Test helpers for the rules engine: throw-away rules folders, issue rendering relative to a
 * folder, and a seeded random generator. Test support only; nothing here is used by the product.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { formatIssue, type Issue } from '../../src/config/issues.ts';

export const FIXTURES = path.join(import.meta.dirname, '..', 'fixtures');
export const ROOT = path.join(import.meta.dirname, '..', '..');

const made: string[] = [];

/** A new empty folder, removed by `cleanup()`. */
export function tempDir(prefix = 'mailwarden-rules-'): string {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
    made.push(dir);
    return dir;
}

export function cleanup(): void {
    for (const dir of made.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
}

/** Writes `files` (relative name → content) into `dir` (a new folder by default) and returns it. */
export function folderWith(files: Readonly<Record<string, string>>, dir = tempDir()): string {
    for (const [name, content] of Object.entries(files)) {
        const file = path.join(dir, name);
        fs.mkdirSync(path.dirname(file), { recursive: true });
        fs.writeFileSync(file, content);
    }
    return dir;
}

/** Issues rendered `FILE:LINE:COL: message` with `dir/` removed everywhere. */
export function relativeIssues(issues: readonly Issue[], dir: string): string[] {
    const prefix = dir.endsWith(path.sep) ? dir : dir + path.sep;
    return issues.map((i) => formatIssue(i).split(prefix).join(''));
}

/** Deterministic pseudo-random numbers in [0, 1) (mulberry32). */
export function seeded(seed: number): () => number {
    let a = seed >>> 0;
    return () => {
        a = (a + 0x6d2b79f5) >>> 0;
        let t = a;
        t = Math.imul(t ^ (t >>> 15), t | 1);
        t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
        return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
}
