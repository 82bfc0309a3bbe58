/**
 * docs/security.md stays true: every test file and script it names exists, every
 * `mailwarden_*` metric it names is one src/metrics.ts registers, every link to another
 * document points at a file (and, within docs/, at a heading) that exists, the fuzz suites it
 * lists are exactly those in test/fuzz/, the replies it quotes for AUTH responses come from the
 * reply table, and SECURITY.md at the repository root points to it.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { replyFor } from '../../src/reply.ts';

const root = new URL('../../', import.meta.url);
const doc = readFileSync(new URL('docs/security.md', root), 'utf8');
const metricsSource = readFileSync(new URL('src/metrics.ts', root), 'utf8');

/** The metric names src/metrics.ts registers (`${P}name` with P = 'mailwarden_'). */
function registeredMetrics(): Set<string> {
    const prefix = /const P = '([a-z_]+)'/.exec(metricsSource)?.[1];
    assert.equal(prefix, 'mailwarden_');
    return new Set([...metricsSource.matchAll(/name: `\$\{P\}([a-z0-9_]+)`/g)].map((m) => `${prefix}${m[1]}`));
}

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens. */
function anchor(heading: string): string {
    return heading
        .toLowerCase()
        .replace(/[^\p{L}\p{N} _-]/gu, '')
        .replace(/ /g, '-');
}

function anchorsOf(markdown: string): Set<string> {
    const out = new Set<string>();
    let fenced = false;
    for (const line of markdown.split('\n')) {
        if (line.startsWith('```')) fenced = !fenced;
        const m = !fenced && /^#{1,6} (.+)$/.exec(line);
        if (m) out.add(anchor(m[1]!));
    }
    return out;
}

describe('docs/security.md', () => {
    it('names only test files and scripts that exist', () => {
        const named = new Set([...doc.matchAll(/\b((?:test|scripts)\/[\w./-]+\.(?:ts|sh))\b/g)].map((m) => m[1]!));
        assert.ok(named.size >= 20, `only ${named.size} files named`);
        for (const file of named) assert.ok(existsSync(new URL(file, root)), `${file} does not exist`);
    });

    it('names only metrics that src/metrics.ts registers', () => {
        const registered = registeredMetrics();
        const named = new Set([...doc.matchAll(/\bmailwarden_[a-z0-9_]+/g)].map((m) => m[0]));
        assert.ok(named.size >= 8, `only ${named.size} metrics named`);
        for (const name of named) {
            const base = name.replace(/_(bucket|sum|count)$/, '');
            assert.ok(registered.has(name) || registered.has(base), `${name} is not a metric of src/metrics.ts`);
        }
    });

    it('links only to documents and headings that exist', () => {
        const own = anchorsOf(doc);
        for (const m of doc.matchAll(/\]\(([^)\s]+)\)/g)) {
            const target = m[1]!;
            if (/^[a-z]+:/.test(target)) continue;
            const [file, hash] = target.split('#') as [string, string | undefined];
            if (file === '') {
                assert.ok(own.has(hash!), `#${hash} is not a heading of security.md`);
                continue;
            }
            const url = new URL(`docs/${file}`, root);
            assert.ok(existsSync(url), `${target}: no such file`);
            if (hash) assert.ok(anchorsOf(readFileSync(url, 'utf8')).has(hash), `${target}: no such heading`);
        }
    });

    it('is one document: one title, then the threat model, the defences, fuzzing and reporting', () => {
        let fenced = false;
        const titles = doc.split('\n').filter((line) => {
            if (line.startsWith('```')) fenced = !fenced;
            return !fenced && line.startsWith('# ');
        });
        assert.deepEqual(titles, ['# Security']);
        const order = [
            '## Threat model',
            '### What is trusted and what is not',
            '## Fuzzing',
            '## Reporting a vulnerability',
        ];
        let at = -1;
        for (const h of order) {
            const i = doc.indexOf(`\n${h}\n`);
            assert.ok(i > at, `${h} in its place`);
            at = i;
        }
    });

    it('lists exactly the fuzz suites of test/fuzz/', () => {
        const fuzzDir = new URL('test/fuzz/', root);
        const files = readdirSync(fuzzDir).filter((f) => f.endsWith('.test.ts'));
        assert.ok(files.length >= 4);
        const section = doc.slice(doc.indexOf('\n## Fuzzing\n'), doc.indexOf('\n## Reporting a vulnerability\n'));
        for (const f of files) assert.ok(section.includes(`test/fuzz/${f}`), `test/fuzz/${f} is not listed`);
        assert.match(section, /MW_FUZZ_SEED=/, 'says how to replay a seed');
    });

    it('quotes the AUTH response replies of the reply table', () => {
        for (const s of ['auth-response-invalid', 'auth-invalid', 'auth-tls-required'] as const) {
            const r = replyFor(s, { id: 'x' });
            assert.ok(doc.includes(`${r.code} ${r.enhanced}`), `${s}: ${r.code} ${r.enhanced}`);
        }
    });

    it('is what SECURITY.md points to', () => {
        const policy = readFileSync(new URL('SECURITY.md', root), 'utf8');
        assert.ok(policy.includes('(docs/security.md)'));
    });
});
