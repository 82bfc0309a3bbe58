/**
 * The benchmark's SMTP sink, run as a child process of scripts/bench.ts: answers every
 * command with success as fast as it can (RFC 5321 replies, with enhanced status codes),
 * takes XCLIENT the way Postfix does (a fresh 220 greeting, XCLIENT_README), accepts
 * pipelined commands, and remembers the Message-ID of each message it received, so the bench
 * can tell which messages arrived, and counts the connections it was opened, so the bench can
 * tell how many upstream connections a message cost. Over the IPC channel: it sends
 * `{ type: 'ready', port }` once listening, and answers `{ type: 'take' }` with
 * `{ type: 'taken', ids, connections }`, the Message-IDs received and connections accepted
 * since the last take.
 *
 * It must listen on loopback only, store no message text, and exit when its parent goes away.
 */
import net from 'node:net';
import { fileURLToPath } from 'node:url';

const HOST = 'sink.test';
const EHLO_LINES = [
    HOST,
    'PIPELINING',
    'SIZE 104857600',
    '8BITMIME',
    'ENHANCEDSTATUSCODES',
    'SMTPUTF8',
    'XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT',
];
const EHLO_REPLY = EHLO_LINES.map((l, i) => `250${i === EHLO_LINES.length - 1 ? ' ' : '-'}${l}\r\n`).join('');
const END = Buffer.from('\r\n.\r\n', 'latin1');
/** Bytes of a message's start searched for its Message-ID. */
const HEAD_LIMIT = 64 * 1024;

/** The Message-ID (without brackets) of a header section, or '' when it has none. */
export function messageIdOf(head: string): string {
    const end = head.indexOf('\r\n\r\n');
    const section = end >= 0 ? head.slice(0, end + 2) : head;
    const m = /(?:^|\r\n)message-id:[ \t]*(?:\r\n[ \t]+)?<([^>\r\n]*)>/i.exec(section);
    return m ? m[1]! : '';
}

export interface Sink {
    readonly server: net.Server;
    /** The Message-IDs received since the last take, in order of arrival. */
    take(): string[];
    /** Connections accepted since the last call. */
    takeConnections(): number;
}

/** A sink server (not yet listening). */
export function createSink(): Sink {
    let received: string[] = [];
    let queued = 0;
    let connections = 0;
    const server = net.createServer((socket) => {
        connections++;
        serve(socket);
    });
    const takeConnections = (): number => {
        const n = connections;
        connections = 0;
        return n;
    };
    const take = (): string[] => {
        const ids = received;
        received = [];
        return ids;
    };

    function serve(socket: net.Socket): void {
        socket.setNoDelay(true);
        let inData = false;
        let pending = '';
        // while in DATA: the last bytes seen (to find the terminator across chunks) and the head collected so far
        let tail = Buffer.alloc(0);
        let head: Buffer[] = [];
        let headBytes = 0;

        const command = (line: string): string => {
            const verb = line.slice(0, line.indexOf(' ') < 0 ? line.length : line.indexOf(' ')).toUpperCase();
            switch (verb) {
                case 'EHLO':
                    return EHLO_REPLY;
                case 'HELO':
                    return `250 ${HOST}\r\n`;
                case 'XCLIENT':
                    return `220 ${HOST} ESMTP bench sink\r\n`;
                case 'MAIL':
                    return '250 2.1.0 Ok\r\n';
                case 'RCPT':
                    return '250 2.1.5 Ok\r\n';
                case 'DATA':
                    inData = true;
                    tail = Buffer.from('\r\n', 'latin1'); // the CRLF that ended DATA precedes the first line
                    head = [];
                    headBytes = 0;
                    return '354 End data with <CR><LF>.<CR><LF>\r\n';
                case 'RSET':
                case 'NOOP':
                    return '250 2.0.0 Ok\r\n';
                case 'QUIT':
                    return '221 2.0.0 Bye\r\n';
                default:
                    return '502 5.5.2 Error: command not recognized\r\n';
            }
        };

        /** Handles command lines in `pending`; returns the replies and whether QUIT was seen. Stops when DATA begins. */
        const commands = (): { out: string; quit: boolean } => {
            let out = '';
            for (;;) {
                const nl = pending.indexOf('\r\n');
                if (nl < 0) return { out, quit: false };
                const line = pending.slice(0, nl);
                pending = pending.slice(nl + 2);
                out += command(line);
                if (/^quit$/i.test(line)) return { out, quit: true };
                if (inData) return { out, quit: false };
            }
        };

        const onData = (chunk: Buffer): void => {
            let out = '';
            let rest: Buffer | null = chunk;
            while (rest !== null && rest.length > 0) {
                if (inData) {
                    const joined = Buffer.concat([tail, rest]);
                    if (headBytes < HEAD_LIMIT) {
                        head.push(rest);
                        headBytes += rest.length;
                    }
                    const at = joined.indexOf(END);
                    if (at < 0) {
                        tail = joined.subarray(Math.max(0, joined.length - (END.length - 1)));
                        rest = null;
                        continue;
                    }
                    const after = at + END.length - tail.length; // offset in `rest` just past the terminator
                    inData = false;
                    received.push(messageIdOf(Buffer.concat(head).subarray(0, HEAD_LIMIT).toString('latin1')));
                    out += `250 2.0.0 Ok: queued as ${(++queued).toString(16).toUpperCase()}\r\n`;
                    rest = rest.subarray(after);
                    continue;
                }
                pending += rest.toString('latin1');
                rest = null;
                const r = commands();
                out += r.out;
                if (r.quit) {
                    socket.end(out);
                    return;
                }
                if (inData && pending.length > 0) {
                    rest = Buffer.from(pending, 'latin1');
                    pending = '';
                }
            }
            if (out) socket.write(out);
        };

        socket.on('data', onData);
        socket.on('error', () => socket.destroy());
        socket.write(`220 ${HOST} ESMTP bench sink\r\n`);
    }

    return { server, take, takeConnections };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
    const sink = createSink();
    sink.server.listen(0, '127.0.0.1', () => {
        const address = sink.server.address();
        process.send?.({ type: 'ready', port: typeof address === 'object' && address ? address.port : 0 });
    });
    process.on('message', (msg: { type?: string }) => {
        if (msg.type === 'take')
            process.send?.({ type: 'taken', ids: sink.take(), connections: sink.takeConnections() });
    });
    process.on('disconnect', () => process.exit(0));
    process.on('SIGTERM', () => process.exit(0));
    process.on('SIGINT', () => process.exit(0));
}
