/**
 * `mailwarden check` warns, at the line and column, when `hostname` or `domains` still hold the
 * shipped example's placeholders (mx.example.com, example.com): with them, mail for the real
 * domains is refused as relaying with `550 5.7.1`, which `softReject` does not soften. It is a
 * warning (exit 0; `--strict` exits 1), so test set-ups that use those names keep working.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { runCheck } from '../../src/commands/check.ts';
import { cleanup, folderWith } from './helpers.ts';

after(cleanup);

async function check(yaml: string, strict = false): Promise<{ code: number; out: string[]; err: string[] }> {
    const dir = folderWith({ 'mw.yaml': yaml });
    const out: string[] = [];
    const err: string[] = [];
    const code = await runCheck({
        configPath: 'mw.yaml',
        cwd: dir,
        env: {},
        out: (l) => out.push(l),
        err: (l) => err.push(l),
        strict,
        validators: [],
    });
    return { code, out, err };
}

describe('check: the example placeholders in hostname and domains', () => {
    it('warns at each placeholder and still exits 0', async () => {
        const r = await check('hostname: mx.example.com\ndomains: [example.org, example.com]\n');
        assert.equal(r.code, 0);
        assert.equal(r.err.length, 2, r.err.join('\n'));
        assert.match(r.err[0]!, /^mw\.yaml:1:11: warning: hostname: still the example's "mx\.example\.com"/);
        assert.match(r.err[1]!, /^mw\.yaml:2:24: warning: domains: still the example's "example\.com"; .*550 5\.7\.1/);
        assert.match(r.err[1]!, /softReject/);
        assert.deepEqual(r.out, ['ok: mw.yaml (2 warnings; serve and reload accept these files as they are)']);
    });

    it('counts columns after a byte-order mark, as an editor shows them', async () => {
        const r = await check('\uFEFFhostname: mx.example.com\ndomains: [example.org]\n');
        assert.match(r.err[0]!, /^mw\.yaml:1:11: warning: hostname: /);
    });

    it('finds a placeholder in a block list too, and --strict refuses it', async () => {
        const r = await check('hostname: mail.example.org\ndomains:\n  - example.org\n  - Example.COM\n', true);
        assert.equal(r.code, 1);
        assert.match(r.err[0]!, /^mw\.yaml:4:5: warning: domains: /);
    });

    it('stays quiet for real names, subdomains of example.com included', async () => {
        const r = await check('hostname: mail.example.org\ndomains: [example.org, shop.example.com]\n');
        assert.equal(r.code, 0);
        assert.deepEqual(r.err, []);
        assert.deepEqual(r.out, ['ok: mw.yaml']);
    });
});
