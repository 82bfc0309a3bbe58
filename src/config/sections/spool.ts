/**
 * The `spool:` section: the folder of our own for messages too large to keep in memory, and how
 * much of each message stays in memory. Validation only: it must not create the folder (serve
 * does, mode 0700) or write to it. spoolFolderProblem is the one test of an existing spool
 * folder: the config loaded as serve runs it (`check`, start, reload) and serve's start both use
 * it, so `check` refuses the folder `serve` would refuse, at `spool.dir`.
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

/**
 * Reads `spool: { dir, memoryLimit }`; a relative `dir` resolves against `baseDir`. With `owner`
 * (the running user, when the file is judged as serve runs it), a `dir` another user owns is refused.
 */
export function spoolSection(r: SourceReader, field: Field, baseDir: string, owner: number | undefined): SpoolConfig {
    const entries = sectionEntries(r, field, SPOOL_KEYS);
    const dirField = entries.get('dir');
    const limitField = entries.get('memoryLimit');
    return {
        dir: (dirField && spoolDir(r, dirField, baseDir, owner)) ?? defaultSpoolDir(),
        memoryLimit: (limitField && r.size(limitField, 0)) ?? SPOOL_DEFAULTS.memoryLimit,
    };
}

/**
 * What makes an existing path (its lstat: a symbolic link is not followed) unfit as the spool
 * folder of a process running as `uid`, or null: it is not a folder, or (with `uid`) another
 * user owns it, and the folder holds message text. The owner is judged against the user this
 * process runs as, the only one known here; `check` run as root passes no `uid` (it cannot know
 * the user serve will run as), so only the kind of the path is judged. serve's start
 * (prepareSpoolFolder) and the loading of `spool.dir` both ask this.
 */
export function spoolFolderProblem(
    st: Pick<fs.Stats, 'isDirectory' | 'isSymbolicLink' | 'uid'>,
    uid: number | undefined,
): string | null {
    if (st.isSymbolicLink()) return 'is a symbolic link, not a folder: name the folder itself';
    if (!st.isDirectory()) return 'is not a folder';
    if (uid === undefined || st.uid === uid) return null;
    return (
        `belongs to uid ${st.uid}, not to uid ${uid} that this process runs as; the spool folder holds ` +
        'message text, so mailwarden uses only one of the user it runs as: give the folder to the user ' +
        'serve runs as, and run check as that user too (for example runuser -u mailwarden -- mailwarden check)'
    );
}

/**
 * `spool.dir`: a folder (of `owner`, when given), or a path that does not exist yet (serve
 * creates it, mode 0700).
 */
function spoolDir(r: SourceReader, field: Field, baseDir: string, owner: number | undefined): string | null {
    const text = r.string(field, 'a folder path');
    if (text === null) return null;
    const resolved = path.resolve(baseDir, text);
    let st: fs.Stats;
    try {
        st = fs.lstatSync(resolved);
    } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return resolved;
        r.fail(field, `cannot use ${resolved}: ${ioReason(err)}`);
        return null;
    }
    const problem = spoolFolderProblem(st, owner);
    if (problem !== null) {
        r.fail(field, `${resolved} ${problem}`);
        return null;
    }
    return resolved;
}
