/**
 * What sender authentication costs per ordinary message: the `mailauth` check (DKIM, SPF, ARC,
 * DMARC and our verification copy) run in this process on the benchmark's corpus (the same
 * seeded, DKIM-signed messages and DNS zone as `npm run bench`), without sockets, SMTP or
 * Redis, so a change to sender authentication can be compared in CPU per message without the
 * noise of a whole run. The DNS answers come from the loopback test server and are cached by our
 * resolver after the first round, as in production.
 *
 *   node --max-semi-space-size=4 --heap-growing-percent=20 scripts/check-cost.ts [--thread] [ROUNDS] [MESSAGES]
 *
 * (the V8 flags `serve` runs with). `--thread` verifies in the verification thread as `serve`
 * does (verify-thread.ts); without it, on this thread. Prints CPU (all threads, so garbage
 * collection included), the CPU of this thread alone, and wall time per message for each round
 * over the corpus, and exits 1 when a check failed or a
 * message got another DMARC verdict than its class expects (a faster check that verifies less
 * must not pass for a cheaper one). Development tool: it is not part of the
 * running product. Loopback only.
 */
import { readFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import { createMailauthCheck } from '../src/checks/mailauth.ts';
import { defaultAuthentication } from '../src/config/defaults.ts';
import { createResolver } from '../src/dns/resolver.ts';
import { acceptAll, runStage } from '../src/pipeline.ts';
import { createVerifyThread } from '../src/sender-auth/verify-thread.ts';
import type { CheckContext } from '../src/types.ts';
import { startDnsServer } from '../test/helpers/dns-server.ts';
import {
    CLIENT_HELO,
    CLIENT_IP,
    corpusZone,
    generateCorpus,
    makeKeys,
    RCPT_DOMAIN,
    type CorpusMessage,
} from './bench/corpus.ts';

const args = process.argv.slice(2);
const inThread = args[0] === '--thread';
if (inThread) args.shift();
const rounds = Number(args[0] ?? 8);
const count = Number(args[1] ?? 500);
if (!Number.isSafeInteger(rounds) || rounds < 1 || !Number.isSafeInteger(count) || count < 1) {
    process.stderr.write('usage: check-cost.ts [--thread] [ROUNDS] [MESSAGES]\n');
    process.exit(2);
}

const keys = makeKeys();
const corpus = await generateCorpus({ count, seed: 42, largeShare: 0.05, keys });
const dns = await startDnsServer(corpusZone(keys));
const resolver = createResolver({ servers: [dns.address], timeoutMs: 1000, tries: 1 });
const thread = inThread ? createVerifyThread() : undefined;
await thread?.warm();
const check = createMailauthCheck({
    hostname: `mx.${RCPT_DOMAIN}`,
    resolver,
    ...(thread ? { thread } : {}),
    localDomains: [RCPT_DOMAIN],
    settings: defaultAuthentication(),
});
const context = (m: CorpusMessage): Omit<CheckContext, 'stage'> => ({
    sessionId: 'cost',
    facts: {},
    client: { ip: CLIENT_IP, port: 40000, ptr: null, helo: CLIENT_HELO, proto: 'ESMTP', login: null },
    envelope: { mailFrom: m.mailFrom, rcptTo: [m.rcptTo] },
    message: { stream: () => Readable.from([m.raw]), size: m.raw.length },
});

try {
    const perRound: number[] = [];
    const here: number[] = [];
    for (let r = 0; r < rounds; r++) {
        const cpu = process.cpuUsage();
        const own = process.threadCpuUsage();
        const started = performance.now();
        let failed = 0;
        let wrong = 0;
        for (const m of corpus) {
            const result = await runStage('data', [check], context(m), acceptAll);
            if (result.checks[0]?.error) failed++;
            // every message of the corpus is DMARC pass but the spoofs, which fail
            else if (result.facts['dmarc.result'] !== (m.expect === 'reject' ? 'fail' : 'pass')) wrong++;
        }
        if (failed + wrong > 0) process.exitCode = 1;
        const used = process.cpuUsage(cpu);
        const usedHere = process.threadCpuUsage(own);
        const cpuMs = (used.user + used.system) / 1000 / corpus.length;
        const hereMs = (usedHere.user + usedHere.system) / 1000 / corpus.length;
        perRound.push(cpuMs);
        here.push(hereMs);
        console.log(
            `round ${r + 1}: ${cpuMs.toFixed(3)} ms CPU (${hereMs.toFixed(3)} on this thread), ${((performance.now() - started) / corpus.length).toFixed(3)} ms wall per message` +
                (failed > 0 ? `, ${failed} CHECK ERRORS` : '') +
                (wrong > 0 ? `, ${wrong} WRONG DMARC VERDICTS` : ''),
        );
    }
    const median = (values: number[]): number =>
        values.slice(1).sort((a, b) => a - b)[Math.floor((values.length - 1) / 2)]!;
    if (perRound.length > 1) {
        console.log(
            `median of rounds 2–${rounds}: ${median(perRound).toFixed(3)} ms CPU per message, ${median(here).toFixed(3)} on this thread (${corpus.length} messages, ${dns.queries.length} DNS queries in all)`,
        );
    }
    const status = readFileSync('/proc/self/status', 'utf8');
    const mb = (field: string): string =>
        (Number(/(\d+) kB/.exec(status.split(`${field}:`)[1] ?? '')?.[1]) / 1024).toFixed(1);
    console.log(`resident set: ${mb('VmHWM')} MB at the peak, ${mb('VmRSS')} MB at the end`);
} finally {
    await thread?.close();
    resolver.close();
    await dns.close();
}
