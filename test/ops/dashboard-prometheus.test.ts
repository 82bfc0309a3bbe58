/**
 * The Grafana dashboard and the alert rules work against a real Prometheus: Debian's
 * prometheus, started with the shipped deploy/compose/prometheus.yml (scrape interval shortened,
 * target pointed at the test app) and grafana/alerts.yml, scrapes a running mailwarden that has
 * handled real traffic: accepted, tagged, rejected, quarantined and tempfailed mail, a DMARC
 * override, a bare LF, a DKIM signature flood, a forged own header field and a header section
 * that does not parse, a PROXY header from an untrusted peer, clients through the pregreet test
 * (waiting, known, talking first), an HTTP request on the SMTP port, an upstream 4xx and an upstream
 * failure, a client gone before the upstream's slow 250, a relay attempt, AUTH successes and failures against a real users file,
 * a login locked out, a session ended by a password change, a submission sender that is not the login's, an upstream connection lost before DATA (replayed), a failed login while Redis is
 * paused, good and bad rule reloads (the invalid file kept until the reload alert fires), a client a DNS block list names and a DNS list refusing
 * a query. Then every expression of the dashboard (panel
 * targets, the annotation, the instance variable) is evaluated the way Grafana sends it, through
 * Prometheus's query API, for one selected instance and for "All": each must parse and return a
 * finite, non-zero value during the traffic. Every alert expression must parse and run, and
 * Prometheus must have evaluated every rule without error.
 */
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { parse } from 'yaml';
import { hashPassword } from '../../src/submission/hashes.ts';
import { rsaKey, sign } from '../sender-auth/helpers.ts';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startDnsServer, type DnsTestServer, type Zone } from '../helpers/dns-server.ts';
import { signatureFlood } from '../helpers/hostile-mail.ts';
import { startPrometheus, PromQueryError, type PrometheusInstance, type PromSeries } from '../helpers/prometheus.ts';
import { startRedis, type RedisInstance } from '../helpers/redis.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { sendMail, smtpConnect, type SmtpClient } from '../helpers/smtp-client.ts';
import { createTestCertificate, type TestCertificate } from '../helpers/tls-cert.ts';

const root = new URL('../../', import.meta.url);
const read = (file: string): string => readFileSync(new URL(file, root), 'utf8');

interface GrafanaTarget {
    expr: string;
    refId: string;
}
interface GrafanaPanel {
    type: string;
    title: string;
    targets?: GrafanaTarget[];
}
const dashboard = JSON.parse(read('grafana/dashboard.json')) as {
    panels: GrafanaPanel[];
    annotations: { list: { name: string; expr?: string }[] };
    templating: { list: { name: string; allValue?: string; definition?: string }[] };
};
const alertsText = read('grafana/alerts.yml');
const alertRules = (
    parse(alertsText) as { groups: { rules: { alert?: string; record?: string; expr: string }[] }[] }
).groups
    .flatMap((g) => g.rules)
    .filter((r): r is { alert: string; expr: string } => typeof r.alert === 'string');
const composePrometheus = parse(read('deploy/compose/prometheus.yml')) as {
    global: Record<string, unknown>;
    rule_files: string[];
    scrape_configs: { job_name: string; static_configs: { targets: string[] }[] }[];
};

/** Scrape and evaluation interval of the test Prometheus, in seconds. */
const SCRAPE = 1;
/** Range-query step, as Grafana picks it for a short time range. */
const STEP = 1;
/** Grafana's $__rate_interval: max($__interval + scrape interval, 4 × scrape interval). */
const RATE_INTERVAL = `${Math.max(STEP + SCRAPE, 4 * SCRAPE)}s`;

