/**
 * One DNS exchange with one server: a query over UDP (RFC 1035 section 4.2.1) or TCP with
 * the two-octet length prefix (RFC 1035 section 4.2.2, RFC 7766). Each UDP query gets a
 * fresh socket, so a fresh kernel-chosen random source port, and a fresh random 16-bit ID;
 * a datagram is accepted only when it comes from the server's address and port and echoes
 * the ID and the question (RFC 5452 sections 4.1 and 9.1); anything else is dropped and
 * waited past. These functions never retry, never switch servers and never cache: that
 * is the resolver's job.
 */
import dgram from 'node:dgram';
import net from 'node:net';
import { randomInt } from 'node:crypto';
import dnsPacket, { type DecodedPacket, type Packet, type RecordType } from 'dns-packet';
import type { DnsErrorCode } from './errors.ts';
import type { ServerAddress } from './names.ts';

/** RFC 6891 EDNS(0) UDP payload size; 1232 avoids IP fragmentation on any path (DNS Flag Day 2020). */
export const EDNS_UDP_SIZE = 1232;

export interface Question {
    /** Lower-case, no trailing dot. */
    readonly name: string;
    readonly type: RecordType;
}

/** Rejection of an exchange: a node:dns code, never a raw socket error. */
export class ExchangeError extends Error {
    readonly code: DnsErrorCode;
    constructor(code: DnsErrorCode) {
        super(code);
        this.code = code;
    }
}

function buildQuery(id: number, q: Question, edns: boolean): Buffer {
    const packet: Packet = {
        type: 'query',
        id,
        flags: dnsPacket.RECURSION_DESIRED,
        questions: [{ name: q.name, type: q.type, class: 'IN' }],
        additionals: edns
            ? [
                  {
                      type: 'OPT',
                      name: '.',
                      udpPayloadSize: EDNS_UDP_SIZE,
                      extendedRcode: 0,
                      ednsVersion: 0,
                      flags: 0,
                      flag_do: false,
                      options: [],
                  },
              ]
            : [],
    };
    return dnsPacket.encode(packet);
}

/** RFC 5452 section 9.1: the answer must carry our ID and repeat our question. */
function matches(p: DecodedPacket, id: number, q: Question): boolean {
    if (!p.flag_qr || p.id !== id) return false;
    const question = p.questions?.[0];
    if (p.questions?.length !== 1 || !question) return false;
    return question.name.toLowerCase() === q.name && question.type === q.type && question.class === 'IN';
}

function decode(buf: Buffer): DecodedPacket | null {
    try {
        return dnsPacket.decode(buf);
    } catch {
        return null;
    }
}

function abortError(): ExchangeError {
    return new ExchangeError('ECANCELLED');
}

type Finish = (err: ExchangeError | null, packet?: DecodedPacket) => void;

/**
 * The life of one exchange, common to UDP and TCP: the promise settles once, on the first of
 * an answer, an error, the timeout or the caller's abort; then the timer and the abort
 * listener are removed and `close` releases the socket.
 */
function exchange(
    opts: { timeoutMs: number; signal: AbortSignal },
    start: (finish: Finish) => () => void,
): Promise<DecodedPacket> {
    return new Promise((resolve, reject) => {
        if (opts.signal.aborted) return reject(abortError());
        let done = false;
        let close: () => void = () => undefined;
        const finish: Finish = (err, packet) => {
            if (done) return;
            done = true;
            clearTimeout(timer);
            opts.signal.removeEventListener('abort', onAbort);
            close();
            if (err) reject(err);
            else resolve(packet as DecodedPacket);
        };
        const onAbort = (): void => finish(abortError());
        const timer = setTimeout(() => finish(new ExchangeError('ETIMEOUT')), opts.timeoutMs);
        opts.signal.addEventListener('abort', onAbort);
        close = start(finish);
        if (done) close();
    });
}

/** Sends `q` over UDP and waits up to `timeoutMs` for a matching answer. */
export function udpExchange(
    server: ServerAddress,
    q: Question,
    opts: { timeoutMs: number; edns: boolean; signal: AbortSignal },
): Promise<DecodedPacket> {
    return exchange(opts, (finish) => {
        const id = randomInt(0, 0x10000);
        const query = buildQuery(id, q, opts.edns);
        const socket = dgram.createSocket(server.family === 6 ? 'udp6' : 'udp4');
        let sent = false;
        // A connected socket also receives the ICMP "port unreachable" of a closed port as ECONNREFUSED.
        socket.on('error', () => finish(new ExchangeError('ECONNREFUSED')));
        socket.on('message', (msg, rinfo) => {
            if (rinfo.address !== server.host || rinfo.port !== server.port) return;
            const packet = decode(msg);
            if (packet && matches(packet, id, q)) finish(null, packet);
        });
        socket.connect(server.port, server.host, () => {
            if (sent) return;
            sent = true;
            socket.send(query, (err) => {
                if (err) finish(new ExchangeError('ECONNREFUSED'));
            });
        });
        return () => {
            sent = true;
            socket.close();
        };
    });
}

/** Sends `q` over a new TCP connection (RFC 7766 section 8 framing) and reads one answer. */
export function tcpExchange(
    server: ServerAddress,
    q: Question,
    opts: { timeoutMs: number; edns: boolean; signal: AbortSignal },
): Promise<DecodedPacket> {
    return exchange(opts, (finish) => {
        const id = randomInt(0, 0x10000);
        const query = buildQuery(id, q, opts.edns);
        const frame = Buffer.alloc(2 + query.length);
        frame.writeUInt16BE(query.length, 0);
        query.copy(frame, 2);
        const socket = net.connect({ host: server.host, port: server.port });
        let received = Buffer.alloc(0);
        socket.setNoDelay(true);
        socket.on('connect', () => socket.write(frame));
        socket.on('error', () => finish(new ExchangeError('ECONNREFUSED')));
        socket.on('close', () => finish(new ExchangeError('EBADRESP')));
        socket.on('data', (chunk: Buffer) => {
            received = Buffer.concat([received, chunk]);
            if (received.length < 2) return;
            const size = received.readUInt16BE(0);
            if (received.length < 2 + size) return;
            const packet = decode(received.subarray(2, 2 + size));
            if (packet && matches(packet, id, q)) finish(null, packet);
            else finish(new ExchangeError('EBADRESP'));
        });
        return () => socket.destroy();
    });
}
