/**
 * One client connection: the transaction state machine between smtp-server's callbacks
 * and the upstream MTA. It mirrors MAIL FROM and every RCPT TO upstream in lock-step and
 * relays the upstream's per-recipient answers; it spools DATA, runs the data-stage checks,
 * asks the decider, and forwards the message only after the verdict. The client hears
 * `250` for DATA only after the upstream said `250`; every failure of our own, or of the
 * upstream, is a 4xx and the mail stays with the client (SPEC, "The transaction"). A transaction
 * whose upstream connection died before DATA is begun again once on a new one (upstreamForData).
 * Before any rule, MAIL and RCPT pass the envelope rules (envelope/gate.ts: syntax,
 * SMTPUTF8, offered parameters, the recipient limit, relay control).
 * It must not choose reply texts itself (reply.ts does) nor decide policy (the decider does).
 */
import { Readable } from 'node:stream';
import type { SMTPServerAddress, SMTPServerDataStream, SMTPServerSession } from 'smtp-server';
import type { Config, ListenerConfig } from './config/types.ts';
import { MessageSpool, SpoolIoError, type SpoolMemory, type SpoolSummary } from './data/spool.ts';
import { MessageWork } from './drain.ts';
import { EnvelopeGate } from './envelope/gate.ts';
import type { RelayPolicy } from './envelope/relay.ts';
import { fieldValue, formatField, headerSafe, isOwnFieldName, type RawField } from './headers.ts';
import { headerStep } from './incoming-header.ts';
import { refusalLineFields, type Logger, type RefusalLine } from './log.ts';
import type { Metrics, UnconfirmedReason } from './metrics.ts';
import { runStage, type CheckOutcome, type StageResult } from './pipeline.ts';
import { limitErrors } from './limits/check.ts';
import { listedZones } from './reputation/check.ts';
import { relayedReply, replyFor, toCallbackError, type SmtpReplyError } from './reply.ts';
import { messageFacts } from './message-facts.ts';
import type { DkimSigner, SenderPolicy, AuthBackend } from './submission/index.ts';
import { MAX_HEADER_SECTION, MessageFlow, type FinalVerdict, type Transaction } from './transaction.ts';
import type { Decider, Facts, FactValue, HeaderField, SmtpReply, Stage, Check, ClientIdentity } from './types.ts';
import type { CapabilityTracker } from './upstream/capabilities.ts';
import { replayEnvelope, type AcceptedEnvelope, type ReplayOutcome } from './upstream/replay.ts';
import {
    UnsupportedFeatureError,
    UpstreamError,
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
    /** The messages in hand in every session, for the shutdown drain (src/drain.ts). */
    readonly messages: Set<MessageWork>;
    /** The memory the spools of every session of the process share (src/data/spool.ts). */
    readonly spoolMemory: SpoolMemory;
}

/** The log line of each possible duplicate, by its reason (the metric's label). */
const DUPLICATE_RISK: Record<UnconfirmedReason, string> = {
    'client-gone': 'the upstream accepted the message but the client had gone before our 250; it may send it again',
    'no-upstream-answer':
        'the end of the message reached the upstream but its answer did not; it may have accepted the message, which the client, told to try again, may send twice',
    shutdown:
        'shutting down: the end of the message reached the upstream but its answer did not come in time; it may have accepted the message, which the client may send twice',
};

/**
 * The `monitor` field of a `decision` or `refused` line: the `mode: monitor` rules that matched in
 * the transaction (or connection) so far, whatever the stage; left out when none did.
 */
function monitorField(ids: readonly string[]): { monitor?: readonly string[] } {
    return ids.length > 0 ? { monitor: ids } : {};
}

/** What a refusal line says besides the session's identity. */
interface RefusalWhat extends Omit<RefusalLine, 'stage' | 'helo' | 'authUser'> {
    readonly more?: Record<string, unknown>;
}

