/**
 * The spool and the dot-stuffer copy message bytes only when they change them: a chunk that is
 * already canonical (CRLF only, no NUL; for dot-stuffing also no line starting with a dot) is
 * stored and forwarded as the very buffer the client's bytes arrived in. And whatever path a
 * chunk takes, the bytes are those of a plain reference written from RFC 5321 sections 2.3.8 and
 * 4.5.2, for any split of any message into chunks (fast-check, seed from test/helpers/fuzz.ts),
 * and so is the longest line the spool reports (RFC 5322 section 2.1.1).
 */
import assert from 'node:assert/strict';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { crlfLines } from '../../src/data/copy-on-change.ts';
import { DotStuffer } from '../../src/data/dot-stuff.ts';
import { MessageSpool, SpoolMemory } from '../../src/data/spool.ts';
import { fuzzSettings } from '../helpers/fuzz.ts';

function newSpool(): MessageSpool {
    return new MessageSpool({
        memoryLimit: 1 << 20,
        memory: new SpoolMemory(),
        dir: join(tmpdir(), 'mw-spool-unused'),
        maxSize: 1 << 20,
        maxHeaderSize: 1 << 16,
    });
}

/** A buffer with memory of its own (Buffer.from would take a slice of a shared pool). */
function own(text: string): Buffer {
    const b = Buffer.alloc(text.length);
    b.write(text, 'latin1');
    return b;
}

/** True when the two are views of the same bytes in memory (no copy was made). */
function sameMemory(a: Buffer, b: Buffer): boolean {
    return a.buffer === b.buffer && a.byteOffset === b.byteOffset;
}

/** The stored chunks of a spool, as read back (views of what it holds). */
async function storedChunks(spool: MessageSpool): Promise<Buffer[]> {
    const out: Buffer[] = [];
    for await (const c of spool.read()) out.push(c as Buffer);
    return out;
}

/** Line endings as the spool stores them: CRLF, LF and CR each become CRLF; NUL is dropped. */
function referenceCanonical(text: string): {
    body: string;
    bareLf: number;
    bareCr: number;
    nul: number;
    headerLength: number;
    longestLine: number;
} {
    let bareLf = 0;
    let bareCr = 0;
    const withCrlf = text.replace(/\r\n|\r|\n/g, (m) => {
        if (m === '\n') bareLf++;
        if (m === '\r') bareCr++;
        return '\r\n';
    });
    const body = withCrlf.replace(/\0/g, '');
    const nul = withCrlf.length - body.length;
    const end = body.startsWith('\r\n') ? 0 : body.indexOf('\r\n\r\n');
    const headerLength = end === -1 ? body.length : end === 0 ? 0 : end + 2;
    const longestLine = Math.max(0, ...body.split('\r\n').map((l) => l.length));
    return { body, bareLf, bareCr, nul, headerLength, longestLine };
}

/** DATA as written upstream: CRLF line endings, a dot before every line starting with one, the terminator. */
function referenceStuffed(text: string): string {
    let lines = text.replace(/\r\n|\r|\n/g, '\r\n');
    if (lines.length > 0 && !lines.endsWith('\r\n')) lines += '\r\n';
    const stuffed = lines
        .split('\r\n')
        .map((l) => (l.startsWith('.') ? `.${l}` : l))
        .join('\r\n');
    return `${stuffed}.\r\n`;
}

/** A message from the bytes that matter here, cut into chunks anywhere. */
const chunked = fc.array(
    fc.array(fc.constantFrom('\r', '\n', '\r\n', '.', 'a', 'b', ' ', '\0', ':'), { maxLength: 40 }),
    {
        maxLength: 8,
    },
);
const canonicalChunks = fc.array(
    fc.array(fc.constantFrom('Subject: x\r\n', 'text\r\n', '\r\n', 'a', ' .b', 'c.'), { maxLength: 20 }),
    { maxLength: 6 },
);

