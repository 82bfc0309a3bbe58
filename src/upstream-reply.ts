/**
 * Relays an upstream MTA's refusal to the client: the reply code and enhanced status code
 * are kept (so the class and meaning reach the sender), the text is our own plain sentence
 * chosen from the enhanced code (RFC 3463); the upstream's own text goes only to the logs,
 * because it may name internal hosts or software.
 */
import type { SmtpReply } from './types.ts';
import type { UpstreamReply } from './upstream/types.ts';

export type RelayStep = 'mail' | 'rcpt' | 'data';

const SUBJECTS: ReadonlyArray<[RegExp, string]> = [
    [/^\d\.1\.1$/, 'the recipient address does not exist there'],
    [/^\d\.1\.2$/, "the recipient's domain is not handled there"],
    [/^\d\.1\.[0-9]+$/, 'an address in the message envelope was not accepted'],
    [/^\d\.2\.2$/, "the recipient's mailbox is full"],
    [/^\d\.2\.[0-9]+$/, "the recipient's mailbox is not available"],
    [/^\d\.3\.4$/, 'the message is too big'],
    [/^\d\.3\.[0-9]+$/, 'the mail system there has a problem'],
    [/^\d\.4\.[0-9]+$/, 'the mail system there could not route the message'],
    [/^\d\.5\.[0-9]+$/, 'the command was not accepted there'],
    [/^\d\.6\.[0-9]+$/, 'the message content was not accepted there'],
    [/^\d\.7\.[0-9]+$/, 'the destination refused it for policy reasons'],
];

const WHAT: Readonly<Record<RelayStep, string>> = {
    mail: 'The destination mail server refused the sender',
    rcpt: 'The destination mail server refused this recipient',
    data: 'The destination mail server refused the message',
};

/** Our reply for an upstream 4xx/5xx at MAIL, RCPT or the end of DATA. */
export function relayedReply(step: RelayStep, reply: UpstreamReply): SmtpReply {
    const klass = reply.code >= 500 ? 5 : 4;
    const code = reply.code >= 400 && reply.code < 600 ? reply.code : 451;
    const enhanced = reply.enhanced && Number(reply.enhanced[0]) === klass ? reply.enhanced : `${klass}.0.0`;
    const why = SUBJECTS.find(([re]) => re.test(enhanced))?.[1];
    const retry = klass === 4 ? '; please try again later' : '';
    return { code, enhanced, text: `${WHAT[step]}${why ? `: ${why}` : ''}${retry}` };
}
