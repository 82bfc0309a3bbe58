/**
 * The one reply table: every situation the proxy answers for, mapped to an SMTP reply
 * with an enhanced status code (RFC 3463) and a plain-language sentence.
 * Also the only place that turns a reply into an error object for smtp-server callbacks,
 * so no bare `Error` (which smtp-server maps to 535/550/554 by default) ever reaches one.
 * Public text never names internal mechanisms or hosts; details go to the logs.
 */
import type { HeaderProblem } from './headers.ts';
import type { Action, Decision, SmtpReply, Stage } from './types.ts';
import type { UpstreamReply } from './upstream/types.ts';

export type Situation =
    | 'accepted'
    | 'policy-reject'
    | 'policy-tempfail'
    | 'connect-tempfail'
    | 'message-too-big'
    | 'bare-newline'
    | 'message-line-too-long'
    | 'upstream-unavailable'
    | 'internal-error'
    | 'shutting-down'
    | 'restarting'
    | 'too-many-connections'
    | 'too-many-network-connections'
    | 'no-transaction-timeout'
    | 'envelope-timeout'
    | 'too-many-errors'
    | 'pipelining-violation'
    | 'data-too-slow'
    | 'auth-required'
    | 'auth-tls-required'
    | 'auth-invalid'
    | 'auth-response-invalid'
    | 'auth-unavailable'
    | 'header-too-big'
    | 'header-too-many-fields'
    | 'header-field-too-big'
    | 'sender-not-owned'
    | 'header-malformed'
    | 'header-sender-invalid'
    | 'auth-locked'
    | 'auth-locked-disconnect'
    | 'auth-failures-disconnect'
    | 'auth-revoked'
    | 'command-syntax'
    | 'sender-syntax'
    | 'recipient-syntax'
    | 'smtputf8-required'
    | 'param-invalid'
    | 'param-not-offered'
    | 'relay-denied'
    | 'relay-routing-denied'
    | 'sender-routing-refused'
    | 'too-many-recipients'
    | 'upstream-feature-missing'
    | 'check-failed'
    | 'limit-exceeded'
    | 'connection-limit-exceeded'
    | 'limit-failed'
    | 'connection-limit-failed'
    | 'limit-message-too-big'
    | 'greylisted'
    | 'greylist-failed'
    | 'command-unknown'
    | 'bad-sequence'
    | 'help'
    | 'reset'
    | 'ok'
    | 'goodbye'
    | 'sender-accepted'
    | 'recipient-accepted'
    | 'starttls-ready'
    | 'auth-succeeded'
    | 'auth-cancelled';

/** What a limit counts, for the limit situations. */
export type LimitKind = 'concurrency' | 'connection' | 'recipient' | 'byte' | 'message';

const LIMIT_WHAT: Readonly<Record<LimitKind, string>> = {
    concurrency: 'Too many simultaneous connections',
    connection: 'Rate limit reached: too many connections',
    recipient: 'Rate limit reached: too many recipients',
    byte: 'Rate limit reached: too much mail (in bytes)',
    message: 'Rate limit reached: too many messages',
};

/** The text of a limit refusal: what was counted, whose, and when to try again. */
function limitText(d: ReplyDetail): string {
    const kind = d.limitKind ?? 'message';
    const advice =
        kind === 'concurrency'
            ? `Please close other connections and try again in ${d.retry ?? ''} seconds`
            : `Please try again in ${d.retry ?? ''} seconds`;
    return `${LIMIT_WHAT[kind]} ${d.whose ?? ''}. ${advice} (limit ${d.limitId ?? ''}).`;
}

/** Why a connection is deferred, without the id (the reply adds it) and with when to come back. */
function connectReason(reason: string | undefined): string {
    const why = (reason ?? 'Your server cannot be served at the moment').replace(/\s*\(id [^)]*\)\s*$/, '');
    return /try again/i.test(why)
        ? why.replace(/[.;\s]+$/, '')
        : `${why.replace(/[.;\s]+$/, '')}. Please try again later`;
}

