/**
 * The envelope end to end, through a real app into a scripted upstream that records exactly
 * what reaches it: relay control on mx listeners (domains, relayDomains, sender-specified routing
 * in local parts, the Maildir defaults),
 * strict MAIL and RCPT parsing (invalid UTF-8, SMTPUTF8 for non-ASCII addresses, quoted local
 * parts, A-labels kept), ESMTP parameters (only what was offered, DSN and REQUIRETLS passed on
 * exactly, 555 for the rest), SIZE as the smaller of ours and the upstream's, the recipient limit
 * (null sender included), the client names written into Received, and `explain` agreeing.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { explainMessage } from '../../src/commands/explain.ts';
import { loadConfig } from '../../src/config/load.ts';
import { loadRuleSet } from '../../src/rules/index.ts';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startDnsServer, type DnsTestServer } from '../helpers/dns-server.ts';
import { startScriptedUpstream, unstuff, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { sendMail, smtpConnect, type SmtpClient, type SmtpReply } from '../helpers/smtp-client.ts';
import { createTestCertificate, type TestCertificate } from '../helpers/tls-cert.ts';

const XCLIENT = 'XCLIENT NAME ADDR PORT PROTO HELO LOGIN';
const MSG = 'From: a@example.org\r\nTo: b@example.test\r\nSubject: envelope\r\n\r\nHello.\r\n';

function config(upstreamPort: number, extra: readonly string[] = []): string {
    return [
        'hostname: mx.example.test',
        'domains: [example.test, bücher.example]',
        'relayDomains: [partner.example, .sub.example]',
        'listeners:',
        '  - { name: mx, host: 127.0.0.1, port: 0, mode: mx, maxMessageSize: 100KB }',
        '  - { name: few, host: 127.0.0.1, port: 0, mode: mx, maxRecipients: 3 }',
        `upstream: { url: "smtp://127.0.0.1:${upstreamPort}", timeout: 2s, dataTimeout: 2s, connectTimeout: 1s }`,
        'http: false',
        ...extra,
    ].join('\n');
}

/** A connected client after EHLO. */
async function client(port: number, helo = 'client.example'): Promise<{ c: SmtpClient; ehlo: SmtpReply }> {
    const c = await smtpConnect(port);
    await c.greeting();
    const ehlo = await c.cmd(`EHLO ${helo}`);
    return { c, ehlo };
}

/** Sends one command line given as raw octets and waits for the reply. */
async function raw(c: SmtpClient, ...parts: (string | Buffer)[]): Promise<SmtpReply> {
    c.write(
        Buffer.concat([...parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'utf8') : p)), Buffer.from('\r\n')]),
    );
    return c.reply();
}

async function refusals(mw: TestApp, reason: string): Promise<number> {
    const values = (await mw.app.metrics.envelopeRefusals.get()).values;
    return values.filter((v) => v.labels.reason === reason).reduce((n, v) => n + v.value, 0);
}

/** Every command line the upstream received that starts with `prefix`. */
function sent(up: ScriptedUpstream, prefix: string): string[] {
    return up.commands.filter((l) => l.startsWith(prefix));
}