export class Session {
    readonly id: string;
    private readonly deps: SessionDeps;
    private readonly smtp: SMTPServerSession;
    private readonly log: Logger;
    private readonly envelope: EnvelopeGate;
    /** Facts, carry-over between stages and the refusals of the protocol (transaction.ts). */
    private readonly flow: MessageFlow;
    private upstream: UpstreamSession | null = null;
    private upstreamFor: string | null = null;
    private tx: Transaction | null = null;
    /** A stop cut the message in hand: an upstream connection that opens after it is closed at once. */
    private upstreamStopped = false;
    /** What the upstream accepted of the current transaction, to replay should its connection die before DATA. */
    private accepted: AcceptedEnvelope | null = null;
    /** The client's names from the helo stage (the iprev check): the forward-confirmed one, or null. */
    private ptr: string | null = null;
    /** And the reverse lookup behind it, passed upstream with XCLIENT; undefined before the helo stage. */
    private reverse: ClientIdentity['reverse'];
    /**
     * True from the DATA command until its reply was handed to the client (dataReplied):
     * shutdown lets such a session finish instead of answering `421`, so a message the
     * upstream accepted always gets our `250` (as it lets any transaction begun before it,
     * from the accepted MAIL on, finish).
     */
    inData = false;
    /** Settles when the reply to the current DATA was handed over (dataReplied). */
    private dataSettled: Promise<void> = Promise.resolve();
    private settleData: () => void = () => undefined;
    private closed = false;
    /** Aborts when the session ends: the lookups started at connect (prefetch) are given up. */
    private readonly ended = new AbortController();
    /** The Message-ID of the message in the current (or last) DATA, for the duplicate-risk warning. */
    private messageId: string | null = null;

    constructor(deps: SessionDeps, smtp: SMTPServerSession, earlyFacts: Facts = {}) {
        this.deps = deps;
        this.smtp = smtp;
        this.id = smtp.id;
        this.log = deps.log.child({ session: smtp.id, listener: deps.listener.name, client: smtp.remoteAddress });
        this.envelope = new EnvelopeGate(
            {
                ...deps,
                log: this.log,
                transaction: () => (this.tx ? { from: this.tx.mailFrom, accepted: this.tx.rcpts.length } : null),
            },
            smtp,
        );
        this.flow = new MessageFlow(smtp.id, deps.listener, earlyFacts);
    }

    /** `internal`: the reply answers a fault of our own (counted in internal_errors_total). */
    private refuse(reply: SmtpReply, internal = false): SmtpReplyError {
        return toCallbackError(reply, internal);
    }

    identity(): ClientIdentity {
        const helo = this.smtp.hostNameAppearsAs || null;
        const user = this.smtp.user as { username?: string } | string | undefined;
        const login = typeof user === 'string' ? user : (user?.username ?? null);
        return {
            ip: this.smtp.remoteAddress.replace(/^::ffff:/i, ''),
            port: this.smtp.remotePort,
            ptr: this.ptr,
            reverse: this.reverse,
            helo,
            proto: this.smtp.openingCommand === 'EHLO' ? 'ESMTP' : 'SMTP',
            login,
        };
    }

    /** The HELO name the helo stage was evaluated for. */
    private heloEvaluated: string | null | undefined = undefined;

    /** The client as the message flow sees it. */
    private client(): { identity: ClientIdentity; tls: boolean } {
        return { identity: this.identity(), tls: this.smtp.secure };
    }

    /**
     * Connect stage: runs once when the client connects. Throws a reply error to refuse.
     * Lookups of later stages (the reverse name) start once the stage did not refuse the client,
     * without being waited for, so the greeting never waits on DNS; they are given up when the
     * session ends. A refused client (a connection limit, a rule) costs no DNS lookup.
     */
    async onConnect(): Promise<void> {
        if (this.deps.isDraining()) throw this.refuse(replyFor('shutting-down', { id: this.id }));
        const result = await this.decideStage('connect', this.flow.connectStageFacts(this.client()));
        this.flow.connected(result);
        if (this.closed) return;
        const client = this.identity();
        for (const c of this.deps.checks) c.prefetch?.(client, this.ended.signal);
    }

