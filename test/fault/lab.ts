/**
 * The lab of the fault harness: a real Postfix delivering to Maildirs, the test DNS server behind
 * a fault-injecting DNS forwarder, a fault-injecting SMTP proxy between mailwarden and Postfix,
 * Redis for the faults with limits, and what each run needs from it: test messages, the DNS
 * zone, mailwarden's config (with `domains:` set to Postfix's domain) and its process.
 * Everything runs on loopback, in temporary folders, and is stopped by close().
 */
import { randomBytes } from 'node:crypto';
import { cp, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { PACKAGE_RULES_DIR } from '../../src/config/defaults.ts';
import { startDnsServer, type DnsTestServer, type Zone } from '../helpers/dns-server.ts';
import { startPostfix, POSTFIX_DOMAIN, type PostfixInstance } from '../helpers/postfix.ts';
import { startRedis, type RedisInstance } from '../helpers/redis.ts';
import { freePort } from '../helpers/smtp-client.ts';
import { startDnsFaultProxy, type DnsFaultProxy } from './dns-fault-proxy.ts';
import { mailboxScanner, TOKEN_FIELD, type MailboxScanner } from './mailbox.ts';
import { mailwardenProcess, type MailwardenProcess } from './mailwarden-process.ts';
import type { OutboundMessage } from './mta-client.ts';
import { startSmtpFaultProxy, type SmtpFaultProxy } from './smtp-fault-proxy.ts';

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
            // the harness measures delivery under faults, not the pregreet test
            'pregreet: { wait: 0s }',
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
