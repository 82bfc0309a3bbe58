// A sender-authentication thread that misbehaves on request, for test/sender-auth/verify-thread.test.ts.
// Before the real thread body (src/sender-auth/verify-worker.ts) reads a new job, an envelope
// sender `spin-<ms>@…` holds the thread in synchronous work for that long, as a message that
// sent one of mailauth's parsers into a quadratic loop would; `exit@…` ends the thread, as a
// crash or an exhausted heap would. Any other job runs as in production.
import { parentPort } from 'node:worker_threads';

parentPort!.on('message', (m: { t: string; opts?: { sender?: unknown } }) => {
    if (m.t !== 'start') return;
    const sender = typeof m.opts?.sender === 'string' ? m.opts.sender : '';
    const spin = /^spin-(\d+)@/.exec(sender);
    if (spin) {
        const end = Date.now() + Number(spin[1]);
        while (Date.now() < end) {
            // busy, as a regular expression that backtracks is
        }
    }
    if (sender.startsWith('exit@')) process.exit(7);
});
await import('../../src/sender-auth/verify-worker.ts');
