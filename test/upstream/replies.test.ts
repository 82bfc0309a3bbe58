/**
 * The reader of the upstream's replies (src/upstream/replies.ts): golden cases of RFC 5321
 * section 4.2.1 replies (single and multi-line, cut anywhere), the bounds (line length, lines per
 * reply), what is refused as garbage, the enhanced status code (RFC 3463) split off only when its
 * class matches the reply code (RFC 2034 section 3), and the EHLO keywords. Property-based: any
 * well-formed replies cut at any points read back as sent; any bytes at all either read as
 * replies or fail as a protocol error, never anything else.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { ReplyParser, describe as describeReply, parseCapabilities, toReply } from '../../src/upstream/replies.ts';
import { UpstreamError } from '../../src/upstream/types.ts';
import { fuzzSettings } from '../helpers/fuzz.ts';

const bytes = (s: string): Buffer => Buffer.from(s, 'latin1');

/** Feeds `text` one byte at a time; returns every reply completed. */
function byteByByte(parser: ReplyParser, text: string): { code: number; lines: readonly string[] }[] {
    const out = [];
    for (const b of bytes(text)) out.push(...parser.feed(Buffer.from([b])));
    return out;
}

function protocolError(fn: () => unknown, message: RegExp): void {
    assert.throws(
        fn,
        (err: unknown) => err instanceof UpstreamError && err.kind === 'protocol' && message.test(err.message),
    );
}

