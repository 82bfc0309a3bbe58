/**
 * Reads the PROXY protocol header (v1 or v2, told apart by the first bytes) off a freshly
 * accepted socket, with net/proxy-protocol.ts's strict parser, before anything else reads it.
 * The bytes after the header are put back on the socket for the SMTP session (or the TLS
 * handshake of an implicit-TLS listener). The socket's own timeout (armed by the listener with
 * `preTransactionTimeout`) bounds the wait.
 *
 * It must not decide whom to trust (the listener only calls it for trusted peers), log, count
 * or close the socket: it reports what happened and the caller acts on it.
 */
import type net from 'node:net';
import { ProxyHeaderReader, type ProxyHeader } from './proxy-protocol.ts';

export type ProxyRead =
    | { readonly ok: true; readonly header: ProxyHeader }
    /**
     * invalid: the bytes are not a header (detail says why); timeout: the socket's timeout
     * passed first; closed: the peer closed or reset before a whole header arrived.
     */
    | { readonly ok: false; readonly reason: 'invalid' | 'timeout' | 'closed'; readonly detail: string };

export function readProxyHeader(socket: net.Socket): Promise<ProxyRead> {
    return new Promise<ProxyRead>((resolve) => {
        const reader = new ProxyHeaderReader();
        let done = false;
        const finish = (result: ProxyRead): void => {
            if (done) return;
            done = true;
            socket.removeListener('readable', onReadable);
            socket.removeListener('timeout', onTimeout);
            socket.removeListener('end', onEnd);
            socket.removeListener('close', onClose);
            socket.removeListener('error', onError);
            resolve(result);
        };
        const onReadable = (): void => {
            let chunk: Buffer | null;
            while (!done && (chunk = socket.read() as Buffer | null) !== null) {
                const r = reader.push(chunk);
                if (r === null) continue;
                if ('invalid' in r) return finish({ ok: false, reason: 'invalid', detail: r.invalid });
                // the start of the SMTP dialogue (or of the TLS handshake) that came with the header
                if (r.rest.length > 0) socket.unshift(r.rest);
                return finish({ ok: true, header: r.header });
            }
        };
        const onTimeout = (): void => finish({ ok: false, reason: 'timeout', detail: 'no complete header in time' });
        const onEnd = (): void => finish({ ok: false, reason: 'closed', detail: 'closed before a complete header' });
        const onClose = onEnd;
        const onError = (err: Error): void => finish({ ok: false, reason: 'closed', detail: err.message });
        socket.on('readable', onReadable);
        socket.on('timeout', onTimeout);
        socket.on('end', onEnd);
        socket.on('close', onClose);
        socket.on('error', onError);
    });
}
