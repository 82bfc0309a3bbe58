// ARC conformance: every entry of the ValiMail ARC validation suite
// (test/fixtures/conformance/arc, written for the draft that became RFC 8617) run through
// mailauth's authenticate() as the mailauth check calls it, over our resolver and a loopback
// DNS server serving each scenario's `txt-records`. The chain validation result (arc=pass,
// fail or none) is compared with the expected `cv`; an empty `cv` means a broken chain (fail).
// Messages are converted to CRLF, as they would arrive over SMTP.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, it } from 'node:test';
import { authenticate } from 'mailauth';
import { defaultAuthentication } from '../../../src/config/defaults.ts';
import { startDnsServer, type DnsTestServer, type Zone } from '../../helpers/dns-server.ts';
import { testResolver } from '../helpers.ts';
import { FIXTURES, settle, type Outcome } from './harness.ts';

interface Scenario {
    description: string;
    tests: Record<string, { message: string; cv: string }>;
    'txt-records'?: Record<string, string>;
}

let dns: DnsTestServer;

before(async () => {
    dns = await startDnsServer({});
});

after(async () => {
    await dns.close();
});

async function runSuite(strict: boolean): Promise<Outcome[]> {
    const scenarios = JSON.parse(
        fs.readFileSync(path.join(FIXTURES, 'arc', 'arc-draft-validation-tests.json'), 'utf8'),
    ) as Scenario[];
    const settings = defaultAuthentication();
    const outcomes: Outcome[] = [];
    for (const scenario of scenarios) {
        const zone: Zone = {};
        for (const [name, txt] of Object.entries(scenario['txt-records'] ?? {})) zone[name] = { TXT: [txt] };
        dns.setZone(zone);
        const resolver = testResolver(dns.address, false);
        try {
            const cases = Object.entries(scenario.tests);
            const results = await Promise.all(
                cases.map(async ([, c]) => {
                    const r = await authenticate(c.message.replace(/\r?\n/g, '\r\n'), {
                        ip: '192.0.2.1',
                        helo: 'client.test',
                        sender: 'sender@client.test',
                        mta: 'mx.test',
                        resolver: resolver.resolve,
                        trustReceived: false,
                        disableBimi: true,
                        disableDmarc: true,
                        minBitLength: settings.minRsaBits,
                        strict,
                    } as unknown as Parameters<typeof authenticate>[1]);
                    return r.arc ? r.arc.status.result : 'none';
                }),
            );
            for (const [k, [name, c]] of cases.entries()) {
                const expected = c.cv === '' ? 'fail' : c.cv.toLowerCase();
                const got = results[k]!;
                outcomes.push({ id: name, ok: got === expected, detail: `expected ${expected}, got ${got}` });
            }
        } finally {
            resolver.close();
        }
    }
    assert.equal(outcomes.length, 175);
    return outcomes;
}

it('ARC: ValiMail validation suite, default settings', async (t) => {
    settle(t, 'arc', await runSuite(defaultAuthentication().strict));
});

it('ARC: ValiMail validation suite, authentication.strict: true', async (t) => {
    settle(t, 'arc-strict', await runSuite(true));
});
