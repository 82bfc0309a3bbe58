// Outbound DKIM: `mailwarden dkim keygen` output (key file, TXT record that parses), signing
// (RSA and Ed25519, Buffer and stream) verified by mailauth's authenticate() through our
// resolver over a loopback test DNS server, From oversigning, parent-domain keys, and what
// breaks a signature.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { authenticate, type DNSResolver } from 'mailauth';
import { runDkim } from '../../src/commands/dkim.ts';
import { createResolver, type Resolver } from '../../src/dns/resolver.ts';
import { formatField } from '../../src/headers.ts';
import { createDkimSigner, relaxedHeader, type DkimSigner } from '../../src/submission/dkim-sign.ts';
import { txtStrings } from '../../src/submission/dkim-keys.ts';
import { startDnsServer, type DnsTestServer } from '../helpers/dns-server.ts';

let dir: string;
let dns: DnsTestServer;
let resolver: Resolver;
let rsaSigner: DkimSigner;
let edSigner: DkimSigner;
const records: Record<string, string> = {};

function keygen(args: string[]): { code: number; out: string[]; err: string[] } {
    const out: string[] = [];
    const err: string[] = [];
    const code = runDkim(args, { out: (l) => out.push(l), err: (l) => err.push(l), cwd: dir });
    return { code, out, err };
}

/** Reads `OWNER IN TXT "…" "…"` back into the owner and the joined text. */
function parseZoneLine(line: string): { owner: string; strings: string[] } {
    const m = /^(\S+) IN TXT ((?:"[^"]*"\s?)+)$/.exec(line);
    assert.ok(m, line);
    const strings = [...(m[2] ?? '').matchAll(/"([^"]*)"/g)].map((x) => x[1] ?? '');
    return { owner: m[1] ?? '', strings };
}

const MESSAGE = [
    'From: Alice Example <alice@example.com>',
    'To: Bob <bob@example.net>',
    'Subject:  A test   message,',
    '\tfolded',
    'Date: Mon, 1 Jan 2024 10:00:00 +0000',
    'Message-ID: <test-1@example.com>',
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=utf-8',
    'X-Not-Signed: yes',
    '',
    'Hello Bob,  ',
    '',
    'Grüße.',
    '',
    '',
].join('\r\n');

async function verify(message: Buffer): Promise<{ result: string; d: string }[]> {
    const res = await authenticate(message, {
        ip: '192.0.2.1',
        helo: 'client.example.com',
        sender: 'alice@example.com',
        mta: 'mx.example.net',
        resolver: resolver.resolve as DNSResolver,
    });
    return res.dkim.results.map((r) => ({
        result: r.status.result,
        d: String(r.signingDomain ?? ''),
    }));
}

async function signed(signer: DkimSigner, message: string | Buffer, fromDomain = 'example.com'): Promise<Buffer> {
    const body = Buffer.isBuffer(message) ? message : Buffer.from(message);
    const field = await signer.sign(body, fromDomain);
    assert.ok(field);
    return Buffer.concat([Buffer.from(formatField(field)), body]);
}

before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mw-dkim-'));
    for (const [selector, type] of [
        ['rsa1', 'rsa'],
        ['ed1', 'ed25519'],
    ] as const) {
        const r = keygen(['keygen', '--domain', 'Example.COM', '--selector', selector, '--type', type]);
        assert.equal(r.code, 0, r.err.join('\n'));
        assert.equal(r.out.length, 1);
        const { owner, strings } = parseZoneLine(r.out[0] ?? '');
        assert.equal(owner, `${selector}._domainkey.example.com.`);
        for (const s of strings) assert.ok(s.length <= 255);
        records[selector] = strings.join('');
    }
    dns = await startDnsServer({
        'rsa1._domainkey.example.com': { TXT: [records.rsa1 ?? ''] },
        'ed1._domainkey.example.com': { TXT: [records.ed1 ?? ''] },
    });
    resolver = createResolver({ servers: [dns.address], timeoutMs: 1000 });
    rsaSigner = createDkimSigner({
        domains: [{ domain: 'example.com', selector: 'rsa1', keyFile: path.join(dir, 'example.com.rsa1.key') }],
    });
    edSigner = createDkimSigner({
        domains: [
            {
                domain: 'example.com',
                selector: 'ed1',
                keyFile: path.join(dir, 'example.com.ed1.key'),
                algorithm: 'ed25519-sha256',
            },
        ],
    });
});

