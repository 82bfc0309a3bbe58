// The sender-authentication thread (src/sender-auth/verify-thread.ts) against the loopback test
// DNS server: the `mailauth` check gives the same facts and header fields verified in the thread
// as on the main thread (signed, spoofed, quarantined, several From mailboxes, a DNS timeout,
// ARC from a trusted sealer, rfc7489 mode, a logged-in client); a verification stuck in
// synchronous work is stopped when its check ends, by terminating the thread, while the main
// thread stays free, the other verifications of that thread run again in a new one and the next
// message is verified as usual; a thread that dies ends or reruns its verifications, never
// leaves one unanswered; mailauth's results cross as plain data with the hidden properties the
// check reads.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { createMailauthCheck } from '../../src/checks/mailauth.ts';
import type { AuthenticationConfig } from '../../src/config/types.ts';
import { createResolver, type Resolver } from '../../src/dns/resolver.ts';
import type { Logger } from '../../src/log.ts';
import { createMetrics, type Metrics } from '../../src/metrics.ts';
import {
    BYTES_IN_FLIGHT,
    createVerifyThread,
    PIECES_IN_FLIGHT,
    ThreadRestarted,
    type VerifyThread,
} from '../../src/sender-auth/verify-thread.ts';
import { authOutput, type AuthResult } from '../../src/sender-auth/auth-output.ts';
import type { Check, CheckResult } from '../../src/types.ts';
import { startDnsServer, type DnsTestServer, type ZoneEntry } from '../helpers/dns-server.ts';
import {
    basicMessage,
    CLIENT,
    FORWARDER_IP,
    HOST,
    runCheck as run,
    message,
    rsaKey,
    seal,
    settings,
    sign,
    testResolver,
    type ContextOptions,
    type TestKey,
} from './helpers.ts';

const MISBEHAVING = new URL('../helpers/misbehaving-verify-worker.ts', import.meta.url);
const YOUNG_PROBE = new URL('../helpers/young-generation-probe.ts', import.meta.url);

let dns: DnsTestServer;
let resolver: Resolver;
let bankKey: TestKey;
let forwarderKey: TestKey;

before(async () => {
    bankKey = rsaKey();
    forwarderKey = rsaKey();
    dns = await startDnsServer({});
    dns.setZone({
        'bank.example': { TXT: [`v=spf1 ip4:${CLIENT} -all`], A: ['192.0.2.1'] },
        'sel._domainkey.bank.example': { TXT: [bankKey.record] },
        '_dmarc.bank.example': { TXT: ['v=DMARC1; p=reject; sp=quarantine; np=reject'] },
        'shop.example': { TXT: ['v=spf1 -all'] },
        '_dmarc.shop.example': { TXT: ['v=DMARC1; p=quarantine'] },
        'slow.example': { TXT: ['v=spf1 -all'] },
        'broken.example': { SERVFAIL: true },
        '_dmarc.slow.example': { TIMEOUT: true },
        'forwarder.example': { TXT: [`v=spf1 ip4:${FORWARDER_IP} -all`] },
        'arc._domainkey.forwarder.example': { TXT: [forwarderKey.record] },
        ...bigAnswers(),
    });
    resolver = testResolver(dns.address);
});

/**
 * Names under big.example whose answers are large, for the byte budgets: each of the 10 hosts
 * of m0 and m1 answers 1,100 addresses (about 57 KB estimated, small enough for the thread's
 * copy); bytes.example's SPF record names the hosts of both (more than a message's 1 MiB)
 * before its ip4 term, fits.big.example's those of m0; two.big.example's names two hosts before
 * its ip4 term, hold.big.example's the same two, then a name that does not answer.
 */
function bigAnswers(): Record<string, ZoneEntry> {
    const zone: Record<string, ZoneEntry> = {
        'bytes.big.example': { TXT: [`v=spf1 mx:m0.big.example mx:m1.big.example ip4:${CLIENT} -all`] },
        'fits.big.example': { TXT: [`v=spf1 mx:m0.big.example ip4:${CLIENT} -all`] },
        'two.big.example': { TXT: [`v=spf1 a:h0.m0.big.example a:h1.m0.big.example ip4:${CLIENT} -all`] },
        'hold.big.example': { TXT: ['v=spf1 a:h0.m0.big.example a:h1.m0.big.example include:never.big.example -all'] },
        'never.big.example': { TIMEOUT: true },
    };
    const addresses = Array.from({ length: 1100 }, (_, k) => `198.51.${k >> 8}.${k & 255}`);
    for (let i = 0; i < 2; i++) {
        zone[`m${i}.big.example`] = {
            MX: Array.from({ length: 10 }, (_, k) => ({ exchange: `h${k}.m${i}.big.example`, priority: k })),
        };
        for (let k = 0; k < 10; k++) zone[`h${k}.m${i}.big.example`] = { A: addresses };
    }
    return zone;
}

after(async () => {
    resolver.close();
    await dns.close();
});

