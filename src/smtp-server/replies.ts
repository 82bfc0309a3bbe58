/**
 * The enhanced status code (RFC 3463) and the text of every single-line reply smtp-server
 * builds itself (command syntax, sequence errors, timeouts, client limits, AUTH before TLS,
 * and its `250` to MAIL, RCPT, RSET, NOOP, `221` to QUIT, `235` to AUTH), so that every reply
 * carries exactly one enhanced code, as ENHANCEDSTATUSCODES promises (RFC 2034 section 4).
 * Every text smtp-server writes is known here: most stand for a situation of the reply table,
 * the rest are rewritten into plain sentences, and those of commands no client may use are never
 * sent (DISABLED_COMMANDS); the contract test fails on any text of the pinned smtp-server that is
 * none of these. Replies we built ourselves already start with an enhanced code and pass through
 * untouched, as do `3xx` replies (RFC 3463 has no class 3). The greeting and the replies to
 * HELO/EHLO carry none (RFC 2034 section 4): rewriteHelloReply only gives smtp-server's refusals
 * of a HELO/EHLO argument the table's text.
 * Pure: text in, text out; nothing here decides policy or touches smtp-server itself.
 */
import { replyFor, type Situation } from '../reply.ts';

/** Built-in texts that stand for a situation of our reply table, with the detail its text takes. */
const SITUATIONS: ReadonlyArray<[number, RegExp, Situation, string?]> = [
    [530, /^Error: authentication Required/i, 'auth-required'],
    [538, /^Error: Must issue a STARTTLS command first/, 'auth-tls-required'],
    [421, /^Server shutting down/, 'shutting-down'],
    [452, /^Error: too many recipients/, 'too-many-recipients'],
    [421, /Too many connected clients/, 'too-many-connections'],
    [500, /^Error: command not recognized/, 'command-unknown'],
    [500, /not allowed in LMTP server/, 'command-unknown'],
    [503, /^Error: need MAIL command/, 'bad-sequence', 'send MAIL FROM first'],
    [503, /^Error: need RCPT command/, 'bad-sequence', 'send RCPT TO first'],
    [503, /^Error: nested MAIL command/, 'bad-sequence', 'a mail transaction is already open; finish it or send RSET'],
    [503, /^Error: send\b/, 'bad-sequence', 'send EHLO or HELO first'],
    [503, /^Error: Mail transaction in progress/, 'bad-sequence', 'a mail transaction is open; finish it or send RSET'],
    [503, /^Error: TLS already active/, 'bad-sequence', 'TLS is already active'],
    [503, /^Error: No identity changes permitted/, 'bad-sequence', 'already logged in'],
    [501, /^Error: Syntax: VRFY address/, 'command-syntax', 'write VRFY and an address'],
    [501, /^Error: syntax: STARTTLS/, 'command-syntax', 'STARTTLS takes no argument'],
    [501, /^Error: Bad command parameter syntax/, 'command-syntax', 'bad parameters'],
    [
        501,
        /^Error: NOTIFY parameter must be/,
        'param-invalid',
        'NOTIFY is NEVER or a list of SUCCESS, FAILURE and DELAY',
    ],
    [
        501,
        /^Error: NOTIFY=NEVER cannot be combined/,
        'param-invalid',
        'NOTIFY=NEVER cannot be combined with other values',
    ],
    [
        501,
        /^Error: Bad ORCPT parameter syntax/,
        'param-invalid',
        'ORCPT is not addr-type;address (RFC 3461 section 4.2)',
    ],
    [501, /^Error: syntax: AUTH\b/, 'command-syntax', 'write AUTH, a mechanism and at most one response'],
    [235, /^Authentication successful$/, 'auth-succeeded'],
    [501, /^Authentication aborted$/, 'auth-cancelled'],
    [535, /^Error: Authentication credentials invalid$/, 'auth-invalid'],
    [535, /^Error: Username and Password not accepted$/, 'auth-invalid'],
    [214, /^See https:/, 'help'],
    [250, /^Flushed$/, 'reset'],
    [250, /^OK$/, 'ok'],
    [221, /^Bye$/, 'goodbye'],
    [220, /^Ready to start TLS$/, 'starttls-ready'],
];

