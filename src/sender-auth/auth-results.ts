/**
 * Text of the header fields the `mailauth` check adds: `Authentication-Results` (RFC 8601)
 * and `Received-SPF` (RFC 7208 section 9.1). mailauth's resinfo text is used for spf, dkim and
 * arc (with `header.d` added to dkim, RFC 8601 section 2.7.1); the dmarc resinfo is ours,
 * because the disposition is ours: `dmarc=<result> (p=… [sp=… np=… t=Y] dis=… [override=…])
 * policy.dmarc=<policy after t=> header.from=<author domain>`. `policy.dmarc` is the property
 * RFC 9989 section 9.1 registers (the evaluated policy of the domain); a local override is
 * recorded in the comment as `dis=NONE override=arc sealer=<d=> i=<n>`, as receivers commonly
 * write it (there is no registered property for an override).
 *
 * Values are returned unfolded, on one line; the field writer folds them. Pure string work.
 */
import type { ArcTrustOutput } from './arc-trust.ts';
import type { DmarcEvaluation } from './dmarc-evaluate.ts';
import { isTesting, type DispositionOutput } from './dmarc-policy.ts';

/** RFC 2045 token: what an RFC 8601 value may be without quotes. */
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

function value(v: string): string {
    return TOKEN.test(v) ? v : `"${v.replace(/[\\"]/g, '\\$&')}"`;
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
    if (d.headerFrom !== null) parts.push(`header.from=${value(d.headerFrom)}`);
    return parts.join(' ');
}

/** mailauth's dkim resinfo with `header.d` added when missing (lenient mode writes only header.i). */
export function withHeaderD(info: string, signingDomain: string | undefined): string {
    const text = unfold(info);
    if (!signingDomain || /\bheader\.d=/.test(text)) return text;
    return text.replace(
        /^(dkim=\S+(?:\s*\((?:[^()\\]|\\.)*\))?)/,
        (head) => `${head} header.d=${value(signingDomain.toLowerCase())}`,
    );
}

/** The whole Authentication-Results value: authserv-id, then one resinfo per method. */
export function joinAuthResults(authservId: string, resinfos: readonly string[]): string {
    const parts = resinfos.map(unfold).filter((p) => p !== '');
    return parts.length === 0 ? `${authservId}; none` : `${authservId}; ${parts.join('; ')}`;
}

/** The value of mailauth's ready-made `Received-SPF:` line. */
export function receivedSpfValue(header: string): string {
    return unfold(header.replace(/^Received-SPF:/i, ''));
}
