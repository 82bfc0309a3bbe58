/**
 * Outbound DKIM signing of authenticated submissions (RFC 6376; Ed25519 per RFC 8463;
 * key sizes per RFC 8301): relaxed/relaxed canonicalization, the usual header list (From, To,
 * Cc, Subject, Date, Message-ID, MIME and list fields …), and the fields a reader is shown signed
 * one time more than they occur ("oversigning", RFC 6376 section 8.15: OVERSIGNED_ALWAYS and
 * OVERSIGNED_PRESENT) so that such a field added later breaks the signature instead of passing
 * it on.
 * mailauth's dkimSign computes the body hash (and validates the key, d= and s=); the
 * DKIM-Signature field itself is built here, because mailauth cannot list a field in h= more
 * often than it occurs. The key is chosen by the author (From) domain: its own key, else the key
 * of the closest parent domain (which still aligns under DMARC's relaxed mode, RFC 7489
 * section 3.1.1). Keys are read once, at creation; nothing here logs or sends anything.
 * mailauth is loaded when a signer is made, not before: a gateway that signs nothing does not
 * carry it on its main thread (verification runs in its own thread, src/sender-auth/verify-thread.ts).
 */
import { createHash, createPrivateKey, sign as cryptoSign, type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import { pipeline, Transform, type Readable, type TransformCallback } from 'node:stream';
import type { DkimAlgorithm } from '../config/types.ts';
import { parseHeaderSection } from '../headers.ts';
import { foldDomain } from '../net/domain.ts';
import type { HeaderField } from '../types.ts';
import { trimWspEnd } from '../trim.ts';

type DkimSign = (typeof import('../sender-auth/mailauth-internals.ts'))['dkimSign'];
let signing: Promise<DkimSign> | null = null;
/** mailauth's dkimSign, loaded once, on the first use. */
function loadDkimSign(): Promise<DkimSign> {
    signing ??= import('../sender-auth/mailauth-internals.ts').then((m) => m.dkimSign);
    return signing;
}

/** Header fields signed when the configuration names none (each instance present is signed). */
export const DEFAULT_SIGNED_HEADERS: readonly string[] = [
    'From',
    'Sender',
    'Reply-To',
    'Subject',
    'Date',
    'Message-ID',
    'To',
    'Cc',
    'MIME-Version',
    'Content-Type',
    'Content-Transfer-Encoding',
    'Content-ID',
    'Content-Description',
    'Content-Disposition',
    'Content-Language',
    'Resent-Date',
    'Resent-From',
    'Resent-Sender',
    'Resent-To',
    'Resent-Cc',
    'Resent-Message-ID',
    'In-Reply-To',
    'References',
    'List-Id',
    'List-Help',
    'List-Unsubscribe',
    'List-Unsubscribe-Post',
    'List-Subscribe',
    'List-Post',
    'List-Owner',
    'List-Archive',
    'Autocrypt',
];

/**
 * Fields listed in h= one time more than they occur (RFC 6376 sections 5.4.2 and 8.15), so that
 * one added later breaks the signature instead of riding on it: a reader shows the first
 * instance, a verifier checks the last. These even when the message has none (one added later,
 * a Reply-To to the attacker or a new Subject, would be shown as the author's).
 */
const OVERSIGNED_ALWAYS = new Set(['from', 'reply-to', 'subject', 'to', 'cc']);
/**
 * These only when the message has them: a second instance is what could mislead; a first one
 * is what forwarders and mailing lists legitimately add (a list's Sender, a gateway's MIME
 * fields), which must not break the signature.
 */
const OVERSIGNED_PRESENT = new Set([
    'sender',
    'date',
    'message-id',
    'mime-version',
    'content-type',
    'content-transfer-encoding',
    'in-reply-to',
    'references',
    'autocrypt',
]);

/** The header section is read from a stream up to this size; a longer one is not signed. */
const MAX_HEADER_BYTES = 1024 * 1024;

export interface DkimSignerDomain {
    readonly domain: string;
    readonly selector: string;
    readonly keyFile: string;
    /** Follows the key type when absent. */
    readonly algorithm?: DkimAlgorithm;
}

export interface DkimSignerConfig {
    readonly domains: readonly DkimSignerDomain[];
    /** Header fields to sign; From is always included. Default DEFAULT_SIGNED_HEADERS. */
    readonly headers?: readonly string[] | null;
    /** Clock for t=, in milliseconds (tests). */
    readonly now?: () => number;
}

export interface DkimSigner {
    /**
     * The DKIM-Signature field for `message` (a canonical CRLF message, exactly as it will be
     * forwarded), signed with the key for `fromDomain`; null when no key covers that domain.
     * Prepend the field to the message. Throws when the message cannot be signed (no From).
     */
    sign(message: Buffer | Readable, fromDomain: string): Promise<HeaderField | null>;
    /** The d= and s= that would sign mail from `fromDomain`, or null. */
    keyFor(fromDomain: string): { readonly domain: string; readonly selector: string } | null;
}

interface LoadedKey {
    readonly domain: string;
    readonly selector: string;
    readonly pem: Buffer;
    readonly key: KeyObject;
    readonly algorithm: DkimAlgorithm;
}

function normalizeDomain(domain: string): string {
    return foldDomain(domain.trim());
}

/** Reads every key file; throws when one cannot be used. */
export function createDkimSigner(config: DkimSignerConfig): DkimSigner {
    const now = config.now ?? Date.now;
    // loaded now, so that the first message does not wait for it (a failure shows at that message)
    loadDkimSign().catch(() => undefined);
    const keys = new Map<string, LoadedKey>();
    for (const d of config.domains) {
        const pem = fs.readFileSync(d.keyFile);
        const key = createPrivateKey(pem);
        const type = key.asymmetricKeyType;
        if (type !== 'rsa' && type !== 'ed25519') throw new Error(`${d.keyFile}: DKIM needs an RSA or Ed25519 key`);
        const algorithm: DkimAlgorithm = type === 'rsa' ? 'rsa-sha256' : 'ed25519-sha256';
        if (d.algorithm && d.algorithm !== algorithm)
            throw new Error(`${d.keyFile}: ${d.algorithm} does not fit a ${type} key`);
        keys.set(normalizeDomain(d.domain), {
            domain: normalizeDomain(d.domain),
            selector: d.selector,
            pem,
            key,
            algorithm,
        });
    }
    const names = [...(config.headers ?? DEFAULT_SIGNED_HEADERS)];
    if (!names.some((n) => n.toLowerCase() === 'from')) names.unshift('From');

    const keyFor = (fromDomain: string): LoadedKey | null => {
        const labels = normalizeDomain(fromDomain).split('.');
        for (let i = 0; i < labels.length; i++) {
            const found = keys.get(labels.slice(i).join('.'));
            if (found) return found;
        }
        return null;
    };

    return {
        keyFor(fromDomain) {
            const k = keyFor(fromDomain);
            return k ? { domain: k.domain, selector: k.selector } : null;
        },
        async sign(message, fromDomain) {
            const k = keyFor(fromDomain);
            if (!k) {
                if (!Buffer.isBuffer(message)) message.resume();
                return null;
            }
            const dkimSign = await loadDkimSign();
            let head: () => Buffer;
            let input: Buffer | Readable;
            if (Buffer.isBuffer(message)) {
                const end = headerEnd(message);
                const section = message.subarray(0, end < 0 ? message.length : end);
                head = () => section;
                input = message;
            } else {
                const capture = new HeadCapture();
                pipeline(message, capture, () => {});
                head = () => {
                    if (capture.head === null) throw new Error('the header section is too large to sign');
                    return capture.head;
                };
                input = capture;
            }
            const t = Math.floor(now() / 1000);
            // mailauth takes the key per signature (signatureData); the top-level copies are required by its types
            const signature = {
                signingDomain: k.domain,
                selector: k.selector,
                privateKey: k.pem,
                algorithm: k.algorithm,
            };
            const result = await dkimSign(input, {
                ...signature,
                signatureData: [signature],
                canonicalization: 'relaxed/relaxed',
                headerList: names,
                signTime: new Date(t * 1000),
            });
            const failure = result.errors[0];
            if (failure) {
                const err = (failure as { err?: unknown }).err;
                throw new Error(`DKIM signing failed: ${err instanceof Error ? err.message : 'unknown error'}`);
            }
            const bh = /(?:^|[;\s])bh=([A-Za-z0-9+/=\s]+)/.exec(result.signatures)?.[1]?.replace(/\s+/g, '');
            if (!bh) throw new Error('DKIM signing failed: no body hash');
            return signatureField(head(), names, k, t, bh);
        },
    };
}

/** Offset just after the last header line's line break (the blank line excluded), or -1. */
function headerEnd(buf: Buffer): number {
    if (buf[0] === 0x0d && buf[1] === 0x0a) return 0;
    if (buf[0] === 0x0a) return 0;
    const crlf = buf.indexOf('\r\n\r\n');
    const lf = buf.indexOf('\n\n');
    if (crlf >= 0 && (lf < 0 || crlf + 1 <= lf)) return crlf + 2;
    return lf >= 0 ? lf + 1 : -1;
}

/** Passes a message through while keeping a copy of its header section. */
class HeadCapture extends Transform {
    head: Buffer | null = null;
    private chunks: Buffer[] = [];
    private size = 0;
    private done = false;

    override _transform(chunk: Buffer, _encoding: BufferEncoding, cb: TransformCallback): void {
        if (!this.done) {
            this.chunks.push(chunk);
            this.size += chunk.length;
            const all = Buffer.concat(this.chunks);
            const end = headerEnd(all);
            if (end >= 0) {
                this.head = all.subarray(0, end);
                this.done = true;
                this.chunks = [];
            } else if (this.size > MAX_HEADER_BYTES) {
                this.done = true;
                this.chunks = [];
            } else {
                this.chunks = [all];
            }
        }
        cb(null, chunk);
    }

    override _flush(cb: TransformCallback): void {
        // a message without a body: everything read is header
        if (!this.done) this.head = Buffer.concat(this.chunks);
        cb();
    }
}

/**
 * The fields of a header section as latin1 strings (bytes kept, without the final CRLF), read
 * by the same strict parser as the session (headers.ts), so that what is signed is what Postfix
 * and every verifier will read. A section that does not parse is not signed.
 */
function headerFields(section: Buffer): { name: string; raw: string }[] {
    // the session capped the client's fields; ours come on top of them
    const parsed = parseHeaderSection(section, Infinity);
    if (!parsed.ok) {
        throw new Error(
            `DKIM signing failed: line ${parsed.line} of the header section does not parse (${parsed.problem})`,
        );
    }
    return parsed.fields.map((f) => ({
        name: f.name.toLowerCase(),
        raw: f.raw.toString('latin1').replace(/\r\n$/, ''),
    }));
}

/** Relaxed header canonicalization (RFC 6376 section 3.4.2), without the final CRLF. */
export function relaxedHeader(raw: string): string {
    const colon = raw.indexOf(':');
    const name = trimWspEnd(raw.slice(0, colon)).toLowerCase();
    const value = raw
        .slice(colon + 1)
        .replace(/\r?\n/g, '')
        .replace(/[ \t]+/g, ' ')
        .replace(/^ | $/g, '');
    return `${name}:${value}`;
}

function signatureField(section: Buffer, names: readonly string[], k: LoadedKey, t: number, bh: string): HeaderField {
    const fields = headerFields(section);
    const byName = new Map<string, { name: string; raw: string }[]>();
    for (const f of fields) {
        const same = byName.get(f.name);
        if (same) same.push(f);
        else byName.set(f.name, [f]);
    }

    // h=: each instance present once, oversigned fields once more (RFC 6376 section 5.4.2)
    const h: string[] = [];
    for (const name of names) {
        const lower = name.toLowerCase();
        const count = byName.get(lower)?.length ?? 0;
        const over = OVERSIGNED_ALWAYS.has(lower) || (count > 0 && OVERSIGNED_PRESENT.has(lower));
        const times = count + (over ? 1 : 0);
        for (let i = 0; i < times; i++) h.push(name);
    }
    if (!byName.has('from')) throw new Error('DKIM signing failed: the message has no From field');

    const value = [
        'v=1',
        `a=${k.algorithm}`,
        'c=relaxed/relaxed',
        `d=${k.domain}`,
        `s=${k.selector}`,
        `t=${t}`,
        `h=${h.join(':')}`,
        `bh=${bh}`,
        'b=',
    ].join('; ');

    // the signed data: the listed instances from the bottom up, then this field with b= empty
    const used = new Map<string, number>();
    let data = '';
    for (const name of h) {
        const key = name.toLowerCase();
        const list = byName.get(key) ?? [];
        const n = used.get(key) ?? 0;
        used.set(key, n + 1);
        const field = list[list.length - 1 - n];
        if (field) data += `${relaxedHeader(field.raw)}\r\n`;
    }
    data += relaxedHeader(`DKIM-Signature: ${value}`);
    const bytes = Buffer.from(data, 'latin1');
    const signature =
        k.algorithm === 'rsa-sha256'
            ? cryptoSign('sha256', bytes, k.key)
            : // RFC 8463 section 3: Ed25519 signs the SHA-256 hash of the data
              cryptoSign(null, createHash('sha256').update(bytes).digest(), k.key);
    return { name: 'DKIM-Signature', value: value + signature.toString('base64') };
}
