/**
 * Feeds mailauth the verification copy of a message: the header section chosen by
 * verification-copy.ts, then the body as received, re-cut so that the work per message stays
 * linear and the event loop stays free for other clients.
 *
 * - The header section is read up to its end (the first empty line, RFC 5322 section 2.1),
 *   at most MAX_HEADER_READ bytes; a longer one fails the read (the session refuses far less).
 * - The body is passed on in pieces that end at a line break, about BODY_PIECE bytes each.
 *   mailauth's relaxed body canonicalization copies and rescans a partial line with every new
 *   piece, which is quadratic in the length of a line split across pieces; whole lines keep it
 *   linear. A line longer than MAX_BODY_LINE (RFC 5322 section 2.1.1 allows 998 characters)
 *   ends what is verified: the body is cut before it and the cut is reported (`cut`). mailauth
 *   then hashes only the bytes before the cut, and a signature over a body that goes on after
 *   them still matches: whoever reads its results must not take a body hash that reached the
 *   cut as proof (mailauth.ts does not).
 * - mailauth's relaxed canonicalization costs about a microsecond for every line it has to
 *   rewrite (trailing whitespace, a TAB, two spaces in a row), for every relaxed body hash:
 *   tens of seconds for 50 MB of such lines. The lines it will rewrite are counted here (a
 *   regex scan, cheap on clean text); once lines times relaxed body hashes would pass
 *   MAX_RELAXED_REWRITES, the verified body is cut there too.
 * - Once 10 ms of hashing went by it waits for the event loop (setImmediate), so that hashing a
 *   large message never holds up other connections for much longer than one piece takes.
 * - When nothing hashes the body (no signature is verified), the body is not read at all.
 * - When the copy is destroyed (the check ended), the message stream is destroyed with it.
 *
 * It never changes the message that is forwarded and never decides anything.
 */
import { Readable } from 'node:stream';
import { setImmediate as nextTurn } from 'node:timers/promises';

/** Header section bytes read at most (the session refuses header sections over 1 MiB). */
export const MAX_HEADER_READ = 4 * 1024 * 1024;
/**
 * Body bytes passed to mailauth at once, about (pieces end at a line break). mailauth's relaxed
 * canonicalization spends a microsecond or two per line it rewrites, per body hash: a piece this
 * size of short whitespace-damaged lines keeps the event loop busy for tens of milliseconds at most.
 */
export const BODY_PIECE = 16 * 1024;
/** Hashing work after which the feed waits for the event loop once. */
export const YIELD_AFTER_MS = 10;
/** A body line longer than this ends the verified body. */
export const MAX_BODY_LINE = 1024 * 1024;
/** Line rewrites (lines times relaxed body hashes) allowed per message, a second or two of CPU. */
export const MAX_RELAXED_REWRITES = 1_000_000;

const CRLF = Buffer.from('\r\n');
const END_OF_HEADER = Buffer.from('\r\n\r\n');
const LF = 0x0a;

export interface FeedStats {
    /** Body bytes handed to mailauth so far. */
    bodyBytes: number;
    /** Why the verified body was cut short, or null. */
    cut: 'body_line_length' | 'body_rewrites' | null;
    /** Where the body starts in the message (after the empty line that ends the header section). */
    bodyStart: number;
}

/** What the feed needs from the plan. */
export interface FeedPlan {
    /** The header section to verify. */
    readonly header: Buffer;
    /** Body hashes mailauth will compute; with none the body is not read at all. */
    readonly bodyHashes: number;
    /** Of those, the relaxed ones (each canonicalizes the whole body). */
    readonly relaxedBodyHashes: number;
}

export interface Verification<T> {
    /** What `plan` returned for the header section. */
    readonly plan: T;
    /** The copy for mailauth: planned header section, the empty line, the body. */
    readonly stream: Readable;
    readonly stats: FeedStats;
}

interface HeaderRead {
    readonly header: Buffer;
    /** Body bytes read with the header, or null when the message has no body (no empty line). */
    readonly body: Buffer | null;
}

