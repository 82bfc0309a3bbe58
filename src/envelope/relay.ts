/**
 * Relay control on `mx` listeners (SPEC, "The transaction"): a recipient is accepted only
 * when its domain is one of `domains` (exactly) or matches `relayDomains` (`example.net`
 * exactly, `.example.net` every name below it, as Postfix's `relay_domains` reads a leading
 * dot), unless the client authenticated. The domainless `<Postmaster>` (RFC 5321 section
 * 4.1.1.3) is always local. With no domains at all and a Maildir upstream (the embedded
 * defaults), nothing is relayed anywhere, so every recipient is accepted into the Maildir;
 * with an SMTP upstream the config loader insists on domains.
 * This is defence in depth: the upstream's own relay restrictions stay in force.
 * Pure functions; no I/O.
 */
import type { Config, ListenerConfig } from '../config/types.ts';
import type { Mailbox } from './command.ts';

export type RelayVerdict = 'local' | 'relay' | 'authenticated' | 'open' | 'refused';

export interface RelayPolicy {
    /**
     * Why the recipient is accepted (`local`: one of `domains` or the domainless Postmaster;
     * `relay`: matches `relayDomains`; `authenticated`: a logged-in client; `open`: the
     * listener accepts every recipient), or `refused`.
     */
    verdict(recipient: Mailbox, authenticated: boolean): RelayVerdict;
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
    return {
        verdict(recipient, authenticated) {
            if (recipient.asciiDomain === null) return 'local';
            if (local.has(recipient.asciiDomain)) return 'local';
            if (!recipient.literal && matchesRelayDomain(recipient.asciiDomain, config.relayDomains)) return 'relay';
            if (authenticated) return 'authenticated';
            return open ? 'open' : 'refused';
        },
    };
}
