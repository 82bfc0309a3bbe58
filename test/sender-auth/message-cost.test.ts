// What one hostile message may cost the mailauth check, counted rather than timed: DKIM
// signature floods (each its own l= and d=/s=) verify at most the capped number of signatures
// and look up at most that many keys (queries counted at the loopback DNS server); a legitimate
// aligned signature under thousands of junk ones still passes; ARC chains over the limit fail
// without key lookups; the per-message DNS budget turns an SPF tree that asks too much into
// temperror, never pass, the same with a cold or a warm cache; header and body shapes that make
// mailauth quadratic (fold bombs, h= bombs, one enormous line, millions of lines to rewrite)
// are decided well within the check's timeout; and a timed-out check stops reading the message
// and asks nothing more of the DNS.
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { createMailauthCheck } from '../../src/checks/mailauth.ts';
import type { AuthenticationConfig } from '../../src/config/types.ts';
import { estimateAnswerBytes } from '../../src/dns/answers.ts';
import type { Resolver } from '../../src/dns/resolver.ts';
import { MESSAGE_ANSWER_BYTES } from '../../src/dns/scoped.ts';
import { DMARC_RESERVE } from '../../src/sender-auth/mailauth.ts';
import { createVerifyThread } from '../../src/sender-auth/verify-thread.ts';
import type { Check, CheckContext, CheckResult } from '../../src/types.ts';
import { acceptAll, runStage } from '../../src/pipeline.ts';
import { startDnsServer, type DnsTestServer, type Zone } from '../helpers/dns-server.ts';
import {
    arcFlood,
    canonicalBody,
    foldedField,
    fromFlood,
    plainFields,
    signatureFlood,
} from '../helpers/hostile-mail.ts';
import { basicMessage, CLIENT, context, rsaKey, seal, settings, sign, testResolver, type TestKey } from './helpers.ts';

let dns: DnsTestServer;
let resolver: Resolver;
/** The A answer of each name under bytes.example. */
const bigAnswer = Array.from({ length: 1500 }, (_, k) => `198.51.${k >> 8}.${k & 255}`);
let bankKey: TestKey;
let forwarderKey: TestKey;
let listKey: TestKey;

function zone(): Zone {
    const zone: Zone = {
        'bank.example': { TXT: [`v=spf1 ip4:${CLIENT} -all`] },
        'sel._domainkey.bank.example': { TXT: [bankKey.record] },
        '_dmarc.bank.example': { TXT: ['v=DMARC1; p=reject'] },
        'arc._domainkey.forwarder.example': { TXT: [forwarderKey.record] },
        'arc._domainkey.list.example': { TXT: [listKey.record] },
        // 5 mx terms of 10 hosts each: 106 queries (mailauth asks A and AAAA) before the ip4 term matches
        'budget.example': {
            TXT: [`v=spf1 ${[0, 1, 2, 3, 4].map((i) => `mx:m${i}.budget.example`).join(' ')} ip4:${CLIENT} -all`],
        },
    };
    for (let i = 0; i < 5; i++) {
        zone[`m${i}.budget.example`] = {
            MX: Array.from({ length: 10 }, (_, k) => ({ exchange: `h${k}.m${i}.budget.example`, priority: k })),
        };
        for (let k = 0; k < 10; k++)
            zone[`h${k}.m${i}.budget.example`] = { A: ['198.51.100.1'], AAAA: ['2001:db8::1'] };
    }
    // mx terms of 10 hosts that answer 1,500 addresses each (about 76 KB estimated): the 20 hosts
    // of two pass the 1 MiB byte budget of a message before the ip4 term matches, one does not
    for (let i = 0; i < 2; i++) {
        zone[`m${i}.bytes.example`] = {
            MX: Array.from({ length: 10 }, (_, k) => ({ exchange: `h${k}.m${i}.bytes.example`, priority: k })),
        };
        for (let k = 0; k < 10; k++) zone[`h${k}.m${i}.bytes.example`] = { A: bigAnswer };
    }
    zone['bytes.example'] = { TXT: [`v=spf1 mx:m0.bytes.example mx:m1.bytes.example ip4:${CLIENT} -all`] };
    zone['fits.bytes.example'] = { TXT: [`v=spf1 mx:m0.bytes.example ip4:${CLIENT} -all`] };
    // SPF records whose terms mailauth's syntax tests would backtrack over (see the last describe)
    zone['macros.redos.example'] = { TXT: [`v=spf1 redirect=x.${'%{l}'.repeat(1000)}!`] };
    zone['long.redos.example'] = { TXT: [`v=spf1 ${'ip4:198.51.100.1 '.repeat(300)}-all`] };
    zone['include.redos.example'] = { TXT: [`v=spf1 include:${'%{l}.'.repeat(60)}x.example ip4:${CLIENT} -all`] };
    return zone;
}