/** The bytes read so far as one buffer: the only chunk itself, or one copy of several. */
function joined(parts: readonly Buffer[], total: number): Buffer {
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts, total);
}

/**
 * Reads the header section from `it`; the bytes after the empty line are returned as the body's
 * start. Each chunk is searched where it lies; only the few bytes around a chunk boundary, where
 * an empty line may be split, are copied to be searched.
 */
async function readHeader(it: AsyncIterator<Buffer>): Promise<HeaderRead> {
    const parts: Buffer[] = [];
    let total = 0;
    // the first two bytes of the message and the last three read so far
    let start: Buffer = Buffer.alloc(0);
    let last: Buffer = Buffer.alloc(0);
    for (;;) {
        const next = await it.next();
        if (next.done) return { header: joined(parts, total), body: null };
        const chunk = next.value;
        const before = total;
        parts.push(chunk);
        total += chunk.length;
        if (start.length < 2) {
            start = Buffer.concat([start, chunk.subarray(0, 2 - start.length)]);
            // an empty first line: no header fields at all
            if (start.length === 2 && start[0] === 0x0d && start[1] === LF) {
                return { header: Buffer.alloc(0), body: joined(parts, total).subarray(2) };
            }
        }
        // an empty line that starts in the bytes before this chunk comes first, then one inside it
        let end = -1;
        if (last.length > 0) {
            const edge = Buffer.concat([last, chunk.subarray(0, 3)]).indexOf(END_OF_HEADER);
            if (edge >= 0) end = before - last.length + edge;
        }
        if (end < 0) {
            const inside = chunk.indexOf(END_OF_HEADER);
            if (inside >= 0) end = before + inside;
        }
        if (end >= 0) {
            const all = joined(parts, total);
            return { header: all.subarray(0, end + 2), body: all.subarray(end + 4) };
        }
        if (total > MAX_HEADER_READ) throw new Error(`header section longer than ${MAX_HEADER_READ} bytes`);
        last = chunk.length >= 3 ? chunk.subarray(chunk.length - 3) : Buffer.concat([last, chunk]).subarray(-3);
    }
}

// what makes relaxed canonicalization rewrite a line (RFC 6376 section 3.4.4): a TAB, a run of spaces, a space at its end
const REWRITE = /\t| {2}| \r\n/g;

/** Lines of a piece (whole lines, CRLF) that relaxed canonicalization rewrites; linear. */
export function rewrittenLines(piece: Buffer): number {
    const text = piece.toString('latin1');
    let lines = 0;
    REWRITE.lastIndex = 0;
    for (let m = REWRITE.exec(text); m !== null; m = REWRITE.exec(text)) {
        lines++;
        // go on after the end of this line: a line counts once however damaged it is
        const end = text.indexOf('\n', m.index);
        if (end < 0) break;
        REWRITE.lastIndex = end + 1;
    }
    return lines;
}

/**
 * Where the first line longer than MAX_BODY_LINE starts, counted from the start of what is
 * pending, when `chunk` follows `before` pending bytes of which the last `tail` are an unfinished
 * line; -1 when there is none so far.
 */
function longLineStart(chunk: Buffer, before: number, tail: number): number {
    let start = before - tail;
    for (let from = 0; ; ) {
        const lf = chunk.indexOf(LF, from);
        const end = before + (lf < 0 ? chunk.length : lf + 1);
        if (end - start > MAX_BODY_LINE) return start;
        if (lf < 0) return -1;
        start = end;
        from = lf + 1;
    }
}