    /**
     * `sender`: the MAIL FROM address being answered, for the log line of a refusal before the
     * mail stage; `recipient`: at the rcpt stage, the recipient being decided and how many were
     * accepted before it.
     */
    private async decideStage(
        stage: Stage,
        facts: Facts,
        sender?: string,
        recipient?: { readonly rcpt: string; readonly accepted: number },
    ): Promise<StageResult> {
        const context = this.flow.context(facts, this.identity());
        const result = await runStage(stage, this.deps.checks, context, this.deps.decider(), this.deps.now);
        this.observeChecks(result.checks);
        const refusal = this.flow.refusal(stage, result.decision);
        if (refusal) {
            const rcptCount = result.facts['rcpt.count'];
            this.logRefused(stage, {
                from: result.facts['mail.from'] ?? sender,
                ...(recipient
                    ? { rcpt: recipient.rcpt, rcptCount: recipient.accepted }
                    : typeof rcptCount === 'number'
                      ? { rcptCount }
                      : {}),
                action: result.decision.action,
                rules: result.decision.rules,
                reason: result.decision.reason,
                reply: refusal,
                more: {
                    ...listedZones(result.facts),
                    ...limitErrors(result.facts),
                    ...monitorField(this.flow.monitored(this.tx, result.decision)),
                },
            });
            this.deps.metrics.messages.inc({ listener: this.deps.listener.name, action: result.decision.action });
            throw this.refuse(refusal);
        }
        return result;
    }

    /**
     * The `refused` line of a refusal before DATA, with the fields of a `decision` line known at
     * its stage (and the reply the client got), so it is found and replayed (`explain`) the same
     * way. `rcptCount` counts the recipients accepted so far, never the refused one.
     */
    private logRefused(stage: Stage, what: RefusalWhat): void {
        this.log.info(this.refusalFields(stage, what), 'refused');
    }

    /** The fields of a refusal line: ours (`refused`) and the upstream's we relay share them. */
    private refusalFields(stage: Stage, what: RefusalWhat): Record<string, unknown> {
        const { more, ...line } = what;
        const identity = this.identity();
        return {
            ...refusalLineFields({ ...line, stage, helo: identity.helo, authUser: identity.login }),
            ...more,
        };
    }

    /** Opens (or reuses) the upstream session for the current client identity. */
    private async upstreamSession(): Promise<UpstreamSession> {
        const identity = this.identity();
        const key = JSON.stringify(identity);
        if (this.upstream && this.upstream.usable && this.upstreamFor === key) return this.upstream;
        if (this.upstream) await this.upstream.close();
        this.upstream = null;
        const opened = await this.deps.upstream.open(identity);
        if (this.closed || this.upstreamStopped) {
            // the client left, or a stop cut the message, while the connection was opened: close()
            // could not see it
            await opened.close();
            throw new UpstreamError('closed', 'the session ended while the upstream connection was being opened');
        }
        this.upstream = opened;
        this.upstreamFor = key;
        // after XCLIENT the upstream greets in the client's words: a HELO client's connection
        // has no extensions, which says nothing about the upstream
        if (identity.proto === 'ESMTP') this.deps.capabilities.update(this.upstream.capabilities);
        return this.upstream;
    }

