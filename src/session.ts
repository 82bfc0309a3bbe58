/**
 * One client connection: the transaction state machine between smtp-server's callbacks
 * and the upstream MTA. It mirrors MAIL FROM and every RCPT TO upstream in lock-step and
 * relays the upstream's per-recipient answers; it spools DATA, runs the data-stage checks,
 * asks the decider, and forwards the message only after the verdict. The client hears
 * `250` for DATA only after the upstream said `250`; every failure of our own, or of the
 * upstream, is a 4xx and the mail stays with the client (SPEC, "The transaction").
 * Before any rule, MAIL and RCPT pass the envelope rules (envelope/gate.ts: syntax,
 * SMTPUTF8, offered parameters, the recipient limit, relay control).
 * It must not choose reply texts itself (reply.ts does) nor decide policy (the decider does).
 */
import { Readable } from 'node:stream';
import type { SMTPServerAddress, SMTPServerDataStream, SMTPServerSession } from 'smtp-server';
import type { Config, ListenerConfig } from './config/types.ts';
import { MessageSpool, type SpoolSummary } from './data/spool.ts';
import { EnvelopeGate } from './envelope/gate.ts';
import type { RelayPolicy } from './envelope/relay.ts';
import { fieldValue, formatField, headerSafe, isOwnFieldName, type RawField } from './headers.ts';
import { headerStep } from './incoming-header.ts';
import type { Logger } from './log.ts';
import type { Metrics } from './metrics.ts';
import { runStage, type Check, type CheckOutcome } from './pipeline.ts';
import { replyFor, replyForDecision, toCallbackError, type SmtpReplyError } from './reply.ts';
import { relayedReply } from './upstream-reply.ts';
import { domainOf, forwardHeaders, messageFacts } from './message-facts.ts';
import type { AuthBackend } from './listener.ts';
import { mayUse, type DkimSigner, type SenderPolicy } from './submission/index.ts';
import type { Decider, Decision, Facts, FactValue, HeaderField, SmtpReply, Stage } from './types.ts';
import type { CapabilityTracker } from './upstream/capabilities.ts';
import {
    UnsupportedFeatureError,
    UpstreamError,
    type ClientIdentity,
    type Upstream,
    type UpstreamReply,
    type UpstreamSession,
} from './upstream/types.ts';

export interface SessionDeps {
    readonly config: Config;
    readonly listener: ListenerConfig;
    readonly upstream: Upstream;
    /** Returns the decider in force now (rules can be reloaded between messages). */
    readonly decider: () => Decider;
    readonly checks: readonly Check[];
    readonly metrics: Metrics;
    readonly log: Logger;
    readonly now: () => number;
    readonly isDraining: () => boolean;
    /** Submission logins and their sender bindings (null: no submission listener). */
    readonly auth: AuthBackend | null;
    /** Signs authenticated mail before it goes upstream (null: no DKIM keys configured). */
    readonly signer: DkimSigner | null;
    /** What the upstream advertised last; every upstream connection updates it. */
    readonly capabilities: CapabilityTracker;
    /** Which recipients this listener accepts without a login. */
    readonly relay: RelayPolicy;
}

/** Largest header section we parse in memory (Postfix's header_size_limit is 100 KB). */
export const MAX_HEADER_SECTION = 1024 * 1024;

interface Transaction {
    readonly mailFrom: string;
    /** MAIL FROM carried SMTPUTF8: non-ASCII recipients are allowed (RFC 6531 section 3.4). */
    readonly smtputf8: boolean;
    /** The largest message this transaction may carry (the SIZE offered to the session). */
    readonly sizeLimit: number;
    readonly rcpts: string[];
    facts: Facts;
    readonly rulesSeen: Set<string>;
    /** Score so far (tag rules of earlier stages), fed to the next stage as the `score` fact. */
    score: number;
    /** Header fields added by tag rules of earlier stages. */
    readonly headers: HeaderField[];
    /** A tag rule matched at an earlier stage. */
    tagged: boolean;
}

/** What the connect and helo stages leave for every transaction of the connection. */
interface ConnectionVerdict {
    score: number;
    readonly headers: HeaderField[];
    readonly rules: string[];
    tagged: boolean;
}

