/**
 * Runs Debian's redis-server for tests: a child process on a free loopback port, without
 * persistence, working in a fresh temporary folder; also a three-master Redis Cluster and a
 * Sentinel watching one server. It must not touch the system's Redis or its data, and
 * stop() ends only the processes it started (by PID) and removes their folders.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startDaemon } from './daemon.ts';
import { freePort } from './smtp-client.ts';

export interface RedisInstance {
    readonly host: '127.0.0.1';
    readonly port: number;
    /** `redis://127.0.0.1:PORT` */
    readonly url: string;
    /** PID of the redis-server process (for tests that pause it with SIGSTOP/SIGCONT). */
    readonly pid: number;
    /** What redis-server printed so far. */
    output(): string;
    stop(): Promise<void>;
}

function redisCommand(): string {
    return existsSync('/usr/bin/redis-server') ? '/usr/bin/redis-server' : 'redis-server';
}

/** Sends PING on a raw socket; resolves true on `+PONG`. */
async function ping(port: number): Promise<boolean> {
    return new Promise((resolve) => {
        const socket = net.connect({ host: '127.0.0.1', port });
        let data = '';
        const done = (ok: boolean): void => {
            socket.destroy();
            resolve(ok);
        };
        socket.setTimeout(1_000, () => done(false));
        socket.on('error', () => done(false));
        socket.on('connect', () => socket.write('PING\r\n'));
        socket.on('data', (chunk) => {
            data += chunk.toString('latin1');
            if (data.includes('\r\n')) done(data.startsWith('+PONG'));
        });
    });
}

export interface StartRedisOptions {
    /** A fixed port (e.g. to restart a server where a client expects it); default: a free one. */
    port?: number;
    /** More `--name value` settings (e.g. cluster mode). */
    settings?: Record<string, string>;
}

/** Starts redis-server; it answers PING when the promise resolves. */
export async function startRedis(options: StartRedisOptions = {}): Promise<RedisInstance> {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'mailwarden-redis-'));
    const port = options.port ?? (await freePort());
    const settings: Record<string, string> = {
        port: String(port),
        bind: '127.0.0.1',
        save: '',
        appendonly: 'no',
        daemonize: 'no',
        dir,
        logfile: '',
        ...options.settings,
    };
    const args = Object.entries(settings).flatMap(([key, value]) => [`--${key}`, value]);
    return launch(args, port, dir);
}

/** Runs redis-server with `args` (it must listen on `port`); `dir` is removed by stop(). */
async function launch(args: string[], port: number, dir: string): Promise<RedisInstance> {
    const daemon = startDaemon(redisCommand(), args);
    const stop = async (): Promise<void> => {
        // SIGCONT first, in case a test left it paused
        await daemon.stop(5_000, 'SIGCONT');
        await rm(dir, { recursive: true, force: true });
    };

    const deadline = Date.now() + 10_000;
    for (;;) {
        await sleep(50);
        if (daemon.spawnError()) {
            await stop();
            throw new Error(
                `redis-server could not be started: ${String(daemon.spawnError())} (install the redis-server package)`,
            );
        }
        if (!daemon.running()) {
            await stop();
            throw new Error(`redis-server exited during start:\n${daemon.output()}`);
        }
        if (await ping(port)) break;
        if (Date.now() > deadline) {
            await stop();
            throw new Error(`redis-server did not answer PING on 127.0.0.1:${port}:\n${daemon.output()}`);
        }
    }

    return {
        host: '127.0.0.1',
        port,
        url: `redis://127.0.0.1:${port}`,
        pid: daemon.pid,
        output: () => daemon.output(),
        stop,
    };
}

function redisCli(): string {
    return existsSync('/usr/bin/redis-cli') ? '/usr/bin/redis-cli' : 'redis-cli';
}

