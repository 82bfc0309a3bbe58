/**
 * The shapes shared by the submission credential backends (users file, Dovecot): the result of
 * checking SMTP AUTH credentials (RFC 4954), the connection facts passed along, and the
 * canonical user name, and the contract a credential backend implements. Declarations only.
 */
import type { SenderPolicy } from './sender-policy.ts';

/** 'invalid' → 535 5.7.8; 'unavailable' → 454 4.7.0 (RFC 4954 section 6). */
export type AuthResult = 'ok' | 'invalid' | 'unavailable';

/** What the proxy knows about the connection; Dovecot uses it for its logs, penalties and policies. */
export interface AuthContext {
    readonly localIp?: string;
    readonly localPort?: number;
    readonly remoteIp?: string;
    readonly remotePort?: number;
    /** The connection is protected by TLS (default true: submission takes AUTH only after TLS). */
    readonly secured?: boolean;
}

export interface AuthOutcome {
    readonly result: AuthResult;
    /**
     * The canonical user name (as the users file writes it, or as Dovecot reports it): on 'ok',
     * and on 'invalid' when the backend names the account it checked (Dovecot's `user=` on FAIL).
     */
    readonly user?: string;
    /** Why it is not 'ok', for logs (never contains the password). */
    readonly reason?: string;
    /**
     * On 'ok', from a backend that can tell when a password changes (the users file): an opaque
     * fingerprint of the stored credential, to compare later with credentialState(). Never the hash.
     */
    readonly credential?: string;
    /**
     * On 'invalid': refused before the login service was asked (credentials that cannot be
     * right, such as a NUL or an oversized value), so the answer took none of its time.
     */
    readonly unchecked?: boolean;
}

/** Whether the credential a session logged in with still holds. */
export type CredentialState = 'current' | 'changed' | 'removed';

/** Verifies SMTP AUTH credentials and knows which addresses each login may send as. */
export interface AuthBackend {
    authenticate(login: string, password: string, context?: AuthContext): Promise<AuthOutcome>;
    /** The addresses `login` may use as envelope and header sender. */
    sendAs(login: string): SenderPolicy;
    /** Whether the credential a session logged in with (AuthOutcome.credential) still holds. */
    credentialState?(login: string, credential: string): CredentialState;
}
