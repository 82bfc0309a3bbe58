/**
 * Encodes a message for the SMTP DATA phase: canonical CRLF line endings, a dot added
 * before every line that starts with a dot (RFC 5321 section 4.5.2), and the
 * `<CRLF>.<CRLF>` terminator appended by `end()`.
 * Any bare CR or bare LF still present is written as CRLF, so whatever reaches the
 * upstream can never contain a line ending other than CRLF (defence against SMTP
 * smuggling, RFC 5321 section 2.3.8). Holds at most one pending byte between chunks.
 */

import { CopyOnChange, crlfLines } from './copy-on-change.ts';

const CR = 0x0d;
const LF = 0x0a;
const DOT = 0x2e;

export class DotStuffer {
    /** True when the next byte starts a line. */
    private atLineStart = true;
    /** True when the previous chunk ended in CR whose LF may come next. */
    private pendingCr = false;
    /** Bytes written so far (after encoding). */
    bytes = 0;

    /**
     * Encodes one chunk; the result can be written to the socket as is. A chunk that needs no
     * change (CRLF lines, none starting with a dot) comes back as a view of itself, uncopied.
     */
    push(chunk: Uint8Array): Buffer {
        const quick = this.unchanged(chunk);
        if (quick) return quick;
        const out = new CopyOnChange(chunk, chunk.length * 2 + 3);
        for (let i = 0; i < chunk.length; i++) {
            const b = chunk[i]!;
            if (this.pendingCr) {
                this.pendingCr = false;
                out.put(CR);
                out.put(LF);
                this.atLineStart = true;
                if (b === LF) continue; // CRLF: the LF is already written
            }
            if (b === CR) {
                this.pendingCr = true;
                continue;
            }
            if (b === LF) {
                out.put(CR);
                out.put(LF);
                this.atLineStart = true;
                continue;
            }
            if (this.atLineStart && b === DOT) out.put(DOT);
            out.put(b);
            this.atLineStart = false;
        }
        this.bytes += out.length;
        return out.result();
    }

    /**
     * The quick path of push: the chunk as it is when it needs no change (CRLF line endings
     * only, no line starting with a dot, no CR pending from the chunk before), else null.
     */
    private unchanged(chunk: Uint8Array): Buffer | null {
        if (this.pendingCr || chunk.length === 0) return null;
        const buf = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length);
        const lfs = crlfLines(buf);
        if (lfs === null || (this.atLineStart && buf[0] === DOT)) return null;
        for (const i of lfs) if (buf[i + 1] === DOT) return null;
        this.atLineStart = buf[buf.length - 1] === LF;
        this.bytes += buf.length;
        return buf;
    }

    /** Finishes the message: closes the last line and appends the terminator. */
    end(): Buffer {
        let tail = '';
        if (this.pendingCr) {
            this.pendingCr = false;
            tail = '\r\n';
        } else if (!this.atLineStart) {
            tail = '\r\n';
        }
        const out = Buffer.from(tail + '.\r\n', 'latin1');
        this.bytes += out.length;
        return out;
    }
}
