// The verification copy: the header section mailauth is given, cut down to what the per-message
// limits allow. Fields are split exactly as mailauth splits them (property-based, against
// mailauth's own parser), signatures are chosen aligned-first and top-down within the limits,
// what a kept signature covers is kept (DKIM-Signature fields it signs included), ARC chains
// over the limit are left out, and, the point of it all, verifying the copy gives the same
// DKIM and ARC results as verifying the message for every DKIM and ARC conformance vector.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { authenticate, dkimVerify } from 'mailauth';
import { planVerification, splitFields, type VerificationLimits } from '../../src/sender-auth/verification-copy.ts';
import { openVerification, rewrittenLines } from '../../src/sender-auth/verification-stream.ts';
import { defaultAuthentication } from '../../src/config/defaults.ts';
import { startDnsServer, type DnsTestServer, type Zone, type ZoneEntry } from '../helpers/dns-server.ts';
import { arcFlood, canonicalBody, signatureFlood } from '../helpers/hostile-mail.ts';
import { testResolver } from './helpers.ts';
import { FIXTURES } from './conformance/harness.ts';

// mailauth's own header parser, the reference the splitter must agree with (tests only)
const { parseHeaders } = createRequire(import.meta.url)('mailauth/lib/tools.js') as {
    parseHeaders: (buf: Buffer) => { parsed: { key: string | null; line: Buffer }[] };
};

const LIMITS: VerificationLimits = { maxSignatures: 5, maxBodyHashes: 3, maxSignedFields: 100, maxArcSets: 10 };

function plan(header: string, o: { limits?: Partial<VerificationLimits>; author?: string | null } = {}) {
    return planVerification(Buffer.from(header, 'latin1'), {
        limits: { ...LIMITS, ...o.limits },
        authorDomain: o.author === undefined ? null : o.author,
        strict: false,
    });
}

function sig(d: string, extra = '', h = 'from'): string {
    return `DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=${d}; s=s; h=${h}; bh=AAAA; b=BBBB${extra}\r\n`;
}

/** The d= of every DKIM-Signature kept in a planned header, top to bottom. */
function keptDomains(header: Buffer): string[] {
    return [...header.toString('latin1').matchAll(/^DKIM-Signature: .*? d=([^;]+);/gm)].map((m) => m[1]!);
}

describe('splitFields reads a header section as mailauth does', () => {
    it('agrees with mailauth on every field: its key and its lines (property-based)', () => {
        const seed = Number(process.env.FC_SEED ?? Date.now());
        const line = fc.oneof(
            fc.constantFrom('From: a@b.example', 'Subject: x', 'X-Odd : y', 'Name', ': no name', 'DKIM-Signature: d=x'),
            fc.constantFrom(' folded', '\tfolded', ' : colon after a fold', 'no colon at all', '', 'A\u00e9: latin1'),
            fc.string({ maxLength: 12 }).map((s) => s.replace(/[\r\n]/g, '')),
        );
        fc.assert(
            fc.property(fc.array(line, { minLength: 1, maxLength: 30 }), fc.boolean(), (lines, bareLf) => {
                // the spool stores CRLF; a bare LF is tried too (mailauth reads it as a line break)
                const section = lines.join(bareLf ? '\n' : '\r\n') + '\r\n';
                const ours = splitFields(section);
                const theirs = parseHeaders(Buffer.from(section, 'latin1')).parsed;
                assert.deepEqual(
                    ours.map((f) => [f.key, f.text]),
                    theirs.map((f) => [f.key ?? '', f.line.toString('latin1')]),
                );
            }),
            { seed, numRuns: 500, verbose: true },
        );
    });

    it('is linear: 250,000 folded lines and 250,000 tiny fields are split whole', () => {
        const folded = splitFields(`From: a\r\n${' x\r\n'.repeat(250_000)}`);
        assert.equal(folded.length, 1);
        assert.equal(folded[0]!.lines, 250_001);
        assert.equal(splitFields('a:\r\n'.repeat(250_000)).length, 250_000);
    });
});

