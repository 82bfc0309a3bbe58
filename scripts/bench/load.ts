/**
 * The benchmark's load generator: sends a list of prepared messages to one SMTP port with a
 * fixed number of sessions in parallel and a fixed number of messages per connection, in
 * lock-step (one command, then its reply; RFC 5321 section 4.1), and records for each message
 * the final reply and its latency: from the TCP connect (first message of a connection) or
 * from MAIL FROM (later ones) to the reply to the end of data. A deadline stops it from taking
 * new messages; a reply timeout bounds every wait.
 *
 * It must only connect to the port it is given on loopback and must not retry a message:
 * what the server answered is what is recorded.
 */
import net from 'node:net';
import { performance } from 'node:perf_hooks';

export interface PreparedMessage {
    readonly index: number;
    readonly mailFrom: string;
    readonly rcptTo: string;
    /** Dot-stuffed, ending with `.CRLF` (see corpus.ts toWire). */
    readonly wire: Buffer;
}

export type Stage = 'connect' | 'greeting' | 'ehlo' | 'mail' | 'rcpt' | 'data' | 'eod';

export interface Outcome {
    /** Index of the message in the corpus. */
    readonly index: number;
    /** The code of the last reply, 0 when there was none (connection error, timeout). */
    readonly code: number;
    /** Where the transaction ended: `eod` when the end of data was answered. */
    readonly stage: Stage;
    readonly latencyMs: number;
    /** The reply's text or the error, for failures only. */
    readonly detail?: string;
}

export interface LoadOptions {
    port: number;
    host?: string;
    helo: string;
    messages: readonly PreparedMessage[];
    concurrency: number;
    perConnection: number;
    /** performance.now() after which no new message is started. */
    deadline: number;
    replyTimeoutMs: number;
    /** Asked before each message: true stops the run early (Ctrl-C). */
    stop?: () => boolean;
}

export interface LoadResult {
    wallMs: number;
    outcomes: Outcome[];
    connections: number;
    /** True when the deadline stopped the run before every message was sent. */
    timedOut: boolean;
}

interface Reply {
    code: number;
    text: string;
}

const NO_REPLY: Reply = { code: 0, text: '' };

class Connection {
    private buffer = '';
    private waiter: { resolve: (r: Reply) => void; reject: (e: Error) => void; timer: NodeJS.Timeout } | null = null;
    private failure: Error | null = null;
    readonly socket: net.Socket;
    private readonly timeoutMs: number;

    constructor(socket: net.Socket, timeoutMs: number) {
        this.socket = socket;
        this.timeoutMs = timeoutMs;
        socket.setNoDelay(true);
        socket.on('data', (chunk: Buffer) => {
            this.buffer += chunk.toString('latin1');
            this.pump();
        });
        socket.on('error', (e) => this.fail(e));
        socket.on('close', () => this.fail(new Error('connection closed')));
    }

    static open(host: string, port: number, timeoutMs: number): Promise<Connection> {
        return new Promise((resolve, reject) => {
            const socket = net.connect({ host, port });
            const timer = setTimeout(() => {
                socket.destroy();
                reject(new Error('connect timeout'));
            }, timeoutMs);
            socket.once('error', (e) => {
                clearTimeout(timer);
                reject(e);
            });
            socket.once('connect', () => {
                clearTimeout(timer);
                socket.removeAllListeners('error');
                resolve(new Connection(socket, timeoutMs));
            });
        });
    }

    private fail(e: Error): void {
        this.failure ??= e;
        const w = this.waiter;
        if (w) {
            this.waiter = null;
            clearTimeout(w.timer);
            w.reject(e);
        }
    }

    /** Resolves a waiting reader when a complete reply (last line `NNN text`) is buffered. */
    private pump(): void {
        if (!this.waiter) return;
        let from = 0;
        for (;;) {
            const nl = this.buffer.indexOf('\r\n', from);
            if (nl < 0) return;
            const line = this.buffer.slice(from, nl);
            from = nl + 2;
            if (line.length < 4 || line[3] !== '-') {
                const text = this.buffer.slice(0, from);
                this.buffer = this.buffer.slice(from);
                const w = this.waiter;
                this.waiter = null;
                clearTimeout(w.timer);
                w.resolve({ code: Number(line.slice(0, 3)) || 0, text: text.trimEnd() });
                return;
            }
        }
    }

