/**
 * Text of the header fields the `mailauth` check adds: `Authentication-Results` (RFC 8601)
 * and `Received-SPF` (RFC 7208 section 9.1). The dmarc resinfo is ours because the disposition
 * is ours: `dmarc=<result> (p=… [sp=… np=… t=Y] dis=… [override=…]) policy.dmarc=<policy after
 * t=> header.from=<author domain>`. `policy.dmarc` is the property RFC 9989 section 9.1 registers
 * (the evaluated policy of the domain); a local override is recorded in the comment as
 * `dis=NONE override=arc sealer=<d=> i=<n>`, as receivers commonly write it (there is no
 * registered property for an override).
 *
 * The dkim, spf and arc resinfos and the Received-SPF value are written here from mailauth's
 * parts, not taken as mailauth formats them: what reaches them is the client's (a MAIL FROM
 * local part may be a quoted string holding `;` and `dmarc=pass`), the sender domain's (an SPF
 * record's error text), a signer's (a DKIM selector) or a sealer's (the results an ARC set
 * claims), and a reader that splits the field on `;` or matches `dmarc=pass` anywhere would take
 * such text for a result. So a comment keeps only ASCII letters, digits and `. , : @ _ / + - [ ]`;
 * a domain is written as an LDH name in A-labels, or left out; an address whole only when its
 * local part is plain (letters, digits, `. _ + -`), else as its domain (RFC 8601 section 2.7.2
 * allows the domain alone); a DKIM tag only in the shape its syntax allows; an ARC pass says
 * only its instance, not what the sealer claims. What is written is ASCII, as readers of RFC
 * 8601 expect.
 *
 * Values are returned unfolded, on one line; the field writer folds them. Pure string work.
 */
import { domainToASCII } from 'node:url';
import type { ArcTrustOutput } from './arc-trust.ts';
import type { DmarcEvaluation } from './dmarc-evaluate.ts';
import { isTesting, type DispositionOutput } from './dmarc-policy.ts';

/** RFC 2045 token: what an RFC 8601 value may be without quotes. */
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

function value(v: string): string {
    return TOKEN.test(v) ? v : `"${v.replace(/[\\"]/g, '\\$&')}"`;
}