function check(thread: VerifyThread | null, over: Partial<AuthenticationConfig> = {}, metrics?: Metrics): Check {
    return createMailauthCheck({
        hostname: HOST,
        resolver,
        localDomains: ['mx.test'],
        settings: settings({ arc: { trustedSealers: ['forwarder.example'], maxSets: 10 }, ...over }),
        thread,
        ...(metrics ? { metrics } : {}),
    });
}

async function restarts(metrics: Metrics): Promise<Record<string, number>> {
    const out: Record<string, number> = {};
    for (const v of (await metrics.authThreadRestarts.get()).values) out[String(v.labels.reason)] = v.value;
    return out;
}

/** The longest the main thread's event loop was held between `start()` and `stop()`, in ms. */
function loopWatch(): { stop(): number } {
    let last = performance.now();
    let longest = 0;
    const timer = setInterval(() => {
        const now = performance.now();
        longest = Math.max(longest, now - last);
        last = now;
    }, 10);
    return {
        stop() {
            clearInterval(timer);
            return Math.max(longest, performance.now() - last);
        },
    };
}

describe('sender authentication in its own thread', () => {
    it('gives the same facts and header fields as the main thread', async () => {
        const thread = createVerifyThread();
        try {
            const signed = await sign(basicMessage('alerts@bank.example'), 'bank.example', 'sel', bankKey);
            // many pieces, and one line far longer than a piece, through the flow control
            const largeBody = `${'a line of the body\r\n'.repeat(60_000)}${'x'.repeat(300_000)}\r\nend\r\n`;
            const large = await sign(
                message(
                    [
                        ['From', 'alerts@bank.example'],
                        ['To', 'bob@mx.test'],
                        ['Subject', 'large'],
                    ],
                    largeBody,
                ),
                'bank.example',
                'sel',
                bankKey,
            );
            const forwarded = await seal(
                await sign(
                    basicMessage('alerts@bank.example', [['Subject', 'changed later']]),
                    'bank.example',
                    'sel',
                    bankKey,
                ),
                {
                    domain: 'forwarder.example',
                    selector: 'arc',
                    key: forwarderKey,
                    authResults: 'mx.forwarder.example; dkim=pass header.d=bank.example; dmarc=pass',
                    cv: 'none',
                },
            );
            const cases: { name: string; msg: string; o?: ContextOptions; over?: Partial<AuthenticationConfig> }[] = [
                { name: 'aligned signature', msg: signed, o: { mailFrom: 'a@bank.example' } },
                { name: 'a 1.5 MB body', msg: large, o: { mailFrom: 'a@bank.example' } },
                {
                    name: 'spoof',
                    msg: basicMessage('ceo@bank.example'),
                    o: { ip: '203.0.113.9', mailFrom: 'x@bank.example' },
                },
                { name: 'quarantine', msg: basicMessage('sales@shop.example'), o: { mailFrom: 'sales@shop.example' } },
                {
                    name: 'two From mailboxes',
                    msg: basicMessage('a@bank.example, b@shop.example'),
                    o: { mailFrom: 'a@bank.example' },
                },
                {
                    name: 'DMARC lookup times out',
                    msg: basicMessage('x@slow.example'),
                    o: { mailFrom: 'x@slow.example' },
                },
                {
                    name: 'trusted ARC sealer',
                    msg: forwarded,
                    o: { ip: FORWARDER_IP, mailFrom: 'l@forwarder.example' },
                },
                {
                    name: 'rfc7489 mode',
                    msg: signed,
                    o: { mailFrom: 'a@bank.example' },
                    over: { dmarc: { mode: 'rfc7489', rejectMultipleFrom: true } },
                },
                { name: 'logged-in client', msg: signed, o: { mailFrom: 'a@bank.example', login: 'alice' } },
            ];
            for (const c of cases) {
                const inThread = await run(check(thread, c.over), c.msg, c.o);
                const here = await run(check(null, c.over), c.msg, c.o);
                assert.deepEqual(inThread, here, c.name);
            }
            // the cases were verified for real: not every verdict is the same
            const spoof = await run(check(thread), cases[2]!.msg, cases[2]!.o);
            assert.equal(spoof.facts['dmarc.disposition'], 'reject');
            const arc = await run(check(thread), forwarded, cases[6]!.o);
            assert.equal((await run(check(thread), large, cases[1]!.o)).facts['dkim.result'], 'pass');
            assert.equal(arc.facts['arc.trusted'], true);
        } finally {
            await thread.close();
        }
    });

    it('an ordinary message crosses in two messages with nothing sent back for them; a large one keeps the flow control', async () => {
        type Out = { t: string; job?: number; bytes?: Uint8Array | null; ack?: number | null; last?: boolean };
        const log: ({ dir: 'out'; m: Out } | { dir: 'in'; m: { t: string; job?: number; n?: number } })[] = [];
        // every message the main thread sends to a thread, and every one it gets
        const proto = Worker.prototype as unknown as Record<'postMessage' | 'emit', (...args: unknown[]) => unknown>;
        const post = proto.postMessage;
        const emit = proto.emit;
        proto.postMessage = function (this: Worker, ...args: unknown[]) {
            log.push({ dir: 'out', m: args[0] as Out });
            return post.apply(this, args);
        };
        proto.emit = function (this: Worker, ...args: unknown[]) {
            if (args[0] === 'message') log.push({ dir: 'in', m: args[1] as { t: string } });
            return emit.apply(this, args);
        };
        const thread = createVerifyThread();
        try {
            await thread.warm();
            const signed = await sign(basicMessage('alerts@bank.example'), 'bank.example', 'sel', bankKey);
            log.length = 0;
            const r = await run(check(thread), signed, { mailFrom: 'a@bank.example' });
            assert.equal(r.facts['dmarc.result'], 'pass');
            const out = log.filter((e) => e.dir === 'out' && e.m.t !== 'answer' && e.m.t !== 'ping').map((e) => e.m.t);
            assert.deepEqual(out, ['start', 'piece']);
            const back = log.filter((e) => e.dir === 'in' && e.m.t !== 'dns' && e.m.t !== 'pong').map((e) => e.m.t);
            assert.deepEqual(back, ['done']);

            const large = await sign(
                message({ From: 'alerts@bank.example', To: 'bob@mx.test' }, 'a line of the body\r\n'.repeat(60_000)),
                'bank.example',
                'sel',
                bankKey,
            );
            log.length = 0;
            const l = await run(check(thread), large, { mailFrom: 'a@bank.example' });
            assert.equal(l.facts['dkim.result'], 'pass');
            // what the main thread knows to be in flight, at each piece it sends
            const inFlight: { n: number; size: number }[] = [];
            let sent = 0;
            let acks = 0;
            for (const e of log) {
                if (e.dir === 'in' && e.m.t === 'taken') {
                    acks++;
                    while (inFlight.length > 0 && inFlight[0]!.n <= e.m.n!) inFlight.shift();
                } else if (e.dir === 'out' && (e.m.t === 'start' || e.m.t === 'piece') && e.m.bytes) {
                    inFlight.push({ n: ++sent, size: e.m.bytes.byteLength });
                    assert.ok(inFlight.length <= PIECES_IN_FLIGHT, `${inFlight.length} pieces in flight`);
                    const bytes = inFlight.reduce((sum, p) => sum + p.size, 0);
                    assert.ok(inFlight.length === 1 || bytes <= BYTES_IN_FLIGHT, `${bytes} bytes in flight`);
                }
            }
            assert.ok(sent > 20, `${sent} pieces`);
            assert.ok(acks > 0 && acks < sent, `${acks} acknowledgements for ${sent} pieces`);
        } finally {
            proto.postMessage = post;
            proto.emit = emit;
            await thread.close();
        }
    });

    it('stops a verification stuck in synchronous work when its check ends, and the main thread stays free', async () => {
        const metrics = createMetrics('test');
        const warnings: { fields: Record<string, unknown>; msg: string }[] = [];
        const log = {
            warn: (fields: object, msg?: string) => {
                warnings.push({ fields: fields as Record<string, unknown>, msg: msg ?? '' });
            },
            error: () => undefined,
        } as unknown as Pick<Logger, 'warn' | 'error'>;
        const thread = createVerifyThread({ entry: MISBEHAVING, graceMs: 100, metrics, log });
        try {
            const c = check(thread, {}, metrics);
            const signed = await sign(basicMessage('alerts@bank.example'), 'bank.example', 'sel', bankKey);
            // warm: the thread is up and the key known
            assert.equal((await run(c, signed, { mailFrom: 'a@bank.example' })).facts['dkim.result'], 'pass');

            const watch = loopWatch();
            const started = performance.now();
            // an ordinary message is in the thread when the stuck one arrives
            const innocent = run(c, signed, { mailFrom: 'a@bank.example' });
            const stuck = new AbortController();
            const stuckRun = run(
                c,
                basicMessage('ceo@bank.example'),
                { mailFrom: 'spin-5000@bank.example' },
                stuck.signal,
            );
            // the check's timeout, as the pipeline would end it
            setTimeout(() => stuck.abort(new Error('check mailauth timed out')), 200);
            await assert.rejects(stuckRun, /timed out/);
            const ended = performance.now() - started;
            const result = await innocent;
            const next = await run(c, signed, { mailFrom: 'a@bank.example' });
            const total = performance.now() - started;
            const held = watch.stop();

            // the verification in the stuck thread was run again in the new one
            assert.equal(result.facts['dkim.result'], 'pass');
            assert.equal(result.facts['dmarc.result'], 'pass');
            assert.equal(next.facts['dmarc.result'], 'pass');
            assert.ok(ended < 1000, `the stuck check ended after ${ended} ms`);
            // all of it long before the 5 s of synchronous work would have ended
            assert.ok(total < 3500, `took ${total} ms`);
            assert.ok(held < 1000, `the main thread was held ${held} ms`);
            assert.deepEqual(await restarts(metrics), { stalled: 1, failed: 0 });
            assert.equal(warnings.length, 1);
            assert.equal(warnings[0]!.fields.session, 'test');
            assert.match(warnings[0]!.msg, /held it in synchronous work/);
            assert.match(String(warnings[0]!.fields.why), /no answer to a cancel/);
            assert.equal(thread.active, 0);
        } finally {
            await thread.close();
        }
    });

    it('a thread silent for stallMs is stopped before any check ends; the verification that held it is not run again', async () => {
        const metrics = createMetrics('test');
        const thread = createVerifyThread({ entry: MISBEHAVING, stallMs: 300, metrics });
        try {
            const c = check(thread, {}, metrics);
            const signed = await sign(basicMessage('alerts@bank.example'), 'bank.example', 'sel', bankKey);
            assert.equal((await run(c, signed, { mailFrom: 'a@bank.example' })).facts['dkim.result'], 'pass');
            const started = performance.now();
            const innocent = run(c, signed, { mailFrom: 'a@bank.example' });
            // no timeout at all: only the thread's silence can end it
            const stuck = run(c, basicMessage('ceo@bank.example'), { mailFrom: 'spin-5000@bank.example' });
            await assert.rejects(stuck, (err: unknown) => err instanceof ThreadRestarted && !err.rerun);
            const ended = performance.now() - started;
            assert.equal((await innocent).facts['dmarc.result'], 'pass');
            assert.ok(ended < 2000, `the stuck verification ended after ${Math.round(ended)} ms`);
            assert.deepEqual(await restarts(metrics), { stalled: 1, failed: 0 });
            assert.equal(thread.active, 0);
        } finally {
            await thread.close();
        }
    });

    it('work in a timer is charged to the job that set the timer, not to the one whose message came last', async () => {
        const metrics = createMetrics('test');
        const thread = createVerifyThread({ entry: MISBEHAVING, stallMs: 300, metrics });
        try {
            // every answer takes 400 ms: both verifications are still in the thread when the timer fires
            const slow = {
                resolve: async (name: string, rrtype: string) => {
                    await new Promise((resolve) => setTimeout(resolve, 400));
                    return resolver.resolve(name, rrtype);
                },
            };
            const c = createMailauthCheck({
                hostname: HOST,
                resolver: slow,
                localDomains: [],
                settings: settings(),
                thread,
            });
            await thread.warm();
            const hostile = run(c, basicMessage('ceo@bank.example'), { mailFrom: 'timer-spin-3000@bank.example' });
            while (thread.active === 0) await new Promise((resolve) => setTimeout(resolve, 1));
            const signed = await sign(basicMessage('alerts@bank.example'), 'bank.example', 'sel', bankKey);
            const innocent = run(c, signed, { mailFrom: 'a@bank.example' });
            await assert.rejects(hostile, (err: unknown) => err instanceof ThreadRestarted && !err.rerun);
            assert.equal((await innocent).facts['dmarc.result'], 'pass');
            assert.deepEqual(await restarts(metrics), { stalled: 1, failed: 0 });
        } finally {
            await thread.close();
        }
    });

    it('the main thread held for longer than stallMs is not taken for a stuck thread', async () => {
        const metrics = createMetrics('test');
        const thread = createVerifyThread({ stallMs: 300, metrics });
        try {
            // DNS that never answers: the verification waits in the thread for as long as the test wants
            const silent = { resolve: () => new Promise<unknown>(() => undefined) };
            const c = createMailauthCheck({
                hostname: HOST,
                resolver: silent,
                localDomains: [],
                settings: settings(),
                thread,
            });
            await thread.warm();
            const ended = new AbortController();
            const waiting = run(c, basicMessage('a@bank.example'), { mailFrom: 'a@bank.example' }, ended.signal);
            while (thread.active === 0) await new Promise((resolve) => setTimeout(resolve, 1));
            await new Promise((resolve) => setTimeout(resolve, 300));
            // the main thread busy for a second: the thread's answers to the pings wait unread
            const end = performance.now() + 1000;
            while (performance.now() < end) {
                // busy
            }
            await new Promise((resolve) => setTimeout(resolve, 600));
            assert.equal(thread.active, 1, 'the verification is still there');
            ended.abort(new Error('check mailauth timed out'));
            await assert.rejects(waiting, /timed out/);
            await new Promise((resolve) => setTimeout(resolve, 1200));
            assert.deepEqual(await restarts(metrics), { stalled: 0, failed: 0 });
        } finally {
            await thread.close();
        }
    });

    it('a verification whose check ends while the thread is free is cancelled without a restart', async () => {
        const metrics = createMetrics('test');
        const thread = createVerifyThread({ graceMs: 100, metrics });
        try {
            const c = check(thread, {}, metrics);
            const ended = new AbortController();
            // its DMARC lookup never gets an answer: the thread waits, free
            const waiting = run(c, basicMessage('x@slow.example'), { mailFrom: 'x@slow.example' }, ended.signal);
            setTimeout(() => ended.abort(new Error('check mailauth timed out')), 50);
            await assert.rejects(waiting, /timed out/);
            await new Promise((resolve) => setTimeout(resolve, 300));
            assert.deepEqual(await restarts(metrics), { stalled: 0, failed: 0 });
            assert.equal(thread.active, 0);
            const signed = await sign(basicMessage('alerts@bank.example'), 'bank.example', 'sel', bankKey);
            assert.equal((await run(c, signed, { mailFrom: 'a@bank.example' })).facts['dkim.result'], 'pass');
            assert.deepEqual(await restarts(metrics), { stalled: 0, failed: 0 });
        } finally {
            await thread.close();
        }
    });

    it('a thread that dies ends its verifications (none is run again: any may have caused it), never leaves one unanswered', async () => {
        const metrics = createMetrics('test');
        const thread = createVerifyThread({ entry: MISBEHAVING, metrics });
        try {
            const c = check(thread, {}, metrics);
            const signed = await sign(basicMessage('alerts@bank.example'), 'bank.example', 'sel', bankKey);
            await run(c, signed, { mailFrom: 'a@bank.example' });
            const other = run(c, basicMessage('x@slow.example'), { mailFrom: 'x@slow.example' });
            const crashing = run(c, basicMessage('ceo@bank.example'), { mailFrom: 'exit@bank.example' });
            const lost = (err: unknown): boolean => err instanceof ThreadRestarted && !err.rerun;
            await assert.rejects(crashing, lost);
            await assert.rejects(other, lost);
            assert.deepEqual(await restarts(metrics), { stalled: 0, failed: 1 });
            assert.equal(thread.active, 0);
            // the next message gets a new thread
            assert.equal((await run(c, signed, { mailFrom: 'a@bank.example' })).facts['dmarc.result'], 'pass');
            assert.deepEqual(await restarts(metrics), { stalled: 0, failed: 1 });
        } finally {
            await thread.close();
        }
    });

    it('warm() starts the thread before any message; a thread that cannot start makes it fail', async () => {
        const thread = createVerifyThread();
        try {
            await thread.warm();
            // up: the first message waits for no module loading
            const signed = await sign(basicMessage('alerts@bank.example'), 'bank.example', 'sel', bankKey);
            assert.equal(
                (await run(check(thread), signed, { mailFrom: 'a@bank.example' })).facts['dkim.result'],
                'pass',
            );
            // a thread that is up resolves at once
            await thread.warm();
        } finally {
            await thread.close();
        }
        const broken = createVerifyThread({ entry: new URL('../helpers/no-such-verify-worker.ts', import.meta.url) });
        try {
            await assert.rejects(broken.warm(10_000), /sender authentication thread did not start/);
        } finally {
            await broken.close();
        }
    });

    it('rest() ends the thread once its verifications are done; the next one starts a new thread', async () => {
        const thread = createVerifyThread();
        try {
            await thread.warm();
            assert.equal(thread.running, true);
            thread.rest();
            assert.equal(thread.running, false);
            const c = check(thread);
            const signed = await sign(basicMessage('alerts@bank.example'), 'bank.example', 'sel', bankKey);
            const first = run(c, signed, { mailFrom: 'a@bank.example' });
            while (thread.active === 0) await new Promise((resolve) => setTimeout(resolve, 1));
            // asked to rest while a verification runs: it finishes it first
            thread.rest();
            assert.equal(thread.running, true);
            assert.equal((await first).facts['dmarc.result'], 'pass');
            assert.equal(thread.running, false);
            assert.equal((await run(c, signed, { mailFrom: 'a@bank.example' })).facts['dmarc.result'], 'pass');
            assert.equal(thread.running, true);
        } finally {
            await thread.close();
        }
    });

    it('a closed thread refuses new verifications', async () => {
        const thread = createVerifyThread();
        await thread.close();
        await assert.rejects(
            run(check(thread), basicMessage('a@bank.example')),
            (err: unknown) => err instanceof ThreadRestarted,
        );
    });

    it('the thread has a young generation of its own, smaller than the one serve gives the main thread', () => {
        // in a process started as bin/mailwarden.js starts serve: a --max-semi-space-size given
        // to Node.js would otherwise be the thread's too (2 × 4 MB)
        const probe = spawnSync(
            process.execPath,
            ['--max-semi-space-size=4', '--heap-growing-percent=20', fileURLToPath(YOUNG_PROBE)],
            { encoding: 'utf8', timeout: 60_000 },
        );
        assert.equal(probe.status, 0, probe.stderr);
        const size = (name: string): number => Number(new RegExp(`^${name} (\\d+)$`, 'm').exec(probe.stdout)?.[1]);
        // the main thread's grows to its 2 × 4 MB; the thread's stays under half of that (V8
        // makes each of its semi-spaces a third of THREAD_YOUNG_MB, at least 1 MB; what it reports
        // may exceed the two by a page)
        assert.ok(size('main') >= 2 * 4 * 1024, probe.stdout);
        assert.ok(size('young') > 0 && size('young') < size('main') / 2, probe.stdout);
    });
});

