/**
 * The `dkim:` section: outbound DKIM signing of authenticated submissions (RFC 6376, RFC 8463):
 * one key per domain with its selector and algorithm, and the header fields to sign. Each key file
 * must exist, parse, and suit DKIM (RSA of 1024 bits or more, or Ed25519). Validation only: it
 * must not sign anything.
 */
import { createPrivateKey } from 'node:crypto';
import { lineOf, pemFile, readHostname, sectionEntries } from '../fields.ts';
import type { Field, SourceReader } from '../reader.ts';

export const DKIM_KEYS = ['sign', 'headers'] as const;
/** The keys of each `dkim.sign` entry. */
export const DKIM_SIGN_KEYS = ['domain', 'selector', 'key', 'algorithm'] as const;

export type DkimAlgorithm = 'rsa-sha256' | 'ed25519-sha256';

/** One signing key of outbound DKIM (RFC 6376, RFC 8463). */
export interface DkimSignKey {
    /** d=, a lower-case A-label. */
    readonly domain: string;
    /** s=. */
    readonly selector: string;
    /** The private key file (PEM), absolute. */
    readonly keyFile: string;
    readonly algorithm: DkimAlgorithm;
}

/** Outbound DKIM signing of authenticated submissions. */
export interface DkimConfig {
    readonly sign: readonly DkimSignKey[];
    /** Header fields to sign; null: the built-in list. */
    readonly headers: readonly string[] | null;
}

const DKIM_ALGORITHMS = ['rsa-sha256', 'ed25519-sha256'] as const;
/** RFC 6376 section 3.1: selector = sub-domain *("." sub-domain). */
const DKIM_SELECTOR_RE = /^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$/;
/** RFC 5322 section 3.6.8: printable ASCII except ":". */
const FIELD_NAME_RE = /^[\x21-\x39\x3b-\x7e]+$/;

/** Reads `dkim:` (no default: without it, nothing is signed); null when invalid (reported). */
export function dkimSection(r: SourceReader, field: Field, baseDir: string): DkimConfig | null {
    const entries = sectionEntries(r, field, DKIM_KEYS);
    if (!r.isMap(field)) return null;
    const signField = entries.get('sign');
    if (!signField) {
        r.fail(field, 'missing "sign" (the domains to sign for: a list of { domain, selector, key })');
        return null;
    }
    const items = r.list(signField, 'signing keys ({ domain, selector, key })') ?? [];
    if (r.isList(signField) && items.length === 0) r.fail(signField, 'an empty list; leave dkim out to sign nothing');
    const sign: DkimSignKey[] = [];
    const domains = new Map<string, number>();
    for (const item of items) {
        const e = sectionEntries(r, item, DKIM_SIGN_KEYS);
        if (!r.isMap(item)) continue;
        const missing = (['domain', 'selector', 'key'] as const).filter((k) => !e.has(k)).map((k) => `"${k}"`);
        if (missing.length > 0) r.fail(item, `missing ${missing.join(' and ')}`);
        const domainField = e.get('domain');
        const selectorField = e.get('selector');
        const keyField = e.get('key');
        const algorithmField = e.get('algorithm');
        let domain: string | null = null;
        if (domainField) {
            domain = readHostname(r, domainField);
            const earlier = domain === null ? undefined : domains.get(domain);
            if (earlier !== undefined) {
                r.fail(domainField, `"${domain}" has a signing key already (line ${earlier})`);
                domain = null;
            } else if (domain !== null) {
                domains.set(domain, lineOf(r, domainField));
            }
        }
        let selector: string | null = null;
        if (selectorField) {
            selector = r.string(selectorField, 'a selector');
            if (selector !== null && !DKIM_SELECTOR_RE.test(selector)) {
                r.fail(
                    selectorField,
                    `"${selector}" is not a DKIM selector (letters, digits, "-", labels joined by ".")`,
                );
                selector = null;
            }
        }
        const algorithm = algorithmField ? r.oneOf(algorithmField, DKIM_ALGORITHMS) : null;
        const key = keyField ? dkimKey(r, keyField, baseDir, algorithm, algorithmField) : null;
        if (domain !== null && selector !== null && key !== null) {
            sign.push({ domain, selector, keyFile: key.file, algorithm: key.algorithm });
        }
    }
    const headersField = entries.get('headers');
    return { sign, headers: headersField ? dkimHeaders(r, headersField) : null };
}

/** A readable PEM private key usable for DKIM (RSA of 1024 bits or more, or Ed25519). */
function dkimKey(
    r: SourceReader,
    field: Field,
    baseDir: string,
    wanted: DkimAlgorithm | null,
    algorithmField: Field | undefined,
): { file: string; algorithm: DkimAlgorithm } | null {
    const pem = pemFile(r, field, baseDir);
    if (pem === null) return null;
    let key;
    try {
        key = createPrivateKey(pem.content);
    } catch {
        r.fail(field, `${pem.path} does not hold a readable private key (encrypted keys are not supported)`);
        return null;
    }
    const type = key.asymmetricKeyType;
    if (type !== 'rsa' && type !== 'ed25519') {
        r.fail(field, `${pem.path} holds a key of type ${type ?? 'unknown'}; DKIM signs with RSA or Ed25519 keys`);
        return null;
    }
    const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
    if (type === 'rsa' && bits < 1024) {
        // RFC 8301 section 3.2: signers must use RSA keys of at least 1024 bits
        r.fail(field, `${pem.path} holds a ${bits}-bit RSA key; DKIM needs at least 1024 bits (2048 recommended)`);
        return null;
    }
    const algorithm: DkimAlgorithm = type === 'rsa' ? 'rsa-sha256' : 'ed25519-sha256';
    if (wanted !== null && wanted !== algorithm && algorithmField) {
        r.fail(algorithmField, `"${wanted}" does not fit the ${type === 'rsa' ? 'RSA' : 'Ed25519'} key in ${pem.path}`);
        return null;
    }
    return { file: pem.path, algorithm };
}

/** Header field names to sign; From must be among them (RFC 6376 section 5.4). */
function dkimHeaders(r: SourceReader, field: Field): string[] | null {
    const items = r.list(field, 'header field names');
    if (items === null) return null;
    const out: string[] = [];
    const seen = new Set<string>();
    for (const item of items) {
        const name = r.string(item, 'a header field name');
        if (name === null) continue;
        if (!FIELD_NAME_RE.test(name)) r.fail(item, `"${name}" is not a header field name`);
        else if (seen.has(name.toLowerCase())) r.fail(item, `"${name}" is listed twice`);
        else {
            seen.add(name.toLowerCase());
            out.push(name);
        }
    }
    if (!seen.has('from')) r.fail(field, 'must include From (RFC 6376 section 5.4: the From field is always signed)');
    return out;
}
