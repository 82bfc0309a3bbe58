/**
 * Test helper: a throw-away self-signed certificate and key for `localhost`, 127.0.0.1
 * and ::1, made with the `openssl` command (Node's crypto module cannot issue X.509
 * certificates) in a fresh temporary folder that `cleanup()` removes.
 * Test code only: never use these files outside tests.
 *
 * ```ts
 * const tlsCert = await createTestCertificate();
 * new SMTPServer({ key: tlsCert.key, cert: tlsCert.cert, … });
 * after(() => tlsCert.cleanup());
 * ```
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface TestCertificate {
    readonly dir: string;
    readonly certPath: string;
    readonly keyPath: string;
    /** PEM text of the certificate. */
    readonly cert: string;
    /** PEM text of the unencrypted private key. */
    readonly key: string;
    /** Removes the folder; safe to call more than once. */
    cleanup(): void;
}

export interface TestCertificateOptions {
    /** Subject common name; default `localhost`. */
    readonly commonName?: string;
    /** subjectAltName entries; default `DNS:localhost`, `IP:127.0.0.1`, `IP:::1`. */
    readonly altNames?: readonly string[];
    /** Key type; default `ec` (P-256). `rsa` (2048 bits) makes static-RSA cipher suites possible at all. */
    readonly keyType?: 'ec' | 'rsa';
    /** Days the certificate is valid from now; default 2. */
    readonly days?: number;
}

/** Creates the certificate; throws with a clear message when `openssl` is missing. */
export async function createTestCertificate(options: TestCertificateOptions = {}): Promise<TestCertificate> {
    const commonName = options.commonName ?? 'localhost';
    const altNames = options.altNames ?? ['DNS:localhost', 'IP:127.0.0.1', 'IP:::1'];
    try {
        await run('openssl', ['version']);
    } catch (err) {
        throw new Error('the openssl command is needed to make test certificates but could not be run', { cause: err });
    }
    const dir = mkdtempSync(join(tmpdir(), 'mailwarden-cert-'));
    const certPath = join(dir, 'cert.pem');
    const keyPath = join(dir, 'key.pem');
    const cleanup = (): void => rmSync(dir, { recursive: true, force: true });
    try {
        await run('openssl', [
            'req',
            '-x509',
            '-newkey',
            ...(options.keyType === 'rsa' ? ['rsa:2048'] : ['ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1']),
            '-nodes',
            '-days',
            String(options.days ?? 2),
            '-subj',
            `/CN=${commonName}`,
            '-addext',
            `subjectAltName=${altNames.join(',')}`,
            '-keyout',
            keyPath,
            '-out',
            certPath,
        ]);
        return {
            dir,
            certPath,
            keyPath,
            cert: readFileSync(certPath, 'utf8'),
            key: readFileSync(keyPath, 'utf8'),
            cleanup,
        };
    } catch (err) {
        cleanup();
        throw err;
    }
}