    /**
     * `refused`: what was being answered before DATA (the sender at MAIL), for the `refused`
     * line that says the client was told to try again; at DATA the decision line says it.
     */
    private upstreamFailed(
        err: unknown,
        step: 'mail' | 'rcpt' | 'data',
        refused?: {
            readonly from: string;
            readonly rcpt?: string;
            readonly rcptCount?: number;
            /** The `mode: monitor` rules that matched so far, this command's stage included. */
            readonly monitor: readonly string[];
        },
    ): SmtpReplyError {
        if (err instanceof UnsupportedFeatureError) {
            // we offered it when the client said EHLO, and the upstream no longer does; nothing
            // was sent, so it is counted as an envelope refusal, not as an upstream failure
            const address = step === 'rcpt' ? refused?.rcpt : refused?.from;
            return this.envelope.featureMissing(step === 'data' ? 'mail' : step, err, address);
        }
        if (err instanceof UpstreamError) {
            this.deps.metrics.upstreamReplies.inc({ class: err.kind, stage: step });
            this.log.warn({ step, upstreamError: err.kind, err: err.message }, 'upstream failed');
            const reply = replyFor('upstream-unavailable', { id: this.id });
            if (refused && step !== 'data') {
                const { monitor, ...what } = refused;
                this.logRefused(step, {
                    ...what,
                    action: 'tempfail',
                    rules: [],
                    reason: `upstream unavailable: ${err.kind}`,
                    reply,
                    more: monitorField(monitor),
                });
            }
            return this.refuse(reply);
        }
        this.log.error({ step, err }, 'internal error');
        return this.refuse(replyFor('internal-error', { id: this.id }), true);
    }

    /** The spool file could not be written or read back: the host's disk, not a bug of ours nor the client; told at error level and counted. */
    private spoolFailed(err: SpoolIoError): void {
        this.deps.metrics.spoolIoErrors.inc({ listener: this.deps.listener.name, op: err.op });
        this.log.error({ spoolPath: err.path, errno: err.code, err: err.message }, `spool ${err.op} failed`);
    }

    /** The line of a refusal the upstream made at MAIL or RCPT, which the client gets relayed. */
    private logUpstreamRefusal(
        stage: 'mail' | 'rcpt',
        reply: UpstreamReply,
        who: Pick<RefusalWhat, 'from' | 'rcpt' | 'rcptCount'>,
    ): void {
        this.log.info(
            {
                step: stage,
                ...this.refusalFields(stage, {
                    ...who,
                    action: reply.code >= 500 ? 'reject' : 'tempfail',
                    rules: [],
                    reason: `upstream refused the ${stage === 'mail' ? 'sender' : 'recipient'}`,
                    reply,
                }),
                upstream: `${reply.code} ${reply.enhanced ?? ''} ${reply.text}`,
            },
            stage === 'mail' ? 'upstream refused sender' : 'upstream refused recipient',
        );
    }

    private countReply(reply: UpstreamReply, stage: 'mail' | 'rcpt' | 'data'): void {
        this.deps.metrics.upstreamReplies.inc({ class: `${Math.floor(reply.code / 100)}xx`, stage });
    }

    async onMailFrom(address: SMTPServerAddress): Promise<void> {
        if (this.deps.isDraining()) throw this.refuse(replyFor('shutting-down', { id: this.id }));
        this.tx = null;
        this.accepted = null;
        const { mailbox, params, sizeLimit } = this.envelope.mail(address);
        const helo = this.identity().helo;
        if (this.heloEvaluated !== helo) {
            // smtp-server has no EHLO hook: helo rules run at the first MAIL after each EHLO/HELO
            const heloResult = await this.decideStage('helo', this.flow.heloStageFacts(this.client()), mailbox.address);
            this.heloEvaluated = helo;
            // the iprev check reports at the helo stage; its names are the client's from then on
            ({ ptr: this.ptr, reverse: this.reverse } = this.flow.heloDone(heloResult));
        }
        const from = mailbox.address;
        const notOwned = this.flow.senderRefusal(this.senderBinding(), from);
        if (notOwned) {
            this.log.info({ login: this.submissionLogin(), from }, 'sender not owned by login');
            this.deps.metrics.senderBindingRefusals.inc({ listener: this.deps.listener.name, where: 'envelope' });
            throw this.refuse(notOwned.reply);
        }
        const result = await this.decideStage('mail', this.flow.mailStageFacts(this.client(), from));
        let reply: UpstreamReply;
        try {
            const up = await this.upstreamSession();
            reply = await up.mailFrom(from, params);
        } catch (err) {
            throw this.upstreamFailed(err, 'mail', { from, monitor: this.flow.monitored(null, result.decision) });
        }
        this.countReply(reply, 'mail');
        if (reply.code >= 300) {
            this.logUpstreamRefusal('mail', reply, { from });
            throw this.refuse(this.flow.withId(relayedReply('mail', reply)));
        }
        this.tx = this.flow.begin(result, { mailFrom: from, smtputf8: params.smtputf8 === true, sizeLimit });
        this.accepted = { mail: { address: from, params }, rcpts: [] };
    }

