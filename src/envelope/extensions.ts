/**
 * The SMTP service extensions mailwarden offers in its EHLO reply, and the check of the
 * MAIL and RCPT parameters a client sends against that offer.
 *
 * Only what can be honoured end to end is offered: SIZE as the smaller of the listener's
 * limit and the upstream's less ADDED_FIELDS_ROOM, the room for the header fields added on the
 * way (RFC 1870); 8BITMIME (RFC 6152), SMTPUTF8 (RFC 6531) and DSN (RFC 3461) when the upstream
 * offers them; REQUIRETLS (RFC 8689) only on an encrypted session and when the upstream offers
 * it over TLS; AUTH (RFC 4954) on submission listeners.
 * A client that says HELO gets no extension at all (RFC 5321 section 4.1.1.1).
 * A parameter of an extension not offered in this session is refused with 555 (RFC 5321
 * section 4.1.1.11), a malformed value with 501: nothing a client asks for is dropped.
 * Values go upstream as written, but for the characters of ENVID and ORCPT an upstream's command
 * reader could take for syntax, written as the escapes they decode the same as (forUpstream); an
 * ORCPT whose escaped form exceeds RFC 3461's 500 characters is refused, as the upstream would.
 * Pure functions; the reply texts come from reply.ts.
 */
import type { ListenerConfig } from '../config/types.ts';
import type { Situation } from '../reply.ts';
import type { MailParams, RcptParams, UpstreamCapabilities } from '../upstream/types.ts';
import type { EnvelopeParam } from './command.ts';

/** What one EHLO (or HELO) reply offered to the client. */
export interface EhloOffer {
    /** False after HELO: no service extension was offered. */
    readonly extended: boolean;
    /** The largest message accepted: the SIZE announced after EHLO, enforced after HELO too. */
    readonly sizeLimit: number;
    readonly eightBitMime: boolean;
    readonly smtputf8: boolean;
    readonly dsn: boolean;
    readonly requireTls: boolean;
    /** The AUTH extension (and so the AUTH= MAIL parameter, RFC 4954 section 5). */
    readonly auth: boolean;
}

/**
 * What the upstream counts against its SIZE (RFC 1870) beyond the client's message: the fields
 * mailwarden prepends and the upstream's own trace field. At the default per-message limits
 * (authentication.dkim.maxSignatures: 5) they stay under about 23 KB:
 * - Received, about 1.3 KB at most: HELO and reverse names and the host name of at most 253
 *   octets each, the recipient's path of at most 256 (envelope/command.ts), the TLS cipher;
 * - Authentication-Results, about 15 KB at most: the authserv-id (the host name), and for each
 *   DKIM signature verified a result whose properties mailauth cuts at 900 octets each
 *   (header.d, header.i, header.s, header.a, header.b: at most about 2.8 KB), then spf, arc and
 *   dmarc, each with names of at most 253 octets or a path of at most 256;
 * - Received-SPF, about 1.2 KB at most (the same names and path);
 * - X-Mailwarden-Verdict, X-Spam-Flag, X-Mailwarden-Quarantine and the fields rules add (each
 *   value at most MAX_HEADER_VALUE, 400 octets): a few KB with the shipped rules;
 * - on submission, a DKIM-Signature of about 1 KB (RSA 4096's b= is 684 octets, h= names the
 *   usual fields once each);
 * - the upstream's own Received (Postfix: about 1 KB, with the client's names from XCLIENT),
 *   which Postfix counts against its message_size_limit as well.
 * 32 KiB covers that with room to spare and costs 0.3% of Postfix's default limit (10,240,000).
 * Not covered: Postfix also counts each recipient's envelope records against its limit, as it
 * does for any client; a message whose fields exceed the room (the DKIM results of a raised
 * maxSignatures, a rule set adding many fields, a submitted message with hundreds of fields
 * that h= names) may still get the upstream's 552.
 */
export const ADDED_FIELDS_ROOM = 32 * 1024;

/**
 * The largest message a client may send: the listener's limit, and when the upstream announced
 * its SIZE, that SIZE less ADDED_FIELDS_ROOM, so that a message within what we offer stays
 * within the upstream's limit with our fields on top. An upstream limit not much larger than
 * the room keeps half of itself for the message, so the result is never below half the
 * upstream's SIZE (never 0, which would announce no limit at all, RFC 1870 section 4).
 */
export function messageSizeLimit(maxMessageSize: number, upstreamSize: number | null): number {
    if (upstreamSize === null) return maxMessageSize;
    const room = Math.min(ADDED_FIELDS_ROOM, Math.floor(upstreamSize / 2));
    return Math.min(maxMessageSize, upstreamSize - room);
}

