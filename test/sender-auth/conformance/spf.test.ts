// SPF conformance: every case of the openspf RFC 7208 suite (test/fixtures/conformance/spf),
// run through mailauth's SPF with the options the mailauth check uses, over our resolver and a
// loopback DNS server that serves one scenario's zone at a time. A case agrees when the result
// is the expected one (or one of the expected list). `exp=` explanation texts are not compared.
//
// Zone conversion (the suite's driver rules): SPF (type 99) data is served as TXT where a name
// has no TXT data, `TXT: NONE` means no TXT data, MX is [priority, exchange], and `TIMEOUT`
// makes the name's queries go unanswered; a name that has TXT data as well as TIMEOUT answers
// its TXT queries (SPF asks such names nothing else).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, it } from 'node:test';
import { spf } from 'mailauth';
import { parseAllDocuments } from 'yaml';
import { defaultAuthentication } from '../../../src/config/defaults.ts';
import { startDnsServer, type DnsTestServer, type Zone, type ZoneEntry } from '../../helpers/dns-server.ts';
import { testResolver } from '../helpers.ts';
import { FIXTURES, settle, type Outcome } from './harness.ts';

type YamlRecord = string | Record<string, unknown>;
interface Scenario {
    description: string;
    tests: Record<string, { host: string; helo: string; mailfrom: string; result: string | string[] }>;
    zonedata?: Record<string, YamlRecord[]>;
}

function zoneOf(data: Record<string, YamlRecord[]> = {}): Zone {
    const zone: Zone = { soa: null };
    for (const [name, records] of Object.entries(data)) {
        const e: ZoneEntry = {};
        const txt: (string | string[])[] = [];
        const spfData: (string | string[])[] = [];
        let noTxt = false;
        let timeout = false;
        for (const r of records) {
            if (r === 'TIMEOUT') {
                timeout = true;
                continue;
            }
            if (typeof r === 'string') continue;
            for (const [type, value] of Object.entries(r)) {
                const text = value as string | string[];
                if (type === 'TXT' && value === 'NONE') noTxt = true;
                else if (type === 'TXT') txt.push(text);
                else if (type === 'SPF') spfData.push(text);
                else if (type === 'A') (e.A ??= []).push(String(value));
                else if (type === 'AAAA') (e.AAAA ??= []).push(String(value));
                else if (type === 'PTR') (e.PTR ??= []).push(String(value));
                else if (type === 'CNAME') e.CNAME = String(value);
                else if (type === 'MX') {
                    const [priority, exchange] = value as [number, string];
                    (e.MX ??= []).push({ priority, exchange });
                }
            }
        }
        const served = txt.length > 0 ? txt : noTxt ? [] : spfData;
        if (served.length > 0) e.TXT = served;
        if (timeout && served.length === 0) e.TIMEOUT = true;
        zone[name] = e;
    }
    return zone;
}

let dns: DnsTestServer;

before(async () => {
    dns = await startDnsServer({});
});

after(async () => {
    await dns.close();
});

/** Every case of the suite with the check's SPF options; `strict` as configured. */
async function runSuite(strict: boolean): Promise<Outcome[]> {
    const text = fs.readFileSync(path.join(FIXTURES, 'spf', 'rfc7208-tests.yml'), 'utf8');
    const scenarios = parseAllDocuments(text).map((d) => d.toJS() as Scenario);
    const settings = defaultAuthentication();
    const outcomes: Outcome[] = [];
    for (const scenario of scenarios) {
        dns.setZone(zoneOf(scenario.zonedata));
        const resolver = testResolver(dns.address, false);
        try {
            const cases = Object.entries(scenario.tests);
            const results = await Promise.all(
                cases.map(async ([, c]) => {
                    const r = await spf({
                        ip: c.host,
                        sender: c.mailfrom,
                        helo: c.helo,
                        mta: 'mx.test',
                        resolver: resolver.resolve,
                        maxResolveCount: settings.spf.maxLookups,
                        strict,
                    } as unknown as Parameters<typeof spf>[0]);
                    return r.status.result;
                }),
            );
            for (const [k, [name, c]] of cases.entries()) {
                const expected = ([] as string[]).concat(c.result);
                const got = results[k]!;
                outcomes.push({
                    id: name,
                    ok: expected.includes(got),
                    detail: `expected ${expected.join('|')}, got ${got}`,
                });
            }
        } finally {
            resolver.close();
        }
    }
    assert.equal(outcomes.length, 203);
    return outcomes;
}

it('SPF: openspf RFC 7208 suite, default settings', async (t) => {
    assert.equal(defaultAuthentication().strict, false);
    settle(t, 'spf', await runSuite(false));
});

it('SPF: openspf RFC 7208 suite, authentication.strict: true', async (t) => {
    settle(t, 'spf-strict', await runSuite(true));
});
