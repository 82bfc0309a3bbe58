/**
 * `mailwarden check`: loads the config, then runs each further validator (rule files and
 * the like) on it, and reports every problem as `FILE:LINE:COL: message`. Settings that are
 * valid but risky (such as `upstream.xclient: false`) are printed as
 * `FILE:LINE:COL: warning: message` and do not change the exit code.
 * It only reads and reports: it must not start listeners or connect anywhere (so what the
 * upstream offers, such as its SIZE, is checked by `serve` at start, not here).
 */
import { ConfigError, formatIssue, loadConfigWithWarnings, type Issue } from '../config/load.ts';
import type { Config } from '../config/types.ts';
import { checkRules } from '../rules/index.ts';
import { submissionFilesCheck } from '../submission/index.ts';

/** A further check run on a loaded config (for example: every rule file parses and validates). */
export interface CheckValidator {
    /** Short name, for the summary line. */
    readonly name: string;
    /** Returns the issues found (an empty array when all is well). */
    readonly validate: (config: Config) => Promise<readonly Issue[]> | readonly Issue[];
}

/** Validators run by `mailwarden check` after the config loaded cleanly, in order. */
export const checkValidators: CheckValidator[] = [
    // every rule file and list parses and validates, and every `cases:` example gives its expected decision
    { name: 'rules', validate: (config) => checkRules(config.rules, { softReject: config.softReject }) },
    // the submission users (or sendAs) file parses, and holds only password hashes
    submissionFilesCheck,
];

export interface CheckOptions {
    readonly configPath: string | null;
    readonly env: NodeJS.ProcessEnv;
    readonly out: (line: string) => void;
    readonly err: (line: string) => void;
    /** Folder a relative config path resolves against (default: the process working directory). */
    readonly cwd?: string;
    /** Replaces `checkValidators` (tests). */
    readonly validators?: readonly CheckValidator[];
}

/** Returns the exit code: 0 when everything is valid, 1 otherwise. */
export async function runCheck(opts: CheckOptions): Promise<number> {
    let config: Config;
    let warnings: readonly Issue[];
    try {
        ({ config, warnings } = loadConfigWithWarnings(
            opts.configPath,
            opts.env,
            opts.cwd === undefined ? {} : { cwd: opts.cwd },
        ));
    } catch (e) {
        if (!(e instanceof ConfigError)) throw e;
        for (const issue of e.issues) opts.err(formatIssue(issue));
        return 1;
    }
    const issues: Issue[] = [];
    for (const validator of opts.validators ?? checkValidators) {
        issues.push(...(await validator.validate(config)));
    }
    for (const w of warnings) opts.err(formatIssue({ ...w, message: `warning: ${w.message}` }));
    if (issues.length > 0) {
        for (const issue of issues) opts.err(formatIssue(issue));
        return 1;
    }
    const note = warnings.length > 0 ? ` (${warnings.length} warning${warnings.length > 1 ? 's' : ''})` : '';
    opts.out(`ok: ${opts.configPath ?? 'embedded defaults'}${note}`);
    return 0;
}
