/**
 * The PROXY protocol header a load balancer (HAProxy, AWS NLB, …) sends before the SMTP
 * dialogue to say who the real client is: version 1 (one text line) and version 2 (binary,
 * with TLVs), told apart by their first bytes (HAProxy's proxy-protocol.txt, sections 2.1,
 * 2.2 and 2.3). Parsed strictly: anything that is not exactly a header is refused, so a
 * client can never pass for another address by sending something that merely looks like one.
 *
 * Pure: it reads bytes and returns what they say; it must not read sockets, trust anybody (the
 * listener decides whose headers it reads, by CIDR) or resolve names.
 */
import { isIPv4, isIPv6 } from 'node:net';

/** The 12 bytes that open every version 2 header (section 2.2). */
export const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
/** A version 1 line is at most 107 bytes, CRLF included (section 2.1). */
export const V1_MAX_LENGTH = 107;
/**
 * Largest version 2 header we read. The length field allows 65,535 bytes after the fixed
 * 16, but addresses take at most 216 and the TLVs real balancers send (ALPN, authority, SSL,
 * AWS and Azure ids, CRC) a few hundred: anything near this is not a balancer.
 */
export const V2_MAX_LENGTH = 16 + 4096;

/** TLV types of section 2.2.7 and the SSL sub-types of 2.2.5. */
export const TLV = {
    ALPN: 0x01,
    AUTHORITY: 0x02,
    CRC32C: 0x03,
    NOOP: 0x04,
    UNIQUE_ID: 0x05,
    SSL: 0x20,
    SSL_VERSION: 0x21,
    SSL_CN: 0x22,
    SSL_CIPHER: 0x23,
    SSL_SIG_ALG: 0x24,
    SSL_KEY_ALG: 0x25,
    NETNS: 0x30,
} as const;

export interface ProxyEndpoint {
    readonly address: string;
    readonly port: number;
}

export interface ProxyTlv {
    readonly type: number;
    readonly value: Buffer;
}

export interface ProxyHeader {
    readonly version: 1 | 2;
    /**
     * `proxy`: a relayed connection, `source` is the real client. `local`: the balancer speaking
     * for itself (a health check, v2 LOCAL), or a v1 `UNKNOWN` line: use the socket's own
     * addresses. Also `local` for v2 families without IP addresses (AF_UNSPEC, AF_UNIX), which
     * the protocol says to treat the same way.
     */
    readonly command: 'proxy' | 'local';
    /** tcp4 / tcp6 for addresses; `unknown` otherwise. */
    readonly transport: 'tcp4' | 'tcp6' | 'unknown';
    readonly source: ProxyEndpoint | null;
    readonly destination: ProxyEndpoint | null;
    readonly tlvs: readonly ProxyTlv[];
    /** Bytes the header took; what follows belongs to the SMTP session. */
    readonly length: number;
}

export type ProxyParse =
    | { readonly kind: 'header'; readonly header: ProxyHeader }
    /** More bytes are needed to decide. */
    | { readonly kind: 'incomplete' }
    | { readonly kind: 'invalid'; readonly reason: string };

const V1_PREFIX = Buffer.from('PROXY ', 'latin1');

function invalid(reason: string): ProxyParse {
    return { kind: 'invalid', reason };
}

/** True while `buf` could still be the start of `prefix` (or starts with it). */
function couldStartWith(buf: Buffer, prefix: Buffer): boolean {
    const n = Math.min(buf.length, prefix.length);
    return buf.subarray(0, n).equals(prefix.subarray(0, n));
}

/**
 * Reads a PROXY header from the start of `buf`. Returns `incomplete` while the bytes so far
 * are a valid beginning of a header, `invalid` as soon as they cannot be one.
 */
