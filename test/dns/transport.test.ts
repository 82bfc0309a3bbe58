// Tests for one DNS exchange (src/dns/transport.ts) against hand-made answers from raw sockets on
// loopback: records whose data is not exactly RDLENGTH octets are EBADRESP over UDP and TCP, never
// read as other records; a TCP answer sent in many small segments is read in linear work; a server
// the system will not connect to is ECONNREFUSED over UDP and TCP.
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import net from 'node:net';
import { describe, it } from 'node:test';
import dnsPacket, { type DecodedPacket } from 'dns-packet';
import { namePointers, tcpExchange, udpExchange, type Question } from '../../src/dns/transport.ts';
import type { ServerAddress } from '../../src/dns/names.ts';
import { OPT_RECORD } from '../helpers/dns-server.ts';

type Craft = (query: DecodedPacket) => Buffer;

/** A UDP and a TCP socket on 127.0.0.1 (separate ports) that answer each query with `craft(query)`. */
async function rawServer(craft: Craft): Promise<{ udp: ServerAddress; tcp: ServerAddress; close(): Promise<void> }> {
    const udp = dgram.createSocket('udp4');
    udp.on('message', (msg, peer) => udp.send(craft(dnsPacket.decode(msg)), peer.port, peer.address));
    await new Promise<void>((resolve) => udp.bind(0, '127.0.0.1', resolve));
    const sockets = new Set<net.Socket>();
    const tcp = net.createServer((socket) => {
        sockets.add(socket);
        socket.on('close', () => sockets.delete(socket));
        socket.on('error', () => undefined);
        socket.once('data', (data) => {
            const answer = craft(dnsPacket.decode(data.subarray(2)));
            const size = Buffer.alloc(2);
            size.writeUInt16BE(answer.length);
            socket.end(Buffer.concat([size, answer]));
        });
    });
    await new Promise<void>((resolve) => tcp.listen(0, '127.0.0.1', resolve));
    const tcpPort = (tcp.address() as net.AddressInfo).port;
    return {
        udp: { host: '127.0.0.1', port: udp.address().port, family: 4 },
        tcp: { host: '127.0.0.1', port: tcpPort, family: 4 },
        async close() {
            for (const s of sockets) s.destroy();
            await new Promise<void>((resolve) => udp.close(() => resolve()));
            await new Promise<void>((resolve) => tcp.close(() => resolve()));
        },
    };
}

/** A resource record for the question name (compression pointer to offset 12) with the RDLENGTH given. */
function record(type: number, rdlength: number, rdata: Buffer): Buffer {
    const head = Buffer.alloc(12);
    head.writeUInt16BE(0xc00c, 0);
    head.writeUInt16BE(type, 2);
    head.writeUInt16BE(1, 4); // IN
    head.writeUInt32BE(300, 6);
    head.writeUInt16BE(rdlength, 10);
    return Buffer.concat([head, rdata]);
}

/** An answer to `query` whose answer section is `body` and whose ANCOUNT is `ancount`. */
function answerWith(query: DecodedPacket, body: Buffer, ancount: number): Buffer {
    const head = dnsPacket.encode({
        type: 'response',
        id: query.id ?? 0,
        flags: dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE,
        questions: query.questions ?? [],
    });
    const out = Buffer.concat([head, body]);
    out.writeUInt16BE(ancount, 6);
    return out;
}

const A = 1;
const Q: Question = { name: 'x.example.test', type: 'A' };
const opts = () => ({ timeoutMs: 2000, edns: false, signal: new AbortController().signal });

async function rejectsWith(p: Promise<unknown>, code: string): Promise<void> {
    await assert.rejects(p, (err: unknown) => {
        assert.equal((err as { code?: unknown }).code, code);
        return true;
    });
}

