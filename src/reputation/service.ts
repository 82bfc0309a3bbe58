/**
 * The reputation lists of a running proxy: the configured sites, their health probes
 * (zone-health.ts) with a log line and the `dnsbl_zone_healthy{zone}` gauge for every change,
 * the lookup and the `reputation` check built on them. The app builds one at start and a new
 * one when a reload changes `reputation` or `dns`; the old one's probes stop.
 *
 * It must not decide anything about clients (rules do) and never blocks the start for longer
 * than the first probe round, itself bounded by the DNS timeout.
 */
import type { Config } from '../config/types.ts';
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics.ts';
import type { Check } from '../types.ts';
import { createReputationCheck } from '../checks/reputation.ts';
import { ReputationLookup, type ReputationLists } from './check.ts';
import type { Resolve } from './lookup.ts';
import { configuredSites } from './sites.ts';
import { NOT_PROBED, ZoneHealth, type ZoneKind } from './zone-health.ts';

/** The kinds of `dnsbl_errors_total` (lookup.ts). */
const ERROR_KINDS = ['refused', 'bogus', 'unexpected', 'dns', 'timeout'] as const;

/** An unhealthy list is probed again after at most this long. */
const MAX_RETRY_MS = 60_000;

export interface ReputationServiceDeps {
    readonly resolve: Resolve;
    /** For the lists' health probes: asks the servers, not the cache (default: resolve). */
    readonly resolveFresh?: Resolve;
    /** `signal`: as for Resolver.reverse (given up once every caller's signal aborted). */
    readonly reverse: (ip: string, signal?: AbortSignal) => Promise<string[]>;
    readonly metrics: Pick<Metrics, 'dnsblHits' | 'dnsblErrors' | 'heloChecks' | 'dnsblZoneHealthy'>;
    readonly log: Pick<Logger, 'warn' | 'info'>;
    readonly now: () => number;
}

export interface ReputationService {
    readonly lists: ReputationLists;
    readonly health: ZoneHealth;
    readonly lookup: ReputationLookup;
    readonly check: Check;
    /** Probes every list once (bounded by `maxWaitMs`), then on schedule. */
    start(maxWaitMs: number): Promise<void>;
    stop(): void;
    /** The zones this service reports on (for removing gauges of lists that are gone). */
    readonly zones: readonly string[];
}

/** Addresses named by the listeners (wildcards say nothing about which address is ours). */
function ownAddresses(config: Config): string[] {
    return config.listeners.map((l) => l.host).filter((h) => h !== '0.0.0.0' && h !== '::' && h !== '');
}

export function createReputationService(config: Config, deps: ReputationServiceDeps): ReputationService {
    const rep = config.reputation;
    const lists: ReputationLists = {
        dnsbl: configuredSites(rep.dnsbl, 'dnsbl'),
        dnswl: configuredSites(rep.dnswl, 'dnswl'),
        rhsbl: configuredSites(rep.rhsbl, 'rhsbl'),
    };
    const tracked: { site: (typeof lists.dnsbl)[number]['site']; kind: ZoneKind }[] = [
        ...[...lists.dnsbl, ...lists.dnswl].map((s) => ({ site: s.site, kind: 'address' as const })),
        ...lists.rhsbl.map((s) => ({ site: s.site, kind: 'domain' as const })),
    ];
    const gauge = deps.metrics.dnsblZoneHealthy;
    /** A zone is healthy for the gauge when every use of it (address and domain) is. */
    const setGauge = (zone: string): void => {
        const states = health.states().filter((s) => s.site.zone === zone);
        gauge.set({ zone }, states.every((s) => s.state.healthy) ? 1 : 0);
    };
    const health: ZoneHealth = new ZoneHealth(tracked, {
        // a probe answered from the cache would trust a list that began listing everyone for as
        // long as the cached "not listed" lasts (up to the negative-answer cap, 15 minutes)
        resolve: (name, rrtype) => (deps.resolveFresh ?? deps.resolve)(name, rrtype),
        now: deps.now,
        intervalMs: rep.probeIntervalMs,
        retryMs: Math.min(MAX_RETRY_MS, rep.probeIntervalMs),
        onChange: (site, kind, state, previous) => {
            setGauge(site.zone);
            if (state.healthy) {
                // "again" only for a list that was disabled, not for one's first probe (at start, or added by a reload)
                deps.log.info(
                    { zone: site.zone, kind },
                    previous.reason === NOT_PROBED
                        ? 'DNS list healthy: asked from now on'
                        : 'DNS list healthy again: asked from now on',
                );
            } else {
                deps.log.warn(
                    { zone: site.zone, kind, reason: state.reason },
                    'DNS list disabled: its answers cannot be trusted, so it counts for nothing until a probe passes',
                );
            }
        },
    });
    const zones = [...new Set(tracked.map((t) => t.site.zone))];
    for (const zone of zones) {
        gauge.set({ zone }, 0);
        // series that panels and alerts compute rates over exist from the start, at 0
        deps.metrics.dnsblHits.inc({ zone }, 0);
        for (const kind of ERROR_KINDS) deps.metrics.dnsblErrors.inc({ zone, kind }, 0);
    }
    const lookup = new ReputationLookup({
        resolve: deps.resolve,
        reverse: deps.reverse,
        lists,
        health,
        dnsTimeoutMs: config.dns.timeoutMs,
        own: { hostname: config.hostname, domains: config.domains, addresses: ownAddresses(config) },
        metrics: deps.metrics,
    });
    return {
        lists,
        health,
        lookup,
        zones,
        check: createReputationCheck(lookup, config.dns.timeoutMs * 2),
        async start(maxWaitMs) {
            if (tracked.length === 0) return;
            let timer: NodeJS.Timeout | undefined;
            await Promise.race([
                health.start(),
                new Promise<void>((resolve) => {
                    timer = setTimeout(resolve, maxWaitMs);
                }),
            ]);
            clearTimeout(timer);
        },
        stop() {
            health.stop();
        },
    };
}
