/**
 * Live reload: a change to a rule file or a list file (written in place or renamed over the
 * old one, as editors and deploy tools do) produces a new rule set, also after the folder was
 * swapped by rename and through a symlinked list file; a broken change produces the error, so
 * the caller can keep the rules it has; close() stops everything.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { loadRuleSet, watchRuleSet, type RuleSet, type WatchResult } from '../../src/rules/index.ts';
import { cleanup, folderWith, tempDir } from './helpers.ts';

after(cleanup);

const RULES = (action: string): string =>
    `lists:\n  nets: { type: ip, file: lists/nets.txt }\nrules:\n  - id: nets\n    stage: connect\n    when: { client.ip: { list: nets } }\n    action: ${action}\n`;

/**
 * Collects onChange results and lets a test wait for the next one, or for the first that
 * satisfies a predicate (a busy machine may split one burst of changes into two reloads).
 */
function recorder(): {
    onChange: (r: WatchResult) => void;
    readonly received: number;
    next: () => Promise<WatchResult>;
    until: (pred: (r: WatchResult) => boolean) => Promise<WatchResult>;
} {
    const queue: WatchResult[] = [];
    let waiting: ((r: WatchResult) => void) | null = null;
    let received = 0;
    return {
        get received() {
            return received;
        },
        onChange(r) {
            received++;
            if (waiting) {
                const w = waiting;
                waiting = null;
                w(r);
            } else {
                queue.push(r);
            }
        },
        next() {
            const r = queue.shift();
            if (r) return Promise.resolve(r);
            return new Promise((resolve, reject) => {
                const timer = setTimeout(() => reject(new Error('no reload within 5 s')), 5000);
                waiting = (x) => {
                    clearTimeout(timer);
                    resolve(x);
                };
            });
        },
        async until(pred) {
            for (;;) {
                const r = await this.next();
                if (pred(r)) return r;
            }
        },
    };
}

const decides =
    (ip: string, action: string) =>
    (r: WatchResult): boolean =>
        'ok' in r && r.ok.decide('connect', { 'client.ip': ip }).action === action;
const failed = (r: WatchResult): boolean => 'error' in r;

function replaceFile(file: string, content: string): void {
    const tmp = `${file}.tmp-${process.pid}`;
    fs.writeFileSync(tmp, content);
    fs.renameSync(tmp, file);
}

/** Folders and files this process watches (inotify watches over all its inotify descriptors). */
function inotifyWatches(): number {
    let n = 0;
    for (const fd of fs.readdirSync('/proc/self/fd')) {
        let target: string;
        try {
            target = fs.readlinkSync(`/proc/self/fd/${fd}`);
        } catch {
            continue;
        }
        if (target !== 'anon_inode:inotify') continue;
        n += fs
            .readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8')
            .split('\n')
            .filter((l) => l.startsWith('inotify wd:')).length;
    }
    return n;
}

function ok(r: WatchResult): RuleSet {
    assert.ok('ok' in r, 'error' in r ? r.error.message : '');
    return r.ok;
}

