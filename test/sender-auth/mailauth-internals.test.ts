// The contract with mailauth's internals (src/sender-auth/mailauth-internals.ts) for the pinned
// version: our composition of its parts gives exactly the results of its own `authenticate` (DKIM
// pass, fail and revoked keys, SPF, ARC, DMARC pass, reject, skip reasons and strict alignment, in
// lenient and strict mode, with a cold and a warm key store), and the key store reads a key record
// once and again only when the record changed, while every message still asks DNS for it, and
// refuses (and keeps refused) an RSA key whose public exponent is over 2^32.
import assert from 'node:assert/strict';
import { createPublicKey, generateKeyPairSync } from 'node:crypto';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { authenticate as mailauthAuthenticate, type DNSResolver } from 'mailauth';
import type { Resolver } from '../../src/dns/resolver.ts';
import { scopedResolver } from '../../src/dns/scoped.ts';
import { authenticate, type AuthenticateOptions } from '../../src/sender-auth/authenticate.ts';
import { createKeyStore, MAX_RSA_EXPONENT, type KeyStore } from '../../src/sender-auth/key-reuse.ts';
import { startDnsServer, type DnsTestServer, type Zone } from '../helpers/dns-server.ts';
import {
    basicMessage,
    CLIENT,
    FORWARDER_IP,
    HOST,
    message,
    rsaKey,
    seal,
    sign,
    testResolver,
    type TestKey,
} from './helpers.ts';

let dns: DnsTestServer;
let resolver: Resolver;
let bankKey: TestKey;
let newBankKey: TestKey;
let strictKey: TestKey;
let forwarderKey: TestKey;
let edRecord: string;
/** A key whose public exponent is 2^32 - 1, the largest accepted. */
let topKey: TestKey;

/**
 * A key record with the modulus of `key` and the public exponent `e` (OpenSSL makes no such key
 * pair; its public half is imported from a JWK).
 */
function withExponent(key: TestKey, e: bigint | 'huge'): string {
    const jwk = createPublicKey(key.privateKey).export({ format: 'jwk' });
    let exponent: Buffer;
    if (e === 'huge') {
        // just below the modulus, odd: as large as OpenSSL verifies with (moduli of up to 3,072 bits)
        exponent = Buffer.from(jwk.n!, 'base64url');
        exponent[0]! &= 0x3f;
        exponent[exponent.length - 1]! |= 1;
    } else {
        const hex = e.toString(16);
        exponent = Buffer.from(hex.length % 2 === 0 ? hex : `0${hex}`, 'hex');
    }
    const pub = createPublicKey({ key: { kty: 'RSA', n: jwk.n!, e: exponent.toString('base64url') }, format: 'jwk' });
    return `v=DKIM1; k=rsa; p=${pub.export({ type: 'spki', format: 'der' }).toString('base64')}`;
}

function zone(key: TestKey = bankKey): Zone {
    return {
        'bank.example': { TXT: [`v=spf1 ip4:${CLIENT} -all`] },
        'sel._domainkey.bank.example': { TXT: [key.record] },
        '_dmarc.bank.example': { TXT: ['v=DMARC1; p=reject'] },
        'strict.example': { TXT: [`v=spf1 ip4:${CLIENT} -all`] },
        'sel._domainkey.strict.example': { TXT: [strictKey.record] },
        'sel._domainkey.sub.strict.example': { TXT: [strictKey.record] },
        '_dmarc.strict.example': { TXT: ['v=DMARC1; p=reject; adkim=s'] },
        'revoked._domainkey.bank.example': { TXT: ['v=DKIM1; k=rsa; p='] },
        // a good key in a record padded with notes (RFC 6376 section 3.6.1, n=) past what is kept
        'long._domainkey.bank.example': { TXT: [key.record.replace('k=rsa;', `k=rsa; n=${'x'.repeat(3000)};`)] },
        // an Ed25519 key (RFC 8463) where the signature says rsa-sha256
        'ed._domainkey.bank.example': { TXT: [edRecord] },
        'forwarder.example': { TXT: [`v=spf1 ip4:${FORWARDER_IP} -all`] },
        'arc._domainkey.forwarder.example': { TXT: [forwarderKey.record] },
        // the bank's and the forwarder's moduli with public exponents over 2^32; a key at 2^32 - 1
        'huge._domainkey.bank.example': { TXT: [withExponent(key, 'huge')] },
        'hugelong._domainkey.bank.example': {
            TXT: [withExponent(key, 'huge').replace('k=rsa;', `k=rsa; n=${'x'.repeat(3000)};`)],
        },
        'over._domainkey.bank.example': { TXT: [withExponent(key, MAX_RSA_EXPONENT + 1n)] },
        'top._domainkey.bank.example': { TXT: [topKey.record] },
        'huge._domainkey.forwarder.example': { TXT: [withExponent(forwarderKey, 'huge')] },
    };
}

