/**
 * One message's way through the stages, without any I/O: which facts each stage sees, what an
 * earlier stage leaves for a later one (score, tag header fields, matched rules, facts), the
 * refusals that come from the protocol before any rule (message size, bare line endings, header
 * size, on submission a line over 998 characters, the submission sender binding), the reply that
 * refuses a stage (RFC 5321 section 3.1: `554` at connect), and the final action (a tag of an
 * earlier stage turns a data-stage accept into a tag). The live session (session.ts) and
 * `mailwarden explain` both drive this module, so explain tells what serve does; docs/flow.md,
 * "Facts from stage to stage", describes the carry.
 * It must not run checks, talk to a client or the upstream, read the clock, log or count: the
 * caller does the I/O and hands the stage results in.
 */
import type { ListenerConfig } from './config/types.ts';
import type { SpoolSummary } from './data/spool.ts';
import { domainOf, forwardHeaders, type ForwardHeadersInput } from './message-facts.ts';
import type { StageResult } from './pipeline.ts';
import { replyFor, replyForDecision } from './reply.ts';
import { mayUse, type SenderPolicy } from './submission/index.ts';
import type {
    Decision,
    Facts,
    FactValue,
    HeaderField,
    SmtpReply,
    Stage,
    CheckContext,
    ClientIdentity,
} from './types.ts';

/** Largest header section we parse in memory (Postfix's header_size_limit is 100 KB). */
export const MAX_HEADER_SECTION = 1024 * 1024;

/**
 * The longest line a submitted message may have, CRLF excluded (RFC 5322 section 2.1.1). The
 * relay folds a longer one (Postfix's smtp_line_length_limit is 998), which breaks the DKIM
 * signature made over it. An mx listener delivers locally, where nothing folds: not checked there.
 */
export const MAX_SUBMITTED_LINE = 998;

/** The listener settings the flow depends on. */
export interface FlowListener {
    readonly name: string;
    readonly mode: ListenerConfig['mode'];
    readonly bareNewline: ListenerConfig['bareNewline'];
}

/** The client as the flow sees it: its identity, and whether the connection is encrypted. */
export interface FlowClient {
    readonly identity: ClientIdentity;
    readonly tls: boolean;
}

/** What forwarding decisions of earlier stages leave for the later ones. */
interface Carry {
    score: number;
    readonly headers: HeaderField[];
    tagged: boolean;
}

/** One mail transaction (MAIL FROM to the end of DATA). */
export interface Transaction extends Carry {
    readonly mailFrom: string;
    /** MAIL FROM carried SMTPUTF8: non-ASCII recipients are allowed (RFC 6531 section 3.4). */
    readonly smtputf8: boolean;
    /** The largest message this transaction may carry (the SIZE offered to the session). */
    readonly sizeLimit: number;
    /** Accepted recipients, in order. */
    readonly rcpts: string[];
    /** Facts carried to the next stage (see docs/flow.md, "Facts from stage to stage"). */
    facts: Facts;
    /** Every rule that contributed so far, across stages. */
    readonly rulesSeen: Set<string>;
    /** Every `mode: monitor` rule that matched so far, across stages (accepted recipients only at RCPT). */
    readonly monitorSeen: Set<string>;
}

/** A refusal decided before the rules (protocol or binding), with the reason for the log line. */
export interface ProtocolRefusal {
    readonly reply: SmtpReply;
    readonly reason: string;
}

/** The outcome of the data stage: the final decision and, when refused, the reply. */
export interface FinalVerdict {
    readonly decision: Decision;
    /** Every rule that contributed, across stages. */
    readonly rules: readonly string[];
    /** Every `mode: monitor` rule that matched, across stages. */
    readonly monitor: readonly string[];
    readonly refusal: SmtpReply | null;
}