function check(over: Partial<AuthenticationConfig> = {}, r: Resolver = resolver): Check {
    return createMailauthCheck({ hostname: 'mx.test', resolver: r, localDomains: [], settings: settings(over) });
}

/** Runs the check through the pipeline (with its timeout), counting the DNS queries it caused. */
async function decide(
    c: Check,
    ctx: Omit<CheckContext, 'stage'>,
): Promise<{ facts: CheckResult['facts']; error: string | null; headers: string; queries: string[] }> {
    const before = dns.queries.length;
    const r = await runStage('data', [c], ctx, acceptAll);
    return {
        facts: r.facts,
        error: r.checks[0]!.error,
        headers: r.headers.map((h) => `${h.name}: ${h.value}`).join('\n'),
        queries: dns.queries.slice(before).map((q) => `${q.type} ${q.name}`),
    };
}

const keyLookups = (queries: readonly string[]): string[] => queries.filter((q) => q.includes('._domainkey.'));

function ctx(message: string | Buffer, o: Parameters<typeof context>[1] = {}): Omit<CheckContext, 'stage'> {
    const buf = typeof message === 'string' ? Buffer.from(message, 'latin1') : message;
    const base = context('', { mailFrom: 'bounce@flood.example', ...o });
    // the spool hands the message out in pieces of 64 KiB
    const pieces: Buffer[] = [];
    for (let i = 0; i < buf.length; i += 65536) pieces.push(buf.subarray(i, i + 65536));
    return { ...base, message: { stream: () => Readable.from(pieces), size: buf.length } };
}

before(async () => {
    bankKey = rsaKey();
    forwarderKey = rsaKey();
    listKey = rsaKey();
    dns = await startDnsServer({});
    dns.setZone(zone());
    // no cache: every lookup reaches the DNS server, where it is counted
    resolver = testResolver(dns.address, false);
});

after(async () => {
    resolver.close();
    await dns.close();
});

describe('DKIM signature floods', () => {
    it('3,000 signatures, each its own l= and d=/s=: 3 verified (3 body hashes), 3 key lookups', async () => {
        const body = canonicalBody(50_000);
        const message =
            signatureFlood({ count: 3000, body }) + plainFields('a@bank.example') + '\r\n' + body.toString();
        const r = await decide(check(), ctx(message));
        assert.equal(r.error, null);
        assert.equal(r.facts['dkim.count'], 3);
        assert.equal(r.facts['dkim.skipped'], 2997);
        assert.deepEqual(r.facts['auth.limits'], ['dkim_body_hashes']);
        assert.deepEqual(keyLookups(r.queries), [
            'TXT s0._domainkey.d0.flood.example',
            'TXT s1._domainkey.d1.flood.example',
            'TXT s2._domainkey.d2.flood.example',
        ]);
        assert.equal((r.headers.match(/dkim=/g) ?? []).length, 3);
    });

    it('3,000 signatures with one body hash: 5 verified, 5 key lookups; the cap is configurable', async () => {
        const body = canonicalBody(50_000);
        const message =
            signatureFlood({ count: 3000, body, distinctLengths: false }) +
            plainFields('a@bank.example') +
            '\r\n' +
            body.toString();
        const r = await decide(check(), ctx(message));
        assert.equal(r.facts['dkim.count'], 5);
        assert.equal(r.facts['dkim.skipped'], 2995);
        assert.deepEqual(r.facts['auth.limits'], ['dkim_signatures']);
        assert.equal(keyLookups(r.queries).length, 5);
        const two = await decide(check({ dkim: { ...settings().dkim, maxSignatures: 2 } }), ctx(message));
        assert.equal(keyLookups(two.queries).length, 2);
    });

    it('a signature aligned with From passes under 2,000 junk signatures placed above it', async () => {
        const body = canonicalBody(2000);
        const signed = await sign(
            basicMessage('alerts@bank.example').replace(/\r\n\r\n[\s\S]*$/, `\r\n\r\n${body.toString()}`),
            'bank.example',
            'sel',
            bankKey,
        );
        const junk = signatureFlood({ count: 2000, body, distinctLengths: false, domain: (i) => `junk${i}.example` });
        const r = await decide(check(), ctx(junk + signed, { mailFrom: 'x@flood.example' }));
        assert.equal(r.facts['dkim.result'], 'pass', r.headers);
        assert.equal(r.facts['dkim.aligned'], true);
        assert.equal(r.facts['dmarc.result'], 'pass');
        assert.ok(keyLookups(r.queries).length <= 5);
    });
});

