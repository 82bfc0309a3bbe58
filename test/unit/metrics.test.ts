// Histograms observed through the kept per-label-set observers write exactly the series prom-client
// writes for the same observations (labelled and labelless histograms, values in
// every bucket), and a label outside the metric's names is still refused.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Histogram, Registry } from 'prom-client';
import { createMetrics } from '../../src/metrics.ts';

/** The exposition lines of one metric. */
async function series(registry: Registry, name: string): Promise<string[]> {
    return (await registry.metrics()).split('\n').filter((l) => l.startsWith(name));
}

describe('metrics: kept histogram observers', () => {
    it('give the series prom-client gives for the same observations', async () => {
        const m = createMetrics('test');
        const reference = new Registry();
        const durations = new Histogram({
            name: 'mailwarden_dns_query_duration_seconds',
            help: 'x',
            labelNames: ['type'],
            buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
            registers: [reference],
        });
        const checks = new Histogram({
            name: 'mailwarden_check_duration_seconds',
            help: 'x',
            labelNames: ['check'],
            buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
            registers: [reference],
        });
        const queries = new Histogram({
            name: 'mailwarden_auth_dns_queries',
            help: 'x',
            buckets: [1, 2, 5, 10, 20, 50, 100, 200, 500],
            registers: [reference],
        });
        for (let i = 0; i < 300; i++) {
            const v = (i % 37) * 0.0137;
            const type = ['TXT', 'A', 'MX'][i % 3]!;
            m.dnsQueryDuration.observe({ type }, v);
            durations.observe({ type }, v);
            m.checkDuration.observe({ check: i % 2 ? 'mailauth' : 'iprev' }, v * 10);
            checks.observe({ check: i % 2 ? 'mailauth' : 'iprev' }, v * 10);
            m.authDnsQueries.observe(i % 600);
            queries.observe(i % 600);
        }
        for (const name of [
            'mailwarden_dns_query_duration_seconds',
            'mailwarden_check_duration_seconds',
            'mailwarden_auth_dns_queries',
        ]) {
            const ours = await series(m.registry, name);
            assert.ok(ours.length > 10, name);
            assert.deepEqual(ours, await series(reference, name), name);
        }
    });

    it('observations of one label set add up in one series; an unknown label is refused every time', async () => {
        const m = createMetrics('test');
        m.redisCommandDuration.observe({ command: 'evalsha' }, 0.001);
        m.redisCommandDuration.observe({ command: 'evalsha' }, 0.002);
        const count = (await series(m.registry, 'mailwarden_redis_command_duration_seconds_count')).join('\n');
        assert.match(count, /command="evalsha"} 2$/);
        assert.throws(() => m.checkDuration.observe({ check: 'x', bogus: 'y' } as never, 1), /bogus/);
        assert.throws(() => m.checkDuration.observe({ check: 'x', bogus: 'y' } as never, 1), /bogus/);
    });
});