describe("the thread's copy of the DNS answers", () => {
    /** The DNS questions the thread sends to the main thread while `work` runs. */
    async function asked(work: () => Promise<void>): Promise<string[]> {
        const questions: string[] = [];
        const proto = Worker.prototype as unknown as Record<'emit', (...args: unknown[]) => unknown>;
        const emit = proto.emit;
        proto.emit = function (this: Worker, ...args: unknown[]) {
            const m = args[1] as { t?: string; name?: string; rrtype?: string };
            if (args[0] === 'message' && m.t === 'dns') questions.push(`${m.rrtype} ${m.name}`);
            return emit.apply(this, args);
        };
        try {
            await work();
        } finally {
            proto.emit = emit;
        }
        return questions;
    }

    const verifier = (
        thread: VerifyThread | null,
        shared: Resolver,
        over: Partial<AuthenticationConfig> = {},
        metrics?: Metrics,
    ): Check =>
        createMailauthCheck({
            hostname: HOST,
            resolver: shared,
            localDomains: ['mx.test'],
            settings: settings(over),
            thread,
            ...(metrics ? { metrics } : {}),
        });

    /** The facts a check derives from what mailauth got, DNS answers included. */
    const FACTS = ['spf.result', 'dkim.result', 'dmarc.result', 'dmarc.policy', 'auth.dns_queries', 'auth.limits'];
    const picked = (facts: Record<string, unknown>): Record<string, unknown> =>
        Object.fromEntries(FACTS.map((f) => [f, facts[f]]));

    it('answers a question again while the shared cache keeps the answer (in its clock), counted as there; not after, nor from a replaced resolver', async () => {
        let clock = 1_000_000;
        const metrics = createMetrics('test');
        const shared = createResolver({ servers: [dns.address], timeoutMs: 250, tries: 1, now: () => clock, metrics });
        const thread = createVerifyThread();
        const txtHits = async (): Promise<number> =>
            (await metrics.dnsQueries.get()).values.find((v) => v.labels.type === 'TXT' && v.labels.result === 'hit')
                ?.value ?? 0;
        try {
            const signed = await sign(basicMessage('alerts@bank.example'), 'bank.example', 'sel', bankKey);
            const c = verifier(thread, shared);
            const send = (mailFrom: string) => run(c, signed, { mailFrom });
            let first: Record<string, unknown> = {};
            const cold = await asked(async () => void (first = (await send('a@bank.example')).facts));
            assert.ok(cold.includes('TXT bank.example') && cold.includes('TXT _dmarc.bank.example'), cold.join());
            assert.equal(first['dmarc.result'], 'pass');
            const hitsBefore = shared.stats().hits;
            const txtBefore = await txtHits();
            let second: Record<string, unknown> = {};
            const warm = await asked(async () => void (second = (await send('a@bank.example')).facts));
            assert.deepEqual(warm, [], 'every question answered in the thread');
            assert.deepEqual(picked(second), picked(first));
            // counted as the main thread would have: the message's budget and the cache's hits
            assert.equal(second['auth.dns_queries'], cold.length);
            assert.equal(shared.stats().hits - hitsBefore, cold.length);
            assert.equal((await txtHits()) - txtBefore, cold.filter((q) => q.startsWith('TXT ')).length);

            // a negative answer (NXDOMAIN: no SPF record) is kept too
            const none = await asked(async () => void (await send('a@nowhere.example')));
            assert.ok(none.includes('TXT nowhere.example'), none.join());
            let again: Record<string, unknown> = {};
            const noneWarm = await asked(async () => void (again = (await send('a@nowhere.example')).facts));
            assert.ok(!noneWarm.includes('TXT nowhere.example'), noneWarm.join());
            assert.equal(again['spf.result'], 'none');

            // a SERVFAIL is not kept, here as in the shared cache: asked each time, a temperror each time
            for (let i = 0; i < 2; i++) {
                let failed: Record<string, unknown> = {};
                const broken = await asked(async () => void (failed = (await send('a@broken.example')).facts));
                assert.ok(broken.includes('TXT broken.example'), broken.join());
                assert.equal(failed['spf.result'], 'temperror');
            }

            // past the shared cache's expiry (300 s records) the thread asks again
            clock += 301_000;
            const expired = await asked(async () => void (await send('a@bank.example')));
            assert.ok(expired.includes('TXT bank.example'), expired.join());

            // a replaced resolver (a reload that changed dns): its cache, not the old copy
            const replaced = createResolver({ servers: [dns.address], timeoutMs: 250, tries: 1, now: () => clock });
            try {
                const fresh = await asked(
                    async () => void (await run(verifier(thread, replaced), signed, { mailFrom: 'a@bank.example' })),
                );
                assert.deepEqual(fresh.sort(), cold.slice().sort());
            } finally {
                replaced.close();
            }
        } finally {
            await thread.close();
            shared.close();
        }
    });

    it('a verification lost with its thread and run again starts with what the copy answered in its first run counted', async () => {
        // a second's timeout: the DMARC question of _dmarc.slow.example is still waiting when the thread is stopped
        const shared = createResolver({ servers: [dns.address], timeoutMs: 1000, tries: 1 });
        const metrics = createMetrics('test');
        const thread = createVerifyThread({ entry: MISBEHAVING, stallMs: 300, metrics });
        try {
            const c = verifier(thread, shared);
            const signed = await sign(basicMessage('alerts@bank.example'), 'bank.example', 'sel', bankKey);
            await run(c, signed, { mailFrom: 'a@bank.example' });
            // signed by bank.example (its key and SPF record in the copy now), from slow.example
            const lost = await sign(basicMessage('x@slow.example'), 'bank.example', 'sel', bankKey);
            let facts: Record<string, unknown> = {};
            const questions = await asked(async () => {
                const verified = run(c, lost, { mailFrom: 'a@bank.example' });
                // holds the thread 300 ms after it started, for another job: the first is run again
                const holder = run(c, basicMessage('ceo@shop.example'), { mailFrom: 'timer-spin-5000@shop.example' });
                facts = (await verified).facts;
                await holder.catch(() => undefined);
            });
            assert.deepEqual(await restarts(metrics), { stalled: 1, failed: 0 });
            const crossed = questions.filter((q) => !q.endsWith(' shop.example') && !q.endsWith('.shop.example'));
            assert.ok(crossed.filter((q) => q === 'TXT _dmarc.slow.example').length === 2, crossed.join());
            // the first run: the key and the SPF record from the copy, then _dmarc.slow.example
            // asked of the main thread; the second run (a new thread, an empty copy) asked it all
            assert.equal(facts['auth.dns_queries'], crossed.length + 2);
        } finally {
            await thread.close();
            shared.close();
        }
    });

    it('the DNS budget holds as on the main thread: cold or warm, the same queries counted and the same refusal', async () => {
        const shared = testResolver(dns.address);
        const thread = createVerifyThread();
        try {
            const signed = await sign(basicMessage('alerts@bank.example'), 'bank.example', 'sel', bankKey);
            const budget = { maxDnsQueries: 2 };
            const here = picked(
                (await run(verifier(null, shared, budget), signed, { mailFrom: 'a@bank.example' })).facts,
            );
            assert.equal(here['auth.dns_queries'], 2);
            assert.ok((here['auth.limits'] as string[]).includes('dns_queries'), String(here['auth.limits']));
            const c = verifier(thread, shared, budget);
            for (const round of ['cold', 'warm', 'warm again']) {
                const facts = picked((await run(c, signed, { mailFrom: 'a@bank.example' })).facts);
                assert.deepEqual(facts, here, round);
            }
            // and a budget the message fits in
            const full = picked((await run(verifier(null, shared), signed, { mailFrom: 'a@bank.example' })).facts);
            const inThread = picked(
                (await run(verifier(thread, shared), signed, { mailFrom: 'a@bank.example' })).facts,
            );
            assert.deepEqual(inThread, full);
            assert.deepEqual(full['auth.limits'], []);
        } finally {
            await thread.close();
            shared.close();
        }
    });
});

