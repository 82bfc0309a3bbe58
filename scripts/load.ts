/**
 * The load run (`npm run load`): 10,000 messages over 100 concurrent sessions through mailwarden
 * into a real Postfix (zero loss required), then 5,000 idle connections, and prints throughput,
 * memory per idle connection and the file-descriptor and spool-file counts before and after
 * (test/fault/load.ts explains each figure; docs/reliability.md has the figures of a full run).
 * Exits 1 when a message was lost or duplicated, or a descriptor, spool file or session leaked.
 * It must not touch the system's Postfix: everything it starts lives in temporary folders on
 * loopback and is stopped before it exits.
 *
 * Usage: node scripts/load.ts [--messages 10000] [--concurrency 100] [--per-connection 10] [--idle 5000] [--json FILE]
 */
import { writeFile } from 'node:fs/promises';
import os from 'node:os';
import { parseArgs } from 'node:util';
import { runLoad } from '../test/fault/load.ts';

const { values } = parseArgs({
    options: {
        messages: { type: 'string', default: '10000' },
        concurrency: { type: 'string', default: '100' },
        'per-connection': { type: 'string', default: '10' },
        idle: { type: 'string', default: '5000' },
        json: { type: 'string' },
    },
});
const options = {
    messages: Number(values.messages),
    concurrency: Number(values.concurrency),
    messagesPerConnection: Number(values['per-connection']),
    idleConnections: Number(values.idle),
};
if (!Object.values(options).every((n) => Number.isInteger(n) && n > 0)) {
    throw new Error('--messages, --concurrency, --per-connection and --idle must be positive whole numbers');
}
const load = (): string =>
    os
        .loadavg()
        .map((x) => x.toFixed(1))
        .join(' ');
const started = Date.now();
const loadAtStart = load();
const r = await runLoad({ ...options, progress: (line) => console.log(line) });
const mb = (bytes: number): string => `${(bytes / 1024 / 1024).toFixed(1)} MB`;
const kb = (bytes: number): string => `${(bytes / 1024).toFixed(1)} KB`;
const m = r.messages;
console.log(`
messages:     ${m.messages} (${m.recipients} recipients) over ${options.concurrency} sessions, ${options.messagesPerConnection} per connection (${r.connectionsUsed} connections)
throughput:   ${r.messagesPerSecond.toFixed(0)} messages/s accepted (${r.sendSeconds.toFixed(1)} s of sending); all delivered into the Maildirs after ${r.deliveredSeconds.toFixed(1)} s
outcome:      ${m.delivered} recipients delivered, ${m.refused5xx} refused 5xx (unknown user), ${m.lost} lost, ${m.retries} retries, ${m.duplicatesInWindow + m.duplicatesOutsideWindow} duplicates, tempfails ${JSON.stringify(m.tempfails)}
idle:         ${r.idle.connections} connections (greeted, EHLO) opened in ${r.idle.openSeconds.toFixed(1)} s; sessions_active ${r.idle.sessionsActive}
memory:       RSS ${mb(r.idle.rssBefore)} -> ${mb(r.idle.rssWith)} = ${kb(r.idle.rssPerConnection)} per idle connection; V8 heap used ${mb(r.idle.heapBefore)} -> ${mb(r.idle.heapWith)} = ${kb(r.idle.heapPerConnection)} per idle connection
descriptors:  ${r.fds.atStart} at start, ${r.fds.afterMessages} after the messages, ${r.fds.withIdle} with the idle connections, ${r.fds.afterIdleClosed} after they closed
spool files:  ${r.spoolFiles.afterMessages} after the messages, ${r.spoolFiles.atEnd} at the end; sessions left ${r.sessionsLeft}
run time:     ${((Date.now() - started) / 1000).toFixed(0)} s on ${os.availableParallelism()} cores; load average ${loadAtStart} at the start, ${load()} at the end`);
if (values.json) await writeFile(values.json, `${JSON.stringify({ options, report: r }, null, 2)}\n`);
const leaks =
    m.lost > 0 ||
    m.duplicatesOutsideWindow > 0 ||
    m.unexpected5xx > 0 ||
    r.fds.afterMessages > r.fds.atStart ||
    r.fds.afterIdleClosed > r.fds.atStart ||
    r.spoolFiles.atEnd > 0 ||
    r.sessionsLeft > 0;
if (leaks) {
    console.error('\nFAILED: loss, duplicate or leak (see above)');
    for (const d of m.details.slice(0, 20)) console.error(`  ${d}`);
    process.exitCode = 1;
}
