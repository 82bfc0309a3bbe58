// Password hashes: argon2id written and verified, bcrypt $2a$/$2b$/$2y$ verified, formats
// recognised or refused (plaintext, other schemes, absurd costs), the dummy hash's cost, and
// the verification semaphore.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'node:test';
import bcrypt from 'bcryptjs';
import {
    costKey,
    hashPassword,
    inspectHash,
    makeDummyHash,
    Semaphore,
    verifyPassword,
} from '../../src/submission/hashes.ts';

describe('password hashes', () => {
    it('writes argon2id with the OWASP parameters and verifies it', async () => {
        const hash = await hashPassword('correct horse');
        assert.match(hash, /^\$argon2id\$v=19\$m=19456,t=2,p=1\$/);
        assert.equal(await verifyPassword(hash, 'correct horse'), true);
        assert.equal(await verifyPassword(hash, 'correct horsE'), false);
        assert.equal(await verifyPassword(hash, ''), false);
        assert.deepEqual(inspectHash(hash), {
            kind: 'argon2',
            variant: 'argon2id',
            memoryCost: 19456,
            timeCost: 2,
            parallelism: 1,
        });
    });

    it('verifies non-ASCII passwords as UTF-8', async () => {
        const hash = await hashPassword('pässwörd ✓');
        assert.equal(await verifyPassword(hash, 'pässwörd ✓'), true);
        assert.equal(await verifyPassword(hash, 'passwort ✓'), false);
    });

    for (const prefix of ['$2a$', '$2b$', '$2y$']) {
        it(`verifies bcrypt ${prefix} hashes`, async () => {
            const hash = bcrypt.hashSync('s3cret', 4).replace(/^\$2[aby]\$/, prefix);
            assert.deepEqual(inspectHash(hash), { kind: 'bcrypt', cost: 4 });
            assert.equal(await verifyPassword(hash, 's3cret'), true);
            assert.equal(await verifyPassword(hash, 's3creT'), false);
        });
    }

    it('refuses plaintext, other schemes and damaged hashes', () => {
        for (const value of [
            'secret',
            'hunter2',
            '{PLAIN}secret',
            '{SHA512-CRYPT}$6$abc$def',
            '$6$salt$hash',
            '$1$x$y',
            '',
        ]) {
            const info = inspectHash(value);
            assert.equal(info.kind, null, value);
        }
        assert.match((inspectHash('secret') as { problem: string }).problem, /plaintext passwords are refused/);
        assert.equal(inspectHash('$argon2id$v=19$m=19456,t=2,p=1$short').kind, null);
        assert.equal(inspectHash('$2b$10$tooshort').kind, null);
    });

    it('recognises a hash in time linear in its length (no backtracking over parameters)', () => {
        // Run apart: an exponential pattern would block this process's event loop, and no timeout could stop it.
        const code = `
            import { inspectHash } from ${JSON.stringify(new URL('../../src/submission/hashes.ts', import.meta.url).href)};
            const start = Date.now();
            const r = inspectHash('$argon2id$v=19$m=65536,t=3,p=4' + ',a='.repeat(30) + '$');
            const extra = inspectHash('$argon2id$v=19$m=65536,t=3,p=4,data=abc$c2FsdHNhbHQ$aGFzaGhhc2g');
            console.log(JSON.stringify({ kind: r.kind, extra: extra.kind, ms: Date.now() - start }));
        `;
        const child = spawnSync(process.execPath, ['--input-type=module', '-e', code], {
            encoding: 'utf8',
            timeout: 5000,
        });
        assert.equal(child.signal, null, 'still matching after 5 s');
        assert.equal(child.status, 0, child.stderr);
        const out = JSON.parse(child.stdout) as { kind: string | null; extra: string | null; ms: number };
        assert.equal(out.kind, null);
        assert.equal(out.extra, 'argon2');
        assert.ok(out.ms < 1000, `${out.ms} ms`);
    });

    it('refuses costs a login must not have', () => {
        const huge = '$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g';
        assert.match((inspectHash(huge) as { problem: string }).problem, /beyond what one login may cost/);
        const slow = bcrypt.hashSync('x', 4).replace(/^\$2b\$04\$/, '$2b$20$');
        assert.match((inspectHash(slow) as { problem: string }).problem, /bcrypt cost 20/);
    });

    it('makes dummy hashes with the cost of a reference hash', async () => {
        const bc = await makeDummyHash({ kind: 'bcrypt', cost: 5 });
        assert.equal(costKey(inspectHash(bc)), 'bcrypt:5');
        const ar = await makeDummyHash({
            kind: 'argon2',
            variant: 'argon2id',
            memoryCost: 8192,
            timeCost: 3,
            parallelism: 1,
        });
        assert.equal(costKey(inspectHash(ar)), 'argon2:8192,3,1');
        assert.equal(costKey(inspectHash(await makeDummyHash(null))), 'argon2:19456,2,1');
    });
});

describe('Semaphore', () => {
    it('runs at most max tasks at once, queues up to maxQueue, refuses beyond', async () => {
        const sem = new Semaphore(2, 1);
        let running = 0;
        let peak = 0;
        const gates: (() => void)[] = [];
        const task = () =>
            new Promise<string>((resolve) => {
                running++;
                peak = Math.max(peak, running);
                gates.push(() => {
                    running--;
                    resolve('done');
                });
            });
        const a = sem.run(task, 'full');
        const b = sem.run(task, 'full');
        const c = sem.run(task, 'full');
        assert.equal(await sem.run(task, 'full'), 'full', 'the fourth is refused at once');
        assert.equal(sem.running, 2);
        assert.equal(sem.queued, 1);
        gates.shift()?.();
        await a;
        await new Promise((r) => setImmediate(r));
        gates.shift()?.();
        gates.shift()?.();
        assert.deepEqual(await Promise.all([b, c]), ['done', 'done']);
        assert.equal(peak, 2);
        assert.equal(sem.running, 0);
    });

    it('frees the slot when a task throws', async () => {
        const sem = new Semaphore(1, 0);
        await assert.rejects(sem.run(() => Promise.reject(new Error('boom')), 'full'));
        assert.equal(await sem.run(() => Promise.resolve('ok'), 'full'), 'ok');
    });
});
