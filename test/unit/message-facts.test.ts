/**
 * The loose reading of a From value that the RFC 5322 parser refused (firstAddress): the
 * address a reader would most likely show, and how many there are. The sender chooses the
 * value, up to the size of a header section, so reading it must cost time linear in its length:
 * 1 MiB values of the shapes that make a backtracking pattern quadratic are read here within a
 * few seconds' bound (they took minutes with the patterns this reading replaced). A property
 * holds it to the meaning of those patterns on short values (fast-check, fixed seed; replay
 * another with MW_FUZZ_SEED=<n>).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { firstAddress } from '../../src/message-facts.ts';

const SEED = Number(process.env.MW_FUZZ_SEED ?? 20261206);

/** What firstAddress means, as the two patterns it replaced said it (quadratic; short values only). */
function patternReading(value: string): { address: string | null; count: number } {
    const angle = [...value.matchAll(/<([^<>\s]*@[^<>\s]+)>/g)].map((m) => m[1]!);
    if (angle.length > 0) return { address: angle[0]!, count: angle.length };
    const bare = [...value.matchAll(/[^\s<>,;:"()]+@[^\s<>,;:"()]+/g)].map((m) => m[0]);
    return { address: bare[0] ?? null, count: bare.length };
}

describe('firstAddress', () => {
    it('reads ordinary and odd values as before', () => {
        assert.deepEqual(firstAddress('Alice <alice@example.org>'), { address: 'alice@example.org', count: 1 });
        assert.deepEqual(firstAddress('a@x.example, <b@y.example> <c@z.example>'), {
            address: 'b@y.example',
            count: 2,
        });
        assert.deepEqual(firstAddress('bob@example.org (Bob'), { address: 'bob@example.org', count: 1 });
        assert.deepEqual(firstAddress('"unclosed <no-at> x@y.example'), { address: 'x@y.example', count: 1 });
        assert.deepEqual(firstAddress('nobody'), { address: null, count: 0 });
    });

    it('means what the patterns it replaced meant, on any short value', () => {
        const alphabet = fc.constantFrom(
            'a',
            'b',
            '@',
            '<',
            '>',
            ' ',
            '\t',
            ',',
            ';',
            ':',
            '"',
            '(',
            ')',
            '.',
            '\u2003',
        );
        fc.assert(
            fc.property(fc.array(alphabet, { maxLength: 40 }), (chars) => {
                const value = chars.join('');
                assert.deepEqual(firstAddress(value), patternReading(value));
            }),
            { seed: SEED, numRuns: 5000 },
        );
    });

    it('reads 1 MiB values of the shapes that make a backtracking pattern quadratic', { timeout: 10_000 }, () => {
        const big = 1024 * 1024;
        for (const value of [
            'a'.repeat(big),
            '\u2039' + '@'.repeat(big),
            '<' + '@'.repeat(big),
            '<' + 'a'.repeat(big) + '@',
            'a@'.repeat(big / 2),
        ]) {
            const read = firstAddress(value);
            assert.ok(read.count <= 1, `count ${read.count}`);
        }
    });
});
