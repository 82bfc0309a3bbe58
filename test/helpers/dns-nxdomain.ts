/**
 * A DNS server on a loopback UDP port where no name exists: every query gets NXDOMAIN. Tests
 * and the benchmark point the proxy's `dns.servers` at it so SPF, DKIM and DMARC lookups stay
 * on the machine and end quickly as "none". It must not forward anything anywhere.
 */
import dgram from 'node:dgram';

export interface NxdomainDns {
    readonly port: number;
    /** `127.0.0.1:PORT`, the form `dns.servers` takes. */
    readonly server: string;
    /** Names asked so far, as `TYPE name` (type as a number). */
    readonly queries: string[];
    stop(): Promise<void>;
}

/** Reads the question; returns its end offset and a printable form, or null when malformed. */
function question(msg: Buffer): { end: number; text: string } | null {
    let offset = 12;
    const labels: string[] = [];
    for (;;) {
        const length = msg[offset];
        if (length === undefined || length > 63) return null;
        offset += 1;
        if (length === 0) break;
        labels.push(msg.subarray(offset, offset + length).toString('latin1'));
        offset += length;
    }
    if (offset + 4 > msg.length) return null;
    return { end: offset + 4, text: `${msg.readUInt16BE(offset)} ${labels.join('.')}` };
}

export async function startNxdomainDns(): Promise<NxdomainDns> {
    const socket = dgram.createSocket('udp4');
    const queries: string[] = [];
    socket.on('message', (msg, peer) => {
        if (msg.length < 12 || msg.readUInt16BE(4) !== 1) return;
        const q = question(msg);
        if (!q) return;
        queries.push(q.text);
        const reply = Buffer.from(msg.subarray(0, q.end));
        const opcodeAndRd = (msg[2] ?? 0) & 0x79;
        reply[2] = 0x80 | opcodeAndRd; // QR, opcode and RD as asked, AA and TC clear
        reply[3] = 0x80 | 3; // RA, RCODE 3 = NXDOMAIN
        reply.writeUInt16BE(1, 4);
        reply.writeUInt32BE(0, 6); // no answers, no authority
        reply.writeUInt16BE(0, 10); // no additional records
        socket.send(reply, peer.port, peer.address);
    });
    await new Promise<void>((resolve, reject) => {
        socket.once('error', reject);
        socket.bind(0, '127.0.0.1', () => {
            socket.off('error', reject);
            resolve();
        });
    });
    const port = socket.address().port;
    let stopped = false;
    return {
        port,
        server: `127.0.0.1:${port}`,
        queries,
        stop: () =>
            new Promise<void>((resolve) => {
                if (stopped) return resolve();
                stopped = true;
                socket.close(() => resolve());
            }),
    };
}
