/**
 * One answer for many askers: a check that costs real work (the readiness probe opens an upstream
 * SMTP session and pings Redis) runs once for all callers that ask while it is in flight, and its
 * answer is given again for `ttlMs` after it came. So a burst of /readyz requests, or a probe
 * that hangs against a stalled upstream, holds one upstream connection, not one per request
 * (each would be a Postfix smtpd process). A failed run (a rejection) is not kept. It must not
 * decide anything itself; the clock is injected.
 */
export function sharedResult<T>(run: () => Promise<T>, ttlMs: number, now: () => number): () => Promise<T> {
    let inFlight: Promise<T> | null = null;
    let last: { readonly at: number; readonly value: T } | null = null;
    return () => {
        if (inFlight) return inFlight;
        if (last && now() - last.at < ttlMs) return Promise.resolve(last.value);
        const running = run()
            .then((value) => {
                last = { at: now(), value };
                return value;
            })
            .finally(() => {
                inFlight = null;
            });
        inFlight = running;
        return running;
    };
}
