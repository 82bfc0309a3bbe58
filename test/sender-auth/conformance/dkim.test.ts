// DKIM conformance: the 83 messages of test/fixtures/conformance/dkim (RFC 8463 appendix A,
// dkimpy, Mail::DKIM) verified by mailauth over our resolver and a loopback DNS server serving
// each source's key records (NXDOMAIN, SERVFAIL and timeouts included). The overall result is
// compared with the one the source asserts, in Mail::DKIM's words: pass (a signature verified),
// fail (a signature did not verify), invalid (no signature could be evaluated: mailauth's
// neutral, policy, permerror or temperror). Cases the source skips are run too.
//
// Two profiles:
//   - `dkim`: the product defaults (RSA keys under 1024 bits and rsa-sha1 refused, RFC 8301);
//     a case whose signatures are all rsa-sha1 or use shorter keys is expected `invalid`;
//   - `dkim-legacy`: 512-bit keys and rsa-sha1 accepted, against the sources' own expectations,
//     to test the verification itself on these 2006-2023 vectors.
// (`authentication.strict: true` is not run: mailauth's strict mode refuses rsa-sha1 and the
// pre-RFC 6376 tag sets most of these vectors use, which says nothing about verification.)
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, it } from 'node:test';
import { dkimVerify } from 'mailauth';
import { defaultAuthentication } from '../../../src/config/defaults.ts';
import { startDnsServer, type DnsTestServer, type Zone, type ZoneEntry } from '../../helpers/dns-server.ts';
import { testResolver } from '../helpers.ts';
import { FIXTURES, settle, type Outcome } from './harness.ts';

interface Signature {
    a: string;
    key_bits?: number | null;
}
interface Case {
    file: string;
    dns_records: string;
    signatures: Signature[];
    upstream: { expected_overall_result: 'pass' | 'fail' | 'invalid' };
}

type Category = 'pass' | 'fail' | 'invalid' | 'none';

const DIR = path.join(FIXTURES, 'dkim');

/** One source's DNS data as a zone: `{name: {TXT: [...]} | {error}}`, with or without a `records` wrapper. */
function zoneOf(file: string): Zone {
    const raw = JSON.parse(fs.readFileSync(path.join(DIR, file), 'utf8')) as Record<string, unknown>;
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
    return zone;
}

function category(results: readonly string[]): Category {
    if (results.length === 0) return 'none';
    if (results.includes('pass')) return 'pass';
    if (results.includes('fail')) return 'fail';
    return 'invalid';
}

/** RFC 8301 sections 3.1 and 3.2: rsa-sha1, or an RSA key under 1024 bits, cannot make a signature valid. */
function weak(s: Signature, minBits: number): boolean {
    return s.a === 'rsa-sha1' || (s.a.startsWith('rsa-') && typeof s.key_bits === 'number' && s.key_bits < minBits);
}

let dns: DnsTestServer;
let cases: Case[];

before(async () => {
    dns = await startDnsServer({});
    cases = (JSON.parse(fs.readFileSync(path.join(DIR, 'manifest.json'), 'utf8')) as { cases: Case[] }).cases;
});

after(async () => {
    await dns.close();
});

async function runSuite(profile: { minBits: number; rejectRsaSha1: boolean; strict: boolean }): Promise<Outcome[]> {
    const outcomes: Outcome[] = [];
    const bySource = new Map<string, Case[]>();
    for (const c of cases) bySource.set(c.dns_records, [...(bySource.get(c.dns_records) ?? []), c]);
    for (const [dnsFile, group] of bySource) {
        dns.setZone(zoneOf(dnsFile));
        const resolver = testResolver(dns.address, false);
        try {
            const results = await Promise.all(
                group.map(async (c) => {
                    const r = await dkimVerify(fs.readFileSync(path.join(DIR, c.file)), {
                        resolver: resolver.resolve,
                        minBitLength: profile.minBits,
                        rejectRsaSha1: profile.rejectRsaSha1,
                        strict: profile.strict,
                    } as unknown as Parameters<typeof dkimVerify>[1]);
                    return r.results.filter((s) => s.signingDomain !== undefined).map((s) => s.status.result);
                }),
            );
            for (const [k, c] of group.entries()) {
                const refused = profile.rejectRsaSha1 && c.signatures.length > 0;
                const allWeak = refused && c.signatures.every((s) => weak(s, profile.minBits));
                const expected: Category = allWeak ? 'invalid' : c.upstream.expected_overall_result;
                const got = category(results[k]!);
                outcomes.push({
                    id: path.basename(c.file),
                    ok: got === expected,
                    detail: `expected ${expected}, got ${got} (${results[k]!.join(', ') || 'no DKIM signature'})`,
                });
            }
        } finally {
            resolver.close();
        }
    }
    assert.equal(outcomes.length, 83);
    return outcomes;
}

it('DKIM: vectors with the product defaults (RFC 8301 key policy)', async (t) => {
    const d = defaultAuthentication();
    assert.deepEqual([d.minRsaBits, d.dkim.rejectRsaSha1, d.strict], [1024, true, false]);
    settle(t, 'dkim', await runSuite({ minBits: d.minRsaBits, rejectRsaSha1: d.dkim.rejectRsaSha1, strict: d.strict }));
});

it('DKIM: vectors with legacy keys accepted (minRsaBits 512, rsa-sha1)', async (t) => {
    settle(t, 'dkim-legacy', await runSuite({ minBits: 512, rejectRsaSha1: false, strict: false }));
});
