/**
 * One connection to the upstream SMTP server: the socket (plain, or TLS from the start or after
 * STARTTLS, RFC 3207), commands written to it and the replies read from it in order, with a
 * timeout on every wait. A timeout or any socket failure ends the connection for good; waits
 * pending on it reject. Garbage from the upstream ends it too, after the replies it sent in full
 * before the garbage were handed over.
 *
 * It must not know about sessions, clients or the pool: what to send, and when a connection is
 * worth keeping, is smtp-client.ts's business.
 */
import type { EventEmitter } from 'node:events';
import type net from 'node:net';
import tls from 'node:tls';
import type { UpstreamLogger } from './common.ts';
import { ReplyParser, type RawReply } from './replies.ts';
import { UpstreamError, type UpstreamFailure } from './types.ts';

/**
 * Most message bytes held back (socket corked) before they are written; chunks that come in
 * the same turn of the event loop leave together, so a message of ordinary size goes out with
 * its terminator in one write (writev) instead of one write per chunk.
 */
const DATA_BATCH_BYTES = 64 * 1024;

export function errorMessage(err: unknown): string {
    return err instanceof Error ? err.message : String(err);
}

/** Resolves on the next `name` event; errors are the connection's business, not this promise's. */
export function event(emitter: EventEmitter, name: string): Promise<void> {
    return new Promise((resolve) => emitter.once(name, () => resolve()));
}

/**
 * One socket to the upstream and the replies read from it. Any failure is final: the
 * socket is destroyed, `failure` is set, the pending reader and every wait of untilDead reject.
 */
export class Connection {
    socket: net.Socket;
    /** The TCP socket under `socket` once STARTTLS wrapped it (the same socket before). */
    private readonly tcp: net.Socket;
    failure: UpstreamError | null = null;
    /** What an error event on the socket means at this moment. */
    errorKind: UpstreamFailure = 'connect';
    private readonly parser = new ReplyParser();
    private readonly queue: RawReply[] = [];
    /**
     * Replies owed to us: the greeting, then one per command written. A reply beyond them is out
     * of step (a second answer to one command, a stray 250 behind a 354): taken as the answer to
     * the next command it would make the client hear what the upstream never said, so it ends
     * the connection (RFC 5321 section 4.2: one reply per command, in order).
     */
    private owed = 1;
    /**
     * While the message's text is being sent nothing is owed; a refusal the upstream sends
     * then, before the end of data, is kept as its answer to the end of data (some servers
     * refuse early and hang up); anything else is out of step.
     */
    private sendingText = false;
    /** An early refusal answered the message while its text was being sent (see sendingText). */
    refusedEarly = false;
    private waiter: { resolve: (r: RawReply) => void; reject: (e: UpstreamError) => void } | null = null;
    /**
     * Waits that end when the connection breaks (see untilDead). A set, emptied as each wait
     * settles, rather than one promise that never settles: every Promise.race against such a
     * promise would leave a reaction on it holding the raced value (a chunk of a message) for
     * as long as the connection lives, and a reused connection lives for many messages.
     */
    private readonly deathWaits = new Set<(e: UpstreamError) => void>();
    private readonly log: UpstreamLogger;
    private readonly label: string;

    constructor(socket: net.Socket, log: UpstreamLogger, label: string) {
        this.socket = socket;
        this.tcp = socket;
        this.log = log;
        this.label = label;
        this.listen(socket);
        socket.on('data', this.onData);
    }

    private listen(socket: net.Socket): void {
        // once the connection has ended (QUIT above all) its closing is no news: no error is built for it
        socket.on('error', (err) => {
            if (this.failure) return;
            this.fail(new UpstreamError(this.errorKind, `upstream ${this.label}: ${err.message}`, { cause: err }));
        });
        socket.on('close', () => {
            if (this.failure) return;
            this.fail(new UpstreamError('closed', `upstream ${this.label} closed the connection`));
        });
    }

