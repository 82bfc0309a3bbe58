/**
 * The benchmark's parts that decide what it reports, tested without running a benchmark:
 * the corpus (classes, sizes, DKIM signatures and SPF/DMARC verdicts against its own zone on
 * the loopback test DNS server), dot-stuffing, percentiles and spreads, /proc parsing and the
 * process-tree monitor, CPU and heap profile summaries, raised limits that still load, the
 * verification of a window, and the sink, pass-through and load client over real sockets.
 * No assertion is about speed.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { after, before, describe, it } from 'node:test';
import { authenticate, type DNSResolver } from 'mailauth';
import { PACKAGE_RULES_DIR } from '../../src/config/defaults.ts';
import { createResolver } from '../../src/dns/resolver.ts';
import { checkRules } from '../../src/rules/load.ts';
import {
    CLASS_SHARES,
    CLIENT_HELO,
    CLIENT_IP,
    corpusZone,
    describeCorpus,
    generateCorpus,
    makeKeys,
    seededRandom,
    toWire,
    type CorpusClass,
    type CorpusMessage,
    type DkimKeys,
} from '../../scripts/bench/corpus.ts';
import { runLoad } from '../../scripts/bench/load.ts';
import {
    benchConfig,
    prepareRules,
    raiseLimits,
    raiseRate,
    SERVE_V8_FLAGS,
    unknownOptionalKeys,
} from '../../scripts/bench/mailwarden-setup.ts';
import { createPassthrough } from '../../scripts/bench/passthrough.ts';
import { parseStat, parseStatus, processTree, readStat, TreeMonitor } from '../../scripts/bench/procfs.ts';
import { summariseCpuProfiles, summariseHeapProfiles, type CpuProfile } from '../../scripts/bench/profile.ts';
import { evaluateWindow, parseCommandStats, ratios, summarise, type WindowInput } from '../../scripts/bench/report.ts';
import { BenchUsageError, OPTIONS, parseBenchArgs, USAGE } from '../../scripts/bench/options.ts';
import { createSink, messageIdOf } from '../../scripts/bench/sink.ts';
import { fmtSpread, median, percentile, spread } from '../../scripts/bench/stats.ts';
import { startDnsServer } from '../helpers/dns-server.ts';
import { smtpConnect } from '../helpers/smtp-client.ts';

const SIGN_TIME = new Date(Date.UTC(2026, 0, 1));

describe('bench corpus', () => {
    let keys: DkimKeys;
    let corpus: CorpusMessage[];
    before(async () => {
        keys = makeKeys(1024);
        corpus = await generateCorpus({ count: 150, seed: 42, largeShare: 0.05, keys, signTime: SIGN_TIME });
    });

    it('draws every class in about its share, with spoofs expected to be refused', () => {
        const info = describeCorpus(corpus);
        assert.equal(info.messages, 150);
        for (const [cls, share] of CLASS_SHARES) {
            const n = info.classes[cls] ?? 0;
            assert.ok(n > 0, `class ${cls} missing`);
            assert.ok(Math.abs(n / 150 - share) < 0.1, `${cls}: ${n} of 150 for a share of ${share}`);
        }
        for (const m of corpus) {
            assert.equal(m.expect, m.class.startsWith('spoof-') ? 'reject' : 'accept');
        }
        assert.equal(info.spoofs, (info.classes['spoof-envelope'] ?? 0) + (info.classes['spoof-header'] ?? 0));
    });

    it('makes multipart messages of 3–10 KB and ~100 KB ones with an attachment, CRLF only, unique ids', () => {
        assert.ok(corpus.some((m) => m.large));
        for (const m of corpus) {
            const kb = m.raw.length / 1024;
            if (m.large) assert.ok(kb > 90 && kb < 115, `large message ${m.index}: ${kb.toFixed(1)} KB`);
            else assert.ok(kb >= 3 && kb <= 10.5, `message ${m.index}: ${kb.toFixed(1)} KB`);
            const text = m.raw.toString('latin1');
            assert.doesNotMatch(text, /[^\r]\n|\r[^\n]/, `message ${m.index} has a bare line ending`);
            assert.ok(text.endsWith('\r\n'));
            assert.match(text, /^Content-Type: multipart\/(alternative|mixed);/m);
            assert.equal(messageIdOf(text), m.id);
        }
        assert.equal(new Set(corpus.map((m) => m.id)).size, corpus.length);
    });

    it('is the same for the same seed and keys, and different for another seed', async () => {
        const again = await generateCorpus({ count: 20, seed: 42, largeShare: 0.05, keys, signTime: SIGN_TIME });
        assert.deepEqual(
            again.map((m) => m.raw.toString('latin1')),
            corpus.slice(0, 20).map((m) => m.raw.toString('latin1')),
        );
        const other = await generateCorpus({ count: 20, seed: 7, largeShare: 0.05, keys, signTime: SIGN_TIME });
        assert.notDeepEqual(
            other.map((m) => m.class),
            again.map((m) => m.class),
        );
        const r = seededRandom(1);
        const xs = Array.from({ length: 1000 }, r);
        assert.ok(xs.every((x) => x >= 0 && x < 1));
        assert.ok(Math.abs(xs.reduce((a, b) => a + b) / 1000 - 0.5) < 0.05);
    });

    it('gets the intended SPF, DKIM and DMARC verdicts from its own zone', async () => {
        const dns = await startDnsServer(corpusZone(keys));
        const resolver = createResolver({ servers: [dns.address], timeoutMs: 2_000 });
        try {
            const want: Record<CorpusClass, { spf: string; dkim: string | null; dmarc: string; policy?: string }> = {
                aligned: { spf: 'pass', dkim: 'pass', dmarc: 'pass' },
                'spf-includes': { spf: 'pass', dkim: 'pass', dmarc: 'pass' },
                newsletter: { spf: 'pass', dkim: 'pass', dmarc: 'pass' },
                'dkim-broken': { spf: 'pass', dkim: 'neutral', dmarc: 'pass' },
                'spoof-envelope': { spf: 'fail', dkim: null, dmarc: 'fail', policy: 'reject' },
                'spoof-header': { spf: 'pass', dkim: null, dmarc: 'fail', policy: 'reject' },
            };
            for (const [cls, expected] of Object.entries(want)) {
                const m = corpus.find((x) => x.class === cls && !x.large) ?? corpus.find((x) => x.class === cls)!;
                const r = await authenticate(m.raw, {
                    ip: CLIENT_IP,
                    helo: CLIENT_HELO,
                    sender: m.mailFrom,
                    mta: 'mx.dest.test',
                    resolver: resolver.resolve as DNSResolver,
                    disableBimi: true,
                });
                assert.equal(r.spf && r.spf.status.result, expected.spf, `${cls}: SPF`);
                const dkim = r.dkim.results[0]?.status.result ?? null;
                if (expected.dkim === 'neutral') assert.notEqual(dkim, 'pass', `${cls}: DKIM`);
                else assert.equal(dkim === 'none' ? null : dkim, expected.dkim, `${cls}: DKIM`);
                assert.equal(r.dmarc && r.dmarc.status.result, expected.dmarc, `${cls}: DMARC`);
                if (expected.policy) assert.equal(r.dmarc && r.dmarc.policy, expected.policy, `${cls}: DMARC policy`);
            }
        } finally {
            resolver.close();
            await dns.close();
        }
    });

    it('dot-stuffs for the wire and ends with the terminator', () => {
        const wire = toWire(Buffer.from('.starts\r\nmiddle\r\n.\r\n..two\r\nend\r\n', 'latin1')).toString('latin1');
        assert.equal(wire, '..starts\r\nmiddle\r\n..\r\n...two\r\nend\r\n.\r\n');
        assert.equal(toWire(Buffer.from('no final newline', 'latin1')).toString('latin1'), 'no final newline\r\n.\r\n');
    });
});

describe('bench statistics', () => {
    it('computes nearest-rank percentiles, medians and spreads', () => {
        const xs = Array.from({ length: 100 }, (_, i) => i + 1);
        assert.equal(percentile(xs, 50), 50);
        assert.equal(percentile(xs, 99), 99);
        assert.equal(percentile(xs, 100), 100);
        assert.equal(percentile(xs, 0), 1);
        assert.equal(percentile([7], 99), 7);
        assert.ok(Number.isNaN(percentile([], 50)));
        assert.equal(percentile([1, 2, 3, 1000], 50), 2);
        assert.equal(median([3, 1, 2]), 2);
        assert.equal(median([4, 1, 3, 2]), 2.5);
        assert.ok(Number.isNaN(median([NaN])));
        assert.deepEqual(spread([5, 1, NaN, 3]), { median: 3, min: 1, max: 5 });
        assert.equal(fmtSpread({ median: 3, min: 1, max: 5 }, 0), '3 (1–5)');
        assert.equal(fmtSpread({ median: 2, min: 2, max: 2 }, 1), '2.0');
        assert.equal(fmtSpread(spread([]), 1), '–');
    });
});

describe('bench /proc readings', () => {
    it('parses stat lines whose command name holds spaces and parentheses', () => {
        const fields = Array.from({ length: 50 }, (_, i) => String(i + 3));
        fields[0] = 'S'; // field 3
        fields[1] = '77'; // ppid
        fields[11] = '1500'; // utime
        fields[12] = '300'; // stime
        fields[13] = '20'; // cutime
        fields[14] = '10'; // cstime
        fields[21] = '2560'; // rss pages
        const st = parseStat(`4242 (node (worker) x) ${fields.join(' ')}\n`);
        assert.deepEqual(st, {
            pid: 4242,
            comm: 'node (worker) x',
            state: 'S',
            ppid: 77,
            utime: 1500,
            stime: 300,
            cutime: 20,
            cstime: 10,
            rssPages: 2560,
        });
        assert.throws(() => parseStat('garbage'));
        assert.deepEqual(parseStatus('Name:\tnode\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n'), {
            vmRssKb: 102400,
            vmHwmKb: 204800,
        });
        assert.deepEqual(parseStatus('Name:\tkthreadd\n'), { vmRssKb: 0, vmHwmKb: 0 });
        const self = readStat(process.pid);
        assert.equal(self?.pid, process.pid);
        assert.equal(self?.ppid, process.ppid);
        assert.equal(readStat(2 ** 30), null);
    });

    it('measures the CPU and memory of a process tree, grandchildren included', async () => {
        // a child that starts a grandchild, then burns about 300 ms of CPU and says so
        const script = `
            const { spawn } = require('node:child_process');
            const g = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
            const keep = Buffer.alloc(32 * 1024 * 1024, 1);
            const t = process.cpuUsage();
            while (process.cpuUsage(t).user < 300000) {}
            process.stdout.write('done ' + g.pid + ' ' + keep.length + '\\n');
            process.stdin.on('end', () => { g.kill(); process.exit(0); });
            process.stdin.resume();`;
        const child = spawn(process.execPath, ['-e', script], { stdio: ['pipe', 'pipe', 'inherit'] });
        const monitor = new TreeMonitor([child.pid!], 20);
        monitor.start();
        const line = await new Promise<string>((resolve) => {
            let out = '';
            child.stdout.on('data', (d: Buffer) => {
                out += d.toString();
                if (out.includes('\n')) resolve(out);
            });
        });
        const grandchild = Number(line.split(' ')[1]);
        assert.deepEqual(processTree([child.pid!]).sort(), [child.pid!, grandchild].sort());
        const usage = monitor.stop();
        child.stdin.end();
        await new Promise((resolve) => child.once('exit', resolve));
        assert.ok(usage.cpuMs >= 200, `cpu ${usage.cpuMs} ms`);
        assert.ok(usage.peakRssMb >= 32, `peak RSS ${usage.peakRssMb} MB`);
        assert.ok(usage.maxHwmMb >= 32, `VmHWM ${usage.maxHwmMb} MB`);
        assert.equal(usage.processes, 2);
        assert.deepEqual(processTree([child.pid!]), []);
    });
});

describe('bench profile summaries', () => {
    const root = '/srv/mailwarden';
    const frame = (functionName: string, url: string, lineNumber = 0) => ({ functionName, url, lineNumber });
    const profile: CpuProfile = {
        nodes: [
            { id: 1, callFrame: frame('(root)', ''), children: [2, 5, 6] },
            { id: 2, callFrame: frame('handle', `file://${root}/src/session.ts`, 9), children: [3] },
            { id: 3, callFrame: frame('verify', `file://${root}/node_modules/@scope/pkg/lib/v.js`, 41), children: [4] },
            { id: 4, callFrame: frame('writeUtf8String', ''), children: [] },
            { id: 5, callFrame: frame('(idle)', ''), children: [] },
            { id: 6, callFrame: frame('(garbage collector)', ''), children: [] },
        ],
        startTime: 0,
        endTime: 10_000,
        // samples at 1000, 2000, ... µs: 3 → 1 ms, 3 → 1, 4 → 2, 2 → 1, 5 → 3, 6 → 1 (until endTime)
        samples: [3, 3, 4, 2, 5, 6],
        timeDeltas: [1000, 1000, 1000, 2000, 1000, 3000],
    };

    it('splits busy time into self and total time per function and per group', () => {
        const s = summariseCpuProfiles([profile], root);
        assert.equal(s.idleMs, 3);
        assert.equal(s.busyMs, 6);
        assert.equal(s.samples, 6);
        const byName = new Map(s.functions.map((f) => [f.name, f]));
        assert.deepEqual(
            [byName.get('verify')!.selfMs, byName.get('verify')!.totalMs, byName.get('verify')!.location],
            [2, 4, '@scope/pkg/lib/v.js:42'],
        );
        assert.deepEqual([byName.get('handle')!.selfMs, byName.get('handle')!.totalMs], [1, 5]);
        assert.equal(byName.get('handle')!.location, 'src/session.ts:10');
        // a builtin's time is charged to the nearest caller of our own or of a package
        assert.deepEqual(byName.get('writeUtf8String')!.callers, [{ caller: 'verify @scope/pkg/lib/v.js:42', ms: 2 }]);
        assert.deepEqual(
            s.groups.map((g) => [g.group, g.selfMs]),
            [
                ['@scope/pkg', 2],
                ['native', 2],
                ['src/session.ts', 1],
                ['GC', 1],
            ],
        );
        // summing two profiles (two worker processes) doubles everything
        const two = summariseCpuProfiles([profile, profile], root);
        assert.equal(two.busyMs, 12);
        assert.equal(two.functions.find((f) => f.name === 'verify')!.totalMs, 8);
    });

    it('falls back on hit counts without sample lists', () => {
        const hits: CpuProfile = {
            ...profile,
            samples: undefined,
            timeDeltas: undefined,
            nodes: profile.nodes.map((n) => ({ ...n, hitCount: n.id === 3 ? 3 : n.id === 5 ? 1 : 0 })),
        };
        const s = summariseCpuProfiles([hits], root);
        assert.equal(s.busyMs, 7.5);
        assert.equal(s.idleMs, 2.5);
    });

    it('sums the live bytes of heap profiles per allocating function', () => {
        const h = summariseHeapProfiles(
            [
                {
                    head: {
                        callFrame: frame('(root)', ''),
                        selfSize: 0,
                        children: [
                            { callFrame: frame('parse', `file://${root}/src/headers.ts`, 4), selfSize: 3000 },
                            {
                                callFrame: frame('load', 'node:internal/modules/cjs/loader', 10),
                                selfSize: 1000,
                                children: [
                                    { callFrame: frame('parse', `file://${root}/src/headers.ts`, 4), selfSize: 500 },
                                ],
                            },
                        ],
                    },
                },
            ],
            root,
        );
        assert.equal(h.totalBytes, 4500);
        assert.deepEqual(h.sites[0], {
            name: 'parse',
            location: 'src/headers.ts:5',
            group: 'src/headers.ts',
            bytes: 3500,
        });
        assert.deepEqual(h.groups[1], { group: 'node:modules', bytes: 1000 });
    });
});

describe('bench limits and config', () => {
    it('raises rates and concurrency, within what the limit store can count exactly', () => {
        assert.equal(raiseRate('100/1m', 10_000), '1000000/1m');
        assert.equal(raiseRate('5/s', 10), '50/s');
        assert.equal(raiseRate('200MB/1h', 10), '2000MB/1h');
        const capped = raiseRate('10000/1d', 10_000);
        const count = Number(capped.split('/')[0]);
        assert.ok(count * 86_400_000 <= 2 ** 52 && count > 10_000, capped);
        assert.equal(raiseRate('not a rate', 10), 'not a rate');
        const text = [
            '# a comment that stays',
            'limits:',
            '  - { id: a, key: client.ip, concurrency: 10 }',
            '  - id: b',
            '    key: mail.from',
            '    rate: [300/1h, 2000/1d] # per day too',
            'rules: []',
            '',
        ].join('\n');
        const raised = raiseLimits(text, 100);
        assert.match(raised, /# a comment that stays/);
        assert.match(raised, /concurrency: 1000 \}/);
        assert.match(raised, /rate: \[ 30000\/1h, 200000\/1d \] # per day too/);
        assert.equal(raiseLimits('rules: []\n', 100), 'rules: []\n');
    });

    it('gives a copy of the shipped rules that still loads, with every limit raised', async () => {
        const dir = await mkdtemp(path.join(os.tmpdir(), 'mailwarden-bench-rules-'));
        try {
            const rules = path.join(dir, 'rules');
            const changed = await prepareRules(PACKAGE_RULES_DIR, rules, 10_000);
            assert.ok(changed.includes('50-limits.yaml'));
            assert.deepEqual(checkRules(rules, { softReject: false }), []);
            const text = await readFile(path.join(rules, '50-limits.yaml'), 'utf8');
            assert.match(text, /concurrency: 100000\b/);
            assert.match(text, /1000000\/1m/);
            assert.doesNotMatch(text, /rate: \[?\s*\d{1,3}\//, 'a rate was left as shipped');
            const shipped = await readFile(path.join(PACKAGE_RULES_DIR, '50-limits.yaml'), 'utf8');
            assert.match(shipped, /concurrency: 10\b/, 'the shipped file was changed');
        } finally {
            await rm(dir, { recursive: true, force: true });
        }
    });

    it('writes a config with every connection cap raised, leaving out keys a checkout does not know', () => {
        const options = {
            port: 2525,
            sinkPort: 2600,
            dns: '127.0.0.1:5353',
            redisUrl: 'redis://127.0.0.1:6379',
            rulesDir: '/tmp/rules',
            httpPort: 9465,
            spoolDir: '/tmp/spool',
            maxClients: 2000,
        };
        assert.match(benchConfig(options), /maxClients: 2000, maxClientsPerNetwork: 2000 \}/);
        assert.match(benchConfig(options), /xclient: true/);
        const unknown = unknownOptionalKeys('/x.yaml:4:60: unknown key "maxClientsPerNetwork" in listeners[0]\n');
        assert.deepEqual(unknown, ['maxClientsPerNetwork']);
        assert.doesNotMatch(benchConfig({ ...options, without: unknown }), /maxClientsPerNetwork/);
        assert.deepEqual(unknownOptionalKeys('/x.yaml:1:1: something else\n'), []);
    });
});

describe('bench verification', () => {
    const msg = (index: number, expect: 'accept' | 'reject'): CorpusMessage => ({
        index,
        class: expect === 'reject' ? 'spoof-envelope' : 'aligned',
        expect,
        id: `m${index}@test`,
        mailFrom: 'a@good.test',
        rcptTo: 'b@dest.test',
        large: false,
        raw: Buffer.alloc(0),
    });
    const corpus = [msg(0, 'accept'), msg(1, 'reject'), msg(2, 'accept')];
    const usage = { cpuMs: 30, userMs: 20, systemMs: 10, peakRssMb: 100, endRssMb: 90, maxHwmMb: 110, processes: 1 };
    const base: WindowInput = {
        round: 0,
        target: 'mailwarden',
        perConnection: 1,
        planned: 3,
        outcomes: [
            { index: 0, code: 250, stage: 'eod', latencyMs: 10 },
            { index: 1, code: 550, stage: 'eod', latencyMs: 20 },
            { index: 2, code: 250, stage: 'eod', latencyMs: 30 },
        ],
        corpus,
        sinkIds: ['m0@test', 'm2@test'],
        wallMs: 1000,
        connections: 3,
        timedOut: false,
        filter: usage,
        sink: usage,
        redis: usage,
        redisCommands: { evalsha: 6, get: 3 },
        clientCpuMs: 3,
    };

    it('passes a window where the spoof was refused and the rest delivered', () => {
        const w = evaluateWindow(base);
        assert.deepEqual(w.failures, []);
        assert.deepEqual([w.accepted, w.refused, w.spoofs, w.spoofsRefused, w.completed], [2, 1, 1, 1, 3]);
        assert.equal(w.msgsPerS, 3);
        assert.equal(w.filterCpuMsPerMsg, 10);
        assert.equal(w.redisCommandsPerMsg, 3);
        assert.equal(w.redisScriptsPerMsg, 2);
        assert.deepEqual(w.latencyMs, { p50: 20, p90: 30, p99: 30, max: 30 });
        assert.deepEqual(w.byClass, { aligned: { accepted: 2 }, 'spoof-envelope': { '5xx@eod': 1 } });
    });

    it('fails a spoof that got through, a message missing at the sink, one there unasked, and a short window', () => {
        const through = evaluateWindow({
            ...base,
            outcomes: base.outcomes.map((o) => (o.index === 1 ? { ...o, code: 250 } : o)),
            sinkIds: ['m0@test', 'm1@test', 'm2@test'],
        });
        assert.equal(through.failureCount, 1);
        assert.match(through.failures[0]!, /message 1 \(spoof-envelope\) should have been refused/);
        const missing = evaluateWindow({ ...base, sinkIds: ['m0@test'] });
        assert.match(missing.failures.join('\n'), /message 2 .* never reached the sink/);
        const extra = evaluateWindow({ ...base, sinkIds: ['m0@test', 'm1@test', 'm2@test'] });
        assert.match(extra.failures.join('\n'), /<m1@test> reached the sink 1× without being accepted/);
        const short = evaluateWindow({ ...base, planned: 5 });
        assert.match(short.failures.join('\n'), /only 3 of 5 messages were sent/);
        const tempfail = evaluateWindow({
            ...base,
            outcomes: base.outcomes.map((o) => (o.index === 0 ? { ...o, code: 451, detail: '451 4.3.0' } : o)),
            sinkIds: ['m2@test'],
        });
        assert.match(tempfail.failures.join('\n'), /message 0 \(aligned\) should have been accepted, got 451/);
    });

    it('expects every message, spoofs too, to be delivered on the paths without a filter', () => {
        const direct = evaluateWindow({ ...base, target: 'direct', filter: null });
        assert.match(direct.failures.join('\n'), /message 1 \(spoof-envelope\) should have been accepted/);
        assert.equal(direct.filterCpuMsPerMsg, null);
    });

    it("counts Redis's commands without the bench's own", () => {
        const info = [
            '# Commandstats',
            'cmdstat_evalsha:calls=12,usec=340,usec_per_call=28.33,rejected_calls=0,failed_calls=0',
            'cmdstat_flushall:calls=1,usec=30,usec_per_call=30.00,rejected_calls=0,failed_calls=0',
            'cmdstat_config|resetstat:calls=1,usec=3,usec_per_call=3.00,rejected_calls=0,failed_calls=0',
            'cmdstat_script|load:calls=2,usec=90,usec_per_call=45.00,rejected_calls=0,failed_calls=0',
            '',
        ].join('\r\n');
        assert.deepEqual(parseCommandStats(info), { evalsha: 12, 'script|load': 2 });
    });

    it('summarises rounds and pairs mailwarden with the other paths round by round', () => {
        const windows = [0, 1].flatMap((round) => [
            evaluateWindow({ ...base, round, wallMs: round === 0 ? 1000 : 500 }),
            evaluateWindow({
                ...base,
                round,
                target: 'passthrough',
                outcomes: base.outcomes.map((o) => ({ ...o, code: 250 })),
                sinkIds: ['m0@test', 'm1@test', 'm2@test'],
                wallMs: round === 0 ? 250 : 250,
            }),
        ]);
        const s = summarise(windows);
        assert.deepEqual(
            s.map((v) => [v.target, v.rounds, v.msgsPerS.median, v.spoofsRefusedMin, v.failureCount]),
            [
                ['passthrough', 2, 12, 0, 0],
                ['mailwarden', 2, 4.5, 1, 0],
            ],
        );
        const [r] = ratios(windows);
        assert.deepEqual(r!.throughputVsPassthrough, { median: 0.375, min: 0.25, max: 0.5 });
        assert.ok(Number.isNaN(r!.throughputVsDirect.median));
        assert.ok(Number.isNaN(r!.checksCpuMs.median), 'no no-checks path, no cost of the checks');
    });

    it('expects every message through the no-checks path, spoofs too, and prices the checks from it', () => {
        const accepted = base.outcomes.map((o) => ({ ...o, code: 250 }));
        const plain = evaluateWindow({
            ...base,
            target: 'no-checks',
            outcomes: accepted,
            sinkIds: ['m0@test', 'm1@test', 'm2@test'],
            filter: { ...usage, cpuMs: 12 },
        });
        assert.deepEqual([plain.failures, plain.accepted, plain.filterCpuMsPerMsg], [[], 3, 4]);
        // a spoof refused without checks would be a rule refusing what it should not see
        const refusing = evaluateWindow({ ...base, target: 'no-checks' });
        assert.equal(refusing.failureCount, 1);
        const [r] = ratios([evaluateWindow(base), plain]);
        assert.deepEqual(r!.checksCpuMs, { median: 6, min: 6, max: 6 });
        // mailwarden with workers against the one process of the no-checks path: not comparable
        const [workers] = ratios([evaluateWindow({ ...base, filter: { ...usage, processes: 3 } }), plain]);
        assert.ok(Number.isNaN(workers!.checksCpuMs.median));
        assert.deepEqual(
            summarise([evaluateWindow(base), plain]).map((v) => v.target),
            ['no-checks', 'mailwarden'],
        );
    });

    it('starts the no-checks path with the V8 flags the launcher gives serve', () => {
        const launcher = readFileSync(new URL('../../bin/mailwarden.js', import.meta.url), 'utf8');
        const listed = /const SERVE_V8_FLAGS = \[([^\]]*)\]/.exec(launcher);
        assert.ok(listed, 'SERVE_V8_FLAGS in bin/mailwarden.js');
        assert.deepEqual(
            listed[1]!.split(',').map((f) => f.trim().replace(/^'|'$/g, '')),
            [...SERVE_V8_FLAGS],
        );
    });
});

describe('bench sink, pass-through and load client', () => {
    let sink: ReturnType<typeof createSink>;
    let sinkPort: number;
    let passthrough: net.Server;
    let passthroughPort: number;
    before(async () => {
        sink = createSink();
        await new Promise<void>((resolve) => sink.server.listen(0, '127.0.0.1', resolve));
        sinkPort = (sink.server.address() as AddressInfo).port;
        passthrough = createPassthrough(sinkPort);
        await new Promise<void>((resolve) => passthrough.listen(0, '127.0.0.1', resolve));
        passthroughPort = (passthrough.address() as AddressInfo).port;
    });
    after(async () => {
        await new Promise((resolve) => passthrough.close(resolve));
        await new Promise((resolve) => sink.server.close(resolve));
    });

    it('finds the Message-ID in the header section only, folded or not', () => {
        assert.equal(messageIdOf('From: a\r\nMessage-ID: <x@y>\r\n\r\nbody'), 'x@y');
        assert.equal(messageIdOf('From: a\r\nmessage-id:\r\n <folded@y>\r\n\r\nbody'), 'folded@y');
        assert.equal(messageIdOf('From: a\r\n\r\nMessage-ID: <in-body@y>\r\n'), '');
    });

    it('answers like Postfix to XCLIENT and pipelining, and finds the end of data across chunks', async () => {
        const c = await smtpConnect(sinkPort);
        try {
            assert.equal((await c.greeting()).code, 220);
            const ehlo = await c.cmd('EHLO proxy.test');
            assert.ok(ehlo.lines.some((l) => l.startsWith('XCLIENT ') && l.includes('ADDR')));
            assert.equal((await c.cmd('XCLIENT ADDR=192.0.2.1 NAME=[UNAVAILABLE]')).code, 220);
            assert.equal((await c.cmd('EHLO client.test')).code, 250);
            assert.equal((await c.cmd('MAIL FROM:<a@good.test>')).code, 250);
            assert.equal((await c.cmd('RCPT TO:<b@dest.test>')).code, 250);
            assert.equal((await c.cmd('DATA')).code, 354);
            // the terminator split over three writes
            c.write('Message-ID: <one@test>\r\n\r\nline\r\n..dot\r');
            c.write('\n.');
            c.write('\r\n');
            const done = await c.reply();
            assert.equal(done.code, 250);
            // a whole pipelined transaction, its data and QUIT, in one write
            c.write('MAIL FROM:<a@good.test>\r\nRCPT TO:<b@dest.test>\r\nDATA\r\n');
            assert.equal((await c.reply()).code, 250);
            assert.equal((await c.reply()).code, 250);
            assert.equal((await c.reply()).code, 354);
            c.write('Message-ID: <two@test>\r\n\r\n.\r\nRSET\r\nNOOP\r\n');
            assert.equal((await c.reply()).code, 250);
            assert.equal((await c.reply()).code, 250);
            assert.equal((await c.reply()).code, 250);
            assert.equal((await c.cmd('VRFY x')).code, 502);
            assert.equal((await c.cmd('QUIT')).code, 221);
        } finally {
            c.close();
        }
        assert.deepEqual(sink.take(), ['one@test', 'two@test']);
        assert.deepEqual(sink.take(), []);
        // one connection was opened, and counted once
        assert.equal(sink.takeConnections(), 1);
        assert.equal(sink.takeConnections(), 0);
    });

    it('sends prepared messages directly and through the pass-through, several per connection', async () => {
        const keys = makeKeys(1024);
        const corpus = await generateCorpus({ count: 7, seed: 3, largeShare: 0.3, keys, signTime: SIGN_TIME });
        const messages = corpus.map((m) => ({
            index: m.index,
            mailFrom: m.mailFrom,
            rcptTo: m.rcptTo,
            wire: toWire(m.raw),
        }));
        for (const port of [sinkPort, passthroughPort]) {
            const r = await runLoad({
                port,
                helo: CLIENT_HELO,
                messages,
                concurrency: 2,
                perConnection: 3,
                deadline: performance.now() + 60_000,
                replyTimeoutMs: 10_000,
            });
            assert.equal(r.timedOut, false);
            assert.equal(r.connections, 3, 'two sessions sending 3 + 3, then 1');
            assert.deepEqual(
                r.outcomes.map((o) => [o.index, o.code, o.stage]).sort((a, b) => Number(a[0]) - Number(b[0])),
                corpus.map((m) => [m.index, 250, 'eod']),
            );
            assert.deepEqual(sink.take().sort(), corpus.map((m) => m.id).sort());
        }
    });

    it('records the reply that ended each message: a refusal at end of data, a 421 greeting, a lost connection', async () => {
        // a server that refuses every message at end of data; on its second connection it is busy,
        // on its third it closes the connection when asked RCPT
        let connectionsSeen = 0;
        const server = net.createServer((socket) => {
            connectionsSeen++;
            const seen = connectionsSeen;
            if (seen === 2) return socket.end('421 4.7.0 Too busy\r\n');
            socket.write('220 refuser ESMTP\r\n');
            let inData = false;
            let buffered = '';
            socket.on('data', (d: Buffer) => {
                buffered += d.toString('latin1');
                for (;;) {
                    if (inData) {
                        const end = buffered.indexOf('\r\n.\r\n');
                        if (end < 0) return;
                        buffered = buffered.slice(end + 5);
                        inData = false;
                        socket.write('550 5.7.1 No\r\n');
                        continue;
                    }
                    const nl = buffered.indexOf('\r\n');
                    if (nl < 0) return;
                    const verb = buffered.slice(0, 4).toUpperCase();
                    buffered = buffered.slice(nl + 2);
                    if (verb === 'RCPT' && seen === 3) return socket.destroy();
                    if (verb === 'DATA') {
                        inData = true;
                        socket.write('354 go\r\n');
                    } else if (verb === 'QUIT') socket.end('221 bye\r\n');
                    else socket.write('250 ok\r\n');
                }
            });
        });
        await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
        try {
            const messages = [0, 1, 2, 3].map((index) => ({
                index,
                mailFrom: 'a@good.test',
                rcptTo: 'b@dest.test',
                wire: Buffer.from(`Message-ID: <r${index}@t>\r\n\r\nx\r\n.\r\n`),
            }));
            const r = await runLoad({
                port: (server.address() as AddressInfo).port,
                helo: CLIENT_HELO,
                messages,
                concurrency: 1,
                perConnection: 2,
                deadline: performance.now() + 60_000,
                replyTimeoutMs: 5_000,
            });
            assert.deepEqual(
                r.outcomes.map((o) => [o.index, o.code, o.stage, o.detail]),
                [
                    [0, 550, 'eod', '550 5.7.1 No'],
                    [1, 550, 'eod', '550 5.7.1 No'],
                    [2, 421, 'greeting', '421 4.7.0 Too busy'],
                    [3, 0, 'rcpt', 'connection closed'],
                ],
            );
            assert.equal(r.connections, 3);
        } finally {
            await new Promise((resolve) => server.close(resolve));
        }
    });

    it('records a connection that fails without retrying, and stops at the deadline', async () => {
        const messages = [0, 1, 2].map((index) => ({
            index,
            mailFrom: 'a@good.test',
            rcptTo: 'b@dest.test',
            wire: Buffer.from(`Message-ID: <x${index}@t>\r\n\r\nx\r\n.\r\n`),
        }));
        const closed = await runLoad({
            port: 1, // nothing listens there
            helo: CLIENT_HELO,
            messages,
            concurrency: 1,
            perConnection: 1,
            deadline: performance.now() + 60_000,
            replyTimeoutMs: 2_000,
        });
        assert.deepEqual(
            closed.outcomes.map((o) => [o.code, o.stage]),
            [
                [0, 'connect'],
                [0, 'connect'],
                [0, 'connect'],
            ],
        );
        const late = await runLoad({
            port: sinkPort,
            helo: CLIENT_HELO,
            messages,
            concurrency: 1,
            perConnection: 1,
            deadline: performance.now() - 1,
            replyTimeoutMs: 2_000,
        });
        assert.deepEqual([late.outcomes.length, late.timedOut], [0, true]);
        sink.take();
    });
});

describe('bench options', () => {
    it('has bounded defaults and refuses what it cannot run', () => {
        const o = parseBenchArgs([]);
        assert.deepEqual(
            [o.messages, o.concurrency, o.rounds, o.perConnection, o.warmup, o.targets, o.maxSeconds, o.profile],
            [2000, 20, 3, [1, 10], 1000, ['direct', 'passthrough', 'no-checks', 'mailwarden'], 900, false],
        );
        const p = parseBenchArgs(['--heap-profile', '--targets', 'mailwarden', '--per-connection', '5', '--out', 'x']);
        assert.deepEqual(
            [p.profile, p.heapProfile, p.targets, p.perConnection, p.out],
            [true, true, ['mailwarden'], [5], 'x'],
        );
        for (const bad of [
            ['--rounds', '0'],
            ['--messages', '1.5'],
            ['--messages', ''],
            ['--targets', 'postfix'],
            ['--targets', 'direct,direct'],
            ['--per-connection', '1,1'],
            ['--large-share', '2'],
            ['--max-seconds', '1'],
            ['--nonsense'],
            ['positional'],
        ]) {
            assert.throws(() => parseBenchArgs(bad), BenchUsageError, bad.join(' '));
        }
    });

    it('documents every option in the usage text and in docs/performance.md, linked from the README', async () => {
        const root = path.resolve(import.meta.dirname, '../..');
        const doc = await readFile(path.join(root, 'docs/performance.md'), 'utf8');
        for (const name of Object.keys(OPTIONS)) {
            assert.match(USAGE, new RegExp(`--${name}\\b`), `usage lacks --${name}`);
            if (name !== 'help') assert.ok(doc.includes(`--${name}`), `docs/performance.md does not mention --${name}`);
        }
        const readme = await readFile(path.join(root, 'README.md'), 'utf8');
        assert.match(readme, /npm run bench[\s\S]*\(docs\/performance\.md\)/);
    });
});
