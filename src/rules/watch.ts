/**
 * Live reload of a rules folder: watches the folder, its `lists/` folder and the folders of
 * every declared list file, and after a burst of changes settles (debounce) loads and
 * validates everything again, handing the caller either the new rule set or every problem.
 * Folders are watched rather than files because editors and deploy tools replace files by
 * renaming a new copy over the old one; each at its real path, and the rules folder's name in
 * its parent too, so a folder swapped by rename or a symlink pointed elsewhere is followed: after
 * each load (its own, or the caller's through follow()) a watcher left on a folder that is no
 * longer the one its path names is opened again on the new one, and unneeded ones are closed.
 * A link higher up than the folder's parent (`rules: current/rules` with `current ->
 * releases/vN`) changes nothing any of those watchers sees, nor does a missing target
 * appearing: so every POLL_MS (an unref'd timer, a realpath and a stat per folder) the real
 * path and inode of the rules folder and of every watched folder are looked at again, and a
 * change (a missing one appearing included) reloads as a watcher would.
 * The caller decides what to do: on error it keeps the rules it has. It never applies anything
 * itself and never throws from a watcher callback except what the caller's onChange throws: a
 * load that throws is handed over as a failed one.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Issue } from '../config/issues.ts';
import { RuleError, loadRules, type LoadOptions } from './load.ts';
import type { RuleSet } from './ruleset.ts';

/** The new rule set with its warnings (cases that do not hold), or every problem. */
export type WatchResult = { readonly ok: RuleSet; readonly warnings: readonly Issue[] } | { readonly error: RuleError };

/** How often the folders' real paths are looked at again (a few system calls per folder). */
const POLL_MS = 2000;

export interface WatchOptions extends LoadOptions {
    /** Called after each reload caused by a change. */
    onChange(result: WatchResult): void;
    /** Quiet time after the last change before reloading (default 200 ms). */
    readonly debounceMs?: number;
    /** The rule set currently in use, whose folders are watched from the start (saves a load). */
    readonly current?: RuleSet;
    /** Time between two looks at the folders' real paths (default POLL_MS; tests shorten it). */
    readonly pollMs?: number;
}

export interface RuleWatcher {
    /** After a load made elsewhere (SIGHUP): watches its folders (`watchDirs`) as a reload does. */
    follow(dirs: readonly string[]): void;
    close(): void;
}

export function watchRuleSet(dir: string, opts: WatchOptions): RuleWatcher {
    const debounceMs = opts.debounceMs ?? 200;
    /** By real path (and, for the parent, the name watched in it); `id` is the inode watched. */
    const watchers = new Map<string, { readonly watcher: fs.FSWatcher; readonly id: string }>();
    let timer: NodeJS.Timeout | null = null;
    let closed = false;
    /** The folders last watched, each with where its path led then (seen()). */
    let looked = new Map<string, string>();

    const schedule = (): void => {
        if (closed) return;
        if (timer) clearTimeout(timer);
        timer = setTimeout(reload, debounceMs);
    };

    /**
     * Watches `dirs` and the rules folder, each at its real path, and the folder's entry in its
     * parent (a folder renamed away and another renamed in, or a link pointed elsewhere). A
     * watcher stays on the inode it was opened on: one whose path now resolves to another
     * folder (device and inode) is opened again there, one no longer wanted is closed.
     */
    const watchDirs = (dirs: readonly string[]): void => {
        const root = path.resolve(dir);
        const wanted = new Map<string, { real: string; id: string; name: string | null }>();
        const want = (d: string, name: string | null): Place | null => {
            const place = locate(d);
            // Not there (yet): its parent's watcher sees it appear, and the reload adds it.
            if (place) wanted.set(name === null ? place.real : `${place.real}\0${name}`, { ...place, name });
            return place;
        };
        looked = new Map([root, ...dirs].map((d) => [d, placeKey(want(d, null))]));
        want(path.dirname(root), path.basename(root));
        for (const [key, a] of watchers) {
            if (wanted.get(key)?.id !== a.id) {
                a.watcher.close();
                watchers.delete(key);
            }
        }
        for (const [key, t] of wanted) {
            if (watchers.has(key)) continue;
            try {
                const watcher = fs.watch(t.real, { persistent: false }, (_event, name) => {
                    if (t.name === null || name === null || name === t.name) schedule();
                });
                watcher.on('error', () => {
                    watcher.close();
                    if (watchers.get(key)?.watcher === watcher) watchers.delete(key);
                    schedule();
                });
                watchers.set(key, { watcher, id: t.id });
            } catch {
                // Gone between the look and the watch: the next reload looks again.
            }
        }
    };

    // a folder whose path now leads elsewhere (a link above it swapped, a missing target there)
    const poll = setInterval(() => {
        if (timer === null && [...looked].some(([d, was]) => seen(d) !== was)) schedule();
    }, opts.pollMs ?? POLL_MS);
    poll.unref();

    function reload(): void {
        timer = null;
        if (closed) return;
        let result: WatchResult;
        try {
            const r = loadRules(dir, opts);
            watchDirs(r.watchDirs);
            result = r.ruleSet ? { ok: r.ruleSet, warnings: r.warnings } : { error: new RuleError(r.issues) };
        } catch (err) {
            // loadRules reports rather than throws; should it throw all the same, this is one more failed reload.
            const message = `cannot load the rules: ${err instanceof Error ? err.message : String(err)}`;
            result = { error: new RuleError([{ file: dir, line: 1, col: 1, message }]) };
        }
        opts.onChange(result);
    }

    watchDirs(opts.current?.watchDirs ?? loadRules(dir, opts).watchDirs);

    return {
        follow(dirs: readonly string[]): void {
            if (!closed) watchDirs(dirs);
        },
        close(): void {
            closed = true;
            clearInterval(poll);
            if (timer) clearTimeout(timer);
            timer = null;
            for (const a of watchers.values()) a.watcher.close();
            watchers.clear();
        },
    };
}

/** Where a folder's path leads: its real path and the folder there (`device:inode`). */
interface Place {
    readonly real: string;
    readonly id: string;
}

/** Where a folder's path leads now, or null when it leads nowhere. */
function locate(d: string): Place | null {
    try {
        const real = fs.realpathSync(d);
        const st = fs.statSync(real);
        return { real, id: `${st.dev}:${st.ino}` };
    } catch {
        return null;
    }
}

/** A place as one comparable string ('' for nowhere). */
function placeKey(place: Place | null): string {
    return place === null ? '' : `${place.real}\0${place.id}`;
}

/** Where a folder's path leads now, as placeKey() writes it. */
function seen(d: string): string {
    return placeKey(locate(d));
}
