/**
 * An authoritative DNS server for tests, on 127.0.0.1 (UDP and TCP on the same random port),
 * or on a loopback address and port a test names (port 53, for a resolv.conf, which has no
 * port: tests run as root), answering from an in-memory zone with real packets (dns-packet). It never forwards or
 * recurses and never listens beyond loopback. Every test that starts one closes it.
 *
 * API:
 *   const dns = await startDnsServer(zone);
 *   const dns = await startDnsServer(zone, { host: '127.53.0.1', port: 53 });
 *   dns.port, dns.address            // `127.0.0.1:<port>`, the form `dns.servers` takes
 *   dns.queries                      // every question seen: { name, type, transport: 'udp' | 'tcp' }
 *   dns.setZone(zone)                // swap the zone (one scenario at a time); `queries` is kept
 *   await dns.close()
 *
 * Zone: keys are owner names (any case, trailing dot optional); values say what exists there:
 *   { A?: string[]; AAAA?: string[]; TXT?: (string | string[])[]; MX?: { exchange, priority }[];
 *     PTR?: string[]; NS?: string[]; CNAME?: string; SOA?: SoaSpec (marks a zone apex);
 *     ttl?: number (seconds, default 300, for every record of the name);
 *     NXDOMAIN?: true; SERVFAIL?: true; REFUSED?: true; FORMERR?: true; TIMEOUT?: true (no answer at all) }
 * and the reserved key `soa` sets the SOA used for negative answers outside any apex
 * (`null`: negative answers carry no SOA, so resolvers may not cache them; absent: DEFAULT_SOA,
 * owner `.`, negative TTL 300 s).
 *
 * Behaviour (RFC 1034 section 4.3.2, RFC 2308, RFC 6604, RFC 8020):
 *   - CNAME chains inside the zone are followed and every record of the chain is answered; the
 *     RCODE is that of the last name (NXDOMAIN when the target is missing).
 *   - A name without the asked type: NOERROR, no answer, SOA in the authority section (NODATA).
 *     A name that is absent but has names below it (an empty non-terminal) is NODATA too.
 *   - An absent name: NXDOMAIN with the SOA of the closest enclosing apex, else the zone `soa`.
 *   - TXT strings longer than 255 bytes are split into 255-byte character-strings; a string[]
 *     gives the character-strings explicitly.
 *   - Over UDP, an answer larger than 512 bytes (or the query's EDNS(0) payload size) is sent
 *     as an empty answer with TC set; over TCP the full answer is sent (RFC 7766).
 *   - FORMERR answers carry no OPT record, like a server that does not know EDNS(0).
 */
import dgram from 'node:dgram';
import net from 'node:net';
import dnsPacket, { type Answer, type DecodedPacket, type Packet, type RecordType } from 'dns-packet';

export interface SoaSpec {
    /** Owner name of the SOA; for the zone-level `soa` only (entries use their own name). Default `.`. */
    name?: string;
    mname?: string;
    rname?: string;
    serial?: number;
    refresh?: number;
    retry?: number;
    expire?: number;
    /** The SOA MINIMUM field: the negative-caching TTL (RFC 2308 section 4). */
    minimum?: number;
    /** TTL of the SOA record itself. */
    ttl?: number;
}

export interface ZoneEntry {
    A?: string[];
    AAAA?: string[];
    TXT?: (string | string[])[];
    MX?: { exchange: string; priority: number }[];
    PTR?: string[];
    NS?: string[];
    CNAME?: string;
    SOA?: SoaSpec;
    ttl?: number;
    NXDOMAIN?: true;
    SERVFAIL?: true;
    REFUSED?: true;
    FORMERR?: true;
    TIMEOUT?: true;
}

export interface Zone {
    soa?: SoaSpec | null;
    [name: string]: ZoneEntry | SoaSpec | null | undefined;
}

export interface DnsQuery {
    name: string;
    type: string;
    transport: 'udp' | 'tcp';
}

export interface DnsTestServer {
    readonly port: number;
    /** `127.0.0.1:<port>` */
    readonly address: string;
    readonly queries: DnsQuery[];
    setZone(zone: Zone): void;
    close(): Promise<void>;
}

/** The EDNS OPT record (RFC 6891) the server answers with: a 1232-byte UDP payload, no options. */
export const OPT_RECORD: Answer = {
    type: 'OPT',
    name: '.',
    udpPayloadSize: 1232,
    extendedRcode: 0,
    ednsVersion: 0,
    flags: 0,
    flag_do: false,
    options: [],
};

export const DEFAULT_SOA: Required<SoaSpec> = {
    name: '.',
    mname: 'ns.test',
    rname: 'hostmaster.test',
    serial: 1,
    refresh: 3600,
    retry: 600,
    expire: 86400,
    minimum: 300,
    ttl: 3600,
};

