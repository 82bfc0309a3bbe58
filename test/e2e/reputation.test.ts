/**
 * Connection reputation end to end, through the listener into a real Postfix, with the shipped
 * rules and list zones served by the loopback DNS server. Clients connect from addresses of
 * 127.0.0.0/8 other than 127.0.0.1 and 127.0.0.2 (the test entries every list must and must not
 * list): a listed client is refused at MAIL FROM with a reply naming the list and its delisting
 * page, an allow-listed one is not, a clean one is delivered, a sender domain on a domain list
 * is tagged; the decision log names the listing zones. With the shipped greylisting entry
 * enforced, a client whose generic reverse name resolves back is greylisted, one with a
 * non-generic name is not. A list that lists everything is disabled by its probe at start, so
 * nobody is refused because of it, and is enabled again once its answers are sane.
 */
import assert from 'node:assert/strict';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { PACKAGE_RULES_DIR } from '../../src/config/defaults.ts';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startDnsServer, type DnsTestServer, type Zone } from '../helpers/dns-server.ts';
import { startPostfix, type PostfixInstance } from '../helpers/postfix.ts';
import { sendMail, smtpConnect } from '../helpers/smtp-client.ts';

const LISTED = '127.0.0.10';
const ALLOWED = '127.0.0.12';
const CLEAN = '127.0.0.20';
/** Forward-confirmed reverse names: a generic one, as a home connection has, and a mail server's. */
const GENERIC = '127.0.9.9';
const NAMED = '127.0.9.10';

/** Sane lists: bl.test lists LISTED and ALLOWED, wl.test vouches for ALLOWED, dbl.test lists spam.example. */
const SANE: Zone = {
    // negative answers without SOA are not cached, so a changed zone is seen at the next probe
    soa: null,
    '2.0.0.127.bl.test': { A: ['127.0.0.2'], ttl: 1 },
    '2.0.0.127.wl.test': { A: ['127.0.0.2'], ttl: 1 },
    'test.dbl.test': { A: ['127.0.1.2'], ttl: 1 },
    '10.0.0.127.bl.test': { A: ['127.0.0.2'], ttl: 1 },
    '12.0.0.127.bl.test': { A: ['127.0.0.2'], ttl: 1 },
    '12.0.0.127.wl.test': { A: ['127.0.10.2'], ttl: 1 },
    'spam.example.dbl.test': { A: ['127.0.1.2'], ttl: 1 },
};

/** bl.test gone bad: it lists every address, its "must not" test entry 127.0.0.1 included. */
const HOSTILE: Zone = {
    ...SANE,
    '1.0.0.127.bl.test': { A: ['127.0.0.2'], ttl: 1 },
    '20.0.0.127.bl.test': { A: ['127.0.0.2'], ttl: 1 },
};

function config(dns: DnsTestServer, postfixPort: number, probeInterval: string): string {
    return [
        'hostname: mx.test',
        'domains: [example.test]',
        'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
        `upstream: { url: "smtp://127.0.0.1:${postfixPort}", xclient: true }`,
        `dns: { servers: ["${dns.address}"], timeout: 1s }`,
        'reputation:',
        "  dnsbl: ['bl.test=127.0.0.[2..11]*3 https://bl.test/lookup']",
        "  dnswl: ['wl.test=127.0.[0..255].[1..3]*-5']",
        "  rhsbl: ['dbl.test=127.0.1.[2..99]*3']",
        `  probeInterval: ${probeInterval}`,
        'http: false',
    ].join('\n');
}

async function metric(mw: TestApp, name: string): Promise<string> {
    return mw.app.metrics.registry.getSingleMetricAsString(`mailwarden_${name}`);
}

const message = (subject: string): string => `From: a@sender.example\r\nSubject: ${subject}\r\n\r\nhello\r\n`;

