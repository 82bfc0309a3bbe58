/**
 * Receives one message from the DATA stream and keeps it until it is forwarded or refused.
 * - Line endings: counts bare LF and bare CR (RFC 5321 section 2.3.8 forbids them) and
 *   stores every line ending as CRLF, so the stored copy is canonical whatever the policy.
 *   NUL bytes are counted and dropped (RFC 5322 section 3.5).
 * - Memory stays bounded: up to `memoryLimit` bytes are kept in memory, and the spools of a
 *   process together keep at most their SpoolMemory's limit (SPOOL_MEMORY_BUDGET, 64 MiB): a
 *   message that would go past either is spilled, what it held in memory written to a spool
 *   file (mode 0600) and given back, and every later byte written there. `dispose()` gives the
 *   memory back and removes the file in every outcome.
 * - Size: past `maxSize` bytes nothing more is stored, but the stream is still drained so
 *   the SMTP dialogue stays in sync.
 * - Records where the header section ends (the first empty line, RFC 5322 section 2.1), and the
 *   length of the longest line (RFC 5322 section 2.1.1: at most 998 characters), as a number.
 * - The spool folder is mailwarden's own (mode 0700); at start, files left there by a process
 *   that ended without removing them (a crash, SIGKILL) are deleted: they hold message text
 *   that no client was ever told was accepted, so nothing is lost by removing them. Whether
 *   that process still runs is judged by its PID (kill(pid, 0); Node.js has no file lock), so a
 *   folder must not be shared between hosts, containers or PID namespaces (one folder per
 *   instance, which its workers share): from another namespace a live process looks gone and
 *   its files in use would be deleted.
 * - A failure to write the spool file (ENOSPC, EIO, EROFS...) rejects as a SpoolIoError (op
 *   `write`) naming the file and the errno, told apart from the DATA stream failing (the client
 *   left); a failure to read it back (EIO, the file removed) fails the stream `read()` returns
 *   with a SpoolIoError (op `read`), told apart from a fault of whoever consumes the stream.
 * It never decides what happens to the message; the session does.
 */
import { randomBytes } from 'node:crypto';
import { chmod, lstat, mkdir, open, readdir, unlink, type FileHandle } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { spoolFolderProblem } from '../config/sections/spool.ts';
import { CopyOnChange, crlfLines } from './copy-on-change.ts';

/**
 * Tells this process's spool files from those of an earlier process that had the same PID
 * (a restarted container is PID 1 again).
 */
const INSTANCE = randomBytes(4).toString('hex');

/** `mailwarden-<pid>-<instance>-<random>.eml` */
const SPOOL_FILE = /^mailwarden-(\d+)-([0-9a-f]{8})-[0-9a-f]{16}\.eml$/;

/** True when a process with this PID runs in this PID namespace (a worker of this instance keeps its files). */
function processAlive(pid: number): boolean {
    try {
        process.kill(pid, 0);
        return true;
    } catch (err) {
        return (err as NodeJS.ErrnoException).code === 'EPERM';
    }
}

/**
 * Creates the spool folder when missing (mode 0700), refuses one that is not a folder or that
 * another user owns (spoolFolderProblem, the test `check` makes), takes group and other permissions away, and removes the spool files of
 * processes that no longer run. Returns how many such files were removed.
 */
export async function prepareSpoolFolder(
    dir: string,
    isAlive: (pid: number) => boolean = processAlive,
): Promise<{ removed: number }> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const st = await lstat(dir);
    // the same test `check` makes of spool.dir, so that check refuses what this refuses
    const problem = spoolFolderProblem(st, process.getuid?.());
    if (problem !== null) throw new Error(`spool folder ${dir} ${problem}`);
    if ((st.mode & 0o077) !== 0) await chmod(dir, 0o700);
    let removed = 0;
    for (const name of await readdir(dir)) {
        const m = SPOOL_FILE.exec(name);
        if (!m) continue;
        const pid = Number(m[1]);
        const stale = pid === process.pid ? m[2] !== INSTANCE : !isAlive(pid);
        if (!stale) continue;
        try {
            await unlink(join(dir, name));
            removed++;
        } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        }
    }
    return { removed };
}

const CR = 0x0d;
const LF = 0x0a;

/**
 * The bytes of message text all spools of a process keep in memory together (64 MiB): with
 * 2,000 clients each holding a message just under `memoryLimit` (1 MB) it would otherwise be
 * 2 GB, held for as long as the data-rate limit lets a client stall (about 38 minutes for 1 MB).
 */
