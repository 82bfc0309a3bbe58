/**
 * The envelope rules of one client session, applied to each MAIL and RCPT before any rule
 * file and before the upstream is asked: the address must parse (command.ts), a non-ASCII
 * address needs SMTPUTF8 on MAIL (RFC 6531 section 3.4), every parameter must belong to an
 * extension this session was offered and be well-formed (extensions.ts), a transaction takes
 * at most `maxRecipients` recipients, and an mx listener accepts only recipients of our domains,
 * whose local parts route nowhere (Postfix's allow_untrusted_routing = no, and no routing
 * within our domains either), unless the client logged in (relay.ts). Each refusal is counted
 * (`mailwarden_envelope_refusals_total{listener,reason}`), logged, and answered from reply.ts.
 * It must not talk to the upstream or run rules.
 */
import type { SMTPServerAddress, SMTPServerSession } from 'smtp-server';
import type { ListenerConfig } from '../config/types.ts';
import { refusalLineFields, type Logger } from '../log.ts';
import type { Metrics } from '../metrics.ts';
import { replyFor, toCallbackError, type SmtpReplyError } from '../reply.ts';
import { envelopeOf, offerOf } from '../smtp-server/envelope.ts';
import type { SmtpReply } from '../types.ts';
import type { CapabilityTracker } from '../upstream/capabilities.ts';
import type { MailParams, RcptParams, UnsupportedFeatureError } from '../upstream/types.ts';
import type { EnvelopeParse, Mailbox } from './command.ts';
import { checkMailParams, checkRcptParams, computeOffer, type EhloOffer, type ParamRefusal } from './extensions.ts';
import type { RelayPolicy } from './relay.ts';

/** Label values of `mailwarden_envelope_refusals_total{reason}` (docs/flow.md lists each). */
export const ENVELOPE_REFUSALS = [
    'command-syntax',
    'address-syntax',
    'smtputf8',
    'param-invalid',
    'param-not-offered',
    'size',
    'relay',
    'too-many-recipients',
    'upstream-feature',
] as const;
export type EnvelopeRefusal = (typeof ENVELOPE_REFUSALS)[number];

export interface EnvelopeGateDeps {
    readonly listener: ListenerConfig;
    readonly relay: RelayPolicy;
    readonly capabilities: CapabilityTracker;
    readonly metrics: Metrics;
    readonly log: Logger;
    /** The sender and the recipients accepted so far of the transaction in progress, for the log line. */
    readonly transaction?: () => { readonly from: string; readonly accepted: number } | null;
}

/** The longest address a refusal's log line repeats (a client may send anything). */
const LOGGED_ADDRESS = 256;

/** A MAIL command that passed: the sender and what the transaction may do. */
export interface AcceptedMail {
    readonly mailbox: Mailbox;
    readonly params: MailParams;
    /** The largest message the transaction may carry (the SIZE offered to the session). */
    readonly sizeLimit: number;
}

/**
 * What a MAIL or RCPT whose command, address or parameter does not parse is answered, and the
 * refusal it is logged and counted as (the live session here, and `mailwarden explain`).
 */
export function syntaxRefusal(
    step: 'mail' | 'rcpt',
    parse: Extract<EnvelopeParse, { ok: false }>,
    id: string,
): { readonly refusal: EnvelopeRefusal; readonly reply: SmtpReply } {
    const { reason } = parse;
    if (parse.part === 'command')
        return { refusal: 'command-syntax', reply: replyFor('command-syntax', { id, reason }) };
    if (parse.part === 'parameter')
        return { refusal: 'param-invalid', reply: replyFor('param-invalid', { id, reason }) };
    const situation = step === 'mail' ? 'sender-syntax' : 'recipient-syntax';
    return { refusal: 'address-syntax', reply: replyFor(situation, { id, reason }) };
}

export class EnvelopeGate {
    private readonly deps: EnvelopeGateDeps;
    private readonly smtp: SMTPServerSession;
    private readonly id: string;

    constructor(deps: EnvelopeGateDeps, smtp: SMTPServerSession) {
        this.deps = deps;
        this.smtp = smtp;
        this.id = smtp.id;
    }

    /** Checks a MAIL command; throws the refusal. */
    mail(address: SMTPServerAddress): AcceptedMail {
        const parsed = this.parsed('mail', address);
        const offer = this.offer();
        const checked = checkMailParams(parsed.params, offer);
        if ('refused' in checked) throw this.paramRefusal('mail', checked.refused, offer, address);
        if (parsed.mailbox.nonAscii && checked.ok.smtputf8 !== true) {
            throw this.refused(
                'mail',
                'smtputf8',
                replyFor('smtputf8-required', { id: this.id, which: 'sender' }),
                {},
                parsed.mailbox.address,
            );
        }
        return { mailbox: parsed.mailbox, params: checked.ok, sizeLimit: offer.sizeLimit };
    }