describe('envelope: relay control on mx listeners', () => {
    let up: ScriptedUpstream;
    let mw: TestApp;
    before(async () => {
        up = await startScriptedUpstream({ ehlo: [XCLIENT, '8BITMIME', 'SMTPUTF8', 'PIPELINING'] });
        mw = await startApp(config(up.port));
    });
    after(async () => {
        await mw.stop();
        await up.close();
    });

    it('refuses a recipient outside domains and relayDomains with 550 5.7.1, without asking the upstream', async () => {
        const before = await refusals(mw, 'relay');
        const { c } = await client(mw.port());
        assert.equal((await c.cmd('MAIL FROM:<>')).code, 250);
        const r = await c.cmd('RCPT TO:<victim@elsewhere.example>');
        assert.equal(r.code, 550, r.raw);
        assert.match(r.text, /^5\.7\.1 Relaying denied: .* elsewhere\.example is not one of them; .*\(id \w+\)$/);
        assert.equal((await c.cmd('RCPT TO:<bob@example.test>')).code, 250);
        c.close();
        assert.deepEqual(sent(up, 'RCPT TO:<victim@'), []);
        assert.equal(await refusals(mw, 'relay'), before + 1);
        const line = mw.logs.find((l) => l.refused === 'relay');
        assert.equal(line?.rcptDomain, 'elsewhere.example');
    });

    it('refuses a local part routing on to a foreign domain (%, !, quoted @) like a relay attempt, nothing upstream', async () => {
        const before = await refusals(mw, 'relay');
        const logged = mw.logs.length;
        const { c } = await client(mw.port());
        assert.equal((await c.cmd('MAIL FROM:<spam@spammer.example>')).code, 250);
        const routed = [
            'victim%evil.example@example.test',
            'evil.example!victim@example.test',
            '"victim@evil.example"@example.test',
            '"victim%evil.example"@example.test',
            'victim%evil.example%example.test@example.test',
            'victim%example.test@partner.example',
        ];
        for (const rcpt of routed) {
            const r = await c.cmd(`RCPT TO:<${rcpt}>`);
            assert.equal(r.code, 550, `${rcpt}: ${r.raw}`);
            assert.match(
                r.text,
                /^5\.7\.1 Relaying denied: the recipient's local part routes the message on to /,
                rcpt,
            );
            assert.match(r.text, /\(id \w+\)$/, rcpt);
        }
        const first = await c.cmd('RCPT TO:<victim%evil.example@example.test>');
        assert.match(first.text, /routes the message on to evil\.example \(with %, ! or @\)/);
        // routed on to one of our domains: refused too (Postfix would deliver it to a mailbox the
        // rules did not read), with its own reply
        const within = [
            'bob%example.test@example.test',
            'example.test!bob@example.test',
            '"bob@example.test"@example.test',
        ];
        for (const rcpt of within) {
            const r = await c.cmd(`RCPT TO:<${rcpt}>`);
            assert.equal(r.code, 550, `${rcpt}: ${r.raw}`);
            assert.match(r.text, /^5\.7\.1 Sender-specified routing is not accepted: .*\(id \w+\)$/, rcpt);
        }
        assert.equal((await c.cmd('RCPT TO:<bob@example.test>')).code, 250);
        assert.equal((await c.cmd('DATA')).code, 354);
        c.write(`${MSG}.\r\n`);
        assert.equal((await c.reply()).code, 250);
        c.close();
        await up.idle();
        const tx = up.transactions.at(-1)!;
        assert.equal(tx.mail, 'spam@spammer.example');
        assert.deepEqual(tx.rcpts, ['bob@example.test']);
        assert.deepEqual(
            up.commands.filter((l) => /evil\.example|victim/i.test(l)),
            [],
            'no routed recipient reaches the upstream',
        );
        assert.equal(await refusals(mw, 'relay'), before + routed.length + 1 + within.length);
        const lines = mw.logs.slice(logged).filter((l) => l.refused === 'relay');
        assert.equal(lines.length, routed.length + 1 + within.length);
        assert.equal(lines.at(-1)?.routedDomain, 'example.test');
        assert.equal(lines[0]?.rcptDomain, 'example.test');
        assert.equal(lines[0]?.routedDomain, 'evil.example');
        assert.equal(lines[0]?.reply, 550);
    });

    it('matches domains exactly and relayDomains as written (.name: every subdomain), Postmaster always', async () => {
        const { c } = await client(mw.port());
        assert.equal((await c.cmd('MAIL FROM:<a@example.org> SMTPUTF8')).code, 250);
        const answers: Record<string, number> = {};
        for (const rcpt of [
            'bob@example.test',
            'Bob@EXAMPLE.Test',
            'x@xn--bcher-kva.example',
            'x@bücher.example',
            'x@partner.example',
            'x@deep.down.sub.example',
            'Postmaster',
            'x@mail.example.test',
            'x@www.partner.example',
            'x@sub.example',
            'x@[127.0.0.1]',
        ]) {
            answers[rcpt] = (await c.cmd(`RCPT TO:<${rcpt}>`)).code;
        }
        c.close();
        assert.deepEqual(answers, {
            'bob@example.test': 250,
            'Bob@EXAMPLE.Test': 250,
            'x@xn--bcher-kva.example': 250,
            'x@bücher.example': 250,
            'x@partner.example': 250,
            'x@deep.down.sub.example': 250,
            Postmaster: 250,
            'x@mail.example.test': 550,
            'x@www.partner.example': 550,
            'x@sub.example': 550,
            'x@[127.0.0.1]': 550,
        });
    });
});

