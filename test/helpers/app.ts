/**
 * Starts a real mailwarden app in-process for tests: writes the given YAML config into a
 * temporary folder, loads it with the real loader, builds the app with createApp and a
 * logger that records every JSON line, and starts it; its reload() re-reads that file, as
 * SIGHUP does under `serve`. Unless the config names DNS servers,
 * a loopback test DNS server with an empty zone (every name NXDOMAIN) is started and used,
 * so no lookup ever leaves the machine. Unless the config has a `pregreet:` section, the pregreet
 * wait is 0 (tests of it set it), and the readiness probe runs by itself once an hour, not every
 * 15 s (tests of it set dependencyProbeMs). `stop()` drains the app, stops that server and
 * removes the folder. It must not replace any part of the product with a fake unless a test passes one in.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { createApp, type App, type AppDeps } from '../../src/app.ts';
import { loadConfig } from '../../src/config/load.ts';
import { createLogger } from '../../src/log.ts';
import { startDnsServer, type DnsTestServer } from './dns-server.ts';
import { startScriptedUpstream, type ScriptedUpstream, type ScriptedUpstreamOptions } from './scripted-upstream.ts';

export interface TestApp {
    readonly app: App;
    readonly dir: string;
    /** Port of the listener with this name (the first listener by default). */
    port(name?: string): number;
    /** Parsed JSON log lines written so far. */
    readonly logs: Record<string, unknown>[];
    /** The same lines exactly as the logger wrote them. */
    readonly lines: string[];
    stop(): Promise<void>;
}

export async function startApp(yaml: string, deps: Omit<AppDeps, 'logger'> = {}): Promise<TestApp> {
    const dir = await mkdtemp(join(tmpdir(), 'mw-app-'));
    const file = join(dir, 'mailwarden.yaml');
    let dns: DnsTestServer | null = null;
    if (!/^dns:/m.test(yaml)) {
        dns = await startDnsServer({});
        yaml = `${yaml}\ndns: { servers: ["${dns.address}"], timeout: 1s }\n`;
    }
    // No pregreet wait unless the test is about it: every other test's first connection would
    // wait pregreet.wait (6 s) for its greeting.
    if (!/^pregreet:/m.test(yaml)) yaml = `${yaml}\npregreet: { wait: 0s }\n`;
    await writeFile(file, yaml);
    const config = loadConfig(file, {}, { forServe: true });
    const logs: Record<string, unknown>[] = [];
    const lines: string[] = [];
    const sink = new Writable({
        write(chunk: Buffer, _enc, cb) {
            for (const line of chunk.toString('utf8').split('\n')) {
                if (!line.trim()) continue;
                lines.push(line);
                logs.push(JSON.parse(line) as Record<string, unknown>);
            }
            cb();
        },
    });
    // as `serve` does: reload() (SIGHUP) reads this file again, with the same environment
    const app = createApp(config, {
        configFile: { path: file, env: {} },
        // the periodic readiness probe only where a test asks for it: a probe's upstream session
        // landing in the middle of a test would change the upstream connections it counts
        dependencyProbeMs: 3_600_000,
        ...deps,
        logger: createLogger('debug', sink),
    });
    try {
        await app.start();
    } catch (err) {
        await dns?.close();
        await rm(dir, { recursive: true, force: true });
        throw err;
    }
    let stopped = false;
    return {
        app,
        dir,
        logs,
        lines,
        port(name?: string) {
            const l = name ? app.listeners.find((x) => x.name === name) : app.listeners[0];
            if (!l) throw new Error(`no listener ${name ?? ''}`);
            return l.port;
        },
        async stop() {
            if (stopped) return;
            stopped = true;
            await app.stop();
            await dns?.close();
            await rm(dir, { recursive: true, force: true });
        },
    };
}

/** The decision log lines recorded so far. */
export function decisions(logs: readonly Record<string, unknown>[]): Record<string, unknown>[] {
    return logs.filter((l) => l.msg === 'decision');
}

/** An app in front of a scripted upstream that offers XCLIENT, as most listener tests need. */
export interface ScriptedGateway {
    readonly up: ScriptedUpstream;
    readonly mw: TestApp;
    close(): Promise<void>;
}

/** How startScriptedGateway sets up the upstream side. */
export interface ScriptedGatewayOptions {
    /** `false`: `upstream.xclient: false` (the scripted upstream's `ehlo` should then not offer it). */
    readonly xclient?: boolean;
    /** More keys of the `upstream:` section, as YAML (`timeout: 1s`). */
    readonly upstreamKeys?: string;
    /** The scripted upstream's behaviour; its `ehlo` replaces the default XCLIENT offer. */
    readonly upstream?: ScriptedUpstreamOptions;
    /** What the app is given besides its config (checks, a clock), as startApp takes it. */
    readonly deps?: Omit<AppDeps, 'logger'>;
}

/**
 * Starts a scripted upstream (offering XCLIENT unless `options.upstream.ehlo` says otherwise)
 * and an app forwarding to it: `lines` is the config without `upstream:` (hostname, domains,
 * listeners, …), `http: false` unless it says.
 */
export async function startScriptedGateway(
    lines: readonly string[],
    options: ScriptedGatewayOptions = {},
): Promise<ScriptedGateway> {
    const up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'], ...options.upstream });
    try {
        const http = lines.some((l) => l.startsWith('http:')) ? [] : ['http: false'];
        const keys = [
            `url: "smtp://127.0.0.1:${up.port}"`,
            ...(options.xclient === undefined ? [] : [`xclient: ${options.xclient}`]),
            ...(options.upstreamKeys ? [options.upstreamKeys] : []),
        ];
        const mw = await startApp([...lines, `upstream: { ${keys.join(', ')} }`, ...http].join('\n'), options.deps);
        return {
            up,
            mw,
            close: async () => {
                await mw.stop();
                await up.close();
            },
        };
    } catch (err) {
        await up.close();
        throw err;
    }
}
