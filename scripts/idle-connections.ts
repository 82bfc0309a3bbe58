/**
 * Measures what an idle SMTP connection costs mailwarden in memory, the figure behind the
 * default `maxClients`: an in-process mailwarden, a child process that opens N connections
 * (greeting and EHLO, or also STARTTLS and EHLO again) and holds them, and the difference in
 * resident memory and in V8 heap after a full garbage collection, divided by N. Clients come
 * from 127.1.x.y so that no per-network share applies; no rule file is loaded. It listens on
 * loopback only and stops everything it started before it exits.
 *
 * Usage: node --expose-gc scripts/idle-connections.ts [--connections 2000] [--tls]
 */
import { spawn } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { createApp, type App } from '../src/app.ts';
import { loadConfig } from '../src/config/load.ts';

const { values } = parseArgs({
    options: {
        connections: { type: 'string', default: '2000' },
        tls: { type: 'boolean', default: false },
    },
});
const N = Number(values.connections);
if (!(N > 0 && N <= 20_000)) throw new Error('--connections must be between 1 and 20000');
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error('run with node --expose-gc');

/** The client side, run in a child process so its sockets do not count in our memory. */
const CLIENT = `
const net = require('node:net');
const tls = require('node:tls');
const [port, n, useTls] = process.argv.slice(1).map(Number);
const sockets = [];
function reader(socket, onLine) {
    let buf = '';
    socket.on('data', (d) => {
        buf += d.toString('latin1');
        let i;
        while ((i = buf.indexOf('\\n')) >= 0) { const line = buf.slice(0, i); buf = buf.slice(i + 1); onLine(line); }
    });
}
function open(i) {
    return new Promise((resolve, reject) => {
        const localAddress = '127.1.' + Math.floor(i / 250) + '.' + (1 + (i % 250));
        const s = net.connect({ host: '127.0.0.1', port, localAddress });
        s.setTimeout(30000, () => reject(new Error('timeout on connection ' + i)));
        s.on('error', reject);
        let step = 0;
        reader(s, (line) => {
            if (line[3] === '-') return;
            if (!line.startsWith('2')) return reject(new Error('connection ' + i + ': ' + line));
            if (step === 0) { step = 1; s.write('EHLO client.example\\r\\n'); }
            else if (step === 1 && !useTls) { s.setTimeout(0); sockets.push(s); resolve(); }
            else if (step === 1) { step = 2; s.write('STARTTLS\\r\\n'); }
            else if (step === 2) {
                s.removeAllListeners('data');
                const t = tls.connect({ socket: s, rejectUnauthorized: false }, () => {
                    reader(t, (l) => { if (l[3] !== '-') { s.setTimeout(0); sockets.push(t); resolve(); } });
                    t.write('EHLO client.example\\r\\n');
                });
                t.on('error', reject);
            }
        });
    });
}
(async () => {
    for (let i = 0; i < n; i += 50) await Promise.all(Array.from({ length: Math.min(50, n - i) }, (_, k) => open(i + k)));
    process.stdout.write('ready\\n');
    process.stdin.resume();
    process.stdin.on('end', () => process.exit(0));
})().catch((e) => { process.stderr.write(String(e.stack || e) + '\\n'); process.exit(1); });
`;

function settle(): { rss: number; heap: number; external: number } {
    for (let i = 0; i < 3; i++) gc!();
    const m = process.memoryUsage();
    return { rss: m.rss, heap: m.heapUsed, external: m.external + m.arrayBuffers };
}

const dir = await mkdtemp(path.join(os.tmpdir(), 'mw-idle-'));
let app: App | null = null;
try {
    await mkdir(path.join(dir, 'rules'));
    const tlsLines: string[] = [];
    if (values.tls) {
        execFileSync(
            'openssl',
            [
                'req',
                '-x509',
                '-newkey',
                'ec',
                '-pkeyopt',
                'ec_paramgen_curve:prime256v1',
                '-nodes',
                '-days',
                '1',
                '-subj',
                '/CN=localhost',
                '-keyout',
                path.join(dir, 'key.pem'),
                '-out',
                path.join(dir, 'cert.pem'),
            ],
            { stdio: 'ignore' },
        );
        tlsLines.push(`tls: { cert: "${path.join(dir, 'cert.pem')}", key: "${path.join(dir, 'key.pem')}" }`);
    }
    const file = path.join(dir, 'mailwarden.yaml');
    await writeFile(
        file,
        [
            'hostname: mx.test',
            ...tlsLines,
            `listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx, maxClients: ${N + 10}, maxClientsPerNetwork: ${N + 10}, preTransactionTimeout: 10m, socketTimeout: 10m }]`,
            // greeted at once: the connections are measured idle after the greeting
            'pregreet: { wait: 0s }',
            // a closed port: DNS answers "refused" at once, as a broken resolver would
            'dns: { servers: ["127.0.0.1:9"], timeout: 100ms }',
            `rules: "${path.join(dir, 'rules')}"`,
            'http: false',
            '',
        ].join('\n'),
    );
    app = createApp(loadConfig(file, {}), { logger: pino({ level: 'silent' }) });
    await app.start();
    const port = app.listeners[0]!.port;
    const before = settle();
    const child = spawn(process.execPath, ['-e', CLIENT, String(port), String(N), values.tls ? '1' : '0'], {
        stdio: ['pipe', 'pipe', 'inherit'],
    });
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    const ready = await Promise.race([
        new Promise<boolean>((resolve) =>
            child.stdout.on('data', (d: Buffer) => d.toString().includes('ready') && resolve(true)),
        ),
        exited.then(() => false),
    ]);
    if (!ready) throw new Error('the client process failed');
    await new Promise((r) => setTimeout(r, 1000));
    const after = settle();
    const open = (await app.metrics.sessionsActive.get()).values[0]?.value ?? 0;
    child.stdin.end();
    await exited;
    const kib = (bytes: number): string => (bytes / N / 1024).toFixed(1);
    process.stdout.write(
        [
            `${N} idle ${values.tls ? 'STARTTLS' : 'plain'} connections (sessions open: ${open})`,
            `  RSS:               +${((after.rss - before.rss) / 2 ** 20).toFixed(1)} MiB, ${kib(after.rss - before.rss)} KiB each`,
            `  V8 heap used:      +${((after.heap - before.heap) / 2 ** 20).toFixed(1)} MiB, ${kib(after.heap - before.heap)} KiB each`,
            `  external+buffers:  +${((after.external - before.external) / 2 ** 20).toFixed(1)} MiB, ${kib(after.external - before.external)} KiB each`,
            '',
        ].join('\n'),
    );
} finally {
    await app?.stop();
    await rm(dir, { recursive: true, force: true });
}
