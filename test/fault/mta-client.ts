/**
 * The sending side of the fault harness: a client that behaves like a sending MTA. It keeps
 * every message until the server answered it for good: a `4xx` or a dropped connection puts the
 * message (with the recipients still pending) back in its queue for another try after a short
 * backoff; a `5xx` refuses it (or one recipient) for good and is recorded. Several sessions run
 * side by side, each sending a few messages per connection, like an MTA's delivery agents.
 * Every attempt is recorded with its timing (when the end of data was written, when the reply
 * came) so the harness can tell which messages were in flight when a fault struck.
 * It bounds everything: tries and time per message, and each wait for a reply.
 */
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

export interface RcptSpec {
    readonly address: string;
    /** What a healthy system does with it: deliver it, or refuse it with a 5xx. */
    readonly expect: 'deliver' | 'refuse';
}

export interface OutboundMessage {
    readonly n: number;
    /** The Message-ID field value, angle brackets included. */
    readonly messageId: string;
    /** A string found nowhere else, in a header field and the body. */
    readonly token: string;
    readonly from: string;
    readonly rcpts: readonly RcptSpec[];
    /** The message, canonical CRLF, not dot-stuffed. */
    readonly data: string;
}

export type RcptState = 'pending' | 'accepted' | 'refused' | 'gave-up';

export interface RcptRecord {
    state: RcptState;
    /** The final refusal (`550 5.1.1 …`) for a refused recipient. */
    refusal: string | null;
}

export interface Attempt {
    readonly start: number;
    end: number;
    /** Where the attempt ended: connect, greeting, ehlo, mail, rcpt, data, end-of-data, done. */
    step: string;
    outcome: 'accepted' | 'tempfail' | 'refused' | 'dropped';
    /** `451 4.4.1`-style code of the last reply that mattered, or null for a dropped connection. */
    code: string | null;
    reply: string | null;
    /** When the end-of-data marker was written, or null when the attempt never got there. */
    terminatorAt: number | null;
}

export interface MessageRecord {
    readonly message: OutboundMessage;
    readonly rcpts: Map<string, RcptRecord>;
    readonly attempts: Attempt[];
    readyAt: number;
    firstTry: number | null;
}

export interface ClientOptions {
    readonly port: number;
    readonly host?: string;
    /** Source addresses to spread connections over (all on loopback); default: the system's choice. */
    readonly localAddresses?: readonly string[];
    /** Sessions sending side by side. */
    readonly concurrency: number;
    readonly messagesPerConnection: number;
    /** Messages become ready evenly over this time (0: all at once). */
    readonly spreadMs: number;
    readonly backoff: { readonly baseMs: number; readonly maxMs: number };
    /** Tries per message before giving up. */
    readonly maxAttempts: number;
    /** Time from the first try after which a message is given up. */
    readonly maxMessageMs: number;
    /** Wait for each reply; the reply to the end of data waits `dataTimeoutMs`. */
    readonly commandTimeoutMs: number;
    readonly dataTimeoutMs: number;
    readonly helo?: string;
    readonly random?: () => number;
}

export interface ClientResult {
    readonly records: readonly MessageRecord[];
    readonly connections: number;
    readonly ms: number;
}

interface Reply {
    readonly code: number;
    /** `451 4.4.1` when an enhanced code follows, else `451`. */
    readonly label: string;
    readonly text: string;
}

class ConnectionLost extends Error {}

/** One SMTP connection with lock-step command/reply, as a sending MTA uses it. */
class Connection {
    private buf = '';
    private readonly replies: Reply[] = [];
    private waiter: ((r: Reply | Error) => void) | null = null;
    private lost: Error | null = null;
    readonly socket: net.Socket;

    constructor(socket: net.Socket) {
        this.socket = socket;
        socket.setEncoding('latin1');
        socket.on('data', (chunk: string) => this.onData(chunk));
        socket.on('error', (err) => this.fail(new ConnectionLost(err.message)));
        socket.on('close', () => this.fail(new ConnectionLost('connection closed')));
    }

    static open(port: number, host: string, localAddress: string | undefined, timeoutMs: number): Promise<Connection> {
        return new Promise((resolve, reject) => {
            const socket = net.connect({ port, host, ...(localAddress ? { localAddress } : {}) });
            const timer = setTimeout(() => {
                socket.destroy();
                reject(new ConnectionLost('connect timed out'));
            }, timeoutMs);
            socket.once('connect', () => {
                clearTimeout(timer);
                socket.removeAllListeners('error');
                resolve(new Connection(socket));
            });
            socket.once('error', (err) => {
                clearTimeout(timer);
                reject(new ConnectionLost(err.message));
            });
        });
    }