    async onRcptTo(address: SMTPServerAddress): Promise<void> {
        const tx = this.tx;
        // A transaction begun before the shutdown may finish: its recipients are still served.
        if (!tx && this.deps.isDraining()) throw this.refuse(replyFor('shutting-down', { id: this.id }));
        if (!tx) throw this.refuse(replyFor('internal-error', { id: this.id }), true);
        const { mailbox: recipient, params: rcptParams } = this.envelope.rcpt(
            address,
            { smtputf8: tx.smtputf8, accepted: tx.rcpts.length },
            this.identity().login !== null,
        );
        const to = recipient.address;
        const accepted = tx.rcpts.length;
        const result = await this.decideStage('rcpt', this.flow.rcptStageFacts(tx, to), undefined, {
            rcpt: to,
            accepted,
        });
        let reply: UpstreamReply;
        try {
            const up = this.upstream;
            if (!up || !up.usable) throw new UpstreamError('closed', 'upstream connection lost before RCPT');
            reply = await up.rcptTo(to, rcptParams);
        } catch (err) {
            throw this.upstreamFailed(err, 'rcpt', {
                from: tx.mailFrom,
                rcpt: to,
                rcptCount: accepted,
                monitor: this.flow.monitored(tx, result.decision),
            });
        }
        this.countReply(reply, 'rcpt');
        if (reply.code >= 300) {
            this.logUpstreamRefusal('rcpt', reply, { from: tx.mailFrom, rcpt: to, rcptCount: accepted });
            throw this.refuse(this.flow.withId(relayedReply('rcpt', reply)));
        }
        this.flow.recipientAccepted(tx, to, result);
        this.accepted?.rcpts.push({ address: to, params: rcptParams });
    }

