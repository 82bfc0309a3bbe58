/**
 * The operations HTTP endpoint (SPEC, "HTTP"): GET /metrics (Prometheus text format),
 * GET /healthz (the process is alive), GET /readyz (200 only when the listeners are up and
 * the upstream and Redis answer the app's probe; not DNS, not the spool). Read-only; it never changes state and never exposes message data.
 */
import type { Server } from 'node:http';
import { createRequire } from 'node:module';
import type { Registry } from 'prom-client';

// node:http through require: an ES import reads every export of node:http, which makes Node.js
// load its bundled HTTP client (undici, for the WebSocket classes) on the main thread, about
// 13 MB of RSS (src/smtp-server/library.ts)
const { createServer } = createRequire(import.meta.url)('node:http') as typeof import('node:http');

export interface HttpDeps {
    /** The app's registry, or (several workers) one that answers with every worker's metrics combined. */
    readonly metrics: { readonly registry: Pick<Registry, 'metrics' | 'contentType'> };
    /** Resolves with null when ready, or a short reason when not. */
    readonly readiness: () => Promise<string | null>;
}

export function createHttpServer(deps: HttpDeps): Server {
    return createServer((req, res) => {
        const path = (req.url ?? '/').split('?')[0];
        if (req.method !== 'GET' && req.method !== 'HEAD') {
            res.writeHead(405, { allow: 'GET, HEAD' }).end();
            return;
        }
        if (path === '/metrics') {
            deps.metrics.registry.metrics().then(
                (body) => {
                    res.writeHead(200, { 'content-type': deps.metrics.registry.contentType });
                    res.end(body);
                },
                () => res.writeHead(500).end(),
            );
        } else if (path === '/healthz') {
            res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
        } else if (path === '/readyz') {
            deps.readiness().then(
                (reason) => {
                    res.writeHead(reason === null ? 200 : 503, { 'content-type': 'text/plain' });
                    res.end(reason === null ? 'ready\n' : `not ready: ${reason}\n`);
                },
                () => res.writeHead(503).end('not ready\n'),
            );
        } else {
            res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
        }
    });
}
