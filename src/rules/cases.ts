/**
 * Runs the examples written in rule files (`cases:`): facts in, expected decision out. This
 * makes rules tested code: `mailwarden check` fails when a case does not hold. Cases run with
 * softReject off unless told otherwise, because they describe what the rules decide, not how
 * the deployment switch softens it. Pure: evaluation only.
 */
import type { Issue } from '../config/issues.ts';
import type { HeaderField, SmtpReply } from '../types.ts';
import type { CaseExpectation, Evaluation, RuleCase, RuleSet } from './ruleset.ts';

export interface CaseFailure {
    readonly file: string;
    readonly line: number;
    readonly col: number;
    readonly name: string;
    readonly expected: string;
    readonly actual: string;
}

export interface CaseResults {
    readonly passed: number;
    readonly failed: readonly CaseFailure[];
}

function showReply(reply: SmtpReply | null | undefined): string {
    return reply ? `${reply.code} ${reply.enhanced} ${reply.text}` : 'none';
}

function showHeaders(headers: Readonly<Record<string, string>> | readonly HeaderField[]): string {
    const entries = Array.isArray(headers)
        ? (headers as readonly HeaderField[]).map((h) => [h.name, h.value] as const)
        : Object.entries(headers as Readonly<Record<string, string>>);
    if (entries.length === 0) return '{}';
    return `{ ${[...entries]
        .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
        .map(([n, v]) => `${n}: ${JSON.stringify(v)}`)
        .join(', ')} }`;
}

function showList(ids: readonly string[]): string {
    return `[${ids.join(', ')}]`;
}

/** The fields of an evaluation that an expectation names, rendered the same way on both sides. */
function compare(expect: CaseExpectation, ev: Evaluation): { expected: string[]; actual: string[]; ok: boolean } {
    const d = ev.decision;
    const expected: string[] = [];
    const actual: string[] = [];
    let ok = true;
    const field = (name: string, want: string, got: string): void => {
        expected.push(`${name} ${want}`);
        actual.push(`${name} ${got}`);
        if (want !== got) ok = false;
    };
    field('action', expect.action, d.action);
    if (expect.rule !== undefined) field('rule', expect.rule ?? 'none', ev.terminal ?? 'none');
    if (expect.score !== undefined) field('score', String(expect.score), String(d.score));
    if (expect.rules !== undefined) field('rules', showList(expect.rules), showList(d.rules));
    if (expect.headers !== undefined) field('headers', showHeaders(expect.headers), showHeaders(d.headers));
    if (expect.reply !== undefined) field('reply', showReply(expect.reply), showReply(d.reply));
    if (expect.monitor !== undefined) {
        const monitored = ev.matchedRules.filter((h) => h.mode === 'monitor').map((h) => h.id);
        field('monitor', showList(expect.monitor), showList(monitored));
    }
    return { expected, actual, ok };
}

/** Runs `cases` (default: every case in the rule set) and reports those that do not hold. */
export function runCases(
    ruleSet: RuleSet,
    options: { readonly softReject?: boolean; readonly cases?: readonly RuleCase[] } = {},
): CaseResults {
    let passed = 0;
    const failed: CaseFailure[] = [];
    for (const c of options.cases ?? ruleSet.cases) {
        let ev: Evaluation;
        try {
            ev = ruleSet.evaluate(c.stage, c.facts, { softReject: options.softReject ?? false, trace: false });
        } catch (err) {
            failed.push({
                file: c.file,
                line: c.line,
                col: c.col,
                name: c.name,
                expected: `action ${c.expect.action}`,
                actual: `error: ${err instanceof Error ? err.message : String(err)}`,
            });
            continue;
        }
        const r = compare(c.expect, ev);
        if (r.ok) passed++;
        else
            failed.push({
                file: c.file,
                line: c.line,
                col: c.col,
                name: c.name,
                expected: r.expected.join(', '),
                actual: r.actual.join(', '),
            });
    }
    return { passed, failed };
}

/** A failed case as a `FILE:LINE:COL: message` issue. */
export function caseIssue(f: CaseFailure): Issue {
    return {
        file: f.file,
        line: f.line,
        col: f.col,
        message: `case "${f.name}" failed: expected ${f.expected}; got ${f.actual}`,
    };
}
