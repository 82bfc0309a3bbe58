/**
 * Shared settings of the fuzz tests (fast-check): one seed for every property, read from
 * `MW_FUZZ_SEED` (a fixed default otherwise, so CI runs are reproducible) and written to the
 * test output on every run, and a budget of runs that `MW_FUZZ_RUNS` may scale for a longer
 * local campaign (`MW_FUZZ_RUNS=10` runs ten times the CI budget). To replay a failure, run the
 * failing file with the seed it printed (and the `path` fast-check printed, if any, in
 * `MW_FUZZ_PATH`). It must not pick seeds at random by itself: CI must run the same cases.
 */
import type { TestContext } from 'node:test';

export interface FuzzSettings {
    readonly seed: number;
    readonly numRuns: number;
    readonly path?: string;
}

/** The default seed of the fuzz suites; any other is given with MW_FUZZ_SEED. */
export const DEFAULT_FUZZ_SEED = 20261206;

function envNumber(name: string, fallback: number): number {
    const raw = process.env[name];
    if (raw === undefined || raw === '') return fallback;
    const n = Number(raw);
    if (!Number.isSafeInteger(n)) throw new Error(`${name} must be an integer, not ${JSON.stringify(raw)}`);
    return n;
}

/** The seed and budget of one property; logs them as a test diagnostic (and on stderr) before it runs. */
export function fuzzSettings(t: TestContext, runs: number): FuzzSettings {
    const seed = envNumber('MW_FUZZ_SEED', DEFAULT_FUZZ_SEED);
    const numRuns = Math.max(1, Math.round(runs * envNumber('MW_FUZZ_RUNS', 1)));
    const path = process.env.MW_FUZZ_PATH || undefined;
    const line = `fuzz "${t.fullName}": seed ${seed}, ${numRuns} runs (replay: MW_FUZZ_SEED=${seed})`;
    t.diagnostic(line);
    process.stderr.write(`${line}\n`);
    return { seed, numRuns, ...(path ? { path } : {}) };
}
