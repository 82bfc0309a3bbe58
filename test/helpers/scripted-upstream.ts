/**
 * Test helper: a scriptable SMTP server on 127.0.0.1 (port 0) standing in for the mail
 * server behind the proxy. By default it behaves like a permissive Postfix (greeting,
 * EHLO with the given capability lines, XCLIENT answered with a new 220, MAIL/RCPT/DATA
 * accepted); per test, any command or the end of data can get another reply, a delay,
 * no answer at all, or a closed connection, and DATA can be cut off after N bytes.
 * It records every command line, every XCLIENT attribute and the raw DATA bytes; a test may
 * write to a connection unasked or close it (`connections[i].write()`, `.destroy()`). With `tls`
 * it speaks TLS from the first byte (an `smtps://` upstream). With `idleTimeoutMs` a connection
 * that sends nothing for that long gets `421 4.4.2 … timeout exceeded` and is closed, as Postfix
 * does after smtpd_timeout. The `ehlo` array is read at
 * every EHLO, so a test may change it to make the upstream's capabilities change.
 * Test code only: it never listens beyond loopback, and `close()` ends every connection.
 *
 * ```ts
 * const up = await startScriptedUpstream({
 *     ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN', 'SIZE 1000000', '8BITMIME'],
 *     onCommand(line, ctx) {
 *         if (line.startsWith('RCPT TO:<nobody@')) return '550 5.1.1 no such user';
 *         if (line === 'DATA') return { closeAfterDataBytes: 100 };
 *         return undefined; // default behaviour
 *     },
 *     onData: (tx) => ({ reply: '451 4.3.0 try later', delayMs: 50 }),
 * });
 * // … point the client at up.port …
 * up.commands; up.transactions[0]?.data; up.connections[0]?.xclient;
 * await up.close();
 * ```
 */
import net from 'node:net';
import tls from 'node:tls';
import { xtextDecode } from '../../src/upstream/xtext.ts';

/** One reply line (`'550 5.1.1 no such user'`), or all lines of a multi-line reply, each with its code. */
export type ScriptedReply = string | readonly string[];

/**
 * What to do with a command (or the greeting, or the end of data).
 * A string or string array is a reply. In the object form, the steps run in this order:
 * wait `delayMs`; if `silent`, send nothing; otherwise send `reply` (or the default
 * reply when `reply` is absent and `close` is not set); if `close`, close the connection.
 * `closeAfterDataBytes` (for `DATA` only) closes the connection once that many message
 * bytes arrived, so the end of data never comes.
 */
export type ScriptedAction =
    | ScriptedReply
    | {
          readonly reply?: ScriptedReply;
          readonly delayMs?: number;
          readonly silent?: boolean;
          readonly close?: boolean;
          readonly closeAfterDataBytes?: number;
      };

export interface ScriptedTransaction {
    /** Id of the connection it belongs to (1, 2, …). */
    readonly connection: number;
    /** Reverse path from MAIL FROM, without the angle brackets. */
    readonly mail: string;
    /** MAIL FROM parameters as sent (`SIZE=123`, `BODY=8BITMIME`, …). */
    readonly params: readonly string[];
    /** Recipients whose RCPT TO got a 2xx reply. */
    readonly rcpts: string[];
    /**
     * DATA bytes exactly as received (still dot-stuffed), without the final `.<CRLF>`;
     * null until DATA was accepted, empty while the transfer runs, set when it ends. For
     * an aborted transfer (closed connection, `closeAfterDataBytes`): every byte that arrived.
     */
    data: Buffer | null;
    /** True once the `<CRLF>.<CRLF>` terminator was received. */
    completed: boolean;
    /** The reply sent after the terminator, if any. */
    finalReply: string | null;
}

export interface ScriptedConnection {
    readonly id: number;
    readonly commands: string[];
    /** The bytes of each read from the socket outside DATA (latin1): what arrived together. */
    readonly reads: string[];
    /** Attributes of each XCLIENT command received, xtext-decoded, names upper case. */
    readonly xclient: Array<Record<string, string>>;
    /** Attributes as sent on the wire (still xtext-encoded). */
    readonly xclientRaw: Array<Record<string, string>>;
    closed: boolean;
    /** Writes `text` as it is, unasked (a `421` before hanging up, say). */
    write(text: string): void;
    /** Closes the connection at once. */
    destroy(): void;
}

export interface ScriptedContext {
    readonly connection: ScriptedConnection;
    /** The open transaction (after an accepted MAIL), or null. */
    readonly transaction: ScriptedTransaction | null;
    readonly upstream: ScriptedUpstream;
}