/**
 * The offer for a session. `upstream` null: nothing learnt yet, so only what every usual
 * upstream (Postfix) takes is offered, and nothing whose loss would go unnoticed (DSN, REQUIRETLS).
 */
export function computeOffer(
    listener: ListenerConfig,
    upstream: UpstreamCapabilities | null,
    session: { readonly secure: boolean; readonly extended: boolean },
): EhloOffer {
    // nothing learnt yet (the first session after a start, an upstream down): its limit is taken
    // to be the listener's, as the documented set-up makes them, and the room kept all the same
    const sizeLimit = messageSizeLimit(
        listener.maxMessageSize,
        upstream === null ? listener.maxMessageSize : upstream.size,
    );
    const ext = session.extended;
    return {
        extended: ext,
        sizeLimit,
        eightBitMime: ext && (upstream?.eightBitMime ?? true),
        smtputf8: ext && (upstream?.smtputf8 ?? true),
        dsn: ext && (upstream?.dsn ?? false),
        requireTls: ext && session.secure && (upstream?.requireTls ?? false),
        auth: ext && listener.mode === 'submission',
    };
}

/** Why a command's parameters are refused: the situation of the reply table and its detail. */
export interface ParamRefusal {
    readonly situation: Extract<Situation, 'param-not-offered' | 'param-invalid' | 'message-too-big'>;
    readonly keyword: string;
    /** For `param-invalid`: what is wrong, in a few words. */
    readonly why?: string;
}

type Checked<T> = { readonly ok: T } | { readonly refused: ParamRefusal };

const notOffered = (keyword: string): { refused: ParamRefusal } => ({
    refused: { situation: 'param-not-offered', keyword },
});
const invalid = (keyword: string, why: string): { refused: ParamRefusal } => ({
    refused: { situation: 'param-invalid', keyword, why },
});

