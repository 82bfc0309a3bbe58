/**
 * A start that fails ends the process: `serve` whose HTTP port or second listener port another
 * process holds exits 1 promptly, saying why on stderr, instead of serving SMTP half-started (no
 * /metrics, no signal handlers); with `workers: 2` the primary exits 1 too, whether its own HTTP
 * port or a worker's listener cannot be bound. Through the app: a start() that fails closes the
 * listeners it had already opened. A start that works logs the config's warnings, with the lines
 * `check` prints for them (once, from the primary, with workers).
 */
import assert from 'node:assert/strict';
import { chown, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createApp } from '../../src/app.ts';
import { loadConfig } from '../../src/config/load.ts';
import { createLogger } from '../../src/log.ts';
import { startDnsServer, type DnsTestServer } from '../helpers/dns-server.ts';
import { startRedis, type RedisInstance } from '../helpers/redis.ts';
import { runCommand, startServe } from '../helpers/serve.ts';

/** A loopback port another server holds for the length of the test. */
async function holdPort(): Promise<{ port: number; close: () => Promise<void> }> {
    const server = net.createServer((s) => s.destroy());
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as net.AddressInfo).port;
    return { port, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

/** Runs `fn` while another listener holds a loopback port, and frees the port afterwards. */
async function withHeldPort(fn: (port: number) => Promise<void>): Promise<void> {
    const held = await holdPort();
    try {
        await fn(held.port);
    } finally {
        await held.close();
    }
}

/** Resolves with true when something accepts a connection on the port, false when refused. */
function accepting(port: number): Promise<boolean> {
    return new Promise((resolve) => {
        const s = net.connect(port, '127.0.0.1');
        s.once('connect', () => {
            s.destroy();
            resolve(true);
        });
        s.once('error', () => resolve(false));
    });
}

/** Runs `serve` with this config; resolves with its exit code, its stderr and its log lines. */
async function serveUntilExit(
    dir: string,
    lines: string[],
    timeoutMs: number,
): Promise<{ code: number | null | 'still running'; stderr: string; logs: Record<string, unknown>[] }> {
    const file = join(dir, `mailwarden-${Math.random().toString(36).slice(2)}.yaml`);
    await writeFile(file, [...lines, ''].join('\n'));
    const serve = startServe(file, dir);
    let timer: NodeJS.Timeout | undefined;
    const code = await Promise.race([
        serve.exited,
        new Promise<'still running'>((resolve) => {
            timer = setTimeout(() => resolve('still running'), timeoutMs);
        }),
    ]);
    clearTimeout(timer);
    if (code === 'still running') await serve.stop(2000);
    return { code, stderr: serve.stderr(), logs: serve.logs };
}

describe('a start that fails', () => {
    let dir: string;
    let dns: DnsTestServer;
    before(async () => {
        dir = await mkdtemp(join(tmpdir(), 'mw-start-'));
        dns = await startDnsServer({});
    });
    after(async () => {
        await dns.close();
        await rm(dir, { recursive: true, force: true });
    });
    const base = (): string[] => [
        'hostname: mx.example.test',
        `dns: { servers: ["${dns.address}"], timeout: 500ms }`,
        'pregreet: { wait: 0s }',
    ];

    it('ends serve with status 1 when the HTTP port is taken, after the listeners were up', async () => {
        await withHeldPort(async (port) => {
            const r = await serveUntilExit(
                dir,
                [
                    ...base(),
                    'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                    `http: { host: 127.0.0.1, port: ${port} }`,
                ],
                15_000,
            );
            assert.equal(r.code, 1, `exit status; stderr: ${r.stderr}`);
            assert.match(r.stderr, /start failed: listen EADDRINUSE/);
            assert.ok(r.logs.some((l) => l.msg === 'listening'));
            assert.ok(!r.logs.some((l) => l.msg === 'mailwarden started'));
        });
    });

    it('ends serve with status 1 when a second listener cannot bind its port', async () => {
        await withHeldPort(async (port) => {
            const r = await serveUntilExit(
                dir,
                [
                    ...base(),
                    'listeners:',
                    '  - { name: mx, host: 127.0.0.1, port: 0, mode: mx }',
                    `  - { name: mx2, host: 127.0.0.1, port: ${port}, mode: mx }`,
                    'http: false',
                ],
                15_000,
            );
            assert.equal(r.code, 1, `exit status; stderr: ${r.stderr}`);
            assert.match(r.stderr, /start failed: listen EADDRINUSE/);
        });
    });

    it("refuses another user's spool folder before starting, with the FILE:LINE:COL line check prints", async () => {
        // as root: a folder given to nobody (65534); as another user: the root folder
        let spool = '/';
        if (process.getuid!() === 0) {
            spool = join(dir, 'spool-of-nobody');
            await mkdir(spool);
            await chown(spool, 65534, 65534);
        }
        const lines = [
            ...base(),
            'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
            'http: false',
            `spool: { dir: "${spool}" }`,
        ];
        const r = await serveUntilExit(dir, lines, 15_000);
        assert.equal(r.code, 1, `exit status; stderr: ${r.stderr}`);
        assert.ok(!r.logs.some((l) => l.msg === 'listening'), 'nothing was started');
        const file = join(dir, 'check.yaml');
        await writeFile(file, [...lines, ''].join('\n'));
        const check = await runCommand(['check', '-c', file], dir);
        const line = /^.*:6:15: spool\.dir: .* belongs to uid \d+, not to uid \d+ that this process runs as; .*$/m;
        if (process.getuid!() === 0) {
            // check run as root cannot know the user serve will run as: it does not judge the owner
            // (operators run `mailwarden check && systemctl restart mailwarden` as root)
            assert.equal(check.code, 0, `check as root; stderr: ${check.stderr}`);
            assert.match(r.stderr, line);
            return;
        }
        assert.equal(check.code, 1);
        assert.match(check.stderr, line);
        assert.equal(r.stderr.replace(/^.*?:6:15: /, ''), check.stderr.replace(/^.*?:6:15: /, ''));
    });

    it('closes the listeners start() had opened', async () => {
        const held = await holdPort();
        const file = join(dir, 'app.yaml');
        await writeFile(
            file,
            [
                ...base(),
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `http: { host: 127.0.0.1, port: ${held.port} }`,
                '',
            ].join('\n'),
        );
        const app = createApp(loadConfig(file, {}), { logger: createLogger('silent') });
        try {
            await assert.rejects(app.start(), /EADDRINUSE/);
            const port = app.listeners[0]!.port;
            assert.notEqual(port, 0, 'the listener was bound before the HTTP endpoint failed');
            assert.equal(await accepting(port), false, 'the listener is closed again');
        } finally {
            await app.stop().catch(() => undefined);
            await held.close();
        }
    });

    it('logs each config warning at start, with the line check prints, and starts', async () => {
        const lines = [
            ...base(),
            'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx, proxyProtocol: true }]',
            'http: false',
            'shutdownTimeout: 1s',
        ];
        const file = join(dir, 'warned.yaml');
        await writeFile(file, [...lines, ''].join('\n'));
        const check = await runCommand(['check', '-c', file], dir);
        assert.equal(check.code, 0, check.stderr);
        const printed = check.stderr.trimEnd().split('\n');
        assert.equal(printed.length, 1, check.stderr);
        assert.match(printed[0]!, /^.*warned\.yaml:4:\d+: warning: listeners\[0\]\.proxyProtocol: true: every peer/);
        const serve = startServe(file, dir);
        try {
            await serve.waitFor((l) => l.msg === 'mailwarden started');
            const logged = serve.logs.filter((l) => String(l.msg).startsWith('config warning'));
            assert.deepEqual(
                logged.map((l) => l.warning),
                printed,
                'serve logs what check prints',
            );
            assert.equal(logged[0]?.level, 40, 'a warning');
        } finally {
            assert.equal(await serve.stop(), 0);
        }
    });

    describe('with workers: 2', () => {
        let redis: RedisInstance;
        before(async () => {
            redis = await startRedis();
        });
        after(async () => {
            await redis.stop();
        });

        it('logs each config warning once, from the primary', async () => {
            const file = join(dir, 'warned-workers.yaml');
            const lines = [
                ...base(),
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx, proxyProtocol: true }]',
                `redis: { url: "${redis.url}" }`,
                'http: false',
                'workers: 2',
                'shutdownTimeout: 2s',
            ];
            await writeFile(file, [...lines, ''].join('\n'));
            const serve = startServe(file, dir);
            try {
                await serve.waitFor((l) => l.msg === 'workers started', { timeoutMs: 60_000 });
                const logged = serve.logs.filter((l) => String(l.msg).startsWith('config warning'));
                assert.equal(logged.length, 1, JSON.stringify(logged));
                assert.equal(logged[0]?.role, 'primary');
                assert.match(
                    String(logged[0]?.warning),
                    /warned-workers\.yaml:4:\d+: warning: listeners\[0\]\.proxyProtocol: true/,
                );
            } finally {
                assert.equal(await serve.stop(), 0);
            }
        });

        it('ends the primary with status 1 when its HTTP port is taken', async () => {
            await withHeldPort(async (port) => {
                const r = await serveUntilExit(
                    dir,
                    [
                        ...base(),
                        'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                        `redis: { url: "${redis.url}" }`,
                        `http: { host: 127.0.0.1, port: ${port} }`,
                        'workers: 2',
                        'shutdownTimeout: 2s',
                    ],
                    60_000,
                );
                assert.equal(r.code, 1, `exit status; stderr: ${r.stderr}`);
                assert.ok(r.logs.some((l) => l.msg === 'start failed; stopping the workers'));
            });
        });

        it('ends the primary with status 1 when a worker cannot bind a listener', async () => {
            await withHeldPort(async (port) => {
                const r = await serveUntilExit(
                    dir,
                    [
                        ...base(),
                        'listeners:',
                        '  - { name: mx, host: 127.0.0.1, port: 0, mode: mx }',
                        `  - { name: mx2, host: 127.0.0.1, port: ${port}, mode: mx }`,
                        `redis: { url: "${redis.url}" }`,
                        'http: false',
                        'workers: 2',
                        'shutdownTimeout: 2s',
                    ],
                    60_000,
                );
                assert.equal(r.code, 1, `exit status; stderr: ${r.stderr}`);
                assert.match(r.stderr, /start failed: (listen|bind) EADDRINUSE/);
            });
        });
    });
});