export interface ScriptedUpstreamOptions {
    /** Host name used in the greeting and the EHLO reply. Default `upstream.test`. */
    readonly name?: string;
    /** Greeting: default `220 <name> ESMTP scripted`. `{ silent: true }` never greets. */
    readonly greeting?: ScriptedAction;
    /** EHLO capability lines after the first line, without the code (`'SIZE 1000000'`). */
    readonly ehlo?: readonly string[];
    /** A connection silent this long (outside DATA or in it) gets a 421 and is closed (Postfix's smtpd_timeout). */
    readonly idleTimeoutMs?: number;
    /** Certificate and key: TLS from the first byte (implicit TLS, RFC 8314). */
    readonly tls?: { readonly key: string | Buffer; readonly cert: string | Buffer };
    /**
     * Called for every command line (without CRLF) before the default handling; return
     * undefined for the default reply. The default side effects (transaction start,
     * recipient recorded, DATA mode) apply when the reply sent has the success code.
     */
    onCommand?(line: string, ctx: ScriptedContext): ScriptedAction | undefined | Promise<ScriptedAction | undefined>;
    /** Called after the end of data; return undefined for `250 2.0.0 Ok: queued as …`. */
    onData?(
        tx: ScriptedTransaction,
        ctx: ScriptedContext,
    ): ScriptedAction | undefined | Promise<ScriptedAction | undefined>;
}

export interface ScriptedUpstream {
    readonly host: '127.0.0.1';
    readonly port: number;
    /** Every command line received, all connections, in order. */
    readonly commands: string[];
    readonly connections: ScriptedConnection[];
    /** Every transaction started with an accepted MAIL, in order. */
    readonly transactions: ScriptedTransaction[];
    /** Resolves when no connection is open any more (or at once if none is). */
    idle(): Promise<void>;
    /** Ends every connection and stops listening. */
    close(): Promise<void>;
}

const TERMINATOR = Buffer.from('\r\n.\r\n', 'latin1');
const CRLF = Buffer.from('\r\n', 'latin1');

/** Removes dot-stuffing (RFC 5321 section 4.5.2) from DATA bytes as recorded. */
export function unstuff(data: Buffer): Buffer {
    return Buffer.from(data.toString('latin1').replace(/(^|\r\n)\./g, '$1'), 'latin1');
}

function codeOf(reply: ScriptedReply): number {
    const last = typeof reply === 'string' ? reply : reply[reply.length - 1];
    return Number((last ?? '').slice(0, 3));
}

function isSuccess(reply: ScriptedReply | null, wanted: number): boolean {
    return reply !== null && codeOf(reply) === wanted;
}

