/**
 * The output of a byte-by-byte transformation (line-ending canonicalisation, dot-stuffing) that
 * allocates and copies only when it differs from its input: as long as every byte put equals the
 * input byte at the same position, the result is a view of the input itself, which is what a
 * canonical message (CRLF only, no NUL, no line starting with a dot) always is. At the first
 * byte that differs, the prefix is copied into a new buffer of `capacity` bytes and the
 * transformation goes on there. The bytes of the result are the same either way.
 * `crlfLines` is the quick test for the usual case: a chunk whose every line ending is CRLF,
 * found with memchr-speed searches instead of a look at every byte.
 * It must not change the input, nor keep it beyond the result it returns.
 */

const CR = 0x0d;
const LF = 0x0a;

/**
 * The positions of the LFs of a chunk in which every CR is followed by an LF and every LF follows
 * a CR, and which does not end in CR (RFC 5321 section 2.3.8: the only line ending is CRLF);
 * null for any other chunk.
 */
export function crlfLines(buf: Buffer): number[] | null {
    if (buf.length > 0 && buf[buf.length - 1] === CR) return null;
    const lfs: number[] = [];
    for (let i = buf.indexOf(LF); i !== -1; i = buf.indexOf(LF, i + 1)) {
        if (i === 0 || buf[i - 1] !== CR) return null;
        lfs.push(i);
    }
    let crs = 0;
    for (let i = buf.indexOf(CR); i !== -1 && crs <= lfs.length; i = buf.indexOf(CR, i + 1)) crs++;
    // every LF follows its own CR; as many CRs as LFs means no CR stands alone
    return crs === lfs.length ? lfs : null;
}

export class CopyOnChange {
    private readonly input: Uint8Array;
    private readonly capacity: number;
    private out: Buffer | null = null;
    /** Bytes put so far. */
    length = 0;

    /** `capacity`: the most bytes the transformation can put for this input. */
    constructor(input: Uint8Array, capacity: number) {
        this.input = input;
        this.capacity = capacity;
    }

    put(b: number): void {
        const out = this.out;
        if (out !== null) {
            out[this.length++] = b;
            return;
        }
        if (this.length < this.input.length && this.input[this.length] === b) {
            this.length++;
            return;
        }
        const copy = Buffer.allocUnsafe(this.capacity);
        copy.set(this.input.subarray(0, this.length));
        copy[this.length++] = b;
        this.out = copy;
    }

    /** True once the output differs from the input (it lives in a buffer of its own). */
    get copied(): boolean {
        return this.out !== null;
    }

    /** The bytes put: a view of the input while they equal it, else of the new buffer. */
    result(): Buffer {
        if (this.out !== null) return this.out.subarray(0, this.length);
        return Buffer.from(this.input.buffer, this.input.byteOffset, this.length);
    }
}
