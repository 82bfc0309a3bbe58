/**
 * Fuzzing of SMTP AUTH exchanges (RFC 4954, PLAIN RFC 4616, LOGIN) on a submission listener
 * with STARTTLS and a real users file (fast-check; seed and budget from test/helpers/fuzz.ts:
 * MW_FUZZ_SEED=<n> replays, MW_FUZZ_RUNS scales). Each run is one connection, with or without
 * STARTTLS, and one to four AUTH exchanges: PLAIN or LOGIN in any case, unknown mechanisms,
 * with or without an initial response, `=` (empty), `*` (cancel) at any step, base64 garbage,
 * overlong lines, an authorization identity other than the login, wrong passwords, unknown
 * logins, NULs and UTF-8 in the credentials. Invariants:
 *   - 235 exactly for an intact exchange of the valid login over TLS, once per session;
 *     before STARTTLS every AUTH is refused; every other answer is a 334 challenge or a reply
 *     with an enhanced code of its class; the third failure closes the session with 421;
 *   - no login state leaks: after any failed or cancelled exchange (a LOGIN whose user name was
 *     accepted included) MAIL FROM is refused with 530 until a 235, and accepted after it;
 *   - nothing is logged at error level, nothing throws, no password appears in the log.
 * The lockout counters are off here (their limits are tested in test/e2e/auth-guard.test.ts),
 * so a valid login is never refused by them. Budget: 80 sessions (about 10 s).
 */
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import bcrypt from 'bcryptjs';
import fc from 'fast-check';
import { startApp, type TestApp } from '../helpers/app.ts';
import { fuzzSettings } from '../helpers/fuzz.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { smtpConnect, type SmtpClient, type SmtpReply } from '../helpers/smtp-client.ts';
import { createTestCertificate, type TestCertificate } from '../helpers/tls-cert.ts';

const RUNS = 80;
const LOGIN = 'alice@example.test';
const PASSWORD = 'correct horse \u00e9t\u00e9';

const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');

interface Credentials {
    readonly authz: string;
    readonly user: string;
    readonly password: string;
}

/** What may happen to one client response of the exchange. */
type Damage = 'none' | 'cancel' | 'garbage' | 'empty' | 'overlong' | 'spaces';

interface Exchange {
    readonly mechanism: string;
    readonly initial: boolean;
    readonly credentials: Credentials;
    readonly damage: readonly Damage[];
}

const credentials: fc.Arbitrary<Credentials> = fc.record({
    authz: fc.oneof(
        { weight: 4, arbitrary: fc.constant('') },
        fc.constantFrom(LOGIN, 'bob@example.test', 'ALICE@example.test'),
    ),
    user: fc.oneof(
        { weight: 4, arbitrary: fc.constant(LOGIN) },
        fc.constantFrom('mallory@example.test', 'alice', 'Alice@Example.Test', '', 'a\0b'),
    ),
    password: fc.oneof(
        { weight: 4, arbitrary: fc.constant(PASSWORD) },
        fc.constantFrom('wrong', '', 'correct horse ete', `${PASSWORD}\0`, 'x'.repeat(2000)),
        fc.string({ maxLength: 12 }),
    ),
});
const damage = fc.oneof(
    { weight: 8, arbitrary: fc.constant<Damage>('none') },
    fc.constantFrom<Damage>('cancel', 'garbage', 'empty', 'overlong', 'spaces'),
);
const exchange: fc.Arbitrary<Exchange> = fc.record({
    mechanism: fc.oneof(
        { weight: 6, arbitrary: fc.mixedCase(fc.constantFrom('PLAIN', 'LOGIN')) },
        fc.constantFrom('CRAM-MD5', 'XOAUTH2', 'PLAINX', ''),
    ),
    initial: fc.boolean(),
    credentials,
    damage: fc.array(damage, { minLength: 2, maxLength: 2 }),
});
const session = fc.record({
    tls: fc.oneof({ weight: 4, arbitrary: fc.constant(true) }, fc.constant(false)),
    exchanges: fc.array(exchange, { minLength: 1, maxLength: 4 }),
});

