// A sender-authentication thread that first reports the size its heap's young generation grows
// to under a churn of short-lived objects (one line, `young <KB>`, on the thread's stdout), then
// runs as in production (src/sender-auth/verify-worker.ts). For the young-generation case of
// test/sender-auth/verify-thread.test.ts.
import { getHeapSpaceStatistics } from 'node:v8';

const young = (): number => getHeapSpaceStatistics().find((s) => s.space_name === 'new_space')?.space_size ?? -1;
const kept: object[] = [];
let most = young();
for (let i = 0; i < 400_000; i++) {
    kept.push({ i, text: `garbage ${i}` });
    if (kept.length > 5_000) kept.shift();
    if (i % 1_000 === 0) most = Math.max(most, young());
}
process.stdout.write(`young ${Math.max(most, young()) >> 10}\n`);
await import('../../src/sender-auth/verify-worker.ts');