export class MessageFlow {
    readonly id: string;
    private readonly listener: FlowListener;
    /** Facts of the connect stage and of the last helo stage, for every later stage. */
    private connectFacts: Facts = {};
    private heloFacts: Facts = {};
    /** What the connect and helo stages leave for every transaction of the connection. */
    private readonly conn: Carry & { readonly rules: string[]; readonly monitor: Set<string> } = {
        score: 0,
        headers: [],
        rules: [],
        tagged: false,
        monitor: new Set(),
    };

    /** Facts the listener learnt before the session (the pregreet test), for every stage. */
    private readonly earlyFacts: Facts;

    constructor(id: string, listener: FlowListener, earlyFacts: Facts = {}) {
        this.id = id;
        this.listener = listener;
        this.earlyFacts = earlyFacts;
    }

    /** Folds a forwarding decision (tags, score) into `into`. */
    private static keep(into: Carry, decision: Decision): void {
        into.score = decision.score;
        into.headers.push(...decision.headers);
        if (decision.action === 'tag') into.tagged = true;
    }

    /** The reply naming the session id, as every refusal a person may report does. */
    withId(reply: SmtpReply): SmtpReply {
        return reply.text.includes(this.id) ? reply : { ...reply, text: `${reply.text} (id ${this.id})` };
    }

    /** Facts every stage knows about the connection. */
    connectionFacts(client: FlowClient): Record<string, FactValue> {
        const id = client.identity;
        return {
            ...this.connectFacts,
            ...this.heloFacts,
            ...this.earlyFacts,
            listener: this.listener.name,
            'listener.mode': this.listener.mode,
            'client.ip': id.ip,
            'client.ptr': id.ptr,
            tls: client.tls,
            helo: id.helo,
            'auth.user': id.login,
        };
    }

    /** What the checks of a stage are given, for `runStage`: the envelope is read from the facts. */
    context(facts: Facts, client: ClientIdentity): Omit<CheckContext, 'stage'> {
        return {
            sessionId: this.id,
            facts,
            client,
            envelope: {
                mailFrom: typeof facts['mail.from'] === 'string' ? facts['mail.from'] : null,
                rcptTo: Array.isArray(facts['rcpt.to']) ? (facts['rcpt.to'] as readonly string[]) : [],
            },
            message: null,
        };
    }

    /**
     * The reply refusing a stage's decision, or null when the decision lets the client go on.
     * It names the session id; RFC 5321 section 3.1: a server refusing the connection answers 554.
     */
    refusal(stage: Stage, decision: Decision): SmtpReply | null {
        const refusal = replyForDecision(decision, { id: this.id }, stage);
        return refusal ? this.withId(refusal) : null;
    }

    /** Facts for the connect stage. */
    connectStageFacts(client: FlowClient): Facts {
        return { ...this.connectionFacts(client), score: this.conn.score };
    }

    /** The connect stage let the client in: its facts and tags stay for the whole connection. */
    connected(result: StageResult): void {
        MessageFlow.keep(this.conn, result.decision);
        this.conn.rules.push(...result.decision.rules);
        for (const r of result.decision.monitor ?? []) this.conn.monitor.add(r);
        this.connectFacts = result.facts;
    }

    /** Facts for the helo stage (run at the first MAIL after each EHLO/HELO). */
    heloStageFacts(client: FlowClient): Facts {
        return { ...this.connectionFacts(client), score: this.conn.score };
    }

    /**
     * The helo stage let the client go on: its facts and tags stay for the connection. Returns the
     * client's names as the iprev check reported them at this stage (see clientNames).
     */
    heloDone(result: StageResult): Pick<ClientIdentity, 'ptr' | 'reverse'> {
        MessageFlow.keep(this.conn, result.decision);
        this.conn.rules.push(...result.decision.rules);
        for (const r of result.decision.monitor ?? []) this.conn.monitor.add(r);
        this.heloFacts = result.facts;
        return clientNames(result);
    }