    private onData(chunk: string): void {
        this.buf += chunk;
        let lines: string[] = [];
        for (;;) {
            const nl = this.buf.indexOf('\n');
            if (nl < 0) break;
            const line = this.buf.slice(0, nl).replace(/\r$/, '');
            this.buf = this.buf.slice(nl + 1);
            lines.push(line);
            if (line[3] === '-') continue;
            const code = Number(line.slice(0, 3));
            const text = lines.map((l) => l.slice(4)).join(' ');
            const enhanced = /^([245]\.\d{1,3}\.\d{1,3})\b/.exec(text)?.[1];
            const reply = { code, label: enhanced ? `${code} ${enhanced}` : String(code), text };
            lines = [];
            const w = this.waiter;
            if (w) {
                this.waiter = null;
                w(reply);
            } else {
                this.replies.push(reply);
            }
        }
        if (lines.length > 0) this.buf = `${lines.join('\n')}\n${this.buf}`;
    }

    private fail(err: Error): void {
        if (this.lost) return;
        this.lost = err;
        this.socket.destroy();
        const w = this.waiter;
        this.waiter = null;
        w?.(err);
    }

    reply(timeoutMs: number): Promise<Reply> {
        const queued = this.replies.shift();
        if (queued) return Promise.resolve(queued);
        if (this.lost) return Promise.reject(this.lost);
        return new Promise((resolve, reject) => {
            const timer = setTimeout(() => this.fail(new ConnectionLost(`no reply within ${timeoutMs} ms`)), timeoutMs);
            this.waiter = (r) => {
                clearTimeout(timer);
                if (r instanceof Error) reject(r);
                else resolve(r);
            };
        });
    }

    command(line: string, timeoutMs: number): Promise<Reply> {
        if (this.lost) return Promise.reject(this.lost);
        this.socket.write(`${line}\r\n`);
        return this.reply(timeoutMs);
    }

    write(data: string): void {
        if (!this.lost) this.socket.write(data, 'utf8');
    }

    close(): void {
        this.socket.destroy();
    }
}

/** Dot-stuffs (RFC 5321 section 4.5.2) and appends the end-of-data marker. */
export function dataWithTerminator(data: string): string {
    let text = data.replace(/^\./, '..').replace(/\r\n\./g, '\r\n..');
    if (!text.endsWith('\r\n')) text += '\r\n';
    return `${text}.\r\n`;
}