after(async () => {
    resolver?.close();
    await dns?.close();
    fs.rmSync(dir, { recursive: true, force: true });
});

describe('mailwarden dkim keygen', () => {
    it('writes the private key with mode 0600 and prints a record that splits at 255', () => {
        const file = path.join(dir, 'example.com.rsa1.key');
        assert.equal(fs.statSync(file).mode & 0o777, 0o600);
        assert.match(fs.readFileSync(file, 'utf8'), /^-----BEGIN PRIVATE KEY-----/);
        assert.match(records.rsa1 ?? '', /^v=DKIM1; k=rsa; p=MII[A-Za-z0-9+/=]+$/);
        assert.ok((records.rsa1 ?? '').length > 255, 'a 2048-bit key needs two strings');
        assert.match(records.ed1 ?? '', /^v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}=$/);
        assert.deepEqual(
            txtStrings('a'.repeat(600)).map((s) => s.length),
            [255, 255, 90],
        );
    });

    it('never overwrites a key and checks its arguments', () => {
        const again = keygen(['keygen', '--domain', 'example.com', '--selector', 'rsa1']);
        assert.equal(again.code, 1);
        assert.match(again.err[0] ?? '', /exists already; it is not overwritten/);
        const bits = keygen([
            'keygen',
            '--domain',
            'example.com',
            '--selector',
            'big',
            '--bits',
            '1024',
            '--out',
            'big.key',
        ]);
        assert.equal(bits.code, 0, bits.err.join('\n'));
        assert.match(
            bits.err.join('\n'),
            /dkim:\n {2}sign:\n {4}- \{ domain: example\.com, selector: big, key: .*big\.key \}/,
        );
        for (const [args, message] of [
            [['keygen', '--selector', 's'], /--domain is required/],
            [['keygen', '--domain', 'example.com'], /--selector is required/],
            [['keygen', '--domain', 'exa mple.com', '--selector', 's'], /is not a domain name/],
            [['keygen', '--domain', 'example.com', '--selector', 's_1'], /is not a DKIM selector/],
            [
                ['keygen', '--domain', 'example.com', '--selector', 's', '--type', 'dsa'],
                /--type must be rsa or ed25519/,
            ],
            [['keygen', '--domain', 'example.com', '--selector', 's', '--bits', '512'], /--bits must be/],
            [
                ['keygen', '--domain', 'example.com', '--selector', 's', '--type', 'ed25519', '--bits', '2048'],
                /--bits applies to RSA/,
            ],
            [['rotate'], /unknown action 'rotate'/],
            [['keygen', '--private-key-to-stdout'], /Unknown option/],
        ] as const) {
            const r = keygen([...args]);
            assert.equal(r.code, 2, args.join(' '));
            assert.match(r.err[0] ?? '', message, args.join(' '));
        }
    });
});

