/**
 * The fault harness: drives mail through a real mailwarden process into a real Postfix while a
 * fault is injected, then checks what no fault may change:
 *   - a `250` only for mail Postfix delivered;
 *   - every message delivered or refused with a 5xx that a healthy system gives it too
 *     (the test messages include recipients Postfix does not know, refused `550 5.1.1`);
 *   - duplicates only inside the documented window (docs/flow.md "Duplicates"): mailwarden
 *     logged `duplicateRisk` for that message, or was SIGKILLed while the client waited for the
 *     answer to its end of data; a message Postfix itself delivered twice from one queue file
 *     after it was crashed is counted apart;
 *   - no spool file left behind.
 * The lab (Postfix, the test DNS server behind a fault-injecting DNS forwarder, a
 * fault-injecting SMTP proxy between mailwarden and Postfix, and Redis when a fault needs it)
 * is built once and shared by the faults; each fault gets a fresh mailwarden process and its
 * own message tokens. Everything runs on loopback and is stopped by close().
 */
import { randomBytes } from 'node:crypto';
import { cp, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { PACKAGE_RULES_DIR } from '../../src/config/defaults.ts';
import { startDnsServer, type DnsTestServer, type Zone } from '../helpers/dns-server.ts';
import { startPostfix, POSTFIX_DOMAIN, type PostfixInstance } from '../helpers/postfix.ts';
import { startRedis, type RedisInstance } from '../helpers/redis.ts';
import { freePort } from '../helpers/smtp-client.ts';
import { startDnsFaultProxy, type DnsFaultProxy } from './dns-fault-proxy.ts';
import { mailboxScanner, TOKEN_FIELD, type Delivery, type MailboxScanner } from './mailbox.ts';
import { mailwardenProcess, metricValue, type MailwardenProcess } from './mailwarden-process.ts';
import { runClient, type ClientOptions, type MessageRecord, type OutboundMessage } from './mta-client.ts';
import {
    startSmtpFaultProxy,
    type ProxyAction,
    type ProxyPoint,
    type ProxyPolicy,
    type SmtpFaultProxy,
} from './smtp-fault-proxy.ts';

/** The sending organisation; its DMARC policy (p=reject) covers the sending domains below it. */
export const SENDER_DOMAIN = 'sender.test';
/**
 * Messages come from many sending domains (`s17.sender.test`), as on a real MX, so DNS answers
 * are not all in mailwarden's cache (which keeps even a one-second answer for 5 s) when a DNS
 * fault strikes.
 */
export const SENDING_DOMAINS = 200;

export function sendingDomain(n: number): string {
    return `s${n % SENDING_DOMAINS}.${SENDER_DOMAIN}`;
}

export const USERS = ['alice', 'bob'] as const;
/** A recipient Postfix refuses (`550 5.1.1`): the 5xx a healthy system gives. */
export const UNKNOWN_USER = `nobody@${POSTFIX_DOMAIN}`;

/** A small deterministic PRNG (mulberry32), so a run can be repeated from its seed. */
export function seededRandom(seed: number): () => number {
    let a = seed >>> 0;
    return () => {
        a = (a + 0x6d2b79f5) >>> 0;
        let t = a;
        t = Math.imul(t ^ (t >>> 15), t | 1);
        t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
        return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
}

/**
 * The zone: an SPF record for each sending domain and the organisation's DMARC policy
 * (p=reject), so every message's verdict depends on DNS; one-second TTLs.
 */
export function harnessZone(): Zone {
    const zone: Zone = {
        soa: { name: '.', minimum: 1, ttl: 1 },
        [`_dmarc.${SENDER_DOMAIN}`]: { TXT: ['v=DMARC1; p=reject'], ttl: 1 },
    };
    for (let i = 0; i < SENDING_DOMAINS; i++) {
        zone[sendingDomain(i)] = { TXT: ['v=spf1 ip4:127.0.0.0/8 -all'], ttl: 1 };
    }
    return zone;
}

/** Test messages: mostly for one or two users, some for a recipient Postfix refuses. */
export function makeMessages(label: string, count: number, random: () => number): OutboundMessage[] {
    const out: OutboundMessage[] = [];
    for (let n = 0; n < count; n++) {
        const token = `${label}-${n}-${randomBytes(6).toString('hex')}`;
        const messageId = `<${token}@${SENDER_DOMAIN}>`;
        const pick = random();
        const user = USERS[n % USERS.length]!;
        const rcpts =
            pick < 0.6
                ? [{ address: `${user}@${POSTFIX_DOMAIN}`, expect: 'deliver' as const }]
                : pick < 0.8
                  ? USERS.map((u) => ({ address: `${u}@${POSTFIX_DOMAIN}`, expect: 'deliver' as const }))
                  : pick < 0.9
                    ? [
                          { address: `${user}@${POSTFIX_DOMAIN}`, expect: 'deliver' as const },
                          { address: UNKNOWN_USER, expect: 'refuse' as const },
                      ]
                    : [{ address: UNKNOWN_USER, expect: 'refuse' as const }];
        const from = `mailer@${sendingDomain(n)}`;
        // 0.5 KB to 12 KB: past the spool's memory limit for many, so spool files are used too
        const size = 500 + Math.floor(random() * 12_000);
        const lines: string[] = [];
        for (let i = 0; lines.join('\r\n').length < size; i++) {
            // lines starting with a dot exercise dot-stuffing on both hops
            lines.push(
                i % 17 === 5 ? `.line ${i} of ${token}` : `line ${i}: the quick brown fox jumps over the lazy dog`,
            );
        }
        const data =
            `From: Sender ${n} <${from}>\r\nTo: ${rcpts.map((r) => r.address).join(', ')}\r\n` +
            `Subject: ${label} message ${n}\r\nDate: ${new Date().toUTCString()}\r\nMessage-ID: ${messageId}\r\n` +
            `${TOKEN_FIELD}: ${token}\r\n\r\ntoken ${token}\r\n${lines.join('\r\n')}\r\n`;
        out.push({ n, messageId, token, from, rcpts, data });
    }
    return out;
}

/** A Redis that can be killed and started again on the same port. */
export interface RestartableRedis {
    readonly port: number;
    readonly url: string;
    readonly running: boolean;
    kill(): Promise<void>;
    start(): Promise<void>;
    stop(): Promise<void>;
}

export async function restartableRedis(): Promise<RestartableRedis> {
    let current: RedisInstance | null = await startRedis();
    const port = current.port;
    return {
        port,
        url: `redis://127.0.0.1:${port}`,
        get running() {
            return current !== null;
        },
        async kill() {
            if (!current) return;
            const old = current;
            current = null;
            process.kill(old.pid, 'SIGKILL');
            await old.stop();
        },
        async start() {
            if (current) return;
            current = await startRedis({ port });
        },
        async stop() {
            const old = current;
            current = null;
            await old?.stop();
        },
    };
}

export interface Lab {
    readonly postfix: PostfixInstance;
    readonly dns: DnsTestServer;
    readonly dnsProxy: DnsFaultProxy;
    readonly proxy: SmtpFaultProxy;
    readonly dir: string;
    readonly scanner: MailboxScanner;
    /** The shipped rules without the per-IP connection limits a load generator on one address trips. */
    readonly rulesDir: string;
    close(): Promise<void>;
}

export async function startLab(): Promise<Lab> {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'mailwarden-faults-'));
    const cleanup: Array<() => Promise<void>> = [() => rm(dir, { recursive: true, force: true })];
    const close = async (): Promise<void> => {
        for (const c of cleanup.reverse()) await c().catch(() => undefined);
    };
    try {
        const postfix = await startPostfix({
            users: [...USERS],
            // An smtpd killed before it served a connection makes the master hold the service
            // back for service_throttle_time (60 s by default): mailwarden answers 451 4.4.1 all
            // that time, which loses nothing but would make a short run wait a minute.
            mainCf: { service_throttle_time: '1s' },
        });
        cleanup.push(() => postfix.stop());
        const dns = await startDnsServer(harnessZone());
        cleanup.push(() => dns.close());
        const dnsProxy = await startDnsFaultProxy(dns);
        cleanup.push(() => dnsProxy.close());
        const proxy = await startSmtpFaultProxy({ host: postfix.host, port: postfix.port });
        cleanup.push(() => proxy.close());
        const rulesDir = path.join(dir, 'rules');
        await cp(PACKAGE_RULES_DIR, rulesDir, { recursive: true });
        await rm(path.join(rulesDir, '50-limits.yaml'));
        return {
            postfix,
            dns,
            dnsProxy,
            proxy,
            dir,
            rulesDir,
            scanner: mailboxScanner((u) => postfix.maildir(u), USERS),
            close,
        };
    } catch (err) {
        await close();
        throw err;
    }
}

