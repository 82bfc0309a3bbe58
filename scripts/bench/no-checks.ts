/**
 * The benchmark's `no-checks` path: mailwarden built from the same configuration as `serve`
 * builds it (listener, sessions, rules, replies, upstream client, logs, metrics) but with no
 * check injected (`createApp(config, { checks: [] })`): no sender authentication, reputation,
 * limits or DNS. Beside the full path in one run, it splits mailwarden's cost into what the proxy
 * itself takes and what the checks add.
 *
 *   node --max-semi-space-size=4 --heap-growing-percent=20 scripts/bench/no-checks.ts CONFIG
 *
 * Development tool, run by scripts/bench.ts only: it must not be used to receive real mail (it
 * refuses nothing the checks would). Stops on SIGTERM and SIGINT as `serve` does.
 */
import { createApp } from '../../src/app.ts';
import { loadConfig } from '../../src/config/load.ts';
import { createLogger } from '../../src/log.ts';

const file = process.argv[2];
if (!file) {
    process.stderr.write('usage: no-checks.ts CONFIG\n');
    process.exit(2);
}
const config = loadConfig(file, process.env, { cwd: process.cwd() });
const log = createLogger(config.log.level).child({ path: 'no-checks' });
const app = createApp(config, { logger: log, checks: [] });
await app.start();
// as `serve`: SIGTERM and SIGINT (Ctrl-C reaches the whole process group) drain, then exit
let stopping = false;
const stop = (): void => {
    if (stopping) return;
    stopping = true;
    app.stop().then(
        () => process.exit(0),
        () => process.exit(1),
    );
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