export function parseProxyHeader(buf: Buffer): ProxyParse {
    if (buf.length === 0) return { kind: 'incomplete' };
    if (buf[0] === V2_SIGNATURE[0]) {
        if (!couldStartWith(buf, V2_SIGNATURE)) return invalid('not a PROXY protocol header');
        return buf.length < V2_SIGNATURE.length ? { kind: 'incomplete' } : parseV2(buf);
    }
    if (!couldStartWith(buf, V1_PREFIX)) return invalid('not a PROXY protocol header');
    return buf.length < V1_PREFIX.length ? { kind: 'incomplete' } : parseV1(buf);
}

/** A decimal port without sign, leading zeros or spaces (section 2.1). */
function port(text: string): number | null {
    if (!/^(0|[1-9][0-9]{0,4})$/.test(text)) return null;
    const n = Number(text);
    return n <= 65535 ? n : null;
}

function parseV1(buf: Buffer): ProxyParse {
    const end = buf.indexOf('\r\n', 0, 'latin1');
    if (end < 0) {
        if (buf.length >= V1_MAX_LENGTH) return invalid('PROXY v1 line longer than 107 bytes');
        // a lone CR or LF anywhere but in the terminator is never valid
        const cr = buf.indexOf(0x0d);
        if (buf.indexOf(0x0a) >= 0 || (cr >= 0 && cr < buf.length - 1))
            return invalid('PROXY v1 line not ended by CRLF');
        return { kind: 'incomplete' };
    }
    if (end + 2 > V1_MAX_LENGTH) return invalid('PROXY v1 line longer than 107 bytes');
    const line = buf.toString('latin1', 0, end);
    if (/[^\x20-\x7e]/.test(line)) return invalid('PROXY v1 line with a control or non-ASCII character');
    const parts = line.split(' ');
    const length = end + 2;
    if (parts[1] === 'UNKNOWN') {
        // section 2.1: the receiver must ignore what follows UNKNOWN and use the socket's addresses
        return {
            kind: 'header',
            header: {
                version: 1,
                command: 'local',
                transport: 'unknown',
                source: null,
                destination: null,
                tlvs: [],
                length,
            },
        };
    }
    if (parts.length !== 6) return invalid('PROXY v1 line does not have six fields');
    const [, proto, src, dst, sport, dport] = parts as [string, string, string, string, string, string];
    const v4 = proto === 'TCP4';
    if (!v4 && proto !== 'TCP6') return invalid('PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN');
    const valid = v4 ? isCanonicalIpv4 : (a: string): boolean => isIPv6(a) && !a.includes('%');
    if (!valid(src) || !valid(dst)) return invalid(`PROXY v1 addresses are not ${v4 ? 'IPv4' : 'IPv6'} addresses`);
    const sp = port(sport);
    const dp = port(dport);
    if (sp === null || dp === null) return invalid('PROXY v1 ports are not numbers from 0 to 65535');
    return {
        kind: 'header',
        header: {
            version: 1,
            command: 'proxy',
            transport: v4 ? 'tcp4' : 'tcp6',
            source: { address: src, port: sp },
            destination: { address: dst, port: dp },
            tlvs: [],
            length,
        },
    };
}

/** Dotted quad without leading zeros (which some parsers read as octal). */
function isCanonicalIpv4(text: string): boolean {
    return isIPv4(text) && text.split('.').every((o) => o === '0' || !o.startsWith('0'));
}

function ipv6(bytes: Buffer): string {
    const groups: string[] = [];
    for (let i = 0; i < 16; i += 2) groups.push(bytes.readUInt16BE(i).toString(16));
    // the shortest form (RFC 5952): the longest run of two or more zero groups becomes ::
    let best = -1;
    let bestLen = 1;
    for (let i = 0; i < 8; ) {
        if (groups[i] !== '0') {
            i++;
            continue;
        }
        let j = i;
        while (j < 8 && groups[j] === '0') j++;
        if (j - i > bestLen) {
            best = i;
            bestLen = j - i;
        }
        i = j;
    }
    if (best < 0) return groups.join(':');
    return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
}

