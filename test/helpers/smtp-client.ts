/**
 * A tiny promise-based SMTP client for tests: it speaks the dialog over a raw socket and
 * writes exactly the bytes it is given, so tests can send malformed input (bare LF, bare CR,
 * smuggling sequences). It must not fix, normalise or dot-stuff anything passed to `write()`,
 * and it has no retry logic: a test sees exactly what the server answered.
 */
import net from 'node:net';
import tls from 'node:tls';

export interface SmtpReply {
    readonly code: number;
    /** The text of each line, without the code and its separator. */
    readonly lines: readonly string[];
    /** `lines` joined with `\n`. */
    readonly text: string;
    /** The reply exactly as received, CRLFs included. */
    readonly raw: string;
}

export interface ConnectOptions {
    host?: string;
    /** `implicit`: TLS from the first byte (port 465 style). */
    tls?: 'implicit';
    /** CA certificate(s) to verify the server with; without it, verification is off. */
    ca?: string | Buffer | (string | Buffer)[];
    servername?: string;
    /** Default timeout for each reply, in milliseconds. */
    timeoutMs?: number;
    /** Source address to connect from (any 127.x.y.z works on Linux loopback). */
    localAddress?: string;
}

export interface StartTlsOptions {
    ca?: string | Buffer | (string | Buffer)[];
    rejectUnauthorized?: boolean;
    servername?: string;
}

export interface SmtpClient {
    /** The socket currently in use (the TLS socket after STARTTLS). */
    readonly socket: net.Socket;
    /** True once the server or the client closed the connection. */
    readonly closed: boolean;
    greeting(timeoutMs?: number): Promise<SmtpReply>;
    /** Writes `line` plus CRLF and waits for the reply. */
    cmd(line: string, timeoutMs?: number): Promise<SmtpReply>;
    /** Writes the bytes exactly as given (a string as its UTF-8 bytes). */
    write(raw: string | Buffer): void;
    /** Waits for the next complete reply. */
    reply(timeoutMs?: number): Promise<SmtpReply>;
    /** Sends STARTTLS; on 220 upgrades the connection. Returns the server's answer either way. */
    starttls(options?: StartTlsOptions): Promise<SmtpReply>;
    /** Resolves when the connection is closed (by either side). */
    waitClosed(timeoutMs?: number): Promise<void>;
    close(): void;
}

const DEFAULT_TIMEOUT_MS = 10_000;

/** Finds a free TCP port on the loopback interface by binding port 0 and releasing it. */
export async function freePort(host = '127.0.0.1'): Promise<number> {
    return new Promise((resolve, reject) => {
        const server = net.createServer();
        server.unref();
        server.once('error', reject);
        server.listen(0, host, () => {
            const address = server.address();
            const port = typeof address === 'object' && address !== null ? address.port : 0;
            server.close(() => resolve(port));
        });
    });
}

/** Opens a connection; the greeting is read with `greeting()`. */
export async function smtpConnect(port: number, options: ConnectOptions = {}): Promise<SmtpClient> {
    const host = options.host ?? '127.0.0.1';
    const defaultTimeout = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const socket = await new Promise<net.Socket>((resolve, reject) => {
        const s =
            options.tls === 'implicit'
                ? tls.connect({
                      host,
                      port,
                      // a source address needs a socket of our own underneath
                      ...(options.localAddress
                          ? { socket: net.connect({ host, port, localAddress: options.localAddress }) }
                          : {}),
                      ca: options.ca,
                      rejectUnauthorized: options.ca !== undefined,
                      servername: options.servername ?? (net.isIP(host) ? undefined : host),
                  })
                : net.connect({ host, port, localAddress: options.localAddress });
        const ready = options.tls === 'implicit' ? 'secureConnect' : 'connect';
        s.once(ready, () => {
            s.off('error', reject);
            resolve(s);
        });
        s.once('error', reject);
    });
    return new Client(socket, defaultTimeout);
}

