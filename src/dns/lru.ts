/**
 * A small bounded LRU map with per-entry expiry, on top of Map's insertion order: a read
 * moves the entry to the young end, a write past either bound (entries, or the sum of the
 * sizes the caller gives) drops the oldest entries, a value larger than 1/64 of the byte
 * bound is not kept at all, and an expired entry is dropped when it is read or when sweep()
 * comes by it. sweep() does a bounded amount of work per call, walking the entries in turn,
 * so memory held by expired entries comes back without a timer. The clock is passed in so
 * TTLs can be tested without sleeping. It never holds promises, only settled values, and it
 * does not measure values itself: sizes are the caller's estimate.
 */

interface Slot<V> {
    value: V;
    expiresAt: number;
    bytes: number;
}

/** The largest value kept is this fraction of the byte bound, so one value cannot push out most others. */
const ENTRY_SHARE = 64;

export class Lru<V> {
    readonly #max: number;
    readonly #maxBytes: number;
    readonly #maxEntryBytes: number;
    readonly #map = new Map<string, Slot<V>>();
    #bytes = 0;
    /** Where the next sweep() goes on from; null: start again at the oldest entry. */
    #cursor: MapIterator<[string, Slot<V>]> | null = null;

    constructor(maxEntries: number, maxBytes = Infinity) {
        this.#max = Math.max(0, Math.floor(maxEntries));
        this.#maxBytes = Math.max(0, maxBytes);
        this.#maxEntryBytes = this.#maxBytes / ENTRY_SHARE;
    }

    get size(): number {
        return this.#map.size;
    }

    /** Sum of the sizes given to set() for the entries held. */
    get bytes(): number {
        return this.#bytes;
    }

    /** The value when present and `now` is before its expiry; refreshes its recency. */
    get(key: string, now: number): V | undefined {
        const slot = this.#map.get(key);
        if (!slot) return undefined;
        this.#map.delete(key);
        if (now >= slot.expiresAt) {
            this.#bytes -= slot.bytes;
            return undefined;
        }
        this.#map.set(key, slot);
        return slot.value;
    }

    /** When the entry expires, while it is present and `now` is before that; its recency stays as it is. */
    expiresAt(key: string, now: number): number | undefined {
        const slot = this.#map.get(key);
        return slot && now < slot.expiresAt ? slot.expiresAt : undefined;
    }

    /**
     * Keeps `value` until `expiresAt`, counted as `bytes`; then drops the least recently used
     * entries until both bounds hold. A value over 1/64 of the byte bound is not kept (and
     * an older value under the same key is dropped).
     */
    set(key: string, value: V, expiresAt: number, bytes = 0): void {
        if (this.#max === 0) return;
        this.#delete(key);
        if (bytes > this.#maxEntryBytes) return;
        this.#map.set(key, { value, expiresAt, bytes });
        this.#bytes += bytes;
        while (this.#map.size > this.#max || this.#bytes > this.#maxBytes) {
            const oldest = this.#map.keys().next();
            if (oldest.done) break;
            this.#delete(oldest.value);
        }
    }

    /** Looks at up to `limit` entries, going on from where the last call stopped, and drops the expired ones. */
    sweep(now: number, limit: number): void {
        for (let seen = 0; seen < limit; seen++) {
            this.#cursor ??= this.#map.entries();
            const next = this.#cursor.next();
            if (next.done) {
                this.#cursor = null;
                return;
            }
            const [key, slot] = next.value;
            if (now >= slot.expiresAt) this.#delete(key);
        }
    }

    has(key: string): boolean {
        return this.#map.has(key);
    }

    clear(): void {
        this.#map.clear();
        this.#bytes = 0;
        this.#cursor = null;
    }

    #delete(key: string): void {
        const slot = this.#map.get(key);
        if (!slot) return;
        this.#map.delete(key);
        this.#bytes -= slot.bytes;
    }
}
