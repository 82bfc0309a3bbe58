// The size, in KB, the calling thread's young generation grows to under a churn of short-lived
// objects (400,000 small objects, 5,000 alive at a time), read from V8's heap space statistics.
// For the young-generation case of test/sender-auth/verify-thread.test.ts.
import { getHeapSpaceStatistics } from 'node:v8';

export function youngGenerationUnderChurn(): number {
    const young = (): number => getHeapSpaceStatistics().find((s) => s.space_name === 'new_space')?.space_size ?? -1;
    const kept: object[] = [];
    let most = young();
    for (let i = 0; i < 400_000; i++) {
        kept.push({ i, text: `garbage ${i}` });
        if (kept.length > 5_000) kept.shift();
        if (i % 1_000 === 0) most = Math.max(most, young());
    }
    return Math.max(most, young()) >> 10;
}
