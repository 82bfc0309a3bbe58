/**
 * A fault-injecting SMTP proxy for the fault harness: it sits between mailwarden and the real
 * Postfix on loopback and passes every byte through, except where its policy asks for a fault
 * at one point of one connection:
 *   - `cut`: both connections are closed at once (after `afterBytes` message bytes for `mid-data`);
 *   - `stall`: nothing more is passed in either direction; the connections stay open until one
 *     side gives up and closes, then the other is closed too;
 *   - `reply`: the proxy answers the command itself with the given reply instead of passing it on
 *     (a `421` then closes both connections, as Postfix does).
 * Points: `greeting`, `ehlo`, `xclient`, `mail`, `rcpt`, `data` (the commands), `mid-data` (inside
 * the message), `end-of-data` (the terminator is held back: Postfix never sees the end) and
 * `after-end-of-data` (the terminator is passed on and Postfix's answer is then stalled or cut:
 * Postfix holds the message but mailwarden never hears so).
 * The proxy relies on mailwarden's lock-step dialogue (one command, one reply, no PIPELINING).
 * Test code only: it listens on 127.0.0.1 only, and close() ends every connection it holds.
 */
import net from 'node:net';

export type ProxyPoint =
    | 'greeting'
    | 'ehlo'
    | 'xclient'
    | 'mail'
    | 'rcpt'
    | 'data'
    | 'mid-data'
    | 'end-of-data'
    | 'after-end-of-data';

export type ProxyAction =
    /** `afterBytes`: at `mid-data`, how many message bytes pass before the fault (default 1). */
    | { readonly kind: 'cut'; readonly afterBytes?: number }
    | { readonly kind: 'stall'; readonly afterBytes?: number }
    /** Not at `mid-data` or `after-end-of-data`, where there is no command to answer. */
    | { readonly kind: 'reply'; readonly reply: string };

/** Chooses the fault (or none) for each point of each connection (1, 2, …). */
export type ProxyPolicy = (point: ProxyPoint, connection: number) => ProxyAction | null;

export interface SmtpFaultProxy {
    readonly port: number;
    /** Faults injected so far, by `kind:point` (`stall:mail`, `reply-421:rcpt`, `cut:mid-data`, …). */
    readonly injected: Readonly<Record<string, number>>;
    readonly connections: number;
    setPolicy(policy: ProxyPolicy | null): void;
    /** Closes every open connection pair (both sides). */
    dropAll(): void;
    close(): Promise<void>;
}

const COMMAND_POINTS: Readonly<Record<string, ProxyPoint>> = {
    EHLO: 'ehlo',
    HELO: 'ehlo',
    XCLIENT: 'xclient',
    MAIL: 'mail',
    RCPT: 'rcpt',
    DATA: 'data',
};

const TERMINATOR = Buffer.from('\r\n.\r\n');

