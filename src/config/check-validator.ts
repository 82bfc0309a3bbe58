/**
 * The contract of the further validators `mailwarden check` runs on a loaded config (the rule
 * files, the users file): what each returns as issues or warnings.
 * Declarations only; it must not validate anything itself.
 */
import type { Issue } from './issues.ts';
import type { Config } from './types.ts';

/** Something that works but should be fixed: printed as `FILE: warning: message`, counted with the other warnings (exit 1 only with `--strict`). */
export interface CheckWarning {
    readonly file: string;
    readonly message: string;
}

/** A further check run on a loaded config (for example: every rule file parses and validates). */
export interface CheckValidator {
    /** Short name, for the summary line. */
    readonly name: string;
    /** Returns the issues found (an empty array when all is well); those of severity `warning` refuse nothing. */
    readonly validate: (config: Config) => Promise<readonly Issue[]> | readonly Issue[];
    /** Returns what deserves a warning only (for example: file permissions). */
    readonly warn?: (config: Config) => readonly CheckWarning[];
}