describe('DKIM signing', () => {
    it('signs with RSA so that mailauth verifies it (relaxed/relaxed, the fields a reader is shown oversigned)', async () => {
        const field = await rsaSigner.sign(Buffer.from(MESSAGE), 'example.com');
        assert.ok(field);
        assert.equal(field.name, 'DKIM-Signature');
        assert.match(field.value, /^v=1; a=rsa-sha256; c=relaxed\/relaxed; d=example\.com; s=rsa1; t=\d+; /);
        // From, Reply-To, Subject, To and Cc one more time than they occur, Date, Message-ID and
        // the MIME fields too when present (RFC 6376 section 8.15)
        assert.match(
            field.value,
            /; h=From:From:Reply-To:Subject:Subject:Date:Date:Message-ID:Message-ID:To:To:Cc:MIME-Version:MIME-Version:Content-Type:Content-Type; bh=/,
        );
        assert.ok(!field.value.includes('X-Not-Signed'));
        const results = await verify(Buffer.concat([Buffer.from(formatField(field)), Buffer.from(MESSAGE)]));
        assert.deepEqual(
            results.map((r) => [r.result, r.d]),
            [['pass', 'example.com']],
        );
    });

    it('signs with Ed25519 (RFC 8463) so that mailauth verifies it', async () => {
        const message = await signed(edSigner, MESSAGE);
        assert.match(message.toString(), /a=ed25519-sha256/);
        assert.deepEqual(
            (await verify(message)).map((r) => r.result),
            ['pass'],
        );
    });

    it('signs a stream as it signs a buffer', async () => {
        const bytes = Buffer.from(MESSAGE);
        const chunks = [bytes.subarray(0, 7), bytes.subarray(7, 120), bytes.subarray(120)];
        const field = await rsaSigner.sign(Readable.from(chunks), 'example.com');
        assert.ok(field);
        const results = await verify(Buffer.concat([Buffer.from(formatField(field)), bytes]));
        assert.deepEqual(
            results.map((r) => r.result),
            ['pass'],
        );
    });

    it('uses the key of a parent domain and signs nothing without a key', async () => {
        assert.deepEqual(rsaSigner.keyFor('News.Example.com.'), { domain: 'example.com', selector: 'rsa1' });
        const message = MESSAGE.replace('alice@example.com', 'alice@news.example.com');
        assert.deepEqual(
            (await verify(await signed(rsaSigner, message, 'news.example.com'))).map((r) => r.result),
            ['pass'],
        );
        assert.equal(rsaSigner.keyFor('example.org'), null);
        assert.equal(await rsaSigner.sign(Buffer.from(MESSAGE), 'example.org'), null);
        assert.equal(await rsaSigner.sign(Readable.from([Buffer.from(MESSAGE)]), 'notexample.com'), null);
    });

    it('breaks when a From field is added, a signed field or the body changes', async () => {
        const message = (await signed(rsaSigner, MESSAGE)).toString('latin1');
        const [head = '', body = ''] = message.split('\r\n\r\n');
        const tampered = {
            'a second From on top': `From: ceo@example.com\r\n${message}`,
            'a second From below': message.replace('To: Bob', 'From: ceo@example.com\r\nTo: Bob'),
            'the subject': message.replace('A test', 'A fake'),
            'the body': `${head}\r\n\r\n${body.replace('Hello', 'Hullo')}`,
        };
        for (const [what, text] of Object.entries(tampered)) {
            const results = await verify(Buffer.from(text, 'latin1'));
            assert.notEqual(results[0]?.result, 'pass', what);
        }
        // whitespace changes in headers and at line ends are what relaxed canonicalization absorbs
        const rewrapped = message.replace('Subject:  A test   message,\r\n\tfolded', 'Subject: A test message, folded');
        assert.deepEqual(
            (await verify(Buffer.from(rewrapped, 'latin1'))).map((r) => r.result),
            ['pass'],
        );
    });

    it('a field put on top of the signed message breaks the signature: a Reply-To, a second Subject, a Cc, Date or Content-Type', async () => {
        const field = await rsaSigner.sign(Buffer.from(MESSAGE), 'example.com');
        const signature = Buffer.from(formatField(field!));
        for (const added of [
            'Reply-To: treasury@evil.example\r\n',
            'Subject: URGENT: wire the money today\r\n',
            'Cc: someone@evil.example\r\n',
            'Date: Tue, 2 Jan 2024 10:00:00 +0000\r\n',
            'Content-Type: text/html\r\n',
        ]) {
            const altered = Buffer.concat([signature, Buffer.from(added), Buffer.from(MESSAGE)]);
            assert.deepEqual(
                (await verify(altered)).map((r) => r.result),
                ['fail'],
                added,
            );
        }
        // as signed, it passes
        assert.deepEqual(
            (await verify(Buffer.concat([signature, Buffer.from(MESSAGE)]))).map((r) => r.result),
            ['pass'],
        );
    });

    it('signs every instance of a repeated field, bottom-up', async () => {
        const message = MESSAGE.replace(
            'To: Bob <bob@example.net>',
            'To: Bob <bob@example.net>\r\nTo: Carol <carol@example.net>',
        );
        const field = await rsaSigner.sign(Buffer.from(message), 'example.com');
        assert.match(
            field?.value ?? '',
            /h=From:From:Reply-To:Subject:Subject:Date:Date:Message-ID:Message-ID:To:To:To:/,
        );
        assert.deepEqual(
            (await verify(Buffer.concat([Buffer.from(formatField(field!)), Buffer.from(message)]))).map(
                (r) => r.result,
            ),
            ['pass'],
        );
    });

    it('signs a section of as many fields as the session takes, every instance of a repeated one', async () => {
        // the 1,000 fields the session takes from a client, and our own fields on top of them
        const tos = Array.from({ length: 1003 }, (_, i) => `To: r${i}@example.net`).join('\r\n');
        const message = MESSAGE.replace('To: Bob <bob@example.net>', tos);
        const field = await rsaSigner.sign(Buffer.from(message), 'example.com');
        const h = /;h=([^;]+);/.exec(field?.value.replace(/\s+/g, '') ?? '')?.[1]?.split(':') ?? [];
        assert.equal(h.filter((n) => n === 'To').length, 1004, 'each To once, and once more');
        assert.deepEqual(
            (await verify(Buffer.concat([Buffer.from(formatField(field!)), Buffer.from(message)]))).map(
                (r) => r.result,
            ),
            ['pass'],
        );
    });

    it('signs the configured header list, From always included', async () => {
        const signer = createDkimSigner({
            domains: [{ domain: 'example.com', selector: 'rsa1', keyFile: path.join(dir, 'example.com.rsa1.key') }],
            headers: ['Subject', 'X-Not-Signed'],
        });
        const field = await signer.sign(Buffer.from(MESSAGE), 'example.com');
        assert.match(field?.value ?? '', /h=From:From:Subject:Subject:X-Not-Signed;/);
        assert.deepEqual(
            (await verify(Buffer.concat([Buffer.from(formatField(field!)), Buffer.from(MESSAGE)]))).map(
                (r) => r.result,
            ),
            ['pass'],
        );
    });

    it('refuses a message without From, and keys it cannot use', async () => {
        await assert.rejects(rsaSigner.sign(Buffer.from('Subject: x\r\n\r\nbody\r\n'), 'example.com'), /no From/);
        const ec = path.join(dir, 'ec.pem');
        fs.writeFileSync(
            ec,
            '-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n',
        );
        assert.throws(() => createDkimSigner({ domains: [{ domain: 'example.com', selector: 's', keyFile: ec }] }));
        assert.throws(() =>
            createDkimSigner({
                domains: [{ domain: 'example.com', selector: 's', keyFile: path.join(dir, 'nope.pem') }],
            }),
        );
        assert.throws(
            () =>
                createDkimSigner({
                    domains: [
                        {
                            domain: 'example.com',
                            selector: 's',
                            keyFile: path.join(dir, 'example.com.ed1.key'),
                            algorithm: 'rsa-sha256',
                        },
                    ],
                }),
            /does not fit/,
        );
    });

    it('canonicalizes header fields as RFC 6376 section 3.4.2 says', () => {
        assert.equal(relaxedHeader('SUBJect \t:  A  \t test \r\n\tfolded  '), 'subject:A test folded');
        assert.equal(relaxedHeader('X: '), 'x:');
    });
});