export class Session {
    readonly id: string;
    private readonly deps: SessionDeps;
    private readonly smtp: SMTPServerSession;
    private readonly log: Logger;
    private readonly envelope: EnvelopeGate;
    private upstream: UpstreamSession | null = null;
    private upstreamFor: string | null = null;
    private tx: Transaction | null = null;
    /** Forward-confirmed reverse name from the connect stage, or null. */
    private ptr: string | null = null;
    /**
     * True from the DATA command until its reply was handed to the client (dataReplied):
     * shutdown lets such a session finish instead of answering `421`, so a message the
     * upstream accepted always gets our `250`.
     */
    inData = false;
    /** Settles when the reply to the current DATA was handed over (dataReplied). */
    private dataSettled: Promise<void> = Promise.resolve();
    private settleData: () => void = () => undefined;
    private closed = false;
    /** The Message-ID of the message in the current (or last) DATA, for the duplicate-risk warning. */
    private messageId: string | null = null;

    /** Facts the listener learnt before the session (the pregreet test), for every stage. */
    private readonly earlyFacts: Facts;

    constructor(deps: SessionDeps, smtp: SMTPServerSession, earlyFacts: Facts = {}) {
        this.deps = deps;
        this.smtp = smtp;
        this.earlyFacts = earlyFacts;
        this.id = smtp.id;
        this.log = deps.log.child({ session: smtp.id, listener: deps.listener.name, client: smtp.remoteAddress });
        this.envelope = new EnvelopeGate({ ...deps, log: this.log }, smtp);
    }

    private refuse(reply: SmtpReply): SmtpReplyError {
        return toCallbackError(reply);
    }

    private withId(reply: SmtpReply): SmtpReply {
        return reply.text.includes(this.id) ? reply : { ...reply, text: `${reply.text} (id ${this.id})` };
    }

    identity(): ClientIdentity {
        const helo = this.smtp.hostNameAppearsAs || null;
        const user = this.smtp.user as { username?: string } | string | undefined;
        const login = typeof user === 'string' ? user : (user?.username ?? null);
        return {
            ip: this.smtp.remoteAddress.replace(/^::ffff:/i, ''),
            port: this.smtp.remotePort,
            ptr: this.ptr,
            helo,
            proto: this.smtp.openingCommand === 'EHLO' ? 'ESMTP' : 'SMTP',
            login,
        };
    }

    private connectFacts: Facts = {};
    /** Facts of the last helo-stage evaluation (checks reporting there, such as iprev). */
    private heloFacts: Facts = {};
    private readonly conn: ConnectionVerdict = { score: 0, headers: [], rules: [], tagged: false };
    /** The HELO name the helo stage was evaluated for. */
    private heloEvaluated: string | null | undefined = undefined;

    /** Folds a forwarding decision of an earlier stage (tags, score) into `into`. */
    private static keep(into: { score: number; headers: HeaderField[]; tagged: boolean }, decision: Decision): void {
        into.score = decision.score;
        into.headers.push(...decision.headers);
        if (decision.action === 'tag') into.tagged = true;
    }

    /** Facts every stage knows about the connection. */
    private connectionFacts(): Record<string, FactValue> {
        const id = this.identity();
        return {
            ...this.connectFacts,
            ...this.heloFacts,
            ...this.earlyFacts,
            listener: this.deps.listener.name,
            'listener.mode': this.deps.listener.mode,
            'client.ip': id.ip,
            'client.ptr': id.ptr,
            tls: this.smtp.secure,
            helo: id.helo,
            'auth.user': id.login,
        };
    }

    /**
     * Connect stage: runs once when the client connects. Throws a reply error to refuse.
     * Lookups of later stages (the reverse name) start here without being waited for, so the
     * greeting never waits on DNS.
     */
    async onConnect(): Promise<void> {
        if (this.deps.isDraining()) throw this.refuse(replyFor('shutting-down', { id: this.id }));
        const client = this.identity();
        for (const c of this.deps.checks) c.prefetch?.(client);
        const result = await this.decideStage('connect', { ...this.connectionFacts(), score: 0 });
        Session.keep(this.conn, result.decision);
        this.conn.rules.push(...result.decision.rules);
        this.connectFacts = result.facts;
    }

