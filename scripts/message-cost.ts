/**
 * Measures what one hostile message costs the `mailauth` check: CPU time (process.cpuUsage),
 * DNS queries (counted at a loopback DNS server) and the longest stall of the event loop, for
 * the attacks documented in docs/security.md ("Per-message cost"), at sizes up to the default
 * 50 MB message limit. Then, through a real app, the greeting latency other clients see while
 * the 5.8 MB signature flood and the worst message are received and checked (and the cases a
 * filter names), next to the latency of the idle app.
 *
 *   node scripts/message-cost.ts            # every case
 *   node scripts/message-cost.ts flood      # the cases whose name contains "flood"
 *
 * Development tool: it is not part of the running product. Loopback only.
 */
import crypto from 'node:crypto';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Readable } from 'node:stream';
import { createMailauthCheck } from '../src/checks/mailauth.ts';
import { defaultAuthentication } from '../src/config/defaults.ts';
import { createResolver } from '../src/dns/resolver.ts';
import type { CheckContext } from '../src/types.ts';
import { acceptAll, runStage } from '../src/pipeline.ts';
import { startApp } from '../test/helpers/app.ts';
import { startDnsServer, type Zone } from '../test/helpers/dns-server.ts';
import {
    arcFlood,
    bodyHash,
    canonicalBody,
    foldedField,
    fromFlood,
    plainFields,
    signatureFlood,
} from '../test/helpers/hostile-mail.ts';
import { smtpConnect } from '../test/helpers/smtp-client.ts';

const MB = 1024 * 1024;
const CLIENT = '192.0.2.10';

/**
 * The most DNS an SPF record may ask for within RFC 7208 section 4.6.4: 10 mx terms, each naming
 * 10 hosts whose A and AAAA records are looked up (mailauth asks both), the client in none.
 */
function spfTree(): Zone {
    const zone: Zone = {};
    const terms = Array.from({ length: 10 }, (_, i) => `mx:m${i}.spf.example`).join(' ');
    zone['spf.example'] = { TXT: [`v=spf1 ${terms} -all`] };
    for (let i = 0; i < 10; i++) {
        zone[`m${i}.spf.example`] = {
            MX: Array.from({ length: 10 }, (_, k) => ({ exchange: `h${k}.m${i}.spf.example`, priority: k })),
        };
        for (let k = 0; k < 10; k++) zone[`h${k}.m${i}.spf.example`] = { A: ['198.51.100.1'], AAAA: ['2001:db8::1'] };
    }
    const key = expensiveKey();
    for (let i = 0; i < 5; i++) zone[`s${i}._domainkey.d${i}.flood.example`] = { TXT: [key] };
    for (let i = 1; i <= 10; i++) zone[`s${i}._domainkey.arc${i}.flood.example`] = { TXT: [key] };
    return zone;
}

/**
 * The most expensive RSA key OpenSSL verifies with: 3,072 bits (it allows any public exponent up
 * to that size) with a 3,064-bit exponent, so each verification is a full modular
 * exponentiation. Published at every selector the hostile messages name. mailwarden refuses it
 * without verifying (an exponent over 2^32, sender-auth/key-reuse.ts); the costliest key it
 * takes, 16,384 bits with a 32-bit exponent, costs less than half as much a verification.
 */
function expensiveKey(): string {
    const der = (tag: number, body: Buffer): Buffer => {
        const n = body.length;
        const len = n < 128 ? Buffer.from([n]) : Buffer.from([0x82, n >> 8, n & 255]);
        return Buffer.concat([Buffer.from([tag]), len, body]);
    };
    const int = (b: Buffer): Buffer => der(0x02, Buffer.concat([Buffer.from([0]), b]));
    const modulus = crypto.randomBytes(384);
    modulus[0]! |= 0x80;
    modulus[383]! |= 1;
    const exponent = crypto.randomBytes(383);
    exponent[0]! |= 0x40;
    exponent[382]! |= 1;
    const rsa = der(0x30, Buffer.concat([int(modulus), int(exponent)]));
    const algorithm = Buffer.from('300d06092a864886f70d0101010500', 'hex');
    const spki = der(0x30, Buffer.concat([algorithm, der(0x03, Buffer.concat([Buffer.from([0]), rsa]))]));
    return `v=DKIM1; k=rsa; p=${spki.toString('base64')}`;
}