function parseV2(buf: Buffer): ProxyParse {
    if (!buf.subarray(0, 12).equals(V2_SIGNATURE)) return invalid('not a PROXY protocol header');
    if (buf.length < 16) return { kind: 'incomplete' };
    const verCmd = buf[12]!;
    if (verCmd >> 4 !== 0x2) return invalid(`PROXY v2 header with version ${verCmd >> 4}`);
    const cmd = verCmd & 0x0f;
    if (cmd > 0x1) return invalid(`PROXY v2 header with unknown command ${cmd}`);
    const famProto = buf[13]!;
    const family = famProto >> 4;
    const proto = famProto & 0x0f;
    if (family > 0x3 || proto > 0x2) return invalid('PROXY v2 header with an unknown address family or protocol');
    const length = 16 + buf.readUInt16BE(14);
    if (length > V2_MAX_LENGTH) return invalid(`PROXY v2 header of ${length} bytes is too long`);
    if (buf.length < length) return { kind: 'incomplete' };
    const body = buf.subarray(16, length);
    const addrLen = family === 0x1 ? 12 : family === 0x2 ? 36 : family === 0x3 ? 216 : 0;
    if (body.length < addrLen) return invalid('PROXY v2 header shorter than its addresses');
    const tlvs = parseTlvs(body.subarray(addrLen));
    if (typeof tlvs === 'string') return invalid(tlvs);
    const crc = tlvs.find((t) => t.type === TLV.CRC32C);
    if (crc) {
        if (crc.value.length !== 4) return invalid('PROXY v2 CRC32C TLV is not 4 bytes');
        // section 2.2.7: the checksum is computed with the checksum field itself set to zero
        const copy = Buffer.from(buf.subarray(0, length));
        const at = length - body.length + addrLen + tlvOffset(body.subarray(addrLen), TLV.CRC32C) + 3;
        copy.fill(0, at, at + 4);
        if (crc32c(copy) !== crc.value.readUInt32BE(0)) return invalid('PROXY v2 header fails its CRC32C');
    }
    const local = cmd === 0x0 || family === 0x0 || family === 0x3;
    // a relayed connection of an address family we read must be a stream (SMTP runs over TCP)
    if (!local && proto !== 0x1) return invalid('PROXY v2 header for a datagram connection');
    if (local) {
        return {
            kind: 'header',
            header: {
                version: 2,
                command: 'local',
                transport: 'unknown',
                source: null,
                destination: null,
                tlvs,
                length,
            },
        };
    }
    const v4 = family === 0x1;
    const src = v4 ? Array.from(body.subarray(0, 4)).join('.') : ipv6(body.subarray(0, 16));
    const dst = v4 ? Array.from(body.subarray(4, 8)).join('.') : ipv6(body.subarray(16, 32));
    const sp = body.readUInt16BE(v4 ? 8 : 32);
    const dp = body.readUInt16BE(v4 ? 10 : 34);
    return {
        kind: 'header',
        header: {
            version: 2,
            command: 'proxy',
            transport: v4 ? 'tcp4' : 'tcp6',
            source: { address: src, port: sp },
            destination: { address: dst, port: dp },
            tlvs,
            length,
        },
    };
}

/** TLVs laid end to end (section 2.2.7); a message naming what is wrong otherwise. */
function parseTlvs(bytes: Buffer): ProxyTlv[] | string {
    const out: ProxyTlv[] = [];
    let i = 0;
    while (i < bytes.length) {
        if (i + 3 > bytes.length) return 'PROXY v2 TLV cut short';
        const type = bytes[i]!;
        const len = bytes.readUInt16BE(i + 1);
        if (i + 3 + len > bytes.length) return 'PROXY v2 TLV longer than the header';
        out.push({ type, value: Buffer.from(bytes.subarray(i + 3, i + 3 + len)) });
        i += 3 + len;
    }
    if (out.filter((t) => t.type === TLV.CRC32C).length > 1) return 'PROXY v2 header with two CRC32C TLVs';
    return out;
}

/** Offset of the first TLV of `type` within the TLV bytes (which parseTlvs has validated). */
function tlvOffset(bytes: Buffer, type: number): number {
    let i = 0;
    while (i < bytes.length && bytes[i] !== type) i += 3 + bytes.readUInt16BE(i + 1);
    return i;
}

