/**
 * Line-ending handling of received messages (spool) and of forwarded ones (dot-stuffing):
 * bare LF/CR counted and normalised, header end and longest line found, memory bounded, spool
 * files removed.
 */
import assert from 'node:assert/strict';
import { chmod, mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { DotStuffer } from '../../src/data/dot-stuff.ts';
import { MessageSpool, prepareSpoolFolder } from '../../src/data/spool.ts';

function stuff(...chunks: string[]): string {
    const d = new DotStuffer();
    const parts = chunks.map((c) => d.push(Buffer.from(c, 'latin1')));
    parts.push(d.end());
    return Buffer.concat(parts).toString('latin1');
}

async function spoolOf(chunks: string[], opts: Partial<ConstructorParameters<typeof MessageSpool>[0]> = {}) {
    const spool = new MessageSpool({
        memoryLimit: 1 << 20,
        dir: join(tmpdir(), 'mw-spool-unused'),
        maxSize: 1 << 20,
        maxHeaderSize: 1 << 16,
        ...opts,
    });
    const summary = await spool.ingest(Readable.from(chunks.map((c) => Buffer.from(c, 'latin1'))));
    const body = (await spool.readBuffer(0, summary.size)).toString('latin1');
    await spool.dispose();
    return { summary, body };
}

describe('DotStuffer', () => {
    it('stuffs leading dots and terminates', () => {
        assert.equal(stuff('.a\r\nb\r\n..c\r\n'), '..a\r\nb\r\n...c\r\n.\r\n');
    });
    it('closes an unterminated last line', () => {
        assert.equal(stuff('abc'), 'abc\r\n.\r\n');
    });
    it('writes an empty message as the terminator alone', () => {
        assert.equal(stuff(), '.\r\n');
    });
    it('turns bare LF and bare CR into CRLF, so no smuggled terminator survives', () => {
        assert.equal(stuff('hello\n.\r\nMAIL FROM:<x>\r'), 'hello\r\n..\r\nMAIL FROM:<x>\r\n.\r\n');
        assert.equal(stuff('a\r.\rb'), 'a\r\n..\r\nb\r\n.\r\n');
    });
    it('keeps a CRLF split across chunks intact', () => {
        assert.equal(stuff('a\r', '\n.b\r\n'), 'a\r\n..b\r\n.\r\n');
    });
});

describe('MessageSpool', () => {
    it('counts bare LF and bare CR and stores canonical CRLF', async () => {
        const { summary, body } = await spoolOf(['Subject: x\r\n\r\nline1\nline2\rline3\r\n']);
        assert.equal(summary.bareLf, 1);
        assert.equal(summary.bareCr, 1);
        assert.equal(body, 'Subject: x\r\n\r\nline1\r\nline2\r\nline3\r\n');
    });
    it('sees a CRLF split across chunks as one line ending', async () => {
        const { summary } = await spoolOf(['a: b\r', '\n\r', '\nbody\r', '\n']);
        assert.equal(summary.bareLf + summary.bareCr, 0);
        assert.equal(summary.headerLength, 'a: b\r\n'.length);
    });
    it('counts a trailing lone CR as bare', async () => {
        const { summary } = await spoolOf(['x\r']);
        assert.equal(summary.bareCr, 1);
    });
    it('finds the end of the header section', async () => {
        const msg = 'From: a@b\r\nTo: c@d\r\n\r\nbody\r\n';
        const { summary } = await spoolOf([msg]);
        assert.equal(summary.headerLength, 'From: a@b\r\nTo: c@d\r\n'.length);
    });
    it('treats a message without an empty line as all header', async () => {
        const { summary } = await spoolOf(['From: a@b\r\n']);
        assert.equal(summary.headerLength, summary.size);
    });
    it('reports the longest line, CRLF excluded, however the chunks cut it and whatever their line endings', async () => {
        const long = 'a'.repeat(999);
        const cases: [string, string[], number][] = [
            ['one CRLF chunk', [`S: x\r\n\r\n${long}\r\nshort\r\n`], 999],
            ['998 exactly', [`S: x\r\n\r\n${'b'.repeat(998)}\r\n`], 998],
            ['a line across CRLF chunks', ['S: x\r\n\r\naaa', 'a'.repeat(500), `${'a'.repeat(496)}\r\nok\r\n`], 999],
            ['a CRLF split across chunks', [`S: x\r\n\r\n${long}\r`, '\nok\r\n'], 999],
            ['bare LF endings (the copying path)', [`S: x\n\n${long}\nok\n`], 999],
            ['a NUL byte, which is not stored', [`S: x\r\n\r\n${long}\0\r\n`], 999],
            ['a last line without CRLF', ['S: x\r\n\r\nok\r\n', long], 999],
        ];
        for (const [what, chunks, longest] of cases) {
            assert.equal((await spoolOf(chunks)).summary.longestLine, longest, what);
        }
    });
    it('flags oversized messages but drains them', async () => {
        const { summary } = await spoolOf(['x'.repeat(100), 'y'.repeat(100)], { maxSize: 150 });
        assert.equal(summary.tooBig, true);
        assert.equal(summary.receivedBytes, 200);
    });
    it('flags an oversized header section', async () => {
        const { summary } = await spoolOf(['X-Long: ' + 'a'.repeat(500) + '\r\n\r\nbody'], { maxHeaderSize: 100 });
        assert.equal(summary.headerLength, -1);
    });
    it('spills to a file past the memory limit and removes it on dispose', async () => {
        const dir = await mkdtemp(join(tmpdir(), 'mw-spool-'));
        try {
            const spool = new MessageSpool({ memoryLimit: 1000, dir, maxSize: 1 << 20, maxHeaderSize: 1 << 16 });
            const chunks = Array.from({ length: 50 }, (_, i) => Buffer.from(`line ${i} ${'z'.repeat(90)}\r\n`));
            const summary = await spool.ingest(Readable.from(chunks));
            assert.equal(summary.spilled, true);
            assert.equal((await readdir(dir)).length, 1);
            const all = await spool.readBuffer(0, summary.size);
            assert.deepEqual(all, Buffer.concat(chunks));
            const middle = await spool.readBuffer(950, 1100);
            assert.deepEqual(middle, Buffer.concat(chunks).subarray(950, 1100));
            await spool.dispose();
            assert.deepEqual(await readdir(dir), []);
        } finally {
            await rm(dir, { recursive: true, force: true });
        }
    });
    it('rejects when the stream fails and leaves nothing behind after dispose', async () => {
        const dir = await mkdtemp(join(tmpdir(), 'mw-spool-'));
        try {
            const spool = new MessageSpool({ memoryLimit: 10, dir, maxSize: 1 << 20, maxHeaderSize: 1 << 16 });
            const failing = new Readable({
                read() {
                    this.push(Buffer.from('0123456789abcdef'));
                    this.destroy(new Error('client went away'));
                },
            });
            await assert.rejects(spool.ingest(failing), /client went away/);
            await spool.dispose();
            assert.deepEqual(await readdir(dir), []);
        } finally {
            await rm(dir, { recursive: true, force: true });
        }
    });
});

describe('spool folder', () => {
    it('is created with mode 0700, and a looser existing folder is tightened', async () => {
        const parent = await mkdtemp(join(tmpdir(), 'mw-spool-'));
        try {
            const dir = join(parent, 'a', 'spool');
            await prepareSpoolFolder(dir);
            assert.equal((await stat(dir)).mode & 0o777, 0o700);
            await chmod(dir, 0o755);
            await prepareSpoolFolder(dir);
            assert.equal((await stat(dir)).mode & 0o777, 0o700);
        } finally {
            await rm(parent, { recursive: true, force: true });
        }
    });

    it('refuses a path that is a file', async () => {
        const parent = await mkdtemp(join(tmpdir(), 'mw-spool-'));
        try {
            await writeFile(join(parent, 'f'), '');
            await assert.rejects(prepareSpoolFolder(join(parent, 'f')));
        } finally {
            await rm(parent, { recursive: true, force: true });
        }
    });

    it('removes the files of processes that no longer run, and only those', async () => {
        const dir = await mkdtemp(join(tmpdir(), 'mw-spool-'));
        try {
            await mkdir(dir, { recursive: true });
            const dead = 'mailwarden-999999-0badc0de-0123456789abcdef.eml';
            const alive = 'mailwarden-4242-0badc0de-0123456789abcdef.eml';
            // our own PID, but written by an earlier process (a restarted container is PID 1 again)
            const reused = `mailwarden-${process.pid}-00000000-0123456789abcdef.eml`;
            const other = 'notes.txt';
            for (const f of [dead, alive, reused, other]) await writeFile(join(dir, f), 'Subject: x\r\n\r\nbody\r\n');
            const { removed } = await prepareSpoolFolder(dir, (pid) => pid === 4242);
            assert.equal(removed, 2);
            assert.deepEqual((await readdir(dir)).sort(), [alive, other].sort());
        } finally {
            await rm(dir, { recursive: true, force: true });
        }
    });

    it('keeps the files of this process', async () => {
        const dir = await mkdtemp(join(tmpdir(), 'mw-spool-'));
        try {
            const spool = new MessageSpool({ memoryLimit: 10, dir, maxSize: 1 << 20, maxHeaderSize: 1 << 16 });
            await spool.ingest(Readable.from([Buffer.from('Subject: x\r\n\r\n' + 'y'.repeat(100))]));
            assert.equal((await prepareSpoolFolder(dir, () => false)).removed, 0);
            assert.equal((await readdir(dir)).length, 1);
            await spool.dispose();
        } finally {
            await rm(dir, { recursive: true, force: true });
        }
    });
});

describe('MessageSpool NUL handling', () => {
    it('counts and drops NUL bytes', async () => {
        const { summary, body } = await spoolOf(['a\r\n\x00.\r\nb\r\n']);
        assert.equal(summary.nul, 1);
        assert.equal(body, 'a\r\n.\r\nb\r\n');
    });
});