/** Runs redis-cli with `args`; resolves its stdout, rejects with its output on failure. */
export function runRedisCli(args: readonly string[], timeoutMs = 30_000): Promise<string> {
    return new Promise((resolve, reject) => {
        execFile(redisCli(), args, { timeout: timeoutMs }, (error, stdout, stderr) => {
            if (error) reject(new Error(`redis-cli ${args.join(' ')} failed: ${error.message}\n${stdout}${stderr}`));
            else resolve(stdout);
        });
    });
}

/** The concurrency leases held in `redis` now: the members of the first `*:cc:*` key (0 without one). */
export async function concurrencyLeases(redis: Pick<RedisInstance, 'port'>): Promise<number> {
    const keys = (await runRedisCli(['-p', String(redis.port), '--scan', '--pattern', '*:cc:*'])).trim();
    if (keys === '') return 0;
    return Number((await runRedisCli(['-p', String(redis.port), 'ZCARD', keys.split('\n')[0]!])).trim());
}

/** `count` distinct free loopback ports. */
async function freePorts(count: number): Promise<number[]> {
    const ports = new Set<number>();
    while (ports.size < count) ports.add(await freePort());
    return [...ports];
}

export interface RedisClusterInstance {
    readonly nodes: readonly RedisInstance[];
    /** `127.0.0.1:PORT` of each master. */
    readonly seeds: readonly string[];
    stop(): Promise<void>;
}

/**
 * Starts `masters` redis-server processes in cluster mode (each with its own folder and an
 * explicit cluster bus port), joins them with `redis-cli --cluster create` (no replicas) and
 * waits until every node reports `cluster_state:ok`. Fails with the reason; never skips.
 */
export async function startRedisCluster(masters = 3): Promise<RedisClusterInstance> {
    const nodes: RedisInstance[] = [];
    const stop = async (): Promise<void> => {
        await Promise.all(nodes.map((n) => n.stop()));
    };
    try {
        const ports = await freePorts(masters * 2);
        for (let i = 0; i < masters; i++) {
            nodes.push(
                await startRedis({
                    port: ports[i * 2]!,
                    settings: {
                        'cluster-enabled': 'yes',
                        'cluster-config-file': 'nodes.conf',
                        'cluster-port': String(ports[i * 2 + 1]!),
                        'cluster-node-timeout': '2000',
                    },
                }),
            );
        }
        const seeds = nodes.map((n) => `127.0.0.1:${n.port}`);
        await runRedisCli(['--cluster', 'create', ...seeds, '--cluster-replicas', '0', '--cluster-yes']);
        const deadline = Date.now() + 20_000;
        for (const node of nodes) {
            for (;;) {
                const info = await runRedisCli(['-h', '127.0.0.1', '-p', String(node.port), 'cluster', 'info']);
                if (/cluster_state:ok/.test(info) && /cluster_known_nodes:(\d+)/.exec(info)?.[1] === String(masters))
                    break;
                if (Date.now() > deadline) throw new Error(`cluster node ${node.port} did not become ready:\n${info}`);
                await sleep(100);
            }
        }
        return { nodes, seeds, stop };
    } catch (error) {
        await stop();
        throw error;
    }
}

export interface RedisSentinelInstance extends RedisInstance {
    /** The master name the sentinel monitors. */
    readonly masterName: string;
}

/** Starts a Sentinel (`redis-server CONF --sentinel`) that monitors `master` under `masterName`. */
export async function startRedisSentinel(
    master: RedisInstance,
    masterName = 'mymaster',
): Promise<RedisSentinelInstance> {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'mailwarden-sentinel-'));
    const port = await freePort();
    const conf = path.join(dir, 'sentinel.conf');
    await writeFile(
        conf,
        [
            `port ${port}`,
            'bind 127.0.0.1',
            'daemonize no',
            `dir ${dir}`,
            `sentinel monitor ${masterName} 127.0.0.1 ${master.port} 1`,
            `sentinel down-after-milliseconds ${masterName} 5000`,
            '',
        ].join('\n'),
    );
    const instance = await launch([conf, '--sentinel'], port, dir);
    return { ...instance, masterName };
}
