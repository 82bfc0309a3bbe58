/**
 * The worker side of several processes (`workers` > 1): tells the primary when the listeners
 * are up, answers its questions (this process's metrics as JSON, its readiness) and drains when
 * the primary is gone (the IPC channel closed: nobody would replace or stop this process).
 * It must not open the HTTP endpoint (the primary serves it for every worker) nor handle
 * signals (serve.ts does, as in a single process).
 */
import type { App } from '../app.ts';
import { isQuestion, type Answer } from './protocol.ts';

function send(answer: Answer): void {
    if (!process.connected) return;
    // the channel may close between the check and the write (the primary ending): nothing to do then
    process.send?.(answer, undefined, undefined, () => undefined);
}

export function serveAsWorker(app: App, onPrimaryGone: () => void): void {
    process.on('message', (m: unknown) => {
        if (!isQuestion(m)) return;
        if (m.mailwarden === 'metrics') {
            app.metrics.registry.getMetricsAsJSON().then(
                (metrics) => send({ mailwarden: 'metrics', id: m.id, metrics }),
                () => send({ mailwarden: 'metrics', id: m.id, metrics: [] }),
            );
        } else {
            app.readiness().then(
                (reason) => send({ mailwarden: 'readiness', id: m.id, reason }),
                (err: unknown) =>
                    send({ mailwarden: 'readiness', id: m.id, reason: err instanceof Error ? err.message : 'error' }),
            );
        }
    });
    process.once('disconnect', onPrimaryGone);
    send({ mailwarden: 'ready' });
}
