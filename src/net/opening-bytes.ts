/**
 * Names what the first bytes of a connection are when they are not SMTP: a PROXY protocol
 * header (HAProxy's proxy-protocol.txt, sections 2.1 and 2.2), an HTTP request (RFC 9112
 * section 3: a method, one space, a target; a browser or a scanner that found the port), or a
 * TLS ClientHello (RFC 8446 section 5.1: a handshake record, 0x16, of version 3.x) sent to a
 * port that expects plain SMTP. Postfix logs "HTTP command from …" and postscreen drops such
 * clients; the listener does the same with what this returns.
 *
 * Pure: it reads bytes and never decides what to do with the connection; it must not treat
 * anything an SMTP client may legitimately send first (a command after the greeting) as foreign.
 */
import { V2_SIGNATURE } from './proxy-protocol.ts';

export type OpeningKind = 'proxy' | 'http' | 'tls' | 'smtp';

/** Request methods of RFC 9110 section 9 and PATCH (RFC 5789): none is an SMTP verb. */
const HTTP_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH'].map((m) =>
    Buffer.from(`${m} `, 'latin1'),
);
const PROXY_V1 = Buffer.from('PROXY ', 'latin1');
const PREFIXES: readonly { kind: OpeningKind; bytes: Buffer }[] = [
    { kind: 'proxy', bytes: PROXY_V1 },
    { kind: 'proxy', bytes: V2_SIGNATURE },
    ...HTTP_METHODS.map((bytes) => ({ kind: 'http' as const, bytes })),
];

/** The most bytes needed to tell every kind apart. */
export const OPENING_BYTES = Math.max(...PREFIXES.map((p) => p.bytes.length));

/**
 * What `buf`, the first bytes a client sent, is. `null` while it is too short to tell (it is
 * still the beginning of one of the foreign openings); `smtp` for anything else.
 */
export function classifyOpening(buf: Buffer): OpeningKind | null {
    if (buf.length === 0) return null;
    // TLS record: content type 22 (handshake), then the legacy major version 3
    if (buf[0] === 0x16) {
        if (buf.length < 2) return null;
        if (buf[1] === 0x03) return 'tls';
    }
    let undecided = false;
    for (const p of PREFIXES) {
        const n = Math.min(buf.length, p.bytes.length);
        if (!buf.subarray(0, n).equals(p.bytes.subarray(0, n))) continue;
        if (buf.length >= p.bytes.length) return p.kind;
        undecided = true;
    }
    return undecided ? null : 'smtp';
}