/** xtext (RFC 3461 section 4): `!`..`~` except `+` and `=`, and `+XX` hex escapes. */
const XTEXT = /^(?:[!-*,-<>-~]|\+[0-9A-Fa-f]{2})*$/;
/** `addr-type ";" xtext` (RFC 3461 section 4.2), addr-type an atom. */
const ORCPT = /^([A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+);(.+)$/;
/** The longest ORCPT value taken, as written and as sent upstream with its escapes (RFC 3461 section 4.2). */
const ORCPT_MAX = 500;

/**
 * What an upstream's command reader could take for more than a character of the value: an angle
 * bracket for the start or end of a path (upstream/common.ts refuses one in a parameter), a `"`
 * for the start of a quoted string and a `\` for an escape, either of which joins the parameters
 * after it to this one (Postfix's smtpd_token.c reads MAIL and RCPT lines so).
 */
const READ_AS_SYNTAX = /[<>"\\]/g;
/** The same in a `utf-8` address (RFC 6533 section 3), where `\` starts an `\x{HEX}` escape. */
const READ_AS_SYNTAX_UTF8 = /[<>"]|\\(?!x\{[0-9A-Fa-f]+\})/g;

/** An xtext character written as the `+XX` it decodes the same as (RFC 3461 section 4). */
const asXtextHex = (c: string): string => `+${c.charCodeAt(0).toString(16).toUpperCase()}`;
/** A character of a `utf-8` address written as its `\x{XX}` (RFC 6533 section 3). */
const asUtf8Hex = (c: string): string => `\\x{${c.charCodeAt(0).toString(16).toUpperCase()}}`;

/**
 * An xtext value (ENVID, ORCPT) as it goes upstream: `<`, `>`, `"` and `\` as the `+3C`, `+3E`,
 * `+22` and `+5C` they decode the same as (RFC 3461 section 4), so that the value is read as one
 * parameter, whatever follows it on the line. `utf8Address`: the ORCPT of addr-type `utf-8`, whose
 * escape is `\x{XX}` (RFC 6533 section 3; Postfix decodes no `+XX` there), an escape already in
 * it kept.
 */
function forUpstream(value: string, utf8Address = false): string {
    return utf8Address ? value.replace(READ_AS_SYNTAX_UTF8, asUtf8Hex) : value.replace(READ_AS_SYNTAX, asXtextHex);
}

function xtextLength(value: string): number {
    return value.replace(/\+[0-9A-Fa-f]{2}/g, 'x').length;
}

/** Checks MAIL FROM parameters against the offer; returns what to pass upstream. */
export function checkMailParams(params: readonly EnvelopeParam[], offer: EhloOffer): Checked<MailParams> {
    const out: {
        size?: number;
        body?: '7BIT' | '8BITMIME';
        smtputf8?: boolean;
        ret?: 'FULL' | 'HDRS';
        envid?: string;
        requireTls?: boolean;
    } = {};
    for (const p of params) {
        const { keyword, value } = p;
        switch (keyword) {
            case 'SIZE': {
                // RFC 1870 section 6: size-value ::= 1*20DIGIT
                if (!offer.extended) return notOffered(keyword);
                if (value === null || !/^\d{1,20}$/.test(value)) return invalid(keyword, 'must be a number of bytes');
                const size = Number(value);
                if (size > offer.sizeLimit) return { refused: { situation: 'message-too-big', keyword } };
                out.size = size;
                break;
            }
            case 'BODY': {
                if (!offer.eightBitMime) return notOffered(keyword);
                const body = value?.toUpperCase();
                if (body !== '7BIT' && body !== '8BITMIME') return invalid(keyword, 'must be 7BIT or 8BITMIME');
                out.body = body;
                break;
            }
            case 'SMTPUTF8':
                if (!offer.smtputf8) return notOffered(keyword);
                if (value !== null) return invalid(keyword, 'takes no value');
                out.smtputf8 = true;
                break;
            case 'REQUIRETLS':
                if (!offer.requireTls) return notOffered(keyword);
                if (value !== null) return invalid(keyword, 'takes no value');
                out.requireTls = true;
                break;
            case 'RET': {
                if (!offer.dsn) return notOffered(keyword);
                const ret = value?.toUpperCase();
                if (ret !== 'FULL' && ret !== 'HDRS') return invalid(keyword, 'must be FULL or HDRS');
                out.ret = ret;
                break;
            }
            case 'ENVID':
                if (!offer.dsn) return notOffered(keyword);
                // RFC 3461 section 4.4: xtext, at most 100 characters once decoded
                if (value === null || !XTEXT.test(value)) return invalid(keyword, 'must be xtext (RFC 3461)');
                if (xtextLength(value) > 100) return invalid(keyword, 'is longer than 100 characters');
                out.envid = forUpstream(value);
                break;
            case 'AUTH':
                // RFC 4954 section 5: AUTH=<> or an xtext mailbox. The login itself goes upstream
                // with XCLIENT LOGIN, so the parameter is checked and not repeated there.
                if (!offer.auth) return notOffered(keyword);
                if (value === null || !(value === '<>' || XTEXT.test(value))) {
                    return invalid(keyword, 'must be <> or an xtext address (RFC 4954)');
                }
                break;
            default:
                return notOffered(keyword);
        }
    }
    return { ok: out };
}

const NOTIFY_VALUES = new Set(['SUCCESS', 'FAILURE', 'DELAY']);

/** Checks RCPT TO parameters against the offer; `smtputf8`: the transaction declared SMTPUTF8. */
export function checkRcptParams(
    params: readonly EnvelopeParam[],
    offer: EhloOffer,
    smtputf8: boolean,
): Checked<RcptParams> {
    const out: { notify?: string; orcpt?: string } = {};
    for (const p of params) {
        const { keyword, value } = p;
        switch (keyword) {
            case 'NOTIFY': {
                // RFC 3461 section 4.1: NEVER, or a list of SUCCESS, FAILURE, DELAY
                if (!offer.dsn) return notOffered(keyword);
                const list = (value ?? '').toUpperCase().split(',');
                const ok =
                    value !== null &&
                    ((list.length === 1 && list[0] === 'NEVER') ||
                        (list.every((v) => NOTIFY_VALUES.has(v)) && new Set(list).size === list.length));
                if (!ok) return invalid(keyword, 'must be NEVER or a list of SUCCESS, FAILURE, DELAY');
                out.notify = list.join(',');
                break;
            }
            case 'ORCPT': {
                // RFC 3461 section 4.2: addr-type ";" xtext; RFC 6533 section 3 allows UTF-8 after SMTPUTF8
                if (!offer.dsn) return notOffered(keyword);
                const m = value === null ? null : ORCPT.exec(value);
                const text = m?.[2] ?? '';
                const xtextOk = XTEXT.test(text) || (smtputf8 && p.nonAscii && !/\+(?![0-9A-Fa-f]{2})/.test(text));
                if (!m || !xtextOk) return invalid(keyword, 'must be addr-type;xtext (RFC 3461)');
                // RFC 3461 section 4.2: the entire parameter may be up to 500 characters, as it is
                // sent: the escapes written for the upstream count (a `\` is 5 or 6 characters)
                if (m[0].length > ORCPT_MAX) return invalid(keyword, `is longer than ${ORCPT_MAX} characters`);
                const type = m[1] ?? '';
                const sent = `${type};${forUpstream(text, type.toLowerCase() === 'utf-8')}`;
                if (sent.length > ORCPT_MAX) {
                    return invalid(
                        keyword,
                        `is longer than ${ORCPT_MAX} characters with its quotes, backslashes and angle brackets escaped`,
                    );
                }
                out.orcpt = sent;
                break;
            }
            default:
                return notOffered(keyword);
        }
    }
    return { ok: out };
}
