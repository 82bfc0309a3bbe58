/**
 * Whether each DNS list can be trusted right now. A list is asked for the entries every list
 * must and must not contain (RFC 5782 section 5) when mailwarden starts and then periodically;
 * a list that lists its "must not" entry (it lists everything: dead lists have been switched
 * to do that on purpose), does not list its "must" entry (it lists nothing), refuses our
 * queries (Spamhaus's 127.255.255.x), answers outside 127.0.0.0/8 or does not answer at all is
 * unhealthy: it is not asked and counts for nothing until a later probe finds it healthy again.
 * A refusal or a bogus answer seen while checking a client marks the list unhealthy at once.
 *
 * A list is unhealthy until its first probe succeeded, so a hostile list is never trusted, not
 * even in the first seconds. It decides nothing about clients and never logs by itself: state
 * changes go to `onChange` (the check logs and counts them).
 */
import { classifyAnswer, isNotFound, probeQueries, type ListSite } from './dns-lists.ts';

export type ZoneKind = 'address' | 'domain';

/** The reason of a list's state before its first probe. */
export const NOT_PROBED = 'not probed yet';

export interface ZoneState {
    readonly healthy: boolean;
    /** Why the list is unhealthy (or `ok`). */
    readonly reason: string;
    /** When the state was last decided (ms). */
    readonly at: number;
}

export interface ZoneHealthOptions {
    /** A-record lookup with node:dns shapes and error codes (the project's resolver). */
    readonly resolve: (name: string, rrtype: 'A') => Promise<unknown>;
    readonly now: () => number;
    /** Time between probes of a healthy list. */
    readonly intervalMs: number;
    /** Time between probes of an unhealthy list (sooner, to bring it back quickly). */
    readonly retryMs: number;
    /** `previous`: the state before, `NOT_PROBED` for a list's first probe. */
    readonly onChange?: (site: ListSite, kind: ZoneKind, state: ZoneState, previous: ZoneState) => void;
}

interface Tracked {
    readonly site: ListSite;
    readonly kind: ZoneKind;
    state: ZoneState;
    next: number;
    probing: Promise<void> | null;
}

export class ZoneHealth {
    private readonly opts: ZoneHealthOptions;
    private readonly zones = new Map<string, Tracked>();
    private timer: NodeJS.Timeout | null = null;

    constructor(sites: readonly { site: ListSite; kind: ZoneKind }[], opts: ZoneHealthOptions) {
        this.opts = opts;
        for (const { site, kind } of sites) {
            this.zones.set(key(site, kind), {
                site,
                kind,
                state: { healthy: false, reason: NOT_PROBED, at: opts.now() },
                next: 0,
                probing: null,
            });
        }
    }

    /** True when the list may be asked and believed. */
    healthy(site: ListSite, kind: ZoneKind): boolean {
        return this.zones.get(key(site, kind))?.state.healthy ?? false;
    }

    states(): { site: ListSite; kind: ZoneKind; state: ZoneState }[] {
        return [...this.zones.values()].map((t) => ({ site: t.site, kind: t.kind, state: t.state }));
    }

    /** A live answer showed the list cannot be trusted (refused or bogus): stop asking it until a probe passes. */
    distrust(site: ListSite, kind: ZoneKind, reason: string): void {
        const t = this.zones.get(key(site, kind));
        if (!t || !t.state.healthy) return;
        this.set(t, { healthy: false, reason, at: this.opts.now() });
        t.next = this.opts.now() + this.opts.retryMs;
    }

    /** Probes every list whose turn it is; resolves when those probes ended. */
    async probeDue(): Promise<void> {
        const now = this.opts.now();
        await Promise.all([...this.zones.values()].filter((t) => t.next <= now).map((t) => this.probe(t)));
    }

    /** Probes now and then on schedule until stop(). Resolves after the first round. */
    async start(): Promise<void> {
        await this.probeDue();
        const tick = Math.max(1000, Math.min(this.opts.retryMs, this.opts.intervalMs));
        this.timer = setInterval(() => void this.probeDue(), tick);
        this.timer.unref();
    }

    stop(): void {
        if (this.timer) clearInterval(this.timer);
        this.timer = null;
    }

    private probe(t: Tracked): Promise<void> {
        if (t.probing) return t.probing;
        t.probing = (async () => {
            const reason = await this.verdict(t);
            const healthy = reason === 'ok';
            this.set(t, { healthy, reason, at: this.opts.now() });
            t.next = this.opts.now() + (healthy ? this.opts.intervalMs : this.opts.retryMs);
        })().finally(() => {
            t.probing = null;
        });
        return t.probing;
    }

    /** 'ok', or why the list cannot be trusted. */
    private async verdict(t: Tracked): Promise<string> {
        const q = probeQueries(t.site.zone, t.kind);
        const ask = async (name: string): Promise<{ answers: readonly string[] } | { error: unknown }> => {
            try {
                return { answers: (await this.opts.resolve(name, 'A')) as string[] };
            } catch (error) {
                return { error };
            }
        };
        const [listed, unlisted] = await Promise.all([ask(q.listed), ask(q.unlisted)]);
        // the "must not" entry first: a list that lists everything is the dangerous one
        if ('answers' in unlisted && unlisted.answers.length > 0) {
            const a = classifyAnswer({ ...t.site, filter: null }, unlisted);
            if (a.kind === 'error' && a.error !== 'unexpected') return `${a.error}: ${a.detail}`;
            return `lists everything: ${q.unlisted} is listed (${unlisted.answers.join(',')})`;
        }
        if ('error' in unlisted && !isNotFound(unlisted.error)) return `not answering (${errorCode(unlisted.error)})`;
        if ('error' in listed) {
            return isNotFound(listed.error)
                ? `lists nothing: ${q.listed} is not listed`
                : `not answering (${errorCode(listed.error)})`;
        }
        // the test entry's own code need not pass the filter (DNSWL answers 127.0.10.0 for it)
        const a = classifyAnswer({ ...t.site, filter: null }, listed);
        if (a.kind === 'error') return `${a.error}: ${a.detail}`;
        if (a.kind === 'not-listed') return `lists nothing: ${q.listed} is not listed`;
        return 'ok';
    }

    private set(t: Tracked, state: ZoneState): void {
        const changed = state.healthy !== t.state.healthy || (!state.healthy && state.reason !== t.state.reason);
        const previous = t.state;
        t.state = state;
        if (changed) this.opts.onChange?.(t.site, t.kind, state, previous);
    }
}

function key(site: ListSite, kind: ZoneKind): string {
    return `${kind}:${site.zone}`;
}

function errorCode(err: unknown): string {
    const code = (err as { code?: unknown } | null)?.code;
    return typeof code === 'string' ? code : 'error';
}