/** Limits that never refuse a message but need the store for every decision. */
export function harnessLimits(onError: 'allow' | 'tempfail'): string {
    return [
        'limits:',
        `  - { id: harness-sender-rate, key: mail.from, rate: 100000/1h, onError: ${onError} }`,
        `  - { id: harness-connections, key: client.ip, concurrency: 100000, onError: ${onError} }`,
        '',
    ].join('\n');
}

export interface MailwardenSetup {
    readonly port: number;
    readonly httpPort: number;
    readonly spoolDir: string;
    readonly configFile: string;
    readonly process: MailwardenProcess;
}

export interface ConfigOptions {
    /** The upstream (default: the fault proxy). */
    readonly upstreamPort: number;
    readonly rulesDir: string;
    readonly dnsAddress: string;
    readonly redisUrl?: string;
    readonly maxClients?: number;
    /**
     * Upstream timeouts (YAML flow entries); short by default, so a stalled upstream costs
     * seconds, not minutes. `''` keeps the product's defaults.
     */
    readonly upstreamTimeouts?: string;
    /** DNS timeout; 500ms by default, so a dropped answer costs little. */
    readonly dnsTimeout?: string;
    readonly memoryLimit?: string;
    /** Start mailwarden with the V8 inspector on loopback (for exact heap figures). */
    readonly inspect?: boolean;
}

