/**
 * Every Prometheus metric of the product, defined once, in one registry per app instance
 * (SPEC, "Metrics"). Label values are bounded: listener names, actions, rule ids and result
 * words from closed sets. No IP, address, domain or message id of a client or a message ever
 * becomes a label value; the one domain label is `zone`, a DNS list named in the config.
 * With several workers each process has its own registry and the primary sums them
 * (src/cluster/primary.ts); a gauge that must not be summed says how it is combined, and the
 * sets below say it for prom-client's default metrics that the primary combines otherwise.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics, type LabelValues } from 'prom-client';

const P = 'mailwarden_';

/** How a check failed (check_failures_total). */
export const CHECK_FAILURES = ['timeout', 'error'] as const;

/** Where a submission sender was found not to be the login's (sender_binding_refusals_total). */
export const SENDER_BINDING_WHERE = ['envelope', 'header'] as const;

/** Why a message may have been accepted upstream without the client hearing so (accepted_unconfirmed_total). */
export const UNCONFIRMED_REASONS = ['client-gone', 'no-upstream-answer', 'shutdown'] as const;
export type UnconfirmedReason = (typeof UNCONFIRMED_REASONS)[number];

/** Label sets whose observer is kept per histogram; a metric with more goes on without keeping more. */
const OBSERVERS_KEPT = 1000;

/**
 * prom-client's Histogram.observe(labels, value) makes a new observer for every observation;
 * here the observer of a label set seen before is kept and used again (what `.labels()` gives,
 * validated and written to the same series). Label values are bounded, so is what is kept.
 */
function keepObservers(histogram: Histogram): void {
    const observers = new Map<string, Histogram.Internal<string>>();
    const observe = histogram.observe.bind(histogram) as (labels: LabelValues<string> | number, value?: number) => void;
    histogram.observe = ((labels: LabelValues<string> | number, value?: number): void => {
        if (typeof labels !== 'object' || labels === null || typeof value !== 'number') return observe(labels, value);
        let key = '';
        for (const name in labels) key += `${name}=${String(labels[name])}\u0000`;
        let observer = observers.get(key);
        if (!observer) {
            if (observers.size >= OBSERVERS_KEPT) return observe(labels, value);
            observer = histogram.labels(labels);
            observers.set(key, observer);
        }
        observer.observe(value);
    }) as Histogram['observe'];
}

/**
 * Metrics only a worker measures (the primary of several workers serves no listener): the
 * primary leaves its own, never set, out of the sum, where a 0 would be taken for a value
 * (the soonest certificate expiry would read 0, and its alert never fire).
 */
export const WORKER_ONLY_METRICS: ReadonlySet<string> = new Set([`${P}tls_certificate_expiry_timestamp_seconds`]);

/**
 * Metrics of the process systemd started, which with several workers is the primary: its start
 * time, which the alert on restarts watches (prom-client leaves it out of a sum, and a worker
 * replaced is counted by worker_restarts_total). The primary gives its own and no worker's.
 */
export const PRIMARY_ONLY_METRICS: ReadonlySet<string> = new Set(['process_start_time_seconds']);

/**
 * prom-client's event-loop lag of each process, which its own aggregation averages over the
 * processes: one worker stuck in synchronous work, whose clients all wait, would read as a
 * fraction of its lag. The primary gives the worst process's instead (`max`).
 */
