/**
 * Rule files under a running proxy: an edited file takes effect for the next message
 * without a restart, a broken edit keeps the previous rules in force (counted as a failed
 * reload) while the server keeps serving, and SIGHUP's reload path behaves the same.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { sendMail } from '../helpers/smtp-client.ts';
import { until } from '../helpers/until.ts';

const MSG = 'From: a@sender.example\r\nSubject: t\r\n\r\nbody\r\n';

function rules(blocked: string): string {
    return [
        'rules:',
        '  - id: block-sender',
        '    stage: mail',
        `    when: { mail.from: "${blocked}" }`,
        '    action: reject',
        '    reply: { code: 550, enhanced: 5.7.1, text: "Sender {mail.from} is blocked here" }',
        '',
    ].join('\n');
}

async function reloads(mw: TestApp, result: 'ok' | 'error'): Promise<number> {
    const m = (await mw.app.metrics.configReloads.get()).values.find((v) => v.labels.result === result);
    return m?.value ?? 0;
}

describe('rule reload', () => {
    let dir: string;
    let up: ScriptedUpstream;
    let mw: TestApp;
    before(async () => {
        dir = await mkdtemp(join(tmpdir(), 'mw-rules-'));
        await writeFile(join(dir, '10-block.yaml'), rules('nobody@nowhere.example'));
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'] });
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                `rules: "${dir}"`,
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw.stop();
        await up.close();
        await rm(dir, { recursive: true, force: true });
    });

    it('follows an edited rule file for the next message, without a restart', async () => {
        const first = await sendMail(mw.port(), { from: 'spam@sender.example', to: ['b@example.test'], data: MSG });
        assert.equal(first.message?.code, 250);
        const ok = await reloads(mw, 'ok');
        await writeFile(join(dir, '10-block.yaml'), rules('spam@sender.example'));
        await until('the reload', () => mw.logs.some((l) => l.msg === 'reloaded' && l.how === 'file change'));
        assert.equal(await reloads(mw, 'ok'), ok + 1);
        const second = await sendMail(mw.port(), { from: 'spam@sender.example', to: ['b@example.test'], data: MSG });
        assert.equal(second.mail.code, 550);
        assert.match(second.mail.text, /^5\.7\.1 Sender spam@sender\.example is blocked here \(id \w+\)$/);
    });

    it('keeps the previous rules and keeps serving when an edit breaks the file', async () => {
        const errors = await reloads(mw, 'error');
        await writeFile(
            join(dir, '10-block.yaml'),
            'rules:\n  - id: broken\n    when: { no.such.fact: 1 }\n    action: explode\n',
        );
        await until('the failed reload', () =>
            mw.logs.some((l) => l.msg === 'reload failed; the previous rules stay in force'),
        );
        assert.equal(await reloads(mw, 'error'), errors + 1);
        const failed = mw.logs.find((l) => l.msg === 'reload failed; the previous rules stay in force')!;
        assert.match(JSON.stringify(failed.issues), /10-block\.yaml:3:\d+: .*no\.such\.fact/);
        const still = await sendMail(mw.port(), { from: 'spam@sender.example', to: ['b@example.test'], data: MSG });
        assert.equal(still.mail.code, 550, 'the old rule is still in force');
        const other = await sendMail(mw.port(), { from: 'fine@sender.example', to: ['b@example.test'], data: MSG });
        assert.equal(other.message?.code, 250, 'and the server still serves');
    });

    it('reloads on SIGHUP the same way (valid and broken)', async () => {
        const errors = await reloads(mw, 'error');
        mw.app.reload();
        assert.equal(await reloads(mw, 'error'), errors + 1, 'the broken file is refused');
        await writeFile(join(dir, '10-block.yaml'), rules('other@sender.example'));
        const ok = await reloads(mw, 'ok');
        mw.app.reload();
        assert.ok((await reloads(mw, 'ok')) >= ok + 1);
        const r = await sendMail(mw.port(), { from: 'other@sender.example', to: ['b@example.test'], data: MSG });
        assert.equal(r.mail.code, 550);
    });

    it('refuses a configuration whose new rules folder does not load, and names no change', async () => {
        const broken = join(dir, 'broken');
        await mkdir(broken);
        await writeFile(
            join(broken, '10.yaml'),
            'rules:\n  - id: x\n    when: { no.such.fact: 1 }\n    action: reject\n',
        );
        const file = join(mw.dir, 'mailwarden.yaml');
        const text = await readFile(file, 'utf8');
        await writeFile(file, text.replace(`rules: "${dir}"`, `rules: "${broken}"`));
        const from = mw.logs.length;
        mw.app.reload();
        const lines = mw.logs.slice(from);
        const config = lines.find((l) => l.reload === 'config');
        assert.equal(config?.msg, 'reload failed; the running configuration stays in force', JSON.stringify(config));
        assert.match(JSON.stringify(config?.issues), /10\.yaml:3:\d+: .*no\.such\.fact/);
        assert.ok(!lines.some((l) => l.msg === 'reloaded' && (l.changed as string[] | undefined)?.includes('rules')));
        assert.equal(mw.app.config.rules, dir, 'the rules folder in force is the old one');
        const r = await sendMail(mw.port(), { from: 'other@sender.example', to: ['b@example.test'], data: MSG });
        assert.equal(r.mail.code, 550, 'and so are its rules');
        await writeFile(file, text);
    });

    it('refuses a configuration whose new rules folder holds no rule files: the rules in force stay', async () => {
        const empty = join(dir, 'empty');
        await mkdir(empty);
        const file = join(mw.dir, 'mailwarden.yaml');
        const text = await readFile(file, 'utf8');
        await writeFile(file, text.replace(`rules: "${dir}"`, `rules: "${empty}"`));
        const from = mw.logs.length;
        mw.app.reload();
        const config = mw.logs.slice(from).find((l) => l.reload === 'config');
        assert.equal(config?.msg, 'reload failed; the running configuration stays in force', JSON.stringify(config));
        assert.match(JSON.stringify(config?.issues), /empty:1:1: the rules folder holds no rule files/);
        const r = await sendMail(mw.port(), { from: 'other@sender.example', to: ['b@example.test'], data: MSG });
        assert.equal(r.mail.code, 550, 'the rules in force still refuse');
        await writeFile(file, text);
        // what is in force is logged at each load of the rules
        mw.app.reload();
        const inForce = mw.logs.filter((l) => l.msg === 'rules in force').at(-1)!;
        assert.deepEqual(
            [inForce.folder, inForce.files, inForce.rules, inForce.limits, inForce.greylists, inForce.lists],
            [dir, 1, 1, 0, 0, 0],
        );
    });
});
