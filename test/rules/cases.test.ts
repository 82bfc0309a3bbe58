/**
 * `cases:` that do not hold are warnings (`FILE:LINE:COL: warning: …`), never load problems:
 * the folder loads, and the warning says which rule's mode explains the failure when a switch
 * between `mode: enforce` and `mode: monitor` does (plain rules, limits and greylisting), and
 * nothing more when none does.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { formatIssue } from '../../src/config/issues.ts';
import { loadRules, runCases } from '../../src/rules/index.ts';
import { cleanup, folderWith } from './helpers.ts';

after(cleanup);

function load(yaml: string) {
    const r = loadRules(folderWith({ '10.yaml': yaml }), { softReject: false });
    assert.deepEqual(r.issues, []);
    return r;
}

describe('cases that do not hold', () => {
    it('are warnings naming the rule now in monitor mode, and the rules load', () => {
        const r = load(
            [
                'rules:',
                '  - id: block-x',
                '    stage: mail',
                '    mode: monitor',
                '    when: { mail.from.domain: x.example }',
                '    action: reject',
                'cases:',
                '  - name: x is refused',
                '    stage: mail',
                '    facts: { mail.from.domain: x.example }',
                '    expect: { action: reject, rule: block-x }',
                '',
            ].join('\n'),
        );
        assert.ok(r.ruleSet);
        assert.deepEqual(
            r.warnings.map((w) => formatIssue(w).replace(/^.*\//, '')),
            [
                '10.yaml:8:5: warning: case "x is refused" does not hold: expected action reject, rule block-x; ' +
                    'got action accept, rule none; rule block-x is in monitor mode; this case expects its enforce ' +
                    'outcome — update the case (expect what happens without the rule, and add monitor: [block-x]) ' +
                    'or set the rule back to mode: enforce',
            ],
        );
        assert.deepEqual(runCases(r.ruleSet).failed[0]?.modeSwitch, { rules: ['block-x'], mode: 'monitor' });
    });

    it('name a rule now enforced whose case expects it monitored, and a limit switched either way', () => {
        const r = load(
            [
                'limits:',
                '  - { id: per-sender, key: mail.from, rate: 10/1h, mode: monitor }',
                'rules:',
                '  - { id: hold, stage: mail, when: { mail.from.domain: y.example }, action: tempfail }',
                'cases:',
                '  - name: y is only watched',
                '    stage: mail',
                '    facts: { mail.from.domain: y.example }',
                '    expect: { action: accept, rule: null, monitor: [hold] }',
                '  - name: over the rate',
                '    stage: mail',
                '    facts: { mail.from: a@z.example, ratelimit.exceeded: [per-sender] }',
                '    expect: { action: tempfail, rule: per-sender }',
                '',
            ].join('\n'),
        );
        const failed = runCases(r.ruleSet!).failed;
        assert.deepEqual(
            failed.map((f) => [f.name, f.modeSwitch]),
            [
                ['y is only watched', { rules: ['hold'], mode: 'enforce' }],
                ['over the rate', { rules: ['per-sender'], mode: 'monitor' }],
            ],
        );
        assert.match(r.warnings[0]!.message, /rule hold is in enforce mode; this case expects it in monitor mode/);
        assert.ok(r.warnings.every((w) => w.severity === 'warning'));
    });

    it('say a rule now matches facts the case was not written for, when no monitor: names it', () => {
        const r = load(
            [
                'rules:',
                '  - { id: block-networks, stage: connect, when: { client.ip: { in: [198.51.100.7] } }, action: reject }',
                'cases:',
                '  - name: a client that talks first is refused',
                '    stage: connect',
                '    facts: { client.ip: 198.51.100.7 }',
                '    expect: { action: accept, rule: null }',
                '',
            ].join('\n'),
        );
        const failed = runCases(r.ruleSet!).failed;
        assert.deepEqual(failed[0]?.modeSwitch, { rules: ['block-networks'], mode: 'enforce', unexpected: true });
        assert.match(
            r.warnings[0]!.message,
            /; the case holds without rule block-networks, which now matches its facts \(a list entry or a rule edited since\?\) — update the case to expect it, or change the rule or the list it reads$/,
        );
        assert.doesNotMatch(r.warnings[0]!.message, /monitor/);
    });

    it('give no mode hint when no switch explains the failure', () => {
        const r = load(
            [
                'rules:',
                '  - { id: block-x, stage: mail, when: { mail.from.domain: x.example }, action: reject }',
                'cases:',
                '  - name: a wrong expectation',
                '    stage: mail',
                '    facts: { mail.from.domain: x.example }',
                '    expect: { action: quarantine }',
                '',
            ].join('\n'),
        );
        assert.equal(r.warnings.length, 1);
        assert.equal(runCases(r.ruleSet!).failed[0]?.modeSwitch, undefined);
        assert.match(r.warnings[0]!.message, /got action reject$/);
    });
});