const LIMIT_FAILED_TEXT = (d: ReplyDetail): string =>
    `Temporary problem applying a sending limit; nothing is wrong with your mail. Please try again in a few minutes (limit ${d.limitId ?? ''}).`;

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
    /** Line number in the message and what is wrong with it, for `header-malformed` (the line only, for `header-field-too-big`). */
    readonly line?: number;
    readonly headerProblem?: Exclude<HeaderProblem, 'field-too-long' | 'too-many-fields'>;
    /** What is wrong with the author fields, for `header-sender-invalid`. */
    readonly senderProblem?: HeaderSenderProblem;
    /** How many fields of the kind there are, for `header-sender-invalid`. */
    readonly count?: number;
    /** The SMTP command a reply is about, for `pipelining-violation`. */
    readonly command?: string;
    /** What is wrong, in a few words (syntax refusals). */
    readonly reason?: string;
    /** An ESMTP parameter keyword, for `param-not-offered`. */
    readonly param?: string;
    /**
     * A recipient domain (A-label form), for `relay-denied`; for `relay-routing-denied`, the
     * domain its local part routes to, when that is a domain name.
     */
    readonly domain?: string;
    /** An SMTP service extension (`DSN`, `SMTPUTF8`, …), for `upstream-feature-missing`. */
    readonly feature?: string;
    /** `sender` or `recipient`, for `smtputf8-required`. */
    readonly which?: 'sender' | 'recipient';
    /** The client's network, for `too-many-network-connections`. */
    readonly network?: string;
    /** Seconds of a timeout, for `no-transaction-timeout` and `envelope-timeout`. */
    readonly seconds?: number;
    /** The limit's id, what it counts and whose mail it counts, for the limit situations. */
    readonly limitId?: string;
    readonly limitKind?: LimitKind;
    readonly whose?: string;
    /** The limit's rate as written, for `limit-message-too-big`. */
    readonly rate?: string;
    /**
     * When to try again, in seconds: for limits and greylisting, a rule template placeholder
     * (`{ratelimit.retry_after}`) the rule set fills in from the facts.
     */
    readonly retry?: string;
}

/** Author-field problems on submission that no login can own (RFC 5322 section 3.6). */
export type HeaderSenderProblem =
    | 'several-from'
    | 'several-sender'
    | 'no-from'
    | 'unreadable-from'
    | 'unreadable-sender'
    | 'unreadable-resent-from'
    | 'unreadable-resent-sender';

/** What is wrong with a header line, as a clause after "line N of the header section". */
const HEADER_PROBLEM_TEXT: Readonly<Record<Exclude<HeaderProblem, 'field-too-long' | 'too-many-fields'>, string>> = {
    'leading-whitespace': 'starts with white space, but there is no header field above it to continue',
    'no-colon': 'has no colon, so it is neither a header field nor the empty line that ends the header section',
    'invalid-name': 'has a field name with characters a field name may not contain',
    'empty-line': 'is empty',
    'invalid-character': 'contains a NUL byte or a line break that is not CRLF',
};

const SENDER_PROBLEM_TEXT: Readonly<Record<HeaderSenderProblem, (d: ReplyDetail) => string>> = {
    'several-from': (d) => `the message has ${d.count ?? 2} From fields, and exactly one is allowed`,
    'several-sender': (d) => `the message has ${d.count ?? 2} Sender fields, and at most one is allowed`,
    'no-from': () => 'the message has no From field with an address',
    'unreadable-from': () => 'its From field cannot be read as a list of addresses',
    'unreadable-sender': () => 'its Sender field cannot be read as an address',
    'unreadable-resent-from': () => 'a Resent-From field cannot be read as a list of addresses',
    'unreadable-resent-sender': () => 'a Resent-Sender field cannot be read as an address',
};

