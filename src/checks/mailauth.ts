/**
 * The `mailauth` check: SPF, DKIM, ARC and DMARC for the received message, at the data stage,
 * within `authentication.timeoutMs`; when it fails or times out the message is tempfailed (a
 * verdict we cannot give is never a pass). The verification itself is src/sender-auth/mailauth.ts;
 * this file only declares the check and must NOT verify, decide or reply.
 */
import { createMailauthVerifier, type MailauthCheckOptions } from '../sender-auth/mailauth.ts';
import type { Check } from '../types.ts';

export function createMailauthCheck(opts: MailauthCheckOptions): Check {
    return {
        name: 'mailauth',
        stages: ['data'],
        timeoutMs: opts.settings.timeoutMs,
        onError: 'tempfail',
        run: createMailauthVerifier(opts),
    };
}
