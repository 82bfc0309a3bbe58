/**
 * The fault run (`npm run faults`): drives mail through mailwarden into a real Postfix while each
 * fault of test/fault/catalogue.ts strikes, and prints a report per fault (messages, delivered,
 * refused with a 5xx, retries, temporary failures by code, duplicates inside and outside the
 * documented window, lost). Exits 1 when any fault lost a message, gave a 5xx of its own, left a
 * spool file or delivered a duplicate outside the window. docs/reliability.md explains the report.
 * It must not touch the system's Postfix or Redis: everything it starts lives in temporary
 * folders on loopback and is stopped before it exits.
 *
 * Usage: node scripts/faults.ts [--messages 300] [--fault NAME[,NAME…]] [--seed N] [--json FILE] [--ci]
 */
import { writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { FAULTS } from '../test/fault/catalogue.ts';
import { CI_SIZE, FULL_SIZE, runFault } from '../test/fault/harness.ts';
import { formatReports, type FaultReport } from '../test/fault/judge.ts';
import { startLab } from '../test/fault/lab.ts';

const { values } = parseArgs({
    options: {
        messages: { type: 'string' },
        fault: { type: 'string' },
        seed: { type: 'string', default: '1' },
        json: { type: 'string' },
        ci: { type: 'boolean', default: false },
    },
});
const base = values.ci ? CI_SIZE : FULL_SIZE;
const messages = values.messages === undefined ? base.messages : Number(values.messages);
if (!(messages > 0)) throw new Error('--messages must be a positive number');
// The spread time grows with the number of messages, so the load per second stays the same.
const size = { ...base, messages, spreadMs: Math.round((base.spreadMs * messages) / base.messages) };
const names = values.fault?.split(',').map((s) => s.trim());
const unknown = names?.filter((n) => !FAULTS.some((f) => f.name === n)) ?? [];
if (unknown.length > 0) {
    throw new Error(`unknown fault ${unknown.join(', ')}; known: ${FAULTS.map((f) => f.name).join(', ')}`);
}
const faults = names ? FAULTS.filter((f) => names.includes(f.name)) : FAULTS;
const seed = Number(values.seed);

console.log(
    `fault run: ${faults.length} faults, ${size.messages} messages each over ${size.spreadMs / 1000} s, ` +
        `${size.concurrency} sessions, seed ${seed}`,
);
const lab = await startLab();
const reports: FaultReport[] = [];
try {
    for (const [i, spec] of faults.entries()) {
        console.log(`\n${spec.name}: ${spec.summary}`);
        const report = await runFault(lab, spec, { size, seed: seed + i, progress: (l) => console.log(l) });
        console.log(`  ${report.ok ? 'ok' : 'FAILED'} in ${report.seconds} s`);
        reports.push(report);
    }
} finally {
    await lab.close();
}
console.log(`\n${formatReports(reports)}`);
if (values.json) {
    await writeFile(values.json, `${JSON.stringify({ size, seed, reports }, null, 2)}\n`);
    console.log(`\nreport written to ${values.json}`);
}
if (reports.some((r) => !r.ok)) process.exitCode = 1;
