/**
 * Every fault of the fault harness (test/fault/catalogue.ts, run by harness.ts), at CI size:
 * a few dozen messages through a real mailwarden process into a real Postfix while the fault
 * strikes once. Each run must lose nothing, give no 5xx of its own, deliver no duplicate
 * outside the documented window and leave no spool file; and the fault must have struck, so a
 * harness that silently stopped injecting cannot pass. `npm run faults` runs the same faults at
 * full size (docs/reliability.md).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { FAULTS } from './catalogue.ts';
import { CI_SIZE, runFault } from './harness.ts';
import { formatReports, type FaultReport } from './judge.ts';
import { startLab, type Lab } from './lab.ts';

/** What each fault must visibly do to the mail, beyond the shared invariants. */
const SYMPTOMS: Readonly<Record<string, (r: FaultReport) => void>> = {
    baseline: (r) => {
        assert.equal(r.retries, 0, 'no fault, no retry');
        assert.deepEqual(r.injected, {});
    },
    'redis-killed-allow': (r) => {
        assert.ok((r.redisErrors ?? 0) > 0, 'mailwarden met the dead Redis');
        // onError: allow lets mail through while the store is away: none of the limits' replies
        const limits = Object.keys(r.tempfails).filter((code) => /^4\d\d 4\.7\.[01]$/.test(code));
        assert.deepEqual(limits, [], 'no limit refusal with onError: allow');
    },
    'redis-killed-tempfail': (r) => {
        assert.ok((r.redisErrors ?? 0) > 0, 'mailwarden met the dead Redis');
        assert.ok(
            Object.keys(r.tempfails).every((code) => /^4\d\d 4\.7\.\d$/.test(code)),
            `only the limits' 4.7.x refusals: ${JSON.stringify(r.tempfails)}`,
        );
    },
    'mailwarden-sigterm': (r) => {
        // a drain never cuts a message the upstream accepted: no possible duplicate at all
        assert.equal(r.duplicateRiskLogged, 0);
        assert.equal(r.duplicatesInWindow, 0);
    },
};

describe('faults: nothing is lost, no duplicate outside the window', () => {
    let lab: Lab;
    const reports: FaultReport[] = [];
    before(async () => {
        lab = await startLab();
    });
    after(async () => {
        await lab?.close();
        if (reports.length > 0) console.log(formatReports(reports));
    });

    for (const [i, spec] of FAULTS.entries()) {
        it(`${spec.name}: ${spec.summary}`, async () => {
            const report = await runFault(lab, spec, { size: CI_SIZE, seed: 1000 + i });
            reports.push(report);
            const table = formatReports([report]);
            assert.equal(report.lost, 0, table);
            assert.equal(report.acceptedNotDelivered, 0, table);
            assert.equal(report.unexpected5xx, 0, table);
            assert.equal(report.duplicatesOutsideWindow, 0, table);
            assert.equal(report.deliveredUnexpectedly, 0, table);
            assert.equal(report.spoolFilesLeft, 0, table);
            assert.deepEqual(report.problems, [], table);
            assert.ok(report.ok, table);
            // every message was either delivered or refused as a healthy system refuses it
            assert.equal(report.delivered + report.refused5xx, report.recipients, table);
            if (spec.name !== 'baseline')
                assert.ok(Object.keys(report.injected).length > 0, `the fault struck\n${table}`);
            SYMPTOMS[spec.name]?.(report);
        });
    }
});
