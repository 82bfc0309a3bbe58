/**
 * `mailwarden serve`: loads the configuration, builds the app with the real world
 * (system clock, pino on stdout, the configured upstream), starts it, and handles signals:
 * SIGTERM/SIGINT drain ("Service shutting down") and exit 0; SIGUSR2 drains with "Service
 * restarting" and exits with RESTART_EXIT_CODE, which the shipped systemd unit restarts on
 * (a supervisor's own restart sends SIGTERM, indistinguishable from a stop, so "restarting"
 * is said only when the operator asks for it); SIGHUP re-reads the config file (live settings
 * applied, the others named in a "needs a restart" warning), rules, lists, users and
 * certificates; a SIGHUP or SIGUSR2 that came while it started is acted on once it has started
 * (the launcher holds them, src/commands/early-signals.ts). It refuses exactly what `mailwarden check` refuses, with the same
 * `FILE:LINE:COL` lines, and logs the config's warnings at start (once: by the primary when
 * there are workers), each with the line `check` prints for it.
 * With `workers` above 1 this process becomes the primary (src/cluster/primary.ts) and forks
 * workers that run this same command; each worker builds the app without the HTTP endpoint and
 * handles its signals as a single process does.
 * A start that fails (a port already taken, say) closes whatever it had opened and the process
 * exits 1 at once, saying why on stderr: it must never keep serving half-started (some listeners
 * up, no HTTP endpoint, no signal handlers). A worker that cannot start ends the same way, and its
 * primary then stops the others and exits 1 too.
 * Returns -1 while serving (the process lives on); any other status ends the process.
 */
import cluster from 'node:cluster';
import { runPrimary, workerCount } from '../cluster/primary.ts';
import {
    ConfigError,
    formatIssue,
    loadConfig,
    loadConfigWithWarnings,
    resolveConfigPath,
    type Issue,
} from '../config/load.ts';
import { createLogger, type Logger } from '../log.ts';
import { createMetrics } from '../metrics.ts';
import { VERSION } from '../version.ts';
import { takeOverEarlySignals } from './early-signals.ts';

/** Exit status after a SIGUSR2 drain: EX_TEMPFAIL (sysexits.h), "try again", so a supervisor starts it again. */
export const RESTART_EXIT_CODE = 75;

export async function runServe(opts: { configFlag: string | undefined }): Promise<number> {
    // Anything but serving ends the process now, explicitly: a worker's IPC channel to its
    // primary, or a handle a failed start left, would otherwise keep it alive (and the primary
    // waits for a worker to be ready or to end).
    try {
        const code = await serve(opts);
        if (code !== -1) process.exit(code);
        return code;
    } catch (err) {
        process.stderr.write(`mailwarden: ${err instanceof Error && err.stack ? err.stack : String(err)}\n`);
        process.exit(1);
    }
}

async function serve(opts: { configFlag: string | undefined }): Promise<number> {
    const cwd = process.cwd();
    const path = resolveConfigPath({ flag: opts.configFlag, env: process.env, cwd });
    let config;
    let warnings: readonly Issue[];
    try {
        ({ config, warnings } = loadConfigWithWarnings(path, process.env, { cwd, forServe: true }));
    } catch (err) {
        if (err instanceof ConfigError) {
            process.stderr.write(`${err.message}\n`);
            return 1;
        }
        throw err;
    }
    const count = workerCount(config);
    const worker = cluster.isWorker ? cluster.worker : undefined;
    if (!worker && count > 1) {
        const log = createLogger(config.log.level).child({ role: 'primary' });
        logConfigWarnings(log, warnings);
        const running = runPrimary({
            config,
            count,
            log,
            metrics: createMetrics(VERSION),
            reloadConfig: () => (path === null ? null : loadConfig(path, process.env, { cwd, forServe: true })),
            exit: (code) => process.exit(code),
        });
        // runPrimary installed its signal handlers before its first wait
        takeOverEarlySignals((signals) => log.info({ signals }, 'signals received during start-up'));
        return running;
    }
    // loaded here, not above: the primary of several workers never runs the gateway itself,
    // and leaving the checks, rules and mailauth out keeps it smaller (about 108 MB of RSS instead of
    // 135, of which about 58 MB are the pages of the Node.js binary all the processes share)
    const [{ createApp }, { RuleError }, { serveAsWorker }] = await Promise.all([
        import('../app.ts'),
        import('../rules/index.ts'),
        import('../cluster/worker.ts'),
    ]);
    const root = createLogger(config.log.level);
    const log = worker ? root.child({ worker: worker.id, pid: process.pid }) : root;
    // a worker reads the file its primary read and logged the warnings of
    if (!worker) logConfigWarnings(log, warnings);
    let app;
    try {
        app = createApp(config, {
            logger: log,
            ...(path === null ? {} : { configFile: { path, env: process.env, cwd } }),
            ...(worker ? { worker: true, workerShare: count } : {}),
            warmVerifyThread: true,
        });
    } catch (err) {
        // invalid rule files, or an invalid users or sendAs file: the lines `check` prints
        if (err instanceof RuleError || err instanceof ConfigError) {
            process.stderr.write(`${err.message}\n`);
            return 1;
        }
        throw err;
    }
    try {
        await app.start();
    } catch (err) {
        // start() has closed what it opened; nothing may go on serving half-started
        const why = err instanceof Error ? err.message : String(err);
        log.error({ err: why }, 'start failed; exiting');
        process.stderr.write(`mailwarden: start failed: ${why}\n`);
        return 1;
    }
    let stopping = false;
    const shutdown = (signal: string, restart = false): void => {
        if (stopping) return;
        stopping = true;
        log.info({ signal, restart }, 'signal received');
        app.stop({ restart }).then(
            () => process.exit(restart ? RESTART_EXIT_CODE : 0),
            (err: unknown) => {
                log.error({ err }, 'shutdown failed');
                process.exit(1);
            },
        );
    };
    process.on('SIGTERM', () => shutdown('SIGTERM'));
    process.on('SIGINT', () => shutdown('SIGINT'));
    process.on('SIGUSR2', () => shutdown('SIGUSR2', true));
    process.on('SIGHUP', () => {
        log.info({ signal: 'SIGHUP' }, 'reload requested');
        app.reload();
    });
    takeOverEarlySignals((signals) => log.info({ signals }, 'signals received during start-up'));
    // a worker drains like a stop when its primary is gone: nobody would stop or replace it
    if (worker) serveAsWorker(app, () => shutdown('primary gone'));
    return -1;
}

/**
 * The config's warnings (settings that are valid but risky, such as `proxyProtocol: true`), one
 * line each at start, with the `FILE:LINE:COL: warning: …` line `mailwarden check` prints.
 */
function logConfigWarnings(log: Logger, warnings: readonly Issue[]): void {
    for (const w of warnings) {
        log.warn(
            { warning: formatIssue({ ...w, severity: 'warning' }) },
            'config warning: the setting is in force (mailwarden check shows the same)',
        );
    }
}
