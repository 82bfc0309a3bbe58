/**
 * Shared bookkeeping of the conformance suites: every case of a suite either agrees with the
 * vector's expected result or is listed, with a reason, in deviations.json. A failing case that
 * is not listed fails the suite, and so does a listed case that now agrees or no longer exists,
 * so the list stays true. Pass counts are printed as test diagnostics.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import type { TestContext } from 'node:test';

export const FIXTURES = path.join(import.meta.dirname, '..', '..', 'fixtures', 'conformance');

export interface Outcome {
    readonly id: string;
    readonly ok: boolean;
    /** What was expected and what came out, for the failure message. */
    readonly detail: string;
}

type Deviations = Record<string, Record<string, string>>;

const deviations = JSON.parse(fs.readFileSync(path.join(import.meta.dirname, 'deviations.json'), 'utf8')) as Deviations;

export function listedDeviations(suite: string): Record<string, string> {
    return deviations[suite] ?? {};
}

/** Checks a suite's outcomes against its deviation list and reports the counts. */
export function settle(t: TestContext, suite: string, outcomes: readonly Outcome[]): void {
    const listed = listedDeviations(suite);
    const ids = new Set(outcomes.map((o) => o.id));
    assert.equal(ids.size, outcomes.length, `${suite}: case ids are not unique`);
    const agree = outcomes.filter((o) => o.ok).length;
    t.diagnostic(`${suite}: ${agree} of ${outcomes.length} agree, ${outcomes.length - agree} listed deviations`);
    for (const o of outcomes) if (!o.ok) t.diagnostic(`  deviation ${o.id}: ${o.detail}`);
    const unexpected = outcomes.filter((o) => !o.ok && !(o.id in listed)).map((o) => `${o.id}: ${o.detail}`);
    assert.deepEqual(unexpected, [], `${suite}: cases that disagree and are not listed in deviations.json`);
    const fixed = outcomes.filter((o) => o.ok && o.id in listed).map((o) => o.id);
    assert.deepEqual(fixed, [], `${suite}: listed deviations that now agree (remove them from deviations.json)`);
    const unknown = Object.keys(listed).filter((id) => !ids.has(id));
    assert.deepEqual(unknown, [], `${suite}: deviations.json lists cases that do not exist`);
}