const DEFAULT_TTL = 300;
const UDP_LIMIT = 512;

function norm(name: string): string {
    const n = name.toLowerCase();
    return n.endsWith('.') && n !== '.' ? n.slice(0, -1) : n;
}

interface Compiled {
    entries: Map<string, ZoneEntry>;
    soa: SoaSpec | null;
}

function compile(zone: Zone): Compiled {
    const entries = new Map<string, ZoneEntry>();
    for (const [name, value] of Object.entries(zone)) {
        if (name === 'soa' || !value) continue;
        entries.set(norm(name), value);
    }
    return { entries, soa: zone.soa === null ? null : (zone.soa ?? DEFAULT_SOA) };
}

function splitBytes(text: string): Buffer[] {
    const bytes = Buffer.from(text, 'utf8');
    if (bytes.length === 0) return [bytes];
    const chunks: Buffer[] = [];
    for (let i = 0; i < bytes.length; i += 255) chunks.push(bytes.subarray(i, i + 255));
    return chunks;
}

function soaRecord(owner: string, s: SoaSpec): Answer {
    return {
        type: 'SOA',
        name: owner,
        ttl: s.ttl ?? DEFAULT_SOA.ttl,
        class: 'IN',
        data: {
            mname: s.mname ?? DEFAULT_SOA.mname,
            rname: s.rname ?? DEFAULT_SOA.rname,
            serial: s.serial ?? DEFAULT_SOA.serial,
            refresh: s.refresh ?? DEFAULT_SOA.refresh,
            retry: s.retry ?? DEFAULT_SOA.retry,
            expire: s.expire ?? DEFAULT_SOA.expire,
            minimum: s.minimum ?? DEFAULT_SOA.minimum,
        },
    };
}

function records(owner: string, e: ZoneEntry, type: string): Answer[] {
    const base = { name: owner, ttl: e.ttl ?? DEFAULT_TTL, class: 'IN' as const };
    switch (type) {
        case 'A':
            return (e.A ?? []).map((data) => ({ ...base, type: 'A', data }));
        case 'AAAA':
            return (e.AAAA ?? []).map((data) => ({ ...base, type: 'AAAA', data }));
        case 'PTR':
            return (e.PTR ?? []).map((data) => ({ ...base, type: 'PTR', data }));
        case 'NS':
            return (e.NS ?? []).map((data) => ({ ...base, type: 'NS', data }));
        case 'CNAME':
            return e.CNAME === undefined ? [] : [{ ...base, type: 'CNAME', data: e.CNAME }];
        case 'MX':
            return (e.MX ?? []).map((mx) => ({
                ...base,
                type: 'MX',
                data: { preference: mx.priority, exchange: mx.exchange },
            }));
        case 'TXT':
            return (e.TXT ?? []).map((txt) => ({
                ...base,
                type: 'TXT',
                data: (Array.isArray(txt) ? txt : [txt]).flatMap(splitBytes),
            }));
        case 'SOA':
            return e.SOA ? [soaRecord(owner, e.SOA)] : [];
        default:
            return [];
    }
}

/** The SOA for a negative answer about `name`: the closest enclosing apex, else the zone's. */
function negativeSoa(z: Compiled, name: string): Answer | null {
    const labels = name.split('.');
    for (let i = 0; i < labels.length; i++) {
        const owner = labels.slice(i).join('.');
        const soa = z.entries.get(owner)?.SOA;
        if (soa) return soaRecord(owner, soa);
    }
    return z.soa ? soaRecord(z.soa.name ?? '.', z.soa) : null;
}

const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, REFUSED: 5 } as const;

