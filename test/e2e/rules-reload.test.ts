/**
 * Rule files under a running proxy: an edited file takes effect for the next message
 * without a restart, a broken edit keeps the previous rules in force (counted as a failed
 * reload) while the server keeps serving, and SIGHUP's reload path behaves the same. Through
 * symlinks (a rules folder link pointed at another release, a list file linked into a feed
 * folder) the files the links name now are the ones read and watched.
 */
import assert from 'node:assert/strict';
import { appendFileSync, renameSync, symlinkSync, writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
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

    it('refuses an emptied rule file on SIGHUP: its rules stay in force', async () => {
        const ruleFile = join(dir, '10-block.yaml');
        const text = await readFile(ruleFile, 'utf8');
        const errors = await reloads(mw, 'error');
        await writeFile(ruleFile, '');
        try {
            const from = mw.logs.length;
            mw.app.reload();
            const failed = mw.logs
                .slice(from)
                .find((l) => l.msg === 'reload failed; the previous rules stay in force' && l.how === 'signal');
            assert.ok(failed, JSON.stringify(mw.logs.slice(from)));
            assert.match(JSON.stringify(failed.issues), /10-block\.yaml:1:1: the rule file declares nothing/);
            assert.ok((await reloads(mw, 'error')) >= errors + 1);
            const r = await sendMail(mw.port(), { from: 'other@sender.example', to: ['b@example.test'], data: MSG });
            assert.equal(r.mail.code, 550, 'the rule of the emptied file still refuses');
        } finally {
            await writeFile(ruleFile, text);
        }
    });
});

describe('rule reload through symlinks', () => {
    // rules -> releases/v1, later releases/v2; v2's lists/feed.txt -> feed/current/feed.txt,
    // feed/current -> f1, later f2 (as a deploy tool and a list feed switch them)
    const LISTS = [
        'lists:',
        '  block-senders: { type: address, file: lists/block-senders.txt }',
        '  feed: { type: address, file: lists/feed.txt }',
        'rules:',
        '  - { id: block, stage: mail, when: { mail.from: { list: block-senders } }, action: reject }',
        '  - { id: feed, stage: mail, when: { mail.from: { list: feed } }, action: tempfail }',
        '',
    ].join('\n');
    let base: string;
    let up: ScriptedUpstream;
    let mw: TestApp;
    const from = async (sender: string): Promise<number> =>
        (await sendMail(mw.port(), { from: sender, to: ['b@example.test'], data: MSG })).mail.code;
    /** Waits for a reload by a file change logged after `since` (a log index). */
    const fileChange = (since: number): Promise<void> =>
        until('a reload by a file change', () =>
            mw.logs.slice(since).some((l) => l.msg === 'reloaded' && l.reload === 'rules' && l.how === 'file change'),
        );
    /** Points the link `at` to `target`, swapped in by rename as `ln -sfn` does. */
    const relink = (target: string, at: string): void => {
        symlinkSync(target, `${at}.new`);
        renameSync(`${at}.new`, at);
    };
    /** Replaces a file by renaming a new copy over it, as the docs advise for list files. */
    const replace = (file: string, text: string): void => {
        writeFileSync(`${file}.tmp`, text);
        renameSync(`${file}.tmp`, file);
    };
    before(async () => {
        base = await mkdtemp(join(tmpdir(), 'mw-rules-links-'));
        for (const [file, text] of [
            ['releases/v1/10-lists.yaml', LISTS],
            ['releases/v1/lists/block-senders.txt', 'spam1@bad.example\n'],
            ['releases/v1/lists/feed.txt', 'nobody@nowhere.example\n'],
            ['releases/v2/10-lists.yaml', LISTS],
            ['releases/v2/lists/block-senders.txt', 'spam2@bad.example\n'],
            ['feed/f1/feed.txt', 'nobody@nowhere.example\n'],
            ['feed/f2/feed.txt', 'feed2@bad.example\n'],
        ]) {
            await mkdir(dirname(join(base, file!)), { recursive: true });
            await writeFile(join(base, file!), text!);
        }
        symlinkSync(join(base, 'feed', 'current', 'feed.txt'), join(base, 'releases/v2/lists/feed.txt'));
        symlinkSync('f1', join(base, 'feed', 'current'));
        symlinkSync('releases/v1', join(base, 'rules'));
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'] });
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                `rules: "${join(base, 'rules')}"`,
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw.stop();
        await up.close();
        await rm(base, { recursive: true, force: true });
    });

    it('reads the release a swapped folder link names on SIGHUP, and follows edits there', async () => {
        assert.equal(await from('spam1@bad.example'), 550);
        relink('releases/v2', join(base, 'rules'));
        mw.app.reload();
        assert.equal(await from('spam2@bad.example'), 550, 'SIGHUP reads the files the link now names');
        assert.equal(await from('spam1@bad.example'), 250);
        const since = mw.logs.length;
        appendFileSync(join(base, 'rules', 'lists', 'block-senders.txt'), 'spam3@bad.example\n');
        await fileChange(since);
        assert.equal(await from('spam3@bad.example'), 550);
    });

    it('follows a list file behind a symlink whose target is replaced by rename', async () => {
        assert.equal(await from('feed1@bad.example'), 250);
        const since = mw.logs.length;
        replace(join(base, 'feed', 'current', 'feed.txt'), 'feed1@bad.example\n');
        await fileChange(since);
        assert.equal(await from('feed1@bad.example'), 451);
    });

    it('watches the list target a SIGHUP found after its folder link was swapped', async () => {
        relink('f2', join(base, 'feed', 'current'));
        mw.app.reload();
        assert.equal(await from('feed2@bad.example'), 451);
        assert.equal(await from('feed1@bad.example'), 250);
        const since = mw.logs.length;
        replace(join(base, 'feed', 'current', 'feed.txt'), 'feed2@bad.example\nfeed3@bad.example\n');
        await fileChange(since);
        assert.equal(await from('feed3@bad.example'), 451);
    });
});