class Client implements SmtpClient {
    socket: net.Socket;
    closed = false;
    #buffer = '';
    #replies: SmtpReply[] = [];
    #waiters: { resolve: (r: SmtpReply) => void; reject: (e: Error) => void }[] = [];
    #closeWaiters: (() => void)[] = [];
    #error: Error | null = null;
    readonly #timeout: number;

    constructor(socket: net.Socket, timeoutMs: number) {
        this.socket = socket;
        this.#timeout = timeoutMs;
        this.#attach(socket);
    }

    #attach(socket: net.Socket): void {
        socket.setEncoding('utf8');
        socket.on('data', this.#onData);
        socket.on('error', this.#onError);
        socket.on('close', this.#onClose);
    }

    #detach(socket: net.Socket): void {
        socket.off('data', this.#onData);
        socket.off('error', this.#onError);
        socket.off('close', this.#onClose);
    }

    readonly #onData = (chunk: string): void => {
        this.#buffer += chunk;
        let lines: string[] = [];
        for (;;) {
            const end = this.#buffer.indexOf('\n');
            if (end < 0) break;
            const line = this.#buffer.slice(0, end + 1);
            this.#buffer = this.#buffer.slice(end + 1);
            lines.push(line);
            const text = line.replace(/\r?\n$/, '');
            if (text.length <= 3 || text[3] !== '-') {
                this.#push(lines);
                lines = [];
            }
        }
        // A partial multi-line reply stays in the buffer until its last line arrives.
        if (lines.length > 0) this.#buffer = lines.join('') + this.#buffer;
    };

    #push(rawLines: string[]): void {
        const stripped = rawLines.map((l) => l.replace(/\r?\n$/, ''));
        const first = stripped[0] ?? '';
        const lines = stripped.map((l) => l.slice(4));
        const reply: SmtpReply = {
            code: Number.parseInt(first.slice(0, 3), 10),
            lines,
            text: lines.join('\n'),
            raw: rawLines.join(''),
        };
        const waiter = this.#waiters.shift();
        if (waiter) waiter.resolve(reply);
        else this.#replies.push(reply);
    }

    readonly #onError = (error: Error): void => {
        this.#error = error;
    };

    readonly #onClose = (): void => {
        this.closed = true;
        const error = new Error(
            `connection closed before a reply${this.#error ? ` (${this.#error.message})` : ''}` +
                (this.#buffer ? `; partial data: ${JSON.stringify(this.#buffer)}` : ''),
        );
        for (const waiter of this.#waiters.splice(0)) waiter.reject(error);
        for (const done of this.#closeWaiters.splice(0)) done();
    };

    greeting(timeoutMs?: number): Promise<SmtpReply> {
        return this.reply(timeoutMs);
    }

    reply(timeoutMs = this.#timeout): Promise<SmtpReply> {
        const queued = this.#replies.shift();
        if (queued) return Promise.resolve(queued);
        if (this.closed) return Promise.reject(new Error('connection is closed'));
        return new Promise((resolve, reject) => {
            const waiter = {
                resolve: (r: SmtpReply) => {
                    clearTimeout(timer);
                    resolve(r);
                },
                reject: (e: Error) => {
                    clearTimeout(timer);
                    reject(e);
                },
            };
            const timer = setTimeout(() => {
                const i = this.#waiters.indexOf(waiter);
                if (i >= 0) this.#waiters.splice(i, 1);
                reject(new Error(`no reply within ${timeoutMs} ms; buffered: ${JSON.stringify(this.#buffer)}`));
            }, timeoutMs);
            this.#waiters.push(waiter);
        });
    }

    write(raw: string | Buffer): void {
        this.socket.write(raw);
    }

    async cmd(line: string, timeoutMs?: number): Promise<SmtpReply> {
        this.write(`${line}\r\n`);
        return this.reply(timeoutMs);
    }

    async starttls(options: StartTlsOptions = {}): Promise<SmtpReply> {
        const answer = await this.cmd('STARTTLS');
        if (answer.code !== 220) return answer;
        const plain = this.socket;
        this.#detach(plain);
        // Anything the server sent after its 220 and before the handshake is discarded (RFC 3207).
        this.#buffer = '';
        this.#replies = [];
        const secure = await new Promise<tls.TLSSocket>((resolve, reject) => {
            const s = tls.connect({
                socket: plain,
                ca: options.ca,
                rejectUnauthorized: options.rejectUnauthorized ?? options.ca !== undefined,
                servername: options.servername,
            });
            s.once('secureConnect', () => {
                s.off('error', reject);
                resolve(s);
            });
            s.once('error', reject);
        });
        this.socket = secure;
        this.#attach(secure);
        return answer;
    }

    waitClosed(timeoutMs = this.#timeout): Promise<void> {
        if (this.closed) return Promise.resolve();
        return new Promise((resolve, reject) => {
            const timer = setTimeout(() => reject(new Error(`connection still open after ${timeoutMs} ms`)), timeoutMs);
            this.#closeWaiters.push(() => {
                clearTimeout(timer);
                resolve();
            });
        });
    }

    close(): void {
        this.socket.destroy();
    }
}

export interface SendMailOptions {
    from: string;
    to: readonly string[];
    /**
     * The message. Written as given, except that lines starting with a dot after a CRLF are
     * dot-stuffed and the terminator is appended (after a CRLF when the data lacks one).
     */
    data: string | Buffer;
    helo?: string;
    host?: string;
    /** Attributes of an XCLIENT command sent after EHLO (followed by a new EHLO). */
    xclient?: string;
    timeoutMs?: number;
    /** Source address of the connection (any of 127.0.0.0/8 on loopback). */
    localAddress?: string;
}

export interface SendMailResult {
    greeting: SmtpReply;
    ehlo: SmtpReply;
    xclient?: SmtpReply;
    mail: SmtpReply;
    rcpt: SmtpReply[];
    /** The answer to DATA (354), when at least one recipient was accepted. */
    data?: SmtpReply;
    /** The answer after the message and its terminator. */
    message?: SmtpReply;
    quit?: SmtpReply;
}

/** One message on one connection: EHLO, [XCLIENT, EHLO], MAIL, RCPT…, DATA, QUIT. */
export async function sendMail(port: number, options: SendMailOptions): Promise<SendMailResult> {
    const client = await smtpConnect(port, {
        host: options.host,
        timeoutMs: options.timeoutMs,
        ...(options.localAddress ? { localAddress: options.localAddress } : {}),
    });
    try {
        const helo = options.helo ?? 'client.example';
        const greeting = await client.greeting();
        let ehlo = await client.cmd(`EHLO ${helo}`);
        let xclient: SmtpReply | undefined;
        if (options.xclient !== undefined) {
            xclient = await client.cmd(`XCLIENT ${options.xclient}`);
            ehlo = await client.cmd(`EHLO ${helo}`);
        }
        const mail = await client.cmd(`MAIL FROM:<${options.from}>`);
        const result: SendMailResult = { greeting, ehlo, mail, rcpt: [] };
        if (xclient) result.xclient = xclient;
        if (result.mail.code !== 250) return result;
        for (const rcpt of options.to) result.rcpt.push(await client.cmd(`RCPT TO:<${rcpt}>`));
        if (result.rcpt.some((r) => r.code === 250 || r.code === 251)) {
            result.data = await client.cmd('DATA');
            if (result.data.code === 354) {
                client.write(dotStuff(options.data));
                result.message = await client.reply();
            }
        }
        result.quit = await client.cmd('QUIT').catch(() => undefined);
        return result;
    } finally {
        client.close();
    }
}

function dotStuff(data: string | Buffer): Buffer {
    let text = typeof data === 'string' ? data : data.toString('latin1');
    text = text.replace(/^\./, '..').replace(/\r\n\./g, '\r\n..');
    if (!text.endsWith('\r\n')) text += '\r\n';
    return Buffer.from(`${text}.\r\n`, typeof data === 'string' ? 'utf8' : 'latin1');
}
