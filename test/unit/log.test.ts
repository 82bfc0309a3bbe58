// The log line contract: one JSON line per call, and secrets never written. A `password` or
// `pass` field at the top of a line, inside any object one level down (an error included) or in
// a child logger's bindings is written as `[redacted]`; every other field is written as given.
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { describe, it } from 'node:test';
import { createLogger, redactSecrets } from '../../src/log.ts';

function capture(): { log: ReturnType<typeof createLogger>; lines: () => Record<string, unknown>[] } {
    let text = '';
    const sink = new Writable({
        write(chunk: Buffer, _enc, cb): void {
            text += chunk.toString('utf8');
            cb();
        },
    });
    const log = createLogger('info', sink);
    const lines = (): Record<string, unknown>[] =>
        text
            .split('\n')
            .filter((l) => l !== '')
            .map((l) => JSON.parse(l) as Record<string, unknown>);
    return { log, lines };
}

describe('log lines', () => {
    it('top-level and nested secrets are censored; other fields are written as given', () => {
        const { log, lines } = capture();
        log.info(
            {
                password: 'p',
                pass: 'q',
                auth: { user: 'u', password: 'r' },
                n: 3,
                ok: true,
                none: null,
                list: [1, 'a'],
            },
            'login',
        );
        const [line] = lines();
        assert.equal(line!.password, '[redacted]');
        assert.equal(line!.pass, '[redacted]');
        assert.deepEqual(line!.auth, { user: 'u', password: '[redacted]' });
        assert.equal(line!.n, 3);
        assert.equal(line!.ok, true);
        assert.equal(line!.none, null);
        assert.deepEqual(line!.list, [1, 'a']);
        assert.equal(line!.msg, 'login');
        assert.equal(line!.service, 'mailwarden');
    });

    it('an error with a secret keeps its message and stack; the secret is censored', () => {
        const { log, lines } = capture();
        const err = Object.assign(new Error('boom'), { password: 'p', code: 7 });
        log.warn({ err }, 'failed');
        const e = lines()[0]!.err as Record<string, unknown>;
        assert.equal(e.message, 'boom');
        assert.equal(e.password, '[redacted]');
        assert.equal(e.code, 7);
        assert.equal(typeof e.stack, 'string');
        assert.equal(err.password, 'p', 'the logged object itself is not changed');
    });

    it("a child logger's bindings are censored once, on every line it writes", () => {
        const { log, lines } = capture();
        const child = log.child({ session: 's1', auth: { password: 'x' } });
        const grandchild = child.child({ pass: 'y', client: '192.0.2.1' });
        child.info('one');
        grandchild.info('two');
        const [one, two] = lines();
        assert.deepEqual(one!.auth, { password: '[redacted]' });
        assert.equal(one!.session, 's1');
        assert.equal(two!.pass, '[redacted]');
        assert.deepEqual(two!.auth, { password: '[redacted]' });
        assert.equal(two!.client, '192.0.2.1');
    });

    it('a line without secrets is passed on as it is, not copied', () => {
        const fields = { session: 's1', action: 'accept', auth: { user: 'u' }, ms: 3 };
        assert.equal(redactSecrets(fields), fields);
        const withSecret = { a: 1, auth: { password: 'p' } };
        const out = redactSecrets(withSecret);
        assert.notEqual(out, withSecret);
        assert.deepEqual(out, { a: 1, auth: { password: '[redacted]' } });
        assert.deepEqual(withSecret, { a: 1, auth: { password: 'p' } });
    });
});
