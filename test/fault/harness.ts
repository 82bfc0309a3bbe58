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
 * The lab (lab.ts) is built once and shared by the faults (catalogue.ts); each fault gets a
 * fresh mailwarden process and its own message tokens; judge.ts counts the outcome.
 * Everything runs on loopback and is stopped at the end of each run.
 */
import { cp, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { FaultContext, FaultEvent, FaultSpec } from './catalogue.ts';
import { duplicateRisks, judge, type FaultReport } from './judge.ts';
import {
    harnessLimits,
    makeMessages,
    prepareMailwarden,
    restartableRedis,
    seededRandom,
    spoolFiles,
    type Lab,
    type RestartableRedis,
} from './lab.ts';
import type { Delivery } from './mailbox.ts';
import { metricValue, type MailwardenProcess } from './mailwarden-process.ts';
import { runClient, type ClientOptions } from './mta-client.ts';

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