/** RFC 5322 section 3.2.3 dot-atom-text (ASCII). */
const DOT_ATOM = /^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(?:\.[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*$/;
/**
 * A local part written whole into our fields: a dot-atom of letters, digits, `_`, `+` and `-`
 * only. Other atext (`=`, `?`, `/`…) is valid, but `dmarc=pass@evil.example` would put
 * `dmarc=pass` into the field for a reader that looks for the text.
 */
const PLAIN_LOCAL = /^[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*$/;
/** An LDH host name (RFC 1123 section 2.1) in lower case: how our fields carry a domain. */
const LDH_DOMAIN = /^[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?)*\.?$/;
/** An address literal as a HELO name may be (RFC 5321 section 4.1.3). */
const ADDRESS_LITERAL = /^\[[A-Za-z0-9.:]+\]$/;

/**
 * A domain as our fields write it: an LDH name, U-labels as A-labels (RFC 5890; readers of RFC
 * 8601 take ASCII), or null when it is neither (`dmarc=pass.example`, `[dmarc=pass]`: left out).
 */
function asciiDomain(domain: string): string | null {
    // eslint-disable-next-line no-control-regex
    const ascii = /^[\x00-\x7f]*$/.test(domain) ? domain.toLowerCase() : domainToASCII(domain);
    return ascii.length <= 254 && LDH_DOMAIN.test(ascii) ? ascii : null;
}

/** A HELO name as our fields may carry it: an LDH domain or an address literal. */
function heloName(helo: string): string | null {
    return ADDRESS_LITERAL.test(helo) ? helo : asciiDomain(helo);
}
/** A comment's length at most (mailauth's own texts are under 150 characters). */
const MAX_COMMENT = 200;

/** Comment text that may hold a third party's words, reduced to what no reader can take for a result. */
function safeComment(text: string): string {
    return text
        .replace(/[^A-Za-z0-9 .,:@_/+\-[\]]/g, ' ')
        .replace(/ +/g, ' ')
        .trim()
        .slice(0, MAX_COMMENT)
        .trim();
}

/** An address as an RFC 8601 pvalue: whole when its local part is plain (PLAIN_LOCAL), else its domain. */
function mailbox(address: string): string | null {
    const at = address.lastIndexOf('@');
    const local = at < 0 ? '' : address.slice(0, at);
    const domain = asciiDomain(address.slice(at + 1));
    if (domain === null) return null;
    return PLAIN_LOCAL.test(local) ? `${local}@${domain}` : domain;
}

/** An RFC 8601 result keyword, whatever mailauth returned. */
function keyword(result: string): string {
    return result.replace(/[^A-Za-z0-9-]/g, '') || 'none';
}

/** What the spf resinfo and Received-SPF are written from (copied from mailauth's SPF result). */
export interface SpfParts {
    readonly result: string;
    readonly comment?: string;
    readonly envelopeFrom?: string;
    readonly clientIp?: string;
    readonly helo?: string;
}

/** The comment of an SPF result, with the envelope address as `mailbox` writes it. */
function spfComment(spf: SpfParts): string {
    let text = spf.comment ?? '';
    if (spf.envelopeFrom) text = text.split(spf.envelopeFrom).join(mailbox(spf.envelopeFrom) ?? '');
    return safeComment(text);
}

/** `spf=<result> (<comment>) smtp.mailfrom=<address> smtp.helo=<name>` (RFC 8601 section 2.7.2). */
export function spfResInfo(spf: SpfParts): string {
    const parts = [`spf=${keyword(spf.result)}`];
    const comment = spfComment(spf);
    if (comment !== '') parts.push(`(${comment})`);
    const from = spf.envelopeFrom ? mailbox(spf.envelopeFrom) : null;
    // bare: `[local-part "@"] domain-name` is a pvalue of its own (RFC 8601 section 2.2)
    if (from !== null) parts.push(`smtp.mailfrom=${from}`);
    const helo = spf.helo ? heloName(spf.helo) : null;
    if (helo !== null) parts.push(`smtp.helo=${value(helo)}`);
    return parts.join(' ');
}

/** The Received-SPF value (RFC 7208 section 9.1): `<result> (<comment>) client-ip=…; envelope-from=…; helo=…;`. */
export function receivedSpfValue(spf: SpfParts): string {
    const pairs: string[] = [];
    if (spf.clientIp && /^[0-9A-Fa-f.:]+$/.test(spf.clientIp)) pairs.push(`client-ip=${spf.clientIp};`);
    // the address only when mailbox() writes it whole: an address is not a dot-atom, so it is quoted
    const from = spf.envelopeFrom ? mailbox(spf.envelopeFrom) : null;
    if (from?.includes('@')) pairs.push(`envelope-from="${from}";`);
    const helo = spf.helo ? heloName(spf.helo) : null;
    if (helo !== null) pairs.push(`helo=${DOT_ATOM.test(helo) ? helo : `"${helo}"`};`);
    const comment = spfComment(spf);
    return [keyword(spf.result), ...(comment !== '' ? [`(${comment})`] : []), ...pairs].join(' ');
}

/** What the arc resinfo is written from (copied from mailauth's ARC result). */
export interface ArcParts {
    readonly result: string;
    readonly comment?: string;
    readonly instance?: number;
    readonly remoteIp?: string;
}

/**
 * `arc=<result> (<comment>) [smtp.remote-ip=…]` (RFC 8617 section 6): a pass names its instance
 * only; the results the sealer claims are in its own ARC-Authentication-Results, not in ours.
 */
export function arcResInfo(arc: ArcParts): string {
    const result = keyword(arc.result);
    const comment =
        result === 'pass' ? (arc.instance !== undefined ? `i=${arc.instance}` : '') : safeComment(arc.comment ?? '');
    const parts = [`arc=${result}`];
    if (comment !== '') parts.push(`(${comment})`);
    if (arc.remoteIp && /^[0-9A-Fa-f.:]+$/.test(arc.remoteIp)) parts.push(`smtp.remote-ip=${arc.remoteIp}`);
    return parts.join(' ');
}

function unfold(text: string): string {
    return text
        .replace(/\r?\n[ \t]*/g, ' ')
        .replace(/[ \t]+/g, ' ')
        .trim();
}

/** The dmarc resinfo, reflecting our disposition. */
export function dmarcResInfo(d: DmarcEvaluation, decision: DispositionOutput, trust: ArcTrustOutput): string {
    const words: string[] = [];
    const rec = d.record;
    if (rec) {
        words.push(`p=${rec.p.toUpperCase()}`);
        if (rec.sp !== undefined) words.push(`sp=${rec.sp.toUpperCase()}`);
        if (rec.np !== undefined) words.push(`np=${rec.np.toUpperCase()}`);
        if (isTesting(rec)) words.push(rec.t === 'y' ? 't=Y' : 'pct=0');
    }
    if (d.result === 'permerror' && d.skipReason) words.push(d.skipReason);
    words.push(`dis=${decision.disposition.toUpperCase()}`);
    if (decision.override !== null) words.push(`override=${decision.override}`);
    if (decision.override === 'arc' && trust.vouching) {
        words.push(`sealer=${trust.vouching.sealer}`, `i=${trust.vouching.instance}`);
    }
    const parts = [`dmarc=${d.result}`, `(${words.join(' ')})`];
    if ((d.result === 'pass' || d.result === 'fail') && decision.effective !== null) {
        parts.push(`policy.dmarc=${decision.effective}`);
    }
    // the author domain is the sender's text: `dmarc=pass.example` is a valid dot-atom
    const author = d.headerFrom === null ? null : asciiDomain(d.headerFrom);
    if (author !== null) parts.push(`header.from=${author}`);
    return parts.join(' ');
}

/** What the dkim resinfo is written from (copied from mailauth's result for one signature). */
export interface DkimParts {
    readonly result: string;
    readonly comment?: string;
    /** Body bytes after the signed length (l=). */
    readonly underSized?: number;
    readonly d?: string;
    readonly i?: string;
    readonly s?: string;
    readonly a?: string;
    readonly b?: string;
}

const SELECTOR = /^[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*$/;
const ALGORITHM = /^[A-Za-z0-9-]+$/;
const SIGNATURE_START = /^[A-Za-z0-9+/]{1,8}$/;

/**
 * `dkim=<result> (<comment>) header.d=… header.i=… header.s=… header.a=… header.b=…` (RFC 8601
 * section 2.7.1; header.b as RFC 6008 section 4 has it, the first 8 characters). The tags are
 * the signer's: each is written only in the shape its syntax allows (RFC 6376 section 3.5), so
 * a selector `x dmarc=pass` is left out rather than quoted into our field.
 */
export function dkimResInfo(dkim: DkimParts): string {
    const parts = [`dkim=${keyword(dkim.result)}`];
    const comments = [
        ...(dkim.underSized ? [`undersized signature: ${dkim.underSized} bytes unsigned`] : []),
        ...(dkim.comment ? [dkim.comment] : []),
    ];
    const comment = safeComment(comments.join(', '));
    if (comment !== '') parts.push(`(${comment})`);
    const d = dkim.d ? asciiDomain(dkim.d) : null;
    if (d !== null) parts.push(`header.d=${d}`);
    const i = dkim.i?.startsWith('@') ? dkim.i.slice(1) : dkim.i;
    const identity = i ? mailbox(i) : null;
    if (identity !== null) parts.push(`header.i=${identity.includes('@') ? identity : `@${identity}`}`);
    if (dkim.s && SELECTOR.test(dkim.s)) parts.push(`header.s=${dkim.s}`);
    if (dkim.a && ALGORITHM.test(dkim.a)) parts.push(`header.a=${dkim.a}`);
    if (dkim.b && SIGNATURE_START.test(dkim.b)) parts.push(`header.b=${dkim.b}`);
    return parts.join(' ');
}

/**
 * A resinfo written above (dkimResInfo, arcResInfo) with another result and comment: `head` is
 * the new `method=result (comment)`, the properties after it are kept. Their comments hold no
 * parenthesis (safeComment), so the old one ends at the first `)`.
 */
export function restated(resinfo: string, head: string): string {
    return head + resinfo.replace(/^[a-z]+=[A-Za-z0-9-]*(?: \([^()]*\))?/, '');
}

/** The whole Authentication-Results value: authserv-id, then one resinfo per method. */
export function joinAuthResults(authservId: string, resinfos: readonly string[]): string {
    const parts = resinfos.map(unfold).filter((p) => p !== '');
    return parts.length === 0 ? `${authservId}; none` : `${authservId}; ${parts.join('; ')}`;
}