/** Writes a config (with `domains:` set to Postfix's domain) and prepares the process, not started. */
export async function prepareMailwarden(dir: string, options: ConfigOptions): Promise<MailwardenSetup> {
    await mkdir(dir, { recursive: true });
    const port = await freePort();
    const httpPort = await freePort();
    const spoolDir = path.join(dir, 'spool');
    const configFile = path.join(dir, 'mailwarden.yaml');
    await writeFile(
        configFile,
        [
            'hostname: mx.harness.test',
            `domains: [${POSTFIX_DOMAIN}]`,
            'listeners:',
            `  - { name: mx, host: 127.0.0.1, port: ${port}, mode: mx, maxClients: ${options.maxClients ?? 1000} }`,
            `upstream: { ${[
                `url: "smtp://127.0.0.1:${options.upstreamPort}"`,
                'xclient: true',
                options.upstreamTimeouts ?? 'connectTimeout: 2s, timeout: 3s, dataTimeout: 5s',
            ]
                .filter(Boolean)
                .join(', ')} }`,
            `dns: { servers: ["${options.dnsAddress}"], timeout: ${options.dnsTimeout ?? '500ms'} }`,
            ...(options.redisUrl ? [`redis: { url: "${options.redisUrl}", connectTimeout: 500ms }`] : []),
            `rules: "${options.rulesDir}"`,
            `http: { host: 127.0.0.1, port: ${httpPort} }`,
            `spool: { dir: "${spoolDir}", memoryLimit: ${options.memoryLimit ?? '4KB'} }`,
            'authentication: { timeout: 3s }',
            'shutdownTimeout: 10s',
            'log: { level: info }',
            '',
        ].join('\n'),
    );
    return {
        port,
        httpPort,
        spoolDir,
        configFile,
        process: mailwardenProcess(configFile, { inspect: options.inspect ?? false }),
    };
}

/** Files left in a spool folder (none after a clean stop). */
export async function spoolFiles(dir: string): Promise<string[]> {
    try {
        return (await readdir(dir)).filter((n) => n.endsWith('.eml'));
    } catch {
        return [];
    }
}

// ---------------------------------------------------------------------------------------------
// Faults

export interface FaultEvent {
    readonly at: number;
    readonly kind: string;
    readonly detail?: string;
}

export interface FaultContext {
    readonly lab: Lab;
    readonly mw: MailwardenProcess;
    readonly redis: RestartableRedis | null;
    readonly random: () => number;
    /** When the messages started to be sent, and over how long they become ready. */
    readonly startedAt: number;
    readonly spreadMs: number;
    /** How many times the fault strikes in this run. */
    readonly strikes: number;
    /** True once the client has settled every message. */
    clientDone(): boolean;
    /** Records a strike; `at` (default now) is when it began, e.g. just before a signal was sent. */
    event(kind: string, detail?: string, at?: number): void;
    /** Waits until `fraction` of the spread time has passed (returns at once when past). */
    at(fraction: number): Promise<void>;
}

export interface FaultSpec {
    readonly name: string;
    /** One sentence: what the fault does. */
    readonly summary: string;
    /** A limits file with this onError, and a Redis to keep the counts. */
    readonly limits?: 'allow' | 'tempfail';
    /** The SMTP proxy's policy for the run. */
    readonly proxy?: (random: () => number) => ProxyPolicy;
    /** Strikes while the mail flows; must leave every part healthy when it returns. */
    readonly inject?: (ctx: FaultContext) => Promise<void>;
}

/**
 * After a process struck down is back, the next strike waits at least this long, so mail flows
 * between strikes even where a start takes seconds.
 */
const MIN_UPTIME_MS = 2_000;

/** Fault times spread evenly over the middle of the run: strikes 1..n at (i / (n + 1)). */
function strikeTimes(n: number): number[] {
    return Array.from({ length: n }, (_, i) => (i + 1) / (n + 1));
}