export async function startSmtpFaultProxy(target: { host: string; port: number }): Promise<SmtpFaultProxy> {
    let policy: ProxyPolicy | null = null;
    let count = 0;
    const injected: Record<string, number> = {};
    const pairs = new Set<{ down: net.Socket; up: net.Socket }>();
    const note = (action: ProxyAction, point: ProxyPoint): void => {
        const label = `${action.kind === 'reply' ? `reply-${action.reply.slice(0, 3)}` : action.kind}:${point}`;
        injected[label] = (injected[label] ?? 0) + 1;
    };

    const server = net.createServer((down) => {
        const id = ++count;
        const up = net.connect({ host: target.host, port: target.port });
        up.setNoDelay(true);
        down.setNoDelay(true);
        const pair = { down, up };
        pairs.add(pair);
        let stalled = false;
        let closed = false;
        /** Postfix's side is gone (after an injected end-of-data reply): later commands get 421. */
        let orphan = false;
        let commandBuf = '';
        let replyBuf = '';
        let pendingVerb: string | null = 'GREETING';
        let inData = false;
        /** The last bytes of message data seen, to find the terminator across chunks. */
        let tail = Buffer.from('\r\n');
        let dataBytes = 0;
        /** The fault chosen for this message at `mid-data`, and after how many bytes it strikes. */
        let midData: { kind: 'cut' | 'stall'; at: number } | null = null;
        let afterEnd: ProxyAction | null = null;

        const closeBoth = (): void => {
            if (closed) return;
            closed = true;
            pairs.delete(pair);
            down.destroy();
            up.destroy();
        };
        const choose = (point: ProxyPoint): ProxyAction | null => {
            const action = policy?.(point, id) ?? null;
            if (action) note(action, point);
            return action;
        };
        /** Applies a command-point action; true when the command must not be passed on. */
        const apply = (action: ProxyAction): boolean => {
            if (action.kind === 'cut') {
                closeBoth();
            } else if (action.kind === 'stall') {
                stalled = true;
            } else {
                answer(action.reply);
            }
            return true;
        };
        /** Answers mailwarden in Postfix's place; after a 421 both connections close, as Postfix does. */
        const answer = (reply: string): void => {
            if (!reply.startsWith('421')) {
                down.write(`${reply}\r\n`);
                return;
            }
            closed = true;
            pairs.delete(pair);
            down.end(`${reply}\r\n`);
            up.destroy();
        };

        for (const s of [down, up]) {
            s.on('error', () => {
                if (!(s === up && orphan)) closeBoth();
            });
            s.on('close', () => {
                if (!(s === up && orphan)) closeBoth();
            });
        }

        up.on('data', (chunk: Buffer) => {
            if (closed || stalled) return;
            if (afterEnd) {
                // Postfix answered the end of data; mailwarden never hears it.
                if (afterEnd.kind === 'cut') closeBoth();
                else stalled = true;
                return;
            }
            replyBuf += chunk.toString('latin1');
            let out = '';
            for (;;) {
                const nl = replyBuf.indexOf('\n');
                if (nl < 0) break;
                const line = replyBuf.slice(0, nl + 1);
                replyBuf = replyBuf.slice(nl + 1);
                if (line[3] === '-') {
                    out += line;
                    continue;
                }
                // A complete reply to pendingVerb.
                if (pendingVerb === 'GREETING') {
                    const action = choose('greeting');
                    if (action) {
                        apply(action);
                        return;
                    }
                }
                if (pendingVerb === 'DATA' && line.startsWith('354')) {
                    inData = true;
                    tail = Buffer.from('\r\n');
                    dataBytes = 0;
                    const action = choose('mid-data');
                    midData =
                        action && action.kind !== 'reply'
                            ? { kind: action.kind, at: Math.max(1, action.afterBytes ?? 1) }
                            : null;
                }
                pendingVerb = null;
                out += line;
            }
            if (out) down.write(out);
        });

        const onCommand = (line: string): void => {
            if (orphan) {
                down.write('421 4.4.2 connection to the mail system lost\r\n');
                closeBoth();
                return;
            }
            const verb = (/^[A-Za-z]+/.exec(line)?.[0] ?? '').toUpperCase();
            const point = COMMAND_POINTS[verb];
            if (point) {
                const action = choose(point);
                if (action && apply(action)) return;
            }
            pendingVerb = verb;
            up.write(`${line}\r\n`);
        };

        const onData = (chunk: Buffer): void => {
            // Looks for the terminator in what came before plus this chunk.
            const joined = Buffer.concat([tail, chunk]);
            const at = joined.indexOf(TERMINATOR);
            const end = at < 0 ? -1 : at + TERMINATOR.length - tail.length;
            const body = end < 0 ? chunk : chunk.subarray(0, end);
            if (midData && dataBytes + body.length > midData.at) {
                // At least the last byte of the terminator is held back: Postfix never sees the end.
                up.write(body.subarray(0, Math.max(0, midData.at - dataBytes)));
                if (midData.kind === 'cut') closeBoth();
                else stalled = true;
                return;
            }
            dataBytes += body.length;
            if (end < 0) {
                up.write(chunk);
                tail = Buffer.from(joined.subarray(Math.max(0, joined.length - 4)));
                return;
            }
            inData = false;
            const hold = choose('end-of-data');
            if (hold) {
                // Postfix never gets the terminator.
                up.write(body.subarray(0, body.length - 3));
                if (hold.kind === 'reply') {
                    // Postfix's session is left in the middle of DATA: it goes away, and the
                    // proxy answers whatever mailwarden sends next with 421, as a Postfix would
                    // whose connection was lost.
                    if (!hold.reply.startsWith('421')) orphan = true;
                    answer(hold.reply);
                    up.destroy();
                } else if (hold.kind === 'cut') {
                    closeBoth();
                } else {
                    stalled = true;
                }
                return;
            }
            afterEnd = choose('after-end-of-data');
            pendingVerb = 'END';
            up.write(body);
            const rest = chunk.subarray(end);
            if (rest.length > 0) feedCommands(rest);
        };

        const feedCommands = (chunk: Buffer): void => {
            commandBuf += chunk.toString('latin1');
            for (;;) {
                if (closed || stalled || inData) return;
                const nl = commandBuf.indexOf('\r\n');
                if (nl < 0) return;
                const line = commandBuf.slice(0, nl);
                commandBuf = commandBuf.slice(nl + 2);
                onCommand(line);
            }
        };

        down.on('data', (chunk: Buffer) => {
            if (closed || stalled) return;
            if (inData) onData(chunk);
            else feedCommands(chunk);
        });
    });

    await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(0, '127.0.0.1', () => resolve());
    });
    const port = (server.address() as net.AddressInfo).port;

    return {
        port,
        injected,
        get connections() {
            return count;
        },
        setPolicy(p) {
            policy = p;
        },
        dropAll() {
            for (const p of [...pairs]) {
                p.down.destroy();
                p.up.destroy();
            }
            pairs.clear();
        },
        async close() {
            for (const p of [...pairs]) {
                p.down.destroy();
                p.up.destroy();
            }
            pairs.clear();
            await new Promise<void>((resolve) => server.close(() => resolve()));
        },
    };
}
