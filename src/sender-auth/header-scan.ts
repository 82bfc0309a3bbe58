/**
 * The two byte scans mailauth's message parser (lib/dkim/message-parser.js) makes over every
 * message it verifies, as linear searches with `indexOf` instead of a loop in JavaScript over each
 * byte: the end of the header section (RFC 5322 section 2.1: the first empty line) and the bare
 * <LF>s that are turned into <CRLF> (RFC 6376 section 3.4.4 hashes lines ended by <CRLF>).
 * mailauth's header scan kept the last bytes in an array it copied for every byte of the header
 * section: about 225 KB of garbage for a message with a 3 KB header section.
 *
 * Each function gives the same answer as mailauth's loop for any bytes, cut into chunks anywhere
 * (test/sender-auth/header-scan.test.ts compares them on random input); mailauth-internals.ts puts
 * them in place of the loops. They must not allocate per byte, and keep no state but what the
 * caller passes.
 */

const LF = 0x0a;
const CR = 0x0d;

/** What the header scan carries from one chunk to the next. */
export interface HeaderScanState {
    /** Bytes of the header section seen so far. */
    seen: number;
    /** The last byte seen and the one before it (undefined before any). */
    last1: number | undefined;
    last2: number | undefined;
}

export function newHeaderScan(): HeaderScanState {
    return { seen: 0, last1: undefined, last2: undefined };
}

/**
 * The index in `chunk` of the <LF> that ends the header section, or -1 when the section goes on
 * past this chunk. Ends it: an <LF> after <LF> or after <LF><CR>, or an <LF> (or <CR><LF>) as the
 * very first line of the message (an empty header section). Advances `state` by the bytes consumed
 * (up to and including that <LF>, or the whole chunk).
 */
export function headerEnd(chunk: Uint8Array, state: HeaderScanState): number {
    let at = chunk.indexOf(LF);
    while (at !== -1) {
        const b1 = at >= 1 ? chunk[at - 1] : state.last1;
        const b2 = at >= 2 ? chunk[at - 2] : at === 1 ? state.last1 : state.last2;
        const count = state.seen + at + 1;
        if (b1 === LF || (b1 === CR && b2 === LF) || count === 1 || (count === 2 && b1 === CR)) {
            state.seen = count;
            return at;
        }
        at = chunk.indexOf(LF, at + 1);
    }
    state.seen += chunk.length;
    if (chunk.length >= 2) {
        state.last2 = chunk[chunk.length - 2];
        state.last1 = chunk[chunk.length - 1];
    } else if (chunk.length === 1) {
        state.last2 = state.last1;
        state.last1 = chunk[0];
    }
    return -1;
}

/**
 * The positions of the bare <LF>s in `chunk` (an <LF> not right after <CR>; `before` is the byte
 * that came before the chunk, for an <LF> at its start). Empty for a message with <CRLF> line ends
 * only, the common case, without allocating anything else.
 */
export function bareLineFeeds(chunk: Uint8Array, before: number | undefined): number[] {
    const found: number[] = [];
    let at = chunk.indexOf(LF);
    while (at !== -1) {
        if ((at === 0 ? before : chunk[at - 1]) !== CR) found.push(at);
        at = chunk.indexOf(LF, at + 1);
    }
    return found;
}
