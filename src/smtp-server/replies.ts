/**
 * The enhanced status code (RFC 3463) and the text of every single-line reply smtp-server
 * builds itself (command syntax, sequence errors, timeouts, client limits, AUTH before TLS,
 * and its `250` to MAIL, RCPT, RSET, NOOP, `221` to QUIT, `235` to AUTH), so that every reply
 * carries exactly one enhanced code, as ENHANCEDSTATUSCODES promises (RFC 2034 section 4).
 * Where the situation is ours to explain, the text comes from the reply table. Replies we built
 * ourselves already start with an enhanced code and pass through untouched, as do `3xx`
 * replies (RFC 3463 has no class 3). The greeting and the replies to HELO/EHLO carry none
 * (RFC 2034 section 4): rewriteHelloReply only gives smtp-server's refusals of a HELO/EHLO
 * argument the table's text.
 * Pure: text in, text out; nothing here decides policy or touches smtp-server itself.
 */
import { replyFor, type Situation } from '../reply.ts';

/** Built-in texts that stand for a situation of our reply table. */
const SITUATIONS: ReadonlyArray<[number, RegExp, Situation]> = [
    [530, /^Error: authentication Required/i, 'auth-required'],
    [538, /^Error: Must issue a STARTTLS command first/, 'auth-tls-required'],
    [421, /^Server shutting down/, 'shutting-down'],
    [452, /^Error: too many recipients/, 'too-many-recipients'],
    [421, /Too many connected clients/, 'too-many-connections'],
];

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

/**
 * Rewrites one single-line reply text for `code` (`context` is smtp-server's hint, such as
 * `MAIL_FROM_OK`); returns the text to send, starting with its enhanced code.
 */
export function rewriteBuiltinReply(code: number, text: string, context?: string): string {
    if ((code >= 300 && code < 400) || HAS_ENHANCED.test(text)) return text;
    for (const [c, re, situation] of SITUATIONS) {
        if (c === code && re.test(text)) {
            const r = replyFor(situation, { id: '' });
            return `${r.enhanced} ${r.text}`;
        }
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
    ...SITUATIONS.map(([, pattern]) => pattern),
    ...TEXTS.map(([, pattern]) => pattern),
    ...HELLO_TEXTS.map(([pattern]) => pattern),
]);
