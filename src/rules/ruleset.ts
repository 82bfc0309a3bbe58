/**
 * A loaded rule set and its evaluation: the rules of the requested stage run in order; `tag`
 * rules add their score (visible to later rules as the fact `score`) and headers and go on;
 * the first matching rule with any other action (accept, quarantine, tempfail, reject) ends
 * evaluation; `mode: monitor` rules are recorded as "would <action>" and change nothing.
 * With `softReject` (Postfix soft_bounce) a reject becomes a tempfail and its reply's 5xx
 * codes the 4xx equivalents. Limits and greylisting entries stand for ordinary tempfail rules
 * placed first in their stage. Pure and synchronous: no I/O, facts are never modified.
 */
import type { Action, Decider, Decision, Facts, HeaderField, SmtpReply, Stage } from '../types.ts';
import type { GreylistSpec, LimitSpec } from './limits.ts';
import type { ListType } from './lists.ts';
import { softenReply } from '../reply.ts';
import { MAX_HEADER_VALUE, MAX_REPLY_TEXT, renderTemplate } from './template.ts';
import type { Rule, RuleMode } from './rule.ts';

export type { Rule, RuleMode, RuleReplySpec } from './rule.ts';

export interface ListInfo {
    readonly name: string;
    readonly type: ListType;
    /** The list file as named in messages. */
    readonly file: string;
    readonly entries: number;
}

/** What `cases:` expects of one example (fields left out are not compared). */
export interface CaseExpectation {
    readonly action: Action;
    /** Id of the rule that ended evaluation, or null for none. */
    readonly rule?: string | null;
    readonly score?: number;
    /** Decision.rules: the tag rules and the terminal rule that contributed, in order. */
    readonly rules?: readonly string[];
    readonly headers?: Readonly<Record<string, string>>;
    /** The reply a rule chose (null: the rule gave none, the reply table answers). */
    readonly reply?: SmtpReply | null;
    /** Ids of the monitor-mode rules that matched. */
    readonly monitor?: readonly string[];
}

export interface RuleCase {
    readonly file: string;
    readonly line: number;
    readonly col: number;
    readonly name: string;
    readonly stage: Stage;
    readonly facts: Facts;
    readonly expect: CaseExpectation;
}

export interface TraceEntry {
    readonly id: string;
    readonly file: string;
    readonly line: number;
    readonly mode: RuleMode;
    readonly action: Action;
    readonly matched: boolean;
    /** Present when the rule was not evaluated because an earlier rule ended evaluation. */
    readonly skipped?: 'after-terminal';
    /** Why each condition held (✓) or not (✗). */
    readonly detail: string;
}

/** A rule that matched, for `rule_hits_total{rule,action,mode}`. */
export interface RuleHit {
    readonly id: string;
    readonly action: Action;
    readonly mode: RuleMode;
}

export interface Evaluation {
    readonly decision: Decision;
    /** One entry per rule of the stage, in order. */
    readonly trace: readonly TraceEntry[];
    /** Every rule that matched, enforce and monitor, in order: count these as rule hits. */
    readonly matchedRules: readonly RuleHit[];
    /** The rule that ended evaluation, or null. */
    readonly terminal: string | null;
}

export interface EvaluateOptions {
    /** Overrides the rule set's softReject (cases run with false). */
    readonly softReject?: boolean;
    /** Set to false to skip building the trace (faster; `trace` is then empty). */
    readonly trace?: boolean;
}

/** A validated rule set: a Decider, plus evaluation with a trace for `explain` and metrics. */
export interface RuleSet extends Decider {
    readonly dir: string;
    readonly softReject: boolean;
    /** Rule files in load order, as named in messages. */
    readonly files: readonly string[];
    readonly rules: readonly Rule[];
    readonly lists: readonly ListInfo[];
    readonly cases: readonly RuleCase[];
    /** Rate and concurrency limits (`limits:`), in file order; their implicit rules are in `rules`. */
    readonly limits: readonly LimitSpec[];
    /** Greylisting entries (`greylist:`), in file order; their implicit rules are in `rules`. */
    readonly greylists: readonly GreylistSpec[];
    /** Folders whose changes can change this rule set (the rules folder, lists/, list file folders). */
    readonly watchDirs: readonly string[];
    /** Evaluates and returns only the decision. */
    decide(stage: Stage, facts: Facts): Decision;
    /** Evaluates with a per-rule trace and the list of matched rules. */
    evaluate(stage: Stage, facts: Facts, options?: EvaluateOptions): Evaluation;
}

function isTerminal(action: Action): boolean {
    return action !== 'tag';
}

