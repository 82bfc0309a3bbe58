/**
 * The one reply table: every situation the proxy answers for, mapped to an SMTP reply
 * with an enhanced status code (RFC 3463) and a plain-language sentence.
 * Also the only place that turns a reply into an error object for smtp-server callbacks,
 * so no bare `Error` (which smtp-server maps to 535/550/554 by default) ever reaches one.
 * Public text never names internal mechanisms or hosts; details go to the logs.
 */
import type { Action, Decision, SmtpReply } from './types.ts';

export type Situation =
    | 'accepted'
    | 'policy-reject'
    | 'policy-tempfail'
    | 'message-too-big'
    | 'bare-newline'
    | 'upstream-unavailable'
    | 'internal-error'
    | 'shutting-down'
    | 'restarting'
    | 'too-many-connections'
    | 'too-many-network-connections'
    | 'no-transaction-timeout'
    | 'auth-required'
    | 'auth-tls-required'
    | 'auth-invalid'
    | 'auth-unavailable'
    | 'header-too-big'
    | 'sender-not-owned'
    | 'auth-locked'
    | 'auth-locked-disconnect';

interface ReplyTemplate {
    code: number;
    enhanced: string;
    text: (detail: ReplyDetail) => string;
}

export interface ReplyDetail {
    /** Session id, quoted so people can give it to the postmaster. */
    readonly id: string;
    readonly limit?: number;
    readonly queueId?: string | null;
    /** Minutes until a login may be tried again, for `auth-locked`. */
    readonly minutes?: number;
    /** Sender address and login, for `sender-not-owned`. */
    readonly address?: string;
    readonly login?: string;
    /** The client's network, for `too-many-network-connections`. */
    readonly network?: string;
    /** Seconds of a timeout, for `no-transaction-timeout`. */
    readonly seconds?: number;
}

const TABLE: Readonly<Record<Situation, ReplyTemplate>> = {
    accepted: {
        code: 250,
        enhanced: '2.0.0',
        text: (d) => `Message accepted for delivery${d.queueId ? ` as ${d.queueId}` : ''} (id ${d.id})`,
    },
    'policy-reject': {
        code: 550,
        enhanced: '5.7.1',
        text: (d) =>
            `Message refused by the receiving domain's policy; ask the postmaster of this domain for help and quote id ${d.id}`,
    },
    'policy-tempfail': {
        code: 451,
        enhanced: '4.7.1',
        text: (d) => `Message deferred by the receiving domain's policy; please try again later (id ${d.id})`,
    },
    'message-too-big': {
        code: 552,
        enhanced: '5.3.4',
        text: (d) =>
            `Message too big: this server accepts at most ${d.limit ?? 0} bytes; send a smaller message or share large files by link (id ${d.id})`,
    },
    'header-too-big': {
        code: 552,
        enhanced: '5.3.4',
        text: (d) => `Message header section too big: at most ${d.limit ?? 0} bytes are accepted (id ${d.id})`,
    },
    'bare-newline': {
        code: 550,
        enhanced: '5.5.2',
        text: (d) =>
            `Message refused: it contains a bare LF or bare CR line ending or a NUL byte, which SMTP forbids (RFC 5321 section 2.3.8); the sending software must use CRLF line endings (id ${d.id})`,
    },
    'upstream-unavailable': {
        code: 451,
        enhanced: '4.4.1',
        text: (d) =>
            `The mail server behind this gateway is not answering; your message was not accepted, please try again later (id ${d.id})`,
    },
    'internal-error': {
        code: 451,
        enhanced: '4.3.0',
        text: (d) => `Temporary internal error; your message was not accepted, please try again later (id ${d.id})`,
    },
    // RFC 5321 section 3.8: a server that must close answers 421 to every command;
    // "restarting" only when the operator asked for a restart (it is then back within seconds)
    'shutting-down': {
        code: 421,
        enhanced: '4.3.2',
        text: () => 'Service shutting down; please try again later',
    },
    restarting: {
        code: 421,
        enhanced: '4.3.2',
        text: () => 'Service restarting; please try again in a moment',
    },
    'too-many-connections': {
        code: 421,
        enhanced: '4.7.0',
        text: () => 'Too many connections to this server right now; please try again in a few minutes',
    },
    'too-many-network-connections': {
        code: 421,
        enhanced: '4.7.0',
        text: (d) =>
            `Too many simultaneous connections from your network${d.network ? ` ${d.network}` : ''}; close some and try again in a few minutes`,
    },
    'no-transaction-timeout': {
        code: 421,
        enhanced: '4.4.2',
        text: (d) =>
            `No mail transaction started within ${d.seconds ?? 0} second${d.seconds === 1 ? '' : 's'}; closing the connection`,
    },
    'auth-required': {
        code: 530,
        enhanced: '5.7.0',
        text: () => 'Authentication required: log in with your account before sending mail on this port',
    },
    'auth-tls-required': {
        code: 538,
        enhanced: '5.7.11',
        text: () => 'Encryption required: issue STARTTLS before logging in',
    },
    'auth-invalid': {
        code: 535,
        enhanced: '5.7.8',
        text: () => 'Authentication failed: the user name or password is wrong',
    },
    'sender-not-owned': {
        code: 553,
        enhanced: '5.7.1',
        text: (d) =>
            `Sender address rejected: ${d.address ?? ''} is not an address the login ${d.login ?? ''} may send as; use one of your own addresses or ask your postmaster to add this one`,
    },
    'auth-locked': {
        code: 454,
        enhanced: '4.7.0',
        text: (d) =>
            `Too many failed logins from your address or for this user; try again in ${d.minutes ?? 1} minutes, and check the password your mail program uses`,
    },
    'auth-locked-disconnect': {
        code: 421,
        enhanced: '4.7.0',
        text: (d) => `Too many failed logins; closing the connection. Try again in ${d.minutes ?? 1} minutes`,
    },
    'auth-unavailable': {
        code: 454,
        enhanced: '4.7.0',
        text: () => 'Temporary authentication failure: the login service is not available, please try again later',
    },
};