    private async decideStage(
        stage: Stage,
        facts: Facts,
    ): Promise<{ facts: Facts; decision: Decision; checks: readonly CheckOutcome[] }> {
        const context = {
            sessionId: this.id,
            facts,
            client: this.identity(),
            envelope: {
                mailFrom: typeof facts['mail.from'] === 'string' ? facts['mail.from'] : null,
                rcptTo: Array.isArray(facts['rcpt.to']) ? (facts['rcpt.to'] as readonly string[]) : [],
            },
            message: null,
        };
        const result = await runStage(stage, this.deps.checks, context, this.deps.decider(), this.deps.now);
        this.observeChecks(result.checks);
        const refusal = replyForDecision(result.decision, { id: this.id });
        if (refusal) {
            this.log.info(
                { stage, action: result.decision.action, rules: result.decision.rules, reason: result.decision.reason },
                'refused',
            );
            this.deps.metrics.messages.inc({ listener: this.deps.listener.name, action: result.decision.action });
            const reply = this.withId(refusal);
            // RFC 5321 section 3.1: a server refusing the connection answers 554
            throw this.refuse(stage === 'connect' && reply.code === 550 ? { ...reply, code: 554 } : reply);
        }
        return result;
    }

    /** Opens (or reuses) the upstream session for the current client identity. */
    private async upstreamSession(): Promise<UpstreamSession> {
        const identity = this.identity();
        const key = JSON.stringify(identity);
        if (this.upstream && this.upstream.usable && this.upstreamFor === key) return this.upstream;
        if (this.upstream) await this.upstream.close();
        this.upstream = null;
        this.upstream = await this.deps.upstream.open(identity);
        this.upstreamFor = key;
        // after XCLIENT the upstream greets in the client's words: a HELO client's connection
        // has no extensions, which says nothing about the upstream
        if (identity.proto === 'ESMTP') this.deps.capabilities.update(this.upstream.capabilities);
        return this.upstream;
    }

    private upstreamFailed(err: unknown, step: 'mail' | 'rcpt' | 'data'): SmtpReplyError {
        if (err instanceof UnsupportedFeatureError) {
            // we offered it when the client said EHLO, and the upstream no longer does; nothing
            // was sent, so it is counted as an envelope refusal, not as an upstream failure
            return this.envelope.featureMissing(step === 'data' ? 'mail' : step, err);
        }
        if (err instanceof UpstreamError) {
            this.deps.metrics.upstreamReplies.inc({ class: err.kind });
            this.log.warn({ step, upstreamError: err.kind, err: err.message }, 'upstream failed');
            return this.refuse(replyFor('upstream-unavailable', { id: this.id }));
        }
        this.log.error({ step, err }, 'internal error');
        return this.refuse(replyFor('internal-error', { id: this.id }));
    }

    private countReply(reply: UpstreamReply): void {
        this.deps.metrics.upstreamReplies.inc({ class: `${Math.floor(reply.code / 100)}xx` });
    }

