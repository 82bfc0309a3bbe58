/**
 * The worker side of several processes (`workers` > 1): tells the primary when the listeners
 * are up, answers its questions (this process's metrics as JSON, its readiness) and drains when
 * the primary is gone (the IPC channel closed: nobody would replace or stop this process), as
 * on SIGTERM, then exits; it exits anyway once the drain's bound and a margin have passed, so a
 * worker never outlives its primary for long. It must not open the HTTP endpoint (the primary
 * serves it for every worker) nor handle signals (serve.ts does, as in a single process).
 */
import cluster from 'node:cluster';
import type { App } from '../app.ts';
import { stopBoundMs } from '../drain.ts';
import { DRAIN_MARGIN_MS } from './primary.ts';
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
    // Node's cluster ends a worker at once (status 0) when its channel closes without the worker
    // having asked: its own 'disconnect' listener, added before any of ours, calls process.exit
    // unless the worker left by worker.disconnect() (lib/internal/cluster/child.js). Every
    // session would be cut, a message the upstream had queued among them, and nothing logged.
    // This listener runs first, so the drain starts and the worker leaves the cluster itself
    // (test/unit/cluster-worker.test.ts fails if Node's listener ends the process all the same).
    process.prependOnceListener('disconnect', () => primaryGone(app, onPrimaryGone));
    send({ mailwarden: 'ready' });
}

function primaryGone(app: App, drain: () => void): void {
    const boundMs = stopBoundMs(app.config) + DRAIN_MARGIN_MS;
    app.log.warn(
        { alreadyDraining: app.draining, exitWithinMs: boundMs },
        'primary gone: no new connections; the sessions in progress finish as on SIGTERM, then this worker exits',
    );
    // the drain closes the listeners first (so worker.disconnect() has none left to close);
    // worker.disconnect() then marks the disconnect as the worker's own (its note to the primary
    // is dropped: the channel is closed), which keeps Node's listener from ending the process
    drain();
    cluster.worker?.disconnect();
    // the primary would kill a worker whose drain does not end; with the primary gone, it ends itself
    setTimeout(() => {
        app.log.error({ boundMs }, 'primary gone: the drain did not end within its bound; exiting');
        process.exit(1);
    }, boundMs).unref();
}
