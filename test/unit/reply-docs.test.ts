/**
 * docs/flow.md, "Every reply", lists exactly the situations of the reply table (src/reply.ts):
 * every situation is documented with the code and enhanced status code the table sends, and
 * nothing is documented that the table lacks (`upstream-relayed`, the upstream's own codes, aside).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { replyFor, SITUATIONS } from '../../src/reply.ts';

const flow = readFileSync(new URL('../../docs/flow.md', import.meta.url), 'utf8');
const section = flow.slice(flow.indexOf('## Every reply'), flow.indexOf('\n## ', flow.indexOf('## Every reply') + 1));

/** The rows of the section's table: situation name and the reply column. */
function documented(): Map<string, string> {
    const rows = new Map<string, string>();
    for (const m of section.matchAll(/^\| `([a-z0-9-]+)` +\| ([^|]+)\|/gm)) rows.set(m[1]!, m[2]!.trim());
    return rows;
}

describe('docs/flow.md: every reply', () => {
    it('has the section and its table', () => {
        assert.ok(section.startsWith('## Every reply'));
        assert.ok(documented().size > 10);
    });

    it('documents every situation of the table with its code and enhanced code', () => {
        const rows = documented();
        for (const s of SITUATIONS) {
            const r = replyFor(s, { id: 'ID' });
            assert.equal(rows.get(s), `\`${r.code} ${r.enhanced}\``, s);
        }
    });

    it('documents no situation the table lacks', () => {
        const known = new Set<string>([...SITUATIONS, 'upstream-relayed']);
        for (const name of documented().keys()) assert.ok(known.has(name), `${name} is not in src/reply.ts`);
    });
});