    /**
     * Receives the message, decides, forwards. Resolves with the 250 text, or rejects with
     * a reply error. The spool is removed in every outcome.
     */
    async onData(stream: SMTPServerDataStream): Promise<string> {
        const started = this.deps.now();
        const work = new MessageWork(this.deps.messages, this.id);
        const tx = this.tx;
        const accepted = this.accepted;
        this.tx = null;
        this.accepted = null;
        this.inData = true;
        this.dataSettled = new Promise((resolve) => (this.settleData = resolve));
        const spool = new MessageSpool({
            memoryLimit: this.deps.config.spool.memoryLimit,
            memory: this.deps.spoolMemory,
            dir: this.deps.config.spool.dir,
            maxSize: tx?.sizeLimit ?? this.deps.listener.maxMessageSize,
            maxHeaderSize: MAX_HEADER_SECTION,
        });
        const record: Record<string, unknown> = {
            // as on the `refused` lines of the earlier stages, so one query reads both
            stage: 'data',
            from: tx?.mailFrom,
            rcptCount: tx?.rcpts.length ?? 0,
            helo: this.identity().helo,
            authUser: this.identity().login,
            ...(tx ? listedZones(tx.facts) : {}),
            ...(tx ? monitorField(this.flow.monitored(tx)) : {}),
        };
        let action = 'tempfail';
        this.messageId = null;
        try {
            let summary: SpoolSummary;
            try {
                summary = await spool.ingest(stream as AsyncIterable<Buffer>);
            } catch (err) {
                // the drain stopped it (shutdownTimeout passed), not the client
                record.reason =
                    work.stopped !== null
                        ? 'shutting down: the message was not received in full within shutdownTimeout'
                        : `message not received in full: ${err instanceof Error ? err.message : String(err)}`;
                if (err instanceof SpoolIoError && work.stopped === null) this.spoolFailed(err);
                await this.abandonUpstream();
                // not an internal error: a client that left gets no reply (this one goes nowhere), a
                // shutdown or a spool that cannot be written is not a bug
                throw this.refuse(replyFor('internal-error', { id: this.id }));
            }
            record.size = summary.size;
            this.deps.metrics.messageSize.observe(summary.size);
            if (!tx) throw this.refuse(replyFor('internal-error', { id: this.id }), true);
            if (!summary.tooBig && MessageFlow.hasBareNewline(summary)) {
                const policy = this.deps.listener.bareNewline;
                this.deps.metrics.bareNewlines.inc({ listener: this.deps.listener.name, policy });
            }
            const refused = this.flow.protocolRefusal(summary, tx.sizeLimit);
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
                if (header.problem === 'not-owned') {
                    this.deps.metrics.senderBindingRefusals.inc({ listener: this.deps.listener.name, where: 'header' });
                }
                await this.abandonUpstream();
                throw this.refuse(this.flow.headerRefusal(header.reply));
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
            const facts = this.flow.dataStageFacts(tx, messageFacts(kept, summary));
            const result = await runStage(
                'data',
                this.deps.checks,
                {
                    ...this.flow.context(facts, this.identity()),
                    message: { stream: () => spool.read(0, summary.size), size: summary.size },
                },
                this.deps.decider(),
                this.deps.now,
            );
            this.observeChecks(result.checks);
            const verdict = this.flow.finish(tx, result);
            const { decision } = verdict;
            action = decision.action;
            record.rules = verdict.rules;
            Object.assign(record, monitorField(verdict.monitor), limitErrors(result.facts));
            record.score = decision.score;
            record.reason = decision.reason;
            record.checks = Object.fromEntries(
                result.checks.map((c) => [c.name, c.error ? { ms: c.ms, error: c.error } : c.ms]),
            );
            if (verdict.refusal) {
                await this.abandonUpstream();
                throw this.refuse(verdict.refusal);
            }
            const head = this.ourHeaders(verdict, tx, result.headers);
            // the key is chosen by the author as our own parser read it (the one the login binding
            // checked), never by the DMARC parser's reading; a From the two read differently is not signed
            const ambiguous = result.facts['header.from.mismatch'] === true;
            const signature = ambiguous
                ? null
                : await this.dkimSignature(head, kept, spool, summary, facts['header.from.domain']);
            if (signature) record.dkimSigned = true;
            const message = work.forwarding(
                this.composeMessage(signature ? [signature, ...head] : head, kept, spool, summary),
                () => {
                    // an upstream connection still being opened (a replay) is closed once it opens
                    this.upstreamStopped = true;
                    void this.upstream?.close();
                },
            );
            let reply: UpstreamReply;
            let upstreamStarted = this.deps.now();
            try {
                // abandoned by a shutdown while it was checked: no connection is opened for it
                if (work.stopped) throw new UpstreamError('closed', work.stopped);
                const up = await this.upstreamForData(accepted, record);
                upstreamStarted = this.deps.now();
                reply = await up.data(message);
            } catch (err) {
                action = 'tempfail';
                record.reason = work.stopped ?? `upstream: ${err instanceof Error ? err.message : String(err)}`;
                // the client is told to try again, though the upstream may have the message
                if (err instanceof UpstreamError && err.endOfDataSent) {
                    record.duplicateRisk = true;
                    this.possibleDuplicate(work.stopped ? 'shutdown' : 'no-upstream-answer');
                }
                // stopped by the drain, not an upstream failure
                if (work.stopped) throw this.refuse(replyFor('upstream-unavailable', { id: this.id }));
                // the spool file could not be read back (a failing disk, the file removed): the
                // upstream connection was dropped without the end of data, and the upstream did not fail
                const spoolErr =
                    err instanceof SpoolIoError
                        ? err
                        : err instanceof UpstreamError && err.cause instanceof SpoolIoError
                          ? err.cause
                          : null;
                if (spoolErr) throw spoolErr;
                throw this.upstreamFailed(err, 'data');
            } finally {
                this.deps.metrics.upstreamDuration.observe((this.deps.now() - upstreamStarted) / 1000);
            }
            this.countReply(reply, 'data');
            record.upstream = `${reply.code} ${reply.enhanced ?? ''} ${reply.text}`.replace(/\s+/g, ' ');
            if (reply.code >= 300) {
                action = reply.code >= 500 ? 'reject' : 'tempfail';
                record.reason = 'upstream refused the message';
                throw this.refuse(this.flow.withId(relayedReply('data', reply)));
            }
            const queueId = /queued as ([A-Za-z0-9._-]+)/i.exec(reply.text)?.[1] ?? null;
            // to follow the message into Postfix's logs (postqueue, postcat) without parsing `upstream`
            if (queueId !== null) record.queueId = queueId;
            for (const c of this.deps.checks) c.delivered?.(this.id, tx.rcpts);
            const ok = replyFor('accepted', { id: this.id, queueId });
            return `${ok.enhanced} ${ok.text}`;
        } catch (err) {
            if ((err as SmtpReplyError).name === 'SmtpReplyError') {
                record.reply = (err as SmtpReplyError).responseCode;
                throw err;
            }
            action = 'tempfail';
            if (err instanceof SpoolIoError) {
                // the spool file could not be read back (a failing disk, the file removed): not a bug
                this.spoolFailed(err);
                record.reason = err.message;
                await this.abandonUpstream();
                throw this.refuse(replyFor('internal-error', { id: this.id }));
            }
            this.log.error({ err }, 'internal error while processing a message');
            record.reason = 'internal error';
            await this.abandonUpstream();
            throw this.refuse(replyFor('internal-error', { id: this.id }), true);
        } finally {
            // inData stays set until the listener has written the reply (dataReplied)
            const spilled = spool.spillReason;
            if (spilled) this.deps.metrics.spoolFiles.inc({ listener: this.deps.listener.name, reason: spilled });
            await spool.dispose();
            const seconds = (this.deps.now() - started) / 1000;
            this.deps.metrics.messageProcessing.observe(seconds);
            this.deps.metrics.messages.inc({ listener: this.deps.listener.name, action });
            this.log.info({ ...record, action, ms: Math.round(seconds * 1000) }, 'decision');
            work.done();
        }
    }

