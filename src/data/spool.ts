/**
 * Receives one message from the DATA stream and keeps it until it is forwarded or refused.
 * - Line endings: counts bare LF and bare CR (RFC 5321 section 2.3.8 forbids them) and
 *   stores every line ending as CRLF, so the stored copy is canonical whatever the policy.
 *   NUL bytes are counted and dropped (RFC 5322 section 3.5).
 * - Memory stays bounded: up to `memoryLimit` bytes are kept in memory, the rest goes to a
 *   spool file (mode 0600) that `dispose()` removes in every outcome.
 * - Size: past `maxSize` bytes nothing more is stored, but the stream is still drained so
 *   the SMTP dialogue stays in sync.
 * - Records where the header section ends (the first empty line, RFC 5322 section 2.1).
 * It never decides what happens to the message; the session does.
 */
import { randomBytes } from 'node:crypto';
import { open, unlink, type FileHandle } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';

const CR = 0x0d;
const LF = 0x0a;

export interface SpoolOptions {
    /** Bytes kept in memory before spilling to a file. */
    readonly memoryLimit: number;
    /** Folder for spool files; null means the OS temporary folder. */
    readonly dir: string | null;
    /** Largest message accepted, in bytes (after line-ending normalisation). */
    readonly maxSize: number;
    /** Largest header section accepted, in bytes. */
    readonly maxHeaderSize: number;
}

export interface SpoolSummary {
    /** Bytes received from the client (dot-unstuffed by the SMTP parser). */
    readonly receivedBytes: number;
    /** Bytes of the canonical (CRLF) message. */
    readonly size: number;
    readonly bareLf: number;
    readonly bareCr: number;
    /** NUL bytes seen (RFC 5322 section 3.5 forbids them); they are never stored. */
    readonly nul: number;
    readonly tooBig: boolean;
    /** Header section length in bytes, up to and excluding the empty line; -1 when it exceeded maxHeaderSize. */
    readonly headerLength: number;
    /** True when the message went to a spool file. */
    readonly spilled: boolean;
}

export class MessageSpool {
    private readonly opts: SpoolOptions;
    private readonly chunks: Buffer[] = [];
    private memoryBytes = 0;
    private file: FileHandle | null = null;
    private filePath: string | null = null;
    private fileBytes = 0;
    private size = 0;
    private received = 0;
    private bareLf = 0;
    private bareCr = 0;
    private nul = 0;
    private prevCr = false;
    private tooBig = false;
    /** Header scanning: bytes of canonical output seen so far in the current line. */
    private lineLength = 0;
    private headerLength: number | null = null;
    private disposed = false;

    constructor(opts: SpoolOptions) {
        this.opts = opts;
    }

    /**
     * Reads the DATA stream to its end. Rejects when the stream fails (for example the
     * client disconnected); the caller must then drop the message and call dispose().
     */
    async ingest(stream: AsyncIterable<Buffer | string>): Promise<SpoolSummary> {
        for await (const chunk of stream) {
            const buf = typeof chunk === 'string' ? Buffer.from(chunk, 'binary') : chunk;
            this.received += buf.length;
            await this.store(this.canonicalize(buf, false));
        }
        await this.store(this.canonicalize(Buffer.alloc(0), true));
        if (this.file) await this.file.sync();
        return this.summary();
    }

    summary(): SpoolSummary {
        let headerLength = this.headerLength ?? this.size;
        if (headerLength > this.opts.maxHeaderSize) headerLength = -1;
        return {
            receivedBytes: this.received,
            size: this.size,
            bareLf: this.bareLf,
            bareCr: this.bareCr,
            nul: this.nul,
            tooBig: this.tooBig,
            headerLength,
            spilled: this.file !== null,
        };
    }

    /** Converts every line ending to CRLF and tracks bare line endings and the header end. */
    private canonicalize(buf: Buffer, final: boolean): Buffer {
        const out = Buffer.allocUnsafe(buf.length * 2 + 2);
        let o = 0;
        const newline = (): void => {
            out[o++] = CR;
            out[o++] = LF;
            if (this.headerLength === null && this.lineLength === 0) {
                // an empty line ends the header section; its offset is before this CRLF
                this.headerLength = this.size + o - 2;
            }
            this.lineLength = 0;
        };
        for (let i = 0; i < buf.length; i++) {
            const b = buf[i]!;
            if (this.prevCr) {
                this.prevCr = false;
                if (b === LF) {
                    newline();
                    continue;
                }
                this.bareCr++;
                newline();
            }
            if (b === CR) {
                this.prevCr = true;
            } else if (b === 0) {
                this.nul++;
            } else if (b === LF) {
                this.bareLf++;
                newline();
            } else {
                out[o++] = b;
                this.lineLength++;
            }
        }
        if (final && this.prevCr) {
            this.prevCr = false;
            this.bareCr++;
            newline();
        }
        this.size += o;
        return out.subarray(0, o);
    }

    private async store(buf: Buffer): Promise<void> {
        if (buf.length === 0 || this.tooBig) return;
        if (this.size > this.opts.maxSize) {
            // nothing more is kept; what is stored is never forwarded
            this.tooBig = true;
            return;
        }
        if (!this.file && this.memoryBytes + buf.length <= this.opts.memoryLimit) {
            this.chunks.push(Buffer.from(buf));
            this.memoryBytes += buf.length;
            return;
        }
        if (!this.file) await this.openFile();
        await this.file!.write(buf);
        this.fileBytes += buf.length;
    }

    private async openFile(): Promise<void> {
        const path = join(this.opts.dir ?? tmpdir(), `mailwarden-${process.pid}-${randomBytes(8).toString('hex')}.eml`);
        this.file = await open(path, 'wx+', 0o600);
        this.filePath = path;
    }

    /** The stored bytes from `start` (inclusive) to `end` (exclusive, default: the end). */
    read(start = 0, end = this.memoryBytes + this.fileBytes): Readable {
        if (this.disposed) throw new Error('spool already disposed');
        const memory = this.chunks;
        const memoryBytes = this.memoryBytes;
        const filePath = this.filePath;
        async function* generate(): AsyncGenerator<Buffer> {
            let offset = 0;
            for (const c of memory) {
                const cStart = offset;
                const cEnd = offset + c.length;
                offset = cEnd;
                if (cEnd <= start || cStart >= end) continue;
                yield c.subarray(Math.max(0, start - cStart), Math.min(c.length, end - cStart));
            }
            if (filePath && end > memoryBytes) {
                const fStart = Math.max(0, start - memoryBytes);
                const fEnd = end - memoryBytes - 1;
                if (fEnd >= fStart) {
                    for await (const c of createReadStream(filePath, { start: fStart, end: fEnd })) yield c as Buffer;
                }
            }
        }
        return Readable.from(generate(), { objectMode: false });
    }

    /** Reads a byte range fully into memory (used for the bounded header section). */
    async readBuffer(start: number, end: number): Promise<Buffer> {
        const parts: Buffer[] = [];
        for await (const c of this.read(start, end)) parts.push(c as Buffer);
        return Buffer.concat(parts);
    }

    /** Frees memory and removes the spool file. Safe to call more than once. */
    async dispose(): Promise<void> {
        if (this.disposed) return;
        this.disposed = true;
        this.chunks.length = 0;
        const file = this.file;
        const path = this.filePath;
        this.file = null;
        if (file) await file.close().catch(() => undefined);
        if (path) await unlink(path).catch(() => undefined);
    }
}