/** A duration as people write it: whole minutes in minutes, anything else in seconds. */
function duration(seconds: number): string {
    if (seconds >= 60 && seconds % 60 === 0) return `${seconds / 60} minute${seconds === 60 ? '' : 's'}`;
    return `${seconds} second${seconds === 1 ? '' : 's'}`;
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
    // RFC 5321 sections 3.1 and 4.3.2: the greeting is 220, 554 or 421 (and a 421 closes the
    // connection); a deferral at connect says why in the words of the decision (`reason`)
    'connect-tempfail': {
        code: 421,
        enhanced: '4.7.0',
        text: (d) => `${connectReason(d.reason)}; closing the connection (id ${d.id})`,
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
    'header-too-many-fields': {
        code: 552,
        enhanced: '5.3.4',
        text: (d) =>
            `Message refused: its header section has more than ${d.limit ?? 0} fields (line ${d.line ?? 0} is one too many), more than the mail system here reads; send it with fewer header fields (id ${d.id})`,
    },
    'header-field-too-big': {
        code: 552,
        enhanced: '5.3.4',
        text: (d) =>
            `Message refused: the author field (From, Sender or Reply-To) starting at line ${d.line ?? 0} is longer than ${d.limit ?? 0} bytes, more than the mail system here keeps whole; shorten it (id ${d.id})`,
    },
    'bare-newline': {
        code: 550,
        enhanced: '5.5.2',
        text: (d) =>
            `Message refused: it contains a bare LF or bare CR line ending or a NUL byte, which SMTP forbids (RFC 5321 section 2.3.8); the sending software must use CRLF line endings (id ${d.id})`,
    },
    // RFC 5322 section 2.1.1: a line is at most 998 characters; a relay folds a longer one
    // (Postfix's smtp_line_length_limit), which breaks the DKIM signature made over it
    'message-line-too-long': {
        code: 550,
        enhanced: '5.6.0',
        text: (d) =>
            `Message refused: it has a line longer than ${d.limit ?? 998} characters, which Internet mail forbids (RFC 5322 section 2.1.1) and which would be broken on the way; the sending software must encode long lines (quoted-printable or base64) (id ${d.id})`,
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
    // Postfix's smtpd_hard_error_limit: the session is closed after that many error replies
    'too-many-errors': {
        code: 421,
        enhanced: '4.7.0',
        text: () => 'Too many errors in this session; closing the connection',
    },
    // RFC 2920 section 3.1 (a command that ends a group); Postfix's smtpd_forbid_unauth_pipelining answers 554 5.5.0 and hangs up
    'pipelining-violation': {
        code: 554,
        enhanced: '5.5.0',
        text: (d) =>
            `Protocol error: more was sent before the reply to ${d.command ?? 'the last command'}, which must be awaited; closing the connection`,
    },
    // Postfix's smtpd_min_data_rate: DATA may take socketTimeout plus a second per `rate` bytes
    'data-too-slow': {
        code: 421,
        enhanced: '4.4.2',
        text: (d) => `Message data arrives slower than ${d.rate ?? 0} bytes a second; closing the connection`,
    },
    'no-transaction-timeout': {
        code: 421,
        enhanced: '4.4.2',
        text: (d) =>
            `No mail transaction started within ${d.seconds ?? 0} second${d.seconds === 1 ? '' : 's'}; closing the connection`,
    },
    // socketTimeout from the first MAIL FROM (since the start or the last DATA) to DATA
    'envelope-timeout': {
        code: 421,
        enhanced: '4.4.2',
        text: (d) => `No message sent within ${duration(d.seconds ?? 0)} of MAIL FROM; closing the connection`,
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
    // RFC 4954 section 4: a response that cannot be base64-decoded ends the exchange with 501
    'auth-response-invalid': {
        code: 501,
        enhanced: '5.5.2',
        text: () => 'Authentication cancelled: the response is not valid base64 (RFC 4954 section 4)',
    },
    'sender-not-owned': {
        code: 553,
        enhanced: '5.7.1',
        text: (d) =>
            `Sender address rejected: ${d.address ?? ''} is not an address the login ${d.login ?? ''} may send as; use one of your own addresses or ask your postmaster to add this one (id ${d.id})`,
    },
    'header-malformed': {
        code: 550,
        enhanced: '5.6.0',
        text: (d) =>
            `Message refused: line ${d.line ?? 0} of the header section ${HEADER_PROBLEM_TEXT[d.headerProblem ?? 'no-colon']}; each header line must be "Name: value" or a continuation starting with white space (RFC 5322 section 2.2), and the sending software must be fixed (id ${d.id})`,
    },
    'header-sender-invalid': {
        code: 553,
        enhanced: '5.7.1',
        text: (d) =>
            `Sender address rejected: ${SENDER_PROBLEM_TEXT[d.senderProblem ?? 'no-from'](d)} (RFC 5322 section 3.6), so it cannot be shown to belong to the login ${d.login ?? ''}; send one From field with your own address (id ${d.id})`,
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
    'auth-failures-disconnect': {
        code: 421,
        enhanced: '4.7.0',
        text: () =>
            'Too many failed logins on this connection; closing it. Check the user name and password your mail program uses',
    },
    'auth-revoked': {
        code: 421,
        enhanced: '4.7.0',
        text: () =>
            'Your password was changed or your login was removed since you logged in; closing the connection, log in again with your current password',
    },
    // MAIL and RCPT syntax: RFC 5321 section 4.1.2; 553 and 555 per section 4.3.2, 501 per section 4.2.2
    'command-syntax': {
        code: 501,
        enhanced: '5.5.4',
        text: (d) => `Syntax error: ${d.reason ?? 'malformed command'}`,
    },
    'sender-syntax': {
        code: 553,
        enhanced: '5.1.7',
        text: (d) => `Bad sender address syntax: ${d.reason ?? 'not an address'}`,
    },
    'recipient-syntax': {
        code: 553,
        enhanced: '5.1.3',
        text: (d) => `Bad recipient address syntax: ${d.reason ?? 'not an address'}`,
    },
    // RFC 6531 section 3.4 and 3.7.4.1
    'smtputf8-required': {
        code: 553,
        enhanced: '5.6.7',
        text: (d) =>
            `The ${d.which ?? 'sender'} address contains non-ASCII characters, which needs the SMTPUTF8 parameter of MAIL FROM (RFC 6531); send it with SMTPUTF8 where this server offers it`,
    },
    'param-invalid': {
        code: 501,
        enhanced: '5.5.4',
        text: (d) => `Bad parameter: ${d.reason ?? 'malformed'}`,
    },
    // RFC 5321 section 4.1.1.11
    'param-not-offered': {
        code: 555,
        enhanced: '5.5.4',
        text: (d) =>
            `The ${d.param ?? ''} parameter is not supported in this session (see this server's EHLO reply); send the command without it`,
    },
    'relay-denied': {
        code: 550,
        enhanced: '5.7.1',
        text: (d) =>
            `Relaying denied: this server accepts mail only for its own domains, and ${d.domain ?? 'that domain'} is not one of them; send the message to the recipient domain's own mail server`,
    },
    // Postfix's allow_untrusted_routing = no: user%site, site!user, "user@site" in the local part
    'relay-routing-denied': {
        code: 550,
        enhanced: '5.7.1',
        text: (d) =>
            `Relaying denied: the recipient's local part routes the message on to ${d.domain ? d.domain : 'another destination'} (with %, ! or @), which this server does not relay; send the message to the final recipient's own mail server`,
    },
    // a local part routing within our own domains: the mailbox is not the address rules read
    'sender-routing-refused': {
        code: 550,
        enhanced: '5.7.1',
        text: () =>
            `Sender-specified routing is not accepted: the recipient's local part routes the message on (with %, ! or a quoted @); write the final recipient's address as it is`,
    },
    'too-many-recipients': {
        code: 452,
        enhanced: '4.5.3',
        text: (d) =>
            `Too many recipients for one message${d.limit ? ` (at most ${d.limit})` : ''}; send the rest in another message`,
    },
    'upstream-feature-missing': {
        code: 451,
        enhanced: '4.3.3',
        text: (d) =>
            `The mail server behind this gateway does not offer ${d.feature ?? 'a feature'} at the moment, and this message asks for it; nothing was accepted, please try again later (id ${d.id})`,
    },
    'auth-unavailable': {
        code: 454,
        enhanced: '4.7.0',
        text: () => 'Temporary authentication failure: the login service is not available, please try again later',
    },
    // a check with onError: tempfail could not complete (pipeline.ts)
    'check-failed': {
        code: 451,
        enhanced: '4.4.3',
        text: () => 'A policy check could not be completed; please try again later',
    },
    // limits and greylisting (rules/limits.ts): rule templates, filled in from the facts
    'limit-exceeded': { code: 450, enhanced: '4.7.1', text: limitText },
    'connection-limit-exceeded': { code: 421, enhanced: '4.7.0', text: limitText },
    'limit-failed': { code: 451, enhanced: '4.7.1', text: LIMIT_FAILED_TEXT },
    'connection-limit-failed': { code: 421, enhanced: '4.7.0', text: LIMIT_FAILED_TEXT },
    'limit-message-too-big': {
        code: 450,
        enhanced: '4.7.1',
        text: (d) =>
            `Rate limit reached: this message alone is larger than the limit ${d.limitId ?? ''} allows ${d.whose ?? ''} (${d.rate ?? ''}), so it cannot be accepted under this limit; please ask the postmaster.`,
    },
    // RFC 6647
    greylisted: {
        code: 450,
        enhanced: '4.7.1',
        text: (d) =>
            `Greylisted: please try again in ${d.retry ?? ''} seconds (RFC 6647). This server delays mail from senders it has not seen before; your server will retry by itself.`,
    },
    // the session's own commands, answered by smtp-server and given these texts (smtp-server/replies.ts)
    // an unknown command, or one this server does not offer (XCLIENT, XFORWARD, sendmail's WIZ, SHELL, KILL)
    'command-unknown': {
        code: 500,
        enhanced: '5.5.2',
        text: () => 'Command not recognized',
    },
    // RFC 5321 section 4.1.4: commands out of order
    'bad-sequence': {
        code: 503,
        enhanced: '5.5.1',
        text: (d) => `Bad sequence of commands: ${d.reason ?? 'not now'}`,
    },
    help: {
        code: 214,
        enhanced: '2.0.0',
        text: () => 'This is an SMTP server (RFC 5321); ask the postmaster of this domain for help',
    },
    reset: {
        code: 250,
        enhanced: '2.0.0',
        text: () => 'Reset: no mail transaction is open',
    },
    ok: {
        code: 250,
        enhanced: '2.0.0',
        text: () => 'OK',
    },
    goodbye: {
        code: 221,
        enhanced: '2.0.0',
        text: () => 'Goodbye; closing the connection',
    },
    'sender-accepted': {
        code: 250,
        enhanced: '2.1.0',
        text: () => 'Sender accepted',
    },
    'recipient-accepted': {
        code: 250,
        enhanced: '2.1.5',
        text: () => 'Recipient accepted',
    },
    'auth-succeeded': {
        code: 235,
        enhanced: '2.7.0',
        text: () => 'Authentication succeeded',
    },
    // RFC 4954 section 4: a client that cancels the exchange with "*"
    'auth-cancelled': {
        code: 501,
        enhanced: '5.7.0',
        text: () => 'Authentication cancelled',
    },
    'starttls-ready': {
        code: 220,
        enhanced: '2.0.0',
        text: () => 'Ready to start TLS',
    },
    'greylist-failed': {
        code: 451,
        enhanced: '4.7.1',
        text: () =>
            'Temporary problem applying greylisting; nothing is wrong with your mail. Please try again in a few minutes.',
    },
};

/** Every situation of the table, for the documentation test. */
export const SITUATIONS = Object.keys(TABLE) as readonly Situation[];

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
 * the decision forwards it (accept, tag, quarantine). At the connect stage the reply is the
 * greeting (asGreeting).
 */
export function replyForDecision(decision: Decision, detail: ReplyDetail, stage?: Stage): SmtpReply | null {
    const situation = ACTION_SITUATION[decision.action];
    if (!situation) return null;
    const reply = decision.reply ?? replyFor(situation, detail);
    return stage === 'connect' ? asGreeting(reply, detail) : reply;
}

/**
 * A refusal sent instead of the greeting. RFC 5321 sections 3.1 and 4.3.2 allow only 554 (the
 * connection is refused) and 421 (service not available, closing) there: any 5xx is sent as
 * `554` with its enhanced code, any other 4xx (a rule's tempfail, a failed check, softReject,
 * our own failure) as `connect-tempfail` (`421 4.7.0`) saying why in the reply's own words.
 */
export function asGreeting(reply: SmtpReply, detail: ReplyDetail): SmtpReply {
    if (reply.code >= 500) return reply.code === 554 ? reply : { ...reply, code: 554 };
    if (reply.code === 421) return reply;
    return replyFor('connect-tempfail', { ...detail, reason: reply.text });
}

/**
 * A rule's 5xx reply turned into its 4xx equivalent (config `softReject`, like Postfix's
 * soft_bounce): the class digit of the code and of the enhanced code drop by one, and a text that
 * opens by saying the message, sender or recipient was refused or rejected ("Message refused: …")
 * says it was deferred instead, since a 4xx asks the client to try again. Other replies are kept.
 */
export function softenReply(reply: SmtpReply): SmtpReply {
    if (reply.code < 500 || reply.code > 599) return reply;
    return { code: reply.code - 100, enhanced: `4${reply.enhanced.slice(1)}`, text: deferredText(reply.text) };
}

const REFUSED_OPENING = /^((?:[A-Z][a-z]*)(?: [a-z]+){0,2}) (?:refused|rejected)\b/;

function deferredText(text: string): string {
    const opening = REFUSED_OPENING.exec(text);
    return opening ? `${opening[1]} deferred${text.slice(opening[0].length)}` : text;
}

/** Renders a reply as one SMTP reply line without the trailing CRLF. */
export function formatReply(reply: SmtpReply): string {
    return `${reply.code} ${reply.enhanced} ${reply.text}`;
}

/** Error carrying an SMTP reply, in the shape smtp-server callbacks expect. */
export class SmtpReplyError extends Error {
    readonly responseCode: number;
    readonly reply: SmtpReply;
    /**
     * True when the reply answers a fault of mailwarden's own (a bug), marked where it is raised
     * and counted in `internal_errors_total`; never for what a client, the upstream or the
     * host did, whatever the reply code.
     */
    readonly internal: boolean;
    constructor(reply: SmtpReply, internal: boolean) {
        super(`${reply.enhanced} ${sanitizeReplyText(reply.text)}`);
        this.name = 'SmtpReplyError';
        this.responseCode = reply.code;
        this.reply = reply;
        this.internal = internal;
    }
}

/**
 * The only way to build an error for an smtp-server callback; `internal` marks a fault of our
 * own (SmtpReplyError.internal).
 */
export function toCallbackError(reply: SmtpReply, internal = false): SmtpReplyError {
    return new SmtpReplyError(reply, internal);
}

/** Reply text must be one line of printable characters (RFC 5321 section 4.2). */
export function sanitizeReplyText(text: string): string {
    // eslint-disable-next-line no-control-regex
    return text.replace(/[\x00-\x1f\x7f]+/g, ' ').slice(0, 450);
}

/*
 * An upstream MTA's refusal relayed to the client: the reply code and enhanced status code
 * are kept (so the class and meaning reach the sender), the text is our own plain sentence
 * chosen from the enhanced code (RFC 3463); the upstream's own text goes only to the logs,
 * because it may name internal hosts or software.
 */
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
    // 530 (Postfix: "Must issue a STARTTLS command first", "Authentication required") is about
    // the gateway's own connection to the upstream, never the client's message: a 4xx, ours to fix
    if (reply.code === 530) return relayedReply(step, { ...reply, code: 451, enhanced: '4.7.0' });
    const klass = reply.code >= 500 ? 5 : 4;
    const code = reply.code >= 400 && reply.code < 600 ? reply.code : 451;
    const enhanced = reply.enhanced && Number(reply.enhanced[0]) === klass ? reply.enhanced : `${klass}.0.0`;
    const why = SUBJECTS.find(([re]) => re.test(enhanced))?.[1];
    const retry = klass === 4 ? '; please try again later' : '';
    return { code, enhanced, text: `${WHAT[step]}${why ? `: ${why}` : ''}${retry}` };
}
