/**
 * `mailwarden check`: loads the config, then runs each further validator (rule files and
 * the like) on it, and reports every problem as `FILE:LINE:COL: message`. It refuses exactly
 * what `serve` and a reload refuse (it is the systemd unit's ExecStartPre): errors exit 1;
 * warnings (rule cases that do not hold, settings that are valid but risky such as
 * `upstream.xclient: false`, a users file other users can read) are printed as
 * `FILE[:LINE:COL]: warning: message` and exit 0, because `serve` runs with them too.
 * `--strict` (for CI) exits 1 on warnings.
 * It only reads and reports: it must not start listeners or connect anywhere (so what the
 * upstream offers, such as its SIZE, is checked by `serve` at start, not here).
 */
import { ConfigError, formatIssue, loadConfigWithWarnings, type Issue } from '../config/load.ts';
import type { CheckValidator } from '../config/issues.ts';
import type { Config } from '../config/types.ts';
import { checkRules } from '../rules/index.ts';
import { submissionFilesCheck } from '../submission/index.ts';

/** Validators run by `mailwarden check` after the config loaded cleanly, in order. */
export const checkValidators: CheckValidator[] = [
    // every rule file and list parses and validates (errors); every `cases:` example gives its expected decision (warnings)
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
    /** Exit 1 on warnings too (for CI; `serve` would run with them). */
    readonly strict?: boolean;
}

/** Returns the exit code: 0 when everything is valid (warnings allowed unless `strict`), 1 otherwise. */
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
        for (const w of validator.warn?.(config) ?? []) opts.err(`${w.file}: warning: ${w.message}`);
    }
    const errors = issues.filter((i) => i.severity !== 'warning');
    const warned: Issue[] = [
        ...warnings.map((w) => ({ ...w, severity: 'warning' as const })),
        ...issues.filter((i) => i.severity === 'warning'),
    ];
    for (const issue of [...errors, ...warned]) opts.err(formatIssue(issue));
    if (errors.length > 0) return 1;
    const source = opts.configPath ?? 'embedded defaults';
    if (warned.length === 0) {
        opts.out(`ok: ${source}`);
        return 0;
    }
    const counted = `${warned.length} warning${warned.length === 1 ? '' : 's'}`;
    if (opts.strict) {
        opts.err(`${source}: ${counted}, and --strict refuses warnings (serve and reload would accept these files)`);
        return 1;
    }
    opts.out(`ok: ${source} (${counted}; serve and reload accept these files as they are)`);
    return 0;
}