    /**
     * The upstream session to send DATA on: the transaction's own, or, when its connection died
     * before DATA (the upstream's idle timeout outlasted the keepalive NOOPs, a restarted or
     * stressed upstream), a new one opened as at MAIL (XCLIENT, EHLO) with the accepted envelope
     * replayed on it (upstream/replay.ts). No byte of the message went out on the dead one, so
     * the upstream holds nothing of it. Called once per message, so at most one replay; the
     * connect and command timeouts bound it. When the new connection does not take the same
     * MAIL and every RCPT with a 2xx, its transaction is abandoned and the client hears
     * `451 4.4.1` as before: never a `250` for a recipient the upstream did not take again.
     */
    private async upstreamForData(
        accepted: AcceptedEnvelope | null,
        record: Record<string, unknown>,
    ): Promise<UpstreamSession> {
        const lost = this.upstream;
        if (lost && lost.usable) return lost;
        if (!accepted) throw new UpstreamError('closed', 'upstream connection lost before DATA');
        this.log.warn(
            { upstream: lost?.peer, rcptCount: accepted.rcpts.length },
            'upstream connection lost before DATA; replaying the envelope on a new connection',
        );
        let outcome: ReplayOutcome;
        let failure: UpstreamError | null = null;
        try {
            const fresh = await this.upstreamSession();
            outcome = await replayEnvelope(fresh, accepted, (reply, stage) => this.countReply(reply, stage));
        } catch (err) {
            if (!(err instanceof UpstreamError)) throw err;
            failure = err;
            outcome = { ok: false, reason: err.message };
        }
        record.upstreamReplayed = outcome.ok;
        this.deps.metrics.upstreamReplays.inc({ result: outcome.ok ? 'ok' : 'failed' });
        if (outcome.ok && this.upstream) return this.upstream;
        await this.abandonUpstream();
        const why = outcome.ok ? 'the new connection was lost' : outcome.reason;
        // an extension the new connection lacks is our failure here, not a refusal of the client's envelope
        const kind = failure && !(failure instanceof UnsupportedFeatureError) ? failure.kind : 'closed';
        throw new UpstreamError(kind, `upstream connection lost before DATA, and the replay failed: ${why}`, {
            cause: failure ?? undefined,
        });
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
    private possibleDuplicate(reason: UnconfirmedReason): void {
        this.deps.metrics.acceptedUnconfirmed.inc({ listener: this.deps.listener.name, reason });
        this.log.warn({ duplicateRisk: true, reason, messageId: this.messageId ?? undefined }, DUPLICATE_RISK[reason]);
    }

    private observeChecks(checks: readonly CheckOutcome[]): void {
        for (const c of checks) {
            this.deps.metrics.checkDuration.observe({ check: c.name }, c.ms / 1000);
            if (c.error !== null) {
                this.deps.metrics.checkFailures.inc({
                    check: c.name,
                    result: c.error === 'timeout' ? 'timeout' : 'error',
                });
            }
        }
    }

    /** The SASL login of this session on a submission listener, or null. */
    private submissionLogin(): string | null {
        return this.deps.listener.mode === 'submission' ? this.identity().login : null;
    }

    /** Submission: the login and the addresses it may use, for the author-field binding; null otherwise. */
    private senderBinding(): { login: string; policy: SenderPolicy } | null {
        const login = this.submissionLogin();
        if (login === null || !this.deps.auth) return null;
        return { login, policy: this.deps.auth.sendAs(login) };
    }

    private ourHeaders(verdict: FinalVerdict, tx: Transaction, fromChecks: readonly HeaderField[]): HeaderField[] {
        const id = this.identity();
        const tlsInfo = this.smtp.tlsOptions;
        return this.flow.headers(verdict, tx, fromChecks, {
            helo: id.helo,
            ip: id.ip,
            ptr: id.ptr,
            hostname: this.deps.config.hostname,
            protocol: this.smtp.transmissionType || (id.proto === 'ESMTP' ? 'ESMTP' : 'SMTP'),
            id: this.id,
            tlsCipher: tlsInfo ? `${tlsInfo.version} with cipher ${tlsInfo.name}` : null,
            date: new Date(this.deps.now()),
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
     * Client went away: the upstream session ends (QUIT, an open transaction there is discarded;
     * without XCLIENT a connection that ended cleanly is kept for the next client instead). A
     * message being forwarded is let finish first: once its end was written upstream, only the
     * upstream's answer tells whether it was delivered, and a 250 the client can no longer hear
     * is counted (dataReplied) instead of being cut off unseen.
     */
    async close(): Promise<void> {
        if (this.closed) return;
        this.closed = true;
        this.ended.abort();
        if (this.inData) await this.dataSettled;
        const up = this.upstream;
        this.upstream = null;
        await Promise.all(
            this.deps.checks.map((c) => (c.end ? c.end(this.id).catch(() => undefined) : Promise.resolve())),
        );
        if (up) await up.close();
    }
}