    async onMailFrom(address: SMTPServerAddress): Promise<void> {
        if (this.deps.isDraining()) throw this.refuse(replyFor('shutting-down', { id: this.id }));
        this.tx = null;
        const { mailbox, params, sizeLimit } = this.envelope.mail(address);
        const helo = this.identity().helo;
        if (this.heloEvaluated !== helo) {
            // smtp-server has no EHLO hook: helo rules run at the first MAIL after each EHLO/HELO
            const heloResult = await this.decideStage('helo', { ...this.connectionFacts(), score: this.conn.score });
            Session.keep(this.conn, heloResult.decision);
            this.conn.rules.push(...heloResult.decision.rules);
            this.heloEvaluated = helo;
            // the iprev check reports at the helo stage; its name is the client's from then on
            const ptr = heloResult.facts['client.ptr'];
            this.ptr = typeof ptr === 'string' ? ptr : null;
            this.heloFacts = heloResult.facts;
        }
        const from = mailbox.address;
        this.checkEnvelopeSender(from);
        const facts: Facts = {
            ...this.connectionFacts(),
            'mail.from': from,
            'mail.from.domain': domainOf(from),
            score: this.conn.score,
        };
        const result = await this.decideStage('mail', facts);
        let reply: UpstreamReply;
        try {
            const up = await this.upstreamSession();
            reply = await up.mailFrom(from, params);
        } catch (err) {
            throw this.upstreamFailed(err, 'mail');
        }
        this.countReply(reply);
        if (reply.code >= 300) {
            this.log.info(
                { step: 'mail', upstream: `${reply.code} ${reply.enhanced ?? ''} ${reply.text}` },
                'upstream refused sender',
            );
            throw this.refuse(this.withId(relayedReply('mail', reply)));
        }
        const tx: Transaction = {
            mailFrom: from,
            smtputf8: params.smtputf8 === true,
            sizeLimit,
            rcpts: [],
            facts: result.facts,
            rulesSeen: new Set([...this.conn.rules, ...result.decision.rules]),
            score: this.conn.score,
            headers: [...this.conn.headers],
            tagged: this.conn.tagged,
        };
        Session.keep(tx, result.decision);
        this.tx = tx;
    }

    async onRcptTo(address: SMTPServerAddress): Promise<void> {
        if (this.deps.isDraining()) throw this.refuse(replyFor('shutting-down', { id: this.id }));
        const tx = this.tx;
        if (!tx) throw this.refuse(replyFor('internal-error', { id: this.id }));
        const { mailbox: recipient, params: rcptParams } = this.envelope.rcpt(
            address,
            { smtputf8: tx.smtputf8, accepted: tx.rcpts.length },
            this.identity().login !== null,
        );
        const to = recipient.address;
        const rcpts = [...tx.rcpts, to];
        const facts: Facts = {
            ...tx.facts,
            'rcpt.to': rcpts,
            'rcpt.count': rcpts.length,
            'rcpt.domain': domainOf(to),
            score: tx.score,
        };
        const result = await this.decideStage('rcpt', facts);
        let reply: UpstreamReply;
        try {
            const up = this.upstream;
            if (!up || !up.usable) throw new UpstreamError('closed', 'upstream connection lost before RCPT');
            reply = await up.rcptTo(to, rcptParams);
        } catch (err) {
            throw this.upstreamFailed(err, 'rcpt');
        }
        this.countReply(reply);
        if (reply.code >= 300) {
            this.log.info(
                { step: 'rcpt', rcpt: to, upstream: `${reply.code} ${reply.enhanced ?? ''} ${reply.text}` },
                'upstream refused recipient',
            );
            throw this.refuse(this.withId(relayedReply('rcpt', reply)));
        }
        tx.rcpts.push(to);
        tx.facts = { ...tx.facts, 'rcpt.to': [...tx.rcpts], 'rcpt.count': tx.rcpts.length };
        Session.keep(tx, result.decision);
        for (const r of result.decision.rules) tx.rulesSeen.add(r);
    }

