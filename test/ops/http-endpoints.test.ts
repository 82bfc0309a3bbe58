/**
 * The operations HTTP endpoint as the SPEC ("HTTP", "Metrics") and the deployment rely on it:
 * /healthz answers while the process lives, /readyz is 200 only while the listeners are up and
 * the upstream and Redis answer (and 503 with the reason otherwise, also while draining),
 * /metrics is Prometheus text with every SPEC metric, its help text and its labels, plus the
 * process defaults the dashboard reads. Real Redis, real upstream (scripted), real listener.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startRedis, type RedisInstance } from '../helpers/redis.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { freePort, smtpConnect } from '../helpers/smtp-client.ts';
import { until } from '../helpers/until.ts';

/** SPEC, "Metrics": every metric with the labels it names (none for a plain counter or histogram). */
const SPEC_METRICS: Readonly<Record<string, readonly string[]>> = {
    mailwarden_connections_total: ['listener'],
    mailwarden_sessions_active: ['listener'],
    mailwarden_messages_total: ['listener', 'action'],
    mailwarden_auth_checks_total: ['check', 'result'],
    mailwarden_rule_hits_total: ['rule', 'action', 'mode'],
    mailwarden_ratelimit_decisions_total: ['limit', 'result'],
    mailwarden_smtp_auth_total: ['listener', 'result'],
    mailwarden_upstream_replies_total: ['class', 'stage'],
    mailwarden_upstream_duration_seconds: [],
    mailwarden_message_processing_seconds: [],
    mailwarden_message_size_bytes: [],
    mailwarden_dns_queries_total: ['type', 'result'],
    mailwarden_redis_errors_total: [],
    mailwarden_config_reloads_total: ['result'],
    mailwarden_build_info: ['version'],
};
/** Process defaults the dashboard reads. */
const PROCESS_METRICS = [
    'process_cpu_seconds_total',
    'process_resident_memory_bytes',
    'nodejs_heap_size_used_bytes',
    'nodejs_eventloop_lag_p99_seconds',
];

async function get(
    port: number,
    path: string,
    method = 'GET',
): Promise<{ status: number; type: string; body: string }> {
    const res = await fetch(`http://127.0.0.1:${port}${path}`, { method });
    return { status: res.status, type: res.headers.get('content-type') ?? '', body: await res.text() };
}