describe('watchRuleSet', () => {
    it('reloads on rule and list changes, reports broken files, and stops on close', async () => {
        const dir = folderWith({ '10-nets.yaml': RULES('reject'), 'lists/nets.txt': '192.0.2.0/24\n' });
        const current = loadRuleSet(dir, { softReject: false });
        assert.equal(current.decide('connect', { 'client.ip': '192.0.2.1' }).action, 'reject');
        const rec = recorder();
        const watcher = watchRuleSet(dir, { softReject: false, debounceMs: 50, current, onChange: rec.onChange });
        try {
            // A rule file replaced by rename.
            replaceFile(path.join(dir, '10-nets.yaml'), RULES('tempfail'));
            let set = ok(await rec.until(decides('192.0.2.1', 'tempfail')));
            assert.equal(set.decide('connect', { 'client.ip': '192.0.2.1' }).action, 'tempfail');

            // A list file written in place.
            fs.writeFileSync(path.join(dir, 'lists', 'nets.txt'), '198.51.100.0/24\n');
            set = ok(await rec.until(decides('192.0.2.1', 'accept')));
            assert.equal(set.decide('connect', { 'client.ip': '192.0.2.1' }).action, 'accept');
            assert.equal(set.decide('connect', { 'client.ip': '198.51.100.7' }).action, 'tempfail');

            // A broken rule file: the error, with its position.
            replaceFile(path.join(dir, '10-nets.yaml'), RULES('rejct'));
            const broken = await rec.until(failed);
            assert.ok('error' in broken);
            assert.deepEqual(
                broken.error.issues.map((i) => `${path.basename(i.file)}:${i.line}:${i.col}`),
                ['10-nets.yaml:7:13'],
            );

            // A broken list file.
            replaceFile(path.join(dir, '10-nets.yaml'), RULES('reject'));
            ok(await rec.until(decides('198.51.100.7', 'reject')));
            fs.writeFileSync(path.join(dir, 'lists', 'nets.txt'), 'not-an-ip\n');
            const badList = await rec.until(failed);
            assert.ok('error' in badList);
            assert.match(badList.error.message, /lists\/nets\.txt:1:1: "not-an-ip" is not an IP address/);

            // A new rule file appears.
            fs.writeFileSync(path.join(dir, 'lists', 'nets.txt'), '192.0.2.0/24\n');
            ok(await rec.until(decides('192.0.2.1', 'reject')));
            fs.writeFileSync(
                path.join(dir, '20-more.yaml'),
                'rules:\n  - { id: all, stage: connect, action: tag, score: 1 }\n',
            );
            set = ok(await rec.until((r) => 'ok' in r && r.ok.rules.length === 2));
            assert.deepEqual(
                set.rules.map((r) => r.id),
                ['nets', 'all'],
            );
        } finally {
            watcher.close();
        }
        // After close, changes are not reported.
        const before = rec.received;
        fs.writeFileSync(path.join(dir, '10-nets.yaml'), RULES('accept'));
        await new Promise((r) => setTimeout(r, 400));
        assert.equal(rec.received, before);
    });

    it('reports a file the YAML library cannot expand (aliases past its limit) as a failed reload, and goes on', async () => {
        const dir = folderWith({ '10-nets.yaml': RULES('reject'), 'lists/nets.txt': '192.0.2.0/24\n' });
        const rec = recorder();
        const watcher = watchRuleSet(dir, { softReject: false, debounceMs: 50, onChange: rec.onChange });
        try {
            const aliases = Array.from({ length: 101 }, () => '*r').join(', ');
            fs.writeFileSync(
                path.join(dir, '99-aliases.yaml'),
                'rules:\n  - { id: many-rcpts, stage: rcpt, when: { rcpt.count: { gt: 100 } }, action: tempfail }\n' +
                    'cases:\n  - name: more than 100 recipients are deferred\n    stage: rcpt\n' +
                    `    facts: { rcpt.count: 102, rcpt.to: [&r user@example.org, ${aliases}] }\n` +
                    '    expect: { action: tempfail, rule: many-rcpts }\n',
            );
            const broken = await rec.until(failed);
            assert.ok('error' in broken);
            assert.deepEqual(
                broken.error.issues.map((i) => `${path.basename(i.file)}:${i.line}:${i.col}`),
                ['99-aliases.yaml:6:62'],
            );
            fs.rmSync(path.join(dir, '99-aliases.yaml'));
            ok(await rec.until(decides('192.0.2.1', 'reject')));
        } finally {
            watcher.close();
        }
    });

    it('follows a rules folder swapped by rename, again and again, without piling up watchers', async () => {
        const parent = tempDir();
        const dir = path.join(parent, 'rules');
        folderWith({ '10-nets.yaml': RULES('reject'), 'lists/nets.txt': '192.0.2.0/24\n' }, dir);
        const rec = recorder();
        const watcher = watchRuleSet(dir, { softReject: false, debounceMs: 50, onChange: rec.onChange });
        let first = 0;
        try {
            for (let i = 1; i <= 20; i++) {
                // a deploy: the new folder is renamed into place, the old one kept aside
                const next = folderWith(
                    { '10-nets.yaml': RULES('reject'), 'lists/nets.txt': `10.0.${i}.0/24\n` },
                    path.join(parent, 'rules.new'),
                );
                fs.renameSync(dir, path.join(parent, `rules.old-${i}`));
                fs.renameSync(next, dir);
                ok(await rec.until(decides(`10.0.${i}.1`, 'reject')));
                // then an edit in the folder now in place
                fs.appendFileSync(path.join(dir, 'lists', 'nets.txt'), `10.1.${i}.0/24\n`);
                ok(await rec.until(decides(`10.1.${i}.1`, 'reject')));
                if (i === 1) first = inotifyWatches();
            }
            // the folders renamed aside are no longer watched: as many watches as after the first swap
            assert.ok(first > 0);
            assert.equal(inotifyWatches(), first);
        } finally {
            watcher.close();
        }
    });

    it('follows a list file that is a symlink when its target is replaced by rename', async () => {
        const feed = folderWith({ 'nets.txt': '192.0.2.0/24\n' });
        const dir = folderWith({ '10-nets.yaml': RULES('reject') });
        fs.mkdirSync(path.join(dir, 'lists'));
        fs.symlinkSync(path.join(feed, 'nets.txt'), path.join(dir, 'lists', 'nets.txt'));
        const rec = recorder();
        const watcher = watchRuleSet(dir, { softReject: false, debounceMs: 50, onChange: rec.onChange });
        try {
            replaceFile(path.join(feed, 'nets.txt'), '203.0.113.0/24\n');
            const set = ok(await rec.until(decides('203.0.113.1', 'reject')));
            assert.equal(set.decide('connect', { 'client.ip': '192.0.2.1' }).action, 'accept');
        } finally {
            watcher.close();
        }
    });

    it('follows a release link above the rules folder (current -> releases/vN) swapped to another release', async () => {
        const base = tempDir();
        folderWith(
            { '10-nets.yaml': RULES('reject'), 'lists/nets.txt': '192.0.2.0/24\n' },
            path.join(base, 'releases/v1/rules'),
        );
        folderWith(
            { '10-nets.yaml': RULES('reject'), 'lists/nets.txt': '198.51.100.0/24\n' },
            path.join(base, 'releases/v2/rules'),
        );
        fs.symlinkSync('releases/v1', path.join(base, 'current'));
        const dir = path.join(base, 'current', 'rules');
        const rec = recorder();
        const watcher = watchRuleSet(dir, { softReject: false, debounceMs: 50, pollMs: 100, onChange: rec.onChange });
        try {
            // a deploy: the link is pointed at the new release by renaming a new link over it
            fs.symlinkSync('releases/v2', path.join(base, 'current.new'));
            fs.renameSync(path.join(base, 'current.new'), path.join(base, 'current'));
            const set = ok(await rec.until(decides('198.51.100.1', 'reject')));
            assert.equal(set.decide('connect', { 'client.ip': '192.0.2.1' }).action, 'accept');
            // then an edit in the release now in place
            fs.appendFileSync(path.join(base, 'releases/v2/rules/lists/nets.txt'), '203.0.113.0/24\n');
            ok(await rec.until(decides('203.0.113.1', 'reject')));
        } finally {
            watcher.close();
        }
    });

    it('reloads when the missing target of a rules link appears', async () => {
        const base = tempDir();
        folderWith({ '10-nets.yaml': RULES('reject'), 'lists/nets.txt': '192.0.2.0/24\n' }, path.join(base, 'v1'));
        fs.symlinkSync('v1', path.join(base, 'rules'));
        const dir = path.join(base, 'rules');
        const rec = recorder();
        const watcher = watchRuleSet(dir, { softReject: false, debounceMs: 50, pollMs: 100, onChange: rec.onChange });
        try {
            // the link pointed at a release not there yet: the reload fails, the caller keeps its rules
            fs.symlinkSync('v2', path.join(base, 'rules.new'));
            fs.renameSync(path.join(base, 'rules.new'), dir);
            await rec.until(failed);
            // the release arrives: reloaded without a SIGHUP
            folderWith(
                { '10-nets.yaml': RULES('reject'), 'lists/nets.txt': '198.51.100.0/24\n' },
                path.join(base, 'v2.tmp'),
            );
            fs.renameSync(path.join(base, 'v2.tmp'), path.join(base, 'v2'));
            ok(await rec.until(decides('198.51.100.1', 'reject')));
        } finally {
            watcher.close();
        }
    });

    it('starts watching a lists folder created after the watcher', async () => {
        const dir = folderWith({ '10-rules.yaml': 'rules: []\n' });
        const rec = recorder();
        const watcher = watchRuleSet(dir, { softReject: false, debounceMs: 50, onChange: rec.onChange });
        try {
            fs.mkdirSync(path.join(dir, 'lists'));
            fs.writeFileSync(path.join(dir, 'lists', 'nets.txt'), '192.0.2.0/24\n');
            fs.writeFileSync(path.join(dir, '10-rules.yaml'), RULES('reject'));
            ok(await rec.until(decides('192.0.2.1', 'reject')));
            fs.writeFileSync(path.join(dir, 'lists', 'nets.txt'), '203.0.113.0/24\n');
            const set = ok(await rec.until(decides('203.0.113.1', 'reject')));
            assert.equal(set.decide('connect', { 'client.ip': '192.0.2.1' }).action, 'accept');
        } finally {
            watcher.close();
        }
    });
});
