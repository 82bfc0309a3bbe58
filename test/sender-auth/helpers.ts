/**
 * Helpers for the sender-authentication tests: generated DKIM/ARC keys and their key records,
 * DKIM signing and ARC sealing with mailauth, a CheckContext for one message, and a resolver
 * pointed at a loopback test DNS server (never the system resolvers).
 */
import crypto from 'node:crypto';
import { Readable } from 'node:stream';
import { dkimSign, sealMessage } from 'mailauth';
import { defaultAuthentication } from '../../src/config/defaults.ts';
import type { AuthenticationConfig } from '../../src/config/types.ts';
import { createResolver, type Resolver } from '../../src/dns/resolver.ts';
import type { Check, CheckContext, CheckResult, Facts } from '../../src/types.ts';

/** The receiving host (authserv-id) of the tests. */
export const HOST = 'mx.test';
/** The client's address when a test names none (context()). */
export const CLIENT = '192.0.2.10';
/** The address of the ARC-sealing forwarder of the tests. */
export const FORWARDER_IP = '198.51.100.7';

export interface TestKey {
    readonly privateKey: string;
    /** The DKIM key record text (RFC 6376 section 3.6.1). */
    readonly record: string;
}

export function rsaKey(bits = 2048): TestKey {
    const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: bits });
    const der = publicKey.export({ type: 'spki', format: 'der' }).toString('base64');
    return {
        privateKey: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
        record: `v=DKIM1; k=rsa; p=${der}`,
    };
}

/** A message in canonical CRLF form. */
export function message(headers: Record<string, string> | [string, string][], body = 'Hello.\r\n'): string {
    const list = Array.isArray(headers) ? headers : Object.entries(headers);
    return list.map(([k, v]) => `${k}: ${v}\r\n`).join('') + '\r\n' + body;
}

export function basicMessage(from: string, extra: [string, string][] = []): string {
    return message([
        ['From', from],
        ['To', 'user@mx.test'],
        ['Subject', 'Test message'],
        ['Date', 'Mon, 1 Jan 2024 00:00:00 +0000'],
        ['Message-ID', `<${crypto.randomUUID()}@test>`],
        ...extra,
    ]);
}

export async function sign(
    msg: string,
    domain: string,
    selector: string,
    key: TestKey,
    options: { maxBodyLength?: number; canonicalization?: string } = {},
): Promise<string> {
    const out = await dkimSign(msg, {
        signatureData: [{ signingDomain: domain, selector, privateKey: key.privateKey, ...options }],
    } as Parameters<typeof dkimSign>[1]);
    if (out.errors.length > 0) throw new Error(`signing failed: ${JSON.stringify(out.errors)}`);
    return out.signatures + msg;
}

/** Adds one ARC set as a forwarder would (RFC 8617 section 5.1); `authResults` is the text after `i=N;`. */
export async function seal(
    msg: string,
    opts: { domain: string; selector: string; key: TestKey; authResults: string; cv: 'none' | 'pass' | 'fail' },
): Promise<string> {
    const sealed = await sealMessage(Buffer.from(msg), {
        signingDomain: opts.domain,
        selector: opts.selector,
        privateKey: opts.key.privateKey,
        authResults: opts.authResults,
        cv: opts.cv,
    });
    return sealed.toString() + msg;
}

export interface ContextOptions {
    ip?: string;
    helo?: string | null;
    mailFrom?: string | null;
    login?: string | null;
    facts?: Facts;
}

export function context(msg: string, o: ContextOptions = {}): CheckContext {
    const buf = Buffer.from(msg);
    return {
        stage: 'data',
        sessionId: 'test',
        facts: o.facts ?? {},
        client: {
            ip: o.ip ?? CLIENT,
            port: 40000,
            ptr: null,
            helo: o.helo === undefined ? 'client.test' : o.helo,
            proto: 'ESMTP',
            login: o.login ?? null,
        },
        envelope: { mailFrom: o.mailFrom === undefined ? 'sender@test' : o.mailFrom, rcptTo: ['user@mx.test'] },
        message: { stream: () => Readable.from([buf]), size: buf.length },
    };
}

/** Runs a check on one message (context()). */
export function runCheck(
    c: Check,
    msg: string,
    o: ContextOptions = {},
    signal = new AbortController().signal,
): Promise<CheckResult> {
    return c.run(context(msg, o), signal);
}

/** A resolver for the loopback test server: short timeout, one try, caching as in production. */
export function testResolver(address: string, cache = true): Resolver {
    return createResolver({
        servers: [address],
        timeoutMs: 250,
        tries: 1,
        cache: cache ? {} : { maxEntries: 0 },
    });
}

export function settings(over: Partial<AuthenticationConfig> = {}): AuthenticationConfig {
    return { ...defaultAuthentication(), timeoutMs: 10_000, ...over };
}
