/**
 * The error shape shared by config and rule-file validation: positioned issues rendered as
 * `FILE:LINE:COL: message` (`FILE:LINE:COL: warning: message` for a warning, which refuses
 * nothing), the ConfigError that carries all of them at once, and why a file could not be read.
 * Formatting only; it must not decide what is valid, and imports no other config module (every
 * config module may import it).
 */

export interface Issue {
    /** The file as the user named it. */
    readonly file: string;
    /** 1-based. */
    readonly line: number;
    /** 1-based. */
    readonly col: number;
    readonly message: string;
    /** Left out: an error, which refuses the file. `warning`: reported, the file is used anyway. */
    readonly severity?: 'warning';
}

export function formatIssue(issue: Issue): string {
    const label = issue.severity === 'warning' ? 'warning: ' : '';
    return `${issue.file}:${issue.line}:${issue.col}: ${label}${issue.message}`;
}

/** Orders issues by file, then position, so output is stable. */
export function sortIssues(issues: readonly Issue[]): Issue[] {
    return [...issues].sort((a, b) =>
        a.file === b.file ? a.line - b.line || a.col - b.col : a.file < b.file ? -1 : 1,
    );
}

/** Every issue of a file at once, sorted and frozen, its message one `FILE:LINE:COL: …` line each. */
export class IssuesError extends Error {
    readonly issues: readonly Issue[];

    constructor(issues: readonly Issue[], name: string) {
        const sorted = sortIssues(issues);
        super(sorted.map(formatIssue).join('\n'));
        this.name = name;
        this.issues = Object.freeze(sorted.map((i) => Object.freeze({ ...i })));
    }
}

/** The issues of a configuration (or users) file. */
export class ConfigError extends IssuesError {
    constructor(issues: readonly Issue[]) {
        super(issues, 'ConfigError');
    }
}

/** Why a file could not be read, in words (no such file, permission denied, …). */
export function ioReason(err: unknown): string {
    const code = (err as NodeJS.ErrnoException | null)?.code;
    if (code === 'ENOENT') return 'no such file';
    if (code === 'EACCES' || code === 'EPERM') return 'permission denied';
    if (code === 'EISDIR') return 'is a folder, not a file';
    return err instanceof Error ? err.message : String(err);
}
