/**
 * Gives smtp-server's own replies (the ones it sends without asking us: command syntax,
 * sequence errors, timeouts, client limits, AUTH before TLS) an enhanced status code
 * (RFC 3463) and, where the situation is ours to explain, the text of our reply table.
 * It also keeps AUTH out of the EHLO list of a submission session that has not started
 * TLS yet (RFC 8314 section 3; RFC 4954 section 4). Replies we built ourselves already
 * start with an enhanced code and pass through untouched. Nothing here decides policy.
 */
import { replyFor, type Situation } from './reply.ts';

/** Built-in texts that stand for a situation of our reply table. */
const SITUATIONS: ReadonlyArray<[number, RegExp, Situation]> = [
    [530, /^Error: authentication Required/i, 'auth-required'],
    [538, /^Error: Must issue a STARTTLS command first/, 'auth-tls-required'],
    [421, /^Server shutting down/, 'shutting-down'],
    [452, /^Error: too many recipients/, 'too-many-recipients'],
];

/** Other built-in texts rewritten into plain sentences, with their enhanced codes. */
const TEXTS: ReadonlyArray<[number, RegExp, string, string]> = [
    [
        421,
        /Too many connected clients/,
        '4.7.0',
        'Too many connections to this server right now; please try again in a moment',
    ],
    [421, /^Timeout - closing connection/, '4.4.2', 'Idle too long; closing the connection'],
    [421, /^Error: too many unrecognized commands/, '4.7.0', 'Too many unrecognized commands; closing the connection'],
    [
        421,
        /^Error: too many unauthenticated commands/,
        '4.7.0',
        'Too many commands without logging in; closing the connection',
    ],
    [421, /^HTTP requests not allowed/, '4.7.0', 'This is an SMTP server, not a web server'],
];

/** Enhanced codes for the remaining built-in replies, by reply code (RFC 3463, RFC 5321 section 4.2.3). */
const DEFAULT_ENHANCED: Readonly<Record<number, string>> = {
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

const HAS_ENHANCED = /^[245]\.\d{1,3}\.\d{1,3} /;

/** Rewrites one single-line reply text for `code`; returns the text to send. */
export function rewriteBuiltinReply(code: number, text: string): string {
    if (code < 400 || HAS_ENHANCED.test(text)) return text;
    for (const [c, re, situation] of SITUATIONS) {
        if (c === code && re.test(text)) {
            const r = replyFor(situation, { id: '' });
            return `${r.enhanced} ${r.text}`;
        }
    }
    for (const [c, re, enhanced, plain] of TEXTS) {
        if (c === code && re.test(text)) return `${enhanced} ${plain}`;
    }
    const enhanced = DEFAULT_ENHANCED[code] ?? `${Math.floor(code / 100)}.0.0`;
    return `${enhanced} ${text.replace(/^Error: /, '')}`;
}

interface PatchableConnection {
    secure: boolean;
    send(code: number, data?: string | string[], context?: unknown): void;
}

/** Wraps one smtp-server connection's `send`; called once per connection, before its greeting. */
export function patchConnectionReplies(connection: PatchableConnection, opts: { submission: boolean }): void {
    const send = connection.send.bind(connection);
    connection.send = (code: number, data?: string | string[], context?: unknown): void => {
        if (Array.isArray(data)) {
            // EHLO: on submission, AUTH is offered only once the session is encrypted
            const lines = opts.submission && !connection.secure ? data.filter((l) => !/^AUTH\b/i.test(l)) : data;
            send(code, lines, context);
            return;
        }
        send(code, typeof data === 'string' ? rewriteBuiltinReply(code, data) : data, context);
    };
}
