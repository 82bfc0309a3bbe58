/**
 * `serve`, reload and `mailwarden check` accept exactly the same rule files. Switching any
 * shipped rule, limit or greylisting entry to the other mode (enforce → monitor, as the
 * runbook and the files' comments advise, or monitor → enforce) makes its `cases:` that
 * expect the old mode warnings, each naming the rule and what to change: `check` exits 0,
 * a running proxy reloads the folder and logs the same lines, and `serve` starts with it. A
 * folder with a real problem is refused by all three with the same `FILE:LINE:COL` lines.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { runCheck } from '../../src/commands/check.ts';
import { PACKAGE_RULES_DIR } from '../../src/config/defaults.ts';
import { loadRules, type Rule } from '../../src/rules/index.ts';
import { startApp, type TestApp } from '../helpers/app.ts';
import { runCommand, startServe } from '../helpers/serve.ts';

const SHIPPED = loadRules(PACKAGE_RULES_DIR, { softReject: false }).ruleSet!;

/** `text` with the rule (or limit, or greylisting entry) `id` switched to `mode`, line numbers of other entries kept where possible. */
function switchMode(text: string, id: string, mode: 'enforce' | 'monitor'): string {
    const lines = text.split('\n');
    const at = lines.findIndex((l) => new RegExp(`^\\s*- id: ${id}\\s*$`).test(l));
    assert.ok(at >= 0, `${id} found`);
    const indent = ' '.repeat(/^(\s*)-/.exec(lines[at]!)![1]!.length + 2);
    let end = at + 1;
    while (end < lines.length && (lines[end]!.startsWith(indent) || lines[end]!.trim() === '')) end++;
    const existing = lines.slice(at + 1, end).findIndex((l) => l.startsWith(`${indent}mode:`));
    if (existing >= 0) lines[at + 1 + existing] = `${indent}mode: ${mode}`;
    else lines.splice(at + 1, 0, `${indent}mode: ${mode}`);
    return lines.join('\n');
}

const other = (r: Rule): 'enforce' | 'monitor' => (r.mode === 'monitor' ? 'enforce' : 'monitor');

/** What `mailwarden check` prints for a config naming `rules`. */
async function check(dir: string, rules: string): Promise<{ code: number; out: string[]; err: string[] }> {
    const file = path.join(dir, 'check.yaml');
    fs.writeFileSync(file, `rules: "${rules}"\n`);
    const out: string[] = [];
    const err: string[] = [];
    const code = await runCheck({ configPath: file, env: {}, out: (l) => out.push(l), err: (l) => err.push(l) });
    return { code, out, err };
}

