/**
 * The linear scans of src/sender-auth/header-scan.ts, put in mailauth's message parser by
 * `withLinearScans`: golden cases for the end of the header section and bare <LF>s, then a
 * property against mailauth's own parser (the pinned version's lib/dkim/message-parser.js): for
 * any bytes cut into chunks anywhere, the same header section, the same body chunks and the same
 * byte count. A DKIM verification with the scans is compared with mailauth's own `authenticate`
 * in mailauth-internals.test.ts.
 */
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import type { Writable } from 'node:stream';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { bareLineFeeds, headerEnd, newHeaderScan } from '../../src/sender-auth/header-scan.ts';
import { withLinearScans } from '../../src/sender-auth/mailauth-internals.ts';
import { fuzzSettings } from '../helpers/fuzz.ts';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');

/** Where the header section ends when `text` comes in the given chunks: [chunk index, offset] or undefined. */
function endIn(chunks: string[]): [number, number] | undefined {
    const state = newHeaderScan();
    for (let k = 0; k < chunks.length; k++) {
        const at = headerEnd(b(chunks[k]!), state);
        if (at !== -1) return [k, at];
    }
    return undefined;
}

describe('headerEnd', () => {
    it('finds the empty line after the header fields, in one chunk or across chunks', () => {
        assert.deepEqual(endIn(['A: 1\r\nB: 2\r\n\r\nbody']), [0, 13]);
        assert.deepEqual(endIn(['A: 1\r\nB: 2\r\n', '\r\nbody']), [1, 1]);
        assert.deepEqual(endIn(['A: 1\r\nB: 2\r', '\n\r', '\nbody']), [2, 0]);
        assert.deepEqual(endIn(['A: 1\nB: 2\n\nbody']), [0, 10]);
        assert.deepEqual(endIn(['A: 1\n', '\n']), [1, 0]);
    });

    it('ends an empty header section at the first line', () => {
        assert.deepEqual(endIn(['\r\nbody']), [0, 1]);
        assert.deepEqual(endIn(['\r', '\nbody']), [1, 0]);
        assert.deepEqual(endIn(['\nbody']), [0, 0]);
    });

    it('goes on while no line is empty', () => {
        assert.equal(endIn(['A: 1\r\n', ' folded\r\n', 'B: 2\r\n']), undefined);
        assert.equal(endIn(['A: 1\r\r\n', 'x\r\n']), undefined);
    });

    it('counts the bytes it consumed', () => {
        const state = newHeaderScan();
        assert.equal(headerEnd(b('A: 1\r\n'), state), -1);
        assert.equal(state.seen, 6);
        assert.equal(headerEnd(b('\r\nbody'), state), 1);
        assert.equal(state.seen, 8);
    });
});

describe('bareLineFeeds', () => {
    it('finds each <LF> not after <CR>, with the byte before the chunk', () => {
        assert.deepEqual(bareLineFeeds(b('a\r\nb\r\n'), undefined), []);
        assert.deepEqual(bareLineFeeds(b('a\nb\r\nc\n'), undefined), [1, 6]);
        assert.deepEqual(bareLineFeeds(b('\nx'), 0x0d), []);
        assert.deepEqual(bareLineFeeds(b('\nx'), 0x61), [0]);
        assert.deepEqual(bareLineFeeds(b('\n\n'), undefined), [0, 1]);
    });
});

interface Parsed {
    headers: string | undefined;
    body: string;
    byteLength: number;
}

interface ParserInternals extends Writable {
    byteLength: number;
    headers: { original: Buffer } | false;
}

type ParserClass = new (options?: object) => Writable;
const require = createRequire(import.meta.url);
const { MessageParser } = require('mailauth/lib/dkim/message-parser.js') as { MessageParser: ParserClass };

/** A parser of the given class that records what it hands to the DKIM steps. */
function recording(Base: ParserClass) {
    return class extends Base {
        readonly bodyChunks: Buffer[] = [];
        nextChunk(chunk: Buffer): Promise<void> {
            this.bodyChunks.push(Buffer.from(chunk));
            return Promise.resolve();
        }
    };
}
const Original = recording(MessageParser);
const Linear = withLinearScans(recording(MessageParser));

async function parse(Parser: ReturnType<typeof recording>, chunks: readonly Uint8Array[]): Promise<Parsed> {
    const parser = new Parser();
    const done = new Promise<void>((resolve, reject) => {
        parser.on('finish', resolve);
        parser.on('error', reject);
    });
    for (const chunk of chunks) parser.write(Buffer.from(chunk));
    parser.end();
    await done;
    const state = parser as unknown as ParserInternals;
    return {
        headers: state.headers ? state.headers.original.toString('latin1') : undefined,
        body: Buffer.concat(parser.bodyChunks).toString('latin1'),
        byteLength: state.byteLength,
    };
}

describe('withLinearScans', () => {
    it('parses a message as mailauth does', async () => {
        const chunks = [b('From: a@b.example\r\nSubj'), b('ect: x\r\n\r\nline\nnext\r\n')];
        const linear = await parse(Linear, chunks);
        assert.deepEqual(linear, await parse(Original, chunks));
        assert.equal(linear.headers, 'From: a@b.example\r\nSubject: x\r\n\r\n');
        assert.equal(linear.body, 'line\r\nnext\r\n');
    });

    it('gives mailauth’s header section, body and length for any bytes in any chunks', async (t) => {
        // bytes that matter to the scans, often, and any other byte now and then
        const byte = fc.oneof(
            { weight: 8, arbitrary: fc.constantFrom(0x0a, 0x0d, 0x41, 0x3a, 0x20) },
            { weight: 1, arbitrary: fc.integer({ min: 0, max: 255 }) },
        );
        const chunked = fc.array(
            fc.array(byte, { maxLength: 12 }).map((a) => Uint8Array.from(a)),
            { maxLength: 8 },
        );
        await fc.assert(
            fc.asyncProperty(chunked, async (chunks) => {
                assert.deepEqual(await parse(Linear, chunks), await parse(Original, chunks));
            }),
            fuzzSettings(t, 2000),
        );
    });
});
