/**
 * A small bounded LRU map with per-entry expiry, on top of Map's insertion order: a read
 * moves the entry to the young end, a write past the bound drops the oldest entry, and an
 * expired entry is dropped when it is read. The clock is passed in so TTLs can be tested
 * without sleeping. It never holds promises, only settled values.
 */

interface Slot<V> {
    value: V;
    expiresAt: number;
}

export class Lru<V> {
    readonly #max: number;
    readonly #map = new Map<string, Slot<V>>();

    constructor(maxEntries: number) {
        this.#max = Math.max(0, Math.floor(maxEntries));
    }

    get size(): number {
        return this.#map.size;
    }

    /** The value when present and `now` is before its expiry; refreshes its recency. */
    get(key: string, now: number): V | undefined {
        const slot = this.#map.get(key);
        if (!slot) return undefined;
        this.#map.delete(key);
        if (now >= slot.expiresAt) return undefined;
        this.#map.set(key, slot);
        return slot.value;
    }

    set(key: string, value: V, expiresAt: number): void {
        if (this.#max === 0) return;
        this.#map.delete(key);
        this.#map.set(key, { value, expiresAt });
        while (this.#map.size > this.#max) {
            const oldest = this.#map.keys().next();
            if (oldest.done) break;
            this.#map.delete(oldest.value);
        }
    }

    has(key: string): boolean {
        return this.#map.has(key);
    }

    clear(): void {
        this.#map.clear();
    }
}
