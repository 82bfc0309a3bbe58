// The entry of the sender-authentication thread (verify-thread.ts starts it): when the main
// thread loads mailwarden's modules through bin/own-modules.js (compiled from dist/, or stripped
// of their types under node_modules), this thread does the same, since Node.js does not pass
// in-thread module hooks on to worker threads; then it runs verify-worker.ts. Plain JavaScript so
// that it loads before those hooks are in place. It holds no logic of its own.
import { workerData } from 'node:worker_threads';

if (workerData && typeof workerData.ownModules === 'string') {
    const { loadOwnModules } = await import(workerData.ownModules);
    loadOwnModules();
}
await import('./verify-worker.ts');
