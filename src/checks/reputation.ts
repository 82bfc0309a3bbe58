/**
 * The `reputation` check: DNS lists, the HELO name and the reverse name, at the helo and mail
 * stages (looked up from the connect on), within twice the DNS timeout. A failure is ignored:
 * a dead resolver or list leaves the facts out and never refuses mail by itself. The lookups are
 * src/reputation/; this file only declares the check and must NOT look up, decide or reply.
 */
import { createReputationProbe, type ReputationLookup } from '../reputation/check.ts';
import type { Check } from '../types.ts';

export function createReputationCheck(lookup: ReputationLookup, timeoutMs: number): Check {
    return {
        name: 'reputation',
        stages: ['helo', 'mail'],
        timeoutMs,
        onError: 'ignore',
        ...createReputationProbe(lookup),
    };
}
