/**
 * A local Maildir as the "upstream": the proxy is then the final delivery agent, so it
 * adds `Return-Path:` (RFC 5321 section 4.4) and stores each accepted message as one file,
 * written to `tmp/`, synced, and renamed into `new/` (the Maildir delivery protocol), so a
 * reader never sees a partial message.
 * Files use LF line endings, the convention of Maildir readers (Dovecot, mutt) and of
 * Postfix's own virtual(8) delivery; any CR or LF becomes one LF, and dots are not stuffed. It must not report success before the file is durably in `new/`,
 * and must never leave a partial file behind in `tmp/`.
 */
import { mkdir, open, rename, rm, type FileHandle } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { missingCapability, type UpstreamCapabilities } from './capabilities.ts';
import { assertSafeAddress, silentLogger, type UpstreamLogger } from './common.ts';
import {
    UnsupportedFeatureError,
    UpstreamError,
    type MailParams,
    type RcptParams,
    type Upstream,
    type UpstreamReply,
    type UpstreamSession,
} from './types.ts';

export interface MaildirUpstreamOptions {
    /** The Maildir folder (holding `tmp/`, `new/`, `cur/`); relative paths resolve against the working directory. */
    readonly path: string;
    /** Our host name, the last part of each file name. */
    readonly hostname: string;
    readonly logger?: UpstreamLogger;
}

const CR = 0x0d;
const LF = 0x0a;

/** Unix line endings for a Maildir file: CRLF, bare CR and bare LF all become LF; the last line is closed. */
export class LfNormalizer {
    private pendingCr = false;
    private atLineStart = true;

    push(chunk: Uint8Array): Buffer {
        const out = Buffer.allocUnsafe(chunk.length + 1);
        let o = 0;
        for (const b of chunk) {
            if (this.pendingCr) {
                this.pendingCr = false;
                out[o++] = LF;
                this.atLineStart = true;
                if (b === LF) continue;
            }
            if (b === CR) {
                this.pendingCr = true;
                continue;
            }
            out[o++] = b;
            this.atLineStart = b === LF;
        }
        return out.subarray(0, o);
    }

    end(): Buffer {
        const close = this.pendingCr || !this.atLineStart;
        this.pendingCr = false;
        this.atLineStart = true;
        return Buffer.from(close ? '\n' : '', 'latin1');
    }
}

let counter = 0;

/**
 * A Maildir takes any size and any octet (8BITMIME, SMTPUTF8), but it is the final stop: it
 * sends no delivery status notifications (no DSN) and is no SMTP hop (no REQUIRETLS).
 */
export const MAILDIR_CAPABILITIES: UpstreamCapabilities = Object.freeze({
    size: null,
    eightBitMime: true,
    smtputf8: true,
    dsn: false,
    requireTls: false,
});

function assertSupported(mail: MailParams | null, rcpt: RcptParams | null): void {
    const missing = missingCapability(MAILDIR_CAPABILITIES, mail, rcpt);
    if (missing !== null) throw new UnsupportedFeatureError(missing, `a Maildir does not offer ${missing}`);
}

/**
 * A unique file name in the usual Maildir form `<secs>.M<usecs>P<pid>Q<counter>.<host>`,
 * with `/` and `:` in the host name written as `\057` and `\072`.
 */
export function maildirFileName(hostname: string): string {
    const nowUs = BigInt(Math.round((performance.timeOrigin + performance.now()) * 1000));
    const secs = nowUs / 1_000_000n;
    const usecs = nowUs % 1_000_000n;
    const host = hostname.replaceAll('/', '\\057').replaceAll(':', '\\072');
    counter += 1;
    return `${secs}.M${usecs}P${process.pid}Q${counter}.${host}`;
}

async function writeAll(fh: FileHandle, data: Uint8Array): Promise<void> {
    let offset = 0;
    while (offset < data.length) {
        const { bytesWritten } = await fh.write(data, offset, data.length - offset);
        offset += bytesWritten;
    }
}

/** Makes a rename durable; some platforms cannot sync a directory, which is no reason to fail. */
async function syncDir(dir: string): Promise<void> {
    let fh: FileHandle | null = null;
    try {
        fh = await open(dir, 'r');
        await fh.sync();
    } catch {
        // best effort
    } finally {
        await fh?.close().catch(() => {});
    }
}

function ioError(what: string, err: unknown): UpstreamError {
    const detail = err instanceof Error ? err.message : String(err);
    return new UpstreamError('io', `${what}: ${detail}`, { cause: err });
}

