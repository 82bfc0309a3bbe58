// The `mailauth` check end to end against the loopback test DNS server: SPF, DKIM (signed here
// with generated keys published in the zone), DMARC dispositions (reject, quarantine, t=y, np,
// several From mailboxes, temporary DNS errors), ARC sealed by a trusted or an untrusted
// forwarder, a body cut short at a line over 1 MiB (no body hash that reached the cut passes),
// the rfc7489 mode, the header fields produced (no SPF verdict for authenticated
// submission), metrics, and the resolver cache (a second message from the same domain asks
// the DNS server nothing new).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createMailauthCheck } from '../../src/checks/mailauth.ts';
import type { Resolver } from '../../src/dns/resolver.ts';
import { createMetrics } from '../../src/metrics.ts';
import { createVerifyThread } from '../../src/sender-auth/verify-thread.ts';
import type { Check, CheckResult } from '../../src/types.ts';
import { startDnsServer, type DnsTestServer, type Zone } from '../helpers/dns-server.ts';
import {
    basicMessage,
    CLIENT,
    context,
    FORWARDER_IP,
    HOST,
    runCheck as run,
    message,
    rsaKey,
    seal,
    settings,
    sign,
    testResolver,
    type TestKey,
} from './helpers.ts';
import type { AuthenticationConfig } from '../../src/config/types.ts';

let dns: DnsTestServer;
let resolver: Resolver;
let bankKey: TestKey;
let forwarderKey: TestKey;
let otherSealerKey: TestKey;

function baseZone(): Zone {
    return {
        'bank.example': { TXT: [`v=spf1 ip4:${CLIENT} -all`], A: ['192.0.2.1'] },
        'sel._domainkey.bank.example': { TXT: [bankKey.record] },
        '_dmarc.bank.example': { TXT: ['v=DMARC1; p=reject; sp=quarantine; np=reject'] },
        'shop.example': { TXT: ['v=spf1 -all'] },
        '_dmarc.shop.example': { TXT: ['v=DMARC1; p=quarantine'] },
        'test.example': { TXT: ['v=spf1 -all'] },
        '_dmarc.test.example': { TXT: ['v=DMARC1; p=reject; t=y'] },
        'legacy.example': { TXT: ['v=spf1 -all'] },
        '_dmarc.legacy.example': { TXT: ['v=DMARC1; p=reject; pct=0'] },
        'slow.example': { TXT: ['v=spf1 -all'] },
        '_dmarc.slow.example': { TIMEOUT: true },
        'flaky.example': { TIMEOUT: true },
        '_dmarc.flaky.example': { TXT: ['v=DMARC1; p=reject'] },
        'forwarder.example': { TXT: [`v=spf1 ip4:${FORWARDER_IP} -all`] },
        'arc._domainkey.forwarder.example': { TXT: [forwarderKey.record] },
        'arc._domainkey.sealer.example': { TXT: [otherSealerKey.record] },
        'sender.test': { TXT: ['v=spf1 -all'] },
        'mail.bank.example': { A: ['192.0.2.2'] },
        'evil.example': { TXT: ['v=spf1 -all'] },
        'sel._domainkey.evil.example': { TIMEOUT: true },
    };
}

// verified in the thread, as in production (authentication.thread); test/sender-auth/verify-thread.test.ts holds it to the main thread's results
const thread = createVerifyThread();

function check(over: Partial<AuthenticationConfig> = {}, localDomains: string[] = ['mx.test']): Check {
    return createMailauthCheck({
        hostname: HOST,
        resolver,
        localDomains,
        settings: settings(over),
        thread,
    });
}

function header(r: CheckResult, name: string): string {
    const h = r.headers?.find((f) => f.name === name);
    assert.ok(h, `no ${name} header`);
    return h.value;
}

before(async () => {
    bankKey = rsaKey();
    forwarderKey = rsaKey();
    otherSealerKey = rsaKey();
    dns = await startDnsServer({});
    dns.setZone(baseZone());
    resolver = testResolver(dns.address);
});

after(async () => {
    await thread.close();
    resolver.close();
    await dns.close();
});

