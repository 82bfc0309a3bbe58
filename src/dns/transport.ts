/**
 * One DNS exchange with one server: a query over UDP (RFC 1035 section 4.2.1) or TCP with
 * the two-octet length prefix (RFC 1035 section 4.2.2, RFC 7766). Each UDP query gets a
 * fresh socket, so a fresh kernel-chosen random source port, and a fresh random 16-bit ID;
 * a datagram is accepted only when it comes from the server's address and port and echoes
 * the ID and the question (RFC 5452 sections 4.1 and 9.1); anything else is dropped and
 * waited past. An answer that passes those checks but whose records do not parse, or whose
 * record data is not exactly RDLENGTH octets long (RFC 1035 section 4.1.3), ends the
 * exchange with EBADRESP: it is never read as some other set of records (nor is a name that
 * follows more than MAX_NAME_POINTERS compression pointers: dns-packet's name reader, which every
 * record decoder calls, is wrapped here to refuse one). These functions
 * never retry, never switch servers and never cache: that is the resolver's job.
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

/** dns-packet's per-part codecs (not in its type definitions): each sets `decode.bytes` to what it read. */
interface PartCodec<T> {
    decode: ((buf: Buffer, offset: number) => T) & { bytes: number };
}
const wire = dnsPacket as unknown as {
    question: PartCodec<NonNullable<DecodedPacket['questions']>[number]>;
    answer: PartCodec<NonNullable<DecodedPacket['answers']>[number]>;
};

const HEADER_SIZE = 12;

/**
 * Most compression pointers followed in one name. A name has at most 127 labels, and a
 * compressor points once to a suffix already written; dns-packet follows any chain of backward
 * pointers, and a 64 KB answer of pointers to pointers made it follow 33 million (180 ms of CPU).
 */
export const MAX_NAME_POINTERS = 128;

/**
 * The pointers a name at `offset` follows, counted up to MAX_NAME_POINTERS + 1. The walk stops
 * where dns-packet's own reading fails (a name over 255 octets, a label type it does not know,
 * the end of the packet), so it costs at most a name's worth of steps.
 */
export function namePointers(buf: Buffer, offset: number): number {
    let at = offset;
    let pointers = 0;
    let octets = 0;
    while (at < buf.length) {
        const len = buf[at] ?? 0;
        if (len === 0) return pointers;
        if ((len & 0xc0) === 0xc0) {
            if (++pointers > MAX_NAME_POINTERS || at + 1 >= buf.length) return pointers;
            at = buf.readUInt16BE(at) - 0xc000;
        } else if ((len & 0xc0) === 0 && (octets += len + 1) <= 255) {
            at += 1 + len;
        } else {
            return pointers;
        }
    }
    return pointers;
}

// dns-packet reads every name, of the records and inside their data, through this one function:
// a name that follows too many pointers is refused before it is read
const nameCodec = (dnsPacket as unknown as { name: { decode: NameDecode } }).name;
type NameDecode = ((buf: Buffer, offset?: number, opts?: object) => string) & { bytes: number };
const decodeName = nameCodec.decode;
const boundedDecodeName = ((buf: Buffer, offset = 0, opts?: object): string => {
    if (namePointers(buf, offset) > MAX_NAME_POINTERS) {
        throw new Error('Cannot decode name (too many compression pointers)');
    }
    // the decoder records what it read in `name.decode.bytes`, which is this function now
    return decodeName(buf, offset, opts);
}) as NameDecode;
boundedDecodeName.bytes = 0;
nameCodec.decode = boundedDecodeName;

/**
 * Where the name at `offset` ends in the packet (after its zero octet or its compression
 * pointer), without reading the labels; -1 when it runs past the packet or uses a label type
 * other than length and pointer. The name itself is read, and checked, by the record decoder.
 */
function nameEnd(buf: Buffer, offset: number): number {
    let at = offset;
    while (at < buf.length) {
        const len = buf[at] ?? 0;
        if (len === 0) return at + 1;
        if ((len & 0xc0) === 0xc0) return at + 2;
        if ((len & 0xc0) !== 0) return -1;
        at += 1 + len;
    }
    return -1;
}

/** A packet read up to the end of its question section: enough to match it against the query. */
interface Head {
    readonly packet: DecodedPacket;
    /** Where the answer section starts. */
    readonly offset: number;
}

