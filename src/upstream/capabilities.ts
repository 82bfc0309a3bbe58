/**
 * What the upstream can take, read from its EHLO reply (RFC 5321 section 4.1.1.1): the SIZE
 * limit (RFC 1870), 8BITMIME (RFC 6152), SMTPUTF8 (RFC 6531), DSN (RFC 3461) and REQUIRETLS
 * (RFC 8689, only on a TLS connection). The tracker keeps the latest answer, learnt at start,
 * from each readiness probe and from every upstream connection, so that what mailwarden offers
 * in its own EHLO follows what the upstream can honour; it logs every change, and warns when
 * the upstream takes smaller messages than a listener would announce.
 * It must not open connections itself, nor decide what a client may send (envelope/ does).
 */
import { messageSizeLimit } from '../envelope/extensions.ts';
import type { UpstreamLogger } from './common.ts';
import type { MailParams, RcptParams, UpstreamCapabilities } from './types.ts';

export type { UpstreamCapabilities } from './types.ts';

/** What an upstream without any service extension (HELO only) can take. */
export const NO_CAPABILITIES: UpstreamCapabilities = Object.freeze({
    size: null,
    eightBitMime: false,
    smtputf8: false,
    dsn: false,
    requireTls: false,
});

/** Capabilities from EHLO keywords (upper case) and their parameters, on a connection that is or is not TLS. */
export function capabilitiesFromEhlo(
    keywords: ReadonlyMap<string, readonly string[]>,
    tls: boolean,
): UpstreamCapabilities {
    const sizeParam = keywords.get('SIZE')?.[0];
    const size = sizeParam !== undefined && /^\d{1,20}$/.test(sizeParam) ? Number(sizeParam) : 0;
    return {
        size: size > 0 && Number.isSafeInteger(size) ? size : null,
        eightBitMime: keywords.has('8BITMIME'),
        smtputf8: keywords.has('SMTPUTF8'),
        dsn: keywords.has('DSN'),
        requireTls: tls && keywords.has('REQUIRETLS'),
    };
}

/**
 * The first extension a transaction asks for that the upstream does not offer, named as in
 * EHLO, or null when it offers them all. SIZE is only a declaration and is left out rather
 * than refused; everything else would be lost if it were not passed on.
 */
export function missingCapability(
    caps: UpstreamCapabilities,
    mail: MailParams | null,
    rcpt: RcptParams | null = null,
): string | null {
    if (mail) {
        if (mail.body === '8BITMIME' && !caps.eightBitMime) return '8BITMIME';
        if (mail.smtputf8 === true && !caps.smtputf8) return 'SMTPUTF8';
        if ((mail.ret !== undefined || mail.envid !== undefined) && !caps.dsn) return 'DSN';
        if (mail.requireTls === true && !caps.requireTls) return 'REQUIRETLS';
    }
    if (rcpt && (rcpt.notify !== undefined || rcpt.orcpt !== undefined) && !caps.dsn) return 'DSN';
    return null;
}

function describe(caps: UpstreamCapabilities): Record<string, unknown> {
    return {
        size: caps.size,
        '8bitmime': caps.eightBitMime,
        smtputf8: caps.smtputf8,
        dsn: caps.dsn,
        requiretls: caps.requireTls,
    };
}

function same(a: UpstreamCapabilities, b: UpstreamCapabilities): boolean {
    return (
        a.size === b.size &&
        a.eightBitMime === b.eightBitMime &&
        a.smtputf8 === b.smtputf8 &&
        a.dsn === b.dsn &&
        a.requireTls === b.requireTls
    );
}

/** The latest known capabilities of the upstream (null until first learnt). */
export class CapabilityTracker {
    private latest: UpstreamCapabilities | null = null;
    private readonly log: UpstreamLogger;
    /** Each listener's own size limit, to warn when the upstream's is smaller. */
    private readonly listenerSizes: readonly { readonly name: string; readonly maxMessageSize: number }[];

    constructor(opts: {
        readonly log: UpstreamLogger;
        readonly listeners: readonly { readonly name: string; readonly maxMessageSize: number }[];
    }) {
        this.log = opts.log;
        this.listenerSizes = opts.listeners;
    }

    get current(): UpstreamCapabilities | null {
        return this.latest;
    }

    /** Records what the upstream just advertised; logs when it changed. */
    update(caps: UpstreamCapabilities): void {
        const before = this.latest;
        if (before && same(before, caps)) return;
        this.latest = caps;
        this.log.info(
            { upstreamCapabilities: describe(caps) },
            before ? 'upstream capabilities changed' : 'upstream capabilities learnt',
        );
        const upstreamSize = caps.size;
        if (upstreamSize === null || (before && before.size === upstreamSize)) return;
        for (const l of this.listenerSizes) {
            if (l.maxMessageSize > upstreamSize) {
                this.log.warn(
                    {
                        listener: l.name,
                        maxMessageSize: l.maxMessageSize,
                        upstreamSize,
                        advertised: messageSizeLimit(l.maxMessageSize, upstreamSize),
                    },
                    'the upstream accepts smaller messages than this listener allows; SIZE is announced as the upstream limit less the room for the header fields added on the way (lower maxMessageSize to match)',
                );
            }
        }
    }
}