export const WORST_PROCESS_METRICS: ReadonlySet<string> = new Set([
    'nodejs_eventloop_lag_seconds',
    'nodejs_eventloop_lag_mean_seconds',
    'nodejs_eventloop_lag_p50_seconds',
    'nodejs_eventloop_lag_p90_seconds',
    'nodejs_eventloop_lag_p99_seconds',
]);

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
        connectionsRefused: new Counter({
            name: `${P}connections_refused_total`,
            help: 'Connections refused with 421 4.7.0 before the session started, by listener and reason (max_clients: the listener is full; network_limit: the client network already holds maxClientsPerNetwork)',
            labelNames: ['listener', 'reason'],
            registers: r,
        }),
        sessionsCut: new Counter({
            name: `${P}sessions_cut_total`,
            help: 'Sessions closed for their conduct (421, or 554 for pipelining), by listener and reason (error_limit: 20 error replies, as Postfix smtpd_hard_error_limit; data_rate: message data slower than 500 bytes a second after socketTimeout, as Postfix smtpd_min_data_rate; pipelining: more sent before the reply to EHLO, HELO, DATA, VRFY, EXPN or NOOP, 554 5.5.0, as Postfix smtpd_forbid_unauth_pipelining)',
            labelNames: ['listener', 'reason'],
            registers: r,
        }),
        connectionTimeouts: new Counter({
            name: `${P}connection_timeouts_total`,
            help: 'Connections closed by a timeout, by listener and timeout (pre_transaction: no MAIL FROM within preTransactionTimeout; envelope: no DATA within socketTimeout of MAIL FROM; idle: socketTimeout between commands; handshake: implicit TLS handshake not done in time)',
            labelNames: ['listener', 'timeout'],
            registers: r,
        }),
        proxyHeaders: new Counter({
            name: `${P}proxy_headers_total`,
            help: 'PROXY protocol headers, by listener and result (proxy: a relayed client; local: the balancer itself, such as a health check; invalid, timeout, closed: a trusted peer that sent no valid header in time, closed; untrusted: a header from a peer outside proxyProtocol, closed)',
            labelNames: ['listener', 'result'],
            registers: r,
        }),
        foreignProtocol: new Counter({
            name: `${P}foreign_protocol_total`,
            help: 'Connections closed at once because their first bytes were another protocol, by listener and kind (http: an HTTP request line; tls: a TLS ClientHello on a plain SMTP connection)',
            labelNames: ['listener', 'kind'],
            registers: r,
        }),
        pregreet: new Counter({
            name: `${P}pregreet_total`,
            help: 'Connections through the pregreet test, by result (pass: waited for the greeting; fail: talked before it; cached: passed before, greeted at once; exempt: allow-listed, greeted at once; error: the pass cache or an exemption could not be asked, the client waited as a new one)',
            labelNames: ['result'],
            registers: r,
        }),
        messages: new Counter({
            name: `${P}messages_total`,
            help: 'Decisions, by listener and action (accept, tag, quarantine, tempfail, reject); one increment is one decision: a message at its end of data (its final action), or a connection, MAIL FROM or RCPT TO refused by the rules before DATA (each refused recipient counts once)',
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
        authLimits: new Counter({
            name: `${P}auth_limits_total`,
            help: 'Messages whose sender authentication ran into a per-message limit, by limit (dkim_signatures, dkim_body_hashes, dkim_signed_fields, arc_sets, header_runs, header_folds, body_line_length, body_rewrites, dns_queries, dns_bytes)',
            labelNames: ['limit'],
            registers: r,
        }),
        dkimSkipped: new Counter({
            name: `${P}dkim_signatures_skipped_total`,
            help: 'DKIM signatures not verified because a message carried more than the per-message limits allow',
            registers: r,
        }),
        authDnsQueries: new Histogram({
            name: `${P}auth_dns_queries`,
            help: 'DNS queries one message made for SPF, DKIM, DMARC and ARC (cache hits included)',
            buckets: [1, 2, 5, 10, 20, 50, 100, 200, 500],
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
            help: 'Rate limit evaluations, by limit and result; greylisting as limit="greylist" (result new and early: deferred; capped, a new triplet its network may not record now, and capped_global, one the entry may not record now from any network: let through unrecorded; monitor_new and monitor_early: mode monitor, would have been deferred, nothing was)',
            labelNames: ['limit', 'result'],
            registers: r,
        }),
        smtpAuth: new Counter({
            name: `${P}smtp_auth_total`,
            help: 'SMTP AUTH attempts, by listener and result',
            labelNames: ['listener', 'result'],
            registers: r,
        }),
        smtpAuthLocked: new Counter({
            name: `${P}smtp_auth_locked_total`,
            help: 'SMTP AUTH attempts refused without checking the password because the client IP or the login has too many failed logins, by listener and scope (ip, login)',
            labelNames: ['listener', 'scope'],
            registers: r,
        }),
        smtpAuthFallback: new Counter({
            name: `${P}smtp_auth_fallback_total`,
            help: 'SMTP AUTH attempts whose failures were counted in this process only, because the shared store (Redis) did not answer',
            labelNames: ['listener'],
            registers: r,
        }),
        smtpAuthRevoked: new Counter({
            name: `${P}smtp_auth_revoked_total`,
            help: "Authenticated sessions ended at their next command because the login's password changed or the login was removed",
            labelNames: ['listener'],
            registers: r,
        }),
        senderBindingRefusals: new Counter({
            name: `${P}sender_binding_refusals_total`,
            help: 'Submission messages refused (553 5.7.1) because the sender is not an address the login may send as, by listener and where (envelope: MAIL FROM; header: From or Sender). A rise for one login is the sign of a stolen password: the login is in the log line',
            labelNames: ['listener', 'where'],
            registers: r,
        }),
        checkFailures: new Counter({
            name: `${P}check_failures_total`,
            help: "Checks that could not complete, by check and result (timeout: not done within the check's timeout; error: it failed). With onError tempfail the client got 451 4.4.3; otherwise the stage went on with the fact <check>.error",
            labelNames: ['check', 'result'],
            registers: r,
        }),
        authThreadRestarts: new Counter({
            name: `${P}auth_thread_restarts_total`,
            help: 'The sender-authentication thread stopped and a new one started: stalled (a verification held it in synchronous work: no answer to a ping for 2 s, or to the cancel of a check that ended, so it was terminated; that message got 451 4.4.3), failed (it crashed or ran out of its memory limit); the checks it held ended with their failure verdict or were run again',
            labelNames: ['reason'],
            registers: r,
        }),
        internalErrors: new Counter({
            name: `${P}internal_errors_total`,
            help: 'Unexpected errors of our own (a bug) in a session (the client got 451 4.3.0, or 421 4.7.0 instead of the greeting), by listener; the log line "unexpected error in SMTP callback" or "internal error" has the details. A client that left, an upstream reply relayed and a spool file that could not be written or read are not counted',
            labelNames: ['listener'],
            registers: r,
        }),
        spoolIoErrors: new Counter({
            name: `${P}spool_io_errors_total`,
            help: 'Messages whose spool file could not be written (op="write": ENOSPC, EIO, EROFS...) or read back (op="read": EIO, the file removed) on the disk of spool.dir, by listener and op; the client got 451 4.3.0. The error line "spool write failed" or "spool read failed" names the file and the errno',
            labelNames: ['listener', 'op'],
            registers: r,
        }),
        upstreamReplies: new Counter({
            name: `${P}upstream_replies_total`,
            help: 'Replies from the upstream MTA by class (2xx, 4xx, 5xx) or failure (timeout, closed, connect, protocol, xclient, tls, io), and by stage: mail (MAIL FROM), rcpt (each RCPT TO), data (the end of the message: one per message sent)',
            labelNames: ['class', 'stage'],
            registers: r,
        }),
        upstreamConnections: new Counter({
            name: `${P}upstream_connections_total`,
            help: 'Upstream connections given to clients, by outcome: opened (a new connection), reused (an idle one, after RSET; only with upstream.xclient false), discarded (an idle one found closed, speaking out of turn or refusing RSET, and dropped)',
            labelNames: ['outcome'],
            registers: r,
        }),
        upstreamTlsFallbacks: new Counter({
            name: `${P}upstream_tls_fallbacks_total`,
            help: 'TLS handshakes with the upstream after STARTTLS that failed with upstream.starttls opportunistic, after which mail went without TLS (for 10 minutes, then TLS is tried again)',
            registers: r,
        }),
        upstreamKeepAlives: new Counter({
            name: `${P}upstream_keepalives_total`,
            help: "NOOP commands sent to the upstream to keep a connection alive while its transaction waits for the client's message and the checks (upstream.keepAlive)",
            registers: r,
        }),
        upstreamReplays: new Counter({
            name: `${P}upstream_replays_total`,
            help: 'Transactions whose upstream connection was lost before DATA and whose envelope (MAIL and the accepted RCPTs) was sent again on a new connection, by result: ok (all taken again, the message went on) or failed (the new connection failed or refused one; the client got 451 4.4.1)',
            labelNames: ['result'],
            registers: r,
        }),
        envelopeRefusals: new Counter({
            name: `${P}envelope_refusals_total`,
            help: 'MAIL and RCPT commands refused before any rule, by listener and reason (address-syntax, command-syntax, smtputf8, param-invalid, param-not-offered, size, relay, too-many-recipients, upstream-feature)',
            labelNames: ['listener', 'reason'],
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
            help: 'Messages the upstream may have accepted without the client hearing so, which it may send again (a possible duplicate), by listener and reason: client-gone (the 250 could not reach the client, which went away first), no-upstream-answer (the end of the message reached the upstream but its answer never came; the client got 451 4.4.1) or shutdown (a stop waited upstream.dataTimeout after shutdownTimeout for the answer, in vain)',
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
        spoolFiles: new Counter({
            name: `${P}spool_files_total`,
            help: 'Messages written to a spool file, by listener and reason (size: larger than spool.memoryLimit; memory: the messages in flight of the process already held 64 MiB in memory together, so this one went to its file early)',
            labelNames: ['listener', 'reason'],
            registers: r,
        }),
        bareNewlines: new Counter({
            name: `${P}bare_newline_messages_total`,
            help: 'Messages that contained a bare LF or bare CR, by listener and what was done (reject, normalize)',
            labelNames: ['listener', 'policy'],
            registers: r,
        }),
        headerRefusals: new Counter({
            name: `${P}header_refusals_total`,
            help: 'Messages refused for their header section, by listener and problem (a line that does not parse, or on submission author fields that cannot be bound to the login)',
            labelNames: ['listener', 'problem'],
            registers: r,
        }),
        forgedFieldsRemoved: new Counter({
            name: `${P}forged_header_fields_removed_total`,
            help: 'Incoming header fields removed because they claim to be ours (x-mailwarden, or authentication-results with our authserv-id), by listener',
            labelNames: ['listener', 'field'],
            registers: r,
        }),
        dnsQueries: new Counter({
            name: `${P}dns_queries_total`,
            help: 'DNS lookups by record type and result (hit, miss, error; busy: failed at once, the resolver had as many lookups on the network as it sends at once)',
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
        dnsblHits: new Counter({
            name: `${P}dnsbl_hits_total`,
            help: 'Answers of DNS block, allow and domain lists that listed the client, its HELO name or the sender domain, by zone (zones come from the config)',
            labelNames: ['zone'],
            registers: r,
        }),
        dnsblErrors: new Counter({
            name: `${P}dnsbl_errors_total`,
            help: 'DNS list answers that were errors and not listings, by zone and kind (refused: the list refused the query, e.g. Spamhaus 127.255.255.x; bogus: not in 127.0.0.0/8; unexpected: outside the filter; dns: lookup failed; timeout; too_long: even the registrable domain is too long to ask under the zone)',
            labelNames: ['zone', 'kind'],
            registers: r,
        }),
        dnsblZoneHealthy: new Gauge({
            name: `${P}dnsbl_zone_healthy`,
            help: '1 while a DNS list passes its health probes (RFC 5782 test entries) and is asked; 0 while it is disabled, by zone',
            labelNames: ['zone'],
            // with several workers: 0 as soon as one worker has disabled the list
            aggregator: 'min',
            registers: r,
        }),
        dependencyUp: new Gauge({
            name: `${P}dependency_up`,
            help: 'Whether a dependency answered the last readiness probe (the one /readyz runs, every 15 s without traffic): 1 yes, 0 no, by dependency (upstream: an SMTP session opened, greeted and EHLO answered, or the maildir folder written; redis: PING answered, only with redis: set)',
            labelNames: ['dependency'],
            // with several workers: 0 as soon as one worker's probe failed
            aggregator: 'min',
            registers: r,
        }),
        heloChecks: new Counter({
            name: `${P}helo_checks_total`,
            help: 'HELO name checks, by check (syntax, literal, claims_us, resolves) and result (pass, fail, unknown)',
            labelNames: ['check', 'result'],
            registers: r,
        }),
        redisErrors: new Counter({
            name: `${P}redis_errors_total`,
            help: 'Redis errors: store operations that failed or timed out, and connection errors',
            registers: r,
        }),
        redisLateReplies: new Counter({
            name: `${P}redis_late_replies_total`,
            help: 'Store operations Redis answered after their timeout (the limit had already applied its onError), by what was done about their effect: undone (the charges of the call refunded, the leases it granted released), unchanged (the call had charged and granted nothing), kept (calls that are not undone: greylisting, renew, release, reads), failed (the undo failed), lost (no answer came: the connection was lost or dropped while the call waited, nothing undone)',
            labelNames: ['result'],
            registers: r,
        }),
        redisCommandDuration: new Histogram({
            name: `${P}redis_command_duration_seconds`,
            help: 'Time of shared-store operations against Redis, failures included, by operation (stage: the one call of an SMTP stage; take, charge, reset, acquire, renew, release, greylist, ping)',
            labelNames: ['command'],
            buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
            registers: r,
        }),
        configReloads: new Counter({
            name: `${P}config_reloads_total`,
            help: 'Reloads of the config file, rules and lists, users and certificates, by result (ok, error)',
            labelNames: ['result'],
            registers: r,
        }),
        tlsCertificateExpiry: new Gauge({
            name: `${P}tls_certificate_expiry_timestamp_seconds`,
            help: 'When the TLS certificate the listeners serve (tls.cert) expires (its notAfter), in seconds since the Unix epoch; read at start and at each certificate reload. 0 while no listener serves TLS',
            // with several workers: the soonest, should one still serve an older certificate
            aggregator: 'min',
            registers: r,
        }),
        configRestartPending: new Gauge({
            name: `${P}config_restart_pending`,
            // with several workers: the most any of them has pending
            aggregator: 'max',
            help: 'Config keys changed in the file since the start that take effect only after a restart (0: the running config is the file)',
            registers: r,
        }),
        configInvalid: new Gauge({
            name: `${P}config_invalid`,
            // with several workers: 1 as soon as one of them holds an invalid file
            aggregator: 'max',
            help: 'Whether an input that reloads holds an invalid version on disk: 1 while the last reload of the config file, the rules and lists, the users (or sendAs) file or the certificate failed and no later reload of it succeeded (the previous version runs; the next start refuses the file), or, with several workers, while the config file the primary last read (to replace a worker that ended, or on a reload) is invalid and no worker started since became ready (a worker started in its place refuses the file if it is still invalid then); 0 otherwise',
            registers: r,
        }),
        buildInfo: new Gauge({
            name: `${P}build_info`,
            help: 'Always 1; the version label names the running release',
            labelNames: ['version'],
            // with several workers: one series of 1, not their sum
            aggregator: 'first',
            registers: r,
        }),
        workers: new Gauge({
            name: `${P}workers`,
            help: 'Processes serving the listeners and ready (the workers setting; 1 in a single process)',
            registers: r,
        }),
        workerRestarts: new Counter({
            name: `${P}worker_restarts_total`,
            help: 'Worker processes that ended unexpectedly, by reason (signal: killed by a signal; error: exited with a non-zero status; exit: exited with status 0): replaced, or, during a stop, not replaced and their sessions lost (the primary then exits 1)',
            labelNames: ['reason'],
            registers: r,
        }),
    };
    for (const metric of Object.values(m)) if (metric instanceof Histogram) keepObservers(metric);
    m.buildInfo.set({ version }, 1);
    // series that alerts compute rates over exist from the start, at 0
    for (const result of ['ok', 'error']) m.configReloads.inc({ result }, 0);
    for (const reason of ['signal', 'error', 'exit']) m.workerRestarts.inc({ reason }, 0);
    for (const result of ['undone', 'unchanged', 'kept', 'failed', 'lost']) m.redisLateReplies.inc({ result }, 0);
    for (const result of ['ok', 'failed']) m.upstreamReplays.inc({ result }, 0);
    for (const reason of ['stalled', 'failed']) m.authThreadRestarts.inc({ reason }, 0);
    // greylisting in mode: monitor (limits/check.ts): a first attempt or early retry it would have deferred
    for (const result of ['monitor_new', 'monitor_early']) m.ratelimitDecisions.inc({ limit: 'greylist', result }, 0);
    return m;
}

export type Metrics = ReturnType<typeof createMetrics>;