/** The answer to one query, or null to stay silent. */
function answer(z: Compiled, query: DecodedPacket, transport: 'udp' | 'tcp', log: DnsQuery[]): Buffer | null {
    const question = query.questions?.[0];
    const opt = (query.additionals ?? []).find((a) => a.type === 'OPT');
    const reply = (rcode: number, answers: Answer[], authorities: Answer[], withOpt = true): Buffer => {
        const packet: Packet = {
            type: 'response',
            id: query.id ?? 0,
            flags: dnsPacket.AUTHORITATIVE_ANSWER | ((query.flags ?? 0) & dnsPacket.RECURSION_DESIRED) | rcode,
            questions: query.questions ?? [],
            answers,
            authorities,
            additionals: opt && withOpt ? [OPT_RECORD] : [],
        };
        let buf = dnsPacket.encode(packet);
        const limit = opt && 'udpPayloadSize' in opt ? Math.max(UDP_LIMIT, opt.udpPayloadSize) : UDP_LIMIT;
        if (transport === 'udp' && buf.length > limit) {
            buf = dnsPacket.encode({
                ...packet,
                flags: (packet.flags ?? 0) | dnsPacket.TRUNCATED_RESPONSE,
                answers: [],
                authorities: [],
            });
        }
        return buf;
    };
    if (!question || query.questions?.length !== 1) return reply(RCODE.FORMERR, [], [], false);
    const qname = norm(question.name);
    const qtype: RecordType = question.type;
    log.push({ name: qname, type: qtype, transport });

    const answers: Answer[] = [];
    let current = qname;
    const seen = new Set<string>();
    for (;;) {
        const e = z.entries.get(current);
        if (e?.TIMEOUT) return null;
        if (e?.SERVFAIL) return reply(RCODE.SERVFAIL, answers, []);
        if (e?.REFUSED) return reply(RCODE.REFUSED, [], []);
        if (e?.FORMERR) return reply(RCODE.FORMERR, [], [], false);
        const soa = negativeSoa(z, current);
        const negative = soa ? [soa] : [];
        const below = [...z.entries.keys()].some((n) => n.endsWith(`.${current}`));
        if (e?.NXDOMAIN || (!e && !below)) return reply(RCODE.NXDOMAIN, answers, negative);
        if (!e) return reply(RCODE.NOERROR, answers, negative);
        const rrs = records(current, e, qtype);
        if (rrs.length > 0) return reply(RCODE.NOERROR, [...answers, ...rrs], []);
        if (e.CNAME === undefined || qtype === 'CNAME' || seen.has(current) || seen.size > 8) {
            return reply(RCODE.NOERROR, answers, negative);
        }
        seen.add(current);
        answers.push(...records(current, e, 'CNAME'));
        current = norm(e.CNAME);
    }
}

function decode(msg: Buffer): DecodedPacket | null {
    try {
        const p = dnsPacket.decode(msg);
        return p.flag_qr ? null : p;
    } catch {
        return null;
    }
}

async function bindPair(host: string, wanted: number): Promise<{ udp: dgram.Socket; tcp: net.Server; port: number }> {
    if (!/^127\./.test(host)) throw new Error(`not a loopback address: ${host}`);
    for (let attempt = 0; ; attempt++) {
        const udp = dgram.createSocket('udp4');
        await new Promise<void>((resolve, reject) => {
            udp.once('error', reject);
            udp.bind(wanted, host, () => {
                udp.off('error', reject);
                resolve();
            });
        });
        const port = udp.address().port;
        const tcp = net.createServer();
        try {
            await new Promise<void>((resolve, reject) => {
                tcp.once('error', reject);
                tcp.listen(port, host, () => {
                    tcp.off('error', reject);
                    resolve();
                });
            });
            return { udp, tcp, port };
        } catch (err) {
            udp.close();
            if (wanted !== 0 || attempt >= 20) throw err;
        }
    }
}

export async function startDnsServer(
    zone: Zone,
    at: { readonly host: string; readonly port: number } = { host: '127.0.0.1', port: 0 },
): Promise<DnsTestServer> {
    let compiled = compile(zone);
    const queries: DnsQuery[] = [];
    const { udp, tcp, port } = await bindPair(at.host, at.port);
    const sockets = new Set<net.Socket>();

    udp.on('message', (msg, peer) => {
        const query = decode(msg);
        if (!query) return;
        const out = answer(compiled, query, 'udp', queries);
        if (out) udp.send(out, peer.port, peer.address);
    });

    tcp.on('connection', (socket) => {
        sockets.add(socket);
        socket.on('close', () => sockets.delete(socket));
        socket.on('error', () => socket.destroy());
        let buffered = Buffer.alloc(0);
        socket.on('data', (chunk: Buffer) => {
            buffered = Buffer.concat([buffered, chunk]);
            while (buffered.length >= 2) {
                const size = buffered.readUInt16BE(0);
                if (buffered.length < 2 + size) break;
                const query = decode(buffered.subarray(2, 2 + size));
                buffered = buffered.subarray(2 + size);
                if (!query) continue;
                const out = answer(compiled, query, 'tcp', queries);
                if (!out) continue;
                const frame = Buffer.alloc(2 + out.length);
                frame.writeUInt16BE(out.length, 0);
                out.copy(frame, 2);
                socket.write(frame);
            }
        });
    });

    return {
        port,
        address: `${at.host}:${port}`,
        queries,
        setZone(next: Zone) {
            compiled = compile(next);
        },
        async close() {
            for (const s of sockets) s.destroy();
            await Promise.all([
                new Promise<void>((resolve) => udp.close(() => resolve())),
                new Promise<void>((resolve) => tcp.close(() => resolve())),
            ]);
        },
    };
}
