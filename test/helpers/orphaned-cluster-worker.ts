// A node:cluster primary with one worker that runs src/cluster/worker.ts over a stand-in app whose
// drain never ends (as a session stuck in a check would hold it), for test/unit/cluster-worker.test.ts.
// Every line on stdout is JSON: the primary says `ready` once the worker is, with both pids; the
// worker writes its log lines (`level`, `msg`), `drain started` when its drain is called, and
// `exit` with its status as it ends. The test kills the primary.
import cluster from 'node:cluster';
import type { App } from '../../src/app.ts';

const line = (o: Record<string, unknown>): void => void process.stdout.write(`${JSON.stringify(o)}\n`);

if (cluster.isPrimary) {
    const worker = cluster.fork();
    worker.once('message', () => line({ msg: 'ready', primary: process.pid, worker: worker.process.pid }));
} else {
    const { serveAsWorker } = await import('../../src/cluster/worker.ts');
    const log = (level: number) => (fields: object, msg: string) => line({ level, msg, ...fields });
    const app = {
        config: { shutdownTimeoutMs: 200, upstream: { kind: 'maildir' } },
        log: { warn: log(40), error: log(50) },
        draining: false,
        readiness: () => Promise.resolve(null),
    } as unknown as App;
    process.on('exit', (code) => line({ msg: 'exit', code }));
    serveAsWorker(app, () => {
        line({ msg: 'drain started' });
        setInterval(() => undefined, 60_000);
    });
}
