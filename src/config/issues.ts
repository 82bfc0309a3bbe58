/**
 * The error shape shared by config and rule-file validation: positioned issues rendered as
 * `FILE:LINE:COL: message` (`FILE:LINE:COL: warning: message` for a warning, which refuses
 * nothing), the ConfigError that carries all of them at once, and why a file could not be read.
 * The rendering escapes unprintable characters and cuts very long quoted values, so no file can
 * write escape sequences to the terminal through a message, and no quoted value carrying
 * credentials (`user:secret@host`) is shown. Formatting only; it must not decide what is valid,
 * and imports no config module but redact.ts, which imports nothing (every config module may
 * import it).
 */
import { redactUserinfo } from './redact.ts';

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

/**
 * Characters a terminal would act on or hide instead of showing: control characters (C0, DEL,
 * C1: escape sequences, line breaks), format characters (bidirectional overrides, zero-width
 * ones), line and paragraph separators and lone surrogates.
 */
const UNPRINTABLE = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}]/gu;
const ESCAPES: Readonly<Record<string, string>> = { '\t': '\\t', '\n': '\\n', '\r': '\\r' };

/** The text with every unprintable character written as an escape (`\x1b`, `\n`, `\u{202e}`). */
export function escapeUnprintable(text: string): string {
    return text.replace(UNPRINTABLE, (c) => {
        const known = ESCAPES[c];
        if (known !== undefined) return known;
        const code = c.codePointAt(0) ?? 0;
        return code < 0x100 ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u{${code.toString(16)}}`;
    });
}

/** A quoted value in a message longer than this many characters is cut to QUOTED_KEEP of them. */
const QUOTED_MAX = 120;
const QUOTED_KEEP = 100;

/** Cuts every very long `"…"` value in a message: its start, `…`, and how long it was. */
function shortenQuoted(message: string): string {
    return message.replace(/"([^"]*)"/g, (whole, written: string) => {
        // a quoted value that carries credentials (user:secret@host) never reaches the output
        const inner = redactUserinfo(written);
        const chars = [...inner];
        if (chars.length <= QUOTED_MAX) return inner === written ? whole : `"${inner}"`;
        return `"${chars.slice(0, QUOTED_KEEP).join('')}…" (${chars.length} characters)`;
    });
}

/**
 * One issue as the line `check` and `serve` print: `FILE:LINE:COL: message`. File names and
 * messages quote what the files say; unprintable characters in them are escaped and very long
 * quoted values cut here, once for every message.
 */
export function formatIssue(issue: Issue): string {
    const label = issue.severity === 'warning' ? 'warning: ' : '';
    const file = escapeUnprintable(issue.file);
    return `${file}:${issue.line}:${issue.col}: ${label}${escapeUnprintable(shortenQuoted(issue.message))}`;
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
