/**
 * `mailwarden serve` as a real process and the words it says when it goes away: SIGTERM is a
 * stop ("421 4.3.2 Service shutting down", exit 0), SIGUSR2 a restart the operator asked for
 * ("421 4.3.2 Service restarting", exit 75, which the shipped systemd unit restarts on).
 * The same through the app: stop() and stop({ restart: true }).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { RESTART_EXIT_CODE } from '../../src/commands/serve.ts';
import { startApp } from '../helpers/app.ts';
import { startDnsServer } from '../helpers/dns-server.ts';
import { smtpConnect } from '../helpers/smtp-client.ts';

const BIN = new URL('../../bin/mailwarden.js', import.meta.url).pathname;

/** Starts `serve` on a free port, sends `signal` to it while a client is connected. */
async function serveAndSignal(signal: NodeJS.Signals): Promise<{ bye: string; exitCode: number | null }> {
    const dir = await mkdtemp(join(tmpdir(), 'mw-serve-'));
    const dns = await startDnsServer({});
    const config = join(dir, 'mailwarden.yaml');
    await writeFile(
        config,
        [
            'hostname: mx.example.test',
            'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
            'pregreet: { wait: 0s }',
            `dns: { servers: ["${dns.address}"], timeout: 500ms }`,
            'http: false',
            'shutdownTimeout: 2s',
            '',
        ].join('\n'),
    );
    const child = spawn(process.execPath, [BIN, 'serve', '-c', config], {
        cwd: dir,
        stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const killer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    try {
        let out = '';
        const port = await new Promise<number>((resolve, reject) => {
            child.stdout.on('data', (chunk: Buffer) => {
                out += chunk.toString();
                const m = /"port":(\d+)[^\n]*"msg":"listening"/.exec(out);
                if (m) resolve(Number(m[1]));
            });
            void exited.then((code) => reject(new Error(`serve exited (${code}) before listening: ${out}`)));
        });
        const c = await smtpConnect(port);
        await c.greeting();
        await c.cmd('EHLO client.example');
        child.kill(signal);
        const bye = await c.reply();
        c.close();
        return { bye: bye.raw, exitCode: await exited };
    } finally {
        clearTimeout(killer);
        child.kill('SIGKILL');
        await dns.close();
        await rm(dir, { recursive: true, force: true });
    }
}

describe('serve and signals', () => {
    it('prints the usage for serve --help and check --help instead of running', async () => {
        for (const command of ['serve', 'check']) {
            const child = spawn(process.execPath, [BIN, command, '--help'], { stdio: ['ignore', 'pipe', 'pipe'] });
            let out = '';
            child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
            const killer = setTimeout(() => child.kill('SIGKILL'), 15_000);
            const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
            clearTimeout(killer);
            assert.equal(code, 0, `${command} --help`);
            assert.match(out, /^Usage: mailwarden <command>/);
        }
    });

    it('says "shutting down" on SIGTERM and exits 0', async () => {
        const r = await serveAndSignal('SIGTERM');
        assert.equal(r.bye, '421 4.3.2 Service shutting down; please try again later\r\n');
        assert.equal(r.exitCode, 0);
    });

    it('says "restarting" on SIGUSR2 and exits with the restart status', async () => {
        const r = await serveAndSignal('SIGUSR2');
        assert.equal(r.bye, '421 4.3.2 Service restarting; please try again in a moment\r\n');
        assert.equal(r.exitCode, RESTART_EXIT_CODE);
    });

    for (const restart of [false, true]) {
        it(`tells sessions the same through stop(${restart ? '{ restart: true }' : ''})`, async () => {
            const mw = await startApp(
                [
                    'hostname: mx.example.test',
                    'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                    'pregreet: { wait: 0s }',
                    'http: false',
                ].join('\n'),
            );
            try {
                const c = await smtpConnect(mw.port());
                await c.greeting();
                const stopping = mw.app.stop({ restart });
                const bye = await c.reply();
                assert.match(
                    bye.raw,
                    restart ? /^421 4\.3\.2 Service restarting;/ : /^421 4\.3\.2 Service shutting down;/,
                );
                c.close();
                await stopping;
            } finally {
                await mw.stop();
            }
        });
    }
});