/** Runs `fn` and turns its result or exception into a promise. */
function attempt<T>(fn: () => T): Promise<T> {
    try {
        return Promise.resolve(fn());
    } catch (err) {
        return Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
}

class MaildirSession implements UpstreamSession {
    readonly peer: string;
    readonly usable = true;
    readonly capabilities = MAILDIR_CAPABILITIES;
    private readonly store: MaildirStore;
    private sender: string | null = null;
    private recipients: string[] = [];

    constructor(store: MaildirStore) {
        this.store = store;
        this.peer = `maildir:${store.dir}`;
    }

    mailFrom(address: string, params: MailParams): Promise<UpstreamReply> {
        return attempt(() => {
            assertSafeAddress(address, 'mail', 'sender address');
            assertSupported(params, null);
            this.sender = address;
            this.recipients = [];
            return { code: 250, enhanced: '2.1.0', text: 'Ok' };
        });
    }

    rcptTo(address: string, params: RcptParams = {}): Promise<UpstreamReply> {
        return attempt(() => {
            assertSafeAddress(address, 'rcpt', 'recipient address');
            assertSupported(null, params);
            if (this.sender === null) return { code: 503, enhanced: '5.5.1', text: 'Error: need MAIL command' };
            this.recipients.push(address);
            return { code: 250, enhanced: '2.1.5', text: 'Ok' };
        });
    }

    async data(message: Readable): Promise<UpstreamReply> {
        const sender = this.sender;
        const recipients = this.recipients;
        this.sender = null;
        this.recipients = [];
        if (sender === null || recipients.length === 0) {
            return { code: 554, enhanced: '5.5.1', text: 'Error: no valid recipients' };
        }
        const name = await this.store.deliver(sender, message);
        return { code: 250, enhanced: '2.0.0', text: `Ok: queued as ${name}` };
    }

    reset(): Promise<void> {
        this.sender = null;
        this.recipients = [];
        return Promise.resolve();
    }

    close(): Promise<void> {
        return Promise.resolve();
    }
}

class MaildirStore {
    readonly dir: string;
    private readonly hostname: string;
    private readonly log: UpstreamLogger;

    constructor(options: MaildirUpstreamOptions) {
        this.dir = resolve(options.path);
        this.hostname = options.hostname;
        this.log = options.logger ?? silentLogger;
    }

    async ensureFolders(): Promise<void> {
        try {
            for (const sub of ['tmp', 'new', 'cur']) await mkdir(join(this.dir, sub), { recursive: true, mode: 0o700 });
        } catch (err) {
            throw ioError(`cannot create Maildir ${this.dir}`, err);
        }
    }

    /** Stores one message; returns its file name. */
    async deliver(sender: string, message: Readable): Promise<string> {
        await this.ensureFolders();
        const name = maildirFileName(this.hostname);
        const tmp = join(this.dir, 'tmp', name);
        let fh: FileHandle | null = null;
        let size = 0;
        try {
            fh = await open(tmp, 'wx', 0o600);
            const head = Buffer.from(`Return-Path: <${sender}>\n`, 'utf8');
            await writeAll(fh, head);
            size += head.length;
            const normalizer = new LfNormalizer();
            for await (const chunk of message as AsyncIterable<unknown>) {
                const bytes = typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk;
                if (!(bytes instanceof Uint8Array))
                    throw new TypeError('message source yielded something other than bytes');
                const out = normalizer.push(bytes);
                await writeAll(fh, out);
                size += out.length;
            }
            const tail = normalizer.end();
            await writeAll(fh, tail);
            size += tail.length;
            await fh.sync();
            await fh.close();
            fh = null;
            await rename(tmp, join(this.dir, 'new', name));
        } catch (err) {
            await fh?.close().catch(() => {});
            await rm(tmp, { force: true }).catch(() => {});
            throw ioError(`cannot store message in Maildir ${this.dir}`, err);
        }
        await syncDir(join(this.dir, 'new'));
        this.log.debug({ maildir: this.dir, file: name, size }, 'message stored');
        return name;
    }

    /** Checks that a file can be created (and removed) in `tmp/`. */
    async probe(): Promise<void> {
        await this.ensureFolders();
        const tmp = join(this.dir, 'tmp', `${maildirFileName(this.hostname)}.probe`);
        try {
            const fh = await open(tmp, 'wx', 0o600);
            await fh.close();
            await rm(tmp);
        } catch (err) {
            await rm(tmp, { force: true }).catch(() => {});
            throw ioError(`Maildir ${this.dir} is not writable`, err);
        }
    }
}

/** An upstream that stores accepted mail in a Maildir. */
export function createMaildirUpstream(options: MaildirUpstreamOptions): Upstream {
    const store = new MaildirStore(options);
    return {
        description: `maildir:${store.dir}`,
        open: () => Promise.resolve(new MaildirSession(store)),
        probe: async () => {
            await store.probe();
            return MAILDIR_CAPABILITIES;
        },
    };
}