describe("the byte budgets of the thread's DNS answers", () => {
    const verifier = (thread: VerifyThread | null, shared: Resolver): Check =>
        createMailauthCheck({ hostname: HOST, resolver: shared, localDomains: [], settings: settings(), thread });
    const FACTS = ['spf.result', 'dmarc.result', 'auth.dns_queries', 'auth.limits'];
    const picked = (r: CheckResult): Record<string, unknown> => ({
        ...Object.fromEntries(FACTS.map((f) => [f, r.facts[f]])),
        refused: /DNS answer budget of \d+ bytes per message spent[^:]*: A [^)]*/.exec(
            r.headers?.find((h) => h.name === 'Received-SPF')?.value ?? '',
        )?.[0],
    });

    it("a message's answers are held to its byte budget as on the main thread: cold, or answered from the thread's copy", async () => {
        const shared = testResolver(dns.address);
        const thread = createVerifyThread();
        try {
            const msg = basicMessage('a@bytes.big.example');
            const here = picked(await run(verifier(null, shared), msg, { mailFrom: 'a@bytes.big.example' }));
            assert.equal(here['spf.result'], 'temperror');
            assert.deepEqual(here['auth.limits'], ['dns_bytes']);
            assert.match(String(here.refused), /A h\d\.m1\.big\.example$/);
            const c = verifier(thread, shared);
            for (const round of ['cold', 'warm', 'warm again']) {
                const facts = picked(await run(c, msg, { mailFrom: 'a@bytes.big.example' }));
                assert.deepEqual(facts, here, round);
            }
            const fits = picked(await run(c, msg, { mailFrom: 'a@fits.big.example' }));
            assert.equal(fits['spf.result'], 'pass');
            assert.deepEqual(fits['auth.limits'], []);
        } finally {
            await thread.close();
            shared.close();
        }
    });

    // each bound alone: what the messages hold beyond a small share each, and what they hold in all
    for (const bounds of [
        { share: 8 * 1024, beyondShares: 140_000, total: 400_000 },
        { share: 200_000, beyondShares: 400_000, total: 140_000 },
    ]) {
        const bound = Math.min(bounds.beyondShares, bounds.total);
        it(`what the thread's verifications hold together is bounded (${JSON.stringify(bounds)}): past it an answer is refused`, async () => {
            // the include of hold.big.example waits a second for its DNS timeout, holding two hosts' answers
            const shared = createResolver({ servers: [dns.address], timeoutMs: 1000, tries: 1 });
            const thread = createVerifyThread({ answerBytes: bounds });
            try {
                const c = verifier(thread, shared);
                const before = dns.queries.length;
                const holding = run(c, basicMessage('a@hold.big.example'), { mailFrom: 'a@hold.big.example' });
                while (!dns.queries.slice(before).some((q) => q.name === 'never.big.example')) await sleep(10);
                // while it holds two hosts' answers (about 112 KB): a small message passes, one that
                // needs the same again is refused; alone, after it, that one passes
                const small = await run(c, basicMessage('alerts@bank.example'), { mailFrom: 'a@bank.example' });
                assert.equal(small.facts['spf.result'], 'pass');
                assert.deepEqual(small.facts['auth.limits'], []);
                const big = await run(c, basicMessage('a@two.big.example'), { mailFrom: 'a@two.big.example' });
                assert.equal(big.facts['spf.result'], 'temperror');
                assert.deepEqual(big.facts['auth.limits'], ['dns_bytes']);
                assert.match(
                    big.headers?.find((h) => h.name === 'Received-SPF')?.value ?? '',
                    new RegExp(
                        `DNS answers of the messages being verified over ${bound} bytes: A h[01]\\.m0\\.big\\.example`,
                    ),
                );
                const held = await holding;
                assert.equal(held.facts['spf.result'], 'temperror');
                assert.deepEqual(held.facts['auth.limits'], []);
                const again = await run(c, basicMessage('a@two.big.example'), { mailFrom: 'a@two.big.example' });
                assert.equal(again.facts['spf.result'], 'pass');
            } finally {
                await thread.close();
                shared.close();
            }
        });
    }
});

