/**
 * Test helper: waits, polling, until a condition holds, and fails with what it waited for once
 * `timeoutMs` passed. For state a test cannot await directly (a log line written, a connection
 * closed, a metric moved). Test code only.
 */
import { setTimeout as sleep } from 'node:timers/promises';

export async function until(
    what: string,
    test: () => boolean | Promise<boolean>,
    timeoutMs = 5000,
    stepMs = 10,
): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!(await test())) {
        if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
        await sleep(stepMs);
    }
}
