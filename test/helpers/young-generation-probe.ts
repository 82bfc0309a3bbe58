// Run by test/sender-auth/verify-thread.test.ts in a process of its own, with the V8 flags
// `serve` runs with: starts the sender-authentication thread with
// young-generation-verify-worker.ts, which prints the size the thread's young generation grows
// to (`young <KB>`), then puts this thread's own heap under the same churn and prints the size
// its young generation grows to (`main <KB>`).
import { getHeapSpaceStatistics } from 'node:v8';
import { createVerifyThread } from '../../src/sender-auth/verify-thread.ts';

const thread = createVerifyThread({ entry: new URL('./young-generation-verify-worker.ts', import.meta.url) });
await thread.warm();
const young = (): number => getHeapSpaceStatistics().find((s) => s.space_name === 'new_space')?.space_size ?? -1;
const kept: object[] = [];
let most = young();
for (let i = 0; i < 400_000; i++) {
    kept.push({ i, text: `garbage ${i}` });
    if (kept.length > 5_000) kept.shift();
    if (i % 1_000 === 0) most = Math.max(most, young());
}
process.stdout.write(`main ${Math.max(most, young()) >> 10}\n`);
await thread.close();
