// Tests for the Maildir upstream: delivery into new/ through tmp/, unique names,
// Return-Path first, LF line endings, and I/O failures leaving nothing behind.
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { createMaildirUpstream, maildirFileName } from '../../src/upstream/maildir.ts';
import type { ClientIdentity } from '../../src/types.ts';
import { UpstreamError } from '../../src/upstream/types.ts';

const CLIENT: ClientIdentity = {
    ip: '192.0.2.10',
    port: 41000,
    ptr: null,
    helo: 'client.example.net',
    proto: 'ESMTP',
    login: null,
};

const NAME = /^\d+\.M\d+P\d+Q\d+\.mx\.example\.test$/;

function upstreamError(kind: string): (err: unknown) => boolean {
    return (err: unknown) => {
        assert.ok(err instanceof UpstreamError, `expected UpstreamError, got ${String(err)}`);
        assert.equal(err.kind, kind, err.message);
        return true;
    };
}

describe('Maildir upstream', () => {
    let root: string;
    let n = 0;
    before(() => {
        root = mkdtempSync(join(tmpdir(), 'mailwarden-maildir-'));
    });
    after(() => rmSync(root, { recursive: true, force: true }));

    /** A fresh Maildir path that does not exist yet. */
    const freshPath = (): string => join(root, `box${++n}`);

    async function deliver(path: string, sender: string, message: Readable | string) {
        const upstream = createMaildirUpstream({ path, hostname: 'mx.example.test' });
        const session = await upstream.open(CLIENT);
        assert.equal((await session.mailFrom(sender, {})).code, 250);
        assert.equal((await session.rcptTo('rcpt@example.com')).code, 250);
        const reply = await session.data(typeof message === 'string' ? Readable.from([Buffer.from(message)]) : message);
        await session.close();
        return reply;
    }

    it('writes the message into new/ with Return-Path first and nothing left in tmp/', async () => {
        const path = freshPath();
        const reply = await deliver(path, 'sender@example.org', 'Subject: hi\r\n\r\nbody\r\n.dot line\r\n');
        assert.equal(reply.code, 250);
        assert.equal(reply.enhanced, '2.0.0');
        const files = readdirSync(join(path, 'new'));
        assert.equal(files.length, 1);
        const [file] = files as [string];
        assert.match(file, NAME);
        assert.match(reply.text, new RegExp(`queued as ${file.replaceAll('.', '\\.')}$`));
        assert.equal(
            readFileSync(join(path, 'new', file), 'latin1'),
            'Return-Path: <sender@example.org>\nSubject: hi\n\nbody\n.dot line\n',
        );
        assert.deepEqual(readdirSync(join(path, 'tmp')), []);
        assert.deepEqual(readdirSync(join(path, 'cur')), []);
    });

    it('gives every message a unique name', async () => {
        const path = freshPath();
        await Promise.all(
            Array.from({ length: 25 }, (_, i) => deliver(path, 's@example.org', `Subject: ${i}\r\n\r\n`)),
        );
        const files = readdirSync(join(path, 'new'));
        assert.equal(files.length, 25);
        assert.equal(new Set(files).size, 25);
        for (const f of files) assert.match(f, NAME);
        assert.deepEqual(readdirSync(join(path, 'tmp')), []);
    });

    it('writes <> for the null sender and writes every line ending as LF', async () => {
        const path = freshPath();
        await deliver(path, '', Readable.from([Buffer.from('a\nb\r'), Buffer.from('c\r'), Buffer.from('\nlast')]));
        const [file] = readdirSync(join(path, 'new')) as [string];
        assert.equal(readFileSync(join(path, 'new', file), 'latin1'), 'Return-Path: <>\na\nb\nc\nlast\n');
    });

    it('escapes / and : of the host name in file names', () => {
        assert.match(maildirFileName('a/b:c'), /\.a\\057b\\072c$/);
    });

    it('refuses CR or LF in the sender (no header injection)', async () => {
        const session = await createMaildirUpstream({ path: freshPath(), hostname: 'mx.example.test' }).open(CLIENT);
        await assert.rejects(session.mailFrom('a@example.org>\r\nX-Evil: 1', {}), upstreamError('protocol'));
    });

    it('fails with kind io and removes the tmp file when the source fails', async () => {
        const path = freshPath();
        async function* failing() {
            yield Buffer.from('Subject: partial\r\n\r\n');
            await new Promise((resolve) => setTimeout(resolve, 10));
            throw new Error('client went away');
        }
        await assert.rejects(deliver(path, 's@example.org', Readable.from(failing())), upstreamError('io'));
        assert.deepEqual(readdirSync(join(path, 'tmp')), []);
        assert.deepEqual(readdirSync(join(path, 'new')), []);
    });

    it('fails with kind io when the folder cannot be written', async () => {
        const blocker = join(root, 'not-a-folder');
        writeFileSync(blocker, 'x');
        const path = join(blocker, 'Maildir');
        await assert.rejects(deliver(path, 's@example.org', 'x\r\n'), upstreamError('io'));
        await assert.rejects(createMaildirUpstream({ path, hostname: 'mx.example.test' }).probe(), upstreamError('io'));
    });

    it('probe creates the folders and leaves no file behind', async () => {
        const path = freshPath();
        const upstream = createMaildirUpstream({ path, hostname: 'mx.example.test' });
        await upstream.probe();
        assert.equal(upstream.description, `maildir:${path}`);
        for (const sub of ['tmp', 'new', 'cur']) assert.deepEqual(readdirSync(join(path, sub)), []);
    });

    it('answers 554 to DATA without recipients', async () => {
        const session = await createMaildirUpstream({ path: freshPath(), hostname: 'mx.example.test' }).open(CLIENT);
        await session.mailFrom('s@example.org', {});
        assert.equal((await session.data(Readable.from([Buffer.from('x')]))).code, 554);
    });
});
