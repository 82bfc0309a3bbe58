/**
 * `mailwarden explain` shows what the DNS lists answered: which lists are healthy and asked,
 * which are disabled and why, the listing codes as facts, the error answers apart from them,
 * and the block-list rule that refuses, with its reply naming the list and its delisting page.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { startDnsServer, type DnsTestServer } from '../helpers/dns-server.ts';

const run = promisify(execFile);
const BIN = new URL('../../bin/mailwarden.js', import.meta.url).pathname;

describe('mailwarden explain with DNS lists', () => {
    let dns: DnsTestServer;
    let dir: string;
    let config: string;
    let message: string;
    before(async () => {
        dns = await startDnsServer({
            '2.0.0.127.bl.test': { A: ['127.0.0.2'] },
            '7.100.51.198.bl.test': { A: ['127.0.0.4'] },
            '2.0.0.127.refusing.test': { A: ['127.0.0.2'] },
            '7.100.51.198.refusing.test': { A: ['127.255.255.252'] },
            // dead.test lists nothing, not even its test entry
        });
        dir = await mkdtemp(join(tmpdir(), 'mw-explain-lists-'));
        config = join(dir, 'mailwarden.yaml');
        await writeFile(
            config,
            [
                'hostname: mx.example.test',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 2525, mode: mx }]',
                `dns: { servers: ["${dns.address}"], timeout: 500ms }`,
                'reputation:',
                "  dnsbl: ['bl.test=127.0.0.[2..11]*3 https://bl.test/lookup', refusing.test*2, dead.test]",
                'http: false',
                '',
            ].join('\n'),
        );
        message = join(dir, 'm.eml');
        await writeFile(message, 'From: a@sender.example\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nHello.\r\n');
    });
    after(async () => {
        await dns.close();
        await rm(dir, { recursive: true, force: true });
    });

    it('lists the lists, the listing codes and the error answers, and the refusal naming the list', async () => {
        const { stdout } = await run(process.execPath, [
            BIN,
            'explain',
            '-c',
            config,
            '--client-ip',
            '198.51.100.7',
            '--helo',
            'mail.sender.example',
            '--mail-from',
            'a@sender.example',
            '--rcpt',
            'bob@example.test',
            message,
        ]);
        assert.match(stdout, /^dns lists:\n {2}bl\.test \(address\): healthy, asked\n/m);
        assert.match(stdout, /^ {2}dead\.test \(address\): disabled, not asked: lists nothing/m);
        assert.match(stdout, /^ {2}dnsbl\.listed = \[bl\.test=127\.0\.0\.4\]$/m);
        assert.match(stdout, /^ {2}dnsbl\.score = 3$/m);
        assert.match(
            stdout,
            /^ {2}dnsbl\.errors = \[refusing\.test: answer 127\.255\.255\.252: the list refused the query\]$/m,
        );
        assert.match(stdout, /\+ dnsbl-reject \(70-reputation\.yaml:\d+\) matched: reject/);
        assert.match(stdout, /^stopped at: helo$/m);
        assert.match(
            stdout,
            /^reply: 550 5\.7\.1 Mail refused: the address of your mail server \(198\.51\.100\.7\) is on the block list bl\.test\. Look the address up at https:\/\/bl\.test\/lookup/m,
        );
    });
});