    /**
     * Submission: the envelope sender must be one the login may use (Postfix's
     * reject_sender_login_mismatch); `553 5.7.1` otherwise. The null sender is never allowed.
     */
    senderRefusal(
        binding: { readonly login: string; readonly policy: SenderPolicy } | null,
        from: string,
    ): ProtocolRefusal | null {
        if (binding === null || mayUse(binding.login, from, binding.policy)) return null;
        return {
            reply: this.withId(
                replyFor('sender-not-owned', { id: this.id, address: from || '<>', login: binding.login }),
            ),
            reason: 'envelope sender not owned by the login',
        };
    }

    /** Facts for the mail stage. */
    mailStageFacts(client: FlowClient, from: string): Facts {
        return {
            ...this.connectionFacts(client),
            'mail.from': from,
            'mail.from.domain': domainOf(from),
            score: this.conn.score,
        };
    }

    /** The mail stage and the upstream accepted the sender: a transaction begins. */
    begin(
        result: StageResult,
        envelope: { readonly mailFrom: string; readonly smtputf8: boolean; readonly sizeLimit: number },
    ): Transaction {
        const tx: Transaction = {
            ...envelope,
            rcpts: [],
            facts: result.facts,
            rulesSeen: new Set([...this.conn.rules, ...result.decision.rules]),
            monitorSeen: new Set([...this.conn.monitor, ...(result.decision.monitor ?? [])]),
            score: this.conn.score,
            headers: [...this.conn.headers],
            tagged: this.conn.tagged,
        };
        MessageFlow.keep(tx, result.decision);
        return tx;
    }

    /**
     * Facts for the rcpt stage of recipient `to`: the rcpt stage decides this recipient alone,
     * as Postfix's recipient restrictions do, so `rcpt.address` is `to` and `rcpt.to` holds only
     * `to`. The recipients accepted before are not in them: a rule that accepts one recipient
     * cannot accept a later one, and each RCPT costs the same whatever came before it.
     * `rcpt.count` counts the accepted recipients and this one.
     */
    rcptStageFacts(tx: Transaction, to: string): Facts {
        return {
            ...tx.facts,
            'rcpt.to': [to],
            'rcpt.address': to,
            'rcpt.count': tx.rcpts.length + 1,
            'rcpt.domain': domainOf(to),
            score: tx.score,
        };
    }

    /**
     * The rcpt stage and the upstream accepted recipient `to`. Its stage's facts (rcpt.address,
     * rcpt.domain, greylist.*, ratelimit.*, …) carry on to the next recipient and to the data
     * stage: a later recipient's value replaces an earlier one's; a refused recipient leaves
     * nothing. From here on (the data stage) `rcpt.to` is every accepted recipient, in order.
     */
    recipientAccepted(tx: Transaction, to: string, result: StageResult): void {
        tx.rcpts.push(to);
        // The list itself, not a copy: copying it at every RCPT would cost a transaction the
        // square of its recipients. It only grows, and only the data stage reads it.
        tx.facts = { ...result.facts, 'rcpt.to': tx.rcpts, 'rcpt.count': tx.rcpts.length };
        MessageFlow.keep(tx, result.decision);
        for (const r of result.decision.rules) tx.rulesSeen.add(r);
        for (const r of result.decision.monitor ?? []) tx.monitorSeen.add(r);
    }

    /**
     * The `mode: monitor` rules that matched so far (of the transaction `tx`, else of the
     * connection), and those of `decision`, each once, in the order they first matched: for
     * the log line of a refusal, which changed nothing they would have done.
     */
    monitored(tx: Transaction | null, decision?: Decision): string[] {
        return [...new Set([...(tx ? tx.monitorSeen : this.conn.monitor), ...(decision?.monitor ?? [])])];
    }

