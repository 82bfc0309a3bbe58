/**
 * A plain TCP pass-through, run as a child process of scripts/bench.ts: every connection is
 * piped byte for byte to the sink. It is the ceiling for any proxy written in Node.js on the
 * same machine (one more process and two more sockets in the path, no SMTP at all). Over the
 * IPC channel it sends `{ type: 'ready', port }` once listening.
 *
 * It must listen on loopback only, look at no byte, and exit when its parent goes away.
 * Usage: node scripts/bench/passthrough.ts TARGET_PORT
 */
import net from 'node:net';
import { fileURLToPath } from 'node:url';

/** A server piping each connection to 127.0.0.1:`targetPort` (not yet listening). */
export function createPassthrough(targetPort: number): net.Server {
    return net.createServer((client) => {
        const upstream = net.connect({ host: '127.0.0.1', port: targetPort });
        client.setNoDelay(true);
        upstream.setNoDelay(true);
        client.pipe(upstream).pipe(client);
        const end = (): void => {
            client.destroy();
            upstream.destroy();
        };
        client.on('error', end);
        upstream.on('error', end);
        client.on('close', end);
        upstream.on('close', end);
    });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
    const target = Number(process.argv[2]);
    if (!(target > 0 && target < 65536)) throw new Error('usage: passthrough.ts TARGET_PORT');
    const server = createPassthrough(target);
    server.listen(0, '127.0.0.1', () => {
        const address = server.address();
        process.send?.({ type: 'ready', port: typeof address === 'object' && address ? address.port : 0 });
    });
    process.on('disconnect', () => process.exit(0));
    process.on('SIGTERM', () => process.exit(0));
    process.on('SIGINT', () => process.exit(0));
}
