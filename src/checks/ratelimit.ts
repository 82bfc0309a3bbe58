/**
 * The `ratelimit` check: rate limits, concurrency leases and greylisting, at every stage, within
 * a few of the store's own deadlines. Store failures are handled per limit (`onError` of each
 * limit) by the engine, so a failure of the check itself is ignored: it must not stop mail. The
 * counting is src/limits/check.ts; this file only declares the check and must NOT count,
 * decide or reply.
 */
import { createRateLimiter, type RateLimitCheckOptions } from '../limits/check.ts';
import { STAGES } from '../rules/facts.ts';
import type { Check } from '../types.ts';

export function createRateLimitCheck(options: RateLimitCheckOptions): Check {
    return {
        name: 'ratelimit',
        stages: STAGES,
        timeoutMs: 4 * (options.storeTimeoutMs ?? 250) + 1000,
        onError: 'ignore',
        ...createRateLimiter(options),
    };
}
