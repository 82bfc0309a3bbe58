/**
 * Submission (RFC 6409) building blocks behind one entry point: the credential backend chosen
 * by `auth:` (the users file, or Dovecot with an optional sendAs file) with its sender
 * bindings, and the DKIM signer of `dkim:`. It builds objects only; it must not open
 * listeners, log, or decide replies (the listener and session map results to replies).
 */
import type { DkimConfig, SubmissionAuthConfig } from '../config/types.ts';
import type { AuthContext, AuthOutcome, AuthResult, AuthBackend } from './auth-types.ts';
import { createDkimSigner, type DkimSigner } from './dkim-sign.ts';
import { createDovecotBackend } from './dovecot-sasl.ts';
import type { SenderPolicy } from './sender-policy.ts';
import { createUsersFileBackend, type ReloadEvent } from './users-file.ts';

export type { AuthBackend, AuthContext, AuthOutcome, AuthResult, CredentialState } from './auth-types.ts';
export type { DkimSigner } from './dkim-sign.ts';
export {
    checkHeaderSenders,
    mayUse,
    parseAddresses,
    type AuthorField,
    type HeaderSenderResult,
    type SenderPolicy,
} from './sender-policy.ts';
export type { ReloadEvent } from './users-file.ts';
export { submissionFilesCheck } from './check.ts';

/** The configured credential backend with its sender bindings. */
export interface SubmissionAuth extends AuthBackend {
    readonly kind: 'users' | 'dovecot';
    verify(login: string, password: string, context?: AuthContext): Promise<AuthResult>;
    /** Like verify, with the canonical user name to use as the session's login. */
    authenticate(login: string, password: string, context?: AuthContext): Promise<AuthOutcome>;
    /** The addresses `login` may use as envelope and header sender. */
    sendAs(login: string): SenderPolicy;
    /** SIGHUP: re-reads the users (or sendAs) file; throws ConfigError and keeps the old one when invalid. */
    reload(): void;
    close(): void;
}

export interface SubmissionAuthOptions {
    /** Automatic reloads after the users (or sendAs) file changed: log them, count config_reloads_total. */
    readonly onReload?: (event: ReloadEvent) => void;
}

/** Builds the backend `auth:` names. Throws ConfigError when the users or sendAs file is invalid. */
export function createSubmissionAuth(auth: SubmissionAuthConfig, opts: SubmissionAuthOptions = {}): SubmissionAuth {
    const common = {
        recipientDelimiter: auth.recipientDelimiter,
        ...(opts.onReload ? { onReload: opts.onReload } : {}),
    };
    if (auth.users !== null) {
        const backend = createUsersFileBackend(auth.users, common);
        return {
            kind: 'users',
            verify: (login, password) => backend.verify(login, password),
            authenticate: (login, password) => backend.authenticate(login, password),
            credentialState: (login, credential) => backend.credentialState(login, credential),
            sendAs: (login) => backend.sendAs(login),
            reload: () => backend.reload(),
            close: () => backend.close(),
        };
    }
    if (auth.dovecot === null) throw new Error('auth names neither a users file nor Dovecot');
    const backend = createDovecotBackend({ address: auth.dovecot, sendAs: auth.sendAs, ...common });
    return {
        kind: 'dovecot',
        verify: (login, password, context) => backend.verify(login, password, context),
        authenticate: (login, password, context) => backend.authenticate(login, password, context),
        sendAs: (login) => backend.sendAs(login),
        reload: () => backend.reload(),
        close: () => backend.close(),
    };
}

/** Builds the signer of `dkim:`; throws when a key file cannot be used. */
export function createDkimSignerFromConfig(dkim: DkimConfig): DkimSigner {
    return createDkimSigner({ domains: dkim.sign, headers: dkim.headers });
}