describe('envelope: relay control with a Maildir upstream', () => {
    let dir: string;
    before(async () => {
        dir = await mkdtemp(join(tmpdir(), 'mw-envelope-'));
    });
    after(() => rm(dir, { recursive: true, force: true }));

    it('accepts every recipient into the Maildir when no domains are listed (the embedded defaults)', async () => {
        const mw = await startApp(
            [
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "maildir:${join(dir, 'open')}" }`,
                'http: false',
            ].join('\n'),
        );
        try {
            const r = await sendMail(mw.port(), { from: 'a@example.org', to: ['anyone@anywhere.example'], data: MSG });
            assert.equal(r.message?.code, 250, r.message?.raw ?? r.rcpt[0]?.raw);
            assert.equal((await readdir(join(dir, 'open', 'new'))).length, 1);
        } finally {
            await mw.stop();
        }
    });

    it('refuses recipients outside domains once domains are listed', async () => {
        const mw = await startApp(
            [
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "maildir:${join(dir, 'closed')}" }`,
                'http: false',
            ].join('\n'),
        );
        try {
            const r = await sendMail(mw.port(), { from: 'a@example.org', to: ['anyone@anywhere.example'], data: MSG });
            assert.equal(r.rcpt[0]?.code, 550, r.rcpt[0]?.raw);
            const ok = await sendMail(mw.port(), { from: 'a@example.org', to: ['bob@example.test'], data: MSG });
            assert.equal(ok.message?.code, 250);
        } finally {
            await mw.stop();
        }
    });
});

