/**
 * How long one kind of answer takes, for answers whose time must not tell them apart (a login
 * that exists or not, a right password refused for a locked account or a wrong one): the second
 * highest of the last few measurements, so nearly every real answer ends before the padded ones
 * (a median would let half of them end after, which tells them apart over many tries) while one
 * slow answer (a stall, a moment of load) does not slow every later one; at most `capMs`;
 * `initialMs` until something was measured. Bookkeeping only: it must not wait or time anything
 * itself.
 */
export class AnswerPace {
    readonly #samples: number[] = [];
    readonly #initialMs: number;
    readonly #capMs: number;
    readonly #keep: number;

    constructor(initialMs: number, capMs: number, keep = 9) {
        this.#initialMs = initialMs;
        this.#capMs = capMs;
        this.#keep = keep;
    }

    /** Adds one measurement (ms); the oldest beyond the last `keep` is dropped. */
    record(ms: number): void {
        this.#samples.push(ms);
        if (this.#samples.length > this.#keep) this.#samples.shift();
    }

    /** True once something was measured. */
    get measured(): boolean {
        return this.#samples.length > 0;
    }

    /** The pace: the second highest measurement (the only one, of one), bounded by the cap. */
    get ms(): number {
        if (this.#samples.length === 0) return Math.min(this.#initialMs, this.#capMs);
        const sorted = [...this.#samples].sort((a, b) => a - b);
        return Math.min(sorted[Math.max(0, sorted.length - 2)]!, this.#capMs);
    }
}

/** Resolves at `at` (a performance.now() reading), or at once when that has passed. */
export function waitUntil(at: number): Promise<void> {
    const wait = at - performance.now();
    if (wait <= 1) return Promise.resolve();
    return new Promise((resolve) => setTimeout(resolve, wait).unref());
}
