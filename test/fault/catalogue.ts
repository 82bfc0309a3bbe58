/**
 * The faults of the fault harness: what each one breaks, when and how often. A proxy fault is a
 * policy for the SMTP fault proxy; a process fault is an injector that strikes while the mail
 * flows and leaves every part healthy when it returns. docs/reliability.md describes each.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Lab, RestartableRedis } from './lab.ts';
import type { MailwardenProcess } from './mailwarden-process.ts';
import type { ProxyAction, ProxyPoint, ProxyPolicy } from './smtp-fault-proxy.ts';

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