/** The client's responses for an exchange, in order, before damage. */
function responses(ex: Exchange): string[] {
    const { authz, user, password } = ex.credentials;
    if (ex.mechanism.toUpperCase() === 'LOGIN') return [b64(user), b64(password)];
    return [b64(`${authz}\0${user}\0${password}`)];
}

function damaged(response: string, d: Damage): string {
    switch (d) {
        case 'none':
            return response;
        case 'cancel':
            return '*';
        case 'garbage':
            return `${response.slice(0, 3)}!$${response.slice(3)}`;
        case 'empty':
            return '=';
        case 'overlong':
            return b64('y'.repeat(30_000));
        case 'spaces':
            return ` ${response} `;
    }
}

/** True when this exchange, sent intact over TLS, must log in. */
function isValid(ex: Exchange): boolean {
    const mech = ex.mechanism.toUpperCase();
    if (mech !== 'PLAIN' && mech !== 'LOGIN') return false;
    const steps = responses(ex).length;
    // white space around a response is trimmed (smtp-server does; harmless: the credentials decide)
    if (ex.damage.slice(0, steps).some((d) => d !== 'none' && d !== 'spaces')) return false;
    const { authz, user, password } = ex.credentials;
    // logins compare without regard to case; PLAIN with an empty authcid names the login in authzid
    const login = (mech === 'PLAIN' && user === '' ? authz : user).toLowerCase();
    const sameAuthz = mech === 'LOGIN' || authz === '' || authz.toLowerCase() === login;
    return login === LOGIN && password === PASSWORD && sameAuthz;
}

const ENHANCED = /^([245])\.\d{1,3}\.\d{1,3}(?: |$)/;

function assertReply(r: SmtpReply, what: string): void {
    assert.match(r.raw, /^(\d{3}[ -][\x20-\x7e]*\r\n)+$/, `${what}: well formed`);
    if (r.code === 334) return;
    for (const l of r.lines) {
        const m = ENHANCED.exec(l);
        assert.ok(m && m[1] === String(r.code)[0], `${what}: "${r.code} ${l}" carries an enhanced code of its class`);
    }
}