const delay = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export async function startScriptedUpstream(options: ScriptedUpstreamOptions = {}): Promise<ScriptedUpstream> {
    const name = options.name ?? 'upstream.test';
    const capabilities = options.ehlo ?? [];
    const commands: string[] = [];
    const connections: ScriptedConnection[] = [];
    const transactions: ScriptedTransaction[] = [];
    const sockets = new Set<net.Socket>();
    const idleWaiters: Array<() => void> = [];
    let queued = 0;

    const server = options.tls
        ? tls.createServer({ key: options.tls.key, cert: options.tls.cert }, (socket) => handle(socket))
        : net.createServer((socket) => handle(socket));
    server.listen(0, '127.0.0.1');
    await new Promise<void>((resolve, reject) => {
        server.once('listening', resolve);
        server.once('error', reject);
    });
    const port = (server.address() as net.AddressInfo).port;

    const upstream: ScriptedUpstream = {
        host: '127.0.0.1',
        port,
        commands,
        connections,
        transactions,
        idle() {
            if (sockets.size === 0) return Promise.resolve();
            return new Promise((resolve) => idleWaiters.push(resolve));
        },
        async close() {
            for (const s of sockets) s.destroy();
            await new Promise<void>((resolve) => server.close(() => resolve()));
        },
    };

    function handle(socket: net.Socket): void {
        sockets.add(socket);
        const conn: ScriptedConnection = {
            id: connections.length + 1,
            commands: [],
            reads: [],
            xclient: [],
            xclientRaw: [],
            closed: false,
            write: (text) => {
                if (!socket.destroyed && socket.writable) socket.write(text);
            },
            destroy: () => socket.destroy(),
        };
        connections.push(conn);
        let tx: ScriptedTransaction | null = null;
        let input: Buffer = Buffer.alloc(0);
        /** In DATA mode: the message bytes received so far (null outside DATA). */
        let data: Buffer[] | null = null;
        let dataLength = 0;
        /** The last (at most 4) bytes of the data stream, which starts with a virtual CRLF. */
        let tail: Buffer = CRLF;
        let closeAfter: number | null = null;
        let busy = false;

        socket.on('error', () => {});
        socket.on('close', () => {
            if (tx && data) tx.data = Buffer.concat(data);
            data = null;
            conn.closed = true;
            sockets.delete(socket);
            if (sockets.size === 0) for (const w of idleWaiters.splice(0)) w();
        });

        const ctx = (): ScriptedContext => ({ connection: conn, transaction: tx, upstream });

        if (options.idleTimeoutMs !== undefined) {
            socket.setTimeout(options.idleTimeoutMs, () => {
                if (!socket.destroyed && socket.writable) socket.end(`421 4.4.2 ${name} Error: timeout exceeded\r\n`);
            });
        }

        const send = (reply: ScriptedReply): void => {
            const lines = typeof reply === 'string' ? [reply] : reply;
            if (!socket.destroyed && socket.writable) socket.write(lines.map((l) => l + '\r\n').join(''));
        };

        /** Carries out an action; returns the reply sent (null when none). */
        const perform = async (
            action: ScriptedAction | undefined,
            fallback: ScriptedReply,
        ): Promise<ScriptedReply | null> => {
            if (action === undefined) {
                send(fallback);
                return fallback;
            }
            if (typeof action === 'string' || Array.isArray(action)) {
                send(action as ScriptedReply);
                return action as ScriptedReply;
            }
            const a = action as Exclude<ScriptedAction, ScriptedReply>;
            if (a.delayMs) await delay(a.delayMs);
            let sent: ScriptedReply | null = null;
            if (!a.silent && (a.reply !== undefined || !a.close)) {
                sent = a.reply ?? fallback;
                send(sent);
            }
            if (a.close) socket.destroy();
            if (a.closeAfterDataBytes !== undefined) closeAfter = a.closeAfterDataBytes;
            return sent;
        };

        const ehloReply = (): string[] => {
            const lines = [name, ...capabilities];
            return lines.map((l, i) => `250${i === lines.length - 1 ? ' ' : '-'}${l}`);
        };

        const command = async (line: string): Promise<void> => {
            commands.push(line);
            conn.commands.push(line);
            const [verbRaw = '', ...rest] = line.split(' ');
            const verb = verbRaw.toUpperCase();
            const arg = rest.join(' ');
            let fallback: ScriptedReply;
            let after: (sent: ScriptedReply | null) => void = () => {};
            switch (verb) {
                case 'EHLO':
                    fallback = ehloReply();
                    break;
                case 'HELO':
                    fallback = `250 ${name}`;
                    break;
                case 'XCLIENT': {
                    const raw: Record<string, string> = {};
                    const decoded: Record<string, string> = {};
                    for (const pair of rest) {
                        const eq = pair.indexOf('=');
                        const key = pair.slice(0, eq).toUpperCase();
                        const value = pair.slice(eq + 1);
                        raw[key] = value;
                        try {
                            decoded[key] = xtextDecode(value);
                        } catch {
                            decoded[key] = value;
                        }
                    }
                    conn.xclientRaw.push(raw);
                    conn.xclient.push(decoded);
                    const offered = capabilities.some((c) => c.toUpperCase().startsWith('XCLIENT'));
                    fallback = offered ? `220 ${name} ESMTP scripted` : '502 5.5.2 Error: command not recognized';
                    after = (sent) => {
                        if (isSuccess(sent, 220)) tx = null;
                    };
                    break;
                }
                case 'STARTTLS':
                    fallback = '454 4.7.0 TLS not available';
                    break;
                case 'MAIL': {
                    const m = /^FROM:\s*<([^>]*)>\s*(.*)$/i.exec(arg);
                    if (tx) fallback = '503 5.5.1 Error: nested MAIL command';
                    else if (!m) fallback = '501 5.5.4 Syntax: MAIL FROM:<address>';
                    else fallback = '250 2.1.0 Ok';
                    after = (sent) => {
                        if (m && !tx && sent !== null && codeOf(sent) >= 200 && codeOf(sent) < 300) {
                            tx = {
                                connection: conn.id,
                                mail: m[1] ?? '',
                                params: (m[2] ?? '').split(/\s+/).filter((p) => p !== ''),
                                rcpts: [],
                                data: null,
                                completed: false,
                                finalReply: null,
                            };
                            transactions.push(tx);
                        }
                    };
                    break;
                }
                case 'RCPT': {
                    const m = /^TO:\s*<([^>]*)>/i.exec(arg);
                    fallback = !tx
                        ? '503 5.5.1 Error: need MAIL command'
                        : m
                          ? '250 2.1.5 Ok'
                          : '501 5.5.4 Syntax: RCPT TO:<address>';
                    after = (sent) => {
                        if (tx && m && sent !== null && codeOf(sent) >= 200 && codeOf(sent) < 300)
                            tx.rcpts.push(m[1] ?? '');
                    };
                    break;
                }
                case 'DATA':
                    fallback =
                        tx && tx.rcpts.length > 0
                            ? '354 End data with <CR><LF>.<CR><LF>'
                            : '554 5.5.1 Error: no valid recipients';
                    after = (sent) => {
                        // a 354 followed by more lines (an early refusal, which some upstreams
                        // send before reading the text on): the text is still read and answered
                        if (tx && sent !== null && (typeof sent === 'string' ? sent : sent[0])?.startsWith('354')) {
                            tx.data = Buffer.alloc(0);
                            data = [];
                            dataLength = 0;
                            tail = CRLF;
                        }
                    };
                    break;
                case 'RSET':
                    fallback = '250 2.0.0 Ok';
                    after = (sent) => {
                        if (isSuccess(sent, 250)) tx = null;
                    };
                    break;
                case 'NOOP':
                    fallback = '250 2.0.0 Ok';
                    break;
                case 'QUIT':
                    fallback = '221 2.0.0 Bye';
                    after = (sent) => {
                        if (isSuccess(sent, 221)) socket.end();
                    };
                    break;
                default:
                    fallback = '502 5.5.2 Error: command not recognized';
            }
            const action = options.onCommand ? await options.onCommand(line, ctx()) : undefined;
            after(await perform(action, fallback));
        };

        const endOfData = async (): Promise<void> => {
            const t = tx;
            if (!t) return;
            t.completed = true;
            const action = options.onData ? await options.onData(t, ctx()) : undefined;
            queued += 1;
            const sent = await perform(action, `250 2.0.0 Ok: queued as SCRIPTED${queued}`);
            t.finalReply = sent === null ? null : typeof sent === 'string' ? sent : sent.join('\n');
            tx = null;
        };

        /** Consumes DATA bytes from `input`; true when the terminator was seen. */
        const takeData = (): boolean => {
            if (!tx || !data) return false;
            const chunk = input;
            input = Buffer.alloc(0);
            const window = Buffer.concat([tail, chunk]);
            const at = window.indexOf(TERMINATOR);
            // Message length up to and including the CRLF before the final dot.
            const messageLength = at < 0 ? Infinity : dataLength + 2 - tail.length + at;
            const received = dataLength + chunk.length;
            if (closeAfter !== null && received >= closeAfter && messageLength + 3 > closeAfter) {
                tx.data = Buffer.concat([...data, chunk]).subarray(0, closeAfter);
                data = null;
                socket.destroy();
                return false;
            }
            if (at < 0) {
                data.push(chunk);
                dataLength = received;
                tail = window.subarray(Math.max(0, window.length - 4));
                return false;
            }
            tx.data = Buffer.concat([...data, chunk]).subarray(0, messageLength);
            input = chunk.subarray(at + TERMINATOR.length - tail.length);
            data = null;
            closeAfter = null;
            return true;
        };

        const pump = async (): Promise<void> => {
            if (busy) return;
            busy = true;
            try {
                while (!socket.destroyed) {
                    if (data) {
                        if (!takeData()) break;
                        await endOfData();
                        continue;
                    }
                    const nl = input.indexOf(0x0a);
                    if (nl < 0) break;
                    const line = input.toString('utf8', 0, nl).replace(/\r$/, '');
                    input = input.subarray(nl + 1);
                    await command(line);
                }
            } finally {
                busy = false;
            }
        };

        socket.on('data', (chunk: Buffer) => {
            if (data === null) conn.reads.push(chunk.toString('latin1'));
            input = input.length > 0 ? Buffer.concat([input, chunk]) : chunk;
            void pump();
        });

        void (async () => {
            busy = true;
            try {
                await perform(options.greeting, `220 ${name} ESMTP scripted`);
            } finally {
                busy = false;
            }
            await pump();
        })();
    }

    return upstream;
}