describe('envelope: addresses are read strictly', () => {
    let up: ScriptedUpstream;
    let mw: TestApp;
    before(async () => {
        up = await startScriptedUpstream({ ehlo: [XCLIENT, '8BITMIME', 'SMTPUTF8', 'DSN', 'PIPELINING'] });
        mw = await startApp(config(up.port));
    });
    after(async () => {
        await mw.stop();
        await up.close();
    });

    it('refuses invalid UTF-8 in MAIL (553 5.1.7), RCPT (553 5.1.3) and a parameter (501 5.5.4), sending nothing on', async () => {
        const { c } = await client(mw.port());
        const badSender = await raw(c, 'MAIL FROM:<j', Buffer.from([0xff, 0xfe]), 'rg@example.org> SMTPUTF8');
        assert.equal(badSender.code, 553, badSender.raw);
        assert.match(badSender.text, /^5\.1\.7 Bad sender address syntax: the address is not valid UTF-8$/);
        // an overlong encoding of "@" is not UTF-8 either
        const overlong = await raw(c, 'MAIL FROM:<a', Buffer.from([0xc0, 0x80]), '@example.org> SMTPUTF8');
        assert.equal(overlong.code, 553);
        assert.equal((await c.cmd('MAIL FROM:<a@example.org> SMTPUTF8')).code, 250);
        const badRcpt = await raw(c, 'RCPT TO:<b', Buffer.from([0xe2, 0x82]), '@example.test>');
        assert.equal(badRcpt.code, 553, badRcpt.raw);
        assert.match(badRcpt.text, /^5\.1\.3 Bad recipient address syntax: the address is not valid UTF-8$/);
        const badParam = await raw(c, 'RCPT TO:<b@example.test> ORCPT=rfc822;b', Buffer.from([0x80]), '@example.test');
        assert.equal(badParam.code, 501, badParam.raw);
        assert.match(badParam.text, /^5\.5\.4 Bad parameter: the value of ORCPT is not valid UTF-8$/);
        c.close();
        await up.idle();
        const lines = up.commands.filter((l) => /^(MAIL|RCPT)/.test(l));
        assert.deepEqual(lines, ['MAIL FROM:<a@example.org> SMTPUTF8']);
    });

    it('needs SMTPUTF8 for a non-ASCII address (553 5.6.7), and passes it on with SMTPUTF8', async () => {
        const { c } = await client(mw.port());
        const noDecl = await c.cmd('MAIL FROM:<jörg@example.org>');
        assert.equal(noDecl.code, 553, noDecl.raw);
        assert.match(noDecl.text, /^5\.6\.7 The sender address contains non-ASCII characters/);
        assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
        const rcpt = await c.cmd('RCPT TO:<jürgen@example.test>');
        assert.equal(rcpt.code, 553, rcpt.raw);
        assert.match(rcpt.text, /^5\.6\.7 The recipient address contains non-ASCII/);
        assert.equal((await c.cmd('RSET')).code, 250);
        assert.equal((await c.cmd('MAIL FROM:<jörg@bücher.example> SMTPUTF8')).code, 250);
        assert.equal((await c.cmd('RCPT TO:<jürgen@example.test>')).code, 250);
        c.close();
        await up.idle();
        assert.ok(up.commands.includes('MAIL FROM:<jörg@bücher.example> SMTPUTF8'), up.commands.join('\n'));
        assert.ok(up.commands.includes('RCPT TO:<jürgen@example.test>'));
        assert.deepEqual(sent(up, 'MAIL FROM:<jörg@example.org>'), []);
    });

    it('accepts quoted local parts as Postfix does and passes them on quoted canonically', async () => {
        const { c } = await client(mw.port());
        assert.equal((await c.cmd('MAIL FROM:<"john doe"@example.org>')).code, 250);
        for (const rcpt of [
            '"jane doe"@example.test',
            '"plain"@example.test',
            '"a\\"b\\\\c"@example.test',
            '"x>y"@example.test',
            '""@example.test',
        ]) {
            const r = await c.cmd(`RCPT TO:<${rcpt}>`);
            assert.equal(r.code, 250, `${rcpt}: ${r.raw}`);
        }
        assert.equal((await c.cmd('DATA')).code, 354);
        c.write(`${MSG}.\r\n`);
        assert.equal((await c.reply()).code, 250);
        c.close();
        await up.idle();
        const tx = up.transactions.at(-1)!;
        assert.equal(tx.mail, '"john doe"@example.org');
        assert.deepEqual(sent(up, 'RCPT TO:').slice(-5), [
            'RCPT TO:<"jane doe"@example.test>',
            'RCPT TO:<plain@example.test>',
            'RCPT TO:<"a\\"b\\\\c"@example.test>',
            'RCPT TO:<"x>y"@example.test>',
            'RCPT TO:<""@example.test>',
        ]);
    });

    it('keeps A-labels as written (no conversion to Unicode, so no SMTPUTF8 needed)', async () => {
        const r = await sendMail(mw.port(), {
            from: 'a@xn--mnchen-3ya.example',
            to: ['b@xn--bcher-kva.example'],
            data: MSG,
        });
        assert.equal(r.message?.code, 250, r.message?.raw);
        const tx = up.transactions.at(-1)!;
        assert.equal(tx.mail, 'a@xn--mnchen-3ya.example');
        assert.deepEqual(tx.rcpts, ['b@xn--bcher-kva.example']);
        assert.deepEqual(tx.params, []);
    });

    it('refuses malformed addresses with 553 and says why, and a malformed command with 501 5.5.4', async () => {
        const { c } = await client(mw.port());
        const cases: [string, number, RegExp][] = [
            [
                'MAIL FROM:<a..b@example.org>',
                553,
                /^5\.1\.7 Bad sender address syntax: the local part has a misplaced dot/,
            ],
            ['MAIL FROM:<a@-bad-.example>', 553, /^5\.1\.7 Bad sender address syntax: .*not a valid domain name/],
            [
                'MAIL FROM:<"open@example.org>',
                553,
                /^5\.1\.7 Bad sender address syntax: the quoted local part is not closed/,
            ],
            [
                'MAIL FROM:a@example.org',
                501,
                /^5\.5\.4 Syntax error: write MAIL FROM:<address> \[parameters\], the address in angle brackets/,
            ],
        ];
        for (const [line, code, text] of cases) {
            const r = await c.cmd(line);
            assert.equal(r.code, code, `${line}: ${r.raw}`);
            assert.match(r.text, text, line);
        }
        assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
        const rcpt = await c.cmd('RCPT TO:<john doe@example.test>');
        assert.equal(rcpt.code, 553, rcpt.raw);
        assert.match(rcpt.text, /^5\.1\.3 Bad recipient address syntax: unexpected a space in the address/);
        c.close();
    });
});