describe('AUTH exchange fuzzing on a submission listener', () => {
    let cert: TestCertificate;
    let up: ScriptedUpstream;
    let mw: TestApp;
    before(async () => {
        cert = await createTestCertificate();
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'] });
        const users = join(cert.dir, 'users.yaml');
        // bcrypt at its lowest accepted cost keeps each check cheap; the exchange is what is fuzzed
        writeFileSync(users, `users:\n  - login: ${LOGIN}\n    password: '${bcrypt.hashSync(PASSWORD, 4)}'\n`, {
            mode: 0o600,
        });
        const rules = join(cert.dir, 'rules');
        mkdirSync(rules);
        // no rules on purpose: an empty folder is refused
        writeFileSync(join(rules, '00-none.yaml'), 'rules: []\n');
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                `rules: "${rules}"`,
                `tls: { cert: "${cert.certPath}", key: "${cert.keyPath}" }`,
                `auth: { users: "${users}", lockout: { perIp: false, perLogin: false } }`,
                'listeners: [{ name: submission, host: 127.0.0.1, port: 0, mode: submission }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw.stop();
        await up.close();
        cert.cleanup();
    });

    it('logs in only with the valid login over TLS, answers everything else from the table, leaks nothing', async (t) => {
        const settings = fuzzSettings(t, RUNS);
        const stats = { sessions: 0, exchanges: 0, logins: 0, closed421: 0 };
        let run = 0;
        await fc.assert(
            fc.asyncProperty(session, async (s) => {
                run++;
                stats.sessions++;
                const c: SmtpClient = await smtpConnect(mw.port(), { localAddress: `127.11.${run % 250}.1` });
                let loggedIn = false;
                let failures = 0;
                try {
                    await c.greeting();
                    await c.cmd('EHLO laptop.example');
                    if (s.tls) {
                        assert.equal((await c.starttls({ rejectUnauthorized: false })).code, 220);
                        await c.cmd('EHLO laptop.example');
                    }
                    for (const ex of s.exchanges) {
                        if (c.closed) break;
                        stats.exchanges++;
                        const steps = responses(ex);
                        const mech = ex.mechanism;
                        const first = ex.initial ? `AUTH ${mech} ${damaged(steps[0]!, ex.damage[0]!)}` : `AUTH ${mech}`;
                        let r = await c.cmd(first.trimEnd());
                        assertReply(r, first.slice(0, 40));
                        let step = ex.initial ? 1 : 0;
                        while (r.code === 334) {
                            const next = step < steps.length ? damaged(steps[step]!, ex.damage[step]!) : '*';
                            step++;
                            r = await c.cmd(next);
                            assertReply(r, `response ${step}`);
                        }
                        const valid = s.tls && !loggedIn && isValid(ex);
                        if (r.code === 235) {
                            assert.ok(valid, `235 for ${JSON.stringify(ex)} (tls ${s.tls}, logged in ${loggedIn})`);
                            loggedIn = true;
                            stats.logins++;
                        } else {
                            assert.ok(!valid, `${r.raw.trim()} for a valid login ${JSON.stringify(ex)}`);
                            if (r.code === 535) failures++;
                        }
                        if (r.code === 421) {
                            stats.closed421++;
                            await c.waitClosed(5_000);
                            break;
                        }
                        // the login state after this exchange is exactly what the replies said
                        const mail = await c.cmd(`MAIL FROM:<${LOGIN}>`);
                        assertReply(mail, 'MAIL');
                        assert.equal(mail.code, loggedIn ? 250 : 530, mail.raw);
                        if (mail.code === 250) assert.equal((await c.cmd('RSET')).code, 250);
                    }
                    assert.ok(failures <= 3, 'at most three failed logins in one session');
                } finally {
                    c.close();
                }
            }),
            settings,
        );
        const errors = mw.logs.filter((l) => typeof l.level === 'number' && l.level >= 50);
        assert.deepEqual(errors, [], 'nothing logged at error level');
        assert.ok(!mw.lines.some((l) => l.includes(PASSWORD) || l.includes(b64(PASSWORD))), 'no password logged');
        t.diagnostic(JSON.stringify(stats));
        assert.ok(stats.logins > 0 && stats.logins < stats.exchanges);
    });
});