describe('authOutput', () => {
    it('keeps what the check reads, as plain data: the hidden ARC chain, Buffers as text, l= bytes; nothing else', () => {
        const arc: Record<string, unknown> = { status: { result: 'pass', comment: 'x' }, i: 1, info: 'arc=pass' };
        Object.defineProperty(arc, 'chain', {
            value: [
                {
                    i: 1,
                    'arc-seal': { parsed: { d: { value: 'forwarder.example' }, b: { value: 'sig' } } },
                    'arc-authentication-results': { original: Buffer.from('ARC-Authentication-Results: i=1; x') },
                    'arc-message-signature': { original: Buffer.from('ARC-Message-Signature: i=1; y') },
                },
            ],
            enumerable: false,
        });
        const raw = {
            dkim: {
                headerFrom: ['a@bank.example'],
                fromFields: 1,
                envelopeFrom: 'a@bank.example',
                results: [
                    {
                        signingDomain: 'bank.example',
                        selector: 'sel',
                        signingHeaders: {
                            keys: 'From',
                            headers: ['From: a@bank.example'],
                            canonicalizedHeader: Buffer.from('from:a'),
                        },
                        publicKey: '-----BEGIN PUBLIC KEY-----',
                        status: {
                            result: 'pass',
                            aligned: 'bank.example',
                            underSized: 21,
                            header: { i: '@bank.example' },
                        },
                        info: 'dkim=pass header.i=@bank.example',
                    },
                ],
            },
            spf: {
                domain: 'bank.example',
                rr: 'v=spf1 -all',
                status: { result: 'pass', comment: 'c' },
                header: 'Received-SPF: pass',
                info: 'spf=pass',
                lookups: { count: 1 },
            },
            arc,
            dmarc: { status: { result: 'pass' }, rr: 'v=DMARC1; p=reject' },
        };
        const out = authOutput(raw as unknown as AuthResult);
        assert.deepEqual(out, {
            dkim: {
                headerFrom: ['a@bank.example'],
                fromFields: 1,
                results: [
                    {
                        signingDomain: 'bank.example',
                        status: { result: 'pass', aligned: 'bank.example', underSized: 21, bodyHashFailed: undefined },
                        info: 'dkim=pass (undersized signature: 21 bytes unsigned) header.d=bank.example header.i=@bank.example',
                    },
                ],
            },
            spf: { domain: 'bank.example', status: { result: 'pass' }, header: 'pass (c)', info: 'spf=pass (c)' },
            arc: {
                status: { result: 'pass' },
                info: 'arc=pass (i=1)',
                chain: [
                    {
                        i: 1,
                        'arc-seal': { parsed: { d: { value: 'forwarder.example' } } },
                        'arc-authentication-results': { original: 'ARC-Authentication-Results: i=1; x' },
                    },
                ],
            },
        });
        // survives a structured clone unchanged
        assert.deepEqual(structuredClone(out), out);
        // values of other types than the check reads are left out, not passed on
        const odd = authOutput({
            dkim: {
                headerFrom: undefined,
                fromFields: '1',
                results: [{ status: { result: 'pass', underSized: '9' } }],
            },
            spf: false,
            arc: { status: { result: 'none' }, chain: false },
        } as unknown as AuthResult);
        assert.deepEqual(odd, {
            dkim: {
                headerFrom: undefined,
                fromFields: undefined,
                results: [
                    {
                        signingDomain: undefined,
                        status: {
                            result: 'pass',
                            aligned: undefined,
                            underSized: undefined,
                            bodyHashFailed: undefined,
                        },
                        // written from the parts there are
                        info: 'dkim=pass',
                    },
                ],
            },
            spf: false,
            arc: { status: { result: 'none' }, info: undefined, chain: undefined },
        });
    });
});