let CRC_TABLE: Uint32Array | null = null;

/** CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as section 2.2.7 asks. */
export function crc32c(data: Uint8Array): number {
    if (!CRC_TABLE) {
        CRC_TABLE = new Uint32Array(256);
        for (let n = 0; n < 256; n++) {
            let c = n;
            for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
            CRC_TABLE[n] = c >>> 0;
        }
    }
    let crc = 0xffffffff;
    for (const byte of data) crc = CRC_TABLE[(crc ^ byte) & 0xff]! ^ (crc >>> 8);
    return (crc ^ 0xffffffff) >>> 0;
}

/**
 * Accumulates bytes as they arrive until a header is complete or cannot be one. `push` returns
 * the header with the bytes that followed it (the start of the SMTP dialogue), `invalid`, or
 * null while more is needed. Never holds more than V2_MAX_LENGTH bytes.
 */
export class ProxyHeaderReader {
    private buf: Buffer = Buffer.alloc(0);

    push(chunk: Buffer): { header: ProxyHeader; rest: Buffer } | { invalid: string } | null {
        this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
        const r = parseProxyHeader(this.buf.subarray(0, V2_MAX_LENGTH));
        if (r.kind === 'incomplete') return null;
        if (r.kind === 'invalid') return { invalid: r.reason };
        return { header: r.header, rest: this.buf.subarray(r.header.length) };
    }
}

/** The text of a TLV meant as text (ALPN, authority, unique id), or null when absent or not UTF-8. */
export function tlvText(header: ProxyHeader, type: number): string | null {
    const t = header.tlvs.find((x) => x.type === type);
    if (!t) return null;
    const text = t.value.toString('utf8');
    return Buffer.from(text, 'utf8').equals(t.value) ? text : null;
}

/** Builds a header (for tests and tools): the inverse of parseProxyHeader for `proxy` headers. */
export function formatProxyHeader(
    version: 1 | 2,
    source: ProxyEndpoint,
    destination: ProxyEndpoint,
    tlvs: readonly ProxyTlv[] = [],
): Buffer {
    const v4 = isIPv4(source.address);
    if (version === 1) {
        return Buffer.from(
            `PROXY ${v4 ? 'TCP4' : 'TCP6'} ${source.address} ${destination.address} ${source.port} ${destination.port}\r\n`,
            'latin1',
        );
    }
    const addr = (a: string): Buffer =>
        v4
            ? Buffer.from(a.split('.').map(Number))
            : Buffer.from(
                  expand6(a)
                      .map((g) => [g >> 8, g & 0xff])
                      .flat(),
              );
    const ports = Buffer.alloc(4);
    ports.writeUInt16BE(source.port, 0);
    ports.writeUInt16BE(destination.port, 2);
    const tlvBytes = Buffer.concat(
        tlvs.map((t) => {
            const head = Buffer.alloc(3);
            head[0] = t.type;
            head.writeUInt16BE(t.value.length, 1);
            return Buffer.concat([head, t.value]);
        }),
    );
    const body = Buffer.concat([addr(source.address), addr(destination.address), ports, tlvBytes]);
    const fixed = Buffer.alloc(4);
    fixed[0] = 0x21;
    fixed[1] = v4 ? 0x11 : 0x21;
    fixed.writeUInt16BE(body.length, 2);
    return Buffer.concat([V2_SIGNATURE, fixed, body]);
}

function expand6(text: string): number[] {
    // the URL parser writes any IPv6 form (an embedded IPv4 part included) in hexadecimal groups
    const ip = new URL(`http://[${text}]`).hostname.slice(1, -1);
    const [head = '', tail = ''] = ip.split('::');
    const h = head ? head.split(':') : [];
    const t = ip.includes('::') ? (tail ? tail.split(':') : []) : [];
    const fill = ip.includes('::') ? new Array<string>(8 - h.length - t.length).fill('0') : [];
    return [...h, ...fill, ...t].map((g) => parseInt(g, 16));
}
