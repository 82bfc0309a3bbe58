// A sender-authentication thread that misbehaves on request, for test/sender-auth/verify-thread.test.ts
// and test/e2e/auth-thread-stall.test.ts. The real thread body (src/sender-auth/verify-worker.ts)
// reads every job; then, for a job whose envelope sender is `spin-<ms>@…`, the thread is held in
// synchronous work for that long, as a message that sent one of mailauth's parsers into a
// quadratic loop would hold it; `timer-spin-<ms>@…` does the same in a timer 300 ms later (as
// work after mailauth's SPF time limit would, while other jobs' messages come in); `exit@…`
// ends the thread, as a crash or an exhausted heap would.
// Any other job runs as in production.
import { parentPort } from 'node:worker_threads';

await import('../../src/sender-auth/verify-worker.ts');
parentPort!.on('message', (m: { t: string; opts?: { sender?: unknown } }) => {
    if (m.t !== 'start') return;
    const sender = typeof m.opts?.sender === 'string' ? m.opts.sender : '';
    const busy = (ms: number): void => {
        const end = Date.now() + ms;
        while (Date.now() < end) {
            // busy, as a regular expression that backtracks is
        }
    };
    const spin = /^spin-(\d+)@/.exec(sender);
    if (spin) busy(Number(spin[1]));
    const later = /^timer-spin-(\d+)@/.exec(sender);
    if (later) setTimeout(() => busy(Number(later[1])), 300);
    if (sender.startsWith('exit@')) process.exit(7);
});
