/**
 * The `spool:` section: the folder of our own for messages too large to keep in memory, and how
 * much of each message stays in memory. Validation only: it must not create the folder (serve
 * does, mode 0700) or write to it.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { sectionEntries } from '../fields.ts';
import { ioReason } from '../issues.ts';
import type { Field, SourceReader } from '../reader.ts';

export const SPOOL_KEYS = ['dir', 'memoryLimit'] as const;

export interface SpoolConfig {
    /** Folder of our own for messages larger than `memoryLimit`; created (mode 0700) by `serve`. */
    readonly dir: string;
    /** Bytes kept in memory per message before it is written to a spool file. */
    readonly memoryLimit: number;
}

export const SPOOL_DEFAULTS = { memoryLimit: 1024 * 1024 } as const;

/**
 * The spool folder when `spool.dir` is left out: a folder of mailwarden's own under the OS
 * temporary folder, per user (serve creates it with mode 0700 and refuses one another user owns).
 */
export function defaultSpoolDir(): string {
    return path.join(os.tmpdir(), `mailwarden-spool-${process.getuid?.() ?? 'user'}`);
}

export function defaultSpool(): SpoolConfig {
    return { dir: defaultSpoolDir(), memoryLimit: SPOOL_DEFAULTS.memoryLimit };
}

/** Reads `spool: { dir, memoryLimit }`; a relative `dir` resolves against `baseDir`. */
export function spoolSection(r: SourceReader, field: Field, baseDir: string): SpoolConfig {
    const entries = sectionEntries(r, field, SPOOL_KEYS);
    const dirField = entries.get('dir');
    const limitField = entries.get('memoryLimit');
    return {
        dir: (dirField && spoolDir(r, dirField, baseDir)) ?? defaultSpoolDir(),
        memoryLimit: (limitField && r.size(limitField, 0)) ?? SPOOL_DEFAULTS.memoryLimit,
    };
}

/** `spool.dir`: a folder, or a path that does not exist yet (serve creates it, mode 0700). */
function spoolDir(r: SourceReader, field: Field, baseDir: string): string | null {
    const text = r.string(field, 'a folder path');
    if (text === null) return null;
    const resolved = path.resolve(baseDir, text);
    try {
        if (!fs.statSync(resolved).isDirectory()) {
            r.fail(field, `${resolved} is not a folder`);
            return null;
        }
    } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
            r.fail(field, `cannot use ${resolved}: ${ioReason(err)}`);
            return null;
        }
    }
    return resolved;
}