describe('envelope: ESMTP parameters', () => {
    let up: ScriptedUpstream;
    let mw: TestApp;
    before(async () => {
        up = await startScriptedUpstream({
            ehlo: [XCLIENT, 'SIZE 20000', '8BITMIME', 'SMTPUTF8', 'DSN', 'PIPELINING'],
        });
        mw = await startApp(config(up.port));
    });
    after(async () => {
        await mw.stop();
        await up.close();
    });

    it('offers DSN and the smaller SIZE in EHLO because the upstream does; REQUIRETLS only over TLS', async () => {
        const { c, ehlo } = await client(mw.port());
        c.close();
        // an upstream SIZE this small keeps half of itself for the fields we add
        for (const l of ['DSN', 'SIZE 10000', '8BITMIME', 'SMTPUTF8', 'PIPELINING'])
            assert.ok(ehlo.lines.includes(l), l);
        assert.ok(!ehlo.lines.some((l) => /^REQUIRETLS/.test(l)), ehlo.text);
        const warning = mw.logs.find((l) => /smaller messages than this listener allows/.test(String(l.msg)));
        assert.equal(warning?.listener, 'mx');
        assert.equal(warning?.upstreamSize, 20000);
        assert.equal(warning?.advertised, 10000);
    });

    it('refuses a parameter that was not offered with 555 5.5.4, REQUIRETLS above all', async () => {
        const { c } = await client(mw.port());
        for (const params of ['REQUIRETLS', 'MT-PRIORITY=3', 'AUTH=<>', 'HOLDFOR=60', 'BODY=8BITMIME FUTURE']) {
            const r = await c.cmd(`MAIL FROM:<a@example.org> ${params}`);
            assert.equal(r.code, 555, `${params}: ${r.raw}`);
            assert.match(r.text, /^5\.5\.4 The \S+ parameter is not supported in this session/);
        }
        assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
        const r = await c.cmd('RCPT TO:<b@example.test> FOO=bar');
        assert.equal(r.code, 555, r.raw);
        c.close();
        await up.idle();
        assert.deepEqual(sent(up, 'MAIL FROM:<a@example.org> '), []);
        assert.deepEqual(sent(up, 'RCPT TO:<b@example.test> FOO'), []);
    });

    it('refuses every ESMTP parameter after HELO, where none was offered', async () => {
        const c = await smtpConnect(mw.port());
        await c.greeting();
        await c.cmd('HELO client.example');
        const r = await c.cmd('MAIL FROM:<a@example.org> SIZE=100');
        assert.equal(r.code, 555, r.raw);
        assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
        c.close();
        // the upstream greeted that client's connection with HELO too, without extensions:
        // that says nothing about what the upstream offers to EHLO clients
        const { c: next, ehlo } = await client(mw.port());
        next.close();
        assert.ok(ehlo.lines.includes('DSN') && ehlo.lines.includes('SIZE 10000'), ehlo.text);
    });

    it('passes RET, ENVID, NOTIFY and ORCPT on exactly as written', async () => {
        const { c } = await client(mw.port());
        assert.equal(
            (await c.cmd('MAIL FROM:<a@example.org> RET=HDRS ENVID=QQ+2B314159 SIZE=300 BODY=8BITMIME')).code,
            250,
        );
        assert.equal(
            (await c.cmd('RCPT TO:<b@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx@example.test')).code,
            250,
        );
        assert.equal((await c.cmd('RCPT TO:<c@example.test> NOTIFY=NEVER')).code, 250);
        assert.equal((await c.cmd('DATA')).code, 354);
        c.write(`${MSG}.\r\n`);
        assert.equal((await c.reply()).code, 250);
        c.close();
        await up.idle();
        const tx = up.transactions.at(-1)!;
        assert.deepEqual(tx.params, ['SIZE=300', 'BODY=8BITMIME', 'RET=HDRS', 'ENVID=QQ+2B314159']);
        assert.deepEqual(sent(up, 'RCPT TO:<').slice(-2), [
            'RCPT TO:<b@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx@example.test',
            'RCPT TO:<c@example.test> NOTIFY=NEVER',
        ]);
    });

    it('passes a < or > of an ENVID or ORCPT value on as the +3C or +3E it decodes the same as', async () => {
        const { c } = await client(mw.port());
        const mail = await c.cmd('MAIL FROM:<a@example.org> ENVID=a<b>');
        assert.equal(mail.code, 250, mail.raw);
        const rcpt = await c.cmd('RCPT TO:<b@example.test> ORCPT=rfc822;b>x<@example.test');
        assert.equal(rcpt.code, 250, rcpt.raw);
        assert.equal((await c.cmd('DATA')).code, 354);
        c.write(`${MSG}.\r\n`);
        assert.equal((await c.reply()).code, 250);
        c.close();
        await up.idle();
        assert.deepEqual(up.transactions.at(-1)!.params, ['ENVID=a+3Cb+3E']);
        assert.deepEqual(sent(up, 'RCPT TO:<').slice(-1), [
            'RCPT TO:<b@example.test> ORCPT=rfc822;b+3Ex+3C@example.test',
        ]);
    });

    it('refuses malformed parameter values with 501 5.5.4', async () => {
        const { c } = await client(mw.port());
        for (const params of [
            'RET=MAYBE',
            'SIZE=ten',
            'SIZE=1 SIZE=2',
            'ENVID=a=b',
            'ENVID=bad+zz',
            'BODY=BINARYMIME',
            'SMTPUTF8=yes',
        ]) {
            const r = await c.cmd(`MAIL FROM:<a@example.org> ${params}`);
            assert.equal(r.code, 501, `${params}: ${r.raw}`);
            assert.match(r.text, /^5\.5\.4 Bad parameter: /);
        }
        assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
        for (const params of ['NOTIFY=NEVER,SUCCESS', 'NOTIFY=SOMETIMES', 'ORCPT=nosemicolon']) {
            const r = await c.cmd(`RCPT TO:<b@example.test> ${params}`);
            assert.equal(r.code, 501, `${params}: ${r.raw}`);
        }
        c.close();
    });

    it('refuses a declared SIZE above the limit offered at MAIL, and an undeclared one before it goes upstream', async () => {
        const { c } = await client(mw.port());
        // under the upstream's SIZE, but with no room left for our fields
        const declared = await c.cmd('MAIL FROM:<a@example.org> SIZE=15000');
        assert.equal(declared.code, 552, declared.raw);
        assert.match(declared.text, /^5\.3\.4 Message too big: this server accepts at most 10000 bytes/);
        c.close();
        const before = up.transactions.filter((t) => t.completed).length;
        const r = await sendMail(mw.port(), {
            from: 'a@example.org',
            to: ['b@example.test'],
            data: MSG + ('z'.repeat(998) + '\r\n').repeat(25),
        });
        assert.equal(r.message?.code, 552, r.message?.raw);
        assert.match(r.message.text, /at most 10000 bytes/);
        assert.equal(up.transactions.filter((t) => t.completed).length, before);
    });
});