/** A body of short lines that relaxed canonicalization must each rewrite (trailing whitespace). */
function whitespaceBody(bytes: number): Buffer {
    return Buffer.alloc(bytes, 'a \t\r\n');
}

interface Case {
    readonly name: string;
    readonly message: () => Buffer;
    readonly mailFrom?: string;
}

function msg(header: string, body: Buffer): Buffer {
    return Buffer.concat([Buffer.from(`${header}\r\n`, 'latin1'), body]);
}

const CASES: Case[] = [
    {
        name: 'flood: 5,000 DKIM-Signature, each its own l= and d=/s=, 5.8 MB',
        message: () => {
            const body = canonicalBody(4.98 * MB);
            return msg(signatureFlood({ count: 5000, body }) + plainFields('a@bank.example'), body);
        },
    },
    {
        name: 'flood: 5,000 DKIM-Signature, each its own l= and d=/s=, 50 MB',
        message: () => {
            const body = canonicalBody(49 * MB);
            return msg(signatureFlood({ count: 5000, body }) + plainFields('a@bank.example'), body);
        },
    },
    {
        name: 'flood: 3,000 DKIM-Signature aligned with From (d=bank.example, distinct s=), 50 MB',
        message: () => {
            const body = canonicalBody(49 * MB);
            return msg(
                signatureFlood({ count: 3000, body, domain: () => 'bank.example' }) + plainFields('a@bank.example'),
                body,
            );
        },
    },
    {
        name: 'flood: 5,000 DKIM-Signature, 50 MB of whitespace lines (relaxed canonicalization rewrites each)',
        message: () => {
            const body = whitespaceBody(49 * MB);
            return msg(
                signatureFlood({ count: 5000, body: canonicalBody(6000) }) + plainFields('a@bank.example'),
                body,
            );
        },
    },
    {
        name: 'worst CPU: 10 ARC sets + 5 DKIM, every key 3,072-bit with a huge exponent, 5 body hashes (3 DKIM l=, ARC without c=: simple and relaxed), 50 MB',
        message: () => {
            const body = canonicalBody(49 * MB);
            // three body hashes of their own l= (with a right bh= each), shared by the five signatures
            const lengths = [1000, 2000, 3000, 3000, 3000];
            const fields = signatureFlood({ count: 5, body, distinctLengths: false })
                .split('\r\n')
                .slice(0, 5)
                .map((f, i) =>
                    f.replace(/ h=/, ` l=${lengths[i]}; h=`).replace(/bh=[^;]+/, `bh=${bodyHash(body, lengths[i])}`),
                );
            return msg(
                arcFlood(10, { bodyHash: bodyHash(body), canonicalization: null }) +
                    fields.join('\r\n') +
                    '\r\n' +
                    plainFields('a@bank.example'),
                body,
            );
        },
    },
    {
        name: 'worst CPU, all at once: the above, 900 KB of folded From, a body whose first 250,000 lines must be rewritten (the budget for 4 relaxed hashes)',
        message: () => {
            const damaged = Buffer.alloc(250_000 * 5, 'a \t\r\n');
            const clean = canonicalBody(47.5 * MB);
            const raw = Buffer.concat([damaged, clean]);
            // relaxed canonicalization turns each damaged line into "a\r\n"
            const relaxed = Buffer.concat([Buffer.alloc(250_000 * 3, 'a\r\n'), clean]);
            const lengths = [1000, 2000, 3000, 3000, 3000];
            const fields = signatureFlood({
                count: 5,
                body: relaxed,
                distinctLengths: false,
                signed: 'from:from:to:subject',
            })
                .split('\r\n')
                .slice(0, 5)
                .map((f, i) =>
                    f.replace(/ h=/, ` l=${lengths[i]}; h=`).replace(/bh=[^;]+/, `bh=${bodyHash(relaxed, lengths[i])}`),
                );
            return msg(
                foldedField('From', 225_000, 'a@bank.example') +
                    arcFlood(10, { bodyHash: bodyHash(raw), canonicalization: null }) +
                    fields.join('\r\n') +
                    '\r\n' +
                    plainFields('a@bank.example'),
                raw,
            );
        },
    },
    {
        name: 'arc: 5,000 ARC sets, 50 MB',
        message: () => msg(arcFlood(5000) + plainFields('a@bank.example'), canonicalBody(49 * MB)),
    },
    {
        name: 'arc: 10 ARC sets (the limit) + 5 DKIM, 50 MB',
        message: () => {
            const body = canonicalBody(49 * MB);
            return msg(
                arcFlood(10) + signatureFlood({ count: 5, body, distinctLengths: false }) + plainFields('a@x.example'),
                body,
            );
        },
    },
    {
        name: 'spf: a record at the RFC 7208 limits (10 mx terms of 10 hosts each)',
        mailFrom: 'bounce@spf.example',
        message: () => msg(plainFields('a@spf.example'), canonicalBody(1000)),
    },
    {
        name: 'header: 1 MB of From fields (50,000), small body',
        message: () => msg(fromFlood(50_000), canonicalBody(1000)),
    },
    {
        name: 'header: 1 MB From field folded into 250,000 lines, 50 MB',
        message: () => {
            const body = canonicalBody(49 * MB);
            return msg(
                foldedField('From', 250_000, 'a@bank.example') +
                    signatureFlood({ count: 5, body, signed: 'from:from:from', distinctLengths: false }),
                body,
            );
        },
    },
    {
        name: 'header: 5 signatures with 100-name h= over 100,000 fields (names absent and present)',
        message: () => {
            const body = canonicalBody(1000);
            const names = Array.from({ length: 99 }, (_, i) => `x-${i}`).join(':');
            let fields = '';
            for (let i = 0; i < 100_000; i++) fields += `X-${i % 100}: v\r\n`;
            return msg(
                fields +
                    signatureFlood({ count: 5, body, signed: `from:${names}`, distinctLengths: false }) +
                    plainFields('a@bank.example'),
                body,
            );
        },
    },
    {
        name: 'body: one 49 MB line',
        message: () => {
            const body = canonicalBody(1000);
            return msg(
                signatureFlood({ count: 3, body, distinctLengths: false }) + plainFields('a@bank.example'),
                Buffer.alloc(49 * MB, 'a'),
            );
        },
    },
];

