/**
 * Throughput benchmark: sends small messages with fixed concurrency (a) straight into a
 * throw-away Postfix and (b) through an in-process mailwarden in front of the same Postfix,
 * in one run, and prints messages per second for both and their ratio. Every message must be
 * accepted and delivered, or the run fails. It must not touch the system's Postfix, and
 * every server it starts (Postfix, DNS, mailwarden) is stopped before it exits.
 *
 * Two scenarios run back to back: one message per connection (each connection also pays
 * smtp-server's fixed 100 ms pause before the greeting, which catches clients that talk
 * before it, so at concurrency C the proxy path tops out near C × 10 connections/s), and
 * ten messages per connection (what a busy sending MTA does), which shows the proxy's own cost.
 *
 * Usage: node scripts/bench.ts [--messages 1000] [--concurrency 10]
 */
import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { createApp, type App } from '../src/app.ts';
import { PACKAGE_RULES_DIR } from '../src/config/defaults.ts';
import { loadConfig } from '../src/config/load.ts';
import { startDnsServer, type DnsTestServer } from '../test/helpers/dns-server.ts';
import { startPostfix, type PostfixInstance } from '../test/helpers/postfix.ts';
import { smtpConnect } from '../test/helpers/smtp-client.ts';

const { values } = parseArgs({
    options: {
        messages: { type: 'string', default: '1000' },
        concurrency: { type: 'string', default: '10' },
    },
});
const MESSAGES = Number(values.messages);
const CONCURRENCY = Number(values.concurrency);
const WARMUP = Math.min(50, MESSAGES);
if (!(MESSAGES > 0 && CONCURRENCY > 0)) throw new Error('--messages and --concurrency must be positive numbers');

const BODY = 'This is a small benchmark message of a few lines, about as long as a short note.\r\n'.repeat(8);

function message(run: string, n: number): string {
    return (
        `From: Bench <bench@sender.test>\r\nTo: alice@example.test\r\nSubject: ${run} ${n}\r\n` +
        `Date: ${new Date().toUTCString()}\r\nMessage-ID: <${run}-${n}@sender.test>\r\n\r\n${BODY}`
    );
}

interface RunResult {
    seconds: number;
    failures: string[];
}

/** Sends `count` messages, `CONCURRENCY` connections at a time, `perConnection` messages per connection. */
async function run(name: string, port: number, count: number, perConnection: number): Promise<RunResult> {
    const failures: string[] = [];
    let next = 0;
    const worker = async (): Promise<void> => {
        while (next < count) {
            const client = await smtpConnect(port);
            try {
                await client.greeting();
                await client.cmd('EHLO bench-client.example');
                for (let i = 0; i < perConnection && next < count; i++) {
                    const n = next++;
                    const steps = [
                        await client.cmd('MAIL FROM:<bench@sender.test>'),
                        await client.cmd('RCPT TO:<alice@example.test>'),
                        await client.cmd('DATA'),
                    ];
                    if (steps.some((r, k) => r.code !== (k === 2 ? 354 : 250))) {
                        failures.push(`${name} #${n}: ${steps.map((r) => r.raw.trim()).join(' / ')}`);
                        await client.cmd('RSET');
                        continue;
                    }
                    client.write(message(name, n) + '.\r\n');
                    const done = await client.reply();
                    if (done.code !== 250) failures.push(`${name} #${n}: ${done.raw.trim()}`);
                }
                await client.cmd('QUIT');
            } catch (error) {
                failures.push(`${name}: ${String(error)}`);
            } finally {
                client.close();
            }
        }
    };
    const started = performance.now();
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    return { seconds: (performance.now() - started) / 1000, failures };
}

function line(label: string, r: RunResult): string {
    const rate = MESSAGES / r.seconds;
    return `${label.padEnd(26)} ${String(MESSAGES).padStart(6)} messages in ${r.seconds.toFixed(2).padStart(6)} s = ${rate.toFixed(0).padStart(6)} msg/s`;
}

let postfix: PostfixInstance | null = null;
let dns: DnsTestServer | null = null;
let app: App | null = null;
let dir: string | null = null;
try {
    postfix = await startPostfix();
    dns = await startDnsServer({});
    dir = await mkdtemp(path.join(os.tmpdir(), 'mailwarden-bench-'));
    // The shipped rules, with the benchmark client on the allow list: every check still runs on
    // every message, but the shipped per-IP limits (10 connections at once, 100 a minute) do
    // not throttle a load generator that sends everything from 127.0.0.1; nor does the listener's
    // built-in share of one network (maxClientsPerNetwork), which knows no allow list.
    const rules = path.join(dir, 'rules');
    await cp(PACKAGE_RULES_DIR, rules, { recursive: true });
    await writeFile(path.join(rules, 'lists', 'allow-networks.txt'), '127.0.0.1\n');
    const configFile = path.join(dir, 'mailwarden.yaml');
    await writeFile(
        configFile,
        [
            'hostname: mx.test',
            'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx, maxClientsPerNetwork: 2000 }]',
            `upstream: { url: "smtp://127.0.0.1:${postfix.port}", xclient: true }`,
            `dns: { servers: ["${dns.address}"], timeout: 1s }`,
            `rules: "${rules}"`,
            'http: false',
            '',
        ].join('\n'),
    );
    const config = loadConfig(configFile, process.env);
    app = createApp(config, { logger: pino({ level: 'silent' }) });
    await app.start();
    const proxyPort = app.listeners[0]?.port;
    if (proxyPort === undefined) throw new Error('mailwarden has no listener');

    console.log(
        `Postfix ${postfix.host}:${postfix.port}, mailwarden 127.0.0.1:${proxyPort}; ` +
            `${MESSAGES} messages of ${message('x', 0).length} bytes per run, concurrency ${CONCURRENCY}`,
    );
    // Warm up both paths (JIT, Postfix process pool), not counted.
    const warm = [await run('warmup-direct', postfix.port, WARMUP, 1), await run('warmup-proxy', proxyPort, WARMUP, 1)];
    const results: RunResult[] = [];
    for (const perConnection of [1, 10]) {
        const direct = await run(`direct-${perConnection}`, postfix.port, MESSAGES, perConnection);
        const proxied = await run(`mailwarden-${perConnection}`, proxyPort, MESSAGES, perConnection);
        results.push(direct, proxied);
        console.log(`\n${perConnection} message${perConnection > 1 ? 's' : ''} per connection:`);
        console.log(line('  straight into Postfix:', direct));
        console.log(line('  through mailwarden:', proxied));
        console.log(`  ratio mailwarden/direct:  ${(direct.seconds / proxied.seconds).toFixed(2)}`);
    }
    const sent = 2 * WARMUP + 4 * MESSAGES;
    const failures = [...warm, ...results].flatMap((r) => r.failures);
    const delivered = (await postfix.waitForMessages('alice', sent - failures.length, 120_000)).length;
    console.log(`\ndelivered to the Maildir:  ${delivered} of ${sent} sent (warm-up included)`);
    if (failures.length > 0) {
        console.error(
            `${failures.length} messages were not accepted, for example:\n${failures.slice(0, 5).join('\n')}`,
        );
        process.exitCode = 1;
    }
} finally {
    await app?.stop();
    await dns?.close();
    await postfix?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
}
