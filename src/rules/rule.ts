/**
 * A validated, compiled rule: its stage, condition, action, mode, reply and header fields, as the
 * loader (load.ts) and the limits (limits.ts, which imply rules of their own) build it and the
 * rule set (ruleset.ts) evaluates it. Declarations only; nothing here evaluates or validates.
 */
import type { Action, Facts, Stage } from '../types.ts';
import type { Condition } from './conditions.ts';
import type { Template } from './template.ts';

export type RuleMode = 'enforce' | 'monitor';

export interface RuleReplySpec {
    readonly code: number;
    readonly enhanced: string;
    readonly text: Template;
}

/** A validated, compiled rule. */
export interface Rule {
    readonly id: string;
    readonly description: string | null;
    /** The rule file as named in messages, and the line of the rule's `id`. */
    readonly file: string;
    readonly line: number;
    readonly stage: Stage;
    readonly action: Action;
    readonly mode: RuleMode;
    /** Added to the score when a tag rule matches (0 for other actions). */
    readonly score: number;
    readonly when: Condition;
    readonly reply: RuleReplySpec | null;
    readonly headers: readonly { readonly name: string; readonly value: Template }[];
    /** Set on the rules a limit or a greylisting entry implies; they come first in their stage. */
    readonly implicit?: 'limit' | 'greylist';
    /** Chooses the reply from the facts when it depends on them (implicit rules); null: `reply`. */
    readonly pickReply?: (facts: Facts) => RuleReplySpec | null;
}