    /**
     * Receives the message, decides, forwards. Resolves with the 250 text, or rejects with
     * a reply error. The spool is removed in every outcome.
     */
    async onData(stream: SMTPServerDataStream): Promise<string> {
        const started = this.deps.now();
        const tx = this.tx;
        this.tx = null;
        this.inData = true;
        this.dataSettled = new Promise((resolve) => (this.settleData = resolve));
        const spool = new MessageSpool({
            memoryLimit: this.deps.config.spool.memoryLimit,
            dir: this.deps.config.spool.dir,
            maxSize: tx?.sizeLimit ?? this.deps.listener.maxMessageSize,
            maxHeaderSize: MAX_HEADER_SECTION,
        });
        const record: Record<string, unknown> = {
            from: tx?.mailFrom,
            rcptCount: tx?.rcpts.length ?? 0,
            helo: this.identity().helo,
            authUser: this.identity().login,
        };
        let action = 'tempfail';
        this.messageId = null;
        try {
            let summary: SpoolSummary;
            try {
                summary = await spool.ingest(stream as AsyncIterable<Buffer>);
            } catch (err) {
                record.reason = `message not received in full: ${err instanceof Error ? err.message : String(err)}`;
                await this.abandonUpstream();
                throw this.refuse(replyFor('internal-error', { id: this.id }));
            }
            record.size = summary.size;
            this.deps.metrics.messageSize.observe(summary.size);
            if (!tx) throw this.refuse(replyFor('internal-error', { id: this.id }));
            const refused = this.protocolRefusal(summary, tx.sizeLimit);
            if (refused) {
                action = 'reject';
                record.reason = refused.reason;
                await this.abandonUpstream();
                throw this.refuse(refused.reply);
            }
            const header = headerStep({
                section: await spool.readBuffer(0, summary.headerLength),
                authservId: this.deps.config.hostname,
                sessionId: this.id,
                binding: this.senderBinding(),
            });
            if (!header.ok) {
                action = 'reject';
                record.reason = header.reason;
                record.headerProblem = header.problem;
                this.deps.metrics.headerRefusals.inc({ listener: this.deps.listener.name, problem: header.problem });
                await this.abandonUpstream();
                throw this.refuse(this.withId(header.reply));
            }
            const { kept, removed } = header;
            // to spot a message delivered twice (the duplicate window of docs/flow.md)
            const messageId = kept.find((f) => f.name.toLowerCase() === 'message-id');
            if (messageId) {
                this.messageId = headerSafe(fieldValue(messageId)).trim().slice(0, 256);
                record.messageId = this.messageId;
            }
            if (removed.length > 0) {
                record.removedHeaders = removed.map((f) => f.name);
                for (const f of removed) {
                    this.deps.metrics.forgedFieldsRemoved.inc({
                        listener: this.deps.listener.name,
                        field: isOwnFieldName(f.name) ? 'x-mailwarden' : 'authentication-results',
                    });
                }
            }
            const facts = { ...tx.facts, ...messageFacts(kept, summary), score: tx.score };
            const result = await runStage(
                'data',
                this.deps.checks,
                {
                    sessionId: this.id,
                    facts,
                    client: this.identity(),
                    envelope: { mailFrom: tx.mailFrom, rcptTo: tx.rcpts },
                    message: { stream: () => spool.read(0, summary.size), size: summary.size },
                },
                this.deps.decider(),
                this.deps.now,
            );
            this.observeChecks(result.checks);
            // a tag from an earlier stage still marks a message the data stage accepts
            const decision: Decision =
                result.decision.action === 'accept' && tx.tagged
                    ? { ...result.decision, action: 'tag' }
                    : result.decision;
            action = decision.action;
            record.rules = [...tx.rulesSeen, ...decision.rules];
            record.score = decision.score;
            record.reason = decision.reason;
            record.checks = Object.fromEntries(
                result.checks.map((c) => [c.name, c.error ? { ms: c.ms, error: c.error } : c.ms]),
            );
            const refusal = replyForDecision(decision, { id: this.id });
            if (refusal) {
                await this.abandonUpstream();
                throw this.refuse(this.withId(refusal));
            }
            const head = this.ourHeaders(decision, tx, [...tx.rulesSeen, ...decision.rules], result.headers);
            const signature = await this.dkimSignature(head, kept, spool, summary, result.facts['header.from.domain']);
            if (signature) record.dkimSigned = true;
            const message = this.composeMessage(signature ? [signature, ...head] : head, kept, spool, summary);
            const up = this.upstream;
            let reply: UpstreamReply;
            const upstreamStarted = this.deps.now();
            try {
                if (!up || !up.usable) throw new UpstreamError('closed', 'upstream connection lost before DATA');
                reply = await up.data(message);
            } catch (err) {
                action = 'tempfail';
                record.reason = `upstream: ${err instanceof Error ? err.message : String(err)}`;
                // the client is told to try again, though the upstream may have the message
                if (err instanceof UpstreamError && err.endOfDataSent) this.possibleDuplicate('no-upstream-answer');
                throw this.upstreamFailed(err, 'data');
            } finally {
                this.deps.metrics.upstreamDuration.observe((this.deps.now() - upstreamStarted) / 1000);
            }
            this.countReply(reply);
            record.upstream = `${reply.code} ${reply.enhanced ?? ''} ${reply.text}`.replace(/\s+/g, ' ');
            if (reply.code >= 300) {
                action = reply.code >= 500 ? 'reject' : 'tempfail';
                record.reason = 'upstream refused the message';
                throw this.refuse(this.withId(relayedReply('data', reply)));
            }
            const queueId = /queued as ([A-Za-z0-9._-]+)/i.exec(reply.text)?.[1] ?? null;
            const ok = replyFor('accepted', { id: this.id, queueId });
            return `${ok.enhanced} ${ok.text}`;
        } catch (err) {
            if ((err as SmtpReplyError).name === 'SmtpReplyError') {
                record.reply = (err as SmtpReplyError).responseCode;
                throw err;
            }
            this.log.error({ err }, 'internal error while processing a message');
            action = 'tempfail';
            record.reason = 'internal error';
            await this.abandonUpstream();
            throw this.refuse(replyFor('internal-error', { id: this.id }));
        } finally {
            // inData stays set until the listener has written the reply (dataReplied)
            await spool.dispose();
            const seconds = (this.deps.now() - started) / 1000;
            this.deps.metrics.messageProcessing.observe(seconds);
            this.deps.metrics.messages.inc({ listener: this.deps.listener.name, action });
            this.log.info({ ...record, action, ms: Math.round(seconds * 1000) }, 'decision');
        }
    }

