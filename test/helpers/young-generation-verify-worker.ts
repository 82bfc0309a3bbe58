// A sender-authentication thread that first reports the size its heap's young generation grows
// to under a churn of short-lived objects (one line, `young <KB>`, on the thread's stdout), then
// runs as in production (src/sender-auth/verify-worker.ts). For the young-generation case of
// test/sender-auth/verify-thread.test.ts.
import { youngGenerationUnderChurn } from './young-generation.ts';

process.stdout.write(`young ${youngGenerationUnderChurn()}\n`);
await import('../../src/sender-auth/verify-worker.ts');