describe('reputation lists in front of a real Postfix', () => {
    let postfix: PostfixInstance;
    let dns: DnsTestServer;
    before(async () => {
        postfix = await startPostfix({ users: ['alice'] });
        dns = await startDnsServer(SANE);
    });
    after(async () => {
        await postfix?.stop();
        await dns?.close();
    });

    describe('with sane lists', () => {
        let mw: TestApp;
        before(async () => {
            dns.setZone(SANE);
            mw = await startApp(config(dns, postfix.port, '5m'));
        });
        after(async () => {
            await mw?.stop();
        });

        it('refuses a listed client at MAIL FROM, naming the list and where to ask for removal', async () => {
            const r = await sendMail(mw.port(), {
                from: 'a@sender.example',
                to: ['alice@example.test'],
                data: message('listed'),
                localAddress: LISTED,
            });
            assert.equal(r.greeting.code, 220, 'the greeting does not wait for the lists');
            assert.equal(r.mail.code, 550, r.mail.raw);
            assert.match(
                r.mail.text,
                /^5\.7\.1 Mail refused: the address of your mail server \(127\.0\.0\.10\) is on the block list bl\.test\. Look the address up at https:\/\/bl\.test\/lookup /,
            );
            const refused = mw.logs.find((l) => l.msg === 'refused' && l.stage === 'helo');
            assert.deepEqual(refused?.dnsbl, ['bl.test=127.0.0.2'], 'the log line names the listing zone');
            assert.deepEqual(refused?.rules, ['dnsbl-reject']);
            // what the runbook replays with `explain`: the client, HELO name and sender
            assert.equal(refused?.client, '127.0.0.10');
            assert.equal(typeof refused?.helo, 'string');
            assert.equal(refused?.from, 'a@sender.example');
            assert.match(await metric(mw, 'dnsbl_hits_total'), /mailwarden_dnsbl_hits_total\{zone="bl.test"\} [1-9]/);
            assert.match(await metric(mw, 'dnsbl_zone_healthy'), /mailwarden_dnsbl_zone_healthy\{zone="bl.test"\} 1/);
        });

        it('lets an allow-listed client through although a block list names it', async () => {
            const r = await sendMail(mw.port(), {
                from: 'a@sender.example',
                to: ['alice@example.test'],
                data: message('allowed'),
                localAddress: ALLOWED,
            });
            assert.equal(r.message?.code, 250, JSON.stringify(r));
            assert.doesNotMatch(
                await metric(mw, 'ratelimit_decisions_total'),
                /limit="greylist",result="[^"]+"\} [1-9]/,
                'allow-list credit spares greylisting (the shipped entry, in monitor mode)',
            );
            assert.equal(await mw.app.dnswlCredit(ALLOWED), true, 'the pregreet exemption answer');
            assert.equal(await mw.app.dnswlCredit(CLEAN), false);
        });

        it('delivers a clean client, and tags a sender domain on a domain list', async () => {
            const clean = await sendMail(mw.port(), {
                from: 'a@sender.example',
                to: ['alice@example.test'],
                data: message('clean'),
                localAddress: CLEAN,
            });
            assert.equal(clean.message?.code, 250, JSON.stringify(clean));
            const tagged = await sendMail(mw.port(), {
                from: 'a@spam.example',
                to: ['alice@example.test'],
                data: message('rhsbl'),
                localAddress: CLEAN,
            });
            assert.equal(tagged.message?.code, 250, JSON.stringify(tagged));
            const delivered = await postfix.waitForMessages('alice', 3);
            const rhsbl = delivered.find((m) => m.includes('Subject: rhsbl'));
            assert.match(rhsbl ?? '', /X-Mailwarden-Reason: sender domain spam\.example is on a domain block list/);
            const decision = mw.logs.filter((l) => l.msg === 'decision').at(-1);
            assert.deepEqual(decision?.dnsbl, ['dbl.test=127.0.1.2']);
            assert.ok(delivered.some((m) => m.includes('Subject: clean')));
            // no reverse DNS and no allow-list credit: greylisted (counted only, in monitor mode)
            assert.match(
                await metric(mw, 'ratelimit_decisions_total'),
                /limit="greylist",result="monitor_new"\} [1-9]/,
            );
        });

        it('reports a stranger that names itself as us, and a HELO name that does not resolve', async () => {
            const r = await sendMail(mw.port(), {
                from: 'a@sender.example',
                to: ['alice@example.test'],
                data: message('claims us'),
                helo: 'mx.test',
                localAddress: CLEAN,
            });
            assert.equal(r.message?.code, 250, 'helo-claims-us is shipped in monitor mode');
            assert.match(await metric(mw, 'helo_checks_total'), /check="claims_us",result="fail"\} 1/);
            assert.match(await metric(mw, 'helo_checks_total'), /check="resolves",result="fail"\} [1-9]/);
            assert.match(
                await metric(mw, 'rule_hits_total'),
                /rule="helo-claims-us",action="reject",mode="monitor"\} 1/,
            );
            assert.match(
                await metric(mw, 'rule_hits_total'),
                /rule="fcrdns-fail-tag",action="tag",mode="monitor"\} [1-9]/,
            );
        });
    });

    describe('with the shipped greylisting entry enforced', () => {
        let mw: TestApp;
        let rules: string;
        before(async () => {
            dns.setZone({
                ...SANE,
                '9.9.0.127.in-addr.arpa': { PTR: ['127-0-9-9.dyn.isp.example.'], ttl: 1 },
                '127-0-9-9.dyn.isp.example': { A: [GENERIC], ttl: 1 },
                '10.9.0.127.in-addr.arpa': { PTR: ['mail.sender.example.'], ttl: 1 },
                'mail.sender.example': { A: [NAMED], ttl: 1 },
            });
            // the rule file as an operator enforces it: the entry's `mode: monitor` line removed
            rules = join(await mkdtemp(join(tmpdir(), 'mw-greylist-')), 'rules');
            await cp(PACKAGE_RULES_DIR, rules, { recursive: true });
            const file = join(rules, '50-limits.yaml');
            const text = await readFile(file, 'utf8');
            const enforced = text.replace(/(\n {2}- id: greylist-unverified\n(?: {4}.*\n)*?) {4}mode: monitor\n/, '$1');
            assert.notEqual(enforced, text, 'the mode line of greylist-unverified');
            await writeFile(file, enforced);
            mw = await startApp(`${config(dns, postfix.port, '5m')}\nrules: "${rules}"`);
        });
        after(async () => {
            await mw?.stop();
            await rm(join(rules, '..'), { recursive: true, force: true });
            dns.setZone(SANE);
        });

        it('greylists a client whose generic reverse name resolves back, and not one with a mail server name', async () => {
            const generic = await sendMail(mw.port(), {
                from: 'a@sender.example',
                to: ['alice@example.test'],
                data: message('generic'),
                localAddress: GENERIC,
            });
            assert.equal(generic.mail.code, 250, generic.mail.raw);
            assert.equal(generic.rcpt[0]?.code, 450, generic.rcpt[0]?.raw);
            assert.match(generic.rcpt[0]?.text ?? '', /^4\.7\.1 Greylisted/);
            const named = await sendMail(mw.port(), {
                from: 'a@sender.example',
                to: ['alice@example.test'],
                data: message('named'),
                localAddress: NAMED,
            });
            assert.equal(named.rcpt[0]?.code, 250, named.rcpt[0]?.raw);
            assert.equal(named.message?.code, 250, JSON.stringify(named));
            assert.match(
                await metric(mw, 'ratelimit_decisions_total'),
                /limit="greylist",result="new"\} 1$/m,
                'one triplet greylisted',
            );
        });
    });

    describe('when a reload adds a list', () => {
        let mw: TestApp;
        before(async () => {
            dns.setZone(SANE);
            const yaml = config(dns, postfix.port, '5m').replace(/^reputation:\n( {2}.*\n)+/m, '');
            mw = await startApp(yaml);
        });
        after(async () => {
            await mw?.stop();
        });

        it('asks the new list from the next connection on, once its probe passed', async () => {
            const before = await sendMail(mw.port(), {
                from: 'a@sender.example',
                to: ['alice@example.test'],
                data: message('before the reload'),
                localAddress: LISTED,
            });
            assert.equal(before.mail.code, 250, 'no list configured yet');
            const file = join(mw.dir, 'mailwarden.yaml');
            await writeFile(file, config(dns, postfix.port, '5m'));
            mw.app.reload();
            const deadline = Date.now() + 10_000;
            while (!/zone="bl.test"\} 1/.test(await metric(mw, 'dnsbl_zone_healthy'))) {
                assert.ok(Date.now() < deadline, 'the new list is probed healthy');
                await sleep(50);
            }
            const after = await sendMail(mw.port(), {
                from: 'a@sender.example',
                to: ['alice@example.test'],
                data: message('after the reload'),
                localAddress: LISTED,
            });
            assert.equal(after.mail.code, 550, after.mail.raw);
        });
    });

    describe('with a list that lists everything', () => {
        let mw: TestApp;
        before(async () => {
            dns.setZone(HOSTILE);
            mw = await startApp(config(dns, postfix.port, '10s'));
        });
        after(async () => {
            await mw?.stop();
            dns.setZone(SANE);
        });

        it('disables it at start, refuses nobody because of it, and enables it once it is sane again', async () => {
            const disabled = mw.logs.find(
                (l) => l.msg?.toString().startsWith('DNS list disabled') && l.zone === 'bl.test',
            );
            assert.match(String(disabled?.reason), /lists everything: 1\.0\.0\.127\.bl\.test is listed/);
            assert.match(await metric(mw, 'dnsbl_zone_healthy'), /mailwarden_dnsbl_zone_healthy\{zone="bl.test"\} 0/);
            for (const ip of [CLEAN, LISTED]) {
                const r = await sendMail(mw.port(), {
                    from: 'a@sender.example',
                    to: ['alice@example.test'],
                    data: message(`hostile ${ip}`),
                    localAddress: ip,
                });
                assert.equal(r.message?.code, 250, `${ip}: ${JSON.stringify(r)}`);
            }
            dns.setZone(SANE);
            // the next probe (10 s apart for an unhealthy list) finds it sane; answers live 5 s in the cache
            const deadline = Date.now() + 30_000;
            while (!/zone="bl.test"\} 1/.test(await metric(mw, 'dnsbl_zone_healthy'))) {
                assert.ok(Date.now() < deadline, 'the list is enabled again within 30 s');
                await sleep(250);
            }
            assert.ok(
                mw.logs.some((l) => l.msg?.toString().startsWith('DNS list healthy again') && l.zone === 'bl.test'),
            );
            const r = await sendMail(mw.port(), {
                from: 'a@sender.example',
                to: ['alice@example.test'],
                data: message('listed again'),
                localAddress: LISTED,
            });
            assert.equal(r.mail.code, 550, 'the list counts again');
        });
    });

    describe('with a list that starts listing everyone while trusted', () => {
        // negative answers cached for 300 s (SOA minimum): the probe's "not listed" is in the cache
        const cached = (zone: Zone): Zone => {
            const { soa: _soa, ...rest } = zone;
            return rest;
        };
        let mw: TestApp;
        before(async () => {
            dns.setZone(cached(SANE));
            mw = await startApp(config(dns, postfix.port, '10s'));
        });
        after(async () => {
            await mw?.stop();
            dns.setZone(SANE);
        });

        it('disables it at the next probe: the probe asks the server, not the cache', async () => {
            assert.match(await metric(mw, 'dnsbl_zone_healthy'), /mailwarden_dnsbl_zone_healthy\{zone="bl.test"\} 1/);
            dns.setZone(cached(HOSTILE));
            const deadline = Date.now() + 25_000;
            while (!/zone="bl.test"\} 0/.test(await metric(mw, 'dnsbl_zone_healthy'))) {
                assert.ok(Date.now() < deadline, 'the list is disabled within 25 s (one probe interval and a bit)');
                await sleep(250);
            }
            const r = await sendMail(mw.port(), {
                from: 'a@sender.example',
                to: ['alice@example.test'],
                data: message('listed by a hostile list'),
                localAddress: CLEAN,
            });
            assert.equal(r.message?.code, 250, 'nobody is refused because of it');
        });
    });

    describe('with the pregreet test', () => {
        let mw: TestApp;
        before(async () => {
            mw = await startApp(
                config(dns, postfix.port, '1h')
                    .replace('mode: mx }]', 'mode: mx, pregreetWait: 2s }]')
                    .concat('\npregreet: { ttl: 1h }'),
            );
        });
        after(async () => {
            await mw?.stop();
        });

        async function greetedAfter(localAddress: string): Promise<number> {
            const started = performance.now();
            const c = await smtpConnect(mw.port(), { localAddress });
            try {
                assert.equal((await c.greeting(5000)).code, 220);
                return performance.now() - started;
            } finally {
                c.close();
            }
        }

        it('greets a client with allow-list credit at once, while a stranger waits', async () => {
            const allowed = await greetedAfter(ALLOWED);
            assert.ok(allowed < 1000, `allow-list credit: greeted after ${allowed.toFixed(0)} ms`);
            assert.match(await metric(mw, 'pregreet_total'), /mailwarden_pregreet_total\{result="exempt"\} 1/);
            const stranger = await greetedAfter(CLEAN);
            assert.ok(stranger >= 1900, `a new client without credit waits: ${stranger.toFixed(0)} ms`);
        });
    });
});