    /**
     * The reply to DATA was handed to smtp-server. `clientGone`: the client's connection had
     * already closed, so a `250` never reached it and it may send the message again.
     */
    dataReplied(reply: { accepted: boolean; clientGone: boolean }): void {
        this.inData = false;
        this.settleData();
        if (reply.accepted && reply.clientGone) this.possibleDuplicate('client-gone');
    }

    /**
     * The upstream may have accepted the message while the client never heard so: the client
     * keeps it and may send it again (the duplicate window of docs/flow.md). Counted and logged.
     */
    private possibleDuplicate(reason: 'client-gone' | 'no-upstream-answer'): void {
        this.deps.metrics.acceptedUnconfirmed.inc({ listener: this.deps.listener.name, reason });
        this.log.warn(
            { duplicateRisk: true, reason, messageId: this.messageId ?? undefined },
            reason === 'client-gone'
                ? 'the upstream accepted the message but the client had gone before our 250; it may send it again'
                : 'the end of the message reached the upstream but its answer did not; it may have accepted the message, which the client, told to try again, may send twice',
        );
    }

    private observeChecks(checks: readonly CheckOutcome[]): void {
        for (const c of checks) this.deps.metrics.checkDuration.observe({ check: c.name }, c.ms / 1000);
    }

    /** The SASL login of this session on a submission listener, or null. */
    private submissionLogin(): string | null {
        return this.deps.listener.mode === 'submission' ? this.identity().login : null;
    }

    /**
     * Submission: the envelope sender must be one the login may use (Postfix's
     * reject_sender_login_mismatch); `553 5.7.1` otherwise. The null sender is never allowed.
     */
    private checkEnvelopeSender(from: string): void {
        const login = this.submissionLogin();
        if (login === null || !this.deps.auth) return;
        if (mayUse(login, from, this.deps.auth.sendAs(login))) return;
        this.log.info({ login, from }, 'sender not owned by login');
        throw this.refuse(this.withId(replyFor('sender-not-owned', { id: this.id, address: from || '<>', login })));
    }

    /** Submission: the login and the addresses it may use, for the author-field binding; null otherwise. */
    private senderBinding(): { login: string; policy: SenderPolicy } | null {
        const login = this.submissionLogin();
        if (login === null || !this.deps.auth) return null;
        return { login, policy: this.deps.auth.sendAs(login) };
    }

