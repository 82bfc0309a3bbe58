/**
 * Runs the examples written in rule files (`cases:`): facts in, expected decision out. This
 * makes rules tested code. A case that does not hold is a warning, never a refusal: `serve`,
 * reload and `mailwarden check` all load such rules and report it (rules/README.md, "Cases").
 * When a case fails only because a rule it involves has been switched between `mode: enforce`
 * and `mode: monitor`, the failure names that rule and says what to change. Cases run with
 * softReject off unless told otherwise, because they describe what the rules decide, not how
 * the deployment switch softens it. Pure: evaluation only.
 */
import type { Issue } from '../config/issues.ts';
import type { HeaderField, SmtpReply } from '../types.ts';
import { greylistRule, limitRule } from './limits.ts';
import {
    evaluateRules,
    type CaseExpectation,
    type Evaluation,
    type Rule,
    type RuleCase,
    type RuleMode,
    type RuleSet,
} from './ruleset.ts';

export interface CaseFailure {
    readonly file: string;
    readonly line: number;
    readonly col: number;
    readonly name: string;
    readonly expected: string;
    readonly actual: string;
    /**
     * Set when the case would hold with these rules in the other mode: they are now in `mode`
     * and the case was written for the other one (typically a rule switched to monitor mode).
     */
    readonly modeSwitch?: {
        readonly rules: readonly string[];
        readonly mode: RuleMode;
        /**
         * Rules in enforce mode that the case does not expect in monitor mode (no `monitor:` names
         * them): the case holds without them, so they match facts the case was not written for (a
         * list entry or a rule edited since), not rules switched back from monitor mode.
         */
        readonly unexpected?: boolean;
    };
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

/** Single rules tried per mode when explaining a failed case; a stage rarely has more. */
const MAX_SWITCH_TRIES = 200;

/** `rule` as it would be in `mode` (a limit's or greylisting entry's rule is built again: its condition depends on the mode). */
function inMode(ruleSet: RuleSet, rule: Rule, mode: RuleMode): Rule {
    const limit = rule.implicit === 'limit' ? ruleSet.limits.find((l) => l.id === rule.id) : undefined;
    if (limit) return limitRule({ ...limit, mode });
    const greylist = rule.implicit === 'greylist' ? ruleSet.greylists.find((g) => g.id === rule.id) : undefined;
    if (greylist) return greylistRule({ ...greylist, mode });
    return { ...rule, mode };
}

/**
 * Which rules of the case's stage, now in mode `from`, make a failed case hold when switched
 * to the other mode: each alone first, then all of them together. Null when no switch does.
 */
function modeSwitch(
    ruleSet: RuleSet,
    c: RuleCase,
    from: RuleMode,
    softReject: boolean,
): CaseFailure['modeSwitch'] | null {
    const stage = ruleSet.rules.filter((r) => r.stage === c.stage);
    const ids = stage.filter((r) => r.mode === from).map((r) => r.id);
    if (ids.length === 0 || ids.length > MAX_SWITCH_TRIES) return null;
    const to: RuleMode = from === 'monitor' ? 'enforce' : 'monitor';
    const tries = ids.length > 1 ? [...ids.map((id) => [id]), ids] : [ids];
    for (const t of tries) {
        const rules = stage.map((r) => (t.includes(r.id) ? inMode(ruleSet, r, to) : r));
        if (compare(c.expect, evaluateRules(rules, c.facts, softReject, false)).ok) {
            const named = from === 'monitor' || t.every((id) => c.expect.monitor?.includes(id) === true);
            return { rules: t, mode: from, ...(named ? {} : { unexpected: true }) };
        }
    }
    return null;
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
        if (r.ok) {
            passed++;
            continue;
        }
        const softReject = options.softReject ?? false;
        const switched = modeSwitch(ruleSet, c, 'monitor', softReject) ?? modeSwitch(ruleSet, c, 'enforce', softReject);
        failed.push({
            file: c.file,
            line: c.line,
            col: c.col,
            name: c.name,
            expected: r.expected.join(', '),
            actual: r.actual.join(', '),
            ...(switched ? { modeSwitch: switched } : {}),
        });
    }
    return { passed, failed };
}

/** What to do about a case that fails because of a switched mode. */
function modeHint(s: NonNullable<CaseFailure['modeSwitch']>): string {
    const ids = s.rules.join(', ');
    const one = s.rules.length === 1;
    if (s.unexpected) {
        return (
            `the case holds without ${one ? 'rule' : 'rules'} ${ids}, which now ${one ? 'matches' : 'match'} its facts ` +
            `(a list entry or a rule edited since?) — update the case to expect ${one ? 'it' : 'them'}, ` +
            `or change ${one ? 'the rule or the list it reads' : 'the rules or the lists they read'}`
        );
    }
    const rule = `${one ? 'rule' : 'rules'} ${ids} ${one ? 'is' : 'are'} in ${s.mode} mode`;
    if (s.mode === 'monitor') {
        return (
            `${rule}; this case expects ${one ? 'its' : 'their'} enforce outcome — update the case ` +
            `(expect what happens without ${one ? 'the rule' : 'them'}, and add monitor: [${ids}]) ` +
            `or set ${one ? 'the rule' : 'them'} back to mode: enforce`
        );
    }
    return (
        `${rule}; this case expects ${one ? 'it' : 'them'} in monitor mode — update the case ` +
        `(expect the enforced outcome, and remove ${ids} from monitor:) or set ${one ? 'the rule' : 'them'} ` +
        'back to mode: monitor'
    );
}

/**
 * A failed case as a `FILE:LINE:COL: warning: message` issue. A warning, not an error: the
 * rules are valid and in force; the example no longer describes them.
 */
export function caseIssue(f: CaseFailure): Issue {
    const hint = f.modeSwitch ? `; ${modeHint(f.modeSwitch)}` : '';
    return {
        file: f.file,
        line: f.line,
        col: f.col,
        message: `case "${f.name}" does not hold: expected ${f.expected}; got ${f.actual}${hint}`,
        severity: 'warning',
    };
}
