/**
 * The Prometheus alert rules (grafana/alerts.yml) with Prometheus's own tool: `promtool check
 * rules` accepts them, `promtool test rules` passes their unit tests (grafana/alerts.test.yml),
 * and those tests make every alert fire at least once and stay quiet at least once. Every alert
 * carries a severity, a summary, a description and an absolute runbook link to a section that
 * exists in docs/runbook.md, and the docker-compose Prometheus configuration that loads them
 * passes `promtool check config`.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import { parse } from 'yaml';
import { promtool } from '../helpers/prometheus.ts';

const root = new URL('../../', import.meta.url);
const grafanaDir = fileURLToPath(new URL('grafana/', root));
const read = (file: string): string => readFileSync(new URL(file, root), 'utf8');

interface AlertRule {
    alert: string;
    expr: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
}
const rules = (parse(read('grafana/alerts.yml')) as { groups: { rules: AlertRule[] }[] }).groups.flatMap(
    (g) => g.rules,
);
const unitTests = parse(read('grafana/alerts.test.yml')) as {
    rule_files: string[];
    tests: { name: string; alert_rule_test: { alertname: string; exp_alerts: unknown[] }[] }[];
};

/** Where docs/runbook.md is published; the guide tells how to point the links elsewhere. */
const RUNBOOK = 'https://github.com/mailwarden/mailwarden/blob/main/docs/runbook.md';

/** GitHub's anchor for a Markdown heading. */
function anchor(heading: string): string {
    return heading
        .trim()
        .toLowerCase()
        .replace(/[^\w\- ]/g, '')
        .replace(/ /g, '-');
}

