// Run by test/sender-auth/verify-thread.test.ts in a process of its own, with the V8 flags
// `serve` runs with: starts the sender-authentication thread with
// young-generation-verify-worker.ts, which prints the size the thread's young generation grows
// to (`young <KB>`), then puts this thread's own heap under the same churn and prints the size
// its young generation grows to (`main <KB>`).
import { createVerifyThread } from '../../src/sender-auth/verify-thread.ts';
import { youngGenerationUnderChurn } from './young-generation.ts';

const thread = createVerifyThread({ entry: new URL('./young-generation-verify-worker.ts', import.meta.url) });
await thread.warm();
process.stdout.write(`main ${youngGenerationUnderChurn()}\n`);
await thread.close();