function context(message: Buffer, mailFrom: string): Omit<CheckContext, 'stage'> {
    return {
        sessionId: 'cost',
        facts: {},
        client: { ip: CLIENT, port: 40000, ptr: null, helo: 'client.test', proto: 'ESMTP', login: null },
        envelope: { mailFrom, rcptTo: ['user@mx.test'] },
        message: {
            // 64 KiB pieces, as the spool hands them out
            stream: () => {
                const pieces: Buffer[] = [];
                for (let i = 0; i < message.length; i += 64 * 1024) pieces.push(message.subarray(i, i + 64 * 1024));
                return Readable.from(pieces);
            },
            size: message.length,
        },
    };
}

async function measureChecks(filter: string | undefined): Promise<void> {
    const dns = await startDnsServer(spfTree());
    const resolver = createResolver({ servers: [dns.address], timeoutMs: 1000, tries: 1 });
    const check = createMailauthCheck({
        hostname: 'mx.test',
        resolver,
        localDomains: [],
        settings: defaultAuthentication(),
    });
    try {
        for (const c of CASES.filter((x) => filter === undefined || x.name.includes(filter))) {
            const message = c.message();
            const before = dns.queries.length;
            const lag = monitorEventLoopDelay({ resolution: 10 });
            lag.enable();
            const cpu = process.cpuUsage();
            const started = performance.now();
            const r = await runStage(
                'data',
                [check],
                context(message, c.mailFrom ?? 'bounce@flood.example'),
                acceptAll,
            );
            const used = process.cpuUsage(cpu);
            const wall = performance.now() - started;
            lag.disable();
            // whatever the check left running shows up as CPU used after its verdict
            const afterCpu = process.cpuUsage();
            await new Promise((resolve) => setTimeout(resolve, 2000));
            const after = process.cpuUsage(afterCpu);
            const f = r.facts;
            console.log(
                [
                    c.name,
                    `  size ${(message.length / MB).toFixed(1)} MB, cpu ${((used.user + used.system) / 1e6).toFixed(2)} s, wall ${(wall / 1000).toFixed(2)} s, dns ${dns.queries.length - before} (check counted ${String(f['auth.dns_queries'])}), longest event-loop stall ${(lag.max / 1e6).toFixed(0)} ms, cpu in the 2 s after the verdict ${((after.user + after.system) / 1e6).toFixed(2)} s`,
                    `  error ${String(r.checks[0]?.error)}, limits [${String(f['auth.limits'])}], dkim ${String(f['dkim.result'])} count ${String(f['dkim.count'])} skipped ${String(f['dkim.skipped'])}, arc ${String(f['arc.result'])}, spf ${String(f['spf.result'])}`,
                ].join('\n'),
            );
        }
    } finally {
        resolver.close();
        await dns.close();
    }
}