describe('serve, reload and check accept the same rule files', () => {
    let dir: string;
    let rules: string;
    let mw: TestApp;

    before(async () => {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mw-same-'));
        rules = path.join(dir, 'rules');
        fs.cpSync(PACKAGE_RULES_DIR, rules, { recursive: true });
        mw = await startApp(
            [
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "maildir:${path.join(dir, 'maildir')}" }`,
                `rules: "${rules}"`,
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw.stop();
        fs.rmSync(dir, { recursive: true, force: true });
    });

    it('each shipped rule switched to the other mode: warnings with a hint, check exits 0, reload accepts', async () => {
        const implicit = SHIPPED.rules.filter((r) => r.implicit).length;
        assert.ok(implicit >= 5 && SHIPPED.rules.length > implicit + 10, 'limits, greylisting and rules');
        let hinted = 0;
        const readme = fs.readFileSync(path.join(PACKAGE_RULES_DIR, 'README.md'), 'utf8');
        const documented = /^rules\/40-own-domain\.yaml:.*$/m.exec(readme)?.[0];
        assert.ok(documented, 'rules/README.md shows a warning line');
        for (const rule of SHIPPED.rules) {
            const file = path.join(rules, path.basename(rule.file));
            const original = fs.readFileSync(file, 'utf8');
            fs.writeFileSync(file, switchMode(original, rule.id, other(rule)));
            try {
                const c = await check(dir, rules);
                assert.equal(c.code, 0, `${rule.id}: check exits 0\n${c.err.join('\n')}`);
                for (const line of c.err) {
                    assert.match(line, /^\S+:\d+:\d+: warning: case ".*" does not hold: /, `${rule.id}: ${line}`);
                    assert.ok(
                        line.includes(`rule ${rule.id} is in ${other(rule)} mode; this case expects`),
                        `${rule.id}: the warning names the rule and its mode: ${line}`,
                    );
                }
                if (rule.id === 'own-domain-spoof') {
                    const shown = c.err.map((l) => l.replace(`${rules}${path.sep}`, 'rules/'));
                    assert.ok(
                        shown.includes(documented),
                        `rules/README.md shows a line check prints:\n${shown.join('\n')}`,
                    );
                }
                if (c.err.length > 0) {
                    hinted++;
                    assert.match(c.out.join('\n'), /^ok: .* \(\d+ warnings?; serve and reload accept these files/);
                } else {
                    assert.deepEqual(c.out, [`ok: ${path.join(dir, 'check.yaml')}`]);
                }

                const mark = mw.logs.length;
                mw.app.reload();
                const lines = mw.logs.slice(mark);
                assert.ok(
                    lines.some((l) => l.msg === 'reloaded' && l.reload === 'rules' && l.how === 'signal'),
                    `${rule.id}: reload accepts the folder`,
                );
                const warned = lines.find((l) => String(l.msg).startsWith('rule cases do not hold'));
                assert.deepEqual(warned?.warnings ?? [], c.err, `${rule.id}: reload logs what check prints`);
                assert.ok(mw.app.config.rules === rules);
            } finally {
                fs.writeFileSync(file, original);
            }
        }
        assert.ok(hinted >= 10, `${hinted} switches touched cases`);
    });

    it('every shipped rule switched at once: serve starts, SIGHUP reloads, the command check exits 0', async () => {
        const all = path.join(dir, 'all-switched');
        fs.cpSync(PACKAGE_RULES_DIR, all, { recursive: true });
        for (const rule of SHIPPED.rules) {
            const file = path.join(all, path.basename(rule.file));
            fs.writeFileSync(file, switchMode(fs.readFileSync(file, 'utf8'), rule.id, other(rule)));
        }
        const config = path.join(dir, 'serve.yaml');
        fs.writeFileSync(
            config,
            [
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "maildir:${path.join(dir, 'maildir')}" }`,
                `rules: "${all}"`,
                'dns: { servers: ["127.0.0.1:9"], timeout: 1s }',
                'http: false',
                'shutdownTimeout: 1s',
                '',
            ].join('\n'),
        );
        const checked = await runCommand(['check', '-c', config]);
        assert.equal(checked.code, 0, checked.stderr);
        const warnings = checked.stderr.trimEnd().split('\n');
        assert.ok(warnings.length >= 10 && warnings.every((l) => l.includes(': warning: case ')), checked.stderr);
        assert.match(checked.stdout, /^ok: /);
        const strict = await runCommand(['check', '--strict', '-c', config]);
        assert.equal(strict.code, 1, 'check --strict refuses warnings');

        const serve = startServe(config, dir);
        try {
            await serve.waitFor((l) => l.msg === 'mailwarden started');
            const started = serve.logs.find((l) => String(l.msg).startsWith('rule cases do not hold'));
            assert.deepEqual(started?.warnings, warnings, 'serve logs what check prints');
            const mark = serve.logs.length;
            serve.signal('SIGHUP');
            await serve.waitFor((l) => l.msg === 'reloaded' && l.reload === 'rules', { from: mark });
        } finally {
            assert.equal(await serve.stop(), 0);
        }
    });

    it('refuses a folder with a problem in all three, with the same lines', async () => {
        const broken = path.join(dir, 'broken');
        fs.cpSync(PACKAGE_RULES_DIR, broken, { recursive: true });
        const config = path.join(dir, 'broken.yaml');
        const yaml = (folder: string): string =>
            [
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "maildir:${path.join(dir, 'maildir')}" }`,
                `rules: "${folder}"`,
                'http: false',
                '',
            ].join('\n');
        fs.writeFileSync(config, yaml(broken));
        const file = path.join(broken, '20-dmarc.yaml');
        fs.writeFileSync(
            file,
            switchMode(fs.readFileSync(file, 'utf8'), 'dmarc-reject', 'monitor').replace(
                'dmarc.result: fail',
                'dmarc.result: failed',
            ),
        );
        const checked = await runCommand(['check', '-c', config]);
        assert.equal(checked.code, 1);
        const lines = checked.stderr.trimEnd().split('\n');
        assert.ok(lines.length >= 1 && lines.every((l) => !l.includes('warning:')), checked.stderr);
        assert.match(lines[0]!, /20-dmarc\.yaml:\d+:\d+: .*failed/);

        const serve = await runCommand(['serve', '-c', config]);
        assert.equal(serve.code, 1);
        assert.deepEqual(serve.stderr.trimEnd().split('\n'), lines, 'serve refuses with the same lines');

        // the running proxy's folder gets the same broken file: reload keeps the rules in force
        const running = path.join(rules, '20-dmarc.yaml');
        const original = fs.readFileSync(running, 'utf8');
        fs.copyFileSync(file, running);
        try {
            const mark = mw.logs.length;
            mw.app.reload();
            const failed = mw.logs
                .slice(mark)
                .find((l) => l.msg === 'reload failed; the previous rules stay in force' && l.how === 'signal');
            assert.ok(failed, 'reload refuses');
            const shown = (failed.issues as string[]).map((l) => l.split(rules).join(broken));
            assert.deepEqual(shown, lines, 'reload refuses with the same lines');
        } finally {
            fs.writeFileSync(running, original);
        }
    });
});