/** Evaluates `rules` (already those of `stage`, in order). */
export function evaluateRules(
    rules: readonly Rule[],
    facts: Facts,
    softReject: boolean,
    withTrace: boolean,
): Evaluation {
    let score = typeof facts.score === 'number' ? facts.score : 0;
    let view: Facts = facts.score === score ? facts : { ...facts, score };
    const headers: HeaderField[] = [];
    const contributed: string[] = [];
    const tags: string[] = [];
    const monitored: RuleHit[] = [];
    const matchedRules: RuleHit[] = [];
    const trace: TraceEntry[] = [];
    let terminal: Rule | null = null;
    let reply: SmtpReply | undefined;

    for (const rule of rules) {
        const base = { id: rule.id, file: rule.file, line: rule.line, mode: rule.mode, action: rule.action };
        if (terminal !== null) {
            if (withTrace) {
                trace.push({
                    ...base,
                    matched: false,
                    skipped: 'after-terminal',
                    detail: `not evaluated: rule ${terminal.id} ended evaluation`,
                });
            }
            continue;
        }
        let matched: boolean;
        if (withTrace) {
            const r = rule.when.explain(view);
            matched = r.ok;
            trace.push({ ...base, matched, detail: r.text });
        } else {
            matched = rule.when.test(view);
        }
        if (!matched) continue;
        const hit: RuleHit = { id: rule.id, action: rule.action, mode: rule.mode };
        matchedRules.push(hit);
        if (rule.mode === 'monitor') {
            monitored.push(hit);
            continue;
        }
        contributed.push(rule.id);
        if (!isTerminal(rule.action) && rule.score !== 0) {
            score += rule.score;
            view = { ...view, score };
        }
        // Header templates see the score including this rule's own points.
        for (const h of rule.headers) {
            headers.push({ name: h.name, value: renderTemplate(h.value, view, MAX_HEADER_VALUE) });
        }
        if (!isTerminal(rule.action)) {
            tags.push(rule.id);
            continue;
        }
        terminal = rule;
        const spec = rule.pickReply?.(view) ?? rule.reply;
        if (spec) {
            reply = {
                code: spec.code,
                enhanced: spec.enhanced,
                text: renderTemplate(spec.text, view, MAX_REPLY_TEXT),
            };
        }
    }

    let action: Action = terminal?.action ?? (tags.length > 0 ? 'tag' : 'accept');
    const reasons: string[] = [];
    if (terminal) reasons.push(`rule ${terminal.id} (${terminal.action})`);
    if (tags.length > 0) reasons.push(`tagged by ${tags.join(', ')} (score ${score})`);
    if (reasons.length === 0) reasons.push('no rule matched');
    if (monitored.length > 0) {
        reasons.push(`monitor: ${monitored.map((m) => `would ${m.action} (${m.id})`).join(', ')}`);
    }
    if (softReject && action === 'reject') {
        action = 'tempfail';
        if (reply) reply = softenReply(reply);
        reasons.push('softReject: reject turned into tempfail');
    }
    const decision: Decision = {
        action,
        rules: contributed,
        score,
        reason: reasons.join('; '),
        ...(reply ? { reply } : {}),
        headers,
        ...(monitored.length > 0 ? { monitor: monitored.map((m) => m.id) } : {}),
    };
    return { decision, trace, matchedRules, terminal: terminal?.id ?? null };
}

/** Freezes plain objects and arrays, recursively. Functions and class instances are left alone. */
export function deepFreeze<T>(value: T): T {
    if (value === null || typeof value !== 'object' || Object.isFrozen(value)) return value;
    const proto = Object.getPrototypeOf(value) as unknown;
    if (!Array.isArray(value) && proto !== Object.prototype && proto !== null) return value;
    Object.freeze(value);
    for (const v of Object.values(value as object)) deepFreeze(v);
    return value;
}

/** Builds the RuleSet object over validated parts. */
export function makeRuleSet(parts: {
    dir: string;
    softReject: boolean;
    files: readonly string[];
    rules: readonly Rule[];
    lists: readonly ListInfo[];
    cases: readonly RuleCase[];
    limits?: readonly LimitSpec[];
    greylists?: readonly GreylistSpec[];
    watchDirs: readonly string[];
}): RuleSet {
    const byStage = new Map<Stage, Rule[]>();
    for (const r of parts.rules) {
        const list = byStage.get(r.stage) ?? [];
        list.push(r);
        byStage.set(r.stage, list);
    }
    for (const list of byStage.values()) Object.freeze(list);
    const none: readonly Rule[] = Object.freeze([]);
    const set: RuleSet = {
        dir: parts.dir,
        softReject: parts.softReject,
        files: parts.files,
        rules: parts.rules,
        lists: parts.lists,
        cases: parts.cases,
        limits: parts.limits ?? [],
        greylists: parts.greylists ?? [],
        watchDirs: parts.watchDirs,
        decide: (stage, facts) => evaluateRules(byStage.get(stage) ?? none, facts, parts.softReject, false).decision,
        evaluate: (stage, facts, options) =>
            evaluateRules(
                byStage.get(stage) ?? none,
                facts,
                options?.softReject ?? parts.softReject,
                options?.trace ?? true,
            ),
    };
    return deepFreeze(set);
}

/**
 * A Decider over a rule set that reports every matched rule (for the metric
 * `rule_hits_total{rule,action,mode}`) before returning the decision. `softReject`, when
 * given, is asked at every decision (the running config's switch, which a reload can flip
 * without reloading the rules); otherwise the rule set's own setting applies.
 */
export function withRuleHits(
    ruleSet: RuleSet,
    onHit: (hit: RuleHit) => void,
    options: { readonly softReject?: () => boolean } = {},
): Decider {
    const softReject = options.softReject;
    return {
        decide(stage, facts) {
            const r = ruleSet.evaluate(
                stage,
                facts,
                softReject ? { trace: false, softReject: softReject() } : { trace: false },
            );
            for (const hit of r.matchedRules) onHit(hit);
            return r.decision;
        },
    };
}