/** The body in pieces that end at a line break; stops before a line longer than MAX_BODY_LINE. */
async function* bodyPieces(
    first: Buffer,
    it: AsyncIterator<Buffer>,
    stats: FeedStats,
    relaxed: number,
): AsyncGenerator<Buffer> {
    let rewrites = 0;
    let since = performance.now();
    /** Passes on whole lines in pieces of about BODY_PIECE bytes; false once the rewrites would pass their limit. */
    async function* emit(lines: Buffer): AsyncGenerator<Buffer, boolean> {
        for (let off = 0; off < lines.length; ) {
            let end = lines.length;
            if (end - off > BODY_PIECE) {
                end = lines.lastIndexOf(LF, off + BODY_PIECE - 1) + 1;
                // one line longer than a piece goes whole
                if (end <= off) end = lines.indexOf(LF, off + BODY_PIECE) + 1 || lines.length;
            }
            const piece = lines.subarray(off, end);
            if (relaxed > 0) {
                rewrites += rewrittenLines(piece) * relaxed;
                if (rewrites > MAX_RELAXED_REWRITES) {
                    stats.cut = 'body_rewrites';
                    return false;
                }
            }
            stats.bodyBytes += piece.length;
            yield piece;
            // mailauth hashed the piece before asking for the next one: let other connections in
            // once YIELD_AFTER_MS of such work has gone by
            if (performance.now() - since >= YIELD_AFTER_MS) {
                await nextTurn();
                since = performance.now();
            }
            off = end;
        }
        return true;
    }
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    // bytes after the last line break in `pending`
    let tail = 0;
    const take = (n: number): Buffer => {
        const all = joined(pending, pendingBytes);
        pending = n < all.length ? [all.subarray(n)] : [];
        pendingBytes = all.length - n;
        return all.subarray(0, n);
    };
    for (let chunk: Buffer | null = first; ; chunk = null) {
        if (chunk === null) {
            const next = await it.next();
            if (next.done) break;
            chunk = next.value;
        }
        // only a chunk that can hold the end of an overlong line is searched line by line
        const long = tail + chunk.length > MAX_BODY_LINE ? longLineStart(chunk, pendingBytes, tail) : -1;
        pending.push(chunk);
        pendingBytes += chunk.length;
        if (long >= 0) {
            if ((yield* emit(take(long))) && stats.cut === null) stats.cut = 'body_line_length';
            return;
        }
        const lf = chunk.lastIndexOf(LF);
        tail = lf < 0 ? tail + chunk.length : chunk.length - lf - 1;
        if (pendingBytes - tail >= BODY_PIECE && !(yield* emit(take(pendingBytes - tail)))) return;
    }
    if (pendingBytes > 0) yield* emit(take(pendingBytes));
}

/**
 * Reads the header section of `source`, plans the verification on it, and returns the copy to
 * verify. `source` is consumed by the copy and destroyed when the copy is.
 */
export async function openVerification<T extends FeedPlan>(
    source: Readable,
    plan: (header: Buffer) => T,
): Promise<Verification<T>> {
    const it = source[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
    const read = await readHeader(it);
    const planned = plan(read.header);
    const stats: FeedStats = { bodyBytes: 0, cut: null, bodyStart: read.header.length + 2 };
    async function* generate(): AsyncGenerator<Buffer> {
        try {
            // the header section in pieces too: mailauth reads it byte by byte until the empty line;
            // the empty line that ends it goes with its last piece (one piece less to pass on)
            const header = planned.header;
            for (let off = 0; off < header.length; off += BODY_PIECE) {
                if (off > 0) await nextTurn();
                const piece = header.subarray(off, off + BODY_PIECE);
                yield off + BODY_PIECE >= header.length && read.body !== null ? Buffer.concat([piece, CRLF]) : piece;
            }
            if (read.body === null) return;
            if (header.length === 0) yield CRLF;
            // nothing hashes the body (no signature to verify): mailauth does not need it
            if (planned.bodyHashes > 0) yield* bodyPieces(read.body, it, stats, planned.relaxedBodyHashes);
        } finally {
            // stop reading the message, whether the copy ended, was cut short or was destroyed
            if (!source.destroyed) source.destroy();
        }
    }
    return { plan: planned, stream: Readable.from(generate(), { objectMode: false }), stats };
}
