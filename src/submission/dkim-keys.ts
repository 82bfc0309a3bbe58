/**
 * DKIM key pairs and the DNS TXT record that publishes a public key (RFC 6376 section 3.6.1):
 * RSA (k=rsa, p= the DER SubjectPublicKeyInfo in base64; 2048 bits by default, RFC 8301 allows
 * 1024 to 4096) and Ed25519 (k=ed25519, p= the raw 32-byte key in base64, RFC 8463 section 4.2).
 * TXT character-strings hold at most 255 octets (RFC 1035 section 3.3.14), so the record is
 * split. Pure apart from key generation; it writes no files.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';

export type DkimKeyType = 'rsa' | 'ed25519';

export const DKIM_RSA_BITS = { min: 1024, max: 4096, default: 2048 } as const;

/** A new key pair: the private key as PKCS#8 PEM. */
export function generateDkimKey(
    type: DkimKeyType,
    bits: number = DKIM_RSA_BITS.default,
): { privatePem: string; publicKey: KeyObject } {
    if (type === 'rsa') {
        if (!(Number.isInteger(bits) && bits >= DKIM_RSA_BITS.min && bits <= DKIM_RSA_BITS.max)) {
            throw new Error(`RSA keys for DKIM have ${DKIM_RSA_BITS.min} to ${DKIM_RSA_BITS.max} bits`);
        }
        const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: bits });
        return { privatePem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), publicKey };
    }
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    return { privatePem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), publicKey };
}

/** The public key of a PEM private key. */
export function publicKeyOf(privatePem: string | Buffer): KeyObject {
    return createPublicKey(createPrivateKey(privatePem));
}

/** The TXT record text (`v=DKIM1; k=…; p=…`) for a public key. */
export function dkimRecord(publicKey: KeyObject): string {
    const type = publicKey.asymmetricKeyType;
    if (type === 'rsa') {
        return `v=DKIM1; k=rsa; p=${publicKey.export({ type: 'spki', format: 'der' }).toString('base64')}`;
    }
    if (type === 'ed25519') {
        // the SPKI DER of an Ed25519 key is a 12-byte prefix and the 32-byte key
        const der = publicKey.export({ type: 'spki', format: 'der' });
        return `v=DKIM1; k=ed25519; p=${der.subarray(der.length - 32).toString('base64')}`;
    }
    throw new Error(`a ${type ?? 'unknown'} key cannot be published for DKIM`);
}

/** Splits TXT text into character-strings of at most 255 octets. */
export function txtStrings(text: string, max = 255): string[] {
    const out: string[] = [];
    for (let i = 0; i < text.length; i += max) out.push(text.slice(i, i + max));
    return out.length > 0 ? out : [''];
}

/** The zone-file line: `SELECTOR._domainkey.DOMAIN. IN TXT "…" "…"`. */
export function zoneLine(selector: string, domain: string, record: string): string {
    const owner = `${selector}._domainkey.${domain.replace(/\.$/, '')}.`;
    return `${owner} IN TXT ${txtStrings(record)
        .map((s) => `"${s}"`)
        .join(' ')}`;
}