export async function runClient(messages: readonly OutboundMessage[], options: ClientOptions): Promise<ClientResult> {
    const random = options.random ?? Math.random;
    const host = options.host ?? '127.0.0.1';
    const helo = options.helo ?? 'sender.harness.test';
    const started = Date.now();
    const records: MessageRecord[] = messages.map((message, i) => ({
        message,
        rcpts: new Map(message.rcpts.map((r) => [r.address, { state: 'pending', refusal: null }])),
        attempts: [],
        readyAt: started + (messages.length > 1 ? (options.spreadMs * i) / messages.length : 0),
        firstTry: null,
    }));
    let nextFresh = 0;
    const retries: MessageRecord[] = [];
    let open = records.length;
    let connections = 0;
    let addressTurn = 0;

    const pending = (r: MessageRecord): string[] =>
        [...r.rcpts].filter(([, v]) => v.state === 'pending').map(([k]) => k);

    /** A message ready now, or null. */
    const takeReady = (): MessageRecord | null => {
        const now = Date.now();
        let best = -1;
        for (let i = 0; i < retries.length; i++) {
            if (retries[i]!.readyAt <= now && (best < 0 || retries[i]!.readyAt < retries[best]!.readyAt)) best = i;
        }
        if (best >= 0) return retries.splice(best, 1)[0]!;
        const fresh = records[nextFresh];
        if (fresh && fresh.readyAt <= now) {
            nextFresh++;
            return fresh;
        }
        return null;
    };

    /** Waits for a ready message; null once every message is settled. */
    const nextReady = async (): Promise<MessageRecord | null> => {
        for (;;) {
            if (open === 0) return null;
            const r = takeReady();
            if (r) return r;
            const times = retries.map((x) => x.readyAt);
            if (records[nextFresh]) times.push(records[nextFresh]!.readyAt);
            const wait = times.length > 0 ? Math.min(...times) - Date.now() : 50;
            await sleep(Math.min(50, Math.max(1, wait)));
        }
    };

    /** After an attempt: settled, given up, or queued again after a backoff. */
    const settle = (r: MessageRecord): void => {
        const left = pending(r);
        if (left.length === 0) {
            open--;
            return;
        }
        const now = Date.now();
        if (r.attempts.length >= options.maxAttempts || now - (r.firstTry ?? now) > options.maxMessageMs) {
            for (const a of left) r.rcpts.get(a)!.state = 'gave-up';
            open--;
            return;
        }
        const exp = Math.min(options.backoff.maxMs, options.backoff.baseMs * 2 ** Math.min(10, r.attempts.length - 1));
        r.readyAt = now + exp * (0.5 + random() / 2);
        retries.push(r);
    };

    const begin = (r: MessageRecord): Attempt => {
        const now = Date.now();
        r.firstTry ??= now;
        const a: Attempt = {
            start: now,
            end: now,
            step: 'connect',
            outcome: 'dropped',
            code: null,
            reply: null,
            terminatorAt: null,
        };
        r.attempts.push(a);
        return a;
    };

    const end = (a: Attempt, outcome: Attempt['outcome'], step: string, reply: Reply | null): void => {
        a.end = Date.now();
        a.outcome = outcome;
        a.step = step;
        a.code = reply ? reply.label : null;
        a.reply = reply ? `${reply.code} ${reply.text}` : null;
    };

    const refuse = (r: MessageRecord, addresses: readonly string[], reply: Reply): void => {
        for (const a of addresses) {
            const rec = r.rcpts.get(a)!;
            rec.state = 'refused';
            rec.refusal = `${reply.code} ${reply.text}`;
        }
    };

    /** One transaction; returns false when the connection can no longer be used. */
    const transaction = async (c: Connection, r: MessageRecord): Promise<boolean> => {
        const a = begin(r);
        let step = 'mail';
        const t = options.commandTimeoutMs;
        try {
            const mail = await c.command(`MAIL FROM:<${r.message.from}>`, t);
            if (mail.code !== 250) {
                if (mail.code >= 500) refuse(r, pending(r), mail);
                end(a, mail.code >= 500 ? 'refused' : 'tempfail', step, mail);
                return mail.code !== 421;
            }
            step = 'rcpt';
            const inTx: string[] = [];
            let last: Reply | null = null;
            for (const address of pending(r)) {
                const rcpt = await c.command(`RCPT TO:<${address}>`, t);
                if (rcpt.code === 250 || rcpt.code === 251) {
                    inTx.push(address);
                    continue;
                }
                // the reply the attempt is remembered by: a 4xx (why it will be tried again) wins
                if (!last || last.code >= 500) last = rcpt;
                if (rcpt.code >= 500) refuse(r, [address], rcpt);
                if (rcpt.code === 421) {
                    end(a, 'tempfail', step, rcpt);
                    return false;
                }
            }
            if (inTx.length === 0) {
                await c.command('RSET', t);
                end(a, pending(r).length > 0 ? 'tempfail' : 'refused', step, last);
                return true;
            }
            step = 'data';
            const data = await c.command('DATA', t);
            if (data.code !== 354) {
                if (data.code >= 500) refuse(r, inTx, data);
                end(a, data.code >= 500 ? 'refused' : 'tempfail', step, data);
                return data.code !== 421;
            }
            step = 'end-of-data';
            c.write(dataWithTerminator(r.message.data));
            a.terminatorAt = Date.now();
            const done = await c.reply(options.dataTimeoutMs);
            if (done.code === 250) {
                for (const address of inTx) r.rcpts.get(address)!.state = 'accepted';
                // a recipient refused for the moment at RCPT makes the attempt a partial tempfail
                end(a, pending(r).length > 0 ? 'tempfail' : 'accepted', 'done', last ?? done);
                return true;
            }
            if (done.code >= 500) refuse(r, inTx, done);
            end(a, done.code >= 500 ? 'refused' : 'tempfail', step, done);
            return done.code !== 421;
        } catch (err) {
            if (!(err instanceof ConnectionLost)) throw err;
            end(a, 'dropped', step, null);
            return false;
        }
    };

    /** One connection: greeting, EHLO, then up to messagesPerConnection transactions. */
    const session = async (first: MessageRecord): Promise<void> => {
        const local = options.localAddresses?.length
            ? options.localAddresses[addressTurn++ % options.localAddresses.length]
            : undefined;
        connections++;
        let c: Connection;
        try {
            c = await Connection.open(options.port, host, local, options.commandTimeoutMs);
        } catch (err) {
            if (!(err instanceof ConnectionLost)) throw err;
            end(begin(first), 'dropped', 'connect', null);
            settle(first);
            return;
        }
        try {
            let r: MessageRecord | null = first;
            let step = 'greeting';
            try {
                const greeting = await c.reply(options.commandTimeoutMs);
                const ehlo = greeting.code === 220 ? await c.command(`EHLO ${helo}`, options.commandTimeoutMs) : null;
                if (ehlo) step = 'ehlo';
                const refusal = ehlo ? (ehlo.code === 250 ? null : ehlo) : greeting;
                if (refusal) {
                    // A 5xx here refuses the connection; an MTA bounces what it had for it.
                    end(begin(first), refusal.code >= 500 ? 'refused' : 'tempfail', step, refusal);
                    if (refusal.code >= 500) refuse(first, pending(first), refusal);
                    settle(first);
                    return;
                }
            } catch (err) {
                if (!(err instanceof ConnectionLost)) throw err;
                end(begin(first), 'dropped', step, null);
                settle(first);
                return;
            }
            for (let i = 0; r && i < options.messagesPerConnection; i++) {
                const usable = await transaction(c, r);
                settle(r);
                if (!usable) return;
                r = i + 1 < options.messagesPerConnection ? takeReady() : null;
            }
            await c.command('QUIT', options.commandTimeoutMs).catch(() => undefined);
        } finally {
            c.close();
        }
    };

    const worker = async (): Promise<void> => {
        for (;;) {
            const r = await nextReady();
            if (!r) return;
            await session(r);
        }
    };
    await Promise.all(Array.from({ length: options.concurrency }, () => worker()));
    return { records, connections, ms: Date.now() - started };
}