interface Plan {
    readonly point: ProxyPoint;
    readonly action: ProxyAction;
}

/**
 * A proxy policy that strikes one connection in every `period` (the first one included, so a
 * short run is struck too), at one point with one action chosen at random for that connection.
 */
function everyNth(period: number, choose: (random: () => number) => Plan): (random: () => number) => ProxyPolicy {
    return (random) => {
        const plans = new Map<number, Plan | null>();
        return (point, connection) => {
            if (!plans.has(connection))
                plans.set(connection, connection % period === 1 % period ? choose(random) : null);
            const plan = plans.get(connection);
            if (!plan || plan.point !== point) return null;
            plans.set(connection, null);
            return plan.action;
        };
    };
}

function pick<T>(random: () => number, items: readonly T[]): T {
    return items[Math.floor(random() * items.length)]!;
}

export const FAULTS: readonly FaultSpec[] = [
    {
        name: 'baseline',
        summary: 'No fault: the reference for the others.',
    },
    {
        name: 'upstream-cut-mid-data',
        summary: 'The connection to Postfix is cut in the middle of a message (one connection in 3).',
        proxy: everyNth(3, (random) => ({
            point: 'mid-data',
            // within the first 700 bytes, which every test message has: the cut always strikes
            action: { kind: 'cut', afterBytes: 1 + Math.floor(random() * 700) },
        })),
    },
    {
        name: 'upstream-killed',
        summary:
            "Postfix's smtpd processes are SIGKILLed every few hundred ms, whatever they are doing; the master starts new ones.",
        inject: async (ctx) => {
            const until = ctx.startedAt + ctx.spreadMs * 0.9;
            while (Date.now() < until && !ctx.clientDone()) {
                await sleep(150 + ctx.random() * 400);
                const at = Date.now();
                const n = await ctx.lab.postfix.killSmtpd();
                if (n > 0) ctx.event('smtpd-sigkill', `${n}`, at);
            }
        },
    },
    {
        name: 'postfix-crashed',
        summary: 'The whole Postfix (master and every child) is SIGKILLed, then started again a moment later.',
        inject: async (ctx) => {
            for (const f of strikeTimes(ctx.strikes)) {
                await ctx.at(f);
                const at = Date.now();
                await ctx.lab.postfix.crash();
                ctx.event('postfix-crash', undefined, at);
                await sleep(300 + ctx.random() * 700);
                await ctx.lab.postfix.restart();
                ctx.event('postfix-start');
                // up for a while before the next crash, so mail flows in between
                await sleep(MIN_UPTIME_MS);
            }
        },
    },
    {
        name: 'upstream-stall',
        summary:
            'Postfix stops answering (one connection in 7) at the greeting, a command, inside the message, before the end of data or after accepting it.',
        proxy: everyNth(7, (random) => ({
            point: pick<ProxyPoint>(random, [
                'greeting',
                'xclient',
                'mail',
                'rcpt',
                'data',
                'mid-data',
                'end-of-data',
                'after-end-of-data',
            ]),
            action: { kind: 'stall', afterBytes: 1 + Math.floor(random() * 700) },
        })),
    },
    {
        name: 'upstream-421-451',
        summary:
            'Postfix answers 421 (and closes), 451 or 452 instead of passing a command or the end of data on (one connection in 4).',
        proxy: everyNth(4, (random) => {
            const point = pick<ProxyPoint>(random, ['greeting', 'xclient', 'mail', 'rcpt', 'data', 'end-of-data']);
            const reply =
                point === 'greeting' || point === 'xclient' || random() < 0.4
                    ? '421 4.3.2 Service shutting down, closing transmission channel'
                    : point === 'rcpt' && random() < 0.3
                      ? '452 4.3.1 Insufficient system storage'
                      : '451 4.3.0 Error: queue file write error';
            return { point, action: { kind: 'reply', reply } };
        }),
    },
    {
        name: 'redis-killed-allow',
        summary: 'Redis is SIGKILLed and started again; limits have onError: allow (mail goes on without them).',
        limits: 'allow',
        inject: redisOutage,
    },
    {
        name: 'redis-killed-tempfail',
        summary: 'Redis is SIGKILLed and started again; limits have onError: tempfail (4xx while it is away).',
        limits: 'tempfail',
        inject: redisOutage,
    },
    {
        name: 'dns-dropped',
        summary: 'The DNS server answers nothing for 2 s at a time (SPF and DMARC cannot be checked).',
        inject: async (ctx) => {
            for (const f of strikeTimes(ctx.strikes)) {
                await ctx.at(f);
                ctx.lab.dnsProxy.setMode({ kind: 'drop' });
                ctx.event('dns-drop');
                await sleep(2000);
                ctx.lab.dnsProxy.setMode({ kind: 'pass' });
            }
        },
    },
    {
        name: 'dns-delayed',
        summary: 'Every DNS answer is delayed by 100–900 ms (the resolver gives up after 500 ms) for most of the run.',
        inject: async (ctx) => {
            await ctx.at(0.1);
            ctx.lab.dnsProxy.setMode({ kind: 'delay', minMs: 100, maxMs: 900 });
            ctx.event('dns-delay');
            await ctx.at(0.8);
            ctx.lab.dnsProxy.setMode({ kind: 'pass' });
        },
    },
    {
        name: 'mailwarden-sigkill',
        summary: 'mailwarden is SIGKILLed under load and started again at once.',
        inject: async (ctx) => {
            for (const f of strikeTimes(ctx.strikes)) {
                await ctx.at(f);
                const at = Date.now();
                await ctx.mw.signal('SIGKILL');
                const restarted = Date.now();
                await ctx.mw.start();
                ctx.event('mailwarden-sigkill', `started again in ${Date.now() - restarted} ms`, at);
                await sleep(MIN_UPTIME_MS);
            }
        },
    },
    {
        name: 'mailwarden-sigterm',
        summary: 'mailwarden gets SIGTERM under load (drain, exit 0) and is started again.',
        inject: async (ctx) => {
            for (const f of strikeTimes(ctx.strikes)) {
                await ctx.at(f);
                const at = Date.now();
                const exit = await ctx.mw.signal('SIGTERM', 20_000);
                const restarted = Date.now();
                await ctx.mw.start();
                ctx.event(
                    'mailwarden-sigterm',
                    `exit ${exit.code ?? exit.signal} after ${exit.ms} ms, started again in ${Date.now() - restarted} ms`,
                    at,
                );
                await sleep(MIN_UPTIME_MS);
            }
        },
    },
];