describe('planVerification', () => {
    it('keeps at most maxSignatures DKIM signatures, aligned with the author domain first, then top-down', () => {
        const header = [
            ...Array.from({ length: 20 }, (_, i) => sig(`junk${i}.example`)),
            sig('mail.bank.example'),
            sig('bank.example'),
            'From: a@bank.example\r\n',
        ].join('');
        const p = plan(header, { author: 'bank.example' });
        assert.equal(p.dkimFound, 22);
        assert.equal(p.dkimEvaluated, 5);
        assert.deepEqual(p.limits, ['dkim_signatures']);
        assert.deepEqual(keptDomains(p.header), [
            'junk0.example',
            'junk1.example',
            'junk2.example',
            'mail.bank.example',
            'bank.example',
        ]);
    });

    it('unusable signatures come last: junk without b= cannot push a usable one out', () => {
        const junk = Array.from({ length: 10 }, (_, i) => `DKIM-Signature: v=1; d=junk${i}.example; s=s; h=from\r\n`);
        const p = plan(junk.join('') + sig('list.example') + 'From: a@bank.example\r\n', { author: 'bank.example' });
        assert.deepEqual(keptDomains(p.header), [
            'junk0.example',
            'junk1.example',
            'junk2.example',
            'junk3.example',
            'list.example',
        ]);
        assert.equal(p.dkimEvaluated, 5);
    });

    it('counts distinct body hashes: each l= needs its own', () => {
        const header = Array.from({ length: 10 }, (_, i) => sig(`d${i}.example`, `; l=${i + 1}`)).join('');
        const p = plan(header + 'From: a@x.example\r\n');
        assert.equal(p.dkimEvaluated, 3);
        assert.deepEqual(p.limits, ['dkim_body_hashes']);
        const same = plan(Array.from({ length: 10 }, (_, i) => sig(`d${i}.example`)).join(''));
        assert.equal(same.dkimEvaluated, 5);
        assert.deepEqual(same.limits, ['dkim_signatures']);
    });

    it('skips a signature whose h= lists more than maxSignedFields names', () => {
        const long = Array.from({ length: 101 }, () => 'x').join(':');
        const p = plan(sig('a.example', '', `from:${long}`) + sig('b.example') + 'From: a@x.example\r\n');
        assert.deepEqual(keptDomains(p.header), ['b.example']);
        assert.deepEqual(p.limits, ['dkim_signed_fields']);
    });

    it('a signature that signs DKIM-Signature fields is kept with the bottom-most ones it covers', () => {
        const header = [
            sig('top.example', '', 'from:dkim-signature:dkim-signature'),
            ...Array.from({ length: 10 }, (_, i) => sig(`mid${i}.example`)),
            sig('low1.example'),
            sig('low2.example'),
            'From: a@top.example\r\n',
        ].join('');
        const p = plan(header, { author: 'top.example' });
        assert.deepEqual(keptDomains(p.header), [
            'top.example',
            'mid0.example',
            'mid1.example',
            'low1.example',
            'low2.example',
        ]);
        // one covering more signatures than the limit allows is not taken at all
        const greedy = sig('greedy.top.example', '', `from${':dkim-signature'.repeat(9)}`) + header;
        const g = plan(greedy, { author: 'top.example' });
        assert.deepEqual(keptDomains(g.header), [
            'top.example',
            'mid0.example',
            'mid1.example',
            'low1.example',
            'low2.example',
        ]);
        assert.ok(g.limits.includes('dkim_signatures'));
    });

    it('keeps only the fields a kept signature can select, bottom-most first, plus the first and last From', () => {
        const header = [
            'Received: one\r\n',
            'X-A: 1\r\n',
            'From: first@x.example\r\n',
            'X-A: 2\r\n',
            'X-B: 1\r\n',
            'From: last@x.example\r\n',
            'Content-Type: text/plain\r\n',
            'Content-Type: text/html\r\n',
            sig('x.example', '', 'from:x-a'),
        ].join('');
        const text = plan(header).header.toString('latin1');
        assert.equal(
            text,
            [
                'From: first@x.example\r\n',
                'X-A: 2\r\n',
                'From: last@x.example\r\n',
                'Content-Type: text/html\r\n',
                sig('x.example', '', 'from:x-a'),
            ].join(''),
        );
        assert.equal(plan(header).fromFields, 2);
    });

    it('unfolds a kept field of more than 100 lines, leaves shorter folds as they are', () => {
        const big = `From: a@x.example${'\r\n y'.repeat(150)}\r\n`;
        const small = `Subject: a${'\r\n b'.repeat(20)}\r\n`;
        const text = plan(big + small + sig('x.example', '', 'from:subject')).header.toString('latin1');
        assert.ok(text.startsWith(`From: a@x.example${' y'.repeat(150)}\r\n`));
        assert.ok(text.includes(small));
    });

    it('keeps a field of more than 100 lines folded where a simple signature hashes it, up to 1,000 such lines', () => {
        const refs = (lines: number) => `References: <a@x.example>${'\r\n <b@x.example>'.repeat(lines - 1)}\r\n`;
        const unfolded = (lines: number) => `References: <a@x.example>${' <b@x.example>'.repeat(lines - 1)}\r\n`;
        const simple = (d: string) => sig(d, '', 'from:references').replace('c=relaxed/', 'c=simple/');
        const relaxed = (d: string) => sig(d, '', 'from:references');
        const from = 'From: a@x.example\r\n';
        // simple header canonicalization hashes the folds: the field stays as it is, with a relaxed signature too
        for (const sigs of [simple('x.example'), simple('x.example') + relaxed('y.example')]) {
            const p = plan(refs(1000) + sigs + from);
            assert.ok(p.header.toString('latin1').startsWith(refs(1000)));
            assert.deepEqual(p.limits, []);
        }
        // relaxed alone: unfolded
        assert.ok(
            plan(refs(1000) + relaxed('y.example') + from)
                .header.toString('latin1')
                .startsWith(unfolded(1000)),
        );
        // 1,001 lines: the simple signature is not verified; the relaxed one is, over the field unfolded
        const over = plan(refs(1001) + simple('x.example') + relaxed('y.example') + from);
        assert.deepEqual(over.limits, ['header_folds']);
        assert.deepEqual(keptDomains(over.header), ['y.example']);
        assert.ok(over.header.toString('latin1').startsWith(unfolded(1001)));
        // the lines count together: two fields of 600 lines are too many for one signature over both
        const two = plan(
            refs(600) +
                refs(600) +
                simple('x.example').replace('h=from:references', 'h=from:references:references') +
                from,
        );
        assert.deepEqual(two.limits, ['header_folds']);
        assert.equal(two.dkimEvaluated, 0);
        // the newest ARC-Message-Signature too: over the limit, the chain is not verified
        const subject = (lines: number) => `Subject: a${'\r\n b'.repeat(lines - 1)}\r\n`;
        const arc = (lines: number) => plan(arcFlood(1, { canonicalization: 'simple/simple' }) + subject(lines) + from);
        assert.equal(arc(1000).arcVerified, true);
        assert.ok(arc(1000).header.toString('latin1').includes(subject(1000)));
        assert.equal(arc(1001).arcVerified, false);
        assert.deepEqual(arc(1001).limits, ['header_folds']);
    });

    it('an ARC chain over maxArcSets is left out and reported', () => {
        const p = plan(arcFlood(11) + 'From: a@x.example\r\n');
        assert.equal(p.arcSets, 11);
        assert.equal(p.arcVerified, false);
        assert.deepEqual(p.limits, ['arc_sets']);
        assert.ok(!/^ARC-/im.test(p.header.toString('latin1')));
        const within = plan(arcFlood(10) + 'From: a@x.example\r\n');
        assert.equal(within.arcVerified, true);
        assert.equal((within.header.toString('latin1').match(/^ARC-/gm) ?? []).length, 30);
        // thousands of ARC fields with no readable instance are not fed either
        const junk = 'ARC-Seal: garbage\r\n'.repeat(5000);
        assert.equal(plan(junk).arcVerified, false);
    });
});