describe('envelope: what EHLO offers follows the upstream', () => {
    it('refuses DSN parameters with 451 4.3.3 when the upstream stopped offering DSN after our EHLO, and offers it no more', async () => {
        const caps = [XCLIENT, '8BITMIME', 'SMTPUTF8', 'DSN'];
        const up = await startScriptedUpstream({ ehlo: caps });
        const mw = await startApp(config(up.port));
        try {
            const { c, ehlo } = await client(mw.port());
            assert.ok(ehlo.lines.includes('DSN'), 'learnt at start');
            caps.splice(caps.indexOf('DSN'), 1);
            const r = await c.cmd('MAIL FROM:<a@example.org> RET=HDRS');
            assert.equal(r.code, 451, r.raw);
            assert.match(r.text, /^4\.3\.3 The mail server behind this gateway does not offer DSN/);
            assert.deepEqual(sent(up, 'MAIL'), [], 'the parameter was not dropped: nothing was sent');
            const again = await c.cmd('EHLO client.example');
            assert.ok(!again.lines.includes('DSN'), again.text);
            assert.equal((await c.cmd('MAIL FROM:<a@example.org> RET=HDRS')).code, 555);
            assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
            c.close();
            assert.equal(await refusals(mw, 'upstream-feature'), 1);
        } finally {
            await mw.stop();
            await up.close();
        }
    });

    it('offers neither SMTPUTF8 nor DSN when the upstream lacks them', async () => {
        const up = await startScriptedUpstream({ ehlo: [XCLIENT, '8BITMIME'] });
        const mw = await startApp(config(up.port));
        try {
            const { c, ehlo } = await client(mw.port());
            assert.ok(!ehlo.lines.includes('SMTPUTF8') && !ehlo.lines.includes('DSN'), ehlo.text);
            assert.ok(ehlo.lines.includes('SIZE 102400'), 'our own limit when the upstream declares none');
            assert.equal((await c.cmd('MAIL FROM:<a@example.org> SMTPUTF8')).code, 555);
            assert.equal((await c.cmd('MAIL FROM:<jörg@example.org>')).code, 553);
            c.close();
        } finally {
            await mw.stop();
            await up.close();
        }
    });
});