before(async () => {
    bankKey = rsaKey();
    newBankKey = rsaKey();
    strictKey = rsaKey();
    forwarderKey = rsaKey();
    const top = generateKeyPairSync('rsa', { modulusLength: 2048, publicExponent: 0xffffffff });
    topKey = {
        privateKey: top.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
        record: `v=DKIM1; k=rsa; p=${top.publicKey.export({ type: 'spki', format: 'der' }).toString('base64')}`,
    };
    const ed = generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'der' });
    edRecord = `v=DKIM1; k=ed25519; p=${ed.subarray(ed.length - 32).toString('base64')}`;
    dns = await startDnsServer(zone());
    // no cache: both sides of a comparison see the same DNS answers
    resolver = testResolver(dns.address, false);
});

after(async () => {
    resolver.close();
    await dns.close();
});

interface Case {
    readonly name: string;
    readonly msg: string;
    readonly ip?: string;
    readonly sender?: string;
}

async function cases(): Promise<Case[]> {
    const bank = await sign(basicMessage('Alice <alice@bank.example>'), 'bank.example', 'sel', bankKey);
    const tampered = bank.replace('Hello.', 'Hello!');
    const strict = await sign(basicMessage('s@strict.example'), 'strict.example', 'sel', strictKey);
    const sub = await sign(basicMessage('s@strict.example'), 'sub.strict.example', 'sel', strictKey);
    const revoked = await sign(basicMessage('r@bank.example'), 'bank.example', 'revoked', bankKey);
    const wrongKeyType = await sign(basicMessage('e@bank.example'), 'bank.example', 'ed', bankKey);
    const forwarded = await seal(bank, {
        domain: 'forwarder.example',
        selector: 'arc',
        key: forwarderKey,
        authResults: `${HOST}; dkim=pass header.d=bank.example; spf=pass smtp.mailfrom=bank.example`,
        cv: 'none',
    });
    return [
        { name: 'DKIM and SPF pass', msg: bank, sender: 'alice@bank.example' },
        { name: 'a spoof of a p=reject domain', msg: basicMessage('ceo@bank.example'), ip: '203.0.113.9' },
        { name: 'a body changed after signing', msg: tampered, sender: 'alice@bank.example' },
        { name: 'strict alignment, a failing aligned signature', msg: strict.replace('Hello.', 'Bye.') },
        { name: 'strict alignment, a subdomain signature', msg: sub },
        { name: 'a revoked key', msg: revoked },
        { name: 'an rsa-sha256 signature and an Ed25519 key', msg: wrongKeyType },
        { name: 'an ARC chain from a forwarder', msg: forwarded, ip: FORWARDER_IP },
        { name: 'two author domains', msg: basicMessage('a@bank.example, b@strict.example') },
        { name: 'no From', msg: message({ To: 'x@mx.test', Subject: 'x' }) },
        { name: 'authenticated (no client address)', msg: bank, ip: '' },
    ];
}

function options(c: Case, strict: boolean, keys: KeyStore): AuthenticateOptions {
    return {
        ip: c.ip === '' ? undefined : (c.ip ?? CLIENT),
        helo: 'client.test',
        sender: c.sender ?? 'sender@bank.example',
        mta: HOST,
        resolver: resolver.resolve,
        disableDmarc: false,
        minBitLength: 1024,
        rejectRsaSha1: false,
        strict,
        maxResolveCount: 10,
        maxElapsedTime: 5000,
        keys,
    };
}