describe('the verification stream', () => {
    async function collect(stream: Readable): Promise<Buffer> {
        const parts: Buffer[] = [];
        for await (const c of stream) parts.push(c as Buffer);
        return Buffer.concat(parts);
    }

    /** Feeds a message one byte at a time at first, as a trickling client's spool may. */
    function source(message: string): Readable {
        const buf = Buffer.from(message, 'latin1');
        const pieces = [...Array.from({ length: 40 }, (_, i) => buf.subarray(i, i + 1)), buf.subarray(40)];
        return Readable.from(pieces.filter((p) => p.length > 0));
    }

    it('gives mailauth the planned header, the empty line and the body unchanged', async () => {
        const body = canonicalBody(200_000).toString('latin1');
        const signature = sig('b.example');
        const message = `Received: x\r\nFrom: a@b.example\r\nSubject: s\r\n${signature}\r\n${body}`;
        const v = await openVerification(source(message), (h) => plan(h.toString('latin1')));
        const out = await collect(v.stream);
        assert.equal(out.toString('latin1'), `From: a@b.example\r\n${signature}\r\n${body}`);
        assert.equal(v.stats.bodyBytes, body.length);
        assert.equal(v.stats.cut, null);
    });

    it('without a signature to verify, the body is not read at all', async () => {
        let read = 0;
        async function* message(): AsyncGenerator<Buffer> {
            yield Buffer.from('From: a@b.example\r\nSubject: s\r\n\r\nfirst\r\n');
            for (let i = 0; i < 100; i++) {
                read++;
                yield Buffer.alloc(64 * 1024, 'b');
                await new Promise((resolve) => setImmediate(resolve));
            }
        }
        const v = await openVerification(Readable.from(message()), (h) => plan(h.toString('latin1')));
        assert.equal((await collect(v.stream)).toString('latin1'), 'From: a@b.example\r\n\r\n');
        assert.equal(v.stats.bodyBytes, 0);
        assert.ok(read <= 1, String(read));
    });

    it('finds the end of the header section however the message is cut into chunks (property-based)', async () => {
        const seed = Number(process.env.FC_SEED ?? Date.now());
        const bytes = fc.array(fc.constantFrom('\r', '\n', '\r\n', '\r\n\r\n', 'a', ': ', 'From: x'), {
            maxLength: 20,
        });
        await fc.assert(
            fc.asyncProperty(bytes, fc.array(fc.nat({ max: 40 }), { maxLength: 8 }), async (pieces, cuts) => {
                const whole = Buffer.from(pieces.join(''), 'latin1');
                const at = whole.indexOf('\r\n\r\n');
                const expected =
                    whole[0] === 0x0d && whole[1] === 0x0a
                        ? ''
                        : (at < 0 ? whole : whole.subarray(0, at + 2)).toString('latin1');
                const offsets = [...new Set([0, ...cuts.map((c) => Math.min(c, whole.length)), whole.length])].sort(
                    (a, b) => a - b,
                );
                const chunks = offsets.slice(1).map((end, i) => whole.subarray(offsets[i], end));
                let header = '';
                const v = await openVerification(Readable.from(chunks), (h) => {
                    header = h.toString('latin1');
                    return { bodyHashes: 1, relaxedBodyHashes: 0, header: h };
                });
                assert.equal(header, expected);
                // the planned header is the whole header section here: the copy is the message itself
                assert.equal((await collect(v.stream)).toString('latin1'), whole.toString('latin1'));
            }),
            { seed, numRuns: 500, verbose: true },
        );
    });

    it('a message without body, and one without header fields', async () => {
        const noBody = await openVerification(source(`From: a@b.example\r\n${sig('b.example')}`), (h) =>
            plan(h.toString('latin1')),
        );
        assert.equal((await collect(noBody.stream)).toString('latin1'), `From: a@b.example\r\n${sig('b.example')}`);
        const noHeader = await openVerification(source('\r\nFrom: not a header\r\n'), (h) =>
            plan(h.toString('latin1')),
        );
        assert.equal((await collect(noHeader.stream)).toString('latin1'), '\r\n');
    });

    it('cuts the verified body before a line longer than 1 MiB', async () => {
        const header = `From: a@b.example\r\n${sig('b.example')}`;
        const message = `${header}\r\nshort line\r\n${'x'.repeat(2 * 1024 * 1024)}\r\nafter\r\n`;
        const v = await openVerification(Readable.from([Buffer.from(message)]), (h) => plan(h.toString('latin1')));
        const out = await collect(v.stream);
        assert.equal(out.toString('latin1'), `${header}\r\nshort line\r\n`);
        assert.equal(v.stats.cut, 'body_line_length');
    });

    it('cuts the verified body once relaxed canonicalization would rewrite too many lines', async () => {
        assert.equal(rewrittenLines(Buffer.from('clean\r\ntrailing \r\na\tb\t\tc\r\ntwo  spaces\r\nok\r\n')), 3);
        const body = Buffer.alloc(8 * 1024 * 1024, 'a \r\n');
        const header = sig('a.example') + 'From: a@b.example\r\n';
        const v = await openVerification(Readable.from([Buffer.from(`${header}\r\n`), body]), (h) =>
            plan(h.toString('latin1')),
        );
        await collect(v.stream);
        assert.equal(v.stats.cut, 'body_rewrites');
        // one relaxed body hash: about 1,000,000 lines of 4 bytes were verified, not 2 million
        assert.ok(v.stats.bodyBytes < 4_100_000 && v.stats.bodyBytes > 3_900_000, String(v.stats.bodyBytes));
        // simple canonicalization has no such cost: nothing is cut
        const simple = await openVerification(
            Readable.from([Buffer.from(`${header.replace('c=relaxed/relaxed', 'c=simple/simple')}\r\n`), body]),
            (h) => plan(h.toString('latin1')),
        );
        await collect(simple.stream);
        assert.equal(simple.stats.cut, null);
    });

    it('destroying the copy destroys the message stream', async () => {
        let closed = false;
        async function* endless(): AsyncGenerator<Buffer> {
            try {
                yield Buffer.from('From: a@b.example\r\n\r\n');
                for (;;) {
                    yield Buffer.alloc(64 * 1024, 'b');
                    await new Promise((resolve) => setImmediate(resolve));
                }
            } finally {
                closed = true;
            }
        }
        const v = await openVerification(Readable.from(endless()), (h) => plan(h.toString('latin1')));
        v.stream.once('data', () => v.stream.destroy());
        await new Promise((resolve) => v.stream.once('close', resolve));
        await new Promise((resolve) => setImmediate(resolve));
        assert.equal(closed, true);
    });
});