describe('envelope: REQUIRETLS', () => {
    let cert: TestCertificate;
    let up: ScriptedUpstream;
    let mw: TestApp;
    before(async () => {
        cert = await createTestCertificate();
        up = await startScriptedUpstream({
            tls: { key: cert.key, cert: cert.cert },
            ehlo: [XCLIENT, '8BITMIME', 'SMTPUTF8', 'REQUIRETLS'],
        });
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                `tls: { cert: "${cert.certPath}", key: "${cert.keyPath}" }`,
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtps://127.0.0.1:${up.port}", timeout: 2s, connectTimeout: 1s }`,
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw.stop();
        await up.close();
        cert.cleanup();
    });

    it('is offered only after STARTTLS, and then passed on to an upstream that offers it over TLS', async () => {
        const { c, ehlo } = await client(mw.port());
        assert.ok(!ehlo.lines.includes('REQUIRETLS'), 'not on a plain session');
        assert.equal((await c.cmd('MAIL FROM:<a@example.org> REQUIRETLS')).code, 555);
        assert.equal((await c.starttls({ ca: cert.cert, servername: 'localhost' })).code, 220);
        const secure = await c.cmd('EHLO client.example');
        assert.ok(secure.lines.includes('REQUIRETLS'), secure.text);
        assert.equal((await c.cmd('MAIL FROM:<a@example.org> REQUIRETLS')).code, 250);
        assert.equal((await c.cmd('RCPT TO:<b@example.test>')).code, 250);
        c.close();
        await up.idle();
        assert.deepEqual(sent(up, 'MAIL'), ['MAIL FROM:<a@example.org> REQUIRETLS']);
    });
});

describe('envelope: recipients per transaction', () => {
    let up: ScriptedUpstream;
    let mw: TestApp;
    before(async () => {
        up = await startScriptedUpstream({ ehlo: [XCLIENT, '8BITMIME', 'SMTPUTF8', 'PIPELINING'] });
        mw = await startApp(config(up.port));
    });
    after(async () => {
        await mw.stop();
        await up.close();
    });

    it('takes maxRecipients and answers the next with 452 4.5.3; a repeated recipient counts too', async () => {
        const { c } = await client(mw.port('few'));
        assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
        for (let i = 0; i < 3; i++) assert.equal((await c.cmd('RCPT TO:<b@example.test>')).code, 250);
        const r = await c.cmd('RCPT TO:<c@example.test>');
        assert.equal(r.code, 452, r.raw);
        assert.equal(r.text, '4.5.3 Too many recipients for one message (at most 3); send the rest in another message');
        assert.equal((await c.cmd('DATA')).code, 354);
        c.write(`${MSG}.\r\n`);
        assert.equal((await c.reply()).code, 250);
        c.close();
        assert.equal(up.transactions.at(-1)!.rcpts.length, 3);
    });

    it('counts the recipients of a null-sender transaction: the 1001st of 1001 gets 452, 1000 go upstream', async () => {
        const before = sent(up, 'RCPT').length;
        const { c } = await client(mw.port());
        const lines = ['MAIL FROM:<>', ...Array.from({ length: 1001 }, (_, i) => `RCPT TO:<r${i}@example.test>`)];
        c.write(lines.map((l) => `${l}\r\n`).join(''));
        const replies: SmtpReply[] = [];
        for (let i = 0; i < lines.length; i++) replies.push(await c.reply(30_000));
        assert.equal(replies[0]!.code, 250);
        assert.ok(replies.slice(1, 1001).every((r) => r.code === 250));
        assert.equal(replies[1001]!.code, 452);
        assert.match(replies[1001]!.text, /^4\.5\.3 Too many recipients for one message \(at most 1000\)/);
        assert.equal((await c.cmd('DATA')).code, 354);
        c.write(`${MSG}.\r\n`);
        assert.equal((await c.reply()).code, 250);
        c.close();
        assert.equal(sent(up, 'RCPT').length - before, 1000);
        assert.equal(up.transactions.at(-1)!.rcpts.length, 1000);
        assert.equal(await refusals(mw, 'too-many-recipients'), 2);
    });
});

