/**
 * Checks a client's SASL response of an SMTP AUTH exchange (RFC 4954 section 4) before
 * smtp-server decodes it: a response is `*` (cancel), `=` (an empty initial response) or base64
 * in the strict alphabet of RFC 4648 section 4 with correct padding; anything else "cannot be
 * BASE64 decoded" and is refused with 501 (Node's decoder would skip the bad characters and go
 * on). For PLAIN (RFC 4616 section 2) the authorization identity must be empty or the login
 * itself: no login may act as another here, so a different one is refused before any password
 * is checked. It must not check passwords or decide on lockouts (login-guard.ts does).
 */

/** Why a response is refused: not base64, or a PLAIN authorization identity other than the login. */
export type SaslResponseProblem = 'not-base64' | 'authzid';

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/**
 * Checks one response (white space around it removed, as smtp-server does) of an exchange of
 * `mechanism`; `step` is 0 for the first response (the initial one or the answer to the first 334).
 */
export function saslResponseProblem(mechanism: string, step: number, response: string): SaslResponseProblem | null {
    if (response === '*' || (response === '=' && step === 0)) return null;
    if (!BASE64.test(response)) return 'not-base64';
    if (mechanism === 'PLAIN' && step === 0) {
        const parts = Buffer.from(response, 'base64').toString('utf8').split('\0');
        if (parts.length === 3) {
            const [authzid, authcid] = parts as [string, string, string];
            if (authzid !== '' && authcid !== '' && authzid.toLowerCase() !== authcid.toLowerCase()) return 'authzid';
        }
    }
    return null;
}
