/**
 * A worker whose primary is killed (its IPC channel closes unasked): Node's cluster module would
 * end it at once, so src/cluster/worker.ts must run before Node's own listener, start the drain
 * and keep the process alive for it. A drain that does not end is cut short: the worker exits 1
 * once shutdownTimeout, upstream.dataTimeout (none for maildir) and 5 s have passed, so no worker
 * outlives its primary for long. Real processes (test/helpers/orphaned-cluster-worker.ts).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { it } from 'node:test';
import { until } from '../helpers/until.ts';

const SCRIPT = new URL('../helpers/orphaned-cluster-worker.ts', import.meta.url).pathname;

it('drains when the primary is killed, and exits 1 once its drain outlasts the bound', async (t) => {
    const child = spawn(process.execPath, [SCRIPT], { stdio: ['ignore', 'pipe', 'inherit'] });
    const lines: Record<string, unknown>[] = [];
    let partial = '';
    child.stdout.on('data', (chunk: Buffer) => {
        const parts = (partial + chunk.toString('utf8')).split('\n');
        partial = parts.pop() ?? '';
        for (const p of parts) if (p.trim()) lines.push(JSON.parse(p) as Record<string, unknown>);
    });
    // the stdout pipe closes once the primary and the worker have both ended
    let closed = false;
    child.once('close', () => (closed = true));
    const ready = (): Record<string, unknown> | undefined => lines.find((l) => l.msg === 'ready');
    t.after(() => {
        child.kill('SIGKILL');
        const worker = ready()?.worker;
        if (closed || typeof worker !== 'number') return;
        try {
            process.kill(worker, 'SIGKILL');
        } catch {
            // already ended
        }
    });
    await until('the worker is ready', () => ready() !== undefined, 30_000);
    child.kill('SIGKILL');
    await until('the worker has ended', () => closed, 20_000);
    const msgs = lines.map((l) => l.msg);
    const gone = lines.find((l) => String(l.msg).startsWith('primary gone: no new connections'));
    assert.equal(gone?.level, 40, JSON.stringify(lines));
    assert.equal(gone.exitWithinMs, 5200);
    assert.ok(msgs.includes('drain started'), JSON.stringify(lines));
    const cut = lines.find((l) => l.msg === 'primary gone: the drain did not end within its bound; exiting');
    assert.equal(cut?.level, 50, JSON.stringify(lines));
    assert.deepEqual(lines.at(-1), { msg: 'exit', code: 1 });
});
