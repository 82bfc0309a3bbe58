/**
 * Idle upstream connections kept for the next client: bounded in number, in idle time (well
 * under the upstream's own idle timeout, Postfix's smtpd_timeout) and in uses per connection.
 * A connection is either idle here or held by exactly one client, never both: take() removes
 * it before handing it out. It only stores and hands out; it must not speak SMTP, decide
 * whether a connection is clean enough to keep (smtp-client.ts does), or hand out one that
 * says it is no longer usable.
 */

/** What the pool needs to know of a connection. */
export interface PoolEntry {
    /** False once the connection broke or received something while idle; the pool then drops it. */
    readonly usable: boolean;
    /** Called as the entry becomes idle (true) or is taken (false): an idle one must not keep the process alive. */
    idle(on: boolean): void;
    /** Ends the connection (QUIT when it can); never rejects. */
    discard(): Promise<void>;
}

export interface PoolOptions {
    /** Most idle connections kept; one more given back is closed. */
    readonly maxIdle: number;
    /** An idle connection not taken within this time is closed. */
    readonly idleTimeoutMs: number;
    /** A connection that served this many clients is closed instead of kept. */
    readonly maxUses: number;
    /** Timers, injected for tests; the default timer does not keep the process alive. */
    readonly setTimer?: (fn: () => void, ms: number) => unknown;
    readonly clearTimer?: (handle: unknown) => void;
}

interface Idle<E> {
    readonly entry: E;
    readonly uses: number;
    readonly timer: unknown;
}

export class IdlePool<E extends PoolEntry> {
    private readonly opts: PoolOptions;
    /** Oldest first; take() hands out the newest (the one least likely to have timed out upstream). */
    private readonly idle: Idle<E>[] = [];
    private closed = false;
    private readonly setTimer: (fn: () => void, ms: number) => unknown;
    private readonly clearTimer: (handle: unknown) => void;
    /** Discards still sending QUIT, so that close() can wait for them. */
    private readonly closing = new Set<Promise<void>>();

    constructor(opts: PoolOptions) {
        this.opts = opts;
        this.setTimer =
            opts.setTimer ??
            ((fn, ms) => {
                const t = setTimeout(fn, ms);
                t.unref();
                return t;
            });
        this.clearTimer = opts.clearTimer ?? ((h) => clearTimeout(h as NodeJS.Timeout));
    }

    get size(): number {
        return this.idle.length;
    }

    /**
     * Removes and returns the most recently given back connection that is still usable, with the
     * number of clients it served, or null. Unusable ones met on the way are discarded and passed
     * to `onDropped`.
     */
    take(onDropped: (entry: E) => void = () => {}): { entry: E; uses: number } | null {
        for (;;) {
            const item = this.idle.pop();
            if (!item) return null;
            this.clearTimer(item.timer);
            if (item.entry.usable) {
                item.entry.idle(false);
                return { entry: item.entry, uses: item.uses };
            }
            this.drop(item.entry);
            onDropped(item.entry);
        }
    }

    /**
     * Keeps `entry`, which has served `uses` clients, for the next client; returns false when it
     * was closed instead (pool closed or full, entry unusable or worn out).
     */
    give(entry: E, uses: number): boolean {
        if (this.closed || !entry.usable || uses >= this.opts.maxUses || this.idle.length >= this.opts.maxIdle) {
            this.drop(entry);
            return false;
        }
        const item: Idle<E> = {
            entry,
            uses,
            timer: this.setTimer(() => {
                const at = this.idle.indexOf(item);
                if (at < 0) return;
                this.idle.splice(at, 1);
                this.drop(entry);
            }, this.opts.idleTimeoutMs),
        };
        entry.idle(true);
        this.idle.push(item);
        return true;
    }

    /** Closes every idle connection and keeps none from now on (shutdown); resolves once each has ended. */
    async close(): Promise<void> {
        this.closed = true;
        for (const item of this.idle.splice(0)) {
            this.clearTimer(item.timer);
            this.drop(item.entry);
        }
        await Promise.all([...this.closing]);
    }

    private drop(entry: E): void {
        const done: Promise<void> = entry
            .discard()
            .catch(() => {})
            .then(() => {
                this.closing.delete(done);
            });
        this.closing.add(done);
    }
}