async function redisOutage(ctx: FaultContext): Promise<void> {
    const redis = ctx.redis;
    if (!redis) throw new Error('this fault needs Redis');
    for (const f of strikeTimes(ctx.strikes)) {
        await ctx.at(f);
        const at = Date.now();
        await redis.kill();
        ctx.event('redis-sigkill', undefined, at);
        await sleep(1500);
        await redis.start();
        ctx.event('redis-start');
    }
}

// ---------------------------------------------------------------------------------------------
// Running a fault and judging the outcome

export interface RunSize {
    readonly messages: number;
    readonly spreadMs: number;
    readonly concurrency: number;
    readonly messagesPerConnection: number;
    readonly strikes: number;
    /** Longest wait for Postfix to deliver what it accepted, after the client is done. */
    readonly settleMs: number;
    readonly maxMessageMs: number;
}

export const CI_SIZE: RunSize = {
    messages: 30,
    spreadMs: 3_000,
    concurrency: 6,
    messagesPerConnection: 3,
    strikes: 1,
    settleMs: 45_000,
    maxMessageMs: 60_000,
};

export const FULL_SIZE: RunSize = {
    messages: 300,
    spreadMs: 30_000,
    concurrency: 20,
    messagesPerConnection: 5,
    strikes: 6,
    settleMs: 120_000,
    maxMessageMs: 240_000,
};

export interface FaultReport {
    readonly fault: string;
    readonly messages: number;
    readonly recipients: number;
    /** Recipients delivered (Maildir), of those a healthy system delivers. */
    readonly delivered: number;
    /** Recipients refused with the 5xx a healthy system gives (unknown user). */
    readonly refused5xx: number;
    /** Recipients refused with a 5xx a healthy system does not give: a fault's 5xx. */
    readonly unexpected5xx: number;
    /** Attempts beyond the first per message. */
    readonly retries: number;
    /** Temporary failures seen by the client, by reply code. */
    readonly tempfails: Readonly<Record<string, number>>;
    /** Connections that dropped during an attempt, by the step it was at. */
    readonly dropped: Readonly<Record<string, number>>;
    readonly duplicatesInWindow: number;
    readonly duplicatesOutsideWindow: number;
    /** Extra copies Postfix delivered from one queue file (its own window after a crash). */
    readonly postfixRedeliveries: number;
    /** `duplicateRisk` log lines of mailwarden. */
    readonly duplicateRiskLogged: number;
    /** Recipients neither delivered nor refused with a 5xx. */
    readonly lost: number;
    /** Recipients the client got a 250 for that Postfix never delivered (counted in `lost` too). */
    readonly acceptedNotDelivered: number;
    /** Recipients delivered that a healthy system refuses. */
    readonly deliveredUnexpectedly: number;
    readonly spoolFilesLeft: number;
    /** `mailwarden_redis_errors_total` at the end of a run with limits in Redis (null without). */
    readonly redisErrors: number | null;
    readonly injected: Readonly<Record<string, number>>;
    readonly events: readonly FaultEvent[];
    /** Problems that fail the run (beyond the counts above), e.g. a SIGTERM exit that was not 0. */
    readonly problems: readonly string[];
    readonly seconds: number;
    readonly ok: boolean;
    /** Details of what failed, for the reader of a failed run. */
    readonly details: readonly string[];
}

