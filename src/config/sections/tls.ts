/**
 * The `tls:` section: the certificate chain and private key (PEM files) the listeners offer with
 * STARTTLS or implicit TLS. Both files must be readable, parse, and belong together. Validation
 * only: it must not start TLS, and which listeners need it is checked in config/load.ts.
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { pemFile, sectionEntries } from '../fields.ts';
import type { Field, SourceReader } from '../reader.ts';

export const TLS_KEYS = ['cert', 'key'] as const;

export interface TlsConfig {
    readonly cert: string;
    readonly key: string;
}

/** Reads `tls:` (no default: without it, no listener offers TLS). Null when invalid (reported). */
export function tlsSection(r: SourceReader, field: Field, baseDir: string): TlsConfig | null {
    const entries = sectionEntries(r, field, TLS_KEYS);
    if (!r.isMap(field)) return null;
    const certField = entries.get('cert');
    const keyField = entries.get('key');
    if (!certField) r.fail(field, 'missing "cert" (the certificate chain file, PEM)');
    if (!keyField) r.fail(field, 'missing "key" (the private key file, PEM)');
    const cert = certField ? pemFile(r, certField, baseDir) : null;
    const key = keyField ? pemFile(r, keyField, baseDir) : null;
    if (!cert || !key || !certField || !keyField) return null;
    const problem = tlsPairProblem(cert, key);
    if (problem) {
        r.fail(problem.field === 'cert' ? certField : keyField, problem.message);
        return null;
    }
    return { cert: cert.path, key: key.path };
}

/**
 * What is wrong with a certificate and key read from their files, naming the files: the same
 * words at start, in `check` and on reload. Null when they can be used together.
 */
export function tlsPairProblem(
    cert: { readonly path: string; readonly content: string | Buffer },
    key: { readonly path: string; readonly content: string | Buffer },
): { readonly field: 'cert' | 'key'; readonly message: string } | null {
    let x509: X509Certificate;
    try {
        x509 = new X509Certificate(cert.content);
    } catch {
        return { field: 'cert', message: `${cert.path} does not hold a readable certificate` };
    }
    let privateKey;
    try {
        privateKey = createPrivateKey(key.content);
    } catch {
        return {
            field: 'key',
            message: `${key.path} does not hold a readable private key (encrypted keys are not supported)`,
        };
    }
    if (!x509.checkPrivateKey(privateKey)) {
        return { field: 'key', message: `${key.path} is not the private key of the certificate in ${cert.path}` };
    }
    return null;
}
