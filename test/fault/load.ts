/**
 * The load run: many messages over many concurrent sessions through a real mailwarden process
 * into a real Postfix, then many idle connections, measuring what an operator sizes a host by:
 *   - throughput (messages the client got a 250 for, per second of sending) and zero loss;
 *   - memory per idle connection: the growth of the process's resident memory (/proc/PID/status)
 *     and of its V8 heap in use after a full garbage collection (asked of the V8 inspector,
 *     which the harness starts on a loopback port) divided by the connections;
 *   - no leak afterwards: open file descriptors (/proc/PID/fd) back to where they were before
 *     the traffic, the spool folder empty, no session left (`mailwarden_sessions_active`).
 * The configuration is that of a load test, not of the shipped rules: the shipped per-IP
 * connection limits are left out (a load generator is one host), `maxClients` is raised, and
 * the client's connections come from 250 loopback networks (127.1.N.1), as from many hosts.
 * Every check and rule of the shipped set still runs on every message.
 * Everything runs on loopback and is stopped before the returned promise settles.
 */
import { cp, mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { PACKAGE_RULES_DIR } from '../../src/config/defaults.ts';
import { startDnsServer } from '../helpers/dns-server.ts';
import { startPostfix } from '../helpers/postfix.ts';
import { duplicateRisks, judge, type FaultReport } from './judge.ts';
import { harnessZone, makeMessages, prepareMailwarden, seededRandom, spoolFiles, USERS } from './lab.ts';
import { mailboxScanner, type Delivery } from './mailbox.ts';
import { metricValue, type MailwardenProcess } from './mailwarden-process.ts';
import { runClient } from './mta-client.ts';

export interface LoadOptions {
    readonly messages: number;
    readonly concurrency: number;
    readonly messagesPerConnection: number;
    readonly idleConnections: number;
    readonly seed?: number;
    readonly progress?: (line: string) => void;
}

export interface LoadReport {
    readonly messages: Omit<FaultReport, 'spoolFilesLeft' | 'redisErrors' | 'injected' | 'problems' | 'seconds' | 'ok'>;
    /** Seconds from the first connection to the last reply. */
    readonly sendSeconds: number;
    /** Messages the client got a 250 for, per second of sending. */
    readonly messagesPerSecond: number;
    /** Seconds until Postfix had delivered every accepted message into the Maildirs. */
    readonly deliveredSeconds: number;
    readonly connectionsUsed: number;
    readonly idle: {
        readonly connections: number;
        /** Sessions mailwarden reported while they were all open. */
        readonly sessionsActive: number;
        readonly openSeconds: number;
        readonly rssBefore: number;
        readonly rssWith: number;
        readonly heapBefore: number;
        readonly heapWith: number;
        readonly rssPerConnection: number;
        readonly heapPerConnection: number;
    };
    readonly fds: {
        readonly atStart: number;
        readonly afterMessages: number;
        readonly withIdle: number;
        readonly afterIdleClosed: number;
    };
    readonly spoolFiles: { readonly afterMessages: number; readonly atEnd: number };
    /** Sessions still counted as active after every client left. */
    readonly sessionsLeft: number;
}

/** Client source addresses on 250 loopback /24 networks. */
export function loopbackSources(count = 250): string[] {
    return Array.from({ length: count }, (_, i) => `127.1.${i}.1`);
}

/**
 * Resident memory and the V8 heap in use right after a full garbage collection (through the
 * inspector), so neither figure carries garbage of the traffic before.
 */
async function memoryOf(mw: MailwardenProcess): Promise<{ rss: number; heap: number }> {
    const heap = await mw.heapAfterGc();
    await sleep(500);
    return { rss: await mw.rss(), heap };
}

async function sessionsOf(mw: MailwardenProcess, httpPort: number): Promise<number> {
    return metricValue(await mw.metrics(httpPort), 'mailwarden_sessions_active{listener="mx"}') ?? 0;
}

/** Polls `read` until it returns `want` (or `timeoutMs` passes); returns the last value. */
async function settleTo(read: () => Promise<number>, want: (n: number) => boolean, timeoutMs: number): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    let value = await read();
    while (!want(value) && Date.now() < deadline) {
        await sleep(200);
        value = await read();
    }
    return value;
}

/** Opens `count` connections that greet and say EHLO, then stay idle; resolves with the sockets. */
async function openIdle(port: number, count: number, sources: readonly string[]): Promise<net.Socket[]> {
    const sockets: net.Socket[] = [];
    const one = (i: number): Promise<void> =>
        new Promise((resolve, reject) => {
            const s = net.connect({ port, host: '127.0.0.1', localAddress: sources[i % sources.length] });
            sockets.push(s);
            let buf = '';
            let greeted = false;
            const timer = setTimeout(() => reject(new Error(`idle connection ${i}: no reply within 30 s`)), 30_000);
            s.setEncoding('latin1');
            s.on('error', (err) => reject(err));
            s.on('data', (chunk: string) => {
                buf += chunk;
                if (!greeted && /^220 .*\r\n/m.test(buf)) {
                    greeted = true;
                    buf = '';
                    s.write('EHLO idle.harness.test\r\n');
                } else if (greeted && /^250 .*\r\n/m.test(buf)) {
                    clearTimeout(timer);
                    s.removeAllListeners('data');
                    resolve();
                } else if (/^[45]\d\d .*\r\n/m.test(buf)) {
                    clearTimeout(timer);
                    reject(new Error(`idle connection ${i} refused: ${buf.trim()}`));
                }
            });
        });
    // in batches, like a burst of clients rather than one SYN flood
    for (let i = 0; i < count; i += 250) {
        await Promise.all(Array.from({ length: Math.min(250, count - i) }, (_, k) => one(i + k)));
    }
    return sockets;
}

