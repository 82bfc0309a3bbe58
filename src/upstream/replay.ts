/**
 * The envelope of an upstream transaction as it was accepted (MAIL FROM and every RCPT TO the
 * client was told was accepted, with their parameters), and its replay on another connection.
 * A transaction's connection that died before DATA (the upstream's idle timeout outlasting the
 * keepalive NOOPs, a restarted upstream) took no byte of the message, so the transaction may be
 * begun afresh on a new one (RFC 5321 section 3.3: a transaction is MAIL, then RCPT, then DATA;
 * section 3.8: a transaction that did not reach the end of data is void). session.ts decides
 * when, at most once per message.
 * It must not open or close connections, send DATA or RSET, retry, or choose what the client hears.
 */
import type { MailParams, RcptParams, UpstreamReply, UpstreamSession } from './types.ts';

/** What was sent upstream and accepted, in order. */
export interface AcceptedEnvelope {
    readonly mail: { readonly address: string; readonly params: MailParams };
    readonly rcpts: Array<{ readonly address: string; readonly params: RcptParams }>;
}

/** Whether the replayed envelope stands on the new connection; when not, why. */
export type ReplayOutcome = { readonly ok: true } | { readonly ok: false; readonly reason: string };

function isSuccess(reply: UpstreamReply): boolean {
    return reply.code >= 200 && reply.code < 300;
}

function refused(command: string, reply: UpstreamReply): ReplayOutcome {
    const answer = `${reply.code} ${reply.enhanced ?? ''} ${reply.text}`.replace(/\s+/g, ' ');
    return { ok: false, reason: `the upstream answered the replayed ${command} with ${answer}` };
}

/**
 * Sends MAIL and every RCPT of `envelope` on `up`, in lock-step, stopping at the first reply
 * that is not a 2xx: the message may go on only where every one was taken again, as the
 * client was told at the time. `onReply` sees each reply and its stage (for counting). Throws the
 * UpstreamError of a connection that fails meanwhile.
 */
export async function replayEnvelope(
    up: UpstreamSession,
    envelope: AcceptedEnvelope,
    onReply: (reply: UpstreamReply, stage: 'mail' | 'rcpt') => void,
): Promise<ReplayOutcome> {
    if (envelope.rcpts.length === 0) return { ok: false, reason: 'no accepted recipient to replay' };
    const mail = await up.mailFrom(envelope.mail.address, envelope.mail.params);
    onReply(mail, 'mail');
    if (!isSuccess(mail)) return refused(`MAIL FROM:<${envelope.mail.address}>`, mail);
    for (const rcpt of envelope.rcpts) {
        const reply = await up.rcptTo(rcpt.address, rcpt.params);
        onReply(reply, 'rcpt');
        if (!isSuccess(reply)) return refused(`RCPT TO:<${rcpt.address}>`, reply);
    }
    return { ok: true };
}
