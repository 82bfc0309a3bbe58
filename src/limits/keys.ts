/**
 * Names of the shared-state keys: `<prefix>:<kind>:v1:{<key>}[:suffix]`. The version lets a
 * later release change a value's format without misreading old values; the braces are a
 * Redis Cluster hash tag, so every key of one limit key (all its windows) lands in one slot
 * and one script may touch them together. Must not build a key from anything but its
 * arguments (no clocks, no randomness).
 */
import type { Window } from './types.ts';

export const KEY_VERSION = 'v1';

/**
 * The rate keys of the pregreet pass cache (one per client address, an IPv6 client per /64):
 * the memory store keeps them apart from the limits' counters, so a client that can pick new
 * addresses at will cannot push the counters out with them.
 */
export const PASS_KEY_PREFIX = 'pregreet-pass:';

export interface KeyNames {
    /** The GCRA state of one window of one limit key. The limit is part of the name: changing it starts afresh. */
    rate(key: string, window: Window): string;
    /**
     * One counter of a group (LimitStore.charge): the group is the hash tag, so every counter of
     * a group lands in one Cluster slot and one script may charge them together.
     */
    counter(group: string, key: string, window: Window): string;
    /** The lease set (sorted set, score = expiry) of one concurrency key. */
    lease(key: string): string;
    /** One greylisting triplet. */
    triplet(triplet: string): string;
    /** One client's greylisting pass count (auto-allowlist). */
    client(client: string): string;
    /** The GCRA state of the cap on new greylisting records of one network (GreylistOptions.cap). */
    greyNetwork(key: string, window: Window): string;
}

export function keyNames(prefix = 'mw'): KeyNames {
    const v = KEY_VERSION;
    return {
        rate: (key, w) => `${prefix}:rl:${v}:{${key}}:${w.limit}:${w.periodMs}`,
        counter: (group, key, w) => `${prefix}:gc:${v}:{${group}}:${key}:${w.limit}:${w.periodMs}`,
        lease: (key) => `${prefix}:cc:${v}:{${key}}`,
        triplet: (triplet) => `${prefix}:glt:${v}:{${triplet}}`,
        client: (client) => `${prefix}:glc:${v}:{${client}}`,
        greyNetwork: (key, w) => `${prefix}:gln:${v}:{${key}}:${w.limit}:${w.periodMs}`,
    };
}
