/**
 * The Grafana dashboard's structure, checked without Grafana: a current-schema dashboard with the
 * Prometheus data source as a variable and an `instance` variable that every query filters on;
 * the rows an operator reads top to bottom (traffic, authenticity, abuse, health) with the
 * panels the deployment guide promises; a grid without overlaps; every metric a query reads
 * exists with the labels it groups and filters by, and every product metric is shown somewhere.
 * That each expression parses and returns data is proved against a real Prometheus in
 * test/ops/dashboard-prometheus.test.ts.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { createMetrics } from '../../src/metrics.ts';

interface Target {
    expr: string;
    refId: string;
    datasource?: { type: string; uid: string };
}
interface Panel {
    type: string;
    title: string;
    id: number;
    description?: string;
    datasource?: { type: string; uid: string };
    gridPos: { h: number; w: number; x: number; y: number };
    targets?: Target[];
}
interface Variable {
    name: string;
    type: string;
    query: unknown;
    definition?: string;
    datasource?: { type: string; uid: string };
    includeAll?: boolean;
    multi?: boolean;
}
const dashboard = JSON.parse(readFileSync(new URL('../../grafana/dashboard.json', import.meta.url), 'utf8')) as {
    uid: string;
    title: string;
    schemaVersion: number;
    panels: Panel[];
    templating: { list: Variable[] };
    annotations: { list: { name: string; expr?: string; datasource?: { uid: string } }[] };
};
const DATASOURCE = { type: 'prometheus', uid: '${datasource}' };

/** The rows, in order, and the panels each must have (the operator's questions, top to bottom). */
const ROWS: readonly [string, readonly RegExp[]][] = [
    ['Traffic', [/^Connections per second/, /^Messages per second by action$/, /^Rejected share$/]],
    [
        'Authenticity and rules',
        [
            /^SPF results$/,
            /^DKIM results$/,
            /^DMARC results$/,
            /^ARC results$/,
            /^DMARC overrides/,
            /^Rejects by rule$/,
        ],
    ],
    ['Abuse', [/^Rate-limit/, /^Rate-limited/, /^AUTH failures by listener$/, /^Greylisting/]],
    [
        'Health',
        [
            /^Upstream replies by class$/,
            /^Upstream DATA latency \(p50, p99\)$/,
            /^Upstream connections per second by outcome$/,
            /^DNS cache hit ratio$/,
            /^DNS lookup latency/,
            /^Redis errors/,
            /^Redis latency/,
            /^Active sessions/,
            /^Config reloads/,
            /^Process memory$/,
            /^CPU$/,
            /^Event-loop lag/,
        ],
    ],
    [
        'Reputation',
        [/^DNS list hits per second by zone$/, /^DNS lists healthy/, /^DNS list errors/, /^HELO checks per second/],
    ],
];

const metrics = createMetrics('test');
const known = new Map(
    (metrics.registry.getMetricsAsArray() as unknown as { name: string; labelNames?: string[] }[]).map((m) => [
        m.name,
        m,
    ]),
);
const queryPanels = dashboard.panels.filter((p) => p.type !== 'row');
const exprs = [
    ...queryPanels.flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title, expr: t.expr }))),
    ...dashboard.annotations.list.filter((a) => a.expr).map((a) => ({ panel: `annotation ${a.name}`, expr: a.expr! })),
];
const METRIC = /\b((?:mailwarden|process|nodejs)_[a-z0-9_]+|up)\{([^}]*)\}/g;