/** Greeting latency of new clients while one hostile message is being received and checked, through a real app. */
async function measureGreetings(filter: string | undefined): Promise<void> {
    const app = await startApp(
        [
            'hostname: mx.test',
            'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
            `upstream: { url: "maildir:${join(tmpdir(), `mw-cost-${process.pid}`)}" }`,
            'http: false',
        ].join('\n'),
    );
    try {
        // the greeting latency of an idle app, for comparison
        const idle: number[] = [];
        for (let i = 0; i < 10; i++) {
            const started = performance.now();
            const client = await smtpConnect(app.port());
            await client.greeting(30_000);
            idle.push(performance.now() - started);
            client.close();
            await new Promise((r) => setTimeout(r, 50));
        }
        idle.sort((a, b) => a - b);
        console.log(
            `through the app, idle: greetings median ${idle[5]?.toFixed(0)} ms, max ${idle.at(-1)?.toFixed(0)} ms (connect, connect-stage checks and rules, banner)`,
        );
        const chosen = CASES.filter(
            (c) =>
                c.name.includes('5.8 MB') ||
                c.name.includes('all at once') ||
                (filter !== undefined && c.name.includes(filter)),
        );
        for (const c of chosen) {
            // dot-stuffed before the clock starts: the sending client shares this process
            const text = c
                .message()
                .toString('latin1')
                .replace(/^\./, '..')
                .replace(/\r\n\./g, '\r\n..');
            const stuffed = Buffer.from(`${text}${text.endsWith('\r\n') ? '' : '\r\n'}.\r\n`, 'latin1');
            const sender = await smtpConnect(app.port(), { timeoutMs: 120_000 });
            await sender.greeting();
            await sender.cmd('EHLO flood.example');
            await sender.cmd(`MAIL FROM:<${c.mailFrom ?? 'a@flood.example'}>`);
            await sender.cmd('RCPT TO:<user@mx.test>');
            await sender.cmd('DATA');
            let done = false;
            const cpu = process.cpuUsage();
            sender.write(stuffed);
            const sending = sender.reply().finally(() => {
                done = true;
            });
            const latencies: number[] = [];
            while (!done) {
                const started = performance.now();
                const client = await smtpConnect(app.port());
                await client.greeting(30_000);
                latencies.push(performance.now() - started);
                client.close();
                await new Promise((r) => setTimeout(r, 50));
            }
            const reply = await sending;
            sender.close();
            const used = process.cpuUsage(cpu);
            latencies.sort((a, b) => a - b);
            console.log(
                [
                    `through the app: ${c.name}`,
                    `  reply ${reply.code} ${reply.text.split(' ')[0]}; greetings meanwhile: ${latencies.length}, median ${latencies[Math.floor(latencies.length / 2)]?.toFixed(0)} ms, max ${latencies.at(-1)?.toFixed(0)} ms; process cpu ${((used.user + used.system) / 1e6).toFixed(2)} s (client, SMTP, spool, checks)`,
                ].join('\n'),
            );
        }
    } finally {
        await app.stop();
        await rm(join(tmpdir(), `mw-cost-${process.pid}`), { recursive: true, force: true });
    }
}

const filter = process.argv[2];
await measureChecks(filter);
await measureGreetings(filter);
