/**
 * The Grafana dashboard and the metrics registry agree: every metric a panel queries exists
 * (with the labels it groups by), and every product metric is shown on some panel.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { createMetrics } from '../../src/metrics.ts';

interface Panel {
    type: string;
    title: string;
    targets?: { expr: string }[];
}
const dashboard = JSON.parse(readFileSync(new URL('../../grafana/dashboard.json', import.meta.url), 'utf8')) as {
    panels: Panel[];
    templating: { list: { name: string }[] };
};

describe('grafana dashboard', () => {
    const metrics = createMetrics('test');
    const known = new Map(
        (metrics.registry.getMetricsAsArray() as unknown as { name: string; labelNames?: string[] }[]).map((m) => [
            m.name,
            m,
        ]),
    );
    const exprs = dashboard.panels.flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title, expr: t.expr })));

    it('has datasource and instance variables', () => {
        assert.deepEqual(
            dashboard.templating.list.map((v) => v.name),
            ['datasource', 'instance'],
        );
    });

    it('queries only metrics that exist, grouped by labels they have', () => {
        for (const { panel, expr } of exprs) {
            const names = [...expr.matchAll(/\b((?:mailwarden|process|nodejs)_[a-z0-9_]+)/g)].map((m) => m[1]!);
            assert.ok(names.length > 0, `${panel}: no metric in ${expr}`);
            for (const raw of names) {
                const name = raw.replace(/_(bucket|sum|count)$/, '');
                const m = known.get(name) ?? known.get(raw);
                assert.ok(m, `${panel}: unknown metric ${raw}`);
                const by = /by \(([^)]*)\)/.exec(expr)?.[1];
                if (by && name.startsWith('mailwarden_')) {
                    for (const label of by.split(',').map((s) => s.trim())) {
                        if (label === 'le') continue;
                        assert.ok(m.labelNames?.includes(label), `${panel}: ${name} has no label ${label}`);
                    }
                }
            }
        }
    });

    it('shows every product metric on a panel', () => {
        const all = exprs.map((e) => e.expr).join('\n');
        for (const name of known.keys()) {
            if (!name.startsWith('mailwarden_') || name === 'mailwarden_build_info') continue;
            assert.ok(all.includes(name), `no panel shows ${name}`);
        }
    });
});
