/**
 * Shared domain types: stages, facts, actions and decisions, the client's identity, and the
 * contract every check implements (pipeline.ts runs them).
 * Pure declarations only; nothing here performs I/O or holds state.
 */
import type { Readable } from 'node:stream';

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
    /** Ids of the `mode: monitor` rules that matched (they changed nothing); absent when none did. */
    readonly monitor?: readonly string[];
}

/** Turns the facts known at a stage into a decision. Pure and synchronous. */
export interface Decider {
    decide(stage: Stage, facts: Facts): Decision;
}

/** Who the real client is, passed on with XCLIENT where the upstream allows it. */
export interface ClientIdentity {
    readonly ip: string;
    readonly port: number;
    /** Verified reverse name, or null when unknown. */
    readonly ptr: string | null;
    /**
     * The reverse lookup behind `ptr`, as the iprev check left it (absent before it ran): the
     * client's reverse name, confirmed or not (Postfix's "reverse client name"), or null when it
     * has none; and `temporary`, true when the lookup failed for now (a DNS error that says
     * nothing about the name, or the check timed out), so that a name it did not find is not
     * known to be missing.
     */
    readonly reverse?: { readonly name: string | null; readonly temporary: boolean };
    /** HELO/EHLO argument, or null before one was given. */
    readonly helo: string | null;
    readonly proto: 'SMTP' | 'ESMTP';
    /** SASL login of an authenticated submission client. */
    readonly login: string | null;
}

/** The received message, for data-stage checks. */
export interface MessageSource {
    /** The message exactly as received, in canonical CRLF form, from the first header on. */
    stream(): Readable;
    readonly size: number;
}

export interface CheckContext {
    readonly stage: Stage;
    /** The SMTP session's id (for state a check keeps per connection, such as concurrency leases). */
    readonly sessionId: string;
    /** Facts known before this stage's checks ran. */
    readonly facts: Facts;
    /** The client as seen by the listener. */
    readonly client: ClientIdentity;
    /**
     * Envelope sender (empty string for the null reverse-path) and recipients: at the rcpt stage
     * the one being decided, at the data stage every accepted one.
     */
    readonly envelope: { readonly mailFrom: string | null; readonly rcptTo: readonly string[] };
    /** The message, at the data stage only. */
    readonly message: MessageSource | null;
}

/** What a check reports: facts, and header fields to prepend when the message is forwarded. */
export interface CheckResult {
    readonly facts: Facts;
    readonly headers?: readonly HeaderField[];
}

export interface Check {
    /** Stable snake_case name used in facts, logs and metric labels. */
    readonly name: string;
    readonly stages: readonly Stage[];
    readonly timeoutMs: number;
    readonly onError: 'tempfail' | 'ignore';
    /**
     * `signal` aborts when the check times out, fails or returns; the check must then start no
     * new work (no DNS query, no further reading). Message streams it opened through
     * `ctx.message` are destroyed by the pipeline at that moment.
     */
    run(ctx: CheckContext, signal: AbortSignal): Promise<CheckResult>;
    /**
     * Called when the client connects and the connect stage did not refuse it, before the
     * greeting: starts lookups the check will need at its own (later) stage, so they are under
     * way or cached by then. It must not wait, throw, or report anything; `run` still does all
     * the work that decides. `signal` aborts when the session ends: what was started for it is
     * given up (pass it to the resolver) and nothing more is started.
     */
    prefetch?(client: ClientIdentity, signal: AbortSignal): void;
    /** Called once when the SMTP session ends, to release per-connection state; must not throw. */
    end?(sessionId: string): Promise<void>;
    /**
     * Called when the upstream accepted a message of the session (its 250 to the end of data),
     * with the recipients it accepted; must not throw or wait (work it starts runs on its own).
     */
    delivered?(sessionId: string, recipients: readonly string[]): void;
}