describe('ARC chains', () => {
    /** The bank signs; a forwarder seals (i=1); a mailing list seals again (i=2). */
    async function twoSets(): Promise<string> {
        const original = await sign(basicMessage('alerts@bank.example'), 'bank.example', 'sel', bankKey);
        const once = await seal(original, {
            domain: 'forwarder.example',
            selector: 'arc',
            key: forwarderKey,
            authResults: 'forwarder.example; dkim=pass header.d=bank.example',
            cv: 'none',
        });
        return seal(once, {
            domain: 'list.example',
            selector: 'arc',
            key: listKey,
            authResults: 'list.example; arc=pass; dkim=pass header.d=bank.example',
            cv: 'pass',
        });
    }

    it('a chain within arc.maxSets is verified; a longer one fails without a single ARC key lookup', async () => {
        const message = await twoSets();
        const ok = await decide(check(), ctx(message));
        assert.equal(ok.facts['arc.result'], 'pass');
        assert.ok(ok.queries.includes('TXT arc._domainkey.list.example'));
        const capped = await decide(check({ arc: { trustedSealers: [], maxSets: 1 } }), ctx(message));
        assert.equal(capped.facts['arc.result'], 'fail');
        assert.deepEqual(capped.facts['auth.limits'], ['arc_sets']);
        assert.match(capped.headers, /arc=fail \(2 ARC sets: over the per-message limits\)/);
        assert.deepEqual(
            capped.queries.filter((q) => q.includes('arc._domainkey')),
            [],
        );
    });

    it('5,000 ARC sets fail at once, no key looked up', async () => {
        const message = arcFlood(5000) + plainFields('a@bank.example') + '\r\nHello.\r\n';
        const r = await decide(check(), ctx(message));
        assert.equal(r.error, null);
        assert.equal(r.facts['arc.result'], 'fail');
        assert.deepEqual(keyLookups(r.queries), []);
    });
});