describe('the operations HTTP endpoint', () => {
    let redis: RedisInstance;
    let up: ScriptedUpstream;
    let mw: TestApp;
    let http: number;

    before(async () => {
        redis = await startRedis();
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN', 'SIZE 1000000'] });
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                `redis: { url: "${redis.url}" }`,
                'shutdownTimeout: 3s',
                'http: { host: 127.0.0.1, port: 0 }',
            ].join('\n'),
        );
        http = mw.app.httpPort!;
    });
    after(async () => {
        await mw?.stop();
        await up?.close();
        await redis?.stop();
    });

    it('answers /healthz with 200, also for HEAD', async () => {
        const r = await get(http, '/healthz');
        assert.equal(r.status, 200);
        assert.equal(r.body, 'ok\n');
        assert.equal((await get(http, '/healthz', 'HEAD')).status, 200);
    });

    it('refuses other methods with 405 and unknown paths with 404', async () => {
        assert.equal((await get(http, '/metrics', 'POST')).status, 405);
        assert.equal((await get(http, '/nothing-here')).status, 404);
    });

    it('serves every SPEC metric with help text and the SPEC labels, and the process defaults', async () => {
        const r = await get(http, '/metrics');
        assert.equal(r.status, 200);
        assert.match(r.type, /^text\/plain; version=0\.0\.4/);
        for (const [name, labels] of Object.entries(SPEC_METRICS)) {
            const help = new RegExp(`^# HELP ${name} (.+)$`, 'm').exec(r.body)?.[1];
            assert.ok(help && help.trim().length > 10, `${name} has help text`);
            assert.match(r.body, new RegExp(`^# TYPE ${name} (counter|gauge|histogram)$`, 'm'));
            const metric = mw.app.metrics.registry.getSingleMetric(name) as unknown as { labelNames: string[] };
            assert.deepEqual([...metric.labelNames].sort(), [...labels].sort(), `${name} labels`);
        }
        assert.match(r.body, /^mailwarden_build_info\{version="[^"]+"\} 1$/m);
        for (const name of PROCESS_METRICS) assert.match(r.body, new RegExp(`^${name}(\\{[^}]*\\})? `, 'm'), name);
    });

    it('is ready while the listener is up and the upstream and Redis answer', async () => {
        const r = await get(http, '/readyz');
        assert.equal(r.status, 200, r.body);
        assert.equal(r.body, 'ready\n');
    });

    it('answers a burst of /readyz requests with one upstream session, not one per request', async () => {
        await new Promise((r) => setTimeout(r, 2100)); // past the last answer kept
        const before = up.connections.length;
        const answers = await Promise.all(Array.from({ length: 50 }, () => get(http, '/readyz')));
        assert.ok(answers.every((r) => r.status === 200));
        assert.equal(up.connections.length - before, 1);
    });

    it('is not ready while Redis is down, and ready again when it is back', async () => {
        const port = redis.port;
        await redis.stop();
        await until(
            '/readyz reports Redis',
            async () => {
                const r = await get(http, '/readyz');
                return r.status === 503 && /redis/i.test(r.body);
            },
            10_000,
            100,
        );
        assert.equal((await get(http, '/healthz')).status, 200, 'alive meanwhile');
        redis = await startRedis({ port });
        await until('/readyz is 200 again', async () => (await get(http, '/readyz')).status === 200, 20_000, 100);
    });

    it('is not ready while draining on shutdown', async () => {
        // A message in flight keeps the drain going for a while.
        const c = await smtpConnect(mw.port());
        await c.greeting();
        await c.cmd('EHLO client.example');
        assert.equal((await c.cmd('MAIL FROM:<a@example.org>')).code, 250);
        assert.equal((await c.cmd('RCPT TO:<b@example.test>')).code, 250);
        assert.equal((await c.cmd('DATA')).code, 354);
        c.write('Subject: in flight\r\n\r\nstill');
        const stopping = mw.app.stop();
        await until('draining', () => mw.app.draining, 10_000, 100);
        const r = await get(http, '/readyz');
        assert.equal(r.status, 503);
        assert.match(r.body, /shutting down/);
        c.write(' here\r\n.\r\n');
        await c.reply().catch(() => undefined);
        c.close();
        await stopping;
    });
});

describe('/readyz with an upstream that does not answer', () => {
    let mw: TestApp;
    before(async () => {
        const closed = await freePort();
        mw = await startApp(
            [
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${closed}", connectTimeout: 1s }`,
                'http: { host: 127.0.0.1, port: 0 }',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw?.stop();
    });

    it('is 503 naming the upstream, while /healthz stays 200', async () => {
        const r = await get(mw.app.httpPort!, '/readyz');
        assert.equal(r.status, 503);
        assert.match(r.body, /^not ready: upstream /);
        assert.equal((await get(mw.app.httpPort!, '/healthz')).status, 200);
    });
});

describe('mailwarden_dependency_up without traffic', () => {
    let redis: RedisInstance;
    let up: ScriptedUpstream;
    let mw: TestApp;

    before(async () => {
        redis = await startRedis();
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'] });
        mw = await startApp(
            [
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}", connectTimeout: 1s }`,
                `redis: { url: "${redis.url}" }`,
                'http: { host: 127.0.0.1, port: 0 }',
            ].join('\n'),
            // the probe's period, shortened from 15 s; no client connects and /readyz is never asked
            { dependencyProbeMs: 200 },
        );
    });
    after(async () => {
        await mw?.stop();
        await up?.close();
        await redis?.stop();
    });

    /** The gauge's value for one dependency in a scrape of /metrics, or null without its series. */
    const gauge = async (dependency: string): Promise<number | null> => {
        const body = (await get(mw.app.httpPort!, '/metrics')).body;
        const m = new RegExp(`^mailwarden_dependency_up\\{dependency="${dependency}"\\} (\\d+)$`, 'm').exec(body);
        return m ? Number(m[1]) : null;
    };

    it('follows the upstream and Redis by the periodic readiness probe, Redis asked also while the upstream is down', async () => {
        await until('both up', async () => (await gauge('upstream')) === 1 && (await gauge('redis')) === 1, 10_000, 50);
        await up.close();
        await until('the upstream reads 0', async () => (await gauge('upstream')) === 0, 10_000, 50);
        assert.equal(await gauge('redis'), 1, 'Redis still answers');
        await redis.stop();
        await until('Redis reads 0', async () => (await gauge('redis')) === 0, 10_000, 50);
        assert.equal(await gauge('upstream'), 0);
    });
});