    private readonly onData = (chunk: Buffer): void => {
        const replies: RawReply[] = [];
        let garbage: UpstreamError | null = null;
        try {
            this.parser.feed(chunk, replies);
        } catch (err) {
            garbage = err instanceof UpstreamError ? err : new UpstreamError('protocol', errorMessage(err));
        }
        // the replies read in full before garbage are handed out first (a 250 to the end of data
        // is the upstream's word that it took the message); then the connection fails
        for (const r of replies) {
            if (this.debugging()) {
                this.log.debug({ upstream: this.label, reply: `${r.code} ${r.lines.join(' / ')}` }, 'upstream reply');
            }
            if (this.owed > 0) {
                this.owed--;
            } else if (this.sendingText && r.code >= 400 && this.queue.length === 0) {
                // an early refusal: it answers the end of data, which is then owed no more
                this.sendingText = false;
                this.refusedEarly = true;
            } else {
                this.fail(
                    new UpstreamError(
                        'protocol',
                        `upstream ${this.label} sent a reply nobody asked for: ${r.code} ${r.lines[0] ?? ''}`,
                    ),
                );
                return;
            }
            const w = this.waiter;
            if (w) {
                this.waiter = null;
                w.resolve(r);
            } else {
                this.queue.push(r);
            }
        }
        if (garbage) this.fail(garbage);
    };

    /** Whether debug lines are wanted now (the level can change on reload); builds nothing otherwise. */
    private debugging(): boolean {
        return this.log.isLevelEnabled?.('debug') ?? true;
    }

    /** True when reply bytes arrived that nobody asked for yet. */
    get unsolicited(): boolean {
        return this.queue.length > 0 || this.parser.pending;
    }

    /** Lets an idle connection not keep the process alive (false), or a connection in use keep it (true). */
    keepAlive(on: boolean): void {
        for (const s of new Set([this.tcp, this.socket])) {
            if (on) s.ref();
            else s.unref();
        }
    }

    /** Ends the connection for good (idempotent). */
    fail(err: UpstreamError): void {
        if (this.failure) return;
        this.failure = err;
        this.socket.destroy();
        for (const reject of [...this.deathWaits]) reject(err);
        this.deathWaits.clear();
        const w = this.waiter;
        this.waiter = null;
        w?.reject(err);
    }

    private assertAlive(): void {
        if (this.failure) {
            throw new UpstreamError('closed', `upstream ${this.label} connection is no longer usable`, {
                cause: this.failure,
            });
        }
    }

    /** Waits for the next reply; a timeout ends the connection. */
    readReply(timeoutMs: number, what: string): Promise<RawReply> {
        const queued = this.queue.shift();
        if (queued) return Promise.resolve(queued);
        if (this.failure) return Promise.reject(this.failure);
        return new Promise<RawReply>((resolve, reject) => {
            const timer = setTimeout(() => {
                this.fail(
                    new UpstreamError('timeout', `upstream ${this.label}: no reply to ${what} within ${timeoutMs} ms`),
                );
            }, timeoutMs);
            this.waiter = {
                resolve: (r) => {
                    clearTimeout(timer);
                    resolve(r);
                },
                reject: (e) => {
                    clearTimeout(timer);
                    reject(e);
                },
            };
        });
    }

    /**
     * Sends command lines in one write, for the caller to read their replies in order with
     * readReply; only for commands RFC 2920 lets stand in one group, to an upstream that offers
     * PIPELINING.
     */
    writeCommands(lines: readonly string[]): void {
        this.assertAlive();
        if (this.debugging()) {
            for (const line of lines) this.log.debug({ upstream: this.label, command: line }, 'upstream command');
        }
        this.owed += lines.length;
        this.socket.write(lines.join('\r\n') + '\r\n');
    }

    /**
     * DATA is about to be written: once its 354 is read, the message's text follows and no
     * reply is owed until its end (noText() if DATA is refused).
     */
    textBegins(): void {
        this.sendingText = true;
        this.refusedEarly = false;
    }

    /** DATA was not answered 354: no text follows. */
    noText(): void {
        this.sendingText = false;
    }

    /**
     * The end of data is about to be written: its reply is owed, unless an early refusal
     * already answered it.
     */
    textEnds(): void {
        if (this.sendingText) this.owed++;
        this.sendingText = false;
    }

    /** Sends one command line and waits for its reply. */
    async command(line: string, timeoutMs: number): Promise<RawReply> {
        this.assertAlive();
        const verb = line.split(' ', 1)[0] ?? line;
        if (this.debugging()) this.log.debug({ upstream: this.label, command: line }, 'upstream command');
        this.owed++;
        this.socket.write(line + '\r\n');
        return this.readReply(timeoutMs, verb);
    }

