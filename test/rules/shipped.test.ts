/**
 * The shipped rules/ folder: it loads without a single issue, every example in its `cases:`
 * holds, `mailwarden check` has nothing to say about it, and rules/README.md is what
 * scripts/gen-rules-readme.ts generates from the code (so the documentation cannot drift).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { main as readmeMain } from '../../scripts/gen-rules-readme.ts';
import { PACKAGE_RULES_DIR } from '../../src/config/defaults.ts';
import { OPERATORS } from '../../src/rules/conditions.ts';
import { FACTS } from '../../src/rules/facts.ts';
import { RULE_KEYS } from '../../src/rules/load.ts';
import { loadRules, runCases, validateRulesForCheck } from '../../src/rules/index.ts';

describe('shipped rules', () => {
    it('load without issues', () => {
        const r = loadRules(PACKAGE_RULES_DIR, { softReject: false });
        assert.deepEqual(r.issues, []);
        const set = r.ruleSet!;
        assert.deepEqual(
            set.files.map((f) => path.basename(f)),
            [
                '10-allow-block.yaml',
                '15-pregreet.yaml',
                '20-dmarc.yaml',
                '30-spf.yaml',
                '40-own-domain.yaml',
                '50-limits.yaml',
                '60-accounts.yaml',
                '70-reputation.yaml',
            ],
        );
        assert.deepEqual(
            set.lists.map((l) => [l.name, l.type, l.entries]),
            [
                ['allow-networks', 'ip', 0],
                ['block-networks', 'ip', 0],
                ['block-senders', 'address', 0],
                ['block-domains', 'domain', 0],
            ],
        );
        assert.ok(Object.isFrozen(set) && Object.isFrozen(set.rules) && Object.isFrozen(set.rules[0]));
    });

    it('cap connections, senders and logins, and try greylisting in monitor mode only', () => {
        const set = loadRules(PACKAGE_RULES_DIR, { softReject: false }).ruleSet!;
        assert.deepEqual(
            set.limits.map(
                (l) => `${l.id} ${l.stage} ${l.keyText} ${l.rateText ?? `concurrency ${l.concurrency}`} ${l.mode}`,
            ),
            [
                'client-concurrency connect client.ip concurrency 10 enforce',
                'client-connection-rate connect client.ip/24 100/1m, 1000/1h enforce',
                'mx-sender-recipients rcpt mail.from + client.ip/24 300/1h, 2000/1d enforce',
                'mx-network-recipients rcpt client.ip/24 3000/1h enforce',
                'login-messages mail auth.user 100/1h, 500/1d enforce',
                'login-recipients rcpt auth.user 300/1h, 1000/1d enforce',
            ],
        );
        assert.ok(
            set.limits.every((l) => l.onError === 'allow'),
            'Redis trouble never stops mail by default',
        );
        assert.deepEqual(
            set.greylists.map((g) => `${g.id} ${g.mode}`),
            ['greylist-unverified monitor'],
        );
    });

    it('pass every case they carry, and each file carries some', () => {
        const set = loadRules(PACKAGE_RULES_DIR, { softReject: false }).ruleSet!;
        const results = runCases(set);
        assert.deepEqual(results.failed, []);
        assert.equal(results.passed, set.cases.length);
        for (const file of set.files)
            assert.ok(
                set.cases.some((c) => c.file === file),
                `${file} has cases`,
            );
        assert.deepEqual(validateRulesForCheck(PACKAGE_RULES_DIR, false), []);
        assert.deepEqual(validateRulesForCheck(PACKAGE_RULES_DIR, true), [], 'cases run with softReject off');
    });

    it('stop a refusal when its rule is put in monitor mode, as the runbook advises: no other rule takes it over', () => {
        const shipped = loadRules(PACKAGE_RULES_DIR, { softReject: false }).ruleSet!;
        const refusing = shipped.cases.filter((c) => c.expect.action === 'reject' && typeof c.expect.rule === 'string');
        assert.ok(refusing.length >= 8, `${refusing.length} refusing cases`);
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mw-monitor-'));
        try {
            for (const c of refusing) {
                const id = c.expect.rule as string;
                // the rule file as an operator edits it: `mode: monitor` added under the rule's id
                fs.rmSync(dir, { recursive: true, force: true });
                fs.cpSync(PACKAGE_RULES_DIR, dir, { recursive: true });
                const file = path.join(dir, path.basename(c.file));
                const text = fs.readFileSync(file, 'utf8');
                const at = `  - id: ${id}\n`;
                assert.ok(text.includes(at), `${id} in ${c.file}`);
                fs.writeFileSync(file, text.replace(at, `${at}    mode: monitor\n`));
                const loaded = loadRules(dir, { softReject: false });
                assert.deepEqual(
                    loaded.issues.filter((i) => i.severity !== 'warning'),
                    [],
                );
                const ev = loaded.ruleSet!.evaluate(c.stage, c.facts, { softReject: false, trace: false });
                assert.notEqual(
                    ev.decision.action,
                    'reject',
                    `${id} in monitor mode: "${c.name}" is still refused by ${ev.terminal}`,
                );
            }
        } finally {
            fs.rmSync(dir, { recursive: true, force: true });
        }
    });

    it('tag nothing from a client in allow-networks, at any stage, whatever the lists and reputation say', () => {
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mw-allow-'));
        try {
            fs.cpSync(PACKAGE_RULES_DIR, dir, { recursive: true });
            fs.writeFileSync(path.join(dir, 'lists', 'allow-networks.txt'), '192.0.2.0/24\n');
            const set = loadRules(dir, { softReject: false }).ruleSet!;
            const bad = {
                listener: 'mx',
                'listener.mode': 'mx',
                'client.ip': '192.0.2.9',
                helo: 'relay.partner.example',
                'dnsbl.score': 2,
                'dnsbl.zones': ['bl.example'],
                'rhsbl.helo.score': 1,
                'rhsbl.sender.score': 1,
                'iprev.result': 'fail',
                'client.ptr.generic': true,
                'mail.from': 'news@partner.example',
                'mail.from.domain': 'partner.example',
            };
            for (const stage of ['helo', 'mail'] as const) {
                const d = set.decide(stage, bad);
                assert.equal(d.action, 'accept', `${stage}: ${d.rules.join(',')}`);
                assert.deepEqual(d.headers, [], stage);
            }
            // the same client outside the allow list is tagged at HELO (the rules above are live)
            assert.equal(set.decide('helo', { ...bad, 'client.ip': '198.51.100.9' }).action, 'tag');
        } finally {
            fs.rmSync(dir, { recursive: true, force: true });
        }
    });

    it('say what happened, why and what to do in every reply', () => {
        const set = loadRules(PACKAGE_RULES_DIR, { softReject: false }).ruleSet!;
        for (const rule of set.rules) {
            if (rule.action !== 'reject' && rule.action !== 'tempfail') continue;
            assert.ok(rule.reply, `${rule.id} has its own reply`);
            const text = rule.reply.text.source;
            assert.ok(text.length > 80 && /[.:]/.test(text), `${rule.id}: ${text}`);
        }
    });

    it('have an up-to-date, generated README covering every fact, operator and rule key', async () => {
        const lines: string[] = [];
        assert.equal(await readmeMain(['--check'], (l) => lines.push(l)), 0, lines.join('\n'));
        const readme = fs.readFileSync(path.join(PACKAGE_RULES_DIR, 'README.md'), 'utf8');
        for (const f of FACTS) assert.ok(readme.includes(`\`${f.name}\``), f.name);
        for (const o of OPERATORS) assert.ok(readme.includes(`| \`${o.name}\``), o.name);
        for (const k of RULE_KEYS) assert.ok(readme.includes(`| \`${k}\``), k);
    });
});