/** smtp-server's `250 Accepted`, by the command it answers. */
const ACCEPTED: Readonly<Record<string, Situation>> = {
    MAIL_FROM_OK: 'sender-accepted',
    RCPT_TO_OK: 'recipient-accepted',
};
const ACCEPTED_TEXT = /^Accepted$/;

/**
 * Commands smtp-server would answer with texts of its own that no client is to see: sendmail's
 * WIZ, SHELL and KILL (jokes), XCLIENT and XFORWARD (meant for a proxy in front of a real MTA, a
 * permanent policy refusal for anyone else). Every listener disables them (listener.ts), so
 * smtp-server answers them as unrecognized (`command-unknown`), as it does any unknown command.
 */
export const DISABLED_COMMANDS: readonly string[] = Object.freeze(['XCLIENT', 'XFORWARD', 'WIZ', 'SHELL', 'KILL']);

/** The texts of the disabled commands' handlers, never sent; the contract test checks each belongs to one. */
export const DISABLED_TEXTS: ReadonlyArray<[RegExp, string]> = Object.freeze([
    [/^Error: Not allowed$/, 'XCLIENT'],
    [/^You are no wizard!$/, 'WIZ'],
    [/^Please pass, oh mighty wizard$/, 'WIZ'],
    [/^Mere mortals must not mutter that mantra$/, 'SHELL'],
    [/^Error: Invoking shell is not allowed/, 'SHELL'],
    [/^Can not kill Mom$/, 'KILL'],
] as [RegExp, string][]);

/** Other built-in texts rewritten into plain sentences, with their enhanced codes. */
const TEXTS: ReadonlyArray<[number, RegExp, string, string]> = [
    [421, /^Timeout - closing connection/, '4.4.2', 'Idle too long; closing the connection'],
    [421, /^Error: too many unrecognized commands/, '4.7.0', 'Too many unrecognized commands; closing the connection'],
    [
        421,
        /^Error: too many unauthenticated commands/,
        '4.7.0',
        'Too many commands without logging in; closing the connection',
    ],
    [421, /^HTTP requests not allowed/, '4.7.0', 'This is an SMTP server, not a web server'],
    // a line longer than smtp-server's 16 KB (RFC 5321 section 4.5.3.1.4 allows 512 octets); X.5.2: syntax
    [421, /^(?:Error: )?Command line too long/, '4.5.2', 'Command line too long; closing the connection'],
    [421, /You talk too soon/, '4.7.0', 'Commands were sent before the greeting; closing the connection'],
    [451, /^Error: internal server error/, '4.3.0', 'Temporary internal error; please try again later'],
    [552, /^Error: message exceeds fixed maximum message size/, '5.3.4', 'Message too big for this server'],
    [501, /^Error: Bad sender address syntax/, '5.1.7', 'Bad sender address syntax'],
    [501, /^Error: Bad recipient address syntax/, '5.1.3', 'Bad recipient address syntax'],
    [
        504,
        /^Error: Unrecognized authentication type/,
        '5.5.4',
        'Unrecognized authentication mechanism; use PLAIN or LOGIN',
    ],
    [250, /^OK: message (?:accepted|queued)/, '2.0.0', 'Message accepted'],
    [501, /^Error: invalid userdata$/, '5.5.2', 'Authentication cancelled: the response cannot be read'],
    [501, /^Error: missing username$/, '5.5.2', 'Authentication cancelled: the user name is missing'],
    [
        252,
        /^Try to send something/,
        '2.0.0',
        'Addresses are not verified here; send the message and each recipient is answered at RCPT TO',
    ],
];

/** Built-in refusals of a HELO/EHLO argument, and the reason the table's `command-syntax` gives. */
const HELLO_TEXTS: ReadonlyArray<[RegExp, string]> = [
    [/^Error: syntax: /, 'EHLO takes exactly one host name'],
    [/^Error: Syntax: HELO/, 'HELO takes exactly one host name'],
    [/^Error: Bad hostname syntax/, 'the host name is not valid'],
];

