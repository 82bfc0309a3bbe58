/**
 * The `iprev` check (RFC 8601 section 3): the client's reverse name, accepted only when it
 * is forward-confirmed (the PTR name resolves back to the client address, RFC 8601
 * section 3, "iprev"; Postfix calls this the "verified" client name). Reports `client.ptr`
 * (the confirmed name or null), `iprev.ptr` (the reverse name confirmed or not: the confirmed
 * one, else the first PTR name; Postfix's "reverse client name", passed upstream as XCLIENT
 * REVERSE_NAME) and `iprev.result` (pass | fail | temperror | permerror).
 * A DNS failure never refuses anything by itself: it is reported, and rules decide. Only an
 * answer about the name (NXDOMAIN, NODATA, a name that cannot be asked) counts against the
 * client; every other resolver error (SERVFAIL, FORMERR, NOTIMP, a bad answer, a timeout) is a
 * temperror, never a fail.
 * The lookups start when the client connects (prefetch, once the connect stage did not refuse
 * it) but the facts are reported at the helo stage, so a slow or dead resolver never delays the
 * greeting. The client chooses the PTR names and whether their servers answer: the prefetch's
 * lookups are given up when the session ends, and the forward lookups of a session that ended
 * are never started.
 */
import { isIP } from 'node:net';
import type { Resolver } from '../dns/resolver.ts';
import type { Check, CheckResult } from '../types.ts';

/** Errors that say something about the name itself; any other error says nothing about it. */
const ABOUT_THE_NAME = new Set(['ENOTFOUND', 'ENODATA', 'EBADNAME']);

function temporary(err: unknown): boolean {
    return !ABOUT_THE_NAME.has((err as { code?: string } | null)?.code ?? '');
}

/** At most this many PTR names are forward-checked (RFC 8601 section 3: a bounded number). */
const MAX_NAMES = 5;

export function createIprevCheck(resolver: Resolver, timeoutMs: number): Check {
    return {
        name: 'iprev',
        // Reported at the helo stage (the first MAIL after EHLO), looked up from the connect on:
        // the greeting never waits for DNS, however slow or dead it is.
        stages: ['helo'],
        timeoutMs,
        onError: 'ignore',
        prefetch(client, signal) {
            const family = isIP(client.ip);
            if (family === 0) return;
            // the resolver caches and shares queries in flight, so run() finds these answers; with
            // the session's signal they are given up when it ends (unless run() waits for them)
            resolver.reverse(client.ip, signal).then(
                (names) => {
                    if (signal.aborted) return;
                    for (const name of names.slice(0, MAX_NAMES)) {
                        resolver.resolve(name, family === 6 ? 'AAAA' : 'A', signal).catch(() => undefined);
                    }
                },
                () => undefined,
            );
        },
        async run(ctx, signal): Promise<CheckResult> {
            const ip = ctx.client.ip;
            const family = isIP(ip);
            if (family === 0) return { facts: { 'client.ptr': null, 'iprev.ptr': null, 'iprev.result': 'permerror' } };
            let names: string[];
            try {
                names = (await resolver.reverse(ip)).slice(0, MAX_NAMES);
            } catch (err) {
                const result = temporary(err) ? 'temperror' : 'fail';
                return { facts: { 'client.ptr': null, 'iprev.ptr': null, 'iprev.result': result } };
            }
            let sawTemporary = false;
            for (const name of names) {
                // the pipeline gave up on the check (timeout): no new query
                if (signal.aborted) break;
                try {
                    const addrs = (await resolver.resolve(name, family === 6 ? 'AAAA' : 'A')) as string[];
                    if (addrs.some((a) => sameAddress(a, ip))) {
                        const confirmed = hostName(name);
                        return { facts: { 'client.ptr': confirmed, 'iprev.ptr': confirmed, 'iprev.result': 'pass' } };
                    }
                } catch (err) {
                    if (temporary(err)) sawTemporary = true;
                }
            }
            const first = names[0] === undefined ? null : hostName(names[0]);
            return {
                facts: { 'client.ptr': null, 'iprev.ptr': first, 'iprev.result': sawTemporary ? 'temperror' : 'fail' },
            };
        },
    };
}

/** A name of a PTR record as the facts give it: lower case, without the root's dot. */
function hostName(name: string): string {
    return name.toLowerCase().replace(/\.$/, '');
}

function sameAddress(a: string, b: string): boolean {
    if (a === b) return true;
    if (isIP(a) === 6 && isIP(b) === 6) return expand6(a) === expand6(b);
    return false;
}

/** Full eight-group form of an IPv6 address, for comparison. */
function expand6(ip: string): string {
    const [head = '', tail = ''] = ip.toLowerCase().split('::');
    const h = head ? head.split(':') : [];
    const t = ip.includes('::') ? (tail ? tail.split(':') : []) : [];
    const fill: string[] = ip.includes('::') ? new Array<string>(8 - h.length - t.length).fill('0') : [];
    return [...h, ...fill, ...t].map((g) => g.padStart(4, '0')).join(':');
}
