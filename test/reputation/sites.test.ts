/**
 * Configured list sites: a site with an optional delisting page, weights whose sign matches
 * the kind of list, and, for any text at all, either a site or a message (never a throw, never
 * an allow list that adds to a block score). Property-based with a fixed, logged seed.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { parseConfiguredSite, type ListKind } from '../../src/reputation/sites.ts';

const SEED = Number(process.env.FC_SEED ?? 20261206);

describe('configured list sites', () => {
    it('reads a site, its weight by kind and its delisting page', () => {
        assert.deepEqual(parseConfiguredSite('wl.example.test', 'dnswl'), {
            site: { zone: 'wl.example.test', filter: null, weight: -1, text: 'wl.example.test' },
            delist: null,
        });
        const bl = parseConfiguredSite('BL.example.test=127.0.0.[2..3]*2.5  https://bl.example.test/x', 'dnsbl');
        assert.ok(!('error' in bl));
        assert.equal(bl.site.zone, 'bl.example.test');
        assert.equal(bl.site.weight, 2.5);
        assert.equal(bl.delist, 'https://bl.example.test/x');
        assert.match(
            (parseConfiguredSite('bl.example.test https://a/ https://b/', 'dnsbl') as { error: string }).error,
            /at most one web address/,
        );
        assert.match((parseConfiguredSite('bl.example.test*0', 'rhsbl') as { error: string }).error, /positive weight/);
    });

    it('never throws, and gives every kind a weight of the right sign (seed logged)', () => {
        console.log(`fast-check seed ${SEED} (set FC_SEED to replay)`);
        const piece = fc.constantFrom(
            'bl.example.test',
            '=',
            '*',
            '-',
            '127.0.0.',
            '[2..11]',
            '[1;3..5]',
            '.',
            ' ',
            'https://x.test/',
            '3',
            '-5',
            '..',
            ']',
            '[',
            'é',
        );
        fc.assert(
            fc.property(
                fc.array(fc.oneof(piece, fc.string({ maxLength: 6 })), { maxLength: 12 }),
                fc.constantFrom<ListKind>('dnsbl', 'dnswl', 'rhsbl'),
                (parts, kind) => {
                    const r = parseConfiguredSite(parts.join(''), kind);
                    if ('error' in r) return typeof r.error === 'string' && r.error.length > 0;
                    return kind === 'dnswl' ? r.site.weight < 0 : r.site.weight > 0;
                },
            ),
            { seed: SEED, numRuns: 5_000 },
        );
    });
});