export const SPOOL_MEMORY_BUDGET = 64 * 1024 * 1024;

/**
 * The memory the spools of a process share: bytes stored, not the buffers under them (at most
 * twice as large, see store()). A spool takes from it before it keeps a chunk in memory and
 * gives back what it held when it spills or is disposed. One per process (createApp makes it).
 */
export class SpoolMemory {
    readonly limit: number;
    private bytes = 0;

    constructor(limit: number = SPOOL_MEMORY_BUDGET) {
        this.limit = limit;
    }

    /** Bytes the spools hold in memory now. */
    get held(): number {
        return this.bytes;
    }

    /** Counts `n` more bytes as held; false (nothing counted) when that would pass the limit. */
    take(n: number): boolean {
        if (this.bytes + n > this.limit) return false;
        this.bytes += n;
        return true;
    }

    give(n: number): void {
        this.bytes -= n;
    }
}

/** Why a spool went to a file: its message passed `memoryLimit`, or the process's SpoolMemory was used up. */
export type SpillReason = 'size' | 'memory';

export interface SpoolOptions {
    /** Bytes kept in memory before spilling to a file. */
    readonly memoryLimit: number;
    /** What the spools of the process keep in memory together; the spool spills when it is used up. */
    readonly memory: SpoolMemory;
    /** Folder for spool files (prepared by prepareSpoolFolder). */
    readonly dir: string;
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
    /** Bytes of the longest line of the canonical message, its CRLF excluded. */
    readonly longestLine: number;
    /** True when the message went to a spool file. */
    readonly spilled: boolean;
}

/**
 * Writing the spool file, or reading it back, failed: the host's fault (a full or broken disk,
 * a file removed under spool.dir), not the client's nor the upstream's.
 */
