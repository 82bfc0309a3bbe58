/**
 * Loaded into every test file's process (`node --import` in scripts/test.sh): makes its stdout
 * and stderr blocking. The test runner's child reports each result on stdout, a socket to the
 * runner; with --test-force-exit it exits as soon as its tests end, and on a busy machine the
 * results still queued in a non-blocking socket were lost: the run then reported fewer tests,
 * all passing, and never the ones it dropped. Blocking writes wait until the runner has read
 * them. It must do nothing else.
 */
type MaybeBlocking = { _handle?: { setBlocking?: (on: boolean) => unknown } };

for (const stream of [process.stdout, process.stderr] as unknown as MaybeBlocking[]) {
    stream._handle?.setBlocking?.(true);
}
