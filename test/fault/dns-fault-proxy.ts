/**
 * A fault-injecting DNS forwarder for the fault harness: mailwarden asks it (UDP and TCP on one
 * loopback port) and it passes each query to the test DNS server and the answer back, unless its
 * mode says otherwise: `drop` answers nothing at all (a dead or unreachable resolver), `delay`
 * holds each answer back for a random time in [minMs, maxMs] (a slow one).
 * Each UDP query is forwarded from a socket of its own, so answers cannot be mixed up; the
 * answer goes back from the port the query came to, as a resolver expects (RFC 5452).
 * Test code only: loopback only, and close() ends every socket it opened.
 */
import dgram from 'node:dgram';
import net from 'node:net';

export type DnsFaultMode = { readonly kind: 'pass' } | { readonly kind: 'drop' } | DnsDelay;

interface DnsDelay {
    readonly kind: 'delay';
    readonly minMs: number;
    readonly maxMs: number;
}

export interface DnsFaultProxy {
    readonly port: number;
    /** `127.0.0.1:<port>`, the form `dns.servers` takes. */
    readonly address: string;
    /** Queries seen, dropped and delayed so far. */
    readonly stats: { queries: number; dropped: number; delayed: number };
    setMode(mode: DnsFaultMode): void;
    close(): Promise<void>;
}

async function bindUdp(): Promise<{ udp: dgram.Socket; port: number }> {
    const udp = dgram.createSocket('udp4');
    await new Promise<void>((resolve, reject) => {
        udp.once('error', reject);
        udp.bind(0, '127.0.0.1', () => resolve());
    });
    return { udp, port: udp.address().port };
}

export async function startDnsFaultProxy(
    target: { port: number },
    random: () => number = Math.random,
    attempt = 0,
): Promise<DnsFaultProxy> {
    let mode: DnsFaultMode = { kind: 'pass' };
    const stats = { queries: 0, dropped: 0, delayed: 0 };
    const timers = new Set<NodeJS.Timeout>();
    const sockets = new Set<dgram.Socket | net.Socket>();

    /** Calls `fn` now, after a delay, or never, as the mode says. */
    const schedule = (fn: () => void): void => {
        stats.queries++;
        if (mode.kind === 'drop') {
            stats.dropped++;
            return;
        }
        if (mode.kind === 'pass') return fn();
        stats.delayed++;
        const ms = mode.minMs + random() * (mode.maxMs - mode.minMs);
        const t = setTimeout(() => {
            timers.delete(t);
            fn();
        }, ms);
        timers.add(t);
    };

    const { udp, port } = await bindUdp();
    udp.on('message', (query, peer) => {
        schedule(() => {
            const out = dgram.createSocket('udp4');
            sockets.add(out);
            const done = (): void => {
                clearTimeout(timer);
                sockets.delete(out);
                out.close();
            };
            const timer = setTimeout(done, 10_000);
            out.on('error', done);
            out.on('message', (answer) => {
                udp.send(answer, peer.port, peer.address);
                done();
            });
            out.send(query, target.port, '127.0.0.1');
        });
    });

    const tcp = net.createServer((client) => {
        sockets.add(client);
        client.on('error', () => client.destroy());
        client.on('close', () => sockets.delete(client));
        if (mode.kind === 'drop') {
            stats.queries++;
            stats.dropped++;
            return; // held open, never answered
        }
        const server = net.connect({ host: '127.0.0.1', port: target.port });
        sockets.add(server);
        server.on('error', () => client.destroy());
        server.on('close', () => {
            sockets.delete(server);
            client.end();
        });
        client.on('close', () => server.destroy());
        client.on('data', (chunk: Buffer) => schedule(() => server.write(chunk)));
        server.on('data', (chunk: Buffer) => client.write(chunk));
    });
    try {
        await new Promise<void>((resolve, reject) => {
            tcp.once('error', reject);
            tcp.listen(port, '127.0.0.1', () => resolve());
        });
    } catch (err) {
        udp.close();
        // The TCP port is taken: try again with another pair.
        if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE' && attempt < 20) {
            return startDnsFaultProxy(target, random, attempt + 1);
        }
        throw err;
    }
    return {
        port,
        address: `127.0.0.1:${port}`,
        stats,
        setMode(next) {
            mode = next;
        },
        async close() {
            for (const t of timers) clearTimeout(t);
            for (const s of sockets) {
                if (s instanceof net.Socket) s.destroy();
                else s.close();
            }
            await Promise.all([
                new Promise<void>((resolve) => udp.close(() => resolve())),
                new Promise<void>((resolve) => tcp.close(() => resolve())),
            ]);
        },
    };
}