    /** Refusals that come from the protocol, before any policy: size, line endings, header size. */
    private protocolRefusal(summary: SpoolSummary, sizeLimit: number): { reply: SmtpReply; reason: string } | null {
        const id = this.id;
        if (summary.tooBig) {
            return {
                reply: replyFor('message-too-big', { id, limit: sizeLimit }),
                reason: `message larger than ${sizeLimit} bytes`,
            };
        }
        if (summary.bareLf + summary.bareCr + summary.nul > 0) {
            const policy = this.deps.listener.bareNewline;
            this.deps.metrics.bareNewlines.inc({ listener: this.deps.listener.name, policy });
            if (policy === 'reject') {
                return {
                    reply: replyFor('bare-newline', { id }),
                    reason: `bare LF ${summary.bareLf}, bare CR ${summary.bareCr}, NUL ${summary.nul}`,
                };
            }
        }
        if (summary.headerLength < 0) {
            return {
                reply: replyFor('header-too-big', { id, limit: MAX_HEADER_SECTION }),
                reason: 'header section too big',
            };
        }
        return null;
    }

    private ourHeaders(
        decision: Decision,
        tx: Transaction,
        rules: readonly string[],
        fromChecks: readonly HeaderField[],
    ): HeaderField[] {
        const id = this.identity();
        const tlsInfo = this.smtp.tlsOptions;
        return forwardHeaders({
            decision,
            rules,
            fromChecks,
            earlier: tx.headers,
            sessionId: this.id,
            received: {
                helo: id.helo,
                ip: id.ip,
                ptr: id.ptr,
                hostname: this.deps.config.hostname,
                protocol: this.smtp.transmissionType || (id.proto === 'ESMTP' ? 'ESMTP' : 'SMTP'),
                id: this.id,
                recipient: tx.rcpts.length === 1 ? tx.rcpts[0]! : null,
                tlsCipher: tlsInfo ? `${tlsInfo.version} with cipher ${tlsInfo.name}` : null,
                date: new Date(this.deps.now()),
            },
        });
    }

    /**
     * Submission: a DKIM-Signature over exactly what goes upstream, for logged-in senders whose
     * From domain has a key. It goes on top, so our other fields are not part of what it covers
     * unless listed in h= (they are not).
     */
    private async dkimSignature(
        head: readonly HeaderField[],
        kept: readonly RawField[],
        spool: MessageSpool,
        summary: SpoolSummary,
        fromDomain: FactValue | undefined,
    ): Promise<HeaderField | null> {
        if (!this.deps.signer || this.submissionLogin() === null || typeof fromDomain !== 'string') return null;
        return this.deps.signer.sign(this.composeMessage(head, kept, spool, summary), fromDomain);
    }

    /** Our fields, then the kept incoming fields, then the rest of the message from the empty line on. */
    private composeMessage(
        head: readonly HeaderField[],
        kept: readonly RawField[],
        spool: MessageSpool,
        summary: SpoolSummary,
    ): Readable {
        const prefix = Buffer.concat([Buffer.from(head.map(formatField).join(''), 'utf8'), ...kept.map((f) => f.raw)]);
        const rest = spool.read(summary.headerLength);
        async function* generate(): AsyncGenerator<Buffer> {
            yield prefix;
            for await (const chunk of rest) yield chunk as Buffer;
        }
        return Readable.from(generate(), { objectMode: false });
    }

    /** Abandons the upstream transaction; a failing RSET drops the connection instead. */
    private async abandonUpstream(): Promise<void> {
        const up = this.upstream;
        if (!up || !up.usable) return;
        try {
            await up.reset();
        } catch {
            await up.close();
            this.upstream = null;
        }
    }

    /**
     * Client went away: QUIT upstream (an open transaction there is discarded). A message being
     * forwarded is let finish first: once its end was written upstream, only the upstream's answer
     * tells whether it was delivered, and a 250 the client can no longer hear is counted
     * (dataReplied) instead of being cut off unseen.
     */
    async close(): Promise<void> {
        if (this.closed) return;
        this.closed = true;
        if (this.inData) await this.dataSettled;
        const up = this.upstream;
        this.upstream = null;
        await Promise.all(
            this.deps.checks.map((c) => (c.end ? c.end(this.id).catch(() => undefined) : Promise.resolve())),
        );
        if (up) await up.close();
    }
}
