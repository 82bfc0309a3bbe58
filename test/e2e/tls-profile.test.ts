/**
 * The TLS profile as scanners and MTAs see it, with `openssl s_client` against a STARTTLS
 * listener (`-starttls smtp`) and an implicit-TLS listener, both with an RSA certificate (with
 * an EC one static-RSA suites could not be negotiated anyway): TLS 1.2 offers only ECDHE with
 * AEAD ciphers (a static-RSA or a CBC suite fails, ECDHE with AES-GCM or ChaCha20 works, the
 * server's order wins), TLS 1.3 works, and a client-initiated renegotiation (`R`) is refused.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { createTestCertificate, type TestCertificate } from '../helpers/tls-cert.ts';

interface SClient {
    readonly child: ChildProcessWithoutNullStreams;
    output(): string;
    /** Resolves once the output matches `re`; rejects after `timeoutMs`. */
    waitFor(re: RegExp, timeoutMs?: number): Promise<void>;
    readonly exited: Promise<number | null>;
}

/** Runs `openssl s_client` against 127.0.0.1:`port` with `args`; stdin stays open for commands. */
function sClient(port: number, starttls: boolean, args: string[]): SClient {
    const child = spawn(
        'openssl',
        ['s_client', '-connect', `127.0.0.1:${port}`, ...(starttls ? ['-starttls', 'smtp'] : []), '-crlf', ...args],
        { stdio: ['pipe', 'pipe', 'pipe'] },
    );
    let output = '';
    const waiters: (() => void)[] = [];
    const onData = (chunk: Buffer): void => {
        output += chunk.toString('utf8');
        for (const w of waiters.splice(0)) w();
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.stdin.on('error', () => undefined);
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const kill = setTimeout(() => child.kill('SIGKILL'), 20_000);
    void exited.then(() => clearTimeout(kill));
    return {
        child,
        output: () => output,
        exited,
        async waitFor(re, timeoutMs = 10_000) {
            const until = Date.now() + timeoutMs;
            while (!re.test(output)) {
                if (Date.now() > until) throw new Error(`s_client output does not match ${re}:\n${output}`);
                await new Promise<void>((resolve) => {
                    waiters.push(resolve);
                    setTimeout(resolve, 100);
                });
            }
        },
    };
}

/** A handshake with `args` that ends at once (stdin closed): the session summary and exit code. */
async function handshake(
    port: number,
    starttls: boolean,
    args: string[],
): Promise<{ code: number | null; out: string }> {
    const c = sClient(port, starttls, args);
    c.child.stdin.end();
    const code = await c.exited;
    return { code, out: c.output() };
}

describe('TLS profile (openssl s_client)', () => {
    let cert: TestCertificate;
    let up: ScriptedUpstream;
    let mw: TestApp;
    before(async () => {
        cert = await createTestCertificate({ keyType: 'rsa' });
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'] });
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                `tls: { cert: "${cert.certPath}", key: "${cert.keyPath}" }`,
                'listeners:',
                '  - { name: starttls, host: 127.0.0.1, port: 0, mode: mx }',
                '  - { name: implicit, host: 127.0.0.1, port: 0, mode: mx, tls: implicit }',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw.stop();
        await up.close();
        cert.cleanup();
    });

    for (const [name, starttls] of [
        ['starttls', true],
        ['implicit', false],
    ] as const) {
        describe(`${name} listener`, () => {
            for (const suite of [
                'AES128-GCM-SHA256',
                'AES256-SHA256',
                'ECDHE-RSA-AES128-SHA',
                'ECDHE-RSA-AES256-SHA384',
            ]) {
                it(`refuses the TLS 1.2 suite ${suite} (static RSA or CBC)`, async () => {
                    const r = await handshake(mw.port(name), starttls, ['-tls1_2', '-cipher', suite]);
                    assert.notEqual(r.code, 0, r.out);
                    assert.match(r.out, /Cipher is \(NONE\)/);
                    assert.match(r.out, /handshake failure/);
                });
            }

            for (const suite of [
                'ECDHE-RSA-AES128-GCM-SHA256',
                'ECDHE-RSA-AES256-GCM-SHA384',
                'ECDHE-RSA-CHACHA20-POLY1305',
            ]) {
                it(`accepts the TLS 1.2 suite ${suite} (ECDHE with AEAD)`, async () => {
                    const r = await handshake(mw.port(name), starttls, ['-tls1_2', '-cipher', suite]);
                    assert.equal(r.code, 0, r.out);
                    assert.match(r.out, new RegExp(`New, TLSv1\\.2, Cipher is ${suite}\\b`));
                });
            }

            it('chooses by its own order, not the client’s', async () => {
                const r = await handshake(mw.port(name), starttls, [
                    '-tls1_2',
                    '-cipher',
                    'ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256',
                ]);
                assert.match(r.out, /New, TLSv1\.2, Cipher is ECDHE-RSA-AES128-GCM-SHA256\b/);
            });

            it('speaks TLS 1.3', async () => {
                const r = await handshake(mw.port(name), starttls, ['-tls1_3']);
                assert.equal(r.code, 0, r.out);
                assert.match(r.out, /New, TLSv1\.3, Cipher is TLS_AES_256_GCM_SHA384\b/);
            });

            it('refuses a client-initiated renegotiation', async () => {
                const c = sClient(mw.port(name), starttls, ['-tls1_2']);
                try {
                    await c.waitFor(/Verify return code/);
                    if (!starttls) await c.waitFor(/^220 /m);
                    c.child.stdin.write('NOOP\n');
                    await c.waitFor(/^250 2\.0\.0 OK/m);
                    c.child.stdin.write('R\n');
                    await c.waitFor(/RENEGOTIATING/);
                    // a NOOP after the renegotiation is never answered: the session is gone
                    c.child.stdin.write('NOOP\n');
                    const code = await Promise.race([
                        c.exited,
                        new Promise<'open'>((r) => setTimeout(() => r('open'), 3000)),
                    ]);
                    const after = c.output().slice(c.output().indexOf('RENEGOTIATING'));
                    assert.doesNotMatch(after, /^250 /m, after);
                    assert.match(after, /no renegotiation/);
                    assert.notEqual(code, 'open', 's_client gave up');
                } finally {
                    c.child.kill('SIGKILL');
                    await c.exited;
                }
            });
        });
    }

    it('logs the refused handshakes and renegotiations at info, not as errors', () => {
        assert.ok(mw.logs.some((l) => l.level === 30 && /TLS failure/.test(String(l.msg))));
        assert.deepEqual(
            mw.logs.filter((l) => Number(l.level) >= 40),
            [],
        );
    });
});
