/**
 * Connection slots per client network: at most `limit` connections at once from one IPv4 /24
 * or one IPv6 /48 (the longest prefixes routed on the internet, so the smallest blocks an
 * attacker gets separately). A listener takes a slot when it learns the client's address and
 * gives it back when the connection ends, so one network can never hold every connection of a
 * listener. Counting is synchronous and in process: parallel connects cannot overshoot, and no
 * store is asked. It must not decide replies or log; the listener does.
 */
import { ipNetwork } from '../limits/limit-keys.ts';

/** Prefix lengths that make one "network" for the per-network connection limit. */
export const NETWORK_PREFIX = { ipv4: 24, ipv6: 48 } as const;

/** One taken slot; `release()` gives it back and may be called any number of times. */
export interface NetworkSlot {
    /** The client network, e.g. `192.0.2.0/24` or `2001:db8:1::/48`. */
    readonly network: string;
    release(): void;
}

export interface NetworkSlots {
    /** Takes a slot for `ip`'s network, or returns null when the network already has `limit`. */
    acquire(ip: string): NetworkSlot | null;
    /** Connections holding a slot for `ip`'s network now. */
    count(ip: string): number;
    /** Networks with at least one connection. */
    readonly networks: number;
}

/** The network `ip` is counted in (IPv4-mapped IPv6 counts as IPv4); a non-address stands for itself. */
export function clientNetwork(ip: string): string {
    return ipNetwork(ip, NETWORK_PREFIX.ipv4, NETWORK_PREFIX.ipv6) ?? ip.toLowerCase();
}

export function createNetworkSlots(limit: number): NetworkSlots {
    const counts = new Map<string, number>();
    return {
        acquire(ip: string): NetworkSlot | null {
            const network = clientNetwork(ip);
            const held = counts.get(network) ?? 0;
            if (held >= limit) return null;
            counts.set(network, held + 1);
            let released = false;
            return {
                network,
                release() {
                    if (released) return;
                    released = true;
                    const n = (counts.get(network) ?? 1) - 1;
                    if (n <= 0) counts.delete(network);
                    else counts.set(network, n);
                },
            };
        },
        count(ip: string): number {
            return counts.get(clientNetwork(ip)) ?? 0;
        },
        get networks() {
            return counts.size;
        },
    };
}