describe('upstream replies', () => {
    it('reads single-line and multi-line replies, whole or one byte at a time', () => {
        const wire = '220 mx.example.test ESMTP\r\n250-mx.example.test\r\n250-PIPELINING\r\n250 SIZE 10240000\r\n';
        const expected = [
            { code: 220, lines: ['mx.example.test ESMTP'] },
            { code: 250, lines: ['mx.example.test', 'PIPELINING', 'SIZE 10240000'] },
        ];
        assert.deepEqual(new ReplyParser().feed(bytes(wire)), expected);
        const parser = new ReplyParser();
        assert.deepEqual(byteByByte(parser, wire), expected);
        assert.equal(parser.pending, false);
    });

    it('holds an unfinished line or reply as pending', () => {
        const parser = new ReplyParser();
        assert.deepEqual(parser.feed(bytes('250-first\r\n250 sec')), []);
        assert.equal(parser.pending, true);
        assert.deepEqual(parser.feed(bytes('ond\r\n')), [{ code: 250, lines: ['first', 'second'] }]);
        assert.equal(parser.pending, false);
    });

    it('takes a bare code, and a line ended by LF alone', () => {
        assert.deepEqual(new ReplyParser().feed(bytes('250\r\n354 go ahead\n')), [
            { code: 250, lines: [''] },
            { code: 354, lines: ['go ahead'] },
        ]);
    });

    it('reads a bare CR or a Unicode line separator inside the text as text, as Postfix does', () => {
        // Postfix's client looks only at the code and the character after it; a final 250 read
        // as garbage after the end of data would be a 451 and a new copy on every retry
        for (const inner of ['\r', '\u2028', '\u2029']) {
            const wire = Buffer.from(`250 2.0.0 Ok${inner}queued as A1\r\n`, 'utf8');
            assert.deepEqual(new ReplyParser().feed(wire), [{ code: 250, lines: [`2.0.0 Ok${inner}queued as A1`] }]);
        }
    });

    it('refuses lines that are not replies', () => {
        for (const line of ['hello', '199 too low', '600 too high', '25 short', '250x text', ' 250 text', '2500 x']) {
            protocolError(() => new ReplyParser().feed(bytes(`${line}\r\n`)), /malformed upstream reply line/);
        }
    });

    it('refuses a multi-line reply whose lines change code', () => {
        protocolError(() => new ReplyParser().feed(bytes('250-one\r\n550 two\r\n')), /mixes reply codes/);
    });

    it('bounds a line and a reply, also while the line is unfinished', () => {
        protocolError(() => new ReplyParser().feed(bytes(`250 ${'x'.repeat(5000)}\r\n`)), /line too long/);
        // no line end at all: refused once more than a line's worth is held, not buffered forever
        const parser = new ReplyParser();
        parser.feed(bytes(`250 ${'x'.repeat(4000)}`));
        protocolError(() => parser.feed(bytes('x'.repeat(200))), /line too long/);
        protocolError(() => new ReplyParser().feed(bytes('250-x\r\n'.repeat(300) + '250 x\r\n')), /too many lines/);
        assert.equal(new ReplyParser().feed(bytes('250-x\r\n'.repeat(255) + '250 x\r\n'))[0]?.lines.length, 256);
        // a line of the longest length reads the same whole or with its CR, then its LF, apart
        const longest = `250 ${'x'.repeat(4092)}`;
        assert.equal(new ReplyParser().feed(bytes(`${longest}\r\n`)).length, 1);
        const split = new ReplyParser();
        assert.equal(split.feed(bytes(`${longest}\r`)).length, 0);
        assert.equal(split.feed(bytes('\n')).length, 1);
    });

    it('hands out the replies read in full before garbage in the same read, then fails', () => {
        const queued = '250 2.0.0 Ok: queued as Q1\r\n';
        const tails: [string, RegExp][] = [
            ['oops\r\n', /malformed upstream reply line/],
            [`250 ${'x'.repeat(5000)}\r\n`, /line too long/],
            ['x'.repeat(5000), /line too long/],
            ['250-one\r\n550 two\r\n', /mixes reply codes/],
            ['250-x\r\n'.repeat(300), /too many lines/],
        ];
        for (const [tail, message] of tails) {
            const out: { code: number; lines: readonly string[] }[] = [];
            protocolError(() => new ReplyParser().feed(bytes(queued + tail), out), message);
            assert.deepEqual(
                out,
                [{ code: 250, lines: ['2.0.0 Ok: queued as Q1'] }],
                JSON.stringify(tail.slice(0, 20)),
            );
            // the same bytes in two reads: the reply, then the failure
            const parser = new ReplyParser();
            assert.deepEqual(parser.feed(bytes(queued)), out);
            protocolError(() => parser.feed(bytes(tail)), message);
        }
        const out: { code: number; lines: readonly string[] }[] = [];
        assert.equal(new ReplyParser().feed(bytes('250 a\r\n'), out), out, 'the replies go into the array given');
    });

    it('splits the enhanced status code off every line when its class matches the reply', () => {
        const reply = toReply({ code: 550, lines: ['5.7.1 first line', '5.7.1 second line'] });
        assert.deepEqual(reply, { code: 550, enhanced: '5.7.1', text: 'first line second line' });
        assert.equal(describeReply(reply), '550 5.7.1 first line second line');
        // RFC 2034 section 3: a 2.x.x code on a 5xx reply is not an enhanced code of that reply
        assert.deepEqual(toReply({ code: 550, lines: ['2.1.0 odd'] }), {
            code: 550,
            enhanced: null,
            text: '2.1.0 odd',
        });
        assert.deepEqual(toReply({ code: 250, lines: ['Ok'] }), { code: 250, enhanced: null, text: 'Ok' });
        assert.equal(describeReply({ code: 250, enhanced: null, text: '' }), '250');
    });

    it('reads the EHLO keywords after the greeting line, upper-cased, with their parameters', () => {
        const caps = parseCapabilities(['mx.example.test', 'size 1000', 'PIPELINING', '  XCLIENT NAME ADDR  ']);
        assert.deepEqual(
            [...caps],
            [
                ['SIZE', ['1000']],
                ['PIPELINING', []],
                ['XCLIENT', ['NAME', 'ADDR']],
            ],
        );
        assert.equal(caps.has('MX.EXAMPLE.TEST'), false);
    });

    const text = fc.string({
        unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)),
        maxLength: 60,
    });
    const reply = fc.record({
        code: fc.integer({ min: 200, max: 599 }),
        lines: fc.array(text, { minLength: 1, maxLength: 5 }),
    });

    it('reads any well-formed replies back as sent, however the bytes are cut', (t) => {
        fc.assert(
            fc.property(
                fc.array(reply, { minLength: 1, maxLength: 6 }),
                fc.array(fc.nat(), { maxLength: 8 }),
                (replies, cuts) => {
                    const wire = bytes(
                        replies
                            .map((r) =>
                                r.lines
                                    .map((l, i) => `${r.code}${i === r.lines.length - 1 ? ' ' : '-'}${l}\r\n`)
                                    .join(''),
                            )
                            .join(''),
                    );
                    const points = [...new Set(cuts.map((c) => c % (wire.length + 1)))].sort((a, b) => a - b);
                    const parser = new ReplyParser();
                    const got = [];
                    let from = 0;
                    for (const p of [...points, wire.length]) {
                        got.push(...parser.feed(wire.subarray(from, p)));
                        from = p;
                    }
                    assert.deepEqual(
                        got,
                        replies.map((r) => ({ code: r.code, lines: r.lines })),
                    );
                    assert.equal(parser.pending, false);
                },
            ),
            fuzzSettings(t, 1000),
        );
    });

    it('fails any other bytes as a protocol error, never otherwise', (t) => {
        const chunk = fc.oneof(
            fc.uint8Array({ maxLength: 300 }),
            fc.constantFrom('250-x\r\n', '250 x\r\n', '550 y\n', '\r\n', '\r', '\n', '354 ').map((s) => bytes(s)),
        );
        fc.assert(
            fc.property(fc.array(chunk, { maxLength: 20 }), (chunks) => {
                const parser = new ReplyParser();
                try {
                    for (const c of chunks) {
                        for (const r of parser.feed(Buffer.from(c))) {
                            assert.ok(r.code >= 200 && r.code <= 599 && r.lines.length >= 1 && r.lines.length <= 256);
                        }
                    }
                } catch (err) {
                    assert.ok(err instanceof UpstreamError && err.kind === 'protocol', String(err));
                }
            }),
            fuzzSettings(t, 1000),
        );
    });
});
