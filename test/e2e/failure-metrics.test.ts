/**
 * Refusals and failures each move their own metric, through the real listener: a submission sender the
 * login may not use (envelope and header) counts `sender_binding_refusals_total`; a check that
 * times out or fails counts `check_failures_total{check,result}` (checks of the test's own: no
 * product check can be made to fail on purpose, each bounds its own lookups); an internal error
 * (here at connect, from a decider of the test's own that throws) counts `internal_errors_total`
 * and is answered `421 4.7.0` instead of the greeting. Every series exists at 0 from the start.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { hashPassword } from '../../src/submission/hashes.ts';
import { acceptAll } from '../../src/pipeline.ts';
import type { Check, Decider } from '../../src/types.ts';
import { decisions, startApp, type TestApp } from '../helpers/app.ts';
import { startDnsServer, type DnsTestServer } from '../helpers/dns-server.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { sendMail, smtpConnect } from '../helpers/smtp-client.ts';
import { createTestCertificate, type TestCertificate } from '../helpers/tls-cert.ts';
import { until } from '../helpers/until.ts';

const plain = (user: string, pass: string): string => Buffer.from(`\0${user}\0${pass}`).toString('base64');

async function value(mw: TestApp, metric: string, labels: Record<string, string>): Promise<number | undefined> {
    const m = mw.app.metrics.registry.getSingleMetric(metric);
    assert.ok(m, metric);
    const values = (await m.get()).values;
    return values.find((v) => Object.entries(labels).every(([k, want]) => v.labels[k] === want))?.value;
}

describe('metrics of refusals and failures', () => {
    let cert: TestCertificate;
    let dns: DnsTestServer;
    let up: ScriptedUpstream;
    let mw: TestApp;

    before(async () => {
        cert = await createTestCertificate();
        dns = await startDnsServer({});
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN', 'SIZE 1000000'] });
        const users = join(cert.dir, 'users.yaml');
        writeFileSync(
            users,
            `users:\n  - login: alice@example.test\n    password: "${await hashPassword('correct horse')}"\n`,
        );
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                `tls: { cert: "${cert.certPath}", key: "${cert.keyPath}" }`,
                `auth: { users: "${users}" }`,
                'listeners:',
                '  - { name: mx, host: 127.0.0.1, port: 0, mode: mx }',
                '  - { name: submissions, host: 127.0.0.1, port: 0, mode: submission, tls: implicit }',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                `dns: { servers: ["${dns.address}"], timeout: 1s }`,
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw?.stop();
        await up?.close();
        await dns?.close();
        cert?.cleanup();
    });

    it('has every series at 0 from the start', async () => {
        for (const where of ['envelope', 'header']) {
            const labels = { listener: 'submissions', where };
            assert.equal(await value(mw, 'mailwarden_sender_binding_refusals_total', labels), 0);
        }
        for (const result of ['timeout', 'error']) {
            assert.equal(await value(mw, 'mailwarden_check_failures_total', { check: 'iprev', result }), 0);
            assert.equal(await value(mw, 'mailwarden_check_failures_total', { check: 'mailauth', result }), 0);
        }
        for (const listener of ['mx', 'submissions']) {
            assert.equal(await value(mw, 'mailwarden_internal_errors_total', { listener }), 0);
        }
    });

    it('counts a submission sender the login may not use, in the envelope and in the header', async () => {
        const c = await smtpConnect(mw.port('submissions'), {
            tls: 'implicit',
            ca: cert.cert,
            servername: 'localhost',
        });
        try {
            await c.greeting();
            await c.cmd('EHLO laptop.example');
            assert.equal((await c.cmd(`AUTH PLAIN ${plain('alice@example.test', 'correct horse')}`)).code, 235);
            const mail = await c.cmd('MAIL FROM:<boss@example.test>');
            assert.equal(mail.code, 553, mail.raw);
            assert.equal((await c.cmd('MAIL FROM:<alice@example.test>')).code, 250);
            assert.equal((await c.cmd('RCPT TO:<carol@example.net>')).code, 250);
            assert.equal((await c.cmd('DATA')).code, 354);
            c.write('From: <boss@example.test>\r\nTo: <carol@example.net>\r\nSubject: hi\r\n\r\nHello.\r\n.\r\n');
            const data = await c.reply();
            assert.equal(data.code, 553, data.raw);
        } finally {
            c.close();
        }
        const refused = (where: string) =>
            value(mw, 'mailwarden_sender_binding_refusals_total', { listener: 'submissions', where });
        assert.equal(await refused('envelope'), 1);
        assert.equal(await refused('header'), 1);
    });
});

describe('check failures and internal errors', () => {
    let up: ScriptedUpstream;
    let mw: TestApp;
    // checks of the test's own: one never done in time (the client is deferred), one that fails
    // (its fact `broken.error` is all the rules see), as sender checks at the mail stage
    const checks: Check[] = [
        {
            name: 'slow',
            stages: ['mail'],
            timeoutMs: 50,
            onError: 'tempfail',
            run: (ctx, signal) =>
                ctx.facts['mail.from'] === 'x@slow.example'
                    ? new Promise((resolve) => signal.addEventListener('abort', () => resolve({ facts: {} })))
                    : Promise.resolve({ facts: {} }),
        },
        {
            name: 'broken',
            stages: ['mail'],
            timeoutMs: 1000,
            onError: 'ignore',
            run: () => Promise.reject(new Error('the service behind it is down')),
        },
    ];
    // a decider that breaks for one client, at connect
    const decider: Decider = {
        decide(stage, facts) {
            if (stage === 'connect' && facts['client.ip'] === '127.0.4.66') throw new Error('the rules engine broke');
            return acceptAll.decide(stage, facts);
        },
    };

    before(async () => {
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN', 'SIZE 1000000'] });
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                'http: false',
            ].join('\n'),
            { decider, checks },
        );
    });
    after(async () => {
        await mw?.stop();
        await up?.close();
    });

    const failures = (check: string, result: string) => value(mw, 'mailwarden_check_failures_total', { check, result });

    it('counts checks that timed out or failed, by check and result', async () => {
        for (const check of ['slow', 'broken']) {
            for (const result of ['timeout', 'error']) assert.equal(await failures(check, result), 0);
        }
        const deferred = await sendMail(mw.port(), { from: 'x@slow.example', to: ['bob@example.test'], data: 'x' });
        assert.equal(deferred.mail.code, 451, deferred.mail.raw);
        assert.match(deferred.mail.text, /^4\.4\.3 /);
        const through = await sendMail(mw.port(), { from: 'y@other.example', to: ['bob@example.test'], data: 'x' });
        assert.equal(through.mail.code, 250, through.mail.raw);
        assert.equal(await failures('slow', 'timeout'), 1);
        assert.equal(await failures('slow', 'error'), 0);
        assert.equal(await failures('broken', 'error'), 2);
        assert.equal(await failures('broken', 'timeout'), 0);
    });

    it('counts an internal error, and answers it 421 4.7.0 instead of the greeting', async () => {
        assert.equal(await value(mw, 'mailwarden_internal_errors_total', { listener: 'mx' }), 0);
        const c = await smtpConnect(mw.port(), { localAddress: '127.0.4.66' });
        try {
            const g = await c.greeting();
            assert.equal(g.code, 421, g.raw);
            assert.match(g.text, /^4\.7\.0 Temporary internal error.*closing the connection \(id [^)]+\)$/);
            await c.waitClosed(3000);
        } finally {
            c.close();
        }
        assert.equal(await value(mw, 'mailwarden_internal_errors_total', { listener: 'mx' }), 1);
        assert.ok(mw.logs.some((l) => l.msg === 'unexpected error in SMTP callback'));
    });
});

describe('what is not an internal error', () => {
    let up: ScriptedUpstream;
    let mw: TestApp;
    let disk: string;
    const body = `From: a@sender.example\r\nTo: b@example.test\r\nSubject: x\r\n\r\n${`${'x'.repeat(76)}\r\n`.repeat(2000)}`;
    /** While set, a data-stage check removes the spool files, so the message cannot be read back (ENOENT). */
    let removeSpool = false;
    const remover: Check = {
        name: 'remover',
        stages: ['data'],
        timeoutMs: 5000,
        onError: 'ignore',
        run: () => {
            if (removeSpool) for (const f of readdirSync(join(disk, 'spool'))) unlinkSync(join(disk, 'spool', f));
            return Promise.resolve({ facts: {} });
        },
    };

    before(async () => {
        // a spool folder on a 64 KiB tmpfs: a message of 156 KB fills it (ENOSPC)
        disk = mkdtempSync(join(tmpdir(), 'mw-spool-disk-'));
        execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k,mode=0700', 'tmpfs', disk]);
        up = await startScriptedUpstream({
            ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN', 'SIZE 10000000'],
            onCommand: (line) =>
                /^RCPT TO:<lookup@example\.test>/i.test(line)
                    ? '451 4.3.0 <lookup@example.test>: Temporary lookup failure'
                    : undefined,
        });
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                `spool: { dir: "${join(disk, 'spool')}", memoryLimit: 1KB }`,
                'http: false',
            ].join('\n'),
            { checks: [remover] },
        );
    });
    after(async () => {
        await mw?.stop();
        await up?.close();
        if (disk) {
            execFileSync('umount', [disk]);
            rmSync(disk, { recursive: true, force: true });
        }
    });

    const internal = () => value(mw, 'mailwarden_internal_errors_total', { listener: 'mx' });
    const errorLines = () => mw.logs.filter((l) => (l.level as number) >= 50);

    it("relays the upstream's own 451 4.3.0 without counting it", async () => {
        const r = await sendMail(mw.port(), { from: 'a@sender.example', to: ['lookup@example.test'], data: 'x' });
        assert.equal(r.rcpt[0]?.code, 451, r.rcpt[0]?.raw);
        assert.match(r.rcpt[0].text, /^4\.3\.0 /);
        assert.equal(await internal(), 0);
    });

    it('does not count a client that left in the middle of DATA', async () => {
        const c = await smtpConnect(mw.port());
        try {
            await c.greeting();
            await c.cmd('EHLO client.example');
            await c.cmd('MAIL FROM:<a@sender.example>');
            await c.cmd('RCPT TO:<b@example.test>');
            assert.equal((await c.cmd('DATA')).code, 354);
            c.write('Subject: x\r\n\r\npartial');
        } finally {
            c.close();
        }
        await until('the decision line of the session is written', () =>
            decisions(mw.logs).some((d) => String(d.reason).startsWith('message not received in full')),
        );
        assert.equal(await internal(), 0);
        assert.deepEqual(errorLines(), []);
    });

    it('logs a spool write failure at error level with the file and errno, and counts it apart', async () => {
        assert.equal(await value(mw, 'mailwarden_spool_io_errors_total', { listener: 'mx', op: 'write' }), 0);
        const r = await sendMail(mw.port(), { from: 'a@sender.example', to: ['b@example.test'], data: body });
        assert.equal(r.message?.code, 451, r.message?.raw);
        assert.match(r.message.text, /^4\.3\.0 /);
        assert.equal(await value(mw, 'mailwarden_spool_io_errors_total', { listener: 'mx', op: 'write' }), 1);
        assert.equal(await internal(), 0);
        const [line, ...more] = errorLines();
        assert.deepEqual(more, []);
        assert.equal(line?.msg, 'spool write failed');
        assert.equal(line?.errno, 'ENOSPC');
        assert.match(
            String(line?.spoolPath),
            new RegExp(`^${join(disk, 'spool')}/mailwarden-\\d+-[0-9a-f]{8}-[0-9a-f]{16}\\.eml$`),
        );
    });

    it('answers a spool file that cannot be read back 451 4.3.0, counted as a spool error, not an upstream failure', async () => {
        const spoolErrors = (op: string) => value(mw, 'mailwarden_spool_io_errors_total', { listener: 'mx', op });
        const upstreamIo = async () =>
            (await value(mw, 'mailwarden_upstream_replies_total', { class: 'io', stage: 'data' })) ?? 0;
        mw.logs.length = 0;
        removeSpool = true;
        try {
            // 16 KB: spilled past the 1 KB memory limit, and fits the disk
            const small = `From: a@sender.example\r\nTo: b@example.test\r\nSubject: x\r\n\r\n${`${'x'.repeat(76)}\r\n`.repeat(200)}`;
            const r = await sendMail(mw.port(), { from: 'a@sender.example', to: ['b@example.test'], data: small });
            assert.equal(r.message?.code, 451, r.message?.raw);
            assert.match(r.message.text, /^4\.3\.0 /);
        } finally {
            removeSpool = false;
        }
        assert.equal(await internal(), 0);
        assert.equal(await upstreamIo(), 0);
        assert.equal(await spoolErrors('read'), 1);
        assert.ok(!mw.logs.some((l) => l.msg === 'upstream failed'));
        const [line, ...more] = errorLines();
        assert.deepEqual(more, []);
        assert.equal(line?.msg, 'spool read failed');
        assert.equal(line?.errno, 'ENOENT');
        assert.match(
            String(line?.spoolPath),
            new RegExp(`^${join(disk, 'spool')}/mailwarden-\\d+-[0-9a-f]{8}-[0-9a-f]{16}\\.eml$`),
        );
        // the upstream never got the end of data
        assert.equal(up.transactions.at(-1)?.completed, false);
    });
});