/** The header and the questions, or null when they cannot be read. */
function decodeHead(buf: Buffer): Head | null {
    if (buf.length < HEADER_SIZE) return null;
    try {
        // the header alone: counts zeroed, so dns-packet reads no section
        const header = Buffer.from(buf.subarray(0, HEADER_SIZE));
        header.fill(0, 4, HEADER_SIZE);
        const packet = dnsPacket.decode(header);
        const questions: NonNullable<DecodedPacket['questions']> = [];
        let offset = HEADER_SIZE;
        for (let i = buf.readUInt16BE(4); i > 0; i--) {
            questions.push(wire.question.decode(buf, offset));
            offset += wire.question.decode.bytes;
        }
        if (offset > buf.length) return null;
        return { packet: { ...packet, questions, answers: [], authorities: [], additionals: [] }, offset };
    } catch {
        return null;
    }
}

/**
 * The answer, authority and additional sections after `head`, or null when a record does not
 * parse or its data is not exactly its RDLENGTH octets, inside the packet. dns-packet reads
 * each type's data by its own size (4 octets for A, whatever RDLENGTH says), so without this
 * an A record with RDLENGTH 20 would carry a second address and one with RDLENGTH 0 at the end
 * would be read past the packet.
 */
function decodeRecords(buf: Buffer, head: Head): DecodedPacket | null {
    const counts = [buf.readUInt16BE(6), buf.readUInt16BE(8), buf.readUInt16BE(10)];
    const sections: NonNullable<DecodedPacket['answers']>[] = [[], [], []];
    let offset = head.offset;
    try {
        for (const [s, count] of counts.entries()) {
            for (let i = 0; i < count; i++) {
                const fixed = nameEnd(buf, offset); // then TYPE, CLASS, TTL, RDLENGTH: 10 octets
                if (fixed < 0 || fixed + 10 > buf.length) return null;
                const end = fixed + 10 + buf.readUInt16BE(fixed + 8);
                if (end > buf.length) return null;
                const record = wire.answer.decode(buf, offset);
                if (offset + wire.answer.decode.bytes !== end) return null;
                sections[s]?.push(record);
                offset = end;
            }
        }
    } catch {
        return null;
    }
    const [answers, authorities, additionals] = sections;
    return { ...head.packet, answers, authorities, additionals };
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
            const head = decodeHead(msg);
            if (!head || !matches(head.packet, id, q)) return;
            // Source, port, ID and question all match, as for an answer we would accept: a
            // spoofer able to send this could as well send a well-formed forgery.
            const packet = decodeRecords(msg, head);
            if (packet) finish(null, packet);
            else finish(new ExchangeError('EBADRESP'));
        });
        // A connect that fails (no route, an unscoped link-local address, no IPv6 on the host)
        // comes to this callback, not to 'error': the server is out of reach, like a refused one.
        socket.connect(server.port, server.host, (err?: Error) => {
            if (err) return finish(new ExchangeError('ECONNREFUSED'));
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
        // Segments are kept as they come and joined once, when the whole answer is in: joining on
        // every segment would copy a 64 KB answer sent one octet at a time about 2 GB over.
        const chunks: Buffer[] = [];
        let received = 0;
        /** The answer's length from its two-octet prefix, once both octets are in. */
        let size = -1;
        socket.setNoDelay(true);
        socket.on('connect', () => socket.write(frame));
        socket.on('error', () => finish(new ExchangeError('ECONNREFUSED')));
        socket.on('close', () => finish(new ExchangeError('EBADRESP')));
        socket.on('data', (chunk: Buffer) => {
            chunks.push(chunk);
            received += chunk.length;
            if (size < 0) {
                if (received < 2) return;
                size = (chunks.length === 1 ? chunk : Buffer.concat(chunks, received)).readUInt16BE(0);
            }
            if (received < 2 + size) return;
            const message = Buffer.concat(chunks, received).subarray(2, 2 + size);
            const head = decodeHead(message);
            const packet = head && matches(head.packet, id, q) ? decodeRecords(message, head) : null;
            if (packet) finish(null, packet);
            else finish(new ExchangeError('EBADRESP'));
        });
        return () => socket.destroy();
    });
}