describe('the per-message DNS budget', () => {
    it('an SPF record that needs more queries than the budget: temperror, never pass; at most the budget asked', async () => {
        const message = plainFields('a@budget.example') + '\r\nHello.\r\n';
        const r = await decide(check(), ctx(message, { mailFrom: 'a@budget.example' }));
        assert.equal(r.facts['spf.result'], 'temperror');
        assert.ok((r.facts['auth.limits'] as string[]).includes('dns_queries'));
        // SPF stopped where only DMARC's part was left; DMARC asked for _dmarc.budget.example and _dmarc.example
        assert.equal(r.facts['auth.dns_queries'], 100 - DMARC_RESERVE.queries + 2);
        assert.ok(r.queries.length <= 100, String(r.queries.length));
        assert.match(
            r.headers,
            /spf=temperror .*DNS query budget of 100 per message spent, the last 12 kept for DMARC:/,
        );
        const roomy = await decide(check({ maxDnsQueries: 200 }), ctx(message, { mailFrom: 'a@budget.example' }));
        assert.equal(roomy.facts['spf.result'], 'pass');
        assert.deepEqual(roomy.facts['auth.limits'], []);
    });

    it('answers that come to more than the byte budget: temperror, never pass; the answer past it refused, nothing asked after it', async () => {
        const message = plainFields('a@bytes.example') + '\r\nHello.\r\n';
        const cached = testResolver(dns.address, true);
        try {
            // the query budget is not what stops it
            const c = check({ maxDnsQueries: 200 }, cached);
            const cold = await decide(c, ctx(message, { mailFrom: 'a@bytes.example' }));
            const warm = await decide(c, ctx(message, { mailFrom: 'a@bytes.example' }));
            for (const r of [cold, warm]) {
                assert.equal(r.error, null);
                assert.equal(r.facts['spf.result'], 'temperror');
                assert.deepEqual(r.facts['auth.limits'], ['dns_bytes']);
                assert.match(
                    r.headers,
                    /spf=temperror .*DNS answer budget of 1048576 bytes per message spent, the last 16384 kept for DMARC: A h\d\.m1\.bytes\.example/,
                );
            }
            assert.equal(warm.facts['auth.dns_queries'], cold.facts['auth.dns_queries']);
            // the SPF record's, the MX answer's and as many hosts' as fit within 1 MiB (less DMARC's
            // part) were given; the next host was asked and its answer refused; none after it was
            const given =
                estimateAnswerBytes([[(zone()['bytes.example'] as { TXT: string[] }).TXT[0]!]]) +
                2 * estimateAnswerBytes(await cached.resolve('m0.bytes.example', 'MX'));
            const fit = Math.floor(
                (MESSAGE_ANSWER_BYTES - DMARC_RESERVE.bytes - given) / estimateAnswerBytes(bigAnswer),
            );
            const hosts = [...new Set(cold.queries.filter((q) => q.startsWith('A h')))];
            assert.equal(hosts.length, fit + 1, hosts.join());
            assert.equal(hosts.at(-1), `A h${fit - 10}.m1.bytes.example`);
            assert.deepEqual(warm.queries, [], 'all from the cache');

            // the same answers, fewer of them: within the budget, and the ip4 term passes
            const fits = await decide(c, ctx(message, { mailFrom: 'a@fits.bytes.example' }));
            assert.equal(fits.facts['spf.result'], 'pass');
            assert.deepEqual(fits.facts['auth.limits'], []);
        } finally {
            cached.close();
        }
    });

    it("SPF cannot spend DMARC's part of the budgets: a spoofed p=reject author domain is rejected while SPF is temperror", async () => {
        const message = plainFields('ceo@bank.example') + '\r\nWire the money.\r\n';
        const thread = createVerifyThread();
        try {
            for (const t of [null, thread]) {
                const c = createMailauthCheck({
                    hostname: 'mx.test',
                    resolver,
                    localDomains: [],
                    settings: settings(),
                    thread: t,
                });
                // envelope domains whose SPF records ask for more queries, and more bytes, than the budgets
                for (const [mailFrom, limit] of [
                    ['a@budget.example', 'dns_queries'],
                    ['a@bytes.example', 'dns_bytes'],
                ] as const) {
                    const r = await decide(c, ctx(message, { mailFrom }));
                    const label = `${mailFrom}${t ? ' in the thread' : ''}`;
                    assert.equal(r.error, null, label);
                    assert.equal(r.facts['spf.result'], 'temperror', label);
                    assert.deepEqual(r.facts['auth.limits'], [limit], label);
                    assert.equal(r.facts['dmarc.result'], 'fail', label);
                    assert.equal(r.facts['dmarc.disposition'], 'reject', label);
                    assert.equal(r.facts['auth.temperror'], false, label);
                    assert.match(r.headers, /dmarc=fail \(p=REJECT/, label);
                }
            }
        } finally {
            await thread.close();
        }
    });

    it('answers from the cache count too: a warm cache gives the same temperror', async () => {
        const cached = testResolver(dns.address, true);
        try {
            const c = check({}, cached);
            const message = plainFields('a@budget.example') + '\r\nHello.\r\n';
            const cold = await decide(c, ctx(message, { mailFrom: 'a@budget.example' }));
            const warm = await decide(c, ctx(message, { mailFrom: 'a@budget.example' }));
            assert.equal(cold.facts['spf.result'], 'temperror');
            assert.equal(warm.facts['spf.result'], 'temperror');
            assert.equal(warm.facts['auth.dns_queries'], 100 - DMARC_RESERVE.queries + 2);
            assert.ok(warm.queries.length < cold.queries.length);
        } finally {
            cached.close();
        }
    });
});

describe('shapes that make the verifier quadratic are decided well within the timeout', () => {
    const quick = { timeoutMs: 20_000 };

    it('a From field folded into 200,000 lines', async () => {
        const body = canonicalBody(1000);
        const message =
            foldedField('From', 200_000, 'a@bank.example') +
            signatureFlood({ count: 2, body, signed: 'from:from', distinctLengths: false }) +
            '\r\n' +
            body.toString();
        const r = await decide(check(quick), ctx(message));
        assert.equal(r.error, null);
        assert.equal(r.facts['dkim.count'], 2);
    });

    it('a field folded into 250,000 lines under a simple signature: the signature is not verified (header_folds)', async () => {
        const body = canonicalBody(1000);
        const message =
            foldedField('References', 250_000, '<a@bank.example>') +
            signatureFlood({
                count: 1,
                body,
                signed: 'from:references',
                distinctLengths: false,
                canonicalization: 'simple/relaxed',
            }) +
            plainFields('a@bank.example') +
            '\r\n' +
            body.toString();
        const r = await decide(check(quick), ctx(message));
        assert.equal(r.error, null);
        assert.equal(r.facts['dkim.result'], 'policy');
        assert.equal(r.facts['dkim.skipped'], 1);
        assert.deepEqual(r.facts['auth.limits'], ['header_folds']);
    });

    it('50,000 From fields', async () => {
        const r = await decide(check(quick), ctx(fromFlood(50_000) + '\r\nHello.\r\n'));
        assert.equal(r.error, null);
        assert.equal(r.facts['header.from.count'], 50_000);
        assert.equal(r.facts['dmarc.result'], 'permerror');
        assert.equal(r.facts['dmarc.disposition'], 'reject');
    });

    it('a signature whose h= names 60,000 fields, over 60,000 fields', async () => {
        const body = canonicalBody(1000);
        const message =
            'X: y\r\n'.repeat(60_000) +
            signatureFlood({ count: 1, body, signed: `from:${'a:'.repeat(60_000)}`, distinctLengths: false }) +
            plainFields('a@bank.example') +
            '\r\n' +
            body.toString();
        const r = await decide(check(quick), ctx(message));
        assert.equal(r.error, null);
        assert.equal(r.facts['dkim.result'], 'policy');
        assert.equal(r.facts['dkim.skipped'], 1);
        assert.deepEqual(r.facts['auth.limits'], ['dkim_signed_fields']);
        assert.match(r.headers, /dkim=policy \(1 signatures not verified: over the per-message limits\)/);
    });

    it('a body that is one 20 MB line', async () => {
        const body = canonicalBody(1000);
        const message = Buffer.concat([
            Buffer.from(
                signatureFlood({ count: 1, body, distinctLengths: false }) + plainFields('a@bank.example') + '\r\n',
            ),
            Buffer.alloc(20 * 1024 * 1024, 'a'),
        ]);
        const r = await decide(check(quick), ctx(message));
        assert.equal(r.error, null);
        assert.deepEqual(r.facts['auth.limits'], ['body_line_length']);
    });

    it('16 MB of short lines that relaxed canonicalization must each rewrite, under 3 signatures', async () => {
        const message = Buffer.concat([
            Buffer.from(
                signatureFlood({ count: 3, body: canonicalBody(1000) }) + plainFields('a@bank.example') + '\r\n',
            ),
            Buffer.alloc(16 * 1024 * 1024, 'a \t\r\n'),
        ]);
        const r = await decide(check(quick), ctx(message));
        assert.equal(r.error, null);
        assert.deepEqual(r.facts['auth.limits'], ['body_rewrites']);
    });
});

describe('values mailauth tests with quadratic regular expressions are bounded before it sees them', () => {
    // a regular expression cannot be stopped by the check's timeout: each of these blocked the
    // process for 4 to 26 s before the bounds; the check must end well inside a 2 s timeout
    const tight = { timeoutMs: 2000 };
    /**
     * Decides and holds the time to 1 s. Work that never pauses can end before the check's timer
     * gets its turn, so the time is measured rather than left to the timeout.
     */
    const quickly = async (c: Check, context: Omit<CheckContext, 'stage'>): ReturnType<typeof decide> => {
        const started = performance.now();
        const r = await decide(c, context);
        const ms = performance.now() - started;
        assert.ok(ms < 1000, `decided in ${ms.toFixed(0)} ms`);
        return r;
    };
    const local = 'a'.repeat(64);

    it('an SPF redirect of 1,000 %{l} macros (64 KB once expanded): permerror', async () => {
        const r = await quickly(
            check(tight),
            ctx(basicMessage('a@bank.example'), { mailFrom: `${local}@macros.redos.example` }),
        );
        assert.equal(r.error, null);
        assert.equal(r.facts['spf.result'], 'permerror');
    });

    it('an SPF record longer than 4,096 characters: permerror, said so', async () => {
        const r = await quickly(
            check(tight),
            ctx(basicMessage('a@bank.example'), { mailFrom: 'u@long.redos.example' }),
        );
        assert.equal(r.error, null);
        assert.equal(r.facts['spf.result'], 'permerror');
        assert.match(r.headers, /5\d{3} characters long, more than 4096/);
    });

    it('macro expansions cut to 253 characters still evaluate the rest of the record', async () => {
        // the include target is cut to its last labels (RFC 7208 section 7.3), which do not exist
        // here; the include then fails as any include of a name without SPF does
        const r = await quickly(
            check(tight),
            ctx(basicMessage('a@bank.example'), { mailFrom: `${local}@include.redos.example` }),
        );
        assert.equal(r.error, null);
        assert.equal(r.facts['spf.result'], 'permerror');
        assert.ok(
            r.queries.every((q) => q.length < 300),
            r.queries.join('\n'),
        );
    });

    it('a DKIM-Signature with 100,000 spaces inside a tag: not verified (header_runs), decided at once', async () => {
        const body = canonicalBody(10);
        const field = signatureFlood({ count: 1, body, distinctLengths: false }).replace(
            '; h=',
            `; q${' '.repeat(100_000)}q=1; h=`,
        );
        const r = await quickly(check(tight), ctx(field + plainFields('a@bank.example') + '\r\n' + body.toString()));
        assert.equal(r.error, null);
        assert.deepEqual(r.facts['auth.limits'], ['header_runs']);
        assert.equal(r.facts['dkim.result'], 'policy');
    });

    it('a DKIM-Signature whose d= holds 100,000 dots: not verified, decided at once', async () => {
        const body = canonicalBody(10);
        const field = signatureFlood({
            count: 1,
            body,
            distinctLengths: false,
            domain: () => `a${'.'.repeat(100_000)}a.example`,
        });
        const r = await quickly(check(tight), ctx(field + plainFields('a@bank.example') + '\r\n' + body.toString()));
        assert.equal(r.error, null);
        assert.deepEqual(r.facts['auth.limits'], ['header_runs']);
    });

    it('an ARC set with a run of 100,000 spaces: the chain is not verified, decided at once', async () => {
        const message = basicMessage('a@bank.example', [
            ['ARC-Seal', `i=1; a=rsa-sha256; cv=none; d=forwarder.example; s=arc;${' '.repeat(100_000)}b=abc`],
        ]);
        const r = await quickly(check(tight), ctx(message));
        assert.equal(r.error, null);
        assert.deepEqual(r.facts['auth.limits'], ['header_runs']);
    });

    it('a From whose domain holds 90,000 dots: decided at once, DMARC as for any invalid domain', async () => {
        const r = await quickly(check(tight), ctx(basicMessage(`x@a${'.'.repeat(90_000)}a.example`)));
        assert.equal(r.error, null);
        const short = await quickly(check(tight), ctx(basicMessage(`x@a${'.'.repeat(70)}a.example`)));
        assert.equal(r.facts['dmarc.result'], short.facts['dmarc.result']);
    });

    /** `n` distinct CJK characters: punycode's encoder is quadratic in those. */
    const cjk = (n: number, from = 0x4e00): string =>
        Array.from({ length: n }, (_, i) => String.fromCodePoint(from + i)).join('');

    it('a DKIM-Signature whose d= is one label of 20,000 distinct CJK characters: decided at once', async () => {
        const body = canonicalBody(10);
        const field = signatureFlood({ count: 1, body, distinctLengths: false, domain: () => cjk(20_000) });
        const message = Buffer.from(field + plainFields('a@bank.example') + '\r\n' + body.toString(), 'utf8');
        const r = await quickly(check(tight), ctx(message));
        assert.equal(r.error, null);
        assert.notEqual(r.facts['dkim.result'], 'pass');
    });

    it('a From whose domain is one label of 30,000 distinct CJK characters: decided at once', async () => {
        // about 2 s of punycode before the bound
        const r = await quickly(check(tight), ctx(Buffer.from(basicMessage(`x@${cjk(30_000)}`), 'utf8')));
        assert.equal(r.error, null);
    });

    it('ten From fields of nested groups kept by a junk signature: two parsed, read as unreadable, decided at once', async () => {
        const body = canonicalBody(10);
        const nested = `From: ${'a:'.repeat(49_000)}x@bank.example\r\n`;
        const message =
            signatureFlood({ count: 1, body, signed: 'from:'.repeat(10) + 'to', distinctLengths: false }) +
            nested.repeat(10) +
            'To: user@mx.test\r\n\r\n' +
            body.toString();
        // 1.5 to 3.4 s of parsing before the bound
        const r = await quickly(check(tight), ctx(message));
        assert.equal(r.error, null);
        assert.equal(r.facts['dmarc.disposition'], 'reject');
        // refused whatever rejectMultipleFrom says: the reader may be shown one author
        const lenient = { ...tight, dmarc: { ...settings().dmarc, rejectMultipleFrom: false } };
        const one = await quickly(check(lenient), ctx(`From: ${'a:'.repeat(20)}x@bank.example\r\n\r\nHi\r\n`));
        assert.equal(one.facts['dmarc.disposition'], 'reject');
    });

    it('colons in a quoted display name or a comment are no nest of groups: read as usual', async () => {
        const colons = Array.from({ length: 18 }, (_, i) => i).join(':');
        for (const from of [`"Alert ${colons}" <a@bank.example>`, `a@bank.example (${colons})`]) {
            const r = await quickly(check(tight), ctx(basicMessage(from)));
            assert.equal(r.facts['dmarc.result'], 'fail', from);
        }
        const none = await quickly(check(tight), ctx(basicMessage(`"Alert ${colons}" <a@nodmarc.example>`)));
        assert.equal(none.facts['dmarc.disposition'], 'none');
    });

    it('a signature whose d= cannot be a DNS name (a 64-character label) has no key: a spoof is still refused', async () => {
        const body = canonicalBody(10);
        const d = `${'x'.repeat(64)}.bank.example`;
        const field = signatureFlood({ count: 1, body, distinctLengths: false, domain: () => d, signed: 'from' });
        const r = await quickly(check(tight), ctx(field + plainFields('a@bank.example') + '\r\n' + body.toString()));
        // no temporary error the spoofer could turn every rejection into a retry with
        assert.notEqual(r.facts['dkim.result'], 'temperror');
        assert.notEqual(r.facts['dkim.result'], 'pass');
        assert.equal(r.facts['dmarc.disposition'], 'reject');
    });

    it('a From of 30,000 labels in rfc7489 mode: decided at once', async () => {
        const labels = Array.from({ length: 30_000 }, () => 'a').join('.');
        const r = await quickly(
            check({ ...tight, dmarc: { ...settings().dmarc, mode: 'rfc7489' } }),
            ctx(basicMessage(`x@${labels}.example`)),
        );
        assert.equal(r.error, null);
    });
});

describe('a check that times out stops its work', () => {
    it('the message stops being read and no DNS query starts after the timeout', async () => {
        let read = 0;
        async function* endless(): AsyncGenerator<Buffer> {
            yield Buffer.from(
                signatureFlood({ count: 3, body: canonicalBody(100) }) + plainFields('a@bank.example') + '\r\n',
            );
            for (;;) {
                read++;
                yield Buffer.from('Lorem ipsum dolor sit amet.\r\n'.repeat(2000));
                await sleep(1);
            }
        }
        const base = ctx('');
        const r = await decide(check({ timeoutMs: 300 }), {
            ...base,
            message: { stream: () => Readable.from(endless()), size: Infinity },
        });
        assert.equal(r.error, 'timeout');
        await sleep(50);
        const atVerdict = read;
        const queries = dns.queries.length;
        await sleep(300);
        assert.equal(read, atVerdict, 'the message was still being read after the timeout');
        assert.equal(dns.queries.length, queries, 'DNS queries after the timeout');
    });
});