/** mailauth's own result, the parts the composition returns. */
async function reference(c: Case, o: AuthenticateOptions): Promise<unknown> {
    const res = await mailauthAuthenticate(c.msg, {
        ip: o.ip,
        helo: o.helo,
        sender: o.sender,
        mta: o.mta,
        resolver: o.resolver as DNSResolver,
        trustReceived: false,
        disableBimi: true,
        disableArc: false,
        disableDmarc: o.disableDmarc,
        minBitLength: o.minBitLength,
        rejectRsaSha1: o.rejectRsaSha1,
        strict: o.strict,
        maxResolveCount: o.maxResolveCount,
        maxElapsedTime: o.maxElapsedTime,
    } as Parameters<typeof mailauthAuthenticate>[1]);
    const dkim = res.dkim as unknown as Record<string, unknown>;
    const arc = res.arc ? { ...(res.arc as unknown as Record<string, unknown>) } : false;
    // the Authentication-Results text mailauth builds for sealing; we write our own
    if (arc) delete arc.authResults;
    const out: Record<string, unknown> = {
        dkim: {
            headerFrom: dkim.headerFrom,
            fromFields: dkim.fromFields,
            envelopeFrom: dkim.envelopeFrom,
            results: dkim.results,
        },
        spf: res.spf,
        arc,
        dmarc: res.dmarc,
    };
    const skip = (res as unknown as { dmarcSkipReason?: string }).dmarcSkipReason;
    if (skip !== undefined) out.dmarcSkipReason = skip;
    return out;
}

/** SPF results carry how long the evaluation took; everything else must be equal. */
function stable(value: unknown): unknown {
    return JSON.parse(JSON.stringify(value, (k, v: unknown) => (k === 'elapsed' ? undefined : v)));
}

describe('mailauth internals: the composition gives what authenticate gives', () => {
    for (const strict of [false, true]) {
        it(`every case, ${strict ? 'strict' : 'lenient'} mode, cold and warm key store`, async () => {
            const keys = createKeyStore();
            for (const round of ['cold', 'warm']) {
                for (const c of await cases()) {
                    const o = options(c, strict, keys);
                    const ours = await authenticate(Readable.from([Buffer.from(c.msg)]), o);
                    assert.deepEqual(stable(ours), stable(await reference(c, o)), `${c.name} (${round})`);
                }
            }
            assert.ok(keys.reads > 0);
        });
    }
});