/** smtp-server's reply contexts that name the situation more precisely than the reply code. */
const CONTEXT_ENHANCED: Readonly<Record<string, string>> = {
    MAIL_FROM_OK: '2.1.0', // RFC 3463 section 3.2: X.1.0 other address status (the sender)
    RCPT_TO_OK: '2.1.5', // X.1.5 destination address valid
    DATA_OK: '2.0.0',
    SENDER_SYNTAX_ERROR: '5.1.7', // X.1.7 bad sender's mailbox address syntax
    MAILBOX_SYNTAX_ERROR: '5.1.3', // X.1.3 bad destination mailbox address syntax
    TOO_MANY_RECIPIENTS: '4.5.3',
    MESSAGE_TOO_BIG: '5.3.4',
};

/** Enhanced codes for the remaining built-in replies, by reply code (RFC 3463, RFC 5321 section 4.2.3). */
const DEFAULT_ENHANCED: Readonly<Record<number, string>> = {
    235: '2.7.0', // RFC 4954 section 6
    421: '4.3.0',
    451: '4.3.0',
    452: '4.5.3',
    454: '4.7.0',
    500: '5.5.2',
    501: '5.5.4',
    502: '5.5.1',
    503: '5.5.1',
    504: '5.5.4',
    530: '5.7.0',
    535: '5.7.8',
    538: '5.7.11',
    550: '5.7.1',
    552: '5.3.4',
    553: '5.1.3',
    554: '5.6.0',
    555: '5.5.4',
};

const HAS_ENHANCED = /^[245]\.\d{1,3}\.\d{1,3}(?: |$)/;

/** The table's text for a situation (with the fixed reason of SITUATIONS), rendered once: it never changes. */
const rendered = new Map<string, string>();
function tableText(situation: Situation, reason?: string): string {
    const key = reason === undefined ? situation : `${situation}\n${reason}`;
    let text = rendered.get(key);
    if (text === undefined) {
        const r = replyFor(situation, { id: '', ...(reason === undefined ? {} : { reason }) });
        text = `${r.enhanced} ${r.text}`;
        rendered.set(key, text);
    }
    return text;
}

/**
 * Rewrites one single-line reply text for `code` (`context` is smtp-server's hint, such as
 * `MAIL_FROM_OK`); returns the text to send, starting with its enhanced code.
 */
export function rewriteBuiltinReply(code: number, text: string, context?: string): string {
    if ((code >= 300 && code < 400) || HAS_ENHANCED.test(text)) return text;
    const accepted = code === 250 && context !== undefined && ACCEPTED_TEXT.test(text) ? ACCEPTED[context] : undefined;
    if (accepted) return tableText(accepted);
    for (const [c, re, situation, reason] of SITUATIONS) {
        if (c === code && re.test(text)) return tableText(situation, reason);
    }
    for (const [c, re, enhanced, plain] of TEXTS) {
        if (c === code && re.test(text)) return `${enhanced} ${plain}`;
    }
    const byContext = context !== undefined ? CONTEXT_ENHANCED[context] : undefined;
    const enhanced =
        byContext !== undefined && byContext[0] === String(code)[0]
            ? byContext
            : (DEFAULT_ENHANCED[code] ?? `${Math.floor(code / 100)}.0.0`);
    const plain = text.replace(/^Error: /, '');
    return plain ? `${enhanced} ${plain}` : enhanced;
}

/**
 * A reply to HELO/EHLO (or the greeting), which carries no enhanced code (RFC 2034 section 3):
 * smtp-server's own refusals of the argument get the reply table's text; anything else passes.
 */
export function rewriteHelloReply(code: number, text: string): string {
    if (code !== 501) return text;
    for (const [re, reason] of HELLO_TEXTS) {
        if (re.test(text)) return replyFor('command-syntax', { id: '', reason }).text;
    }
    return text;
}

/** Every built-in text this module recognises, for the contract test against the pinned smtp-server. */
export const BUILTIN_TEXT_PATTERNS: readonly RegExp[] = Object.freeze([
    ACCEPTED_TEXT,
    ...SITUATIONS.map(([, pattern]) => pattern),
    ...TEXTS.map(([, pattern]) => pattern),
    ...HELLO_TEXTS.map(([pattern]) => pattern),
]);