describe('mailauth check', () => {
    it('declares itself as a data-stage check that tempfails on error', () => {
        const c = check({ timeoutMs: 15_000 });
        assert.equal(c.name, 'mailauth');
        assert.deepEqual(c.stages, ['data']);
        assert.equal(c.timeoutMs, 15_000);
        assert.equal(c.onError, 'tempfail');
    });

    it('a spoofed message from a p=reject domain: dmarc fail, disposition reject', async () => {
        const r = await run(check(), basicMessage('Bank <alerts@bank.example>'), { mailFrom: 'x@sender.test' });
        assert.equal(r.facts['spf.result'], 'fail');
        assert.equal(r.facts['spf.domain'], 'sender.test');
        assert.equal(r.facts['dkim.result'], 'none');
        assert.deepEqual(r.facts['dkim.domains'], []);
        assert.equal(r.facts['dkim.aligned'], false);
        assert.equal(r.facts['dmarc.result'], 'fail');
        assert.equal(r.facts['dmarc.policy'], 'reject');
        assert.equal(r.facts['dmarc.disposition'], 'reject');
        assert.equal(r.facts['dmarc.override'], null);
        assert.equal(r.facts['auth.temperror'], false);
        assert.equal(r.facts['header.from.domain'], 'bank.example');
        assert.equal(r.facts['arc.result'], 'none');
        const ar = header(r, 'Authentication-Results');
        assert.match(ar, /^mx\.test; /);
        assert.match(
            ar,
            /dmarc=fail \(p=REJECT sp=QUARANTINE np=REJECT dis=REJECT\) policy\.dmarc=reject header\.from=bank\.example/,
        );
        assert.match(ar, /spf=fail /);
        assert.match(ar, /dkim=none/);
        assert.match(ar, /arc=none/);
        assert.match(header(r, 'Received-SPF'), /^fail \(mx\.test: .*client-ip=192\.0\.2\.10;/);
    });

    it('a HELO name that is neither a host name nor an address literal is not written into our fields', async () => {
        const forged = 'x;client-ip=192.0.2.9;dkim=pass';
        const r = await run(check(), basicMessage('Bank <alerts@bank.example>'), {
            mailFrom: 'x@sender.test',
            helo: forged,
        });
        const ar = header(r, 'Authentication-Results');
        const spf = header(r, 'Received-SPF');
        for (const text of [ar, spf]) {
            assert.ok(!text.includes('client-ip=192.0.2.9'), text);
            assert.ok(!text.includes(';dkim=pass'), text);
        }
        // the client's address stands in, as for a client that gave no HELO
        assert.match(ar, /smtp\.helo=\[?192\.0\.2\.10\]?|smtp\.helo="\[192\.0\.2\.10\]"/);
        assert.equal(r.facts['spf.result'], 'fail', 'the MAIL FROM identity is judged as before');
        // a host name is written as given
        const named = await run(check(), basicMessage('Bank <alerts@bank.example>'), {
            mailFrom: 'x@sender.test',
            helo: 'mail.sender.test',
        });
        assert.match(header(named, 'Authentication-Results'), /smtp\.helo=mail\.sender\.test/);
    });

    it('a MAIL FROM whose quoted local part reads like results is not written into our fields as text a reader could split out', async () => {
        // RFC 8601 section 2.7.2 allows the domain alone; a reader splitting on ";" or matching "dmarc=" anywhere must not find a pass
        const forged = '"x;dmarc=pass header.from=shop.example;x"@evil.example';
        const r = await run(check(), basicMessage('Shop <ceo@shop.example>'), { mailFrom: forged });
        assert.equal(r.facts['dmarc.result'], 'fail');
        const ar = header(r, 'Authentication-Results');
        const spf = header(r, 'Received-SPF');
        for (const text of [ar, spf]) {
            assert.doesNotMatch(text, /dmarc\s*=\s*pass/, text);
            assert.ok(!text.includes('"x;'), text);
        }
        assert.deepEqual(
            ar.split(';').map((p) => p.trim().split(/[\s=]/)[0]),
            ['mx.test', 'dkim', 'spf', 'arc', 'dmarc'],
            ar,
        );
        assert.match(
            ar,
            /spf=fail \(mx\.test: domain of evil\.example does not designate 192\.0\.2\.10 as permitted sender\) smtp\.mailfrom=evil\.example /,
        );
        assert.doesNotMatch(spf, /envelope-from=/, 'an address that is not a dot-atom is left out');
        // a local part with other atext ("=") is written as its domain too: a reader looking for
        // "dmarc=pass" anywhere must not find it
        const plain = await run(check(), basicMessage('Shop <ceo@shop.example>'), {
            mailFrom: 'dmarc=pass@evil.example',
        });
        assert.match(header(plain, 'Authentication-Results'), /smtp\.mailfrom=evil\.example /);
        assert.match(header(plain, 'Authentication-Results'), /domain of evil\.example does not designate/);
        assert.doesNotMatch(header(plain, 'Authentication-Results'), /dmarc=pass/);
        assert.doesNotMatch(header(plain, 'Received-SPF'), /dmarc=pass|envelope-from/);
        // a plain one is written whole
        const ordinary = await run(check(), basicMessage('Shop <ceo@shop.example>'), {
            mailFrom: 'first.last+tag@evil.example',
        });
        assert.match(header(ordinary, 'Authentication-Results'), /smtp\.mailfrom=first\.last\+tag@evil\.example /);
        assert.match(header(ordinary, 'Received-SPF'), /envelope-from="first\.last\+tag@evil\.example";/);
    });

    it('writes every domain in our field as an LDH name in A-labels, or leaves it out', async () => {
        // a From domain that is a valid dot-atom but no host name: DMARC has no record for it
        const odd = await run(check(), basicMessage('Evil <a@dmarc=pass.evil.example>'), {
            mailFrom: 'a@evil.example',
        });
        assert.doesNotMatch(header(odd, 'Authentication-Results'), /dmarc=pass/);
        assert.doesNotMatch(header(odd, 'Authentication-Results'), /header\.from=/);
        // a U-label domain is written as its A-label: the field stays ASCII
        const idn = await run(check(), basicMessage('Jörg <j@bücher.example>'), { mailFrom: 'j@bücher.example' });
        const ar = header(idn, 'Authentication-Results');
        assert.match(ar, /smtp\.mailfrom=j@xn--bcher-kva\.example /);
        assert.match(ar, /header\.from=xn--bcher-kva\.example/);
        assert.match(ar, /^[\x20-\x7e]*$/, ar);
        assert.match(header(idn, 'Received-SPF'), /envelope-from="j@xn--bcher-kva\.example";/);
    });

    it("a DKIM signature's tags are written into our field only in the shape their syntax allows", async () => {
        const msg =
            'DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=evil.example; s=x dmarc=pass;\r\n' +
            ' i=dmarc=pass@evil.example; h=from:subject; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n' +
            ' b=dGVzdA==\r\n' +
            basicMessage('Evil <a@evil.example>');
        const r = await run(check(), msg, { mailFrom: 'a@evil.example' });
        const ar = header(r, 'Authentication-Results');
        assert.match(ar, /dkim=\w+ [^;]*header\.d=evil\.example header\.i=@evil\.example/);
        assert.doesNotMatch(ar, /dmarc=pass/, ar);
        assert.doesNotMatch(ar, /header\.s=/, 'a selector with a space is left out');
    });

    it('a passing signature over part of the body (l=): the bytes after it are reported', async () => {
        const body = 'Only the first ten bytes are signed.\r\n';
        const msg = message({ From: 'alerts@bank.example', To: 'user@mx.test', Subject: 'Partly signed' }, body);
        const signed = await sign(msg, 'bank.example', 'sel', bankKey, { maxBodyLength: 10 });
        const appended = 'Appended by anyone.\r\n';
        const r = await run(check(), `${signed}${appended}`, { mailFrom: 'bounce@sender.test' });
        assert.equal(r.facts['dkim.result'], 'pass');
        assert.equal(r.facts['dmarc.result'], 'pass');
        assert.equal(r.facts['dkim.unsigned_bytes'], body.length + appended.length - 10);
    });

    it('text after a body line longer than 1 MiB: a signature over the whole body does not pass on the part verified', async () => {
        const signed = await sign(basicMessage('alerts@bank.example'), 'bank.example', 'sel', bankKey);
        const appended = `${'x'.repeat(1024 * 1024 + 1)}\r\nPay to account XX00 today.\r\n`;
        const r = await run(check(), `${signed}${appended}`, { mailFrom: 'bounce@sender.test' });
        assert.deepEqual(r.facts['auth.limits'], ['body_line_length']);
        assert.equal(r.facts['dkim.result'], 'policy');
        assert.deepEqual(r.facts['dkim.domains'], []);
        assert.equal(r.facts['dkim.aligned'], false);
        assert.equal(r.facts['dmarc.result'], 'fail');
        assert.equal(r.facts['dmarc.disposition'], 'reject');
        const ar = header(r, 'Authentication-Results');
        assert.match(ar, /dkim=policy \(body not verified past a line longer than 1 MiB\) header\.d=bank\.example/);
        assert.match(ar, /dmarc=fail \(p=REJECT/);
    });

    it('text after a body line longer than 1 MiB with aligned SPF: dmarc passes, but the signature cut short is not aligned', async () => {
        const signed = await sign(basicMessage('alerts@bank.example'), 'bank.example', 'sel', bankKey);
        const appended = `${'x'.repeat(1024 * 1024 + 1)}\r\nPay to account XX00 today.\r\n`;
        const r = await run(check(), `${signed}${appended}`, { mailFrom: 'bounce@bank.example' });
        assert.deepEqual(r.facts['auth.limits'], ['body_line_length']);
        assert.equal(r.facts['spf.result'], 'pass');
        assert.equal(r.facts['dkim.result'], 'policy');
        assert.deepEqual(r.facts['dkim.domains'], []);
        assert.equal(r.facts['dkim.aligned'], false);
        assert.equal(r.facts['dmarc.result'], 'pass');
        assert.equal(r.facts['dmarc.disposition'], 'none');
    });

    it('a body line longer than 1 MiB inside the signed body: the body hash that reached the cut is policy, not neutral', async () => {
        const long = `${'x'.repeat(1024 * 1024 + 1)}\r\nThe end of the signed body.\r\n`;
        const msg = message({ From: 'alerts@bank.example', To: 'user@mx.test', Subject: 'Long line' }, long);
        const signed = await sign(msg, 'bank.example', 'sel', bankKey);
        const r = await run(check(), signed, { mailFrom: 'bounce@sender.test' });
        assert.deepEqual(r.facts['auth.limits'], ['body_line_length']);
        assert.equal(r.facts['dkim.result'], 'policy');
        assert.equal(r.facts['dmarc.result'], 'fail');
        const ar = header(r, 'Authentication-Results');
        assert.match(ar, /dkim=policy \(body not verified past a line longer than 1 MiB\) header\.d=bank\.example/);
        assert.doesNotMatch(ar, /body hash did not verify/);
    });

    it('a body altered before a line longer than 1 MiB, under a signature whose l= ends before the cut: still neutral', async () => {
        const body = 'Only the first ten bytes are signed.\r\n';
        const msg = message({ From: 'alerts@bank.example', To: 'user@mx.test', Subject: 'Partly signed' }, body);
        const signed = await sign(msg, 'bank.example', 'sel', bankKey, { maxBodyLength: 10 });
        const altered = signed.replace('Only the first', 'Not the first');
        const r = await run(check(), `${altered}${'x'.repeat(1024 * 1024 + 1)}\r\n`, {
            mailFrom: 'bounce@sender.test',
        });
        assert.deepEqual(r.facts['auth.limits'], ['body_line_length']);
        assert.equal(r.facts['dkim.result'], 'neutral');
        assert.match(header(r, 'Authentication-Results'), /dkim=neutral \(.*body hash did not verify\)/);
    });

    it('text after a body line longer than 1 MiB: a signature whose l= ends before it passes, the bytes after l= counted to the end', async () => {
        const body = 'Only the first ten bytes are signed.\r\n';
        const msg = message({ From: 'alerts@bank.example', To: 'user@mx.test', Subject: 'Partly signed' }, body);
        const signed = await sign(msg, 'bank.example', 'sel', bankKey, { maxBodyLength: 10 });
        const appended = `${'x'.repeat(1024 * 1024 + 1)}\r\nAppended by anyone.\r\n`;
        const r = await run(check(), `${signed}${appended}`, { mailFrom: 'bounce@sender.test' });
        assert.deepEqual(r.facts['auth.limits'], ['body_line_length']);
        assert.equal(r.facts['dkim.result'], 'pass');
        assert.equal(r.facts['dmarc.result'], 'pass');
        const unsigned = body.length + appended.length - 10;
        assert.equal(r.facts['dkim.unsigned_bytes'], unsigned);
        assert.match(
            header(r, 'Authentication-Results'),
            new RegExp(`dkim=pass \\(undersized signature: ${unsigned} bytes unsigned\\) header\\.d=bank\\.example`),
        );
    });

    it('a signed field of more than 100 lines passes under simple header canonicalization too', async () => {
        const references = Array.from({ length: 101 }, (_, k) => `<${k}@lists.bank.example>`).join('\r\n ');
        const msg = basicMessage('alerts@bank.example', [['References', references]]);
        for (const canonicalization of ['simple/simple', 'simple/relaxed', 'relaxed/relaxed']) {
            const signed = await sign(msg, 'bank.example', 'sel', bankKey, { canonicalization });
            assert.match(signed, new RegExp(`c=${canonicalization};[^]*h=[^;]*references`, 'i'));
            const r = await run(check(), signed, { mailFrom: 'bounce@sender.test' });
            assert.equal(r.facts['dkim.result'], 'pass', canonicalization);
            assert.equal(r.facts['dmarc.result'], 'pass', canonicalization);
            assert.deepEqual(r.facts['auth.limits'], [], canonicalization);
        }
    });

    it('an aligned DKIM signature: dkim pass, aligned, dmarc pass', async () => {
        const msg = await sign(basicMessage('alerts@bank.example'), 'bank.example', 'sel', bankKey);
        const r = await run(check(), msg, { mailFrom: 'bounce@sender.test' });
        assert.equal(r.facts['dkim.result'], 'pass');
        assert.deepEqual(r.facts['dkim.domains'], ['bank.example']);
        assert.equal(r.facts['dkim.aligned'], true);
        assert.equal(r.facts['dkim.count'], 1);
        assert.equal(r.facts['spf.result'], 'fail');
        assert.equal(r.facts['dmarc.result'], 'pass');
        assert.equal(r.facts['dmarc.policy'], 'reject');
        assert.equal(r.facts['dmarc.disposition'], 'none');
        const ar = header(r, 'Authentication-Results');
        assert.match(ar, /dkim=pass header\.d=bank\.example header\.i=@bank\.example header\.s=sel/);
        assert.match(ar, /dmarc=pass \(p=REJECT sp=QUARANTINE np=REJECT dis=NONE\) policy\.dmarc=reject/);
    });

    it('SPF pass aligned with the From domain passes DMARC', async () => {
        const r = await run(check(), basicMessage('alerts@bank.example'), { mailFrom: 'bounce@bank.example' });
        assert.equal(r.facts['spf.result'], 'pass');
        assert.equal(r.facts['dmarc.result'], 'pass');
        assert.equal(r.facts['dmarc.disposition'], 'none');
    });

    it('p=quarantine failure: disposition quarantine', async () => {
        const r = await run(check(), basicMessage('news@shop.example'), { mailFrom: 'news@shop.example' });
        assert.equal(r.facts['dmarc.result'], 'fail');
        assert.equal(r.facts['dmarc.policy'], 'quarantine');
        assert.equal(r.facts['dmarc.disposition'], 'quarantine');
    });

    it('sp= applies to an existing subdomain, np= to a non-existent one', async () => {
        const existing = await run(check(), basicMessage('a@mail.bank.example'));
        assert.equal(existing.facts['dmarc.policy'], 'quarantine');
        assert.equal(existing.facts['dmarc.disposition'], 'quarantine');
        const missing = await run(check(), basicMessage('a@nowhere.bank.example'));
        assert.equal(missing.facts['dmarc.policy'], 'reject');
        assert.equal(missing.facts['dmarc.disposition'], 'reject');
    });

    it('t=y lowers the disposition one level (override testing)', async () => {
        const r = await run(check(), basicMessage('a@test.example'));
        assert.equal(r.facts['dmarc.policy'], 'reject');
        assert.equal(r.facts['dmarc.disposition'], 'quarantine');
        assert.equal(r.facts['dmarc.override'], 'testing');
        assert.match(
            header(r, 'Authentication-Results'),
            /\(p=REJECT t=Y dis=QUARANTINE override=testing\) policy\.dmarc=quarantine/,
        );
    });

    it('pct=0 is read as t=y', async () => {
        const r = await run(check(), basicMessage('a@legacy.example'));
        assert.equal(r.facts['dmarc.disposition'], 'quarantine');
        assert.equal(r.facts['dmarc.override'], 'testing');
    });

    it('a DNS timeout for _dmarc: disposition tempfail, never reject', async () => {
        const r = await run(check(), basicMessage('a@slow.example'), { mailFrom: 'a@slow.example' });
        assert.equal(r.facts['dmarc.result'], 'temperror');
        assert.equal(r.facts['dmarc.disposition'], 'tempfail');
        assert.equal(r.facts['auth.temperror'], true);
        assert.match(
            header(r, 'Authentication-Results'),
            /dmarc=temperror \(dis=TEMPFAIL\) header\.from=slow\.example/,
        );
    });

    it('an SPF temperror on the aligned domain with nothing passing: tempfail', async () => {
        const r = await run(check(), basicMessage('a@flaky.example'), { mailFrom: 'a@flaky.example' });
        assert.equal(r.facts['spf.result'], 'temperror');
        assert.equal(r.facts['dmarc.result'], 'fail');
        assert.equal(r.facts['dmarc.disposition'], 'tempfail');
        assert.equal(r.facts['auth.temperror'], true);
    });

    it('several From mailboxes: reject by default, DMARC evaluated per RFC 9989 when one domain', async () => {
        const two = await run(check(), basicMessage('a@bank.example, b@shop.example'));
        assert.equal(two.facts['dmarc.result'], 'permerror');
        assert.equal(two.facts['dmarc.reason'], 'multiple-author-domains');
        assert.equal(two.facts['header.from.count'], 2);
        assert.equal(two.facts['dmarc.disposition'], 'reject');
        const off = await run(
            check({ dmarc: { mode: 'rfc9989', rejectMultipleFrom: false } }),
            basicMessage('a@bank.example, b@shop.example'),
        );
        assert.equal(off.facts['dmarc.disposition'], 'none');
        const sameDomain = await run(check(), basicMessage('a@bank.example, b@bank.example'));
        assert.equal(sameDomain.facts['dmarc.result'], 'fail');
        assert.equal(sameDomain.facts['header.from.count'], 2);
        assert.equal(sameDomain.facts['dmarc.disposition'], 'reject');
        assert.equal(sameDomain.facts['dmarc.reason'], 'several From mailboxes');
        const twoFields = await run(check(), basicMessage('a@bank.example', [['From', 'b@bank.example']]));
        assert.equal(twoFields.facts['dmarc.result'], 'permerror');
        assert.equal(twoFields.facts['dmarc.reason'], 'multiple-from-fields');
        assert.equal(twoFields.facts['dmarc.disposition'], 'reject');
    });

    it('an authenticated submission client is never held to DMARC (override local)', async () => {
        const r = await run(check(), basicMessage('me@bank.example'), { login: 'me' });
        assert.equal(r.facts['dmarc.result'], 'fail');
        assert.equal(r.facts['dmarc.disposition'], 'none');
        assert.equal(r.facts['dmarc.override'], 'local');
    });

    it('an authenticated submission client gets no SPF verdict: no query, no Received-SPF, no spf clause', async () => {
        const before = dns.queries.length;
        const r = await run(check(), basicMessage('me@bank.example'), { login: 'me', mailFrom: 'me@bank.example' });
        assert.equal(r.facts['spf.result'], 'none');
        assert.equal(r.facts['spf.domain'], null);
        assert.equal(
            r.headers?.find((h) => h.name === 'Received-SPF'),
            undefined,
        );
        assert.doesNotMatch(header(r, 'Authentication-Results'), /spf=/);
        assert.match(
            header(r, 'Authentication-Results'),
            /^mx\.test; dkim=none \(message not signed\); arc=none; dmarc=fail /,
        );
        const asked = dns.queries.slice(before).map((q) => `${q.type} ${q.name}`);
        assert.ok(!asked.includes('TXT bank.example'), asked.join(', '));
        // the same message from a client that did not log in is SPF-checked as usual
        const mx = await run(check(), basicMessage('me@bank.example'), { mailFrom: 'me@bank.example' });
        assert.equal(mx.facts['spf.result'], 'pass');
        assert.match(header(mx, 'Received-SPF'), /^pass /);
    });

    it('local.sender: envelope or From in our domains, subdomains included', async () => {
        const c = check({}, ['bank.example']);
        assert.equal(
            (await run(c, basicMessage('x@other.test'), { mailFrom: 'a@mail.bank.example' })).facts['local.sender'],
            true,
        );
        assert.equal(
            (await run(c, basicMessage('x@bank.example'), { mailFrom: 'a@other.test' })).facts['local.sender'],
            true,
        );
        assert.equal(
            (await run(c, basicMessage('x@other.test'), { mailFrom: 'a@other.test' })).facts['local.sender'],
            false,
        );
    });

    it('local.sender.proof: only an SPF pass for our domain or a DKIM signature proves a local sender', async () => {
        const c = check({}, ['bank.example']);
        const proof = async (from: string, mailFrom: string, ip = CLIENT): Promise<unknown> =>
            (await run(c, basicMessage(from), { mailFrom, ip })).facts['local.sender.proof'];
        // SPF passes for bank.example (ours) from CLIENT
        assert.equal(await proof('x@bank.example', 'a@bank.example'), 'pass');
        // an SPF pass for another envelope domain says nothing about a From in ours
        assert.equal(await proof('x@bank.example', 'a@forwarder.example', FORWARDER_IP), 'none');
        // an SPF error of another envelope domain neither
        assert.equal(await proof('x@bank.example', 'a@flaky.example'), 'none');
        // ours, from an address our SPF does not list
        assert.equal(await proof('x@bank.example', 'a@bank.example', '203.0.113.9'), 'none');
        // not a local sender at all
        assert.equal(await proof('x@shop.example', 'a@shop.example'), null);
        // an SPF error of our own domain might have proved it
        const flaky = await run(check({}, ['flaky.example']), basicMessage('x@flaky.example'), {
            mailFrom: 'a@flaky.example',
        });
        assert.equal(flaky.facts['local.sender.proof'], 'temperror');
    });

    it('local.sender.proof: a trusted ARC sealer vouching for our author proves it (a list broke our signature)', async () => {
        const original = await sign(basicMessage('colleague@bank.example'), 'bank.example', 'sel', bankKey);
        const listed = original.replace('Subject: Test message', 'Subject: [list] Test message');
        const msg = await seal(listed, {
            domain: 'forwarder.example',
            selector: 'arc',
            key: forwarderKey,
            cv: 'none',
            authResults:
                'forwarder.example; dkim=pass header.d=bank.example header.s=sel; spf=pass smtp.mailfrom=colleague@bank.example; dmarc=pass header.from=bank.example',
        });
        const options = { ip: FORWARDER_IP, mailFrom: 'list-bounces@forwarder.example' };
        const trusted = { arc: { trustedSealers: ['forwarder.example'], maxSets: 10 } };
        const r = await run(check(trusted, ['bank.example']), msg, options);
        assert.equal(r.facts['dkim.result'], 'fail');
        assert.equal(r.facts['arc.trusted'], true);
        assert.equal(r.facts['local.sender.proof'], 'pass');
        // without the sealer trusted, nothing proves it
        const untrusted = await run(check({}, ['bank.example']), msg, options);
        assert.equal(untrusted.facts['local.sender.proof'], 'none');
    });

    it('local.sender.proof: a DKIM error of some other domain proves nothing, so it does not defer', async () => {
        const msg = await sign(basicMessage('ceo@bank.example'), 'evil.example', 'sel', rsaKey());
        const r = await run(check({}, ['bank.example']), msg, { ip: '203.0.113.66', mailFrom: 'x@evil.example' });
        assert.equal(r.facts['dkim.result'], 'temperror');
        assert.equal(r.facts['local.sender.proof'], 'none');
    });

    it('header.from.domain follows the author domain DMARC evaluated; a different session parse is flagged', async () => {
        const r = await run(check(), basicMessage('"a@bank.example" <x@shop.example>'), {
            facts: { 'header.from.domain': 'bank.example', 'header.from.count': 1 },
        });
        assert.equal(r.facts['header.from.domain'], 'shop.example');
        assert.equal(r.facts['header.from.mismatch'], true);
        const same = await run(check(), basicMessage('x@shop.example'), {
            facts: { 'header.from.domain': 'SHOP.example' },
        });
        assert.equal(same.facts['header.from.mismatch'], false);
    });

    it('header.from.mismatch: a domain only one reader found, not U-labels against A-labels, not several mailboxes', async () => {
        // the session found bank.example, DMARC's parser no author domain at all (an open bracket)
        const open = await run(check(), basicMessage('x@bank.example>'), {
            facts: { 'header.from.domain': 'bank.example', 'header.from.count': 1 },
        });
        assert.equal(open.facts['dmarc.result'], 'permerror');
        assert.equal(open.facts['header.from.mismatch'], true);
        // one mailbox to the session, several author domains to DMARC: a permerror no policy judges
        const atAt = await run(check(), basicMessage('CEO <ceo@bank.example@shop.example@>'), {
            facts: { 'header.from.domain': null, 'header.from.count': 1 },
        });
        assert.equal(atAt.facts['dmarc.reason'], 'multiple-author-domains');
        assert.equal(atAt.facts['header.from.mismatch'], true);
        // the same domain in U-label and A-label form is one domain
        const idn = await run(check(), basicMessage('x@b\u00fccher.example'), {
            facts: { 'header.from.domain': 'xn--bcher-kva.example', 'header.from.count': 1 },
        });
        assert.equal(idn.facts['header.from.mismatch'], false);
        // several mailboxes are the several-author rule's business
        const two = await run(check(), basicMessage('x@shop.example, y@bank.example'), {
            facts: { 'header.from.domain': 'shop.example', 'header.from.count': 2 },
        });
        assert.equal(two.facts['header.from.mismatch'], false);
        // without the session's reading (no session fact) nothing is compared
        assert.equal((await run(check(), basicMessage('x@shop.example>'))).facts['header.from.mismatch'], false);
    });

    it("local.sender: our domain as the session read From counts even where DMARC's parser read another", async () => {
        const r = await run(check({}, ['bank.example']), basicMessage('x@bank .example'), {
            mailFrom: 'a@other.test',
            facts: { 'header.from.domain': 'bank.example', 'header.from.count': 1 },
        });
        assert.equal(r.facts['local.sender'], true);
    });

    describe('ARC', () => {
        /** The bank signs, the forwarder authenticates it, rewrites the subject and seals; we receive it from the forwarder. */
        async function forwarded(sealer: string, selector: string, key: TestKey): Promise<string> {
            const original = await sign(basicMessage('alerts@bank.example'), 'bank.example', 'sel', bankKey);
            const changed = original.replace('Subject: Test message', 'Subject: [list] Test message');
            return seal(changed, {
                domain: sealer,
                selector,
                key,
                authResults: `${sealer}; dkim=pass header.d=bank.example header.s=sel; spf=pass smtp.mailfrom=alerts@bank.example; dmarc=pass header.from=bank.example`,
                cv: 'none',
            });
        }

        it('a trusted sealer vouching for the author domain overrides the DMARC failure', async () => {
            const metrics = createMetrics('test');
            const c = createMailauthCheck({
                hostname: HOST,
                resolver,
                localDomains: [],
                settings: settings({ arc: { trustedSealers: ['forwarder.example'], maxSets: 10 } }),
                metrics,
                thread,
            });
            const msg = await forwarded('forwarder.example', 'arc', forwarderKey);
            const r = await run(c, msg, { ip: FORWARDER_IP, mailFrom: 'list-bounces@forwarder.example' });
            assert.equal(r.facts['dkim.result'], 'fail');
            assert.equal(r.facts['spf.result'], 'pass');
            assert.equal(r.facts['arc.result'], 'pass');
            assert.equal(r.facts['arc.trusted'], true);
            assert.equal(r.facts['arc.sealer'], 'forwarder.example');
            assert.equal(r.facts['dmarc.result'], 'fail');
            assert.equal(r.facts['dmarc.disposition'], 'none');
            assert.equal(r.facts['dmarc.override'], 'arc');
            assert.match(
                header(r, 'Authentication-Results'),
                /dmarc=fail \(p=REJECT sp=QUARANTINE np=REJECT dis=NONE override=arc sealer=forwarder\.example i=1\) policy\.dmarc=reject header\.from=bank\.example/,
            );
            assert.match(header(r, 'Authentication-Results'), /arc=pass/);
            const text = await metrics.registry.metrics();
            assert.match(text, /mailwarden_dmarc_overrides_total\{reason="arc"\} 1/);
            assert.match(text, /mailwarden_auth_checks_total\{check="arc",result="pass"\} 1/);
            assert.match(text, /mailwarden_auth_checks_total\{check="dmarc",result="fail"\} 1/);
        });

        it('text after a body line longer than 1 MiB: the chain does not validate, so it overrides nothing', async () => {
            const msg = await forwarded('forwarder.example', 'arc', forwarderKey);
            const appended = `${'x'.repeat(1024 * 1024 + 1)}\r\nPay to account XX00 today.\r\n`;
            const c = check({ arc: { trustedSealers: ['forwarder.example'], maxSets: 10 } });
            const r = await run(c, `${msg}${appended}`, {
                ip: FORWARDER_IP,
                mailFrom: 'list-bounces@forwarder.example',
            });
            assert.deepEqual(r.facts['auth.limits'], ['body_line_length']);
            assert.equal(r.facts['arc.result'], 'fail');
            assert.equal(r.facts['arc.trusted'], false);
            assert.equal(r.facts['dmarc.result'], 'fail');
            assert.equal(r.facts['dmarc.override'], null);
            assert.equal(r.facts['dmarc.disposition'], 'reject');
            const ar = header(r, 'Authentication-Results');
            assert.match(ar, /arc=fail \(body not verified past a line longer than 1 MiB\)/);
            assert.match(ar, /dmarc=fail \(p=REJECT sp=QUARANTINE np=REJECT dis=REJECT\)/);
        });

        it('the same chain from a sealer that is not trusted proves nothing', async () => {
            const msg = await forwarded('sealer.example', 'arc', otherSealerKey);
            const r = await run(check({ arc: { trustedSealers: ['forwarder.example'], maxSets: 10 } }), msg, {
                ip: FORWARDER_IP,
            });
            assert.equal(r.facts['arc.result'], 'pass');
            // what the sealer claims stays in its own ARC-Authentication-Results, not in ours
            const ar = header(r, 'Authentication-Results');
            assert.match(ar, /arc=pass \(i=1\);/);
            assert.equal(ar.match(/(?:^|[;\s])dmarc\s*=\s*\w+/g)?.length, 1, ar);
            assert.match(ar, /dmarc=fail/);
            assert.equal(r.facts['arc.trusted'], false);
            assert.equal(r.facts['dmarc.disposition'], 'reject');
            assert.equal(r.facts['dmarc.override'], null);
        });

        it('a trusted sealer whose results do not vouch for the author domain does not override', async () => {
            const original = basicMessage('alerts@bank.example');
            const msg = await seal(original, {
                domain: 'forwarder.example',
                selector: 'arc',
                key: forwarderKey,
                authResults:
                    'forwarder.example; dkim=none; spf=fail smtp.mailfrom=x@sender.test; dmarc=fail header.from=bank.example',
                cv: 'none',
            });
            const r = await run(check({ arc: { trustedSealers: ['forwarder.example'], maxSets: 10 } }), msg, {
                ip: FORWARDER_IP,
            });
            assert.equal(r.facts['arc.trusted'], true);
            assert.equal(r.facts['dmarc.disposition'], 'reject');
        });
    });

    it('rfc7489 mode finds the policy with the Public Suffix List', async () => {
        const c = check({ dmarc: { mode: 'rfc7489', rejectMultipleFrom: true } });
        const r = await run(c, basicMessage('a@mail.bank.example'));
        assert.equal(r.facts['dmarc.result'], 'fail');
        assert.equal(r.facts['dmarc.policy'], 'quarantine');
        assert.equal(r.facts['dmarc.domain'], 'bank.example');
        const signed = await sign(basicMessage('a@mail.bank.example'), 'bank.example', 'sel', bankKey);
        const ok = await run(c, signed);
        assert.equal(ok.facts['dmarc.result'], 'pass');
        assert.equal(ok.facts['dkim.aligned'], true);
        assert.match(header(ok, 'Authentication-Results'), /dmarc=pass /);
    });

    it('caches: a second message from the same domain asks the DNS server nothing new', async () => {
        const own = await startDnsServer(baseZone());
        const cached = testResolver(own.address);
        try {
            const c = createMailauthCheck({
                hostname: HOST,
                resolver: cached,
                localDomains: [],
                settings: settings(),
                thread,
            });
            const msg = async () => sign(basicMessage('alerts@bank.example'), 'bank.example', 'sel', bankKey);
            await c.run(context(await msg(), { mailFrom: 'a@bank.example' }), new AbortController().signal);
            const first = own.queries.length;
            assert.ok(first > 0);
            const seen = own.queries.map((q) => `${q.type} ${q.name}`);
            assert.equal(new Set(seen).size, seen.length, `a record was asked for twice: ${seen.join(', ')}`);
            await c.run(context(await msg(), { mailFrom: 'a@bank.example' }), new AbortController().signal);
            assert.equal(own.queries.length, first, 'the second message caused DNS queries');
        } finally {
            cached.close();
            await own.close();
        }
    });

    it('without a message (not the data stage) it reports nothing', async () => {
        const ctx = { ...context('x'), message: null };
        assert.deepEqual(await check().run(ctx, new AbortController().signal), { facts: {} });
    });
});