/** The messageIds mailwarden flagged with `duplicateRisk` (the flagged line, or its session's last decision). */
export function duplicateRisks(logs: MailwardenProcess['logs']): Map<string, number> {
    const lastDecision = new Map<string, string>();
    const out = new Map<string, number>();
    for (const { run, line } of logs) {
        const session = `${run}/${String(line.session)}`;
        if (line.msg === 'decision' && typeof line.messageId === 'string') lastDecision.set(session, line.messageId);
        if (line.duplicateRisk === true) {
            const id = typeof line.messageId === 'string' ? line.messageId : lastDecision.get(session);
            if (id) out.set(id, (out.get(id) ?? 0) + 1);
        }
    }
    return out;
}

/** Judges one run: counts per recipient, duplicates in and outside the window. */
export function judge(
    fault: string,
    records: readonly MessageRecord[],
    deliveries: ReadonlyMap<string, readonly Delivery[]>,
    risks: ReadonlyMap<string, number>,
    events: readonly FaultEvent[],
): Omit<FaultReport, 'spoolFilesLeft' | 'redisErrors' | 'injected' | 'problems' | 'seconds' | 'ok'> {
    const kills = events.filter((e) => e.kind === 'mailwarden-sigkill').map((e) => e.at);
    const postfixCrashed = events.some((e) => e.kind === 'postfix-crash');
    let recipients = 0;
    let delivered = 0;
    let refused5xx = 0;
    let unexpected5xx = 0;
    let lost = 0;
    let acceptedNotDelivered = 0;
    let deliveredUnexpectedly = 0;
    let inWindow = 0;
    let outside = 0;
    let redeliveries = 0;
    let retries = 0;
    const tempfails: Record<string, number> = {};
    const dropped: Record<string, number> = {};
    const details: string[] = [];
    for (const r of records) {
        const m = r.message;
        retries += Math.max(0, r.attempts.length - 1);
        for (const a of r.attempts) {
            if (a.outcome === 'tempfail' && a.code) tempfails[a.code] = (tempfails[a.code] ?? 0) + 1;
            if (a.outcome === 'dropped') dropped[a.step] = (dropped[a.step] ?? 0) + 1;
        }
        // Copies allowed beyond the first: one per duplicateRisk line, one per SIGKILL that
        // struck while the client waited for the answer to its end of data.
        const killedInWindow = r.attempts.filter(
            (a) =>
                a.terminatorAt !== null &&
                a.outcome === 'dropped' &&
                kills.some((k) => k >= a.terminatorAt! && k <= a.end),
        ).length;
        const allowed = (risks.get(m.messageId) ?? 0) + killedInWindow;
        const copies = deliveries.get(m.token) ?? [];
        for (const spec of m.rcpts) {
            recipients++;
            const user = spec.address.split('@')[0]!;
            const state = r.rcpts.get(spec.address)!;
            const mine = copies.filter((d) => d.user === user);
            const queueIds = new Set(mine.map((d) => d.queueId ?? `?${d.file}`));
            const sameFile = mine.length - queueIds.size;
            const extra = queueIds.size - 1;
            if (spec.expect === 'deliver') {
                if (mine.length > 0) delivered++;
                if (state.state === 'refused') {
                    unexpected5xx++;
                    details.push(`${m.messageId} ${spec.address}: refused ${state.refusal ?? ''}`);
                } else if (mine.length === 0) {
                    lost++;
                    if (state.state === 'accepted') acceptedNotDelivered++;
                    details.push(
                        `${m.messageId} ${spec.address}: lost (client state ${state.state}); ${describeAttempts(r)}`,
                    );
                }
            } else if (state.state === 'refused') {
                refused5xx++;
                if (!/^55\d /.test(state.refusal ?? '')) {
                    unexpected5xx++;
                    details.push(`${m.messageId} ${spec.address}: refused with ${state.refusal ?? ''}`);
                }
            } else if (mine.length > 0) {
                deliveredUnexpectedly++;
            } else {
                lost++;
                details.push(`${m.messageId} ${spec.address}: never refused (client state ${state.state})`);
            }
            if (sameFile > 0) {
                redeliveries += sameFile;
                if (!postfixCrashed) {
                    outside += sameFile;
                    details.push(
                        `${m.messageId} ${spec.address}: Postfix delivered one queue file ${sameFile + 1} times`,
                    );
                }
            }
            if (extra > 0) {
                const ok = Math.min(extra, allowed);
                inWindow += ok;
                outside += extra - ok;
                if (extra > ok) {
                    details.push(
                        `${m.messageId} ${spec.address}: ${extra + 1} copies (queue ids ${[...queueIds].join(' ')}), ` +
                            `${allowed} in the window; ${describeAttempts(r)}`,
                    );
                }
            }
        }
    }
    return {
        fault,
        messages: records.length,
        recipients,
        delivered,
        refused5xx,
        unexpected5xx,
        retries,
        tempfails,
        dropped,
        duplicatesInWindow: inWindow,
        duplicatesOutsideWindow: outside,
        postfixRedeliveries: redeliveries,
        duplicateRiskLogged: [...risks.values()].reduce((a, b) => a + b, 0),
        lost,
        acceptedNotDelivered,
        deliveredUnexpectedly,
        events,
        details,
    };
}