describe('verifying the copy gives the results of verifying the message (conformance vectors)', () => {
    let dns: DnsTestServer;
    before(async () => {
        dns = await startDnsServer({});
    });
    after(async () => {
        await dns.close();
    });

    /** The message as mailauth gets it from the check: through the plan and the feed. */
    async function copyOf(message: Buffer): Promise<Buffer> {
        const v = await openVerification(Readable.from([message]), (h) =>
            planVerification(h, { limits: LIMITS, authorDomain: null, strict: false }),
        );
        const parts: Buffer[] = [];
        for await (const c of v.stream) parts.push(c as Buffer);
        return Buffer.concat(parts);
    }

    it('DKIM: all 83 messages, every signature the same result', async () => {
        const dir = path.join(FIXTURES, 'dkim');
        const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as {
            cases: { file: string; dns_records: string }[];
        };
        for (const c of manifest.cases) {
            const raw = JSON.parse(fs.readFileSync(path.join(dir, c.dns_records), 'utf8')) as Record<string, unknown>;
            const records = (raw.records ?? raw) as Record<string, { TXT?: (string | string[])[]; error?: string }>;
            const zone: Zone = {};
            for (const [name, r] of Object.entries(records)) {
                if (typeof r !== 'object' || r === null) continue;
                const e: ZoneEntry = {};
                if (r.TXT) e.TXT = r.TXT;
                if (r.error === 'NXDOMAIN') e.NXDOMAIN = true;
                if (r.error === 'SERVFAIL') e.SERVFAIL = true;
                if (r.error === 'TIMEOUT') e.TIMEOUT = true;
                zone[name] = e;
            }
            dns.setZone(zone);
            const resolver = testResolver(dns.address);
            try {
                const message = Buffer.from(
                    fs.readFileSync(path.join(dir, c.file), 'latin1').replace(/\r?\n/g, '\r\n'),
                    'latin1',
                );
                const verify = async (m: Buffer) =>
                    (
                        await dkimVerify(m, {
                            resolver: resolver.resolve,
                            minBitLength: 512,
                        } as unknown as Parameters<typeof dkimVerify>[1])
                    ).results.map((r) => `${r.signingDomain ?? ''} ${r.status.result} ${r.status.comment ?? ''}`);
                assert.deepEqual(await verify(await copyOf(message)), await verify(message), c.file);
            } finally {
                resolver.close();
            }
        }
    });

    it('ARC: all 175 ValiMail cases, the same chain result', async () => {
        const scenarios = JSON.parse(
            fs.readFileSync(path.join(FIXTURES, 'arc', 'arc-draft-validation-tests.json'), 'utf8'),
        ) as { tests: Record<string, { message: string }>; 'txt-records'?: Record<string, string> }[];
        let n = 0;
        for (const scenario of scenarios) {
            const zone: Zone = {};
            for (const [name, txt] of Object.entries(scenario['txt-records'] ?? {})) zone[name] = { TXT: [txt] };
            dns.setZone(zone);
            const resolver = testResolver(dns.address);
            try {
                for (const [name, t] of Object.entries(scenario.tests)) {
                    const message = Buffer.from(t.message.replace(/\r?\n/g, '\r\n'));
                    const verify = async (m: Buffer) => {
                        const r = await authenticate(m, {
                            ip: '192.0.2.1',
                            helo: 'client.test',
                            sender: 'sender@client.test',
                            mta: 'mx.test',
                            resolver: resolver.resolve,
                            disableBimi: true,
                            disableDmarc: true,
                            minBitLength: defaultAuthentication().minRsaBits,
                        } as unknown as Parameters<typeof authenticate>[1]);
                        return r.arc ? `${r.arc.status.result} ${String((r.arc as { i?: number | false }).i)}` : 'none';
                    };
                    assert.equal(await verify(await copyOf(message)), await verify(message), name);
                    n++;
                }
            } finally {
                resolver.close();
            }
        }
        assert.equal(n, 175);
    });

    it('a signature flood: the copy carries the chosen signatures, whose results are those of the full message', async () => {
        const body = canonicalBody(5000);
        const flood = signatureFlood({ count: 40, body, distinctLengths: false });
        dns.setZone({});
        const resolver = testResolver(dns.address);
        try {
            const message = Buffer.from(`${flood}From: a@b.example\r\n\r\n${body.toString('latin1')}`, 'latin1');
            const copy = await copyOf(message);
            const results = await dkimVerify(copy, { resolver: resolver.resolve } as unknown as Parameters<
                typeof dkimVerify
            >[1]);
            assert.equal(results.results.length, 5);
            assert.ok(
                results.results.every((r) => r.status.comment === 'no key'),
                JSON.stringify(results.results),
            );
        } finally {
            resolver.close();
        }
    });
});
