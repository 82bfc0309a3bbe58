/**
 * Live reload of a rules folder: watches the folder, its `lists/` folder and the folders of
 * every declared list file, and after a burst of changes settles (debounce) loads and
 * validates everything again, handing the caller either the new rule set or every problem.
 * Folders are watched rather than files because editors and deploy tools replace files by
 * renaming a new copy over the old one. The caller decides what to do: on error it keeps the
 * rules it has. It never applies anything itself and never throws from a watcher callback
 * except what the caller's onChange throws: a load that throws is handed over as a failed one.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Issue } from '../config/issues.ts';
import { RuleError, loadRules, type LoadOptions } from './load.ts';
import type { RuleSet } from './ruleset.ts';

/** The new rule set with its warnings (cases that do not hold), or every problem. */
export type WatchResult = { readonly ok: RuleSet; readonly warnings: readonly Issue[] } | { readonly error: RuleError };

export interface WatchOptions extends LoadOptions {
    /** Called after each reload caused by a change. */
    onChange(result: WatchResult): void;
    /** Quiet time after the last change before reloading (default 200 ms). */
    readonly debounceMs?: number;
    /** The rule set currently in use, whose folders are watched from the start (saves a load). */
    readonly current?: RuleSet;
}

export interface RuleWatcher {
    close(): void;
}

export function watchRuleSet(dir: string, opts: WatchOptions): RuleWatcher {
    const debounceMs = opts.debounceMs ?? 200;
    const watchers = new Map<string, fs.FSWatcher>();
    let timer: NodeJS.Timeout | null = null;
    let closed = false;

    const schedule = (): void => {
        if (closed) return;
        if (timer) clearTimeout(timer);
        timer = setTimeout(reload, debounceMs);
    };

    const watchDirs = (dirs: readonly string[]): void => {
        const wanted = new Set(dirs.map((d) => path.resolve(d)));
        wanted.add(path.resolve(dir));
        for (const [d, w] of watchers) {
            if (!wanted.has(d)) {
                w.close();
                watchers.delete(d);
            }
        }
        for (const d of wanted) {
            if (watchers.has(d)) continue;
            try {
                const w = fs.watch(d, { persistent: false }, schedule);
                w.on('error', () => {
                    w.close();
                    watchers.delete(d);
                    schedule();
                });
                watchers.set(d, w);
            } catch {
                // Not there (yet): its parent's watcher sees it appear, and the reload adds it.
            }
        }
    };

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
        close(): void {
            closed = true;
            if (timer) clearTimeout(timer);
            timer = null;
            for (const w of watchers.values()) w.close();
            watchers.clear();
        },
    };
}