export class SpoolIoError extends Error {
    readonly op: 'write' | 'read';
    /** The spool file, or the spool folder when the file could not be created. */
    readonly path: string;
    /** The errno name (`ENOSPC`, `EIO`, `EROFS`, `ENOENT`...), `unknown` when there is none. */
    readonly code: string;
    constructor(op: 'write' | 'read', path: string, cause: unknown) {
        const code = (cause as NodeJS.ErrnoException | null)?.code ?? 'unknown';
        super(`spool ${op} failed: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
        this.name = 'SpoolIoError';
        this.op = op;
        this.path = path;
        this.code = code;
    }
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
    /** Bytes of canonical output seen so far in the current line (its CRLF excluded). */
    private lineLength = 0;
    /** The longest line ended so far. */
    private longestLine = 0;
    private headerLength: number | null = null;
    private disposed = false;
    private spilledFor: SpillReason | null = null;

    constructor(opts: SpoolOptions) {
        this.opts = opts;
    }

    /**
     * Reads the DATA stream to its end. Rejects when the stream fails (for example the
     * client disconnected), or with a SpoolIoError (op `write`) when the spool file cannot be written;
     * the caller must then drop the message and call dispose().
     */
    async ingest(stream: AsyncIterable<Buffer | string>): Promise<SpoolSummary> {
        for await (const chunk of stream) {
            const buf = typeof chunk === 'string' ? Buffer.from(chunk, 'binary') : chunk;
            this.received += buf.length;
            await this.write(this.canonicalize(buf, false), false);
        }
        await this.write(this.canonicalize(Buffer.alloc(0), true), true);
        return this.summary();
    }

    /** Stores `buf` (and syncs the file after the `last` one); a failure rejects as a SpoolIoError. */
    private async write(buf: Buffer, last: boolean): Promise<void> {
        try {
            await this.store(buf);
            if (last && this.file) await this.file.sync();
        } catch (err) {
            throw new SpoolIoError('write', this.filePath ?? this.opts.dir, err);
        }
    }

    /** Why the message went to a spool file; null while it is all in memory. */
    get spillReason(): SpillReason | null {
        return this.spilledFor;
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
            // the last line may end without CRLF
            longestLine: Math.max(this.longestLine, this.lineLength),
            spilled: this.file !== null,
        };
    }

    /**
     * Converts every line ending to CRLF and tracks bare line endings, the header end and the
     * longest line. A chunk that is already canonical comes back as a view of itself
     * (CopyOnChange): nothing is copied.
     */
    private canonicalize(buf: Buffer, final: boolean): Buffer {
        if (this.alreadyCanonical(buf)) return buf;
        const out = new CopyOnChange(buf, buf.length * 2 + 2);
        const newline = (): void => {
            out.put(CR);
            out.put(LF);
            if (this.headerLength === null && this.lineLength === 0) {
                // an empty line ends the header section; its offset is before this CRLF
                this.headerLength = this.size + out.length - 2;
            }
            if (this.lineLength > this.longestLine) this.longestLine = this.lineLength;
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
                out.put(b);
                this.lineLength++;
            }
        }
        if (final && this.prevCr) {
            this.prevCr = false;
            this.bareCr++;
            newline();
        }
        this.size += out.length;
        return out.result();
    }

    /**
     * The quick path of canonicalize: true (with the counts, the header end and the longest line
     * updated) when the chunk is stored as it is: CRLF line endings only, no NUL, no CR pending
     * from the chunk before.
     */
    private alreadyCanonical(buf: Buffer): boolean {
        if (this.prevCr || buf.indexOf(0) !== -1) return false;
        const lfs = crlfLines(buf);
        if (lfs === null) return false;
        if (this.headerLength === null) {
            // the empty line that ends the header section: CRLF at a line start
            if (this.lineLength === 0 && lfs[0] === 1) this.headerLength = this.size;
            else {
                const end = buf.indexOf('\r\n\r\n', 0, 'latin1');
                if (end !== -1) this.headerLength = this.size + end + 2;
            }
        }
        // each LF ends a line: its length runs from the previous LF (or the line begun before
        // this chunk) to its CR
        let start = -this.lineLength;
        for (let i = 0; i < lfs.length; i++) {
            const end = lfs[i]!;
            if (end - 1 - start > this.longestLine) this.longestLine = end - 1 - start;
            start = end + 1;
        }
        const last = lfs.length > 0 ? lfs[lfs.length - 1]! : -1;
        this.lineLength = last === -1 ? this.lineLength + buf.length : buf.length - last - 1;
        this.size += buf.length;
        return true;
    }

    private async store(buf: Buffer): Promise<void> {
        if (buf.length === 0 || this.tooBig) return;
        if (this.size > this.opts.maxSize) {
            // nothing more is kept; what is stored is never forwarded
            this.tooBig = true;
            return;
        }
        if (!this.file) {
            const fits = this.memoryBytes + buf.length <= this.opts.memoryLimit;
            if (fits && this.opts.memory.take(buf.length)) {
                // kept as it is when it fills at least half of the memory it holds on to (a chunk
                // read from the client); a smaller view (of a larger buffer) is copied, so memory
                // held stays within twice the bytes stored
                this.chunks.push(buf.length * 2 >= buf.buffer.byteLength ? buf : Buffer.from(buf));
                this.memoryBytes += buf.length;
                return;
            }
            await this.spill(fits ? 'memory' : 'size');
        }
        await this.file!.write(buf);
        this.fileBytes += buf.length;
    }

    /** Opens the spool file, moves what is held in memory to it and gives that memory back. */
    private async spill(reason: SpillReason): Promise<void> {
        const name = `mailwarden-${process.pid}-${INSTANCE}-${randomBytes(8).toString('hex')}.eml`;
        const path = join(this.opts.dir, name);
        this.file = await open(path, 'wx+', 0o600);
        this.filePath = path;
        this.spilledFor = reason;
        if (this.chunks.length > 0) await this.file.writev(this.chunks);
        this.fileBytes = this.memoryBytes;
        this.releaseMemory();
    }

    private releaseMemory(): void {
        this.opts.memory.give(this.memoryBytes);
        this.memoryBytes = 0;
        this.chunks.length = 0;
    }

    /**
     * The stored bytes from `start` (inclusive) to `end` (exclusive, default: the end). The stream
     * fails with a SpoolIoError (op `read`) when the spool file cannot be read back.
     */
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
                    const file = createReadStream(filePath, { start: fStart, end: fEnd });
                    const it = file[Symbol.asyncIterator]();
                    try {
                        for (;;) {
                            let step: IteratorResult<unknown>;
                            // only the file's own failures: not an error thrown in at the yield
                            try {
                                step = await it.next();
                            } catch (err) {
                                throw new SpoolIoError('read', filePath, err);
                            }
                            if (step.done) break;
                            yield step.value as Buffer;
                        }
                    } finally {
                        file.destroy();
                    }
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

    /** Frees memory (given back to the SpoolMemory) and removes the spool file. Safe to call more than once. */
    async dispose(): Promise<void> {
        if (this.disposed) return;
        this.disposed = true;
        this.releaseMemory();
        const file = this.file;
        const path = this.filePath;
        this.file = null;
        if (file) await file.close().catch(() => undefined);
        if (path) await unlink(path).catch(() => undefined);
    }
}