describe('DNS transport', () => {
    describe('RDLENGTH (RFC 1035 section 4.1.3)', () => {
        // One A record with RDLENGTH 20: four address octets, then sixteen that are a second A record.
        const smuggle: Craft = (q) => {
            const hidden = record(A, 4, Buffer.from([203, 0, 113, 66]));
            return answerWith(q, record(A, 4 + hidden.length, Buffer.concat([Buffer.from([192, 0, 2, 1]), hidden])), 2);
        };
        // One A record with no data at the very end of the packet.
        const empty: Craft = (q) => answerWith(q, record(A, 0, Buffer.alloc(0)), 1);
        // An A record with RDLENGTH 2 followed by two more octets: 4 octets read, 2 declared.
        const short: Craft = (q) => answerWith(q, record(A, 2, Buffer.from([192, 0, 2, 1])), 1);
        // RDLENGTH past the end of the packet.
        const overrun: Craft = (q) => answerWith(q, record(A, 40, Buffer.from([192, 0, 2, 1])), 1);

        for (const [label, craft] of Object.entries({ smuggle, empty, short, overrun })) {
            it(`an answer whose record data is not its RDLENGTH (${label}) is EBADRESP over UDP and TCP`, async () => {
                const s = await rawServer(craft);
                try {
                    // EBADRESP, not ETIMEOUT: the answer matched the query, so waiting is pointless
                    await rejectsWith(udpExchange(s.udp, Q, opts()), 'EBADRESP');
                    await rejectsWith(tcpExchange(s.tcp, Q, opts()), 'EBADRESP');
                } finally {
                    await s.close();
                }
            });
        }

        it('a name that follows a chain of compression pointers (RFC 1035 section 4.1.4) is EBADRESP', async () => {
            // one record of an unknown type whose data is a chain of pointers, each to the one
            // before, then an A record named by the chain's last pointer: 2,000 hops for one name
            const chain: Craft = (q) => {
                const head = answerWith(q, Buffer.alloc(0), 0);
                const start = head.length + 12 + 1;
                const hops = 2000;
                const data = Buffer.alloc(1 + 2 * hops);
                for (let i = 0; i < hops; i++)
                    data.writeUInt16BE(0xc000 | (i === 0 ? start - 1 : start + 2 * (i - 1)), 1 + 2 * i);
                const named = Buffer.alloc(12);
                named.writeUInt16BE(0xc000 | (start + 2 * (hops - 1)), 0);
                named.writeUInt16BE(A, 2);
                named.writeUInt16BE(1, 4);
                named.writeUInt32BE(300, 6);
                named.writeUInt16BE(4, 10);
                return answerWith(
                    q,
                    Buffer.concat([record(65280, data.length, data), named, Buffer.from([192, 0, 2, 1])]),
                    2,
                );
            };
            const s = await rawServer(chain);
            try {
                await rejectsWith(tcpExchange(s.tcp, Q, opts()), 'EBADRESP');
            } finally {
                await s.close();
            }
            // a name as a compressor writes it (labels, then a pointer to a suffix written before): one pointer
            const packet = Buffer.concat([
                Buffer.alloc(12),
                Buffer.from('\x07example\x04test\x00', 'latin1'),
                Buffer.from('\x01a\xc0\x0c', 'latin1'),
            ]);
            assert.equal(namePointers(packet, 12), 0);
            assert.equal(namePointers(packet, 26), 1);
        });

        it('a well-formed answer with several records and an OPT record is read as sent', async () => {
            const s = await rawServer((q) => {
                const body = Buffer.concat([
                    record(A, 4, Buffer.from([192, 0, 2, 1])),
                    record(A, 4, Buffer.from([192, 0, 2, 2])),
                ]);
                const out = answerWith(q, body, 2);
                const opt = dnsPacket.encode({ type: 'response', additionals: [OPT_RECORD] });
                const withOpt = Buffer.concat([out, opt.subarray(12)]);
                withOpt.writeUInt16BE(1, 10);
                return withOpt;
            });
            try {
                for (const p of [udpExchange(s.udp, Q, opts()), tcpExchange(s.tcp, Q, opts())]) {
                    const packet = await p;
                    assert.deepEqual(
                        packet.answers?.map((a) => (a.type === 'A' ? a.data : null)),
                        ['192.0.2.1', '192.0.2.2'],
                    );
                    assert.equal(packet.additionals?.[0]?.type, 'OPT');
                    assert.equal(packet.questions?.[0]?.name, 'x.example.test');
                    assert.equal(packet.flag_qr, true);
                }
            } finally {
                await s.close();
            }
        });

        it('a datagram from the server with another ID is still dropped and waited past', async () => {
            const s = dgram.createSocket('udp4');
            s.on('message', (msg, peer) => {
                const q = dnsPacket.decode(msg);
                const forged = empty({ ...q, id: ((q.id ?? 0) + 1) & 0xffff });
                s.send(forged, peer.port, peer.address);
                const good = answerWith(q, record(A, 4, Buffer.from([192, 0, 2, 7])), 1);
                setTimeout(() => s.send(good, peer.port, peer.address), 10);
            });
            await new Promise<void>((resolve) => s.bind(0, '127.0.0.1', resolve));
            try {
                const packet = await udpExchange({ host: '127.0.0.1', port: s.address().port, family: 4 }, Q, opts());
                assert.deepEqual(
                    packet.answers?.map((a) => (a.type === 'A' ? a.data : null)),
                    ['192.0.2.7'],
                );
            } finally {
                await new Promise<void>((resolve) => s.close(() => resolve()));
            }
        });
    });

    describe('TCP framing (RFC 1035 section 4.2.2)', () => {
        it('an answer sent in 16-octet segments is joined once, not once per segment', async (t) => {
            const chunk = 16;
            const sockets = new Set<net.Socket>();
            let frameSize = 0;
            const server = net.createServer((socket) => {
                sockets.add(socket);
                socket.setNoDelay(true);
                socket.on('error', () => undefined);
                socket.once('data', (data) => {
                    const q = dnsPacket.decode(data.subarray(2));
                    const name = q.questions?.[0]?.name ?? '';
                    const frame = dnsPacket.streamEncode({
                        type: 'response',
                        id: q.id ?? 0,
                        flags: dnsPacket.RECURSION_DESIRED,
                        questions: q.questions ?? [],
                        answers: [
                            { type: 'TXT', name, ttl: 60, data: Array.from({ length: 32 }, () => 't'.repeat(255)) },
                        ],
                    });
                    frameSize = frame.length;
                    void (async () => {
                        for (let at = 0; at < frame.length && !socket.destroyed; at += chunk) {
                            socket.write(frame.subarray(at, at + chunk));
                            await new Promise((resolve) => setTimeout(resolve, 1));
                        }
                    })();
                });
            });
            await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
            t.after(async () => {
                for (const s of sockets) s.destroy();
                await new Promise<void>((resolve) => server.close(() => resolve()));
            });
            // every octet Buffer.concat copies while the answer comes in
            let copied = 0;
            const concat = Buffer.concat.bind(Buffer);
            t.mock.method(Buffer, 'concat', (list: readonly Uint8Array[], length?: number) => {
                copied += length ?? list.reduce((n, b) => n + b.length, 0);
                return concat(list, length);
            });
            const port = (server.address() as net.AddressInfo).port;
            const packet = await tcpExchange(
                { host: '127.0.0.1', port, family: 4 },
                { name: 'big.example.test', type: 'TXT' },
                opts(),
            );
            t.mock.restoreAll();
            const txt = packet.answers?.[0];
            assert.equal(txt?.type === 'TXT' && Array.isArray(txt.data) ? txt.data.length : 0, 32);
            assert.ok(frameSize > 8000, `frame of ${frameSize} octets`);
            // one join of the whole frame; a join per segment copies ~frameSize² / (2 × 16) octets
            assert.ok(copied <= 2 * frameSize, `${copied} octets copied for a frame of ${frameSize}`);
        });
    });

    describe('a server out of reach', () => {
        it('a connect the kernel refuses is ECONNREFUSED over UDP and TCP, not a crash', async () => {
            // the limited broadcast address: Linux refuses a UDP socket without SO_BROADCAST
            // (EACCES) and any TCP connection (ENETUNREACH) at once
            const unreachable: ServerAddress = { host: '255.255.255.255', port: 53, family: 4 };
            await rejectsWith(udpExchange(unreachable, Q, opts()), 'ECONNREFUSED');
            await rejectsWith(tcpExchange(unreachable, Q, opts()), 'ECONNREFUSED');
        });
    });
});