describe('alert rules', () => {
    it('pass promtool check rules', async () => {
        const r = await promtool(['check', 'rules', 'alerts.yml'], grafanaDir);
        assert.equal(r.code, 0, r.output);
        assert.match(r.output, new RegExp(`SUCCESS: ${rules.length} rules found`));
    });

    it('pass their unit tests (promtool test rules alerts.test.yml)', async () => {
        assert.deepEqual(unitTests.rule_files, ['alerts.yml']);
        const r = await promtool(['test', 'rules', 'alerts.test.yml'], grafanaDir);
        assert.equal(r.code, 0, r.output);
        assert.match(r.output, /SUCCESS/);
    });

    it('have a unit test in which each alert fires, and one in which it stays quiet', () => {
        const cases = unitTests.tests.flatMap((t) => t.alert_rule_test);
        for (const rule of rules) {
            const mine = cases.filter((c) => c.alertname === rule.alert);
            assert.ok(
                mine.some((c) => c.exp_alerts.length > 0),
                `${rule.alert} fires in a test`,
            );
            assert.ok(
                mine.some((c) => c.exp_alerts.length === 0),
                `${rule.alert} stays quiet in a test`,
            );
        }
    });

    it('carry a severity, a summary, a description and a runbook section that exists', () => {
        const runbook = read('docs/runbook.md');
        const anchors = new Set([...runbook.matchAll(/^#{2,3} (.+)$/gm)].map((m) => anchor(m[1]!)));
        assert.ok(rules.length >= 5);
        for (const rule of rules) {
            assert.match(rule.labels?.severity ?? '', /^(critical|warning)$/, rule.alert);
            assert.ok(rule.annotations?.summary, `${rule.alert} summary`);
            assert.ok(rule.annotations?.description, `${rule.alert} description`);
            // A link that opens in a browser from a notification: absolute, to this repository's
            // docs/runbook.md as published, at a heading that exists there.
            const url = new URL(rule.annotations?.runbook_url ?? '');
            assert.equal(`${url.origin}${url.pathname}`, RUNBOOK, rule.alert);
            assert.equal(url.hash, `#${rule.alert.toLowerCase()}`, rule.alert);
            assert.ok(anchors.has(url.hash.slice(1)), `docs/runbook.md has a section ${rule.alert}`);
        }
    });

    it('link to the published runbook, and the guide says how to link a copy of your own', () => {
        assert.ok(RUNBOOK.startsWith('https://') && RUNBOOK.endsWith('/docs/runbook.md'));
        assert.match(read('docs/deploy-postfix.md'), new RegExp(`^sed -i 's#${RUNBOOK.replaceAll('.', '\\.')}#`, 'm'));
        for (const test of unitTests.tests.flatMap((t) => t.alert_rule_test)) {
            for (const alert of test.exp_alerts as { exp_annotations?: { runbook_url?: string } }[]) {
                const url = alert.exp_annotations?.runbook_url;
                if (url !== undefined) assert.ok(url.startsWith(`${RUNBOOK}#`), url);
            }
        }
    });

    it('cover what the operator must hear about: upstream, DNS, Redis, rejects, deferrals, AUTH, a pending restart, an invalid file on disk, failing checks, internal errors, an expiring certificate, no worker serving', () => {
        const all = rules.map((r) => `${r.alert} ${r.expr}`).join('\n');
        for (const metric of [
            'mailwarden_upstream_replies_total',
            'mailwarden_dns_queries_total',
            'mailwarden_redis_errors_total',
            'mailwarden_messages_total{action="reject"}',
            'mailwarden_smtp_auth_total{result="invalid"}',
            'mailwarden_messages_total{action="tempfail"}',
            'mailwarden_config_restart_pending',
            'mailwarden_config_invalid',
            'mailwarden_check_failures_total',
            'mailwarden_internal_errors_total',
            'mailwarden_tls_certificate_expiry_timestamp_seconds',
            // the primary of several workers is scraped (MailwardenDown stays quiet) while none serves
            'mailwarden_workers',
        ]) {
            assert.ok(all.includes(metric), `an alert reads ${metric}`);
        }
    });

    it('are installed and loaded as the guide says for a Prometheus on the mail host, which promtool accepts', async () => {
        const guide = read('docs/deploy-postfix.md');
        const monitoring = guide.slice(guide.indexOf('## Monitoring: Prometheus, Grafana, alerts'));
        const install =
            /^install -m 0644 "\$\(npm root -g\)\/mailwarden\/(grafana\/alerts\.yml)" \/etc\/prometheus\/(\S+)$/m.exec(
                monitoring,
            );
        assert.ok(install, 'the guide installs alerts.yml into /etc/prometheus');
        const snippet = /```yaml\n(rule_files:[\s\S]*?)```/.exec(monitoring)?.[1];
        assert.ok(snippet, 'the guide shows the prometheus.yml lines');
        const config = parse(snippet) as {
            rule_files: string[];
            scrape_configs: { job_name: string; static_configs: { targets: string[] }[] }[];
        };
        assert.deepEqual(config.rule_files, [install[2]]);
        const job = config.scrape_configs.find((j) => j.job_name === 'mailwarden');
        const http = (parse(read('deploy/mailwarden.yaml')) as { http: { host: string; port: number } }).http;
        assert.deepEqual(
            job?.static_configs[0]?.targets,
            [`${http.host}:${http.port}`],
            "the target is step 1's http address",
        );
        assert.match(
            monitoring,
            /^promtool check config \/etc\/prometheus\/prometheus\.yml && systemctl reload prometheus$/m,
        );
        assert.match(monitoring, new RegExp(`^sed -i .* /etc/prometheus/${install[2]!.replaceAll('.', '\\.')}$`, 'm'));
        const dir = mkdtempSync(join(tmpdir(), 'mailwarden-promtool-'));
        try {
            writeFileSync(join(dir, 'prometheus.yml'), snippet);
            copyFileSync(new URL(install[1]!, root), join(dir, install[2]!));
            const r = await promtool(['check', 'config', 'prometheus.yml'], dir);
            assert.equal(r.code, 0, r.output);
            assert.match(r.output, /SUCCESS: 1 rule files found/);
        } finally {
            rmSync(dir, { recursive: true, force: true });
        }
    });

    it('are loaded by the docker-compose Prometheus configuration, which promtool accepts', async () => {
        const dir = mkdtempSync(join(tmpdir(), 'mailwarden-promtool-'));
        try {
            copyFileSync(new URL('deploy/compose/prometheus.yml', root), join(dir, 'prometheus.yml'));
            copyFileSync(new URL('grafana/alerts.yml', root), join(dir, 'alerts.yml'));
            const r = await promtool(['check', 'config', 'prometheus.yml'], dir);
            assert.equal(r.code, 0, r.output);
            assert.match(r.output, /SUCCESS: 1 rule files found/);
        } finally {
            rmSync(dir, { recursive: true, force: true });
        }
    });
});
