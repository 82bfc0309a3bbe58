/**
 * The PROXY protocol parser: version 1 and 2 headers as HAProxy's specification writes them
 * (its section 2.1, 2.2 and the example of section 2.2.7 for CRC32C), every way a header can be
 * wrong, and properties over random input: it never throws, never reads past the header, and
 * a header it accepts says exactly what was encoded into it.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
    TLV,
    V2_SIGNATURE,
    crc32c,
    formatProxyHeader,
    ProxyHeaderReader,
    parseProxyHeader,
    tlvText,
    type ProxyParse,
} from '../../src/net/proxy-protocol.ts';

const SEED = 20261206;

function header(r: ProxyParse) {
    assert.equal(r.kind, 'header', JSON.stringify(r));
    return r.header;
}

function reason(r: ProxyParse): string {
    assert.equal(r.kind, 'invalid', JSON.stringify(r));
    return r.reason;
}

function v2(famProto: number, body: Buffer, verCmd = 0x21): Buffer {
    const fixed = Buffer.from([verCmd, famProto, 0, 0]);
    fixed.writeUInt16BE(body.length, 2);
    return Buffer.concat([V2_SIGNATURE, fixed, body]);
}

describe('PROXY v1', () => {
    it('reads TCP4 and TCP6 lines and says how many bytes they took', () => {
        const buf = Buffer.from('PROXY TCP4 198.51.100.22 203.0.113.7 35646 25\r\nEHLO x\r\n');
        const h = header(parseProxyHeader(buf));
        assert.deepEqual(
            [h.version, h.command, h.transport, h.source, h.destination, h.length],
            [1, 'proxy', 'tcp4', { address: '198.51.100.22', port: 35646 }, { address: '203.0.113.7', port: 25 }, 47],
        );
        const h6 = header(parseProxyHeader(Buffer.from('PROXY TCP6 2001:db8::1 2001:db8::25 65535 0\r\n')));
        assert.deepEqual([h6.transport, h6.source?.address, h6.source?.port], ['tcp6', '2001:db8::1', 65535]);
    });

    it('takes UNKNOWN as the balancer speaking for itself, whatever follows', () => {
        const h = header(parseProxyHeader(Buffer.from('PROXY UNKNOWN ffff::1 whatever\r\n')));
        assert.deepEqual([h.command, h.source, h.length], ['local', null, 32]);
        assert.equal(header(parseProxyHeader(Buffer.from('PROXY UNKNOWN\r\n'))).length, 15);
    });

    it('waits for more bytes while the line could still be a header', () => {
        for (const partial of ['P', 'PROXY', 'PROXY ', 'PROXY TCP4 1.2.3.4', 'PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r']) {
            assert.equal(parseProxyHeader(Buffer.from(partial)).kind, 'incomplete', partial);
        }
    });

    it('refuses everything that is not exactly a header', () => {
        const bad: [string, RegExp][] = [
            ['EHLO client.example\r\n', /not a PROXY/],
            ['proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n', /not a PROXY/],
            ['PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n', /CRLF/],
            ['PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n', /six fields/],
            ['PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n', /six fields/],
            ['PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n', /TCP4, TCP6/],
            ['PROXY TCP4 ::1 ::1 1 2\r\n', /IPv4/],
            ['PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n', /IPv6/],
            ['PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n', /IPv6/],
            ['PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n', /IPv4/],
            ['PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n', /ports/],
            ['PROXY TCP4 1.2.3.4 5.6.7.8 025 2\r\n', /ports/],
            ['PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n', /ports/],
            ['PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n', /six fields/],
            ['PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n', /control/],
            ['PROXY TCP4 1.2.3.4\r5.6.7.8', /CRLF/],
            ['PROXY TCP4 1.2.3.4 5.6.7.8 1 2\x00\r\n', /control/],
            [`PROXY UNKNOWN ${'x'.repeat(100)}\r\n`, /107/],
            [`PROXY UNKNOWN ${'x'.repeat(100)}`, /107/],
        ];
        for (const [text, re] of bad) assert.match(reason(parseProxyHeader(Buffer.from(text, 'latin1'))), re, text);
    });
});

describe('PROXY v2', () => {
    it('reads IPv4 and IPv6 headers with their TLVs', () => {
        const buf = formatProxyHeader(
            2,
            { address: '198.51.100.22', port: 35646 },
            { address: '203.0.113.7', port: 25 },
            [
                { type: TLV.AUTHORITY, value: Buffer.from('mx.example.com') },
                { type: 0xea, value: Buffer.from([1, 2, 3]) },
            ],
        );
        const h = header(parseProxyHeader(Buffer.concat([buf, Buffer.from('EHLO x\r\n')])));
        assert.deepEqual(
            [h.version, h.command, h.transport, h.source, h.destination, h.length],
            [
                2,
                'proxy',
                'tcp4',
                { address: '198.51.100.22', port: 35646 },
                { address: '203.0.113.7', port: 25 },
                buf.length,
            ],
        );
        assert.equal(tlvText(h, TLV.AUTHORITY), 'mx.example.com');
        assert.deepEqual(h.tlvs[1], { type: 0xea, value: Buffer.from([1, 2, 3]) });
        const h6 = header(
            parseProxyHeader(formatProxyHeader(2, { address: '2001:db8::1', port: 1 }, { address: '::1', port: 25 })),
        );
        assert.deepEqual([h6.transport, h6.source?.address, h6.destination?.address], ['tcp6', '2001:db8::1', '::1']);
    });

    it('takes LOCAL, AF_UNSPEC and AF_UNIX as the balancer speaking for itself', () => {
        assert.equal(header(parseProxyHeader(v2(0x00, Buffer.alloc(0), 0x20))).command, 'local');
        assert.equal(header(parseProxyHeader(v2(0x11, Buffer.alloc(12), 0x20))).command, 'local');
        assert.equal(header(parseProxyHeader(v2(0x00, Buffer.alloc(0)))).command, 'local');
        assert.equal(header(parseProxyHeader(v2(0x31, Buffer.alloc(216)))).command, 'local');
    });

    it('checks a CRC32C TLV over the whole header with the checksum zeroed', () => {
        // RFC 3720 appendix B.4: 32 bytes of zeros have the CRC32C 0x8a9136aa
        assert.equal(crc32c(Buffer.alloc(32)), 0x8a9136aa);
        const make = (crc: number | null): Buffer => {
            const base = formatProxyHeader(
                2,
                { address: '192.0.2.1', port: 1000 },
                { address: '192.0.2.2', port: 25 },
                [{ type: TLV.CRC32C, value: Buffer.alloc(4) }],
            );
            const value = crc ?? crc32c(base);
            base.writeUInt32BE(value >>> 0, base.length - 4);
            return base;
        };
        assert.equal(parseProxyHeader(make(null)).kind, 'header');
        assert.match(reason(parseProxyHeader(make(0x12345678))), /CRC32C/);
    });

    it('waits for the whole header', () => {
        const full = formatProxyHeader(2, { address: '192.0.2.1', port: 1 }, { address: '192.0.2.2', port: 25 });
        for (let n = 1; n < full.length; n++) {
            assert.equal(parseProxyHeader(full.subarray(0, n)).kind, 'incomplete', `${n} bytes`);
        }
    });

    it('refuses wrong versions, commands, families, lengths and TLVs', () => {
        const cases: [Buffer, RegExp][] = [
            [v2(0x11, Buffer.alloc(12), 0x11), /version 1/],
            [v2(0x11, Buffer.alloc(12), 0x22), /command/],
            [v2(0x41, Buffer.alloc(12)), /family/],
            [v2(0x13, Buffer.alloc(12)), /protocol/],
            [v2(0x12, Buffer.alloc(12)), /datagram/],
            [v2(0x11, Buffer.alloc(11)), /shorter than its addresses/],
            [v2(0x21, Buffer.alloc(35)), /shorter than its addresses/],
            [v2(0x11, Buffer.concat([Buffer.alloc(12), Buffer.from([0x04, 0x00])])), /cut short/],
            [v2(0x11, Buffer.concat([Buffer.alloc(12), Buffer.from([0x04, 0x00, 0x05, 1])])), /longer than the header/],
            [v2(0x11, Buffer.alloc(12 + 5000)), /too long/],
            [Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0b]), /not a PROXY/],
        ];
        for (const [buf, re] of cases) assert.match(reason(parseProxyHeader(buf)), re);
    });
});

describe('PROXY parser properties', () => {
    it('never throws, and anything it accepts is a prefix it can account for', () => {
        fc.assert(
            fc.property(fc.uint8Array({ maxLength: 300 }), fc.boolean(), (bytes, withSignature) => {
                const buf = withSignature ? Buffer.concat([V2_SIGNATURE, bytes]) : Buffer.from(bytes);
                const r = parseProxyHeader(buf);
                if (r.kind === 'header') {
                    assert.ok(r.header.length <= buf.length);
                    // the same bytes with anything after them give the same header
                    const again = parseProxyHeader(Buffer.concat([buf.subarray(0, r.header.length), Buffer.from('X')]));
                    assert.deepEqual(again, r);
                }
            }),
            { seed: SEED, numRuns: 20_000 },
        );
    });

    it('accepts exactly what it would format, in both versions', () => {
        const v4 = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255)).map((o) => o.join('.'));
        const v6 = fc.ipV6();
        const port = fc.nat(65535);
        fc.assert(
            fc.property(
                fc.oneof(fc.tuple(v4, v4), fc.tuple(v6, v6)),
                port,
                port,
                fc.constantFrom(1 as const, 2 as const),
                ([src, dst], sp, dp, version) => {
                    const h = header(
                        parseProxyHeader(
                            formatProxyHeader(version, { address: src, port: sp }, { address: dst, port: dp }),
                        ),
                    );
                    assert.equal(h.command, 'proxy');
                    assert.deepEqual([h.source?.port, h.destination?.port], [sp, dp]);
                    // addresses come back in the canonical form of the family
                    const canon = (a: string): string =>
                        a.includes(':') ? new URL(`http://[${a}]`).hostname.slice(1, -1) : a;
                    assert.equal(canon(h.source!.address), canon(src));
                    assert.equal(canon(h.destination!.address), canon(dst));
                },
            ),
            { seed: SEED, numRuns: 5_000 },
        );
    });

    it('reads a header the same however it arrives in chunks, and hands over what follows', () => {
        fc.assert(
            fc.property(
                fc.constantFrom(1 as const, 2 as const),
                fc.nat(60),
                fc.array(fc.integer({ min: 1, max: 40 }), { minLength: 1, maxLength: 40 }),
                (version, noop, sizes) => {
                    const tlvs = version === 2 ? [{ type: TLV.NOOP, value: Buffer.alloc(noop) }] : [];
                    const head = formatProxyHeader(
                        version,
                        { address: '192.0.2.9', port: 4000 },
                        { address: '192.0.2.1', port: 25 },
                        tlvs,
                    );
                    const smtp = Buffer.from('EHLO client.example\r\nMAIL FROM:<a@b>\r\n');
                    const all = Buffer.concat([head, smtp]);
                    const reader = new ProxyHeaderReader();
                    let at = 0;
                    let done: ReturnType<ProxyHeaderReader['push']> = null;
                    for (let i = 0; at < all.length && done === null; i++) {
                        const n = sizes[i % sizes.length]!;
                        done = reader.push(all.subarray(at, at + n));
                        at += n;
                    }
                    assert.ok(done && 'header' in done, 'a header');
                    assert.equal(done.header.source?.port, 4000);
                    assert.deepEqual(Buffer.concat([done.rest, all.subarray(at)]), smtp);
                },
            ),
            { seed: SEED, numRuns: 3_000 },
        );
    });
});
