/**
 * The rules engine's public surface: load and validate a rules folder, evaluate it (as the
 * pipeline's Decider, or with a trace for `explain`), run its `cases:`, watch it for changes,
 * and the catalogue of facts. Re-exports only; no logic lives here.
 */
export { FACTS, FACT_TYPES, STAGES, type FactSpec, type FactType } from './facts.ts';
export { OPERATORS, type OperatorDoc } from './conditions.ts';
export { LIST_TYPES, MAX_PATTERN_ENTRIES, type ListType } from './lists.ts';
export { RegexEngineError } from './regex.ts';
export {
    RuleError,
    checkRules,
    loadRuleSet,
    loadRules,
    ruleOptions,
    validateRulesForCheck,
    type LoadOptions,
    type LoadResult,
} from './load.ts';
export { softenReply } from '../reply.ts';
export {
    withRuleHits,
    type CaseExpectation,
    type EvaluateOptions,
    type Evaluation,
    type ListInfo,
    type Rule,
    type RuleCase,
    type RuleHit,
    type RuleMode,
    type RuleSet,
    type TraceEntry,
} from './ruleset.ts';
export { runCases, caseIssue, type CaseFailure, type CaseResults } from './cases.ts';
export { watchRuleSet, type RuleWatcher, type WatchOptions, type WatchResult } from './watch.ts';
