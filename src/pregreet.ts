/**
 * The pregreet test's memory and exemptions (postscreen's greet test, its pass cache and
 * greet_ttl): whether a connecting client must wait for the greeting, and remembering a client
 * that waited without talking so that it is greeted at once for `pregreet.ttl`. Passes live in
 * the shared store of the limits (Redis or memory) as a one-per-ttl counter per client address
 * (an IPv6 client per /64), so every instance behind one Redis knows them.
 *
 * Exempt (greeted at once, not tested): a client a connect-stage rule accepts (the shipped
 * allow-networks list), and a client the injected `exempt` hook names (a DNSWL check).
 * Failure verdict: a store or hook that fails or does not answer before the wait is over
 * makes the client wait as a new client would; it never blocks or refuses the greeting.
 *
 * It must not touch sockets or decide what a pregreeting client gets (rules do that from the
 * `client.pregreet` fact); the listener's adapter runs the wait itself.
 */
import type { ListenerConfig } from './config/types.ts';
import { PASS_KEY_PREFIX } from './limits/keys.ts';
import { ipNetwork } from './limits/limit-keys.ts';
import type { LimitStore } from './limits/types.ts';
import type { Logger } from './log.ts';
import type { Decider } from './types.ts';

/** How a connection went through the test, as counted in `pregreet_total{result}`. */
export type PregreetResult = 'pass' | 'fail' | 'cached' | 'exempt' | 'error';
export const PREGREET_RESULTS: readonly PregreetResult[] = Object.freeze(['pass', 'fail', 'cached', 'exempt', 'error']);

/** Before the wait: greet at once (cached, exempt), or wait (new; error: as a new client). */
export type PregreetLookup = 'cached' | 'exempt' | 'new' | 'error';

export interface PregreetGate {
    lookup(ip: string, listener: ListenerConfig): Promise<PregreetLookup>;
    /** The client waited without talking: greet it at once for the ttl. Never rejects. */
    remember(ip: string): Promise<void>;
}

export interface PregreetGateOptions {
    readonly store: LimitStore;
    readonly ttlMs: number;
    /** The rules in force, asked whether a connect-stage rule accepts the client. */
    readonly decider: () => Decider;
    /** Further exemptions (a DNSWL check); null: the allow rules only. */
    readonly exempt: ((ip: string) => Promise<boolean>) | null;
    readonly now: () => number;
    readonly log: Logger;
}

/** The most bytes of an early talker kept for the fact and the log line. */
export const PREGREET_SAMPLE_BYTES = 64;

/** What a client sent before the greeting, safe for logs and rules: printable ASCII, the rest as \xHH. */
export function pregreetSample(bytes: Buffer): string {
    let out = '';
    for (const b of bytes.subarray(0, PREGREET_SAMPLE_BYTES)) {
        out += b >= 0x20 && b < 0x7f && b !== 0x5c ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, '0')}`;
    }
    return out;
}

/** A connect-stage rule that ends evaluation with accept (an allow list) exempts the client. */
function allowedByRules(decider: Decider, ip: string, listener: ListenerConfig): boolean {
    const decision = decider.decide('connect', {
        listener: listener.name,
        'listener.mode': listener.mode,
        'client.ip': ip,
        tls: listener.tls === 'implicit',
        'client.pregreet': false,
        score: 0,
    });
    return decision.action === 'accept' && decision.rules.length > 0;
}

export function createPregreetGate(options: PregreetGateOptions): PregreetGate {
    const window = [{ limit: 1, periodMs: options.ttlMs }];
    // an IPv6 client per /64 (a host picks addresses in its /64 at will), IPv4 per address
    const key = (ip: string): string => `${PASS_KEY_PREFIX}${ipNetwork(ip, 32, 64) ?? ip}`;
    return {
        async lookup(ip, listener) {
            try {
                if (allowedByRules(options.decider(), ip, listener)) return 'exempt';
            } catch (err) {
                options.log.warn({ client: ip, err }, 'pregreet: the allow rules could not be asked');
            }
            // both asked at once; a client in the pass cache is greeted without waiting for the
            // exemption's answer (a DNS lookup), which only matters for a client not seen before
            const exempt = options.exempt
                ? options.exempt(ip).catch((err: unknown) => {
                      options.log.warn({ client: ip, err }, 'pregreet: the exemption could not be asked');
                      return false;
                  })
                : Promise.resolve(false);
            let remaining: number;
            try {
                remaining = (await options.store.take(key(ip), window, 0, options.now())).remaining;
            } catch (err) {
                options.log.warn({ client: ip, err }, 'pregreet: lookup failed; the client waits as a new one');
                return (await exempt) ? 'exempt' : 'error';
            }
            // a pass was charged within the ttl: nothing left to take
            if (remaining === 0) return 'cached';
            return (await exempt) ? 'exempt' : 'new';
        },
        async remember(ip) {
            try {
                await options.store.take(key(ip), window, 1, options.now());
            } catch (err) {
                options.log.warn({ client: ip, err }, 'pregreet: the pass could not be remembered');
            }
        },
    };
}
