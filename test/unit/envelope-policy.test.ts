/**
 * The envelope decisions without a network: what EHLO offers for a listener and an upstream
 * (src/envelope/extensions.ts), the check of MAIL and RCPT parameters against that offer, and
 * relay control (src/envelope/relay.ts), sender-specified routing in local parts included.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { defaultListener } from '../../src/config/defaults.ts';
import type { ListenerConfig, UpstreamConfig } from '../../src/config/types.ts';
import { parseEnvelopeCommand, type EnvelopeParam, type Mailbox } from '../../src/envelope/command.ts';
import { checkMailParams, checkRcptParams, computeOffer, type EhloOffer } from '../../src/envelope/extensions.ts';
import { relayPolicy } from '../../src/envelope/relay.ts';
import type { UpstreamCapabilities } from '../../src/upstream/capabilities.ts';

const MX: ListenerConfig = { ...defaultListener('mx', '127.0.0.1', 25, 'mx', true), maxMessageSize: 50_000_000 };
const SUBMISSION: ListenerConfig = defaultListener('sub', '127.0.0.1', 587, 'submission', true);
const POSTFIX: UpstreamCapabilities = {
    size: 10_240_000,
    eightBitMime: true,
    smtputf8: true,
    dsn: true,
    requireTls: false,
};

function params(line: string): EnvelopeParam[] {
    const p = parseEnvelopeCommand('mail', Buffer.from(`MAIL FROM:<a@example.org> ${line}`));
    assert.ok(p.ok, line);
    return [...p.params];
}

function rcptParams(line: string): EnvelopeParam[] {
    const p = parseEnvelopeCommand('rcpt', Buffer.from(`RCPT TO:<b@x.example> ${line}`));
    assert.ok(p.ok, line);
    return [...p.params];
}

function mailbox(address: string): Mailbox {
    const p = parseEnvelopeCommand('rcpt', Buffer.from(`RCPT TO:<${address}>`));
    assert.ok(p.ok, address);
    return p.mailbox;
}

describe('what EHLO offers', () => {
    it('SIZE is the smaller of the listener limit and the upstream limit less the room for our fields', () => {
        const plain = { secure: false, extended: true };
        // 32 KiB under Postfix's limit: a message of that size still fits with our fields on top
        assert.equal(computeOffer(MX, POSTFIX, plain).sizeLimit, 10_240_000 - 32_768);
        // a listener limit equal to the upstream's (the documented set-up) gives the same
        assert.equal(computeOffer({ ...MX, maxMessageSize: 10_240_000 }, POSTFIX, plain).sizeLimit, 10_207_232);
        assert.equal(computeOffer({ ...MX, maxMessageSize: 10_220_000 }, POSTFIX, plain).sizeLimit, 10_207_232);
        assert.equal(computeOffer({ ...MX, maxMessageSize: 1000 }, POSTFIX, plain).sizeLimit, 1000);
        assert.equal(computeOffer(MX, { ...POSTFIX, size: null }, plain).sizeLimit, 50_000_000);
        // nothing learnt yet: the upstream's limit is taken to be the listener's, room kept
        assert.equal(computeOffer(MX, null, plain).sizeLimit, 50_000_000 - 32_768);
    });

    it('SIZE under a small upstream limit keeps half of it, never nothing', () => {
        const plain = { secure: false, extended: true };
        const under = (size: number): number => computeOffer(MX, { ...POSTFIX, size }, plain).sizeLimit;
        assert.equal(under(65_536), 32_768);
        assert.equal(under(65_537), 32_769);
        assert.equal(under(40_000), 20_000);
        assert.equal(under(20_000), 10_000);
        assert.equal(under(3), 2);
        assert.equal(under(1), 1);
        for (let size = 1; size < 200_000; size += 997) {
            const limit = under(size);
            assert.ok(limit >= size / 2 && limit <= size && limit >= 1, `${size}: ${limit}`);
        }
    });

    it('DSN and SMTPUTF8 follow the upstream; REQUIRETLS needs TLS on both sides; AUTH only on submission', () => {
        assert.deepEqual(computeOffer(MX, POSTFIX, { secure: false, extended: true }), {
            extended: true,
            sizeLimit: 10_207_232,
            eightBitMime: true,
            smtputf8: true,
            dsn: true,
            requireTls: false,
            auth: false,
        });
        const tlsUpstream = { ...POSTFIX, requireTls: true };
        assert.equal(computeOffer(MX, tlsUpstream, { secure: false, extended: true }).requireTls, false);
        assert.equal(computeOffer(MX, tlsUpstream, { secure: true, extended: true }).requireTls, true);
        assert.equal(computeOffer(SUBMISSION, POSTFIX, { secure: true, extended: true }).auth, true);
        const lean = computeOffer(MX, { ...POSTFIX, dsn: false, smtputf8: false }, { secure: true, extended: true });
        assert.equal(lean.dsn, false);
        assert.equal(lean.smtputf8, false);
    });

    it('before anything is learnt: no DSN, no REQUIRETLS; after HELO: nothing', () => {
        const unknown = computeOffer(MX, null, { secure: true, extended: true });
        assert.equal(unknown.dsn, false);
        assert.equal(unknown.requireTls, false);
        assert.equal(unknown.smtputf8, true);
        const helo = computeOffer(SUBMISSION, { ...POSTFIX, requireTls: true }, { secure: true, extended: false });
        assert.deepEqual(
            [helo.extended, helo.eightBitMime, helo.smtputf8, helo.dsn, helo.requireTls, helo.auth],
            [false, false, false, false, false, false],
        );
        assert.equal(helo.sizeLimit, 10_207_232, 'the limit still applies');
    });
});

describe('MAIL and RCPT parameters against the offer', () => {
    const offer: EhloOffer = computeOffer(MX, POSTFIX, { secure: false, extended: true });

    it('passes on what was offered, values as written', () => {
        assert.deepEqual(checkMailParams(params('SIZE=42 BODY=8bitmime SMTPUTF8 RET=full ENVID=x+2By'), offer), {
            ok: { size: 42, body: '8BITMIME', smtputf8: true, ret: 'FULL', envid: 'x+2By' },
        });
        const rcpt = parseEnvelopeCommand(
            'rcpt',
            Buffer.from('RCPT TO:<b@x.example> notify=delay,failure ORCPT=rfc822;b@x.example'),
        );
        assert.ok(rcpt.ok);
        assert.deepEqual(checkRcptParams(rcpt.params, offer, false), {
            ok: { notify: 'DELAY,FAILURE', orcpt: 'rfc822;b@x.example' },
        });
    });

    it('refuses what was not offered with param-not-offered (555)', () => {
        for (const line of ['REQUIRETLS', 'AUTH=<>', 'MT-PRIORITY=1', 'X-ANYTHING']) {
            assert.deepEqual(checkMailParams(params(line), offer), {
                refused: { situation: 'param-not-offered', keyword: line.split('=')[0] },
            });
        }
        const noDsn = { ...offer, dsn: false };
        assert.equal('refused' in checkMailParams(params('RET=HDRS'), noDsn), true);
        assert.equal('refused' in checkMailParams(params('ENVID=x'), noDsn), true);
        assert.equal('refused' in checkMailParams(params('SIZE=1'), { ...offer, extended: false }), true);
    });

    it('takes AUTH= where AUTH was offered (submission): <> or an xtext mailbox', () => {
        const sub = computeOffer(SUBMISSION, POSTFIX, { secure: true, extended: true });
        assert.deepEqual(checkMailParams(params('AUTH=<>'), sub), { ok: {} });
        assert.deepEqual(checkMailParams(params('AUTH=alice+40example.com'), sub), { ok: {} });
        assert.equal('refused' in checkMailParams(params('AUTH=a+zz'), sub), true);
    });

    it('refuses malformed values with param-invalid (501), and a SIZE over the limit with message-too-big', () => {
        const invalid = (line: string): string | undefined => {
            const r = checkMailParams(params(line), offer);
            return 'refused' in r ? r.refused.situation : undefined;
        };
        for (const line of [
            'SIZE=12a',
            'SIZE=123456789012345678901',
            'BODY=BINARYMIME',
            'SMTPUTF8=1',
            'RET=BOTH',
            'ENVID=a+4',
            `ENVID=${'x'.repeat(101)}`,
        ]) {
            assert.equal(invalid(line), 'param-invalid', line);
        }
        assert.equal(invalid(`ENVID=${'+41'.repeat(100)}`), undefined, '100 characters once decoded');
        assert.equal(invalid('SIZE=10207233'), 'message-too-big');
        assert.equal(invalid('SIZE=10207232'), undefined);
        const rcpt = (line: string, smtputf8 = false): string | undefined => {
            const p = parseEnvelopeCommand('rcpt', Buffer.from(`RCPT TO:<b@x.example> ${line}`));
            assert.ok(p.ok, line);
            const r = checkRcptParams(p.params, offer, smtputf8);
            return 'refused' in r ? r.refused.situation : undefined;
        };
        for (const line of [
            'NOTIFY=NEVER,DELAY',
            'NOTIFY=SUCCESS,SUCCESS',
            'ORCPT=rfc822',
            'ORCPT=rfc822;a+zz',
            'ORCPT=;x',
        ]) {
            assert.equal(rcpt(line), 'param-invalid', line);
        }
        // RFC 6533: UTF-8 in ORCPT only in an SMTPUTF8 transaction
        assert.equal(rcpt('ORCPT=utf-8;jörg@x.example'), 'param-invalid');
        assert.equal(rcpt('ORCPT=utf-8;jörg@x.example', true), undefined);
        // RFC 3461 section 4.2: the entire ORCPT parameter may be up to 500 characters
        const local = (n: number): string => `rfc822;${'a'.repeat(n - 'rfc822;@x.example'.length)}@x.example`;
        assert.equal(rcpt(`ORCPT=${local(500)}`), undefined, '500 characters');
        assert.deepEqual(checkRcptParams(rcptParams(`ORCPT=${local(501)}`), offer, false), {
            refused: { situation: 'param-invalid', keyword: 'ORCPT', why: 'is longer than 500 characters' },
        });
        // the bound holds for the value as sent upstream, its escapes included: 500 backslashes
        // would go as 2,970 characters, a line Postfix refuses
        const escapedTooLong = {
            refused: {
                situation: 'param-invalid',
                keyword: 'ORCPT',
                why: 'is longer than 500 characters with its quotes, backslashes and angle brackets escaped',
            },
        };
        const utf8Backslashes = `utf-8;${'\\'.repeat(494)}`;
        assert.equal(utf8Backslashes.length, 500);
        assert.deepEqual(checkRcptParams(rcptParams(`ORCPT=${utf8Backslashes}`), offer, true), escapedTooLong);
        assert.deepEqual(
            checkRcptParams(rcptParams(`ORCPT=rfc822;${'\\'.repeat(200)}@x`), offer, false),
            escapedTooLong,
        );
        // at the bound once escaped: taken, and sent as exactly 500 characters
        const atBound = `rfc822;${'\\'.repeat(50)}${'a'.repeat(500 - 7 - 150)}`;
        const r = checkRcptParams(rcptParams(`ORCPT=${atBound}`), offer, false);
        assert.ok('ok' in r);
        assert.equal(r.ok.orcpt?.length, 500);
        assert.equal(rcpt(`ORCPT=${atBound}a`), 'param-invalid');
    });

    it('writes a quote, backslash or angle bracket of ENVID and ORCPT as its escape, and keeps what it decodes to', () => {
        // Postfix's command reader (smtpd_token.c) takes `"` for the start of a quoted string and
        // `\` for an escape: either would join REQUIRETLS or the next parameter to this value
        const envid = (value: string): unknown => {
            const r = checkMailParams(params(`ENVID=${value}`), offer);
            return 'ok' in r ? r.ok.envid : r.refused;
        };
        assert.equal(envid('a"'), 'a+22');
        assert.equal(envid('a\\'), 'a+5C');
        assert.equal(envid('"<x\\y>"'), '+22+3Cx+5Cy+3E+22');
        assert.equal(envid('x+2By'), 'x+2By', 'an escape already there is kept');
        const orcpt = (value: string, smtputf8 = false): unknown => {
            const r = checkRcptParams(rcptParams(`ORCPT=${value}`), offer, smtputf8);
            return 'ok' in r ? r.ok.orcpt : r.refused;
        };
        assert.equal(orcpt('rfc822;"a\\b"@x.example'), 'rfc822;+22a+5Cb+22@x.example');
        // RFC 6533 section 3: a utf-8 address escapes as \x{XX}, which Postfix decodes there (+XX it does not)
        assert.equal(orcpt('utf-8;"a\\x{20}b"@x.example'), 'utf-8;\\x{22}a\\x{20}b\\x{22}@x.example');
        assert.equal(orcpt('UTF-8;<j\\x{F6}rg@x.example>'), 'UTF-8;\\x{3C}j\\x{F6}rg@x.example\\x{3E}');
        assert.equal(orcpt('utf-8;"jörg\\"@x.example', true), 'utf-8;\\x{22}jörg\\x{5C}\\x{22}@x.example');
    });
});

describe('relay control', () => {
    const smtp: UpstreamConfig = {
        kind: 'smtp',
        url: 'smtp://127.0.0.1:10026',
        host: '127.0.0.1',
        port: 10026,
        xclient: true,
        starttls: 'off',
        tlsVerify: false,
        connectTimeoutMs: 1,
        commandTimeoutMs: 1,
        dataTimeoutMs: 1,
        keepAliveMs: 1,
    };
    const config = {
        domains: ['example.com', 'xn--bcher-kva.example'],
        relayDomains: ['partner.example', '.sub.example'],
        upstream: smtp,
    };

    it('on mx: our domains exactly, relayDomains as written, Postmaster; otherwise refused unless logged in', () => {
        const policy = relayPolicy(config, MX);
        const verdicts = Object.fromEntries(
            [
                'a@example.com',
                'a@EXAMPLE.COM',
                'a@bücher.example',
                'a@xn--bcher-kva.example',
                'a@partner.example',
                'a@x.y.sub.example',
                'Postmaster',
                'a@www.example.com',
                'a@sub.example',
                'a@notexample.com',
                'a@[192.0.2.1]',
            ].map((a) => [a, policy.verdict(mailbox(a), false)]),
        );
        assert.deepEqual(verdicts, {
            'a@example.com': 'local',
            'a@EXAMPLE.COM': 'local',
            'a@bücher.example': 'local',
            'a@xn--bcher-kva.example': 'local',
            'a@partner.example': 'relay',
            'a@x.y.sub.example': 'relay',
            Postmaster: 'local',
            'a@www.example.com': 'refused',
            'a@sub.example': 'refused',
            'a@notexample.com': 'refused',
            'a@[192.0.2.1]': 'refused',
        });
        assert.equal(policy.verdict(mailbox('a@elsewhere.example'), true), 'authenticated');
    });

    it('on mx: a local part routing on (%, !, a quoted @) is refused, to a foreign domain (routed) or within ours (routing)', () => {
        const policy = relayPolicy(config, MX);
        const cases: Record<string, string> = {
            // each spelling of sender-specified routing through one of our domains to a foreign one
            'victim%evil.example@example.com': 'routed',
            'evil.example!victim@example.com': 'routed',
            '"victim@evil.example"@example.com': 'routed',
            '"victim%evil.example"@example.com': 'routed',
            '"evil.example!victim"@example.com': 'routed',
            'victim%EVIL.example@EXAMPLE.com': 'routed',
            // routed on to one of our domains or to relayDomains: Postfix delivers or relays it
            // there, to a mailbox the rules and limits did not read; refused all the same
            'bob%example.com@example.com': 'routing',
            'bob%bücher.example@example.com': 'routing',
            'example.com!bob@example.com': 'routing',
            '"bob@example.com"@example.com': 'routing',
            'bob%partner.example@example.com': 'routing',
            'bob%x.sub.example@example.com': 'routing',
            '"bob@partner.example"@example.com': 'routing',
            // several hops: each one is followed (the last @, else the first !, else the last %)
            'victim%evil.example%example.com@example.com': 'routed',
            'example.com!evil.example!victim@example.com': 'routed',
            '"victim%evil.example@example.com"@example.com': 'routed',
            'bob%example.com%example.com@example.com': 'routing',
            // routing left in an address for a relay domain (Postfix: RESOLVE_FLAG_ROUTED)
            'victim%evil.example@partner.example': 'routed',
            'bob%example.com@partner.example': 'routed',
            // an empty hop: Postfix drops it and delivers to what is left (`victim`), a mailbox
            // other than the one rules and limits read; routing all the same
            'victim%@example.com': 'routing',
            'victim%%@example.com': 'routing',
            '"100%"@example.com': 'routing',
            '!victim@example.com': 'routing',
            '"!bob"@example.com': 'routing',
            '"bob@"@example.com': 'routing',
            'victim%%evil.example@example.com': 'routed',
            // a hop that is no domain name: an address literal, a bad label
            '"victim%[192.0.2.1]"@example.com': 'routed',
            'victim%-evil-@example.com': 'routed',
            '"victim@evil.example%example.com"@example.com': 'routed',
            // no routing at all
            'a.b+tag@example.com': 'local',
            // a foreign domain stays a plain relay refusal, whatever the local part holds
            'victim%example.com@elsewhere.example': 'refused',
        };
        const verdicts = Object.fromEntries(Object.keys(cases).map((a) => [a, policy.verdict(mailbox(a), false)]));
        assert.deepEqual(verdicts, cases);
        assert.deepEqual(policy.decide(mailbox('victim%EVIL.example@example.com'), false), {
            verdict: 'routed',
            routedDomain: 'evil.example',
        });
        assert.deepEqual(policy.decide(mailbox('"victim@evil.example"@example.com'), false), {
            verdict: 'routed',
            routedDomain: 'evil.example',
        });
        assert.deepEqual(policy.decide(mailbox('"victim%[192.0.2.1]"@example.com'), false), {
            verdict: 'routed',
            routedDomain: null,
        });
        assert.deepEqual(policy.decide(mailbox('bob%bücher.example@example.com'), false), {
            verdict: 'routing',
            routedDomain: 'xn--bcher-kva.example',
        });
    });

    it('a logged-in client, a submission listener and the open Maildir defaults may route', () => {
        for (const a of [
            'victim%evil.example@example.com',
            'evil.example!victim@example.com',
            '"victim@evil.example"@example.com',
            'bob%example.com@example.com',
            '"bob@example.com"@example.com',
        ]) {
            assert.equal(relayPolicy(config, MX).verdict(mailbox(a), true), 'authenticated', a);
            assert.equal(relayPolicy(config, SUBMISSION).verdict(mailbox(a), true), 'authenticated', a);
            assert.equal(relayPolicy(config, SUBMISSION).verdict(mailbox(a), false), 'open', a);
            const maildir: UpstreamConfig = { kind: 'maildir', url: 'maildir:./m', path: '/tmp/m' };
            const open = relayPolicy({ domains: [], relayDomains: [], upstream: maildir }, MX);
            assert.equal(open.verdict(mailbox(a.replace('example.com', 'example.org')), false), 'open', a);
        }
    });

    it('submission listeners and the Maildir defaults without domains accept every recipient', () => {
        assert.equal(relayPolicy(config, SUBMISSION).verdict(mailbox('a@elsewhere.example'), false), 'open');
        const maildir: UpstreamConfig = { kind: 'maildir', url: 'maildir:./m', path: '/tmp/m' };
        const open = relayPolicy({ domains: [], relayDomains: [], upstream: maildir }, MX);
        assert.equal(open.verdict(mailbox('a@elsewhere.example'), false), 'open');
        const closed = relayPolicy({ domains: ['example.com'], relayDomains: [], upstream: maildir }, MX);
        assert.equal(closed.verdict(mailbox('a@elsewhere.example'), false), 'refused');
        const none = relayPolicy({ domains: [], relayDomains: [], upstream: smtp }, MX);
        assert.equal(none.verdict(mailbox('a@elsewhere.example'), false), 'refused', 'never open in front of SMTP');
    });
});
