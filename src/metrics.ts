/**
 * Every Prometheus metric of the product, defined once, in one registry per app instance
 * (SPEC, "Metrics"). Label values are bounded: listener names, actions, rule ids and result
 * words from closed sets. No IP, address, domain or message id ever becomes a label value.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

const P = 'mailwarden_';

export function createMetrics(version: string) {
    const registry = new Registry();
    collectDefaultMetrics({ register: registry });
    const r = [registry];
    const m = {
        registry,
        connections: new Counter({
            name: `${P}connections_total`,
            help: 'SMTP connections accepted, by listener',
            labelNames: ['listener'],
            registers: r,
        }),
        sessionsActive: new Gauge({
            name: `${P}sessions_active`,
            help: 'SMTP sessions currently open, by listener',
            labelNames: ['listener'],
            registers: r,
        }),
        messages: new Counter({
            name: `${P}messages_total`,
            help: 'Messages decided, by listener and final action (accept, tag, quarantine, tempfail, reject)',
            labelNames: ['listener', 'action'],
            registers: r,
        }),
        authChecks: new Counter({
            name: `${P}auth_checks_total`,
            help: 'Sender authentication results, by check (spf, dkim, dmarc, arc) and result',
            labelNames: ['check', 'result'],
            registers: r,
        }),
        dmarcOverrides: new Counter({
            name: `${P}dmarc_overrides_total`,
            help: 'DMARC failures whose disposition was lowered, by reason (arc: trusted ARC sealer, local: authenticated submission, testing: t=y or pct=0)',
            labelNames: ['reason'],
            registers: r,
        }),
        checkDuration: new Histogram({
            name: `${P}check_duration_seconds`,
            help: 'Time one check took for one message or connection, by check',
            labelNames: ['check'],
            buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
            registers: r,
        }),
        ruleHits: new Counter({
            name: `${P}rule_hits_total`,
            help: 'Rules that matched, by rule id, action and mode (enforce or monitor)',
            labelNames: ['rule', 'action', 'mode'],
            registers: r,
        }),
        ratelimitDecisions: new Counter({
            name: `${P}ratelimit_decisions_total`,
            help: 'Rate limit evaluations, by limit and result',
            labelNames: ['limit', 'result'],
            registers: r,
        }),
        smtpAuth: new Counter({
            name: `${P}smtp_auth_total`,
            help: 'SMTP AUTH attempts, by listener and result',
            labelNames: ['listener', 'result'],
            registers: r,
        }),
        upstreamReplies: new Counter({
            name: `${P}upstream_replies_total`,
            help: 'Replies from the upstream MTA by class (2xx, 4xx, 5xx) or failure (timeout, closed, connect, protocol, xclient, tls, io)',
            labelNames: ['class'],
            registers: r,
        }),
        upstreamDuration: new Histogram({
            name: `${P}upstream_duration_seconds`,
            help: 'Time from sending DATA upstream to its final reply',
            buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
            registers: r,
        }),
        acceptedUnconfirmed: new Counter({
            name: `${P}accepted_unconfirmed_total`,
            help: 'Messages the upstream may have accepted without the client hearing so, which it may send again (a possible duplicate), by listener and reason: client-gone (the 250 could not reach the client, which went away first) or no-upstream-answer (the end of the message reached the upstream but its answer never came; the client got 451 4.4.1)',
            labelNames: ['listener', 'reason'],
            registers: r,
        }),
        messageProcessing: new Histogram({
            name: `${P}message_processing_seconds`,
            help: 'Time from the end of DATA to the reply sent to the client',
            buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
            registers: r,
        }),
        messageSize: new Histogram({
            name: `${P}message_size_bytes`,
            help: 'Size of received messages in bytes',
            buckets: [1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 52428800],
            registers: r,
        }),
        bareNewlines: new Counter({
            name: `${P}bare_newline_messages_total`,
            help: 'Messages that contained a bare LF or bare CR, by listener and what was done (reject, normalize)',
            labelNames: ['listener', 'policy'],
            registers: r,
        }),
        dnsQueries: new Counter({
            name: `${P}dns_queries_total`,
            help: 'DNS lookups by record type and result (hit, miss, error)',
            labelNames: ['type', 'result'],
            registers: r,
        }),
        dnsQueryDuration: new Histogram({
            name: `${P}dns_query_duration_seconds`,
            help: 'Time DNS lookups spent on the network (cache misses), by record type, across all servers and tries',
            labelNames: ['type'],
            buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
            registers: r,
        }),
        redisErrors: new Counter({
            name: `${P}redis_errors_total`,
            help: 'Redis errors: store operations that failed or timed out, and connection errors',
            registers: r,
        }),
        redisCommandDuration: new Histogram({
            name: `${P}redis_command_duration_seconds`,
            help: 'Time of shared-store operations against Redis, failures included, by operation (take, acquire, renew, release, greylist, ping)',
            labelNames: ['command'],
            buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
            registers: r,
        }),
        configReloads: new Counter({
            name: `${P}config_reloads_total`,
            help: 'Rule and list reloads, by result (ok, error)',
            labelNames: ['result'],
            registers: r,
        }),
        buildInfo: new Gauge({
            name: `${P}build_info`,
            help: 'Always 1; the version label names the running release',
            labelNames: ['version'],
            registers: r,
        }),
    };
    m.buildInfo.set({ version }, 1);
    // series that alerts compute rates over exist from the start, at 0
    for (const result of ['ok', 'error']) m.configReloads.inc({ result }, 0);
    return m;
}

export type Metrics = ReturnType<typeof createMetrics>;