    reply(): Promise<Reply> {
        return new Promise((resolve, reject) => {
            if (this.failure && !this.buffer.includes('\r\n')) return reject(this.failure);
            const timer = setTimeout(() => {
                this.waiter = null;
                reject(new Error('reply timeout'));
                this.socket.destroy();
            }, this.timeoutMs);
            this.waiter = { resolve, reject, timer };
            this.pump();
        });
    }

    send(data: string | Buffer): Promise<Reply> {
        this.socket.write(data);
        return this.reply();
    }

    close(): void {
        this.socket.destroy();
    }
}

/** Sends every message (or until the deadline) and records each one's outcome. */
export async function runLoad(options: LoadOptions): Promise<LoadResult> {
    const host = options.host ?? '127.0.0.1';
    const outcomes: Outcome[] = [];
    let next = 0;
    let connections = 0;
    let timedOut = false;

    const worker = async (): Promise<void> => {
        let conn: Connection | null = null;
        let sentOnConn = 0;
        const drop = (): void => {
            conn?.close();
            conn = null;
        };
        while (next < options.messages.length) {
            if (performance.now() > options.deadline || options.stop?.()) {
                timedOut = true;
                break;
            }
            const message = options.messages[next++]!;
            const started = performance.now();
            let stage = 'connect' as Stage; // (not narrowed: step() changes it)
            let last: Reply = { code: 0, text: '' };
            let recorded = false;
            const record = (detail?: string): void => {
                if (recorded) return;
                recorded = true;
                const outcome: Outcome = {
                    index: message.index,
                    code: last.code,
                    stage,
                    latencyMs: performance.now() - started,
                };
                outcomes.push(detail === undefined ? outcome : { ...outcome, detail });
            };
            // `last` is cleared before each step, so a step that fails records code 0, not the previous reply
            const step = async (at: Stage, exchange: () => Promise<Reply>): Promise<number> => {
                stage = at;
                last = NO_REPLY;
                last = await exchange();
                return last.code;
            };
            try {
                if (conn === null) {
                    const fresh = await Connection.open(host, options.port, options.replyTimeoutMs);
                    conn = fresh;
                    connections++;
                    sentOnConn = 0;
                    if (
                        (await step('greeting', () => fresh.reply())) !== 220 ||
                        (await step('ehlo', () => fresh.send(`EHLO ${options.helo}\r\n`))) !== 250
                    ) {
                        record(last.text.slice(0, 300));
                        drop();
                        continue;
                    }
                }
                const c: Connection = conn;
                if ((await step('mail', () => c.send(`MAIL FROM:<${message.mailFrom}>\r\n`))) === 250) {
                    const rcpt = await step('rcpt', () => c.send(`RCPT TO:<${message.rcptTo}>\r\n`));
                    if ((rcpt === 250 || rcpt === 251) && (await step('data', () => c.send('DATA\r\n'))) === 354) {
                        await step('eod', () => c.send(message.wire));
                    }
                }
                const ok = last.code >= 200 && last.code < 300 && stage === 'eod';
                record(ok ? undefined : last.text.slice(0, 300));
                sentOnConn++;
                if (last.code === 421) drop();
                else if (stage !== 'eod') await c.send('RSET\r\n');
                if (conn !== null && sentOnConn >= options.perConnection) {
                    await c.send('QUIT\r\n').catch(() => undefined);
                    drop();
                }
            } catch (e) {
                record(e instanceof Error ? e.message.slice(0, 300) : String(e));
                drop();
            }
        }
        if (conn !== null) {
            const c: Connection = conn;
            await c.send('QUIT\r\n').catch(() => undefined);
            drop();
        }
    };

    const t0 = performance.now();
    await Promise.all(Array.from({ length: Math.max(1, options.concurrency) }, worker));
    return { wallMs: performance.now() - t0, outcomes, connections, timedOut };
}