describe('grafana dashboard', () => {
    it('uses a current schema, a fixed uid and a title', () => {
        assert.ok(dashboard.schemaVersion >= 39, `schemaVersion ${dashboard.schemaVersion}`);
        assert.equal(dashboard.uid, 'mailwarden');
        assert.equal(dashboard.title, 'mailwarden');
    });

    it('has the Prometheus data source and the instance as variables', () => {
        const [ds, instance, ...rest] = dashboard.templating.list;
        assert.deepEqual(rest, []);
        assert.equal(ds?.name, 'datasource');
        assert.equal(ds?.type, 'datasource');
        assert.equal(ds?.query, 'prometheus');
        assert.equal(instance?.name, 'instance');
        assert.equal(instance?.type, 'query');
        assert.deepEqual(instance?.datasource, DATASOURCE);
        assert.equal(instance?.definition, 'label_values(mailwarden_build_info, instance)');
        assert.ok(instance?.includeAll && instance.multi, 'several instances, or all, can be selected');
    });

    it('queries the data source variable on every panel, target and annotation', () => {
        for (const p of queryPanels) {
            assert.deepEqual(p.datasource, DATASOURCE, p.title);
            assert.ok(p.targets?.length, `${p.title} has queries`);
            assert.ok(p.description && p.description.length > 20, `${p.title} tells the operator what it shows`);
            const refIds = p.targets.map((t) => t.refId);
            assert.equal(new Set(refIds).size, refIds.length, `${p.title}: unique refIds`);
            for (const t of p.targets) assert.deepEqual(t.datasource, DATASOURCE, `${p.title} ${t.refId}`);
        }
        for (const a of dashboard.annotations.list.filter((x) => x.expr)) {
            assert.equal(a.datasource?.uid, '${datasource}', a.name);
        }
    });

    it('has the rows in reading order, each with the panels it promises', () => {
        const rows = dashboard.panels.filter((p) => p.type === 'row').map((p) => p.title);
        assert.deepEqual(
            rows,
            ROWS.map(([r]) => r),
        );
        let row = '';
        const byRow = new Map<string, string[]>();
        for (const p of dashboard.panels) {
            if (p.type === 'row') row = p.title;
            else byRow.set(row, [...(byRow.get(row) ?? []), p.title]);
        }
        for (const [name, wanted] of ROWS) {
            for (const title of wanted) {
                assert.ok(
                    byRow.get(name)?.some((t) => title.test(t)),
                    `row ${name} has a panel ${title}`,
                );
            }
        }
    });

    it('lays the panels out on the 24-column grid, top to bottom, without overlaps', () => {
        const ids = dashboard.panels.map((p) => p.id);
        assert.equal(new Set(ids).size, ids.length, 'unique panel ids');
        const cells = new Set<string>();
        let lastY = -1;
        for (const p of dashboard.panels) {
            const { x, y, w, h } = p.gridPos;
            assert.ok(x >= 0 && w > 0 && x + w <= 24 && h > 0, `${p.title} fits the grid`);
            assert.ok(y >= lastY, `${p.title} comes after the panel before it`);
            lastY = y;
            for (let i = x; i < x + w; i++) {
                for (let j = y; j < y + h; j++) {
                    const cell = `${i},${j}`;
                    assert.ok(!cells.has(cell), `${p.title} overlaps another panel at ${cell}`);
                    cells.add(cell);
                }
            }
        }
    });

    it('filters every series it reads by the instance variable', () => {
        for (const { panel, expr } of exprs) {
            const selectors = [...expr.matchAll(METRIC)];
            assert.ok(selectors.length > 0, `${panel}: no metric in ${expr}`);
            for (const m of selectors) assert.match(m[2]!, /(^|,)instance=~"\$instance"(,|$)/, `${panel}: ${m[0]}`);
        }
    });

    it('reads `up` of the scrape job the deployment guide and the alerts name (mailwarden) only', () => {
        const ups = exprs.flatMap(({ panel, expr }) =>
            [...expr.matchAll(METRIC)].filter((m) => m[1] === 'up').map((m) => ({ panel, m })),
        );
        assert.ok(ups.length > 0, 'a panel shows whether the instances are up');
        // other jobs (node_exporter, Postfix's exporter) scrape the same host and have an `up` too
        for (const { panel, m } of ups) assert.match(m[2]!, /(^|,)job="mailwarden"(,|$)/, `${panel}: ${m[0]}`);
    });

    it('queries only metrics that exist, with labels they have', () => {
        for (const { panel, expr } of exprs) {
            for (const m of expr.matchAll(METRIC)) {
                const raw = m[1]!;
                if (raw === 'up') continue;
                const name = raw.replace(/_(bucket|sum|count)$/, '');
                const metric = known.get(name) ?? known.get(raw);
                assert.ok(metric, `${panel}: unknown metric ${raw}`);
                if (!name.startsWith('mailwarden_')) continue;
                const labels = new Set([...(metric.labelNames ?? []), 'instance', 'job', 'le']);
                for (const matcher of m[2]!.split(',')) {
                    const label = /^\s*(\w+)\s*(=~|!~|!=|=)/.exec(matcher)?.[1];
                    assert.ok(label && labels.has(label), `${panel}: ${name} has no label ${label ?? matcher}`);
                }
                for (const by of expr.matchAll(/by \(([^)]*)\)/g)) {
                    for (const label of by[1]!.split(',').map((s) => s.trim())) {
                        assert.ok(labels.has(label), `${panel}: ${name} has no label ${label} to group by`);
                    }
                }
            }
        }
    });

    it('shows every product metric on a panel', () => {
        const all = exprs.map((e) => e.expr).join('\n');
        for (const name of known.keys()) {
            if (!name.startsWith('mailwarden_')) continue;
            assert.ok(all.includes(name), `no panel shows ${name}`);
        }
    });
});