describe('copies of message bytes', () => {
    it('stores a canonical chunk as the buffer it arrived in, not a copy', async () => {
        const chunk = own('Subject: x\r\nFrom: a@example.org\r\n\r\nHello.\r\n.. dots inside\r\n');
        const spool = newSpool();
        const summary = await spool.ingest(Readable.from([chunk]));
        const stored = await storedChunks(spool);
        assert.equal(stored.length, 1);
        assert.ok(sameMemory(stored[0]!, chunk), 'stored without a copy');
        assert.equal(summary.headerLength, 'Subject: x\r\nFrom: a@example.org\r\n'.length);
        await spool.dispose();
    });

    it('copies a chunk that needs a change, and a small view of a large buffer', async () => {
        const bareLf = own('Subject: x\n\nHello.\n');
        const large = Buffer.alloc(4096, 'a');
        large.write('Subject: y\r\n\r\nHi\r\n', 0, 'latin1');
        const small = large.subarray(0, 18);
        for (const chunk of [bareLf, small]) {
            const spool = newSpool();
            await spool.ingest(Readable.from([chunk]));
            const [stored] = await storedChunks(spool);
            assert.notEqual(stored!.buffer, chunk.buffer, 'copied: the memory the chunk came in is not held');
            await spool.dispose();
        }
    });

    it('forwards a chunk without dot or bare line ending as the buffer it was given', () => {
        const chunk = own('Subject: x\r\n\r\nHello. a.b\r\nno dot first\r\n');
        const d = new DotStuffer();
        const out = d.push(chunk);
        assert.ok(sameMemory(out, chunk), 'forwarded without a copy');
        assert.equal(d.bytes, chunk.length);
        const dotted = Buffer.from('.hidden\r\n');
        assert.equal(d.push(dotted).toString('latin1'), '..hidden\r\n');
    });

    it('finds CRLF-only chunks and nothing else', () => {
        assert.deepEqual(crlfLines(Buffer.from('a\r\nb\r\n')), [2, 5]);
        assert.deepEqual(crlfLines(Buffer.from('abc')), []);
        for (const text of ['a\nb', 'a\rb', '\n', 'a\r\n\r', 'a\r\r\n', 'a\r']) {
            assert.equal(crlfLines(Buffer.from(text)), null, JSON.stringify(text));
        }
    });

    it('stores what the reference says, however the message is cut', async (t) => {
        await fc.assert(
            fc.asyncProperty(fc.oneof(chunked, canonicalChunks), async (parts) => {
                const chunks = parts.map((p) => Buffer.from(p.join(''), 'latin1'));
                const ref = referenceCanonical(chunks.map((c) => c.toString('latin1')).join(''));
                const spool = newSpool();
                const summary = await spool.ingest(Readable.from(chunks));
                const body = Buffer.concat(await storedChunks(spool)).toString('latin1');
                await spool.dispose();
                assert.equal(body, ref.body);
                assert.equal(summary.size, ref.body.length);
                assert.equal(summary.bareLf, ref.bareLf);
                assert.equal(summary.bareCr, ref.bareCr);
                assert.equal(summary.nul, ref.nul);
                assert.equal(summary.headerLength, ref.headerLength);
                assert.equal(summary.longestLine, ref.longestLine);
            }),
            fuzzSettings(t, 2000),
        );
    });

    it('dot-stuffs what the reference says, however the message is cut', (t) => {
        fc.assert(
            fc.property(fc.oneof(chunked, canonicalChunks), (parts) => {
                const chunks = parts.map((p) => Buffer.from(p.join(''), 'latin1'));
                const d = new DotStuffer();
                const out = Buffer.concat([...chunks.map((c) => d.push(c)), d.end()]);
                assert.equal(
                    out.toString('latin1'),
                    referenceStuffed(chunks.map((c) => c.toString('latin1')).join('')),
                );
                assert.equal(d.bytes, out.length);
            }),
            fuzzSettings(t, 2000),
        );
    });
});