export async function runLoad(options: LoadOptions): Promise<LoadReport> {
    const say = options.progress ?? (() => {});
    const random = seededRandom(options.seed ?? 7);
    const dir = await mkdtemp(path.join(os.tmpdir(), 'mailwarden-load-'));
    const cleanup: Array<() => Promise<void>> = [() => rm(dir, { recursive: true, force: true })];
    try {
        const postfix = await startPostfix({ users: [...USERS] });
        cleanup.push(() => postfix.stop());
        const dns = await startDnsServer(harnessZone());
        cleanup.push(() => dns.close());
        const rulesDir = path.join(dir, 'rules');
        await cp(PACKAGE_RULES_DIR, rulesDir, { recursive: true });
        await rm(path.join(rulesDir, '50-limits.yaml'));
        const setup = await prepareMailwarden(path.join(dir, 'mailwarden'), {
            upstreamPort: postfix.port,
            rulesDir,
            dnsAddress: dns.address,
            maxClients: options.idleConnections + options.concurrency + 100,
            upstreamTimeouts: '',
            dnsTimeout: '5s',
            inspect: true,
        });
        const mw = setup.process;
        await mw.start();
        cleanup.push(() => mw.stop());
        const sources = loopbackSources();
        const fdsAtStart = await mw.fds();

        // Messages.
        const messages = makeMessages('load', options.messages, random);
        say(`sending ${messages.length} messages over ${options.concurrency} sessions…`);
        const sendStart = Date.now();
        const result = await runClient(messages, {
            port: setup.port,
            localAddresses: sources,
            concurrency: options.concurrency,
            messagesPerConnection: options.messagesPerConnection,
            spreadMs: 0,
            backoff: { baseMs: 250, maxMs: 2_000 },
            maxAttempts: 40,
            maxMessageMs: 300_000,
            commandTimeoutMs: 120_000,
            dataTimeoutMs: 120_000,
            random,
        });
        const accepted = result.records.filter((r) => [...r.rcpts.values()].some((s) => s.state === 'accepted')).length;
        const sendSeconds = result.ms / 1000;
        say(`sent in ${sendSeconds.toFixed(1)} s (${(accepted / sendSeconds).toFixed(0)} messages/s)`);
        const scanner = mailboxScanner((u) => postfix.maildir(u), USERS);
        let deliveries: ReadonlyMap<string, readonly Delivery[]> = new Map();
        const expected = result.records.reduce(
            (n, r) => n + [...r.rcpts.values()].filter((s) => s.state === 'accepted').length,
            0,
        );
        const count = (d: ReadonlyMap<string, readonly Delivery[]>): number => {
            let n = 0;
            for (const list of d.values()) n += list.length;
            return n;
        };
        const deadline = Date.now() + 300_000;
        for (;;) {
            deliveries = await scanner.scan();
            if ((count(deliveries) >= expected && (await postfix.queued()) === 0) || Date.now() > deadline) break;
            await sleep(500);
        }
        const deliveredSeconds = (Date.now() - sendStart) / 1000;
        const verdict = judge('load', result.records, deliveries, duplicateRisks(mw.logs), []);
        say(`delivered ${verdict.delivered} recipients; lost ${verdict.lost}`);

        // Back to rest: no session, the descriptors of the start.
        await settleTo(
            () => sessionsOf(mw, setup.httpPort),
            (n) => n === 0,
            30_000,
        );
        const fdsAfterMessages = await settleTo(
            () => mw.fds(),
            (n) => n <= fdsAtStart,
            30_000,
        );
        const spoolAfterMessages = (await spoolFiles(setup.spoolDir)).length;

        // Idle connections.
        const before = await memoryOf(mw);
        say(`opening ${options.idleConnections} idle connections…`);
        const opened = Date.now();
        const sockets = await openIdle(setup.port, options.idleConnections, sources);
        const openSeconds = (Date.now() - opened) / 1000;
        await sleep(1_000);
        const sessionsWithIdle = await sessionsOf(mw, setup.httpPort);
        const withIdle = await memoryOf(mw);
        const fdsWithIdle = await mw.fds();
        for (const s of sockets) s.destroy();
        const sessionsLeft = await settleTo(
            () => sessionsOf(mw, setup.httpPort),
            (n) => n === 0,
            30_000,
        );
        const fdsAfterIdle = await settleTo(
            () => mw.fds(),
            (n) => n <= fdsAtStart,
            30_000,
        );
        const spoolAtEnd = (await spoolFiles(setup.spoolDir)).length;
        const n = options.idleConnections;
        return {
            messages: verdict,
            sendSeconds,
            messagesPerSecond: accepted / sendSeconds,
            deliveredSeconds,
            connectionsUsed: result.connections,
            idle: {
                connections: n,
                sessionsActive: sessionsWithIdle,
                openSeconds,
                rssBefore: before.rss,
                rssWith: withIdle.rss,
                heapBefore: before.heap,
                heapWith: withIdle.heap,
                rssPerConnection: (withIdle.rss - before.rss) / n,
                heapPerConnection: (withIdle.heap - before.heap) / n,
            },
            fds: {
                atStart: fdsAtStart,
                afterMessages: fdsAfterMessages,
                withIdle: fdsWithIdle,
                afterIdleClosed: fdsAfterIdle,
            },
            spoolFiles: { afterMessages: spoolAfterMessages, atEnd: spoolAtEnd },
            sessionsLeft,
        };
    } finally {
        for (const c of cleanup.reverse()) await c().catch(() => undefined);
    }
}