    /**
     * Writes message bytes, held back (socket cork) until the end of this turn of the event
     * loop, a flush(), or DATA_BATCH_BYTES held, whichever comes first; waits while the
     * socket's buffer is full.
     */
    async write(chunk: Buffer, timeoutMs: number): Promise<void> {
        this.assertAlive();
        const socket = this.socket;
        if (socket.writableCorked === 0) {
            socket.cork();
            setImmediate(() => {
                while (socket.writableCorked > 0) socket.uncork();
            });
        }
        socket.write(chunk);
        if (socket.writableLength >= DATA_BATCH_BYTES) await this.flush(timeoutMs);
    }

    /** Sends what write() held back; waits while the socket's buffer is full. */
    async flush(timeoutMs: number): Promise<void> {
        this.assertAlive();
        while (this.socket.writableCorked > 0) this.socket.uncork();
        if (this.socket.writableNeedDrain) await this.drained(timeoutMs);
    }

    /** Settles as `promise` does, or rejects with the failure once the connection breaks (at once if it has). */
    untilDead<T>(promise: Promise<T>): Promise<T> {
        if (this.failure) {
            promise.catch(() => {});
            return Promise.reject(this.failure);
        }
        return new Promise<T>((resolve, reject) => {
            this.deathWaits.add(reject);
            promise.then(
                (value) => {
                    this.deathWaits.delete(reject);
                    resolve(value);
                },
                (err: unknown) => {
                    this.deathWaits.delete(reject);
                    // passed on as it came (a failing message source's own error)
                    // eslint-disable-next-line @typescript-eslint/prefer-promise-reject-errors
                    reject(err);
                },
            );
        });
    }

    private async drained(timeoutMs: number): Promise<void> {
        const timer = setTimeout(() => {
            this.fail(
                new UpstreamError('timeout', `upstream ${this.label} stopped reading the message for ${timeoutMs} ms`),
            );
        }, timeoutMs);
        try {
            await this.untilDead(event(this.socket, 'drain'));
        } finally {
            clearTimeout(timer);
        }
    }

    /** Waits until `promise` settles, the connection breaks, or `timeoutMs` passes. */
    async within<T>(promise: Promise<T>, timeoutMs: number, what: string, kind: UpstreamFailure): Promise<T> {
        const timer = setTimeout(() => {
            this.fail(new UpstreamError(kind, `upstream ${this.label}: ${what} took longer than ${timeoutMs} ms`));
        }, timeoutMs);
        try {
            return await this.untilDead(promise);
        } finally {
            clearTimeout(timer);
        }
    }

    /** Upgrades the connection after `220` to STARTTLS (RFC 3207 section 4). */
    async startTls(options: tls.ConnectionOptions, timeoutMs: number): Promise<void> {
        this.assertAlive();
        if (this.unsolicited) {
            // Bytes after the 220 were sent before the handshake and could be taken as
            // answers inside TLS (plaintext injection, RFC 3207 section 6 notes the risk).
            const err = new UpstreamError('protocol', `upstream ${this.label} sent data after its STARTTLS reply`);
            this.fail(err);
            throw err;
        }
        const plain = this.socket;
        plain.removeListener('data', this.onData);
        this.errorKind = 'tls';
        const secure = tls.connect({ ...options, socket: plain });
        this.socket = secure;
        this.listen(secure);
        secure.on('data', this.onData);
        await this.within(event(secure, 'secureConnect'), timeoutMs, 'TLS handshake', 'timeout');
        this.errorKind = 'closed';
    }

    /** Sends QUIT, waits briefly for the answer and closes; never throws. */
    async quit(timeoutMs: number): Promise<void> {
        if (!this.failure) {
            try {
                await this.command('QUIT', timeoutMs);
            } catch {
                // closing anyway
            }
        }
        this.fail(SESSION_CLOSED);
    }
}

/**
 * The failure of every connection we ended ourselves: built once, as closing is normal and
 * frequent (an Error captures a stack trace when built).
 */
const SESSION_CLOSED = new UpstreamError('closed', 'upstream session closed');