describe('regressions found by the AUTH fuzzer', () => {
    let cert: TestCertificate;
    let up: ScriptedUpstream;
    let mw: TestApp;
    before(async () => {
        cert = await createTestCertificate();
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'] });
        const users = join(cert.dir, 'users.yaml');
        writeFileSync(
            users,
            `users:\n  - login: ${LOGIN}\n    password: '${bcrypt.hashSync(PASSWORD, 4)}'\n  - login: bob@example.test\n    password: '${bcrypt.hashSync('bobs secret', 4)}'\n`,
            { mode: 0o600 },
        );
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                `tls: { cert: "${cert.certPath}", key: "${cert.keyPath}" }`,
                `auth: { users: "${users}", lockout: { perIp: false, perLogin: false, perSession: 100 } }`,
                'listeners: [{ name: submissions, host: 127.0.0.1, port: 0, mode: submission, tls: implicit }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw.stop();
        await up.close();
        cert.cleanup();
    });

    async function connect(): Promise<SmtpClient> {
        const c = await smtpConnect(mw.port(), { tls: 'implicit', localAddress: '127.11.251.1' });
        await c.greeting();
        await c.cmd('EHLO laptop.example');
        return c;
    }

    // seed 8: a PLAIN response with `!$` inside was decoded by skipping the bad characters and
    // logged in; RFC 4954 section 4 requires 501 for a response that cannot be base64-decoded
    it('refuses a response that is not base64 with 501 5.5.2, as initial response and in the exchange', async () => {
        const token = b64(`\0${LOGIN}\0${PASSWORD}`);
        const garbage = `${token.slice(0, 3)}!$${token.slice(3)}`;
        const c = await connect();
        try {
            const ir = await c.cmd(`AUTH PLAIN ${garbage}`);
            assert.equal(ir.code, 501, ir.raw);
            assert.match(ir.text, /^5\.5\.2 .*base64/);
            assert.equal((await c.cmd('AUTH PLAIN')).code, 334);
            const cont = await c.cmd(garbage);
            assert.equal(cont.code, 501, cont.raw);
            assert.equal((await c.cmd('AUTH LOGIN')).code, 334);
            assert.equal((await c.cmd(`${b64(LOGIN)}#`)).code, 501, 'a LOGIN user name');
            assert.equal((await c.cmd(`AUTH LOGIN ${b64(LOGIN)}`)).code, 334);
            assert.equal((await c.cmd(`${b64(PASSWORD).slice(0, 5)}*${b64(PASSWORD).slice(5)}`)).code, 501);
            assert.equal((await c.cmd(`MAIL FROM:<${LOGIN}>`)).code, 530, 'not logged in');
            assert.equal((await c.cmd(`AUTH PLAIN ${token}`)).code, 235, 'the same credentials intact log in');
        } finally {
            c.close();
        }
    });

    // seed 7: PLAIN with authzid bob, authcid alice and alice's password logged in (as alice,
    // silently ignoring bob); RFC 4616 section 2 lets the server act as authzid only when the
    // authcid may, and no login may act as another here
    it('refuses PLAIN with an authorization identity other than the login, without checking the password', async () => {
        const c = await connect();
        try {
            const r = await c.cmd(`AUTH PLAIN ${b64(`bob@example.test\0${LOGIN}\0${PASSWORD}`)}`);
            assert.equal(r.code, 535, r.raw);
            assert.match(r.text, /^5\.7\.8 /);
            assert.equal((await c.cmd(`MAIL FROM:<bob@example.test>`)).code, 530);
            const same = await c.cmd(`AUTH PLAIN ${b64(`${LOGIN.toUpperCase()}\0${LOGIN}\0${PASSWORD}`)}`);
            assert.equal(same.code, 235, `the login itself as authzid is fine: ${same.raw}`);
        } finally {
            c.close();
        }
    });

    // a white space smtp-server splits the command on (it reads it as UTF-8, JavaScript's \s)
    // but a Latin-1 reading does not: the checks above were skipped and the foreign authzid logged in
    it('checks the initial response whatever white space stands before it', async () => {
        const foreign = b64(`bob@example.test\0${LOGIN}\0${PASSWORD}`);
        const token = b64(`\0${LOGIN}\0${PASSWORD}`);
        for (const space of ['\u2003', '\u00a0', '\u3000', '\t', '  ', '\u2003\t']) {
            const c = await connect();
            try {
                const r = await c.cmd(`AUTH PLAIN${space}${foreign}`);
                assert.equal(r.code, 535, `${JSON.stringify(space)}: ${r.raw}`);
                assert.match(r.text, /^5\.7\.8 /);
                const garbage = await c.cmd(`AUTH PLAIN${space}${token.slice(0, 3)}!$${token.slice(3)}`);
                assert.equal(garbage.code, 501, `${JSON.stringify(space)}: ${garbage.raw}`);
                const extra = await c.cmd(`AUTH PLAIN${space}${token}${space}more`);
                assert.notEqual(extra.code, 235, `${JSON.stringify(space)}: a second argument: ${extra.raw}`);
                assert.equal((await c.cmd(`MAIL FROM:<${LOGIN}>`)).code, 530, 'not logged in');
            } finally {
                c.close();
            }
        }
    });
});