    /**
     * Refusals that come from the protocol, before any policy: size, line endings, header size,
     * and on submission a line over MAX_SUBMITTED_LINE.
     */
    protocolRefusal(summary: SpoolSummary, sizeLimit: number): ProtocolRefusal | null {
        const id = this.id;
        if (summary.tooBig) {
            return {
                reply: replyFor('message-too-big', { id, limit: sizeLimit }),
                reason: `message larger than ${sizeLimit} bytes`,
            };
        }
        if (MessageFlow.hasBareNewline(summary) && this.listener.bareNewline === 'reject') {
            return {
                reply: replyFor('bare-newline', { id }),
                reason: `bare LF ${summary.bareLf}, bare CR ${summary.bareCr}, NUL ${summary.nul}`,
            };
        }
        if (summary.headerLength < 0) {
            return {
                reply: replyFor('header-too-big', { id, limit: MAX_HEADER_SECTION }),
                reason: 'header section too big',
            };
        }
        if (this.listener.mode === 'submission' && summary.longestLine > MAX_SUBMITTED_LINE) {
            return {
                reply: replyFor('message-line-too-long', { id, limit: MAX_SUBMITTED_LINE }),
                reason: `a line of ${summary.longestLine} bytes, over ${MAX_SUBMITTED_LINE} (RFC 5322 section 2.1.1)`,
            };
        }
        return null;
    }

    /** Whether the message holds a bare LF, bare CR or NUL (the caller counts it unless too big). */
    static hasBareNewline(summary: SpoolSummary): boolean {
        return summary.bareLf + summary.bareCr + summary.nul > 0;
    }

    /** A refusal from the header step, with the session id. */
    headerRefusal(reply: SmtpReply): SmtpReply {
        return this.withId(reply);
    }

    /** Facts for the data stage: the transaction's facts, then the message's. */
    dataStageFacts(tx: Transaction, fromMessage: Record<string, FactValue>): Facts {
        return { ...tx.facts, ...fromMessage, score: tx.score };
    }

    /** The final decision: a tag from an earlier stage still marks a message the data stage accepts. */
    finish(tx: Transaction, result: StageResult): FinalVerdict {
        const decision: Decision =
            result.decision.action === 'accept' && tx.tagged ? { ...result.decision, action: 'tag' } : result.decision;
        return {
            decision,
            rules: [...tx.rulesSeen, ...decision.rules],
            monitor: this.monitored(tx, decision),
            refusal: this.refusal('data', decision),
        };
    }

    /** A decision for a refusal made before the rules (for logs and explain). */
    static refusedBeforeRules(score: number, reason: string): Decision {
        return { action: 'reject', rules: [], score, reason, headers: [] };
    }

    /** The score so far (of the transaction, else of the connection). */
    score(tx: Transaction | null): number {
        return tx ? tx.score : this.conn.score;
    }

    /** Our header fields for a forwarded message. */
    headers(
        verdict: FinalVerdict,
        tx: Transaction,
        fromChecks: readonly HeaderField[],
        received: Omit<ForwardHeadersInput['received'], 'recipient'>,
    ): HeaderField[] {
        return forwardHeaders({
            decision: verdict.decision,
            rules: verdict.rules,
            fromChecks,
            earlier: tx.headers,
            sessionId: this.id,
            received: { ...received, recipient: tx.rcpts.length === 1 ? tx.rcpts[0]! : null },
        });
    }
}

/**
 * The client's names after a helo stage, from what the iprev check reported: the confirmed name
 * (`client.ptr`) and the reverse lookup behind it (`iprev.ptr`; temporary when the check said
 * temperror, or timed out or failed this time). Without an iprev check only the confirmed name
 * is known. The upstream hears them with XCLIENT NAME and REVERSE_NAME (upstream/xtext.ts).
 */
function clientNames(result: StageResult): Pick<ClientIdentity, 'ptr' | 'reverse'> {
    const facts = result.facts;
    const ptr = typeof facts['client.ptr'] === 'string' ? facts['client.ptr'] : null;
    const iprev = result.checks.find((c) => c.name === 'iprev');
    if (iprev === undefined) return { ptr };
    const name = facts['iprev.ptr'];
    return {
        ptr,
        reverse: {
            name: typeof name === 'string' ? name : ptr,
            temporary: iprev.error !== null || facts['iprev.result'] === 'temperror',
        },
    };
}