    /**
     * Checks a RCPT command of a transaction that declared SMTPUTF8 (or not) and has
     * `accepted` recipients so far; throws the refusal.
     */
    rcpt(
        address: SMTPServerAddress,
        tx: { readonly smtputf8: boolean; readonly accepted: number },
        authenticated: boolean,
    ): { readonly mailbox: Mailbox; readonly params: RcptParams } {
        const parsed = this.parsed('rcpt', address);
        const offer = this.offer();
        const checked = checkRcptParams(parsed.params, offer, tx.smtputf8);
        if ('refused' in checked) throw this.paramRefusal('rcpt', checked.refused, offer, address);
        const recipient = parsed.mailbox;
        if (recipient.nonAscii && !tx.smtputf8) {
            throw this.refused(
                'rcpt',
                'smtputf8',
                replyFor('smtputf8-required', { id: this.id, which: 'recipient' }),
                {},
                recipient.address,
            );
        }
        // Postfix's smtpd_recipient_limit: accepted recipients of this transaction, null sender or not
        const limit = this.deps.listener.maxRecipients;
        if (tx.accepted >= limit) {
            throw this.refused(
                'rcpt',
                'too-many-recipients',
                replyFor('too-many-recipients', { id: this.id, limit }),
                { limit },
                recipient.address,
            );
        }
        const relay = this.deps.relay.decide(recipient, authenticated);
        if (relay.verdict === 'refused' || relay.verdict === 'routed' || relay.verdict === 'routing') {
            const domain = recipient.asciiDomain ?? '';
            // sender-specified routing is counted and logged as the relay attempt it is
            const routed = relay.verdict !== 'refused' ? { routedDomain: relay.routedDomain ?? null } : {};
            const reply =
                relay.verdict === 'routed'
                    ? replyFor('relay-routing-denied', { id: this.id, domain: relay.routedDomain ?? '' })
                    : relay.verdict === 'routing'
                      ? replyFor('sender-routing-refused', { id: this.id })
                      : replyFor('relay-denied', { id: this.id, domain });
            throw this.refused(
                'rcpt',
                'relay',
                { ...reply, text: `${reply.text} (id ${this.id})` },
                {
                    rcptDomain: recipient.asciiDomain,
                    ...routed,
                },
                recipient.address,
            );
        }
        return { mailbox: recipient, params: checked.ok };
    }

    /**
     * The refusal when the upstream no longer offers an extension this session was offered;
     * `address`: the sender (MAIL) or recipient (RCPT) of the command, for the log line.
     */
    featureMissing(step: 'mail' | 'rcpt', err: UnsupportedFeatureError, address?: string): SmtpReplyError {
        const reply = replyFor('upstream-feature-missing', { id: this.id, feature: err.feature });
        return this.refused(step, 'upstream-feature', reply, { feature: err.feature }, address);
    }

    /** What this session was offered at its latest EHLO (or HELO). */
    private offer(): EhloOffer {
        return (
            offerOf(this.smtp) ??
            computeOffer(this.deps.listener, this.deps.capabilities.current, {
                secure: this.smtp.secure,
                extended: false,
            })
        );
    }

    /** The parse behind `address`, or the refusal of a command that did not parse. */
    private parsed(step: 'mail' | 'rcpt', address: SMTPServerAddress): Extract<EnvelopeParse, { ok: true }> {
        const parse = envelopeOf(address);
        if (!parse) throw toCallbackError(replyFor('internal-error', { id: this.id }), true);
        if (parse.ok) return parse;
        const { refusal, reply } = syntaxRefusal(step, parse, this.id);
        throw this.refused(
            step,
            refusal,
            reply,
            refusal === 'address-syntax' ? { why: parse.reason } : {},
            address.address,
        );
    }

    private paramRefusal(
        step: 'mail' | 'rcpt',
        refused: ParamRefusal,
        offer: EhloOffer,
        address: SMTPServerAddress,
    ): SmtpReplyError {
        const { id } = this;
        const param = refused.keyword;
        switch (refused.situation) {
            case 'message-too-big':
                return this.refused(
                    step,
                    'size',
                    replyFor('message-too-big', { id, limit: offer.sizeLimit }),
                    { limit: offer.sizeLimit },
                    address.address,
                );
            case 'param-invalid': {
                const reason = `${param} ${refused.why ?? 'is malformed'}`;
                return this.refused(
                    step,
                    'param-invalid',
                    replyFor('param-invalid', { id, reason }),
                    { param },
                    address.address,
                );
            }
            case 'param-not-offered':
                return this.refused(
                    step,
                    'param-not-offered',
                    replyFor('param-not-offered', { id, param }),
                    { param },
                    address.address,
                );
        }
    }

    /**
     * Counts, logs and builds one refusal. The line carries what a `refused` line of the rules
     * carries (stage, HELO name, sender, the refused recipient, the recipients accepted so far,
     * action, reply), so one query finds both; `address`: the address of the refused command as
     * the client sent it (cut to LOGGED_ADDRESS characters), absent when not known.
     */
    private refused(
        step: 'mail' | 'rcpt',
        reason: EnvelopeRefusal,
        reply: SmtpReply,
        details: Record<string, unknown> = {},
        address?: string,
    ): SmtpReplyError {
        this.deps.metrics.envelopeRefusals.inc({ listener: this.deps.listener.name, reason });
        const tx = this.deps.transaction?.() ?? null;
        const given = typeof address === 'string' ? address.slice(0, LOGGED_ADDRESS) : undefined;
        const from = step === 'mail' ? given : tx?.from;
        this.deps.log.info(
            {
                step,
                ...refusalLineFields({
                    stage: step,
                    helo: this.smtp.hostNameAppearsAs || null,
                    from,
                    ...(step === 'rcpt' && given !== undefined ? { rcpt: given } : {}),
                    ...(step === 'rcpt' && tx ? { rcptCount: tx.accepted } : {}),
                    action: reply.code >= 500 ? 'reject' : 'tempfail',
                    rules: [],
                    reason: `envelope: ${reason}`,
                    reply,
                }),
                refused: reason,
                ...details,
            },
            'envelope refused',
        );
        return toCallbackError(reply);
    }
}
