/**
 * Relay control on `mx` listeners (SPEC, "The transaction"): a recipient is accepted only
 * when its domain is one of `domains` (exactly) or matches `relayDomains` (`example.net`
 * exactly, `.example.net` every name below it, as Postfix's `relay_domains` reads a leading
 * dot), unless the client authenticated. The domainless `<Postmaster>` (RFC 5321 section
 * 4.1.1.3) is always local. With no domains at all and a Maildir upstream (the embedded
 * defaults), nothing is relayed anywhere, so every recipient is accepted into the Maildir;
 * with an SMTP upstream the config loader insists on domains.
 *
 * A local part holding sender-specified routing (`user%elsewhere`, `elsewhere!user`, a quoted
 * `"user@elsewhere"`; RFC 5321 section 2.3.11 leaves the local part to the destination, and an
 * MTA like Postfix, with `allow_percent_hack`, `swap_bangpath` and `resolve_dequoted_address`
 * on by default, delivers such an address to `elsewhere`) is read as Postfix resolves it: while
 * the destination is one of `domains`, the next hop is taken (the last `@`, else the part
 * before the first `!`, else the part after the last `%`). As Postfix with
 * `allow_untrusted_routing = no`, a client that did not authenticate is refused when a hop is
 * none of `domains` and `relayDomains`, or when routing remains in an address for a
 * `relayDomains` destination (`routed`). A route that stays within `domains` and `relayDomains`
 * is refused too (`routing`): the mailbox Postfix delivers to is not the address rules and
 * limits read, and no sender on the internet needs it. The address itself is never rewritten here.
 * This is defence in depth: the upstream's own relay restrictions stay in force.
 * Pure functions; no I/O; it must not decide anything but which recipients may be relayed.
 */
import type { Config, ListenerConfig } from '../config/types.ts';
import { foldEnvelopeDomain, type Mailbox } from './command.ts';

/**
 * `routed`: refused like `refused`, for sender-specified routing in the local part to a
 * destination we do not relay to; `routing`: refused, for routing that stays within `domains`
 * and `relayDomains`.
 */
export type RelayVerdict = 'local' | 'relay' | 'authenticated' | 'open' | 'refused' | 'routed' | 'routing';

export interface RelayDecision {
    readonly verdict: RelayVerdict;
    /**
     * For `routed`: the hop the refusal is about, in folded A-label form, or null when that
     * hop is not a domain name at all (a malformed one, an address literal; an empty hop is
     * skipped). For `routing`: the first hop, folded, or null when every hop was empty.
     */
    readonly routedDomain?: string | null;
}

export interface RelayPolicy {
    /**
     * Why the recipient is accepted (`local`: one of `domains` or the domainless Postmaster;
     * `relay`: matches `relayDomains`; `authenticated`: a logged-in client; `open`: the
     * listener accepts every recipient), or `refused` (a domain we do not relay to), `routed`
     * (a local part routing on to one) or `routing` (a local part routing within ours).
     */
    verdict(recipient: Mailbox, authenticated: boolean): RelayVerdict;
    /** The verdict with, for `routed`, the domain the local part routes to. */
    decide(recipient: Mailbox, authenticated: boolean): RelayDecision;
}

/** One hop of sender-specified routing in a local part: where it goes, and what is left. */
export interface RoutingHop {
    /** The destination as written (not folded, maybe not a domain name at all). */
    readonly domain: string;
    readonly rest: string;
}

/**
 * The next hop of sender-specified routing in a (dequoted) local part, in the order Postfix's
 * trivial-rewrite resolves it: `user@site` (the last `@`), else `site!user` (the first `!`,
 * `swap_bangpath`), else `user%site` (the last `%`, `allow_percent_hack`); null when the local
 * part routes nowhere.
 */
export function nextRoutingHop(local: string): RoutingHop | null {
    const at = local.lastIndexOf('@');
    if (at >= 0) return { domain: local.slice(at + 1), rest: local.slice(0, at) };
    const bang = local.indexOf('!');
    if (bang >= 0) return { domain: local.slice(0, bang), rest: local.slice(bang + 1) };
    const percent = local.lastIndexOf('%');
    if (percent >= 0) return { domain: local.slice(percent + 1), rest: local.slice(0, percent) };
    return null;
}

/** True when `domain` (folded) matches one `relayDomains` entry. */
export function matchesRelayDomain(domain: string, entries: readonly string[]): boolean {
    for (const e of entries) {
        if (e.startsWith('.') ? domain.endsWith(e) : domain === e) return true;
    }
    return false;
}

/** The relay policy of one listener. */
export function relayPolicy(
    config: Pick<Config, 'domains' | 'relayDomains' | 'upstream'>,
    listener: ListenerConfig,
): RelayPolicy {
    const local = new Set(config.domains);
    const open =
        listener.mode !== 'mx' ||
        (config.upstream.kind === 'maildir' && config.domains.length === 0 && config.relayDomains.length === 0);
    const isRelay = (domain: string, literal: boolean): boolean =>
        !literal && matchesRelayDomain(domain, config.relayDomains);

    /**
     * Where an address for one of our domains or `relayDomains` ends up once its local part's
     * routing is followed: `local`/`relay`, or the hop that makes it a relay attempt.
     */
    const route = (recipient: Mailbox, start: 'local' | 'relay'): RelayDecision => {
        let where = start;
        let first: string | null = null;
        let emptyHop = false;
        let hop = nextRoutingHop(recipient.local);
        while (hop) {
            if (hop.domain === '') {
                // an empty hop routes nowhere (`"100%"`, `"!bob"`): Postfix drops it and delivers
                // to what is left, a mailbox other than the one written, so it is routing too
                emptyHop = true;
                hop = nextRoutingHop(hop.rest);
                continue;
            }
            const folded = foldEnvelopeDomain(hop.domain);
            const domain = 'ascii' in folded ? folded.ascii : null;
            // routing left in an address for a relay destination: Postfix's RESOLVE_FLAG_ROUTED
            if (where === 'relay' || domain === null) return { verdict: 'routed', routedDomain: domain };
            if (local.has(domain)) where = 'local';
            else if (isRelay(domain, false)) where = 'relay';
            else return { verdict: 'routed', routedDomain: domain };
            first ??= domain;
            hop = nextRoutingHop(hop.rest);
        }
        if (first !== null) return { verdict: 'routing', routedDomain: first };
        return emptyHop ? { verdict: 'routing', routedDomain: null } : { verdict: where };
    };

    const decide = (recipient: Mailbox, authenticated: boolean): RelayDecision => {
        if (recipient.asciiDomain === null) return { verdict: 'local' };
        let decision: RelayDecision;
        if (local.has(recipient.asciiDomain)) decision = route(recipient, 'local');
        else if (isRelay(recipient.asciiDomain, recipient.literal)) decision = route(recipient, 'relay');
        else decision = { verdict: 'refused' };
        if (decision.verdict !== 'refused' && decision.verdict !== 'routed' && decision.verdict !== 'routing') {
            return decision;
        }
        if (authenticated) return { verdict: 'authenticated' };
        return open ? { verdict: 'open' } : decision;
    };

    return {
        verdict: (recipient, authenticated) => decide(recipient, authenticated).verdict,
        decide,
    };
}