describe('Received: client names', () => {
    let dns: DnsTestServer;
    let up: ScriptedUpstream;
    let mw: TestApp;
    before(async () => {
        // a forward-confirmed reverse name (PTR and A agree) that holds "(", ")", "[" and "]"
        dns = await startDnsServer({
            '1.0.0.127.in-addr.arpa': { PTR: ['evil(x)[127.0.0.9].example.test.'] },
            'evil(x)[127.0.0.9].example.test': { A: ['127.0.0.1'] },
        });
        up = await startScriptedUpstream({ ehlo: [XCLIENT, '8BITMIME', 'SMTPUTF8'] });
        mw = await startApp(config(up.port, [`dns: { servers: ["${dns.address}"], timeout: 1s }`]));
    });
    after(async () => {
        await mw.stop();
        await up.close();
        await dns.close();
    });

    async function received(helo: string): Promise<string> {
        const r = await sendMail(mw.port(), { from: 'a@example.org', to: ['b@example.test'], data: MSG, helo });
        assert.equal(r.message?.code, 250, r.message?.raw);
        const head = unstuff(up.transactions.at(-1)!.data!)
            .toString('utf8')
            .replace(/\r\n\t/g, ' ');
        return /^Received: ([^\r\n]*)/.exec(head)![1]!;
    }

    it('writes a reverse name or HELO name that is not a host name as unknown', async () => {
        assert.match(
            await received('a(b)[c];by=x'),
            /^from unknown \(unknown \[127\.0\.0\.1\]\) by mx\.example\.test \(mailwarden\)/,
        );
    });

    it('keeps a HELO host name or address literal', async () => {
        assert.match(await received('client.example'), /^from client\.example \(unknown \[127\.0\.0\.1\]\) by /);
        assert.match(await received('[127.0.0.1]'), /^from \[127\.0\.0\.1\] \(unknown \[127\.0\.0\.1\]\) by /);
    });
});

describe('upstream.xclient: false', () => {
    it('is logged as a warning when the app starts', async () => {
        const up = await startScriptedUpstream({ ehlo: ['8BITMIME'] });
        const mw = await startApp(
            [
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}", xclient: false }`,
                'http: false',
            ].join('\n'),
        );
        try {
            const line = mw.logs.find((l) => /upstream\.xclient is false/.test(String(l.msg)));
            assert.equal(line?.level, 40, 'a warning');
        } finally {
            await mw.stop();
            await up.close();
        }
    });
});

describe('mailwarden explain: relay control', () => {
    it('stops at a recipient the mx listener would refuse, with the same reply', async () => {
        const dns = await startDnsServer({});
        const dir = await mkdtemp(join(tmpdir(), 'mw-envelope-explain-'));
        try {
            const file = join(dir, 'mailwarden.yaml');
            await writeFile(
                file,
                [
                    'hostname: mx.example.test',
                    'domains: [example.test]',
                    'listeners: [{ name: mx, host: 127.0.0.1, port: 2525, mode: mx }]',
                    'upstream: { url: "smtp://127.0.0.1:10026" }',
                    `dns: { servers: ["${dns.address}"], timeout: 500ms }`,
                    'http: false',
                ].join('\n'),
            );
            const config = loadConfig(file, {});
            const input = {
                clientIp: '198.51.100.7',
                helo: 'mail.example.org',
                mailFrom: 'a@example.org',
                listener: null,
                authUser: null,
                message: Buffer.from(MSG),
            };
            const rules = loadRuleSet(config.rules, { softReject: false });
            const refused = await explainMessage(config, rules, {
                ...input,
                rcpts: ['bob@example.test', 'x@elsewhere.example'],
            });
            assert.equal(refused.stoppedAt, 'rcpt');
            assert.equal(refused.reply.code, 550);
            assert.equal(refused.reply.enhanced, '5.7.1');
            assert.match(refused.reply.text, /^Relaying denied: .*elsewhere\.example/);
            const routed = await explainMessage(config, rules, {
                ...input,
                rcpts: ['bob@example.test', 'x%elsewhere.example@example.test'],
            });
            assert.equal(routed.stoppedAt, 'rcpt');
            assert.equal(routed.reply.code, 550);
            assert.equal(routed.reply.enhanced, '5.7.1');
            assert.match(routed.reply.text, /^Relaying denied: .*routes the message on to elsewhere\.example/);
            const within = await explainMessage(config, rules, {
                ...input,
                rcpts: ['bob@example.test', 'bob%example.test@example.test'],
            });
            assert.equal(within.stoppedAt, 'rcpt');
            assert.equal(within.reply.code, 550);
            assert.equal(within.reply.enhanced, '5.7.1');
            assert.match(within.reply.text, /^Sender-specified routing is not accepted/);
            const fine = await explainMessage(config, rules, {
                ...input,
                rcpts: ['bob@example.test', 'alice@example.test'],
            });
            assert.notEqual(fine.stoppedAt, 'rcpt');
        } finally {
            await rm(dir, { recursive: true, force: true });
            await dns.close();
        }
    });
});
