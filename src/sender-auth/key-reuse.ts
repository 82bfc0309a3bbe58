/**
 * DKIM and ARC public keys (RFC 6376 section 3.6.1, RFC 8463, RFC 8617 section 4.1) read once
 * per key record instead of once per message: mailauth decodes, imports and re-exports the key
 * of every signature it verifies, which costs more than checking the signature itself. Here the
 * key record is still looked up for every message, through that message's resolver (so the DNS
 * budget, the cache TTLs and every DNS error stay exactly as they were); only when the record
 * text is one already read with the same options is mailauth's reading of it reused.
 *
 * mailauth's reading (`getPublicKey`) depends on nothing but the record text and the options
 * (strict mode, minimum RSA size, hash algorithm), which together are the key of the store. A
 * changed record is a different key; a record that mailauth refuses is not stored and is read
 * again next time, with the same error. Each caller gets its own copy of the result.
 *
 * mailauth hands the key in PEM to crypto.verify(), which parses it again for every signature
 * (half the cost of an RSA-2048 verification); the stored key is the parsed key object, which
 * crypto.verify() takes as it is, and which prints as that same PEM where mailauth reports it
 * (`publicKey` of a DKIM result).
 *
 * The record text is the sender's (any domain can publish any TXT record, up to a 64 KB TCP
 * answer): a record longer than `MAX_STORED_RECORD` characters is read as before but not kept,
 * so the store holds at most `maxEntries` × a few KB whatever senders publish.
 *
 * The key is the sender's too: mailauth checks an RSA key's modulus (minBitLength) but not its
 * public exponent, and OpenSSL takes an exponent as large as the modulus for moduli up to 3,072
 * bits, which makes every verification with the key about ten times the work (signers use
 * 65537). An RSA key whose exponent is over MAX_RSA_EXPONENT is refused as mailauth refuses a key it
 * cannot use (EINVALIDVAL: the DKIM signature is `neutral`, "invalid public key"; an ARC chain
 * with it fails), and that refusal is kept like a key, so the next message with the record does
 * not read it again.
 *
 * It must not look anything up outside the message's resolver, must not keep more than
 * `maxEntries` records, and must not change what a lookup returns or throws but for the refusal
 * of such a key.
 */
import { createPublicKey, type KeyObject } from 'node:crypto';
import { Lru } from '../dns/lru.ts';
import type { DnsResolve } from '../dns/scoped.ts';
import {
    getPublicKey,
    toALabel,
    type KeyCache,
    type KeyLookupOptions,
    type PublicKeyRecord,
} from './mailauth-internals.ts';
import { negativeAnswer } from '../dns/errors.ts';

export interface KeyStore {
    /** mailauth's per-message key cache over `resolver`, backed by this store. */
    forMessage(resolver: DnsResolve): KeyCache;
    /** Key records read (decoded and imported) so far; a reuse does not count. */
    readonly reads: number;
    readonly size: number;
}

/** Records kept by default: far more than the signers one gateway sees in an hour. */
export const KEY_STORE_ENTRIES = 2000;

/**
 * Longest record text kept, in characters: an RSA-4096 key record is about 740, an RSA-8192 one
 * about 1,420; a longer record (a larger key, or a record padded with notes) is read every time.
 */
export const MAX_STORED_RECORD = 2048;

/** Largest RSA public exponent of a usable key: 2^32 (RFC 8017 allows any odd e below the modulus; keys use 65537). */
export const MAX_RSA_EXPONENT = 2n ** 32n;

/** The PEM key as a key object that prints as the PEM; the PEM itself if it does not parse. */
function parsedKey(pem: string): string {
    let key: KeyObject;
    try {
        key = createPublicKey(pem);
    } catch {
        return pem;
    }
    Object.defineProperty(key, 'toString', { value: () => pem });
    // mailauth passes it to crypto.verify() and reads it with toString(), nothing else
    return key as unknown as string;
}

/** What is kept of a record refused here: enough to throw the same error again. */
interface Refused {
    readonly refused: { readonly message: string; readonly code: string; readonly rr: string };
}

/** The refusal as mailauth's key errors are made (tools.js keyError); a new object each time, the ARC validator adds to it. */
function refusal(r: Refused['refused']): Error {
    return Object.assign(new Error(r.message), { code: r.code, rr: r.rr });
}

