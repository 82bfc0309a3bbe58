/**
 * `mailwarden check`: loads the config, then runs each further validator (rule files and
 * the like) on it, and reports every problem as `FILE:LINE:COL: message`. It refuses exactly
 * what `serve` and a reload refuse (it is the systemd unit's ExecStartPre): errors exit 1;
 * warnings (rule cases that do not hold, settings that are valid but risky such as
 * `upstream.xclient: false`, a users file other users can read) are printed as
 * `FILE[:LINE:COL]: warning: message` and exit 0, because `serve` runs with them too.
 * `--strict` (for CI) exits 1 on warnings. It also warns when `hostname` or `domains` still hold
 * the shipped example's placeholders (mx.example.com, example.com): with them, mail for the real
 * domains is refused as relaying (`550 5.7.1`, which `softReject` does not soften). Only a
 * warning, as test and example set-ups use those names on purpose.
 * What depends on the user the process runs as (the owner of `spool.dir`) is judged for the user
 * this check runs as, as `serve` judges it for its own; run as root, which cannot know the user
 * `serve` will run as, it does not judge the owner (operators run it as root, before a restart).
 * Run it as the user `serve` runs as for the complete check.
 * It only reads and reports: it must not start listeners or connect anywhere (so what the
 * upstream offers, such as its SIZE, is checked by `serve` at start, not here).
 */
import fs from 'node:fs';
import path from 'node:path';
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Node } from 'yaml';
import { ConfigError, formatIssue, loadConfigWithWarnings, type Issue } from '../config/load.ts';
import type { CheckValidator } from '../config/check-validator.ts';
import { escapeUnprintable } from '../config/issues.ts';
import type { Config } from '../config/types.ts';
import { checkRules, ruleOptions } from '../rules/index.ts';
import { submissionFilesCheck } from '../submission/index.ts';

/** Validators run by `mailwarden check` after the config loaded cleanly, in order. */
export const checkValidators: CheckValidator[] = [
    // every rule file and list parses and validates (errors); every `cases:` example gives its expected decision (warnings)
    { name: 'rules', validate: (config) => checkRules(config.rules, ruleOptions(config)) },
    // the submission users (or sendAs) file parses, and holds only password hashes
    submissionFilesCheck,
];

/** The example configuration's names (deploy/mailwarden.yaml), which are nobody's real domains (RFC 2606). */
export const PLACEHOLDER_HOSTNAME = 'mx.example.com';
export const PLACEHOLDER_DOMAIN = 'example.com';

/**
 * Warnings for `hostname` and `domains` entries that are still the example's placeholders, at
 * their place in the file (`text`, named `file`). Reads the YAML source only for positions.
 */
export function placeholderWarnings(file: string, text: string, config: Config): Issue[] {
    const lines = new LineCounter();
    // columns as an editor shows them, without a byte-order mark (as SourceReader counts them)
    const doc = parseDocument(text.startsWith('\uFEFF') ? text.slice(1) : text, { lineCounter: lines });
    const at = (node: unknown, message: string): Issue => {
        const offset = (node as Node | null)?.range?.[0] ?? 0;
        const { line, col } = lines.linePos(offset);
        return { file, line, col, message, severity: 'warning' };
    };
    const warnings: Issue[] = [];
    const root = doc.contents;
    if (!isMap(root)) return warnings;
    if (config.hostname.toLowerCase() === PLACEHOLDER_HOSTNAME) {
        warnings.push(
            at(
                root.get('hostname', true),
                `hostname: still the example's "${PLACEHOLDER_HOSTNAME}"; write the name of your MX records and certificate`,
            ),
        );
    }
    const domains = root.get('domains', true);
    const items: unknown[] = isSeq(domains) ? domains.items : [domains];
    for (const item of items) {
        if (!isScalar(item) || typeof item.value !== 'string') continue;
        if (item.value.toLowerCase() !== PLACEHOLDER_DOMAIN) continue;
        warnings.push(
            at(
                item,
                `domains: still the example's "${PLACEHOLDER_DOMAIN}"; list every domain Postfix receives mail for, ` +
                    'or mail to them is refused as relaying (550 5.7.1, not softened by softReject)',
            ),
        );
    }
    return warnings;
}

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
        // judged as serve runs it, for the user this check runs as (the owner of spool.dir; not
        // judged as root)
        ({ config, warnings } = loadConfigWithWarnings(
            opts.configPath,
            opts.env,
            opts.cwd === undefined ? { forServe: true, check: true } : { cwd: opts.cwd, forServe: true, check: true },
        ));
    } catch (e) {
        if (!(e instanceof ConfigError)) throw e;
        for (const issue of e.issues) opts.err(formatIssue(issue));
        return 1;
    }
    const issues: Issue[] = [];
    if (opts.configPath !== null) {
        const text = fs.readFileSync(path.resolve(opts.cwd ?? process.cwd(), opts.configPath), 'utf8');
        issues.push(...placeholderWarnings(opts.configPath, text, config));
    }
    // warnings such as file permissions: printed at once, and counted with the others
    let validatorWarnings = 0;
    for (const validator of opts.validators ?? checkValidators) {
        issues.push(...(await validator.validate(config)));
        for (const w of validator.warn?.(config) ?? []) {
            opts.err(escapeUnprintable(`${w.file}: warning: ${w.message}`));
            validatorWarnings++;
        }
    }
    const errors = issues.filter((i) => i.severity !== 'warning');
    const warned: Issue[] = [
        ...warnings.map((w) => ({ ...w, severity: 'warning' as const })),
        ...issues.filter((i) => i.severity === 'warning'),
    ];
    for (const issue of [...errors, ...warned]) opts.err(formatIssue(issue));
    if (errors.length > 0) return 1;
    const source = opts.configPath ?? 'embedded defaults';
    const warningCount = warned.length + validatorWarnings;
    if (warningCount === 0) {
        opts.out(`ok: ${source}`);
        return 0;
    }
    const counted = `${warningCount} warning${warningCount === 1 ? '' : 's'}`;
    if (opts.strict) {
        opts.err(`${source}: ${counted}, and --strict refuses warnings (serve and reload would accept these files)`);
        return 1;
    }
    opts.out(`ok: ${source} (${counted}; serve and reload accept these files as they are)`);
    return 0;
}