/** The reply for a situation. */
export function replyFor(situation: Situation, detail: ReplyDetail): SmtpReply {
    const t = TABLE[situation];
    return { code: t.code, enhanced: t.enhanced, text: t.text(detail) };
}

/** Default situation for an action that ends the transaction without forwarding. */
const ACTION_SITUATION: Readonly<Partial<Record<Action, Situation>>> = {
    reject: 'policy-reject',
    tempfail: 'policy-tempfail',
};

/**
 * The reply for a decision that refuses the message (reject or tempfail), or null when
 * the decision forwards it (accept, tag, quarantine).
 */
export function replyForDecision(decision: Decision, detail: ReplyDetail): SmtpReply | null {
    const situation = ACTION_SITUATION[decision.action];
    if (!situation) return null;
    return decision.reply ?? replyFor(situation, detail);
}

/** Renders a reply as one SMTP reply line without the trailing CRLF. */
export function formatReply(reply: SmtpReply): string {
    return `${reply.code} ${reply.enhanced} ${reply.text}`;
}

/** Error carrying an SMTP reply, in the shape smtp-server callbacks expect. */
export class SmtpReplyError extends Error {
    readonly responseCode: number;
    readonly reply: SmtpReply;
    constructor(reply: SmtpReply) {
        super(`${reply.enhanced} ${sanitizeReplyText(reply.text)}`);
        this.name = 'SmtpReplyError';
        this.responseCode = reply.code;
        this.reply = reply;
    }
}

/** The only way to build an error for an smtp-server callback. */
export function toCallbackError(reply: SmtpReply): SmtpReplyError {
    return new SmtpReplyError(reply);
}

/** Reply text must be one line of printable characters (RFC 5321 section 4.2). */
export function sanitizeReplyText(text: string): string {
    // eslint-disable-next-line no-control-regex
    return text.replace(/[\x00-\x1f\x7f]+/g, ' ').slice(0, 450);
}
