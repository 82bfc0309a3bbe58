/**
 * src/ has no import cycle, type-only imports included: imports point one way (docs/architecture.md).
 * ESLint's import-x/no-cycle guards the imports that run; it does not follow `import type`,
 * so this test reads every static import and export-from of src/ and looks for a cycle itself.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';
import { describe, it } from 'node:test';

const SRC = new URL('../../src/', import.meta.url).pathname;

function sourceFiles(dir: string): string[] {
    return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
        e.isDirectory() ? sourceFiles(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
    );
}

/** Relative modules a file imports or re-exports, types included. */
function importsOf(file: string, text: string): string[] {
    const found: string[] = [];
    for (const m of text.matchAll(/^\s*(?:import|export)\b[^;]*?\bfrom\s+'(\.[^']+)'/gms)) {
        found.push(normalize(join(dirname(file), m[1]!)));
    }
    return found;
}

/** The first cycle found in a graph, as a path that ends where it starts; null when there is none. */
export function findCycle(graph: ReadonlyMap<string, readonly string[]>): string[] | null {
    const state = new Map<string, 'open' | 'done'>();
    const path: string[] = [];
    const visit = (node: string): string[] | null => {
        state.set(node, 'open');
        path.push(node);
        for (const next of graph.get(node) ?? []) {
            if (!graph.has(next)) continue;
            if (state.get(next) === 'open') return [...path.slice(path.indexOf(next)), next];
            if (state.get(next) === undefined) {
                const cycle = visit(next);
                if (cycle) return cycle;
            }
        }
        path.pop();
        state.set(node, 'done');
        return null;
    };
    for (const node of [...graph.keys()].sort()) {
        if (state.get(node) !== undefined) continue;
        const cycle = visit(node);
        if (cycle) return cycle;
    }
    return null;
}

describe('the import graph of src/', () => {
    it('finds a cycle made of type-only imports (the detector works)', () => {
        const graph = new Map([
            ['a.ts', ['b.ts']],
            ['b.ts', ['c.ts']],
            ['c.ts', ['a.ts']],
            ['d.ts', ['a.ts']],
        ]);
        assert.deepEqual(findCycle(graph), ['a.ts', 'b.ts', 'c.ts', 'a.ts']);
        const file = join(SRC, 'x', 'y.ts');
        assert.deepEqual(
            importsOf(file, "import type {\n    A,\n} from '../a.ts';\nexport type { B } from './b.ts';\n"),
            [join(SRC, 'a.ts'), join(SRC, 'x', 'b.ts')],
        );
        assert.equal(findCycle(new Map([['a.ts', ['b.ts']]])), null);
    });

    it('has no cycle, type-only imports included', () => {
        const graph = new Map<string, string[]>();
        for (const file of sourceFiles(SRC)) graph.set(file, importsOf(file, readFileSync(file, 'utf8')));
        assert.ok(graph.size > 50);
        const cycle = findCycle(graph);
        assert.equal(cycle, null, `import cycle: ${cycle?.map((f) => relative(SRC, f)).join(' -> ')}`);
    });
});
