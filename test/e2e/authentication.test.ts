/**
 * Sender-domain verification through the real proxy, with the shipped rules, a real DNS
 * server on loopback serving the sender domains, and a scripted upstream: spoofed mail from
 * a p=reject domain is refused with 550 5.7.1 and never reaches the upstream; aligned,
 * DKIM-signed mail arrives with dkim=pass and dmarc=pass; a p=quarantine failure is
 * quarantined; a DNS timeout gives 451 and the mail stays with the client; a forged
 * Authentication-Results with our authserv-id is removed; DNS answers are cached by TTL; a
 * From written so that the DMARC parser and an RFC 5322 reader see different domains is refused;
 * a From in our own domain needs an SPF pass for our domain or a DKIM signature (an SPF pass or
 * error for the envelope domain the client chose does not count; an SPF error of ours defers);
 * a From without an address with a domain is refused.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startApp, type TestApp } from '../helpers/app.ts';
import { rsaKey, sign } from '../sender-auth/helpers.ts';
import { startDnsServer, type DnsTestServer } from '../helpers/dns-server.ts';
import { startScriptedUpstream, unstuff, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { sendMail } from '../helpers/smtp-client.ts';

const key = rsaKey();

function zone(): Record<string, object> {
    return {
        'bank.example': { TXT: ['v=spf1 ip4:192.0.2.10 -all'], MX: [{ exchange: 'mx.bank.example', priority: 10 }] },
        '_dmarc.bank.example': { TXT: ['v=DMARC1; p=reject; adkim=s; aspf=s'] },
        'shop.example': { TXT: ['v=spf1 ip4:192.0.2.20 -all'] },
        '_dmarc.shop.example': { TXT: ['v=DMARC1; p=quarantine'] },
        'news.example': { TXT: ['v=spf1 -all'], ttl: 300 },
        '_dmarc.news.example': { TXT: ['v=DMARC1; p=reject'], ttl: 300 },
        'sel._domainkey.news.example': { TXT: [key.record], ttl: 300 },
        'slow.example': { TXT: ['v=spf1 -all'] },
        '_dmarc.slow.example': { TIMEOUT: true },
        // the attacker's own zones, beside a From in our domain (example.test, no DMARC record)
        'attacker.example': { TXT: ['v=spf1 +all'] },
        'broken.example': { TIMEOUT: true },
        'example.test': { TIMEOUT: true },
    };
}

function msg(from: string, subject: string, extra = ''): string {
    return `${extra}From: ${from}\r\nTo: bob@example.test\r\nSubject: ${subject}\r\nDate: Sun, 29 Nov 2026 01:00:00 +0000\r\nMessage-ID: <${subject.replace(/\W/g, '')}@test>\r\n\r\nHello.\r\n`;
}

describe('sender authentication through the proxy', () => {
    let dns: DnsTestServer;
    let up: ScriptedUpstream;
    let mw: TestApp;
    before(async () => {
        dns = await startDnsServer(zone());
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN', 'SIZE 1000000'] });
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                `dns: { servers: ["${dns.address}"], timeout: 300ms }`,
                'authentication: { timeout: 5s }',
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw.stop();
        await up.close();
        await dns.close();
    });

    it('refuses spoofed mail from a p=reject domain with 550 5.7.1 and a plain reason; nothing goes upstream', async () => {
        const before = up.transactions.filter((t) => t.completed).length;
        const r = await sendMail(mw.port(), {
            from: 'ceo@bank.example',
            to: ['bob@example.test'],
            data: msg('CEO <ceo@bank.example>', 'spoof'),
        });
        assert.equal(r.message?.code, 550, r.message?.raw);
        assert.match(r.message.text, /^5\.7\.1 .*bank\.example.*DMARC/);
        assert.equal(up.transactions.filter((t) => t.completed).length, before);
    });

    it('refuses a From that the DMARC parser reads as another domain than an RFC 5322 reader does', async () => {
        // each of these shows a reader bank.example (or example.test, ours), and mailauth's
        // parser another domain or none, so the p=reject policy would never have been applied
        const spellings = [
            'CEO <ceo@bank .example>',
            'ceo@bank (comment).example',
            'ceo@bank. example',
            'ceo@bank\t.example',
            'CEO <ceo@bank\r\n .example>',
            'ceo@bank.example>',
            '"CEO <ceo@bank.example>',
            'Boss <boss@example .test>',
            // one mailbox to the session, several domains to DMARC (a permerror, never judged)
            'CEO <ceo@bank.example@other.example@>',
            'Boss <boss@example.test@x@>',
        ];
        for (const from of spellings) {
            const before = up.transactions.filter((t) => t.completed).length;
            const r = await sendMail(mw.port(), {
                from: 'a@other.example',
                to: ['bob@example.test'],
                data: msg(from, 'ambiguous'),
            });
            assert.equal(r.message?.code, 550, `${JSON.stringify(from)}: ${r.message?.raw}`);
            assert.match(r.message.text, /^5\.7\.1 .*different domains/, JSON.stringify(from));
            assert.equal(up.transactions.filter((t) => t.completed).length, before);
        }
    });

    it('delivers the ordinary spellings of a From address as before', async () => {
        const spellings = [
            'plain@plain.example',
            'John Doe <john@plain.example>',
            '"Doe, John" <john@plain.example>',
            'john@plain.example (John Doe)',
            '=?utf-8?q?J=C3=B6rg?= <j@plain.example>',
            '<John@PLAIN.Example>',
            '"a@bank.example" <x@plain.example>',
            'Folded\r\n <folded@plain.example>',
        ];
        for (const from of spellings) {
            const r = await sendMail(mw.port(), {
                from: 'a@other.example',
                to: ['bob@example.test'],
                data: msg(from, 'ordinary'),
            });
            assert.equal(r.message?.code, 250, `${JSON.stringify(from)}: ${r.message?.raw}`);
        }
    });

    it("tags a signed message with text appended after the signature's l= (and not the message as signed)", async () => {
        const original = msg('News <letters@news.example>', 'partly signed');
        const body = original.slice(original.indexOf('\r\n\r\n') + 4);
        const signed = await sign(original, 'news.example', 'sel', key, { maxBodyLength: Buffer.byteLength(body) });
        const appended = `${signed}URGENT: pay invoice 4711 to the account below today.\r\n`;
        const verdicts: string[] = [];
        for (const data of [signed, appended]) {
            const r = await sendMail(mw.port(), { from: 'bounce@other.example', to: ['bob@example.test'], data });
            assert.equal(r.message?.code, 250, r.message?.raw);
            const forwarded = unstuff(up.transactions.at(-1)!.data!)
                .toString('latin1')
                .replace(/\r\n[ \t]+/g, ' ');
            assert.match(forwarded, /dkim=pass/);
            verdicts.push(/^X-Mailwarden-Verdict: (\w+); rules=([^;]*);/m.exec(forwarded)?.slice(1, 3).join(' ') ?? '');
            if (data === appended) {
                assert.match(
                    forwarded,
                    /^X-Mailwarden-Reason: DKIM signature covers the body only in part: \d+ bytes after its l= are unsigned/m,
                );
            }
        }
        assert.deepEqual(verdicts, ['accept ', 'tag dkim-partial-body']);
    });

    it("tags a message that passes DMARC for its own domain but shows another's address in the From name", async () => {
        const verdicts: string[] = [];
        for (const from of ['News <letters@news.example>', '"ceo@bank.example" <letters@news.example>']) {
            const signed = await sign(msg(from, 'display name'), 'news.example', 'sel', key);
            const r = await sendMail(mw.port(), {
                from: 'bounce@other.example',
                to: ['bob@example.test'],
                data: signed,
            });
            assert.equal(r.message?.code, 250, r.message?.raw);
            const forwarded = unstuff(up.transactions.at(-1)!.data!)
                .toString('latin1')
                .replace(/\r\n[ \t]+/g, ' ');
            assert.match(forwarded, /dmarc=pass/);
            verdicts.push(/^X-Mailwarden-Verdict: (\w+); rules=([^;]*);/m.exec(forwarded)?.slice(1, 3).join(' ') ?? '');
            if (from.startsWith('"')) {
                assert.match(
                    forwarded,
                    /^X-Mailwarden-Reason: From shows an address at bank\.example in its name, but the message is from news\.example\r$/m,
                );
            }
        }
        assert.deepEqual(verdicts, ['accept ', 'tag display-name-spoof']);
    });

    it('refuses a signed message with a Subject or Reply-To put on top (RFC 5322 allows one): 550 5.6.0', async () => {
        // the signature covers the bottom instance and passes; a reader would show the top one
        const signed = await sign(msg('News <letters@news.example>', 'weekly news'), 'news.example', 'sel', key);
        for (const added of [
            'Subject: URGENT: confirm the wire transfer today\r\n',
            'Reply-To: a@evil.example\r\nReply-To: b@evil.example\r\n',
        ]) {
            const before = up.transactions.filter((t) => t.completed).length;
            const r = await sendMail(mw.port(), {
                from: 'bounce@other.example',
                to: ['bob@example.test'],
                data: added + signed,
            });
            assert.equal(r.message?.code, 550, r.message?.raw);
            assert.match(r.message.text, /^5\.6\.0 Message refused: it has more than one (Subject|Reply-To) field/);
            assert.equal(up.transactions.filter((t) => t.completed).length, before, 'nothing upstream');
        }
        // a second MIME-Version, as web form mail libraries write one, is delivered
        const twice = await sign(
            msg('News <letters@news.example>', 'form', 'MIME-Version: 1.0\r\nMIME-Version: 1.0\r\n'),
            'news.example',
            'sel',
            key,
        );
        const r = await sendMail(mw.port(), { from: 'bounce@other.example', to: ['bob@example.test'], data: twice });
        assert.equal(r.message?.code, 250, r.message?.raw);
    });

    it('delivers aligned DKIM-signed mail with dkim=pass and dmarc=pass', async () => {
        const signed = await sign(msg('News <letters@news.example>', 'signed'), 'news.example', 'sel', key);
        const r = await sendMail(mw.port(), { from: 'bounce@other.example', to: ['bob@example.test'], data: signed });
        assert.equal(r.message?.code, 250, r.message?.raw);
        const data = unstuff(up.transactions.at(-1)!.data!)
            .toString('latin1')
            .replace(/\r\n[ \t]+/g, ' ');
        assert.match(data, /^Authentication-Results: mx\.example\.test; .*dkim=pass/m);
        assert.match(data, /^Authentication-Results: mx\.example\.test; .*dmarc=pass/m);
        assert.match(data, /^Received-SPF: /m);
        assert.match(data, /^X-Mailwarden-Verdict: accept;/m);
    });

    it('quarantines a p=quarantine failure: forwarded with the quarantine header', async () => {
        const r = await sendMail(mw.port(), {
            from: 'sales@shop.example',
            to: ['bob@example.test'],
            data: msg('sales@shop.example', 'quarantine'),
        });
        assert.equal(r.message?.code, 250, r.message?.raw);
        const data = unstuff(up.transactions.at(-1)!.data!).toString('latin1');
        assert.match(data, /^X-Mailwarden-Quarantine: \w+$/m);
        assert.match(data, /^X-Mailwarden-Verdict: quarantine; rules=[^;]*dmarc[^;]*;/m);
    });

    it('answers 451 when a DNS timeout decides the outcome, and the upstream gets nothing', async () => {
        const before = up.transactions.filter((t) => t.completed).length;
        const r = await sendMail(mw.port(), {
            from: 'x@slow.example',
            to: ['bob@example.test'],
            data: msg('x@slow.example', 'slow'),
        });
        assert.equal(r.message?.code, 451, r.message?.raw);
        assert.match(r.message.text, /^4\.7\.5 /);
        assert.equal(up.transactions.filter((t) => t.completed).length, before);
    });

    it('removes a forged Authentication-Results that claims our authserv-id', async () => {
        const forged = 'Authentication-Results: mx.example.test; dmarc=pass header.from=bank.example\r\n';
        const signed = await sign(msg('News <letters@news.example>', 'forged', forged), 'news.example', 'sel', key);
        const r = await sendMail(mw.port(), { from: 'bounce@other.example', to: ['bob@example.test'], data: signed });
        assert.equal(r.message?.code, 250);
        const data = unstuff(up.transactions.at(-1)!.data!).toString('latin1');
        assert.doesNotMatch(data, /header\.from=bank\.example/);
        assert.equal(data.match(/^Authentication-Results: mx\.example\.test;/gm)?.length, 1);
    });

    it('asks DNS once per record while its TTL lasts', async () => {
        const count = (): number => dns.queries.filter((q) => q.name.endsWith('news.example')).length;
        const signed = await sign(msg('News <letters@news.example>', 'cache1'), 'news.example', 'sel', key);
        await sendMail(mw.port(), { from: 'bounce@other.example', to: ['bob@example.test'], data: signed });
        const afterFirst = count();
        for (let i = 0; i < 3; i++) {
            const again = await sign(
                msg('News <letters@news.example>', `cache-again-${i}`),
                'news.example',
                'sel',
                key,
            );
            const r = await sendMail(mw.port(), {
                from: 'bounce@other.example',
                to: ['bob@example.test'],
                data: again,
            });
            assert.equal(r.message?.code, 250);
        }
        assert.equal(count(), afterFirst, 'no new queries for news.example records within their TTL');
        const perRecord = new Map<string, number>();
        for (const q of dns.queries.filter((q) => q.name.endsWith('news.example'))) {
            const k = `${q.type} ${q.name}`;
            perRecord.set(k, (perRecord.get(k) ?? 0) + 1);
        }
        for (const [k, n] of perRecord) assert.equal(n, 1, `${k} asked ${n} times`);
    });
    describe('a From in our own domain (example.test) must be proved', () => {
        const send = (mailFrom: string, from: string, subject: string) =>
            sendMail(mw.port(), { from: mailFrom, to: ['bob@example.test'], data: msg(from, subject) });

        it('an SPF pass for the envelope domain the client chose proves nothing: 550', async () => {
            const before = up.transactions.filter((t) => t.completed).length;
            const r = await send('ceo@attacker.example', 'CEO <ceo@example.test>', 'own-spf-other');
            assert.equal(r.message?.code, 550, r.message?.raw);
            assert.match(
                r.message.text,
                /^5\.7\.1 Message refused: it claims to come from a domain this server is responsible for/,
            );
            assert.equal(up.transactions.filter((t) => t.completed).length, before);
        });

        it('an SPF error of the envelope domain the client chose does not let it through: 550', async () => {
            const r = await send('ceo@broken.example', 'CEO <ceo@example.test>', 'own-spf-broken');
            assert.equal(r.message?.code, 550, r.message?.raw);
            assert.match(r.message.text, /^5\.7\.1 Message refused: it claims to come from a domain this server/);
        });

        it('an SPF error of our own domain defers it: 451 4.7.5', async () => {
            const r = await send('ceo@example.test', 'CEO <ceo@example.test>', 'own-spf-temperror');
            assert.equal(r.message?.code, 451, r.message?.raw);
            assert.match(r.message.text, /^4\.7\.5 Message deferred: it claims to come from a domain this server/);
        });
    });

    it('refuses a From without an address with a domain: 550, nothing upstream', async () => {
        const before = up.transactions.filter((t) => t.completed).length;
        // (`CEO <ceo>` is read by DMARC's parser as the domain "ceo": the ambiguous-author rule's case)
        for (const from of ['ceo', '']) {
            const r = await sendMail(mw.port(), {
                from: 'a@shop.example',
                to: ['bob@example.test'],
                data: msg(from, 'no-author'),
            });
            assert.equal(r.message?.code, 550, `${JSON.stringify(from)}: ${r.message?.raw}`);
            assert.match(r.message.text, /^5\.7\.1 Message refused: its From field holds no address with a domain/);
        }
        assert.equal(up.transactions.filter((t) => t.completed).length, before);
    });
});