/**
 * mailauth's reading of a key record (getPublicKey) with the key parsed once (as parsedKey()
 * gives it; `keep`: as the PEM mailauth gives), or the refusal of an RSA key whose public
 * exponent is over MAX_RSA_EXPONENT.
 */
async function readKey(
    read: () => Promise<PublicKeyRecord>,
    keep: 'parsed' | 'pem',
): Promise<PublicKeyRecord | Refused> {
    const record = await read();
    const key = parsedKey(record.publicKey) as unknown;
    const details = typeof key === 'string' ? null : (key as KeyObject).asymmetricKeyDetails;
    const exponent = details?.publicExponent;
    if (typeof exponent === 'bigint' && exponent > MAX_RSA_EXPONENT) {
        const bits = exponent.toString(2).length;
        return { refused: { message: `RSA public exponent of ${bits} bits`, code: 'EINVALIDVAL', rr: record.rr } };
    }
    return keep === 'parsed' ? { ...copyOf(record), publicKey: key as string } : record;
}

function copyOf(record: PublicKeyRecord): PublicKeyRecord {
    return { ...record, flags: [...record.flags], warnings: [...record.warnings] };
}

/** The record text exactly as mailauth joins it: the first TXT record, white space removed. */
function recordText(list: unknown): string {
    if (!Array.isArray(list)) return '';
    const first: unknown = list[0];
    const parts: unknown[] = Array.isArray(first) ? first : first ? [first] : [];
    return parts.join('').replace(/\s+/g, '');
}

export function createKeyStore(maxEntries: number = KEY_STORE_ENTRIES): KeyStore {
    const store = new Lru<PublicKeyRecord | Refused>(maxEntries);

    /**
     * The key record's TXT answer. A name that cannot be a DNS name (a label over 63 octets,
     * EBADNAME) has no record, as NXDOMAIN says (RFC 6376 section 6.1.2: no key, a permanent
     * failure): mailauth reads any other error as temporary, and a spoofer signing with such a
     * `d=` under the author's domain would turn every DMARC rejection into a retry.
     */
    async function keyRecords(resolver: DnsResolve, name: string): Promise<unknown> {
        try {
            return await resolver(name, 'TXT');
        } catch (err) {
            if ((err as { code?: unknown }).code === 'EBADNAME') throw negativeAnswer('ENOTFOUND', 'queryTxt', name);
            throw err;
        }
    }
    let reads = 0;

    async function read(
        type: string,
        name: string,
        minBitLength: number | undefined,
        resolver: DnsResolve,
        options: KeyLookupOptions,
    ): Promise<PublicKeyRecord> {
        const list = await keyRecords(resolver, toALabel(name));
        const answered: DnsResolve = () => Promise.resolve(list);
        const rr = recordText(list);
        const getKey = (): Promise<PublicKeyRecord> => getPublicKey(type, name, minBitLength, answered, options);
        // mailauth throws its own error for an empty record; nothing to keep
        if (rr === '') return getKey();
        if (rr.length > MAX_STORED_RECORD) {
            // longer than any real key record: read, not kept (the sender chooses its length)
            reads++;
            const read = await readKey(getKey, 'pem');
            if ('refused' in read) throw refusal(read.refused);
            return read;
        }
        const key = [!!options.strict, minBitLength || 1024, options.hashAlgo ?? '', rr].join(':');
        let known = store.get(key, 0);
        if (!known) {
            reads++;
            known = await readKey(getKey, 'parsed');
            store.set(key, known, Infinity);
        }
        if ('refused' in known) throw refusal(known.refused);
        return copyOf(known);
    }

    return {
        forMessage(resolver: DnsResolve): KeyCache {
            // the same question in one message gets the same promise, as mailauth's own cache does
            const lookups = new Map<string, Promise<PublicKeyRecord>>();
            return {
                resolver,
                get(type, name, minBitLength, options = {}) {
                    const key = [!!options.strict, minBitLength || '', options.hashAlgo || '', name].join(':');
                    let lookup = lookups.get(key);
                    if (!lookup) {
                        lookup = read(type, name, minBitLength, resolver, options);
                        // a prefetched lookup may fail before anyone waits for it; every waiter still gets the error
                        lookup.catch(() => false);
                        lookups.set(key, lookup);
                    }
                    return lookup;
                },
            };
        },
        get reads() {
            return reads;
        },
        get size() {
            return store.size;
        },
    };
}