describe('mailauth internals: DKIM keys are read once per key record', () => {
    async function verify(msg: string, keys: KeyStore): Promise<{ results: string[]; queries: number }> {
        const scoped = scopedResolver(resolver.resolve, { maxQueries: 50 });
        const c: Case = { name: '', msg };
        const res = await authenticate(Readable.from([Buffer.from(msg)]), {
            ...options(c, false, keys),
            resolver: scoped.resolve,
        });
        return { results: res.dkim.results.map((r) => r.status.result), queries: scoped.queries };
    }

    it('the same record is read once, a changed record again, and the old key no longer verifies', async () => {
        const keys = createKeyStore();
        const first = await sign(basicMessage('a@bank.example'), 'bank.example', 'sel', bankKey);
        const second = await sign(basicMessage('b@bank.example'), 'bank.example', 'sel', bankKey);
        const asked = (): number => dns.queries.filter((q) => q.name === 'sel._domainkey.bank.example').length;
        const before = asked();
        assert.deepEqual((await verify(first, keys)).results, ['pass']);
        assert.deepEqual((await verify(second, keys)).results, ['pass']);
        assert.equal(keys.reads, 1, 'the second message reused the key read for the first');
        assert.equal(asked() - before, 2, 'each message still asked DNS for the key record');

        dns.setZone(zone(newBankKey));
        try {
            const rotated = await sign(basicMessage('c@bank.example'), 'bank.example', 'sel', newBankKey);
            assert.deepEqual((await verify(rotated, keys)).results, ['pass']);
            assert.equal(keys.reads, 2, 'the changed record was read');
            assert.notDeepEqual((await verify(first, keys)).results, ['pass'], 'the old key was used');
            assert.equal(keys.reads, 2);
        } finally {
            dns.setZone(zone());
        }
    });

    it('a refused record is not kept: the same result every time, read every time', async () => {
        const keys = createKeyStore();
        const revoked = await sign(basicMessage('r@bank.example'), 'bank.example', 'revoked', bankKey);
        const a = await verify(revoked, keys);
        const b = await verify(revoked, keys);
        assert.deepEqual(a, b);
        assert.notDeepEqual(a.results, ['pass']);
        assert.equal(keys.size, 0);
    });

    it("does not keep a record longer than any real key record (its length is the sender's)", async () => {
        const keys = createKeyStore();
        const padded = await sign(basicMessage('l@bank.example'), 'bank.example', 'long', bankKey);
        assert.deepEqual((await verify(padded, keys)).results, ['pass']);
        assert.deepEqual((await verify(padded, keys)).results, ['pass']);
        assert.equal(keys.size, 0);
        assert.equal(keys.reads, 2, 'read for each message');
    });

    it('refuses an RSA key whose public exponent is over 2^32 as a key it cannot use (DKIM neutral, ARC fail), and keeps the refusal', async () => {
        for (const strict of [false, true]) {
            const keys = createKeyStore();
            for (const selector of ['huge', 'over']) {
                // signed with the bank's key; the record has its modulus and another exponent
                const msg = await sign(basicMessage('a@bank.example'), 'bank.example', selector, bankKey);
                for (const round of ['read', 'kept']) {
                    const res = await authenticate(
                        Readable.from([Buffer.from(msg)]),
                        options({ name: '', msg }, strict, keys),
                    );
                    const row = res.dkim.results[0]!;
                    assert.equal(row.status.result, 'neutral', `${selector} ${round}`);
                    assert.equal(row.status.comment, 'invalid public key', `${selector} ${round}`);
                }
                // mailauth alone verifies with it: a failing signature, and the work of a huge exponent
                const own = (await reference({ name: '', msg }, options({ name: '', msg }, strict, keys))) as {
                    dkim: { results: { status: { result: string } }[] };
                };
                assert.equal(own.dkim.results[0]!.status.result, 'fail');
            }
            assert.equal(keys.reads, 2, 'each record read once, its refusal kept');
            assert.equal(keys.size, 2);
            // a record too long to keep: refused each time it is read
            const long = await sign(basicMessage('a@bank.example'), 'bank.example', 'hugelong', bankKey);
            for (let i = 0; i < 2; i++) {
                const res = await authenticate(
                    Readable.from([Buffer.from(long)]),
                    options({ name: '', msg: long }, strict, keys),
                );
                assert.equal(res.dkim.results[0]!.status.result, 'neutral');
            }
            assert.equal(keys.reads, 4);

            // the largest exponent accepted: verified, and passing
            const top = await sign(basicMessage('t@bank.example'), 'bank.example', 'top', topKey);
            const passed = await authenticate(
                Readable.from([Buffer.from(top)]),
                options({ name: '', msg: top }, strict, keys),
            );
            assert.equal(passed.dkim.results[0]!.status.result, 'pass');

            // an ARC chain sealed with such a key fails
            const forwarded = await seal(await sign(basicMessage('a@bank.example'), 'bank.example', 'sel', bankKey), {
                domain: 'forwarder.example',
                selector: 'huge',
                key: forwarderKey,
                authResults: `${HOST}; dkim=pass header.d=bank.example`,
                cv: 'none',
            });
            const c: Case = { name: '', msg: forwarded, ip: FORWARDER_IP };
            const arc = (await authenticate(Readable.from([Buffer.from(forwarded)]), options(c, strict, keys))).arc;
            assert.ok(arc);
            assert.equal(arc.status.result, 'fail');
            assert.match(String(arc.status.comment), /invalid public key for huge\._domainkey\.forwarder\.example/);
        }
    });

    it('keeps at most maxEntries records', async () => {
        const keys = createKeyStore(1);
        await verify(await sign(basicMessage('a@bank.example'), 'bank.example', 'sel', bankKey), keys);
        await verify(await sign(basicMessage('s@strict.example'), 'strict.example', 'sel', strictKey), keys);
        assert.equal(keys.size, 1);
        assert.equal(keys.reads, 2);
    });
});