function describeAttempts(r: MessageRecord): string {
    const t0 = r.attempts[0]?.start ?? 0;
    return r.attempts
        .map(
            (a) =>
                `[+${a.start - t0}ms ${a.outcome} at ${a.step}${a.code ? ` ${a.code}` : ''}${
                    a.terminatorAt ? ` eod+${a.terminatorAt - t0}ms` : ''
                } end+${a.end - t0}ms]`,
        )
        .join(' ');
}

export interface RunOptions {
    readonly size: RunSize;
    readonly seed: number;
    /** Writes progress lines (the script passes console.log). */
    readonly progress?: (line: string) => void;
}

/** Runs one fault end to end in the lab and returns its report. */
export async function runFault(lab: Lab, spec: FaultSpec, options: RunOptions): Promise<FaultReport> {
    const started = Date.now();
    const random = seededRandom(options.seed);
    const size = options.size;
    const say = options.progress ?? (() => {});
    const work = path.join(lab.dir, spec.name);
    let rulesDir = lab.rulesDir;
    let redis: RestartableRedis | null = null;
    let mwProcess: MailwardenProcess | null = null;
    const problems: string[] = [];
    const events: FaultEvent[] = [];
    const injectedBefore = { ...lab.proxy.injected };
    try {
        if (spec.limits) {
            rulesDir = path.join(work, 'rules');
            await cp(lab.rulesDir, rulesDir, { recursive: true });
            await writeFile(path.join(rulesDir, '50-harness-limits.yaml'), harnessLimits(spec.limits));
            redis = await restartableRedis();
        }
        const setup = await prepareMailwarden(work, {
            upstreamPort: lab.proxy.port,
            rulesDir,
            dnsAddress: lab.dnsProxy.address,
            ...(redis ? { redisUrl: redis.url } : {}),
        });
        const mw = setup.process;
        mwProcess = mw;
        await mw.start();
        lab.proxy.setPolicy(spec.proxy ? spec.proxy(random) : null);
        lab.dnsProxy.setMode({ kind: 'pass' });

        const messages = makeMessages(spec.name, size.messages, random);
        const clientOptions: ClientOptions = {
            port: setup.port,
            concurrency: size.concurrency,
            messagesPerConnection: size.messagesPerConnection,
            spreadMs: size.spreadMs,
            backoff: { baseMs: 250, maxMs: 2_000 },
            maxAttempts: 80,
            maxMessageMs: size.maxMessageMs,
            commandTimeoutMs: 30_000,
            dataTimeoutMs: 60_000,
            random,
        };
        const startedAt = Date.now();
        let clientDone = false;
        const client = runClient(messages, clientOptions).finally(() => (clientDone = true));
        const ctx: FaultContext = {
            lab,
            mw,
            redis,
            random,
            startedAt,
            spreadMs: size.spreadMs,
            strikes: size.strikes,
            clientDone: () => clientDone,
            event: (kind, detail, at = Date.now()) => {
                events.push({ at, kind, ...(detail !== undefined ? { detail } : {}) });
                say(`  ${((at - startedAt) / 1000).toFixed(1)}s ${kind}${detail ? ` (${detail})` : ''}`);
            },
            at: async (fraction) => {
                const wait = startedAt + fraction * size.spreadMs - Date.now();
                if (wait > 0) await sleep(wait);
            },
        };
        const heal = async (): Promise<void> => {
            lab.proxy.setPolicy(null);
            lab.dnsProxy.setMode({ kind: 'pass' });
            if (redis && !redis.running) await redis.start();
            if (!mw.running) await mw.start();
        };
        try {
            await spec.inject?.(ctx);
        } catch (err) {
            await heal();
            await client;
            throw err;
        }
        // a proxy fault strikes until every message is settled, retries included
        const result = await client;
        await heal();
        say(`  client done after ${(result.ms / 1000).toFixed(1)}s, ${result.connections} connections`);

        // Postfix delivers what it accepted (duplicates included) before the count.
        const wanted = (d: ReadonlyMap<string, readonly Delivery[]>): boolean =>
            result.records.every((r) =>
                [...r.rcpts].every(
                    ([address, s]) =>
                        s.state !== 'accepted' ||
                        (d.get(r.message.token) ?? []).some((x) => address.startsWith(`${x.user}@`)),
                ),
            );
        const deadline = Date.now() + size.settleMs;
        let deliveries = await lab.scanner.scan();
        let quiet = 0;
        while (Date.now() < deadline) {
            deliveries = await lab.scanner.scan();
            quiet = wanted(deliveries) && (await lab.postfix.queued()) === 0 ? quiet + 1 : 0;
            if (quiet >= 3) break;
            await sleep(200);
        }
        deliveries = await lab.scanner.scan();

        const redisErrors = redis
            ? (metricValue(await mw.metrics(setup.httpPort), 'mailwarden_redis_errors_total') ?? 0)
            : null;
        const exit = await mw.signal('SIGTERM', 20_000);
        if (exit.code !== 0) problems.push(`mailwarden exited with ${exit.code ?? exit.signal} on SIGTERM`);
        for (const e of events.filter((x) => x.kind === 'mailwarden-sigterm')) {
            if (!e.detail?.startsWith('exit 0 ')) problems.push(`SIGTERM under load: ${e.detail ?? ''}`);
        }
        const left = await spoolFiles(setup.spoolDir);
        const injected: Record<string, number> = {};
        for (const [k, v] of Object.entries(lab.proxy.injected)) {
            const d = v - (injectedBefore[k] ?? 0);
            if (d > 0) injected[k] = d;
        }
        for (const e of events) injected[e.kind] = (injected[e.kind] ?? 0) + 1;
        const verdict = judge(spec.name, result.records, deliveries, duplicateRisks(mw.logs), events);
        const ok =
            verdict.lost === 0 &&
            verdict.duplicatesOutsideWindow === 0 &&
            verdict.unexpected5xx === 0 &&
            verdict.deliveredUnexpectedly === 0 &&
            left.length === 0 &&
            problems.length === 0;
        return {
            ...verdict,
            spoolFilesLeft: left.length,
            redisErrors,
            injected,
            problems,
            seconds: Math.round((Date.now() - started) / 100) / 10,
            ok,
        };
    } finally {
        lab.proxy.setPolicy(null);
        lab.dnsProxy.setMode({ kind: 'pass' });
        // after a failure on the way; a no-op when the run stopped it
        await mwProcess?.stop();
        await redis?.stop();
    }
}