/** Grafana's regex escaping of a multi-value variable's value (Prometheus data source). */
function grafanaRegexEscape(value: string): string {
    return value.replace(/\\/g, '\\\\\\\\').replace(/[$^*{}[\]'+?.()|]/g, '\\\\$&');
}

/** The expression as Grafana sends it to Prometheus, for the given `instance` variable value. */
function interpolate(expr: string, instance: string): string {
    const out = expr
        .replaceAll('${__rate_interval}', RATE_INTERVAL)
        .replaceAll('$__rate_interval', RATE_INTERVAL)
        .replaceAll('${__interval}', `${STEP}s`)
        .replaceAll('$__interval', `${STEP}s`)
        .replaceAll('${instance}', instance)
        .replaceAll('$instance', instance);
    const unknown = /\$\{?\w+/.exec(out);
    if (unknown) throw new Error(`unknown Grafana variable ${unknown[0]} in ${expr}`);
    return out;
}

/** Metric names an expression reads. */
function metricsOf(expr: string): string[] {
    return [...new Set([...expr.matchAll(/\b((?:mailwarden|process|nodejs)_[a-z0-9_]+|up)\{/g)].map((m) => m[1]!))];
}

function finiteNonZero(series: readonly PromSeries[]): boolean {
    return series.some((s) =>
        s.values.some(([, v]) => {
            const n = Number(v);
            return Number.isFinite(n) && n !== 0;
        }),
    );
}

/**
 * Metrics only the primary of several workers moves (a worker replaced): the app here is one
 * process, so their panel queries must parse and run but cannot show data.
 */
const ONE_PROCESS_CANNOT_SHOW = ['mailwarden_worker_restarts_total'];

/**
 * Failures no traffic can cause on purpose, because the product is built so that it does not
 * happen: a check that runs out of its time or fails (each product check bounds its own lookups),
 * an internal error, a sender-authentication thread stuck or crashed (every known costly input
 * is bounded before mailauth reads it), and a spool file that cannot be written or read (a fault of the
 * host's disk). Their panel queries must parse and run; that they count is proved with checks and
 * a decider of a test's own and a spool folder on a full tmpfs in test/e2e/failure-metrics.test.ts,
 * and with a thread that misbehaves on purpose in test/sender-auth/verify-thread.test.ts.
 */
const NO_TRAFFIC_CAUSES = [
    'mailwarden_check_failures_total',
    'mailwarden_internal_errors_total',
    'mailwarden_spool_io_errors_total',
    'mailwarden_auth_thread_restarts_total',
];

/** The mx listener's share of one client network, which the traffic exceeds once per round. */
const NETWORK_SHARE = 12;

/** The shipped per-client concurrency limit, which the traffic exceeds once per round. */
const concurrencyLimit = (() => {
    const file = parse(read('rules/50-limits.yaml')) as { limits?: { id: string; concurrency?: number }[] };
    const limit = file.limits?.find((l) => l.id === 'client-concurrency')?.concurrency;
    if (typeof limit !== 'number') throw new Error('rules/50-limits.yaml has no client-concurrency limit');
    return limit;
})();

const key = rsaKey();
const zone: Zone = {
    // p=reject, SPF only for 192.0.2.10: mail from 127.0.0.1 is a spoof
    'bank.example': { TXT: ['v=spf1 ip4:192.0.2.10 -all'] },
    '_dmarc.bank.example': { TXT: ['v=DMARC1; p=reject; adkim=s; aspf=s'] },
    // DKIM-signed and aligned
    'news.example': { TXT: ['v=spf1 -all'], ttl: 300 },
    '_dmarc.news.example': { TXT: ['v=DMARC1; p=reject'], ttl: 300 },
    'sel._domainkey.news.example': { TXT: [key.record], ttl: 300 },
    // p=quarantine
    'shop.example': { TXT: ['v=spf1 ip4:192.0.2.20 -all'] },
    '_dmarc.shop.example': { TXT: ['v=DMARC1; p=quarantine'] },
    // p=reject in test mode: the disposition is lowered (override "testing")
    'beta.example': { TXT: ['v=spf1 ip4:192.0.2.30 -all'] },
    '_dmarc.beta.example': { TXT: ['v=DMARC1; p=reject; t=y'] },
    // SPF fail, no DMARC: tagged
    'plain.example': { TXT: ['v=spf1 ip4:192.0.2.40 -all'] },
    // the DMARC lookup times out: 451 4.7.5
    'slow.example': { TXT: ['v=spf1 -all'] },
    '_dmarc.slow.example': { TIMEOUT: true },
    // DNS lists (reputation:): bl.test lists 127.0.1.10; refusing.test refuses the query for
    // 127.0.1.13 as Spamhaus refuses public resolvers (an error, never a listing)
    '2.0.0.127.bl.test': { A: ['127.0.0.2'] },
    '10.1.0.127.bl.test': { A: ['127.0.0.2'] },
    '2.0.0.127.refusing.test': { A: ['127.0.0.2'] },
    '13.1.0.127.refusing.test': { A: ['127.255.255.254'] },
};

function msg(from: string, subject: string, extra = ''): string {
    const id = `${subject.replace(/\W/g, '')}.${Math.random().toString(36).slice(2)}@test`;
    return (
        `${extra}From: ${from}\r\nTo: bob@example.test\r\nSubject: ${subject}\r\n` +
        `Date: Sun, 29 Nov 2026 01:00:00 +0000\r\nMessage-ID: <${id}>\r\n\r\nHello.\r\n`
    );
}

const plain = (user: string, pass: string): string => Buffer.from(`\0${user}\0${pass}`).toString('base64');

describe('the Grafana dashboard and the alert rules against a real Prometheus', () => {
    let cert: TestCertificate;
    let dns: DnsTestServer;
    let up: ScriptedUpstream;
    let redis: RedisInstance;
    let rulesDir: string;
    let users: string;
    let mw: TestApp;
    let prom: PrometheusInstance;
    let instance: string;
    let trafficStart = 0;
    let trafficEnd = 0;
    /** MailwardenConfigReloadFailed was seen firing while the invalid rule file was on disk. */
    let reloadAlertFired = false;
    /** Rounds so far: each round's patient pregreet client comes from a new address. */
    let rounds = 0;
    const began = Date.now();

    async function mx(from: string, data: string): Promise<number | undefined> {
        const r = await sendMail(mw.port('mx'), { from, to: ['bob@example.test'], data, helo: 'client.example' });
        return r.message?.code ?? r.rcpt[0]?.code ?? r.mail.code;
    }

    async function submission(user: string, pass: string, send: boolean): Promise<void> {
        const c = await smtpConnect(mw.port('submissions'), {
            tls: 'implicit',
            ca: cert.cert,
            servername: 'localhost',
        });
        try {
            await c.greeting();
            await c.cmd('EHLO laptop.example');
            const auth = await c.cmd(`AUTH PLAIN ${plain(user, pass)}`);
            if (send && auth.code === 235) {
                // an address that is not the login's: refused (sender_binding_refusals_total)
                assert.equal((await c.cmd('MAIL FROM:<boss@example.test>')).code, 553);
                assert.equal((await c.cmd(`MAIL FROM:<${user}>`)).code, 250);
                assert.equal((await c.cmd('RCPT TO:<carol@example.net>')).code, 250);
                assert.equal((await c.cmd('DATA')).code, 354);
                c.write(`${msg(`Alice <${user}>`, 'from alice')}.\r\n`);
                assert.equal((await c.reply()).code, 250);
            }
            await c.cmd('QUIT');
        } finally {
            c.close();
        }
    }

    /** One round of every kind of traffic the dashboard shows; each reply is what the product promises. */
    async function round(): Promise<void> {
        const signed = (subject: string): Promise<string> =>
            sign(msg('News <letters@news.example>', subject), 'news.example', 'sel', key);
        assert.equal(await mx('bounce@other.example', await signed('accepted')), 250, 'accepted');
        const lines = `${'x'.repeat(70)}\r\n`.repeat(400);
        const large = await sign(
            msg('News <letters@news.example>', 'large').replace('Hello.\r\n', lines),
            'news.example',
            'sel',
            key,
        );
        assert.equal(await mx('bounce@other.example', large), 250, 'a message larger than spool.memoryLimit');
        assert.equal(await mx('ceo@bank.example', msg('CEO <ceo@bank.example>', 'spoof')), 550, 'DMARC reject');
        assert.equal(await mx('boss@example.test', msg('Boss <boss@example.test>', 'own')), 550, 'own-domain spoof');
        assert.equal(await mx('sales@shop.example', msg('sales@shop.example', 'quarantined')), 250, 'quarantine');
        assert.equal(await mx('beta@beta.example', msg('beta@beta.example', 'testing')), 250, 'DMARC t=y');
        assert.equal(await mx('x@plain.example', msg('x@plain.example', 'tagged')), 250, 'SPF fail tag');
        assert.equal(await mx('x@slow.example', msg('x@slow.example', 'slow')), 451, 'DNS timeout tempfail');
        // more DKIM signatures than are verified per message: the limits panel
        const flood = signatureFlood({ count: 8, body: Buffer.from('Hello.\r\n'), distinctLengths: false });
        assert.equal(await mx('x@plain.example', flood + msg('x@plain.example', 'signature flood')), 250, 'DKIM flood');
        const bare = msg('News <letters@news.example>', 'bare').replace('Hello.\r\n', 'Hello.\nBare line.\r\n');
        assert.equal(await mx('bounce@other.example', bare), 550, 'bare LF');
        const forged = `X-Mailwarden-Verdict : accept\r\n${await signed('forged verdict')}`;
        assert.equal(await mx('bounce@other.example', forged), 250, 'forged own field removed');
        const glued = ` ; rules=allow\r\n${msg('News <letters@news.example>', 'glued')}`;
        assert.equal(await mx('bounce@other.example', glued), 550, 'header section does not parse');
        assert.equal(await mx('bounce@other.example', await signed('defer me')), 451, 'upstream 4xx');
        assert.equal(await mx('bounce@other.example', await signed('drop me')), 451, 'upstream closes');
        // a client that hangs up before Postfix's slow 250 reaches it: a possible duplicate
        const leaving = await smtpConnect(mw.port('mx'));
        await leaving.greeting();
        await leaving.cmd('EHLO client.example');
        await leaving.cmd('MAIL FROM:<bounce@other.example>');
        await leaving.cmd('RCPT TO:<bob@example.test>');
        assert.equal((await leaving.cmd('DATA')).code, 354);
        leaving.write(`${await signed('slow to accept')}.\r\n`);
        await new Promise((r) => setTimeout(r, 50));
        leaving.close();
        // A relay attempt: a recipient outside our domains on the mx listener.
        const relay = await sendMail(mw.port('mx'), {
            from: 'x@other.example',
            to: ['victim@elsewhere.example'],
            data: 'x',
        });
        assert.equal(relay.rcpt[0]?.code, 550, 'relay refused');
        // A relay prober: its 20th refused recipient ends the session (421 4.7.0, error_limit).
        const prober = await smtpConnect(mw.port('mx'));
        await prober.greeting();
        await prober.cmd('EHLO prober.example');
        await prober.cmd('MAIL FROM:<x@other.example>');
        for (let i = 0; i < 20; i++) await prober.cmd(`RCPT TO:<victim${i}@elsewhere.example>`);
        assert.equal((await prober.reply(3000)).code, 421, 'the prober is cut off');
        await prober.waitClosed(3000);
        // A client a block list names is refused at MAIL FROM; a list that refuses the query for
        // another client lists nobody (its answer is an error) and the message is delivered.
        const listed = await sendMail(mw.port('mx'), {
            from: 'bounce@other.example',
            to: ['bob@example.test'],
            data: await signed('listed'),
            localAddress: '127.0.1.10',
        });
        assert.equal(listed.mail.code, 550, 'DNSBL reject');
        const refusing = await sendMail(mw.port('mx'), {
            from: 'bounce@other.example',
            to: ['bob@example.test'],
            data: await signed('refused query'),
            localAddress: '127.0.1.13',
        });
        assert.equal(refusing.message?.code, 250, 'a list refusing the query lists nobody');
        // One client opening more connections than the shipped client-concurrency limit allows.
        const burst = await Promise.all(Array.from({ length: concurrencyLimit + 1 }, () => smtpConnect(mw.port('mx'))));
        const greetings = await Promise.all(burst.map((c) => c.greeting().then((g) => g.code)));
        for (const c of burst) c.close();
        assert.ok(
            greetings.includes(421),
            `a connection over the concurrency limit is refused: ${greetings.join(' ')}`,
        );
        // One network opening more connections than its share, from as many addresses.
        const crowd = await Promise.all(
            Array.from({ length: NETWORK_SHARE + 1 }, (_, i) =>
                smtpConnect(mw.port('mx'), { localAddress: `127.0.9.${i + 1}` }),
            ),
        );
        const crowdGreetings = await Promise.all(crowd.map((c) => c.greeting().then((g) => g.raw)));
        for (const c of crowd) c.close();
        assert.ok(
            crowdGreetings.some((g) => g.startsWith('421 4.7.0 Too many simultaneous connections from your network')),
            `a connection over the network's share is refused: ${crowdGreetings.join(' ')}`,
        );
        // the pregreet test: a new client waits (pass), then is greeted at once (cached); one that talks first is refused
        rounds++;
        const patient = `127.0.5.${rounds}`;
        for (let i = 0; i < 2; i++) {
            const c = await smtpConnect(mw.port('mx-pregreet'), { localAddress: patient });
            assert.equal((await c.greeting()).code, 220, 'patient client greeted');
            c.close();
        }
        const talker = await smtpConnect(mw.port('mx-pregreet'), { localAddress: '127.0.6.1' });
        talker.write('EHLO bot.example\r\n');
        assert.equal((await talker.reply()).code, 554, 'pregreeting client refused');
        talker.close();
        // an HTTP request on the SMTP port: closed at once
        const browser = await smtpConnect(mw.port('mx'));
        await browser.greeting();
        browser.write('GET / HTTP/1.1\r\nHost: mx.example.test\r\n\r\n');
        await browser.waitClosed(3000);
        // a PROXY header from a peer that is not trusted to send one: closed without a reply
        const proxied = await smtpConnect(mw.port('mx'));
        proxied.write('PROXY TCP4 192.0.2.1 127.0.0.1 1 25\r\n');
        await proxied.waitClosed(3000);
        await submission('alice@example.test', 'wrong', false);
        await submission('mallory@example.test', 'guess', false);
        await submission('alice@example.test', 'correct horse', true);
        // one account guessed from one address until the per-login limit locks it out
        for (let i = 0; i < 4; i++) await submission('victim@example.test', `guess ${i}`, false);
    }

    /** The upstream's STARTTLS is answered 220 and then fails (see its onCommand). */
    let tlsBroken = false;

    before(async () => {
        cert = await createTestCertificate();
        dns = await startDnsServer(zone);
        redis = await startRedis();
        up = await startScriptedUpstream({
            // STARTTLS offered; refused until the traffic starts, then answered 220 and followed by
            // plain text: that handshake fails and mail goes without TLS (starttls: opportunistic)
            ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN', 'SIZE 1000000', 'STARTTLS'],
            onCommand: (line) =>
                line !== 'STARTTLS'
                    ? undefined
                    : tlsBroken
                      ? '220 2.0.0 Ready to start TLS'
                      : '454 4.7.0 TLS not available due to local problem',
            onData(tx) {
                const data = tx.data?.toString('latin1') ?? '';
                if (/^Subject: defer me/m.test(data)) return '451 4.3.0 try again later';
                if (/^Subject: drop me/m.test(data)) return { close: true };
                if (/^Subject: slow to accept/m.test(data)) return { delayMs: 300 };
                return undefined;
            },
        });
        rulesDir = mkdtempSync(join(tmpdir(), 'mailwarden-ops-rules-'));
        cpSync(new URL('rules/', root), rulesDir, { recursive: true });
        writeFileSync(
            join(rulesDir, '50-try-out.yaml'),
            [
                '# A rule being tried out: counted and logged, never applied.',
                'rules:',
                '  - id: try-refuse-shop',
                '    description: would refuse mail that claims to be from shop.example',
                '    when: { header.from.domain: shop.example }',
                '    action: reject',
                '    mode: monitor',
                '',
            ].join('\n'),
        );
        users = join(cert.dir, 'users.yaml');
        writeFileSync(
            users,
            `users:\n  - login: alice@example.test\n    password: "${await hashPassword('correct horse')}"\n`,
        );
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                `tls: { cert: "${cert.certPath}", key: "${cert.keyPath}" }`,
                // a low per-login limit, so that the traffic locks one login out
                `auth: { users: "${users}", lockout: { perIp: 100/1h, perLogin: 3/1h } }`,
                'listeners:',
                `  - { name: mx, host: 127.0.0.1, port: 0, mode: mx, maxClientsPerNetwork: ${NETWORK_SHARE}, preTransactionTimeout: 2s }`,
                '  - { name: submissions, host: 127.0.0.1, port: 0, mode: submission, tls: implicit }',
                '  - { name: mx-pregreet, host: 127.0.0.1, port: 0, mode: mx, pregreetWait: 300ms }',
                // NOOPs after 100 ms of silence, so that the slow upload below gets some
                `upstream: { url: "smtp://127.0.0.1:${up.port}", keepAlive: 100ms, starttls: opportunistic }`,
                `dns: { servers: ["${dns.address}"], timeout: 300ms }`,
                `redis: { url: "${redis.url}" }`,
                `rules: "${rulesDir}"`,
                'authentication: { timeout: 5s }',
                // small, so that the large message of each round goes to a spool file
                'spool: { memoryLimit: 16KB }',
                "reputation: { dnsbl: ['bl.test=127.0.0.[2..11]*3', 'refusing.test*3'], probeInterval: 10s }",
                'http: { host: 127.0.0.1, port: 0 }',
            ].join('\n'),
        );
        instance = `127.0.0.1:${mw.app.httpPort}`;

        // The shipped Prometheus configuration, with a short interval and the test app as target.
        const job = composePrometheus.scrape_configs.find((s) => s.job_name === 'mailwarden');
        assert.ok(job, 'deploy/compose/prometheus.yml scrapes a job named mailwarden');
        assert.deepEqual(composePrometheus.rule_files, ['alerts.yml']);
        prom = await startPrometheus({
            config: {
                ...composePrometheus,
                global: {
                    ...composePrometheus.global,
                    scrape_interval: `${SCRAPE}s`,
                    evaluation_interval: `${SCRAPE}s`,
                },
                scrape_configs: [{ ...job, static_configs: [{ targets: [instance] }] }],
            },
            files: { 'alerts.yml': alertsText },
        });
        await waitFor('Prometheus scrapes mailwarden', async () => {
            const r = await prom.query('up{job="mailwarden"} == 1');
            return r.length === 1;
        });

        // Traffic in two rounds, a few scrapes apart, so every counter has grown while scraped.
        trafficStart = Date.now() / 1000;
        tlsBroken = true;
        const idle: SmtpClient = await smtpConnect(mw.port('mx'));
        await idle.greeting();
        // a transaction started: the pre-transaction timeout leaves it open
        await idle.cmd('EHLO idle.example');
        assert.equal((await idle.cmd('MAIL FROM:<idle@other.example>')).code, 250);
        // one that never starts a transaction is closed after preTransactionTimeout
        const silent = await smtpConnect(mw.port('mx'), { localAddress: '127.0.8.1' });
        await silent.greeting();
        await round();
        await sleep(2_500);
        await round();

        // Rule reloads: one good (SIGHUP), one bad (an invalid file), then good again. A key
        // that needs a restart changed in the config file on the way: it stays pending. The
        // invalid file stays until the reload alert fires for it.
        const configFile = join(mw.dir, 'mailwarden.yaml');
        writeFileSync(configFile, readFileSync(configFile, 'utf8').replace('hostname: mx.', 'hostname: mx2.'));
        mw.app.reload();
        const bad = join(rulesDir, '60-broken.yaml');
        writeFileSync(bad, 'rules:\n  - id: broken\n    action: explode\n');
        mw.app.reload();
        await waitFor('MailwardenConfigReloadFailed fires while the invalid rule file is on disk', async () => {
            const rule = (await prom.rules()).find((r) => r.name === 'MailwardenConfigReloadFailed');
            return rule?.state === 'firing';
        });
        reloadAlertFired = true;
        unlinkSync(bad);
        mw.app.reload();

        // A password change ends the session logged in with the old one at its next command.
        const session = await smtpConnect(mw.port('submissions'), {
            tls: 'implicit',
            ca: cert.cert,
            servername: 'localhost',
        });
        await session.greeting();
        await session.cmd('EHLO laptop.example');
        assert.equal((await session.cmd(`AUTH PLAIN ${plain('alice@example.test', 'correct horse')}`)).code, 235);
        writeFileSync(
            users,
            `users:\n  - login: alice@example.test\n    password: "${await hashPassword('new horse')}"\n`,
        );
        mw.app.reload();
        assert.equal((await session.cmd('NOOP')).code, 421, 'the old password no longer holds');
        session.close();

        // A client that pauses inside its message: the upstream transaction waits, kept alive with NOOP.
        const slow = await smtpConnect(mw.port('mx'));
        await slow.greeting();
        await slow.cmd('EHLO client.example');
        await slow.cmd('MAIL FROM:<bounce@other.example>');
        await slow.cmd('RCPT TO:<bob@example.test>');
        assert.equal((await slow.cmd('DATA')).code, 354);
        const text = await sign(msg('News <letters@news.example>', 'slow upload'), 'news.example', 'sel', key);
        slow.write(text.slice(0, 40));
        await sleep(400);
        slow.write(`${text.slice(40)}.\r\n`);
        assert.equal((await slow.reply()).code, 250, 'slow upload');
        slow.close();

        // A client whose upstream connection is lost while it uploads: its envelope is replayed on a new one.
        const lost = await smtpConnect(mw.port('mx'));
        await lost.greeting();
        await lost.cmd('EHLO client.example');
        await lost.cmd('MAIL FROM:<bounce@other.example>');
        await lost.cmd('RCPT TO:<bob@example.test>');
        assert.equal((await lost.cmd('DATA')).code, 354);
        const lostText = await sign(msg('News <letters@news.example>', 'upstream lost'), 'news.example', 'sel', key);
        lost.write(lostText.slice(0, 40));
        const waiting = up.connections.find((k) => !k.closed && k.commands.at(-1) === 'RCPT TO:<bob@example.test>');
        assert.ok(waiting, "the lost client's upstream connection waits for its message");
        waiting.destroy();
        await sleep(200);
        lost.write(`${lostText.slice(40)}.\r\n`);
        assert.equal((await lost.reply()).code, 250, 'envelope replayed');
        lost.close();

        // Redis paused: operations fail or time out while a message comes in.
        process.kill(redis.pid, 'SIGSTOP');
        try {
            await mx(
                'bounce@other.example',
                await sign(msg('News <letters@news.example>', 'redis paused'), 'news.example', 'sel', key),
            ).catch(() => undefined);
            // a failed login while Redis does not answer is counted in this process's memory
            await submission('mallory@example.test', 'guess', false);
            await sleep(1_500);
        } finally {
            process.kill(redis.pid, 'SIGCONT');
        }
        await idle.cmd('QUIT').catch(() => undefined);
        idle.close();
        assert.match((await silent.reply()).raw, /^421 4\.4\.2 No mail transaction started/);
        silent.close();
        trafficEnd = Date.now() / 1000;
        // Two more scrapes, and every rule evaluated after them.
        await sleep(2_500 * SCRAPE);
        await waitFor('Prometheus evaluated every alert rule', async () => {
            const rules = await prom.rules();
            return (
                rules.length === alertRules.length &&
                rules.every((r) => Date.parse(r.lastEvaluation) / 1000 > trafficEnd)
            );
        });
    });

    after(async () => {
        await prom?.stop();
        await mw?.stop();
        await up?.close();
        await dns?.close();
        if (redis) {
            try {
                process.kill(redis.pid, 'SIGCONT');
            } catch {
                // already gone
            }
            await redis.stop();
        }
        if (rulesDir) rmSync(rulesDir, { recursive: true, force: true });
        cert?.cleanup();
    });

    async function waitFor(what: string, test: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
        const deadline = Date.now() + timeoutMs;
        for (;;) {
            if (await test().catch(() => false)) return;
            if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}\n${prom?.output() ?? ''}`);
            await sleep(200);
        }
    }

    /** Why a metric contributes nothing to a panel during the traffic; '' when it does. */
    async function whyEmpty(name: string): Promise<string> {
        const selector = `{__name__=~"${name}(_bucket|_count|_sum)?",instance="${instance}"}`;
        const now = Math.ceil(Date.now() / 1000);
        const series = await prom.queryRange(selector, Math.floor(trafficStart) - 5, now, STEP);
        if (series.length === 0) {
            return `${name} has no series at all: nothing produced it during the traffic (is the feature wired?)`;
        }
        const moved = series.some((s) => new Set(s.values.map(([, v]) => v)).size > 1);
        if (moved) return '';
        const late = series.filter((s) => s.values[0]![0] > trafficStart && Number(s.values[0]![1]) !== 0);
        if (late.length > 0) {
            const first = late[0]!;
            const labels = Object.entries(first.metric)
                .filter(([k]) => k !== 'instance' && k !== 'job' && k !== '__name__')
                .map(([k, v]) => `${k}="${v}"`)
                .join(',');
            return (
                `${first.metric.__name__ ?? name}{${labels}} first appeared at ${first.values[0]![1]}, ` +
                'already counted: a counter created by its first increment hides that increment from rate() and ' +
                'increase(). Create its label values at 0 when the process starts.'
            );
        }
        return `${name} exists but never changed during the traffic`;
    }

    /** Evaluates one dashboard expression as Grafana would, and explains what is missing when it shows nothing. */
    async function shows(where: string, expr: string, variable: string): Promise<void> {
        const q = interpolate(expr, variable);
        let series: PromSeries[];
        try {
            series = await prom.queryRange(q, Math.floor(trafficStart) - 5, Math.ceil(Date.now() / 1000), STEP);
        } catch (err) {
            if (err instanceof PromQueryError) assert.fail(`${where}: Prometheus refused the query: ${err.message}`);
            throw err;
        }
        if (finiteNonZero(series)) return;
        const reasons = await Promise.all(metricsOf(expr).map((m) => whyEmpty(m)));
        assert.fail(
            `${where} shows no data: ${series.length} series, none with a finite non-zero value.\n` +
                `  query: ${q}\n  ${reasons.filter(Boolean).join('\n  ') || 'every metric it reads has data; the expression itself filters it all out'}`,
        );
    }

    it('lists the instance in the "instance" variable (label_values(mailwarden_build_info, instance))', async () => {
        const variable = dashboard.templating.list.find((v) => v.name === 'instance');
        const m = /^label_values\((\w+), (\w+)\)$/.exec(variable?.definition ?? '');
        assert.ok(m, 'the instance variable is a label_values() query');
        assert.deepEqual(await prom.labelValues(m[2]!, m[1]!), [instance]);
    });

    for (const panel of dashboard.panels.filter((p) => p.type !== 'row')) {
        it(`panel "${panel.title}" returns data`, async () => {
            assert.ok(panel.targets?.length, 'the panel has queries');
            const all = dashboard.templating.list.find((v) => v.name === 'instance')?.allValue ?? '.*';
            for (const target of panel.targets ?? []) {
                if (ONE_PROCESS_CANNOT_SHOW.some((m) => target.expr.includes(m))) {
                    // parses and runs; its data comes from a real primary (test/e2e/workers.test.ts)
                    await prom.query(interpolate(target.expr, grafanaRegexEscape(instance)));
                    continue;
                }
                if (NO_TRAFFIC_CAUSES.some((m) => target.expr.includes(m))) {
                    // parses and runs; that it counts: test/e2e/failure-metrics.test.ts
                    await prom.query(interpolate(target.expr, grafanaRegexEscape(instance)));
                    continue;
                }
                await shows(
                    `panel "${panel.title}" (${target.refId}, instance ${instance})`,
                    target.expr,
                    grafanaRegexEscape(instance),
                );
                await shows(`panel "${panel.title}" (${target.refId}, instance All)`, target.expr, all);
            }
        });
    }

    for (const annotation of dashboard.annotations.list.filter((a) => a.expr)) {
        it(`annotation "${annotation.name}" returns data`, async () => {
            await shows(`annotation "${annotation.name}"`, annotation.expr!, grafanaRegexEscape(instance));
        });
    }

    for (const rule of alertRules) {
        it(`alert ${rule.alert}: its expression parses and runs`, async () => {
            try {
                await prom.query(rule.expr);
            } catch (err) {
                if (err instanceof PromQueryError) assert.fail(`${rule.alert}: ${err.message}`);
                throw err;
            }
        });
    }

    it('alert MailwardenConfigReloadFailed fired while the invalid file was on disk, and cleared once it was fixed', async () => {
        assert.ok(reloadAlertFired, 'it fired after the failed reload');
        const rule = (await prom.rules()).find((r) => r.name === 'MailwardenConfigReloadFailed');
        assert.ok(rule, 'the rule is loaded');
        assert.equal(
            rule.state,
            'inactive',
            'mailwarden_config_invalid went back to 0 with the reload of the fixed file',
        );
    });

    it('exposes no IP address, mail address, domain or message id as a label value (but the configured DNS list zones)', async () => {
        const series = await prom.query(`{__name__=~"mailwarden_.+",instance="${instance}"}`);
        assert.ok(series.length > 50, `${series.length} series`);
        const perLabel = new Map<string, Set<string>>();
        const bad: string[] = [];
        for (const s of series) {
            for (const [label, value] of Object.entries(s.metric)) {
                if (label === '__name__' || label === 'instance' || label === 'job' || label === 'le') continue;
                const key = `${s.metric.__name__!.replace(/_(bucket|count|sum)$/, '')}{${label}}`;
                perLabel.set(key, (perLabel.get(key) ?? new Set()).add(value));
                if (label === 'version') continue;
                // the zones of the DNS lists are names from the config (at most 20 per kind), never the client's
                if (label === 'zone' && key.startsWith('mailwarden_dnsbl_')) {
                    if (!['bl.test', 'refusing.test'].includes(value)) bad.push(`${key} = ${value}`);
                    continue;
                }
                if (
                    value.includes('@') ||
                    /^\d{1,3}(\.\d{1,3}){3}$/.test(value) ||
                    value.includes(':') ||
                    /[a-z0-9-]\.[a-z]{2,}$/i.test(value) ||
                    /\.example|127\.0\.0\.1/.test(value) ||
                    value.length > 64
                ) {
                    bad.push(`${key} = ${value}`);
                }
            }
        }
        assert.deepEqual(bad, []);
        for (const [key, values] of perLabel) assert.ok(values.size <= 20, `${key} has ${values.size} values`);
    });

    it('Prometheus loaded grafana/alerts.yml and evaluated every rule without error', async () => {
        const rules = await prom.rules();
        assert.deepEqual(
            rules.map((r) => r.name),
            alertRules.map((r) => r.alert),
        );
        for (const r of rules) assert.equal(r.health, 'ok', `${r.name}: ${r.lastError ?? ''}`);
    });

    it('scraped mailwarden without errors, and the whole run stayed within 90 seconds', async () => {
        const targets = await prom.targets();
        assert.equal(targets.length, 1);
        assert.equal(targets[0]!.health, 'up', targets[0]!.lastError);
        assert.ok(Date.now() - began < 90_000, `took ${Date.now() - began} ms`);
    });
});
