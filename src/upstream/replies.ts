/**
 * Reads what an upstream SMTP server says: splits its byte stream into replies (RFC 5321
 * section 4.2.1: a multi-line reply repeats its code, `-` after the code until the last line),
 * splits the enhanced status code (RFC 3463, RFC 2034 section 3) off the text, and reads the
 * keywords of an EHLO reply (RFC 5321 section 4.1.1.1).
 *
 * Bounded: a reply line longer than MAX_REPLY_LINE or a reply of more than MAX_REPLY_LINES
 * lines is a protocol failure, as is any line that is not a reply; the replies read in full
 * before it are still handed out. It must not write to the socket or keep state beyond one
 * unfinished reply.
 */
import { UpstreamError, type UpstreamReply } from './types.ts';

/** A reply as read from the wire: the code and the text of each line. */
export interface RawReply {
    readonly code: number;
    readonly lines: readonly string[];
}

/** Longest reply line we accept (RFC 5321 section 4.5.3.1.5 allows 512 octets; be generous). */
const MAX_REPLY_LINE = 4096;
/** Most lines in one multi-line reply. */
const MAX_REPLY_LINES = 256;
const REPLY_LINE = /^([2-5]\d\d)(?:([ -])([\s\S]*))?$/;
const ENHANCED = /^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)/;

/** Splits the byte stream from the upstream into replies (RFC 5321 section 4.2.1). */
export class ReplyParser {
    private buf: Buffer = Buffer.alloc(0);
    private lines: string[] = [];
    private code = 0;

    /** Bytes or lines received that are not yet a complete reply. */
    get pending(): boolean {
        return this.buf.length > 0 || this.lines.length > 0;
    }

    /**
     * Adds to `out` (and returns it) the replies completed by `chunk`. Throws
     * UpstreamError('protocol') on garbage, with the replies completed before the bad line
     * already in `out`: a reply read in full stays read, whatever follows it in the same read
     * (a 250 to the end of data is the upstream's word that it took the message). After a
     * throw the parser is fed no more.
     */
    feed(chunk: Buffer, out: RawReply[] = []): RawReply[] {
        const buf = this.buf.length > 0 ? Buffer.concat([this.buf, chunk]) : chunk;
        let start = 0;
        for (;;) {
            const nl = buf.indexOf(0x0a, start);
            if (nl < 0) break;
            const end = nl > start && buf[nl - 1] === 0x0d ? nl - 1 : nl;
            if (end - start > MAX_REPLY_LINE) throw new UpstreamError('protocol', 'upstream reply line too long');
            const reply = this.line(buf.toString('utf8', start, end));
            if (reply) out.push(reply);
            start = nl + 1;
        }
        this.buf = buf.subarray(start);
        // an unfinished line may hold the CR of a line of the longest length
        if (this.buf.length > MAX_REPLY_LINE + 1) throw new UpstreamError('protocol', 'upstream reply line too long');
        return out;
    }

    private line(text: string): RawReply | null {
        const m = REPLY_LINE.exec(text);
        if (!m)
            throw new UpstreamError('protocol', `malformed upstream reply line ${JSON.stringify(text.slice(0, 80))}`);
        const code = Number(m[1]);
        if (this.lines.length > 0 && code !== this.code) {
            throw new UpstreamError('protocol', 'upstream multi-line reply mixes reply codes');
        }
        this.code = code;
        this.lines.push(m[3] ?? '');
        if (this.lines.length > MAX_REPLY_LINES)
            throw new UpstreamError('protocol', 'upstream reply has too many lines');
        if (m[2] === '-') return null;
        const reply = { code, lines: this.lines };
        this.lines = [];
        return reply;
    }
}

/** Turns a raw reply into the public form: enhanced status code (RFC 3463) split off the text. */
export function toReply(raw: RawReply): UpstreamReply {
    const first = ENHANCED.exec(raw.lines[0] ?? '');
    // RFC 2034 section 3: the class of the enhanced code matches the first digit of the reply code.
    const enhanced = first && first[1] === String(raw.code)[0] ? `${first[1]}.${first[2]}.${first[3]}` : null;
    const texts = raw.lines.map((l) => {
        if (enhanced === null) return l;
        const m = ENHANCED.exec(l);
        return m && `${m[1]}.${m[2]}.${m[3]}` === enhanced ? l.slice(m[0].length) : l;
    });
    return { code: raw.code, enhanced, text: texts.join(' ').trim() };
}

export function describe(reply: UpstreamReply): string {
    return `${reply.code}${reply.enhanced ? ' ' + reply.enhanced : ''} ${reply.text}`.trim();
}

/** EHLO keywords (upper case) with their parameters (RFC 5321 section 4.1.1.1). */
export type Capabilities = ReadonlyMap<string, readonly string[]>;

export function parseCapabilities(lines: readonly string[]): Capabilities {
    const caps = new Map<string, string[]>();
    for (const l of lines.slice(1)) {
        const [keyword, ...params] = l.trim().split(/\s+/);
        if (keyword) caps.set(keyword.toUpperCase(), params);
    }
    return caps;
}