/** The per-fault table of a run. */
export function formatReports(reports: readonly FaultReport[]): string {
    const head = [
        'fault',
        'msgs',
        'rcpts',
        'delivered',
        'refused 5xx',
        'retries',
        'dup in window',
        'dup outside',
        'lost',
        'result',
    ];
    const rows = reports.map((r) => [
        r.fault,
        String(r.messages),
        String(r.recipients),
        String(r.delivered),
        String(r.refused5xx),
        String(r.retries),
        String(r.duplicatesInWindow),
        String(r.duplicatesOutsideWindow),
        String(r.lost),
        r.ok ? 'ok' : 'FAILED',
    ]);
    const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
    const line = (cells: string[]): string => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
    const out = [line(head), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.map(line), ''];
    for (const r of reports) {
        const kv = (o: Readonly<Record<string, number>>): string =>
            Object.entries(o)
                .sort(([a], [b]) => a.localeCompare(b))
                .map(([k, v]) => `${k} ×${v}`)
                .join(', ') || 'none';
        out.push(`${r.fault} (${r.seconds} s)`);
        out.push(`  injected:  ${kv(r.injected)}`);
        out.push(`  tempfails: ${kv(r.tempfails)}`);
        out.push(`  dropped:   ${kv(r.dropped)}`);
        out.push(
            `  duplicateRisk logged ${r.duplicateRiskLogged}, Postfix redeliveries ${r.postfixRedeliveries}, ` +
                `unexpected 5xx ${r.unexpected5xx}, accepted but not delivered ${r.acceptedNotDelivered}, ` +
                `spool files left ${r.spoolFilesLeft}${r.redisErrors === null ? '' : `, Redis errors ${r.redisErrors}`}`,
        );
        for (const p of r.problems) out.push(`  PROBLEM: ${p}`);
        for (const d of r.details.slice(0, 20)) out.push(`  ${d}`);
    }
    return out.join('\n');
}
