/**
 * Shared domain types: stages, facts, actions and decisions.
 * Pure declarations only; nothing here performs I/O or holds state.
 */

/** The SMTP stages at which checks run and rules are evaluated, in session order. */
export type Stage = 'connect' | 'helo' | 'mail' | 'rcpt' | 'data';

/** What the proxy does with a message (SPEC, "Actions and replies"). */
export type Action = 'accept' | 'tag' | 'quarantine' | 'tempfail' | 'reject';

/** A fact value as checks report it and rules read it. */
export type FactValue = string | number | boolean | readonly string[] | null;

/** Named facts (stable dot names: `client.ip`, `mail.from.domain`, …). */
export type Facts = Readonly<Record<string, FactValue>>;

/** A header to prepend to a forwarded message. */
export interface HeaderField {
    readonly name: string;
    readonly value: string;
}

/** A public SMTP reply: basic code, enhanced status code (RFC 3463) and a sentence for people. */
export interface SmtpReply {
    readonly code: number;
    readonly enhanced: string;
    readonly text: string;
}

/** The outcome of evaluating facts at one stage. */
export interface Decision {
    readonly action: Action;
    /** Ids of the rules that contributed (terminal rule last). */
    readonly rules: readonly string[];
    readonly score: number;
    /** Internal explanation for logs; never sent to the client. */
    readonly reason: string;
    /** A reply chosen by a rule; the reply table supplies one otherwise. */
    readonly reply?: SmtpReply;
    /** Extra headers added by the decision (tags). */
    readonly headers: readonly HeaderField[];
}

/** Turns the facts known at a stage into a decision. Pure and synchronous. */
export interface Decider {
    decide(stage: Stage, facts: Facts): Decision;
}
