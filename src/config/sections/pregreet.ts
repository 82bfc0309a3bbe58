/**
 * The `pregreet:` section: the shared settings of the pregreet test (postscreen's greet_wait):
 * how long mx listeners keep a client waiting for the greeting, and how long a client that
 * waited is remembered. Per-listener waits (`pregreetWait`) are read by the listeners section
 * with the bound defined here. Validation only: it must not run the test.
 */
import { sectionEntries } from '../fields.ts';
import type { Field, SourceReader } from '../reader.ts';

export const PREGREET_KEYS = ['wait', 'ttl'] as const;

/** The pregreet test's shared settings (per-listener waits are in ListenerConfig). */
export interface PregreetConfig {
    /** The wait of mx listeners that do not set `pregreetWait`. */
    readonly waitMs: number;
    /** How long a client that waited is remembered (in the shared store) and greeted at once. */
    readonly ttlMs: number;
}

/**
 * postscreen's greet_wait is 6 s; a real MTA waits for the greeting (RFC 5321 section
 * 4.3.1), a bot that speaks first is seen. A client that passed is greeted at once for a day
 * (postscreen_greet_ttl).
 */
export const PREGREET_DEFAULTS = { waitMs: 6_000, ttlMs: 24 * 3_600_000 } as const;

/** postscreen allows any greet_wait; more than a minute only keeps real MTAs waiting. */
export const MAX_PREGREET_WAIT_MS = 60_000;
/** A pass is remembered at most a month (postscreen_greet_ttl is a day by default). */
const MAX_PREGREET_TTL_MS = 31 * 24 * 3_600_000;

export function defaultPregreet(): PregreetConfig {
    return { ...PREGREET_DEFAULTS };
}

/** Reads `pregreet: { wait, ttl }`; a key left out or invalid (reported) takes its default. */
export function pregreetSection(r: SourceReader, field: Field): PregreetConfig {
    const entries = sectionEntries(r, field, PREGREET_KEYS);
    const waitField = entries.get('wait');
    const ttlField = entries.get('ttl');
    return {
        waitMs: (waitField && r.duration(waitField, 0, MAX_PREGREET_WAIT_MS)) ?? PREGREET_DEFAULTS.waitMs,
        ttlMs: (ttlField && r.duration(ttlField, 60_000, MAX_PREGREET_TTL_MS)) ?? PREGREET_DEFAULTS.ttlMs,
    };
}
