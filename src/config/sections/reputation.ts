/**
 * The `reputation:` section: the DNS block and allow lists asked about each client
 * (`dnsbl`, `dnswl`: RFC 5782 section 2.1, by address), the domain lists asked about the
 * HELO name and the envelope sender domain (`rhsbl`: section 2.2), and how often every list
 * is probed for health (`probeInterval`). Validation only: it must not query DNS.
 */
import { MAX_SITES, parseConfiguredSite, type ListKind } from '../../reputation/sites.ts';
import type { Field, SourceReader } from '../reader.ts';

export const REPUTATION_KEYS = ['dnsbl', 'dnswl', 'rhsbl', 'probeInterval'] as const;

/** DNS block and allow lists (docs/reputation.md); sites as written, validated here. */
export interface ReputationConfig {
    /** Address block lists: `zone[=filter][*weight][ delisting-page]`, positive weights. */
    readonly dnsbl: readonly string[];
    /** Address allow lists, negative weights. */
    readonly dnswl: readonly string[];
    /** Domain block lists asked for the HELO name and the envelope sender domain. */
    readonly rhsbl: readonly string[];
    /** Time between health probes of each list (an unhealthy list is probed sooner). */
    readonly probeIntervalMs: number;
}

/** Probes at most every 10 seconds (lists limit query rates) and at least once a day. */
const MIN_PROBE_MS = 10_000;
const MAX_PROBE_MS = 24 * 3_600_000;

export const DEFAULT_PROBE_INTERVAL_MS = 5 * 60_000;

export function defaultReputation(): ReputationConfig {
    return { dnsbl: [], dnswl: [], rhsbl: [], probeIntervalMs: DEFAULT_PROBE_INTERVAL_MS };
}

function sites(r: SourceReader, field: Field | undefined, kind: ListKind): string[] {
    if (!field || r.isEmpty(field)) return [];
    const items = r.list(field, 'DNS list sites, e.g. zen.spamhaus.org=127.0.0.[2..11]*3');
    if (items && items.length > MAX_SITES)
        r.fail(field, `at most ${MAX_SITES} lists (each is asked at every connection)`);
    const out: string[] = [];
    const zones = new Set<string>();
    for (const item of items ?? []) {
        const text = r.string(item, 'a DNS list site, e.g. zen.spamhaus.org=127.0.0.[2..11]*3');
        if (text === null) continue;
        const parsed = parseConfiguredSite(text, kind);
        if ('error' in parsed) {
            r.fail(item, parsed.error);
            continue;
        }
        if (zones.has(parsed.site.zone)) {
            r.fail(item, `${parsed.site.zone} is listed twice under ${kind}; give one filter that covers both`);
            continue;
        }
        zones.add(parsed.site.zone);
        out.push(text.trim().replace(/\s+/g, ' '));
    }
    return out;
}

export function reputationSection(r: SourceReader, field: Field): ReputationConfig {
    const entries = r.map(field, REPUTATION_KEYS) ?? new Map<string, Field>();
    const probe = entries.get('probeInterval');
    return {
        dnsbl: sites(r, entries.get('dnsbl'), 'dnsbl'),
        dnswl: sites(r, entries.get('dnswl'), 'dnswl'),
        rhsbl: sites(r, entries.get('rhsbl'), 'rhsbl'),
        probeIntervalMs:
            (probe && !r.isEmpty(probe) && r.duration(probe, MIN_PROBE_MS, MAX_PROBE_MS)) || DEFAULT_PROBE_INTERVAL_MS,
    };
}
