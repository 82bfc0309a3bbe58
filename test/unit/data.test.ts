/**
 * Line-ending handling of received messages (spool) and of forwarded ones (dot-stuffing):
 * bare LF/CR counted and normalised, header end and longest line found, memory bounded (per
 * message and for all the spools of a process together, given back in every outcome), spool
 * files removed.
 */
import assert from 'node:assert/strict';
import { chmod, mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { DotStuffer } from '../../src/data/dot-stuff.ts';
import { MessageSpool, SpoolMemory, prepareSpoolFolder, type SpoolSummary } from '../../src/data/spool.ts';

function stuff(...chunks: string[]): string {
    const d = new DotStuffer();
    const parts = chunks.map((c) => d.push(Buffer.from(c, 'latin1')));
    parts.push(d.end());
    return Buffer.concat(parts).toString('latin1');
}

async function spoolOf(chunks: string[], opts: Partial<ConstructorParameters<typeof MessageSpool>[0]> = {}) {
    const spool = new MessageSpool({
        memoryLimit: 1 << 20,
        memory: new SpoolMemory(),
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
            const spool = new MessageSpool({
                memoryLimit: 1000,
                memory: new SpoolMemory(),
                dir,
                maxSize: 1 << 20,
                maxHeaderSize: 1 << 16,
            });
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
            const spool = new MessageSpool({
                memoryLimit: 10,
                memory: new SpoolMemory(),
                dir,
                maxSize: 1 << 20,
                maxHeaderSize: 1 << 16,
            });
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

describe('MessageSpool memory shared by the process', () => {
    const LIMIT = 100_000;
    /** A canonical message of `size` bytes, different for every `tag`, cut into 8,190-byte chunks. */
    function message(tag: number, size: number): Buffer[] {
        const head = `Subject: message ${tag}\r\n\r\n`;
        const line = `${String(tag).padStart(4, '0')} ${'abcdefghijklmnopqrstuvwxyz'.repeat(3)}\r\n`; // 80 bytes
        const fill = size - head.length;
        const text = head + line.repeat(Math.floor(fill / line.length)) + 'z'.repeat(fill % line.length);
        const all = Buffer.from(text, 'latin1');
        const chunks: Buffer[] = [];
        for (let at = 0; at < all.length; at += 8190) chunks.push(all.subarray(at, at + 8190));
        return chunks;
    }
    function spoolIn(dir: string, memory: SpoolMemory, maxSize = 1 << 20): MessageSpool {
        return new MessageSpool({ memoryLimit: LIMIT, memory, dir, maxSize, maxHeaderSize: 1 << 16 });
    }

    /**
     * Checks what 12 spools, each given a message just under memoryLimit and none disposed (clients
     * that stall before their end of data), hold: at most the limit in memory together, the rest in
     * files, every message intact; returns how many stayed in memory.
     */
    async function twelve(dir: string, memory: SpoolMemory, atOnce: boolean): Promise<number> {
        const size = LIMIT - 10;
        const messages = Array.from({ length: 12 }, (_, i) => message(i, size));
        const spools = messages.map(() => spoolIn(dir, memory));
        const summaries: SpoolSummary[] = [];
        if (atOnce) {
            // their chunks interleaved, as the sessions of one process receive them
            summaries.push(...(await Promise.all(spools.map((s, i) => s.ingest(Readable.from(messages[i]!))))));
        } else {
            for (let i = 0; i < spools.length; i++)
                summaries.push(await spools[i]!.ingest(Readable.from(messages[i]!)));
        }
        const inMemory = summaries.filter((s) => !s.spilled);
        assert.ok(inMemory.length <= Math.floor(memory.limit / size), `${inMemory.length} kept in memory`);
        assert.equal(
            memory.held,
            inMemory.reduce((n, s) => n + s.size, 0),
        );
        assert.ok(memory.held <= memory.limit);
        const spilled = spools.filter((s) => s.spillReason !== null);
        assert.equal(spilled.length, 12 - inMemory.length);
        for (const s of spilled) assert.equal(s.spillReason, 'memory');
        assert.equal((await readdir(dir)).length, spilled.length, 'one file for each spilled message');
        for (let i = 0; i < spools.length; i++) {
            assert.equal(summaries[i]!.size, size);
            assert.deepEqual(await spools[i]!.readBuffer(0, size), Buffer.concat(messages[i]!), `message ${i}`);
        }
        await Promise.all(spools.map((s) => s.dispose()));
        assert.equal(memory.held, 0);
        assert.deepEqual(await readdir(dir), []);
        return inMemory.length;
    }

    it('keeps no more than its limit in memory together; the rest goes to files, every message intact', async () => {
        const dir = await mkdtemp(join(tmpdir(), 'mw-spool-'));
        try {
            const memory = new SpoolMemory(3.5 * LIMIT);
            // one after the other: as many as fit stay in memory
            assert.equal(await twelve(dir, memory, false), 3);
            // all at once: spills that overlap each hold their memory until it is written, so
            // fewer may stay in memory, never more
            await twelve(dir, memory, true);
            // what was given back is there for the next message
            const next = spoolIn(dir, memory);
            assert.equal((await next.ingest(Readable.from(message(12, LIMIT - 10)))).spilled, false);
            assert.equal(memory.held, LIMIT - 10);
            await next.dispose();
            assert.equal(memory.held, 0);
        } finally {
            await rm(dir, { recursive: true, force: true });
        }
    });

    it('gives back what a message held in memory when it spills past memoryLimit, and reads back whole', async () => {
        const dir = await mkdtemp(join(tmpdir(), 'mw-spool-'));
        try {
            const memory = new SpoolMemory();
            const chunks = message(1, 2.5 * LIMIT);
            const spool = spoolIn(dir, memory);
            const summary = await spool.ingest(Readable.from(chunks));
            assert.equal(summary.spilled, true);
            assert.equal(spool.spillReason, 'size');
            assert.equal(memory.held, 0);
            assert.deepEqual(await spool.readBuffer(0, summary.size), Buffer.concat(chunks));
            assert.deepEqual(
                await spool.readBuffer(LIMIT - 5, LIMIT + 5),
                Buffer.concat(chunks).subarray(LIMIT - 5, LIMIT + 5),
            );
            await spool.dispose();
        } finally {
            await rm(dir, { recursive: true, force: true });
        }
    });

    it('gives the memory back in every outcome: too big, the client gone, a spool file that cannot be made', async () => {
        const dir = await mkdtemp(join(tmpdir(), 'mw-spool-'));
        try {
            const memory = new SpoolMemory(LIMIT);
            const tooBig = spoolIn(dir, memory, 50_000);
            assert.equal((await tooBig.ingest(Readable.from(message(1, 60_000)))).tooBig, true);
            assert.ok(memory.held > 0);
            await tooBig.dispose();
            assert.equal(memory.held, 0);

            const chunks = message(2, 60_000);
            const gone = spoolIn(dir, memory);
            const failing = new Readable({
                read() {
                    const next = chunks.shift()!;
                    this.push(next);
                    if (chunks.length < 4) this.destroy(new Error('client went away'));
                },
            });
            await assert.rejects(gone.ingest(failing), /client went away/);
            assert.ok(memory.held > 0);
            await gone.dispose();
            assert.equal(memory.held, 0);

            // the budget is used up by one message, so the next must spill, to a folder that is gone
            const holder = spoolIn(dir, memory);
            await holder.ingest(Readable.from(message(3, LIMIT - 10)));
            const noFile = spoolIn(join(dir, 'missing'), memory);
            await assert.rejects(noFile.ingest(Readable.from(message(4, 30_000))), { code: 'ENOENT' });
            await noFile.dispose();
            assert.equal(memory.held, LIMIT - 10);
            await holder.dispose();
            await holder.dispose();
            assert.equal(memory.held, 0);
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
            const spool = new MessageSpool({
                memoryLimit: 10,
                memory: new SpoolMemory(),
                dir,
                maxSize: 1 << 20,
                maxHeaderSize: 1 << 16,
            });
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
