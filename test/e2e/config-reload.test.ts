/**
 * SIGHUP re-reads the config file, and no changed setting is silently ignored. The keys are
 * derived from full configs (every section written, in each of its forms), so a key added to
 * Config without an entry in SETTINGS (src/config/reload.ts) fails here, and so does a key no
 * edit below changes. Each edit changes one setting of a running app's config file, then
 * reload() must either apply it (the config in force has the new value; behaviour probes for
 * some) or name it in the warning "needs a restart: <keys>" and keep the running value.
 * Writing the file back must then leave nothing pending. An invalid file changes nothing and
 * is reported with the lines `mailwarden check` prints for it.
 */
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { stringify } from 'yaml';
import { runCheck } from '../../src/commands/check.ts';
import { loadConfig } from '../../src/config/load.ts';
import { SETTINGS } from '../../src/config/reload.ts';
import type { Config } from '../../src/config/types.ts';
import { createMemoryStore } from '../../src/limits/index.ts';
import { startApp, type TestApp } from '../helpers/app.ts';
import { startDnsServer, type DnsTestServer } from '../helpers/dns-server.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { until } from '../helpers/until.ts';
import { sendMail, smtpConnect } from '../helpers/smtp-client.ts';

const FIXTURES = path.join(import.meta.dirname, '..', 'config', 'fixtures', 'tls');

type Doc = Record<string, unknown>;
type Variant = 'A' | 'B' | 'C';

/** Supporting files for the full configs, in one folder. */
function supportFiles(dir: string): Record<string, string> {
    const files: Record<string, string> = {
        cert: 'cert.pem',
        key: 'key.pem',
        cert2: 'cert-copy.pem',
        key2: 'key-copy.pem',
        users: 'users.yaml',
        users2: 'users-2.yaml',
        sendAs: 'send-as.yaml',
        sendAs2: 'send-as-2.yaml',
        dkimKey: 'dkim-ed25519.pem',
        dkimKey2: 'dkim-ed25519-2.pem',
        dkimRsa: 'dkim-rsa.pem',
        rules: 'rules-a',
        rules2: 'rules-b',
        spool: 'spool-a',
        spool2: 'spool-b',
    };
    const at = (name: string): string => path.join(dir, files[name]!);
    fs.copyFileSync(path.join(FIXTURES, 'cert.pem'), at('cert'));
    fs.copyFileSync(path.join(FIXTURES, 'key.pem'), at('key'));
    fs.copyFileSync(path.join(FIXTURES, 'cert.pem'), at('cert2'));
    fs.copyFileSync(path.join(FIXTURES, 'key.pem'), at('key2'));
    for (const f of ['users', 'users2', 'sendAs', 'sendAs2']) fs.writeFileSync(at(f), 'users: []\n');
    const pem = (type: 'ed25519' | 'rsa'): string =>
        generateKeyPairSync(type as 'rsa', { modulusLength: 1024 }).privateKey.export({
            type: 'pkcs8',
            format: 'pem',
        }) as string;
    fs.writeFileSync(at('dkimKey'), pem('ed25519'));
    fs.writeFileSync(at('dkimKey2'), pem('ed25519'));
    fs.writeFileSync(at('dkimRsa'), pem('rsa'));
    const rule = (id: string, sender: string): string =>
        `rules:\n  - id: ${id}\n    stage: mail\n    when: { mail.from: ${sender} }\n    action: reject\n` +
        `  - id: dmarc-${id}\n    when: { dmarc.disposition: reject }\n    action: reject\n`;
    for (const [name, id, sender] of [
        ['rules', 'block-a', 'blocked@example.net'],
        ['rules2', 'block-b', 'blocked-b@example.net'],
    ] as const) {
        fs.mkdirSync(at(name));
        fs.writeFileSync(path.join(at(name), '10.yaml'), rule(id, sender));
    }
    fs.mkdirSync(at('spool'));
    fs.mkdirSync(at('spool2'));
    return Object.fromEntries(Object.keys(files).map((k) => [k, at(k)]));
}

/** A config with every section written; B and C give the other forms of upstream, redis and auth. */
function fullConfig(variant: Variant, f: Record<string, string>, dns: string, upstreamPort: number): Doc {
    return {
        hostname: 'mx.example.test',
        domains: ['example.test'],
        relayDomains: ['.relay.example'],
        listeners: [
            {
                name: 'mx',
                host: '127.0.0.1',
                port: 0,
                mode: 'mx',
                tls: 'starttls',
                proxyProtocol: false,
                maxClients: 10,
                maxClientsPerNetwork: 5,
                preTransactionTimeout: '30s',
                maxMessageSize: '1MB',
                maxRecipients: 100,
                bareNewline: 'reject',
                socketTimeout: '1m',
                // 0: the probes' connections are greeted at once (a restart key: edits keep it)
                pregreetWait: '0s',
            },
            { name: 'submission', host: '127.0.0.1', port: 0, mode: 'submission' },
        ],
        pregreet: { wait: '6s', ttl: '1d' },
        tls: { cert: f.cert, key: f.key },
        upstream:
            variant === 'B'
                ? { url: 'maildir:./maildir' }
                : {
                      url: `smtp://127.0.0.1:${upstreamPort}`,
                      xclient: true,
                      starttls: 'off',
                      tlsVerify: false,
                      connectTimeout: '5s',
                      timeout: '30s',
                      dataTimeout: '5m',
                      keepAlive: '5s',
                  },
        dns: { servers: [dns], timeout: '2s' },
        redis:
            variant === 'A'
                ? { url: 'redis://127.0.0.1:6379', commandTimeout: '250ms', connectTimeout: '50ms' }
                : variant === 'B'
                  ? { cluster: ['127.0.0.1:7000'], username: 'mw', password: 'secret', connectTimeout: '50ms' }
                  : { sentinels: ['127.0.0.1:26379'], name: 'mymaster', connectTimeout: '50ms' },
        auth:
            variant === 'A'
                ? {
                      users: f.users,
                      recipientDelimiter: '+',
                      lockout: { perIp: '10/15m', perLogin: '20/1h', perSession: 3, exempt: ['192.0.2.0/24'] },
                  }
                : variant === 'B'
                  ? { dovecot: 'unix:/nonexistent/auth-client', sendAs: f.sendAs }
                  : { dovecot: '127.0.0.1:12345', lockout: { loginKey: 'login' } },
        rules: f.rules,
        softReject: false,
        http: { host: '127.0.0.1', port: 0 },
        spool: { dir: f.spool, memoryLimit: '1MB' },
        dkim: { sign: [{ domain: 'example.test', selector: 's1', key: f.dkimKey }], headers: ['From', 'Subject'] },
        authentication: {
            timeout: '10s',
            minRsaBits: 1024,
            strict: false,
            spf: { maxLookups: 10 },
            dkim: { rejectRsaSha1: true },
            dmarc: { mode: 'rfc9989', rejectMultipleFrom: true },
            arc: { trustedSealers: [] },
        },
        reputation: { dnsbl: [], dnswl: [], rhsbl: [], probeInterval: '5m' },
        shutdownTimeout: '5s',
        workers: 2,
        log: { level: 'debug' },
    };
}

/** Sets `a.b.0.c` in a copy of `doc` (undefined deletes). */
function edited(doc: Doc, changes: Readonly<Record<string, unknown>>): Doc {
    const copy = structuredClone(doc);
    for (const [key, value] of Object.entries(changes)) {
        const parts = key.split('.');
        let node = copy as Record<string, unknown>;
        for (const p of parts.slice(0, -1)) node = node[p] as Record<string, unknown>;
        const last = parts.at(-1)!;
        if (value === undefined) delete node[last];
        else node[last] = value;
    }
    return copy;
}

interface Leaf {
    readonly path: string;
    readonly pattern: string;
    readonly value: unknown;
}

const isMap = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

/** This test's own walk over a Config: every leaf, lists of maps by element (`listeners[0].port`). */
function leaves(value: unknown, p = '', pattern = '', out: Leaf[] = []): Leaf[] {
    if (isMap(value)) {
        for (const [k, v] of Object.entries(value)) {
            if (p === '' && k === 'source') continue;
            leaves(v, p ? `${p}.${k}` : k, pattern ? `${pattern}.${k}` : k, out);
        }
    } else if (Array.isArray(value) && value.some(isMap)) {
        value.forEach((v, i) => leaves(v, `${p}[${i}]`, `${pattern}[]`, out));
    } else {
        out.push({ path: p, pattern, value });
    }
    return out;
}

/** Entries of SETTINGS below a pattern (a section or list entry). */
const below = (pattern: string): string[] =>
    Object.keys(SETTINGS).filter((k) => k.startsWith(`${pattern}.`) || k.startsWith(`${pattern}[`));

/** The key as the log names it: the table's file key with the list positions of `p`. */
function fileKey(p: string, pattern: string): string {
    const written = SETTINGS[pattern]?.key;
    if (written === undefined) return p;
    const positions = [...p.matchAll(/\[(\d+)\]/g)].map((m) => m[1]);
    let i = 0;
    return written.replace(/\[\]/g, () => `[${positions[i++]}]`);
}

function valueAt(config: Config, p: string): unknown {
    return leaves(config).find((l) => l.path === p)?.value;
}

/** The reply to MAIL FROM on a new connection (the rules decide before the upstream is asked). */
async function mailFrom(port: number, sender: string): Promise<string> {
    const c = await smtpConnect(port);
    try {
        await c.greeting();
        await c.cmd('EHLO client.example');
        const r = await c.cmd(`MAIL FROM:<${sender}>`);
        return `${r.code} ${r.text.split(' ')[0]}`;
    } finally {
        c.close();
    }
}

/** mailwarden_config_invalid of a running app. */
async function invalidGauge(mw: TestApp): Promise<number | undefined> {
    return (await mw.app.metrics.configInvalid.get()).values[0]?.value;
}

interface Edit {
    readonly variant: Variant;
    readonly set: Readonly<Record<string, unknown>>;
    /** Shows the live change at work, beyond the config in force. */
    readonly probe?: (mw: TestApp) => Promise<void> | void;
}

describe('config reload on SIGHUP', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mw-config-reload-'));
    let f: Record<string, string>;
    let dnsA: DnsTestServer;
    let dnsB: DnsTestServer;
    let up: ScriptedUpstream;
    const docs = {} as Record<Variant, Doc>;
    const apps = {} as Record<Variant, TestApp>;

    before(async () => {
        f = supportFiles(dir);
        dnsA = await startDnsServer({});
        dnsB = await startDnsServer({});
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'] });
        for (const v of ['A', 'B', 'C'] as const) {
            docs[v] = fullConfig(v, f, dnsA.address, up.port);
            apps[v] = await startApp(stringify(docs[v]), { limitStore: createMemoryStore() });
        }
    });
    after(async () => {
        for (const mw of Object.values(apps)) await mw.stop();
        await dnsA.close();
        await dnsB.close();
        await up.close();
        fs.rmSync(dir, { recursive: true, force: true });
    });

    const EDITS: readonly Edit[] = [
        { variant: 'A', set: { hostname: 'mx2.example.test' } },
        { variant: 'A', set: { domains: ['example.test', 'example.org'] } },
        { variant: 'A', set: { 'listeners.0.name': 'mx-renamed' } },
        { variant: 'A', set: { 'listeners.0.host': '127.0.0.2' } },
        { variant: 'A', set: { 'listeners.0.port': 2526 } },
        { variant: 'A', set: { 'listeners.0.mode': 'submission' } },
        { variant: 'A', set: { 'listeners.0.tls': 'none' } },
        { variant: 'A', set: { 'listeners.0.proxyProtocol': ['10.0.0.0/8'] } },
        { variant: 'A', set: { 'listeners.0.maxClients': 11 } },
        { variant: 'A', set: { 'listeners.0.maxClientsPerNetwork': 6 } },
        { variant: 'A', set: { 'listeners.0.preTransactionTimeout': '45s' } },
        { variant: 'A', set: { 'listeners.0.maxMessageSize': '2MB' } },
        { variant: 'A', set: { 'listeners.0.maxRecipients': 200 } },
        { variant: 'A', set: { relayDomains: ['.relay.example', 'backup.example'] } },
        { variant: 'A', set: { 'listeners.0.bareNewline': 'normalize' } },
        { variant: 'A', set: { 'listeners.0.socketTimeout': '2m' } },
        { variant: 'A', set: { 'listeners.0.pregreetWait': '3s' } },
        { variant: 'A', set: { 'pregreet.wait': '4s' } },
        { variant: 'A', set: { 'pregreet.ttl': '2h' } },
        { variant: 'C', set: { listeners: [{ name: 'mx', host: '127.0.0.1', port: 0, mode: 'mx' }] } },
        { variant: 'A', set: { 'tls.cert': '__cert2' } },
        { variant: 'A', set: { 'tls.key': '__key2' } },
        { variant: 'A', set: { 'upstream.url': 'smtp://127.0.0.1:10027' } },
        { variant: 'A', set: { 'upstream.url': 'smtp://localhost:10026' } },
        { variant: 'A', set: { 'upstream.url': 'smtps://127.0.0.1:10026', 'upstream.starttls': undefined } },
        { variant: 'B', set: { 'upstream.url': 'maildir:./maildir-2' } },
        { variant: 'A', set: { 'upstream.xclient': false } },
        { variant: 'A', set: { 'upstream.starttls': 'opportunistic' } },
        { variant: 'A', set: { 'upstream.tlsVerify': true } },
        { variant: 'A', set: { 'upstream.connectTimeout': '6s' } },
        { variant: 'A', set: { 'upstream.timeout': '31s' } },
        { variant: 'A', set: { 'upstream.dataTimeout': '6m' } },
        { variant: 'A', set: { 'upstream.keepAlive': '4s' } },
        { variant: 'A', set: { 'upstream.keepAlive': false } },
        {
            variant: 'A',
            set: { 'dns.servers': ['__dnsB'] },
            // the next client's reverse lookup goes to the new resolver
            probe: async () => {
                const before = dnsB.queries.length;
                const c = await smtpConnect(apps.A.port('mx'));
                await c.greeting();
                c.close();
                // the lookup starts at connect; its query may arrive just after the greeting
                for (let i = 0; i < 40 && dnsB.queries.length <= before; i++) await sleep(25);
                assert.ok(dnsB.queries.length > before, 'the new DNS server is asked');
            },
        },
        { variant: 'A', set: { 'dns.timeout': '3s' } },
        { variant: 'A', set: { 'redis.url': 'redis://127.0.0.1:6380' } },
        { variant: 'A', set: { 'redis.commandTimeout': '300ms' } },
        { variant: 'A', set: { 'redis.connectTimeout': '60ms' } },
        { variant: 'B', set: { 'redis.cluster': ['127.0.0.1:7001'] } },
        { variant: 'B', set: { 'redis.username': 'other' } },
        { variant: 'B', set: { 'redis.password': 'other-secret' } },
        { variant: 'C', set: { 'redis.sentinels': ['localhost:26379'] } },
        { variant: 'C', set: { 'redis.sentinels': ['127.0.0.1:26380'] } },
        { variant: 'C', set: { 'redis.name': 'othermaster' } },
        { variant: 'A', set: { 'auth.users': '__users2' } },
        { variant: 'A', set: { 'auth.recipientDelimiter': '-' } },
        { variant: 'A', set: { 'auth.lockout.perIp': '5/10m' } },
        { variant: 'A', set: { 'auth.lockout.perLogin': '30/2h' } },
        { variant: 'A', set: { 'auth.lockout.perSession': 5 } },
        { variant: 'A', set: { 'auth.lockout.exempt': ['198.51.100.0/24'] } },
        { variant: 'C', set: { 'auth.lockout.loginKey': 'localPart' } },
        { variant: 'B', set: { 'auth.dovecot': 'unix:/nonexistent/other' } },
        { variant: 'B', set: { 'auth.sendAs': '__sendAs2' } },
        { variant: 'C', set: { 'auth.dovecot': '127.0.0.2:12345' } },
        { variant: 'C', set: { 'auth.dovecot': '127.0.0.1:12346' } },
        { variant: 'C', set: { 'auth.dovecot': 'unix:/nonexistent/auth-client' } },
        {
            variant: 'A',
            set: { rules: '__rules2' },
            probe: async (mw) => assert.equal(await mailFrom(mw.port('mx'), 'blocked-b@example.net'), '550 5.7.1'),
        },
        {
            variant: 'A',
            set: { softReject: true },
            // the rule gives no reply: the reply table's tempfail answers instead of its 550 5.7.1
            probe: async (mw) => assert.equal(await mailFrom(mw.port('mx'), 'blocked@example.net'), '451 4.7.1'),
        },
        { variant: 'A', set: { 'http.host': '127.0.0.2' } },
        { variant: 'A', set: { 'http.port': 9999 } },
        { variant: 'A', set: { 'spool.dir': '__spool2' } },
        { variant: 'A', set: { 'spool.memoryLimit': '2MB' } },
        { variant: 'A', set: { 'dkim.sign': [{ domain: 'example.org', selector: 's1', key: '__dkimKey' }] } },
        { variant: 'A', set: { 'dkim.sign': [{ domain: 'example.test', selector: 's2', key: '__dkimKey' }] } },
        { variant: 'A', set: { 'dkim.sign': [{ domain: 'example.test', selector: 's1', key: '__dkimKey2' }] } },
        { variant: 'A', set: { 'dkim.sign': [{ domain: 'example.test', selector: 's1', key: '__dkimRsa' }] } },
        { variant: 'A', set: { 'dkim.headers': ['From', 'Subject', 'Date'] } },
        { variant: 'A', set: { 'authentication.timeout': '11s' } },
        { variant: 'A', set: { 'authentication.thread': false } },
        { variant: 'A', set: { 'authentication.minRsaBits': 2048 } },
        { variant: 'A', set: { 'authentication.strict': true } },
        { variant: 'A', set: { 'authentication.spf': { maxLookups: 5 } } },
        { variant: 'A', set: { 'authentication.dkim': { rejectRsaSha1: false } } },
        { variant: 'A', set: { 'authentication.dmarc': { mode: 'rfc7489', rejectMultipleFrom: true } } },
        {
            variant: 'A',
            set: { 'authentication.dmarc': { mode: 'rfc9989', rejectMultipleFrom: false } },
            // several From mailboxes no longer get the DMARC disposition reject
            probe: async (mw) => {
                const data = 'From: a@one.example, b@two.example\r\nSubject: t\r\n\r\nbody\r\n';
                const r = await sendMail(mw.port('mx'), { from: 'x@one.example', to: ['u@example.test'], data });
                assert.equal(r.message?.code, 250, JSON.stringify(r.message));
            },
        },
        { variant: 'A', set: { 'authentication.arc': { trustedSealers: ['example.net'] } } },
        { variant: 'A', set: { 'authentication.maxDnsQueries': 50 } },
        { variant: 'A', set: { 'authentication.dkim.maxSignatures': 3 } },
        { variant: 'A', set: { 'authentication.dkim.maxBodyHashes': 2 } },
        { variant: 'A', set: { 'authentication.dkim.maxSignedFields': 50 } },
        { variant: 'A', set: { 'authentication.arc.maxSets': 5 } },
        { variant: 'A', set: { 'reputation.dnsbl': ['bl.example.test=127.0.0.[2..11]*3'] } },
        { variant: 'A', set: { 'reputation.dnswl': ['wl.example.test*-5'] } },
        { variant: 'A', set: { 'reputation.rhsbl': ['dbl.example.test'] } },
        { variant: 'A', set: { 'reputation.probeInterval': '10m' } },
        { variant: 'A', set: { shutdownTimeout: '6s' } },
        { variant: 'A', set: { workers: 3 } },
        {
            variant: 'A',
            set: { 'log.level': 'trace' },
            probe: (mw) => assert.equal(mw.app.log.level, 'trace'),
        },
    ];

    /** `__name` stands for a support file or the second DNS server. */
    const resolvePlaceholders = (value: unknown): unknown => {
        if (typeof value === 'string' && value.startsWith('__')) {
            const name = value.slice(2);
            return name === 'dnsB' ? dnsB.address : f[name];
        }
        if (Array.isArray(value)) return value.map(resolvePlaceholders);
        if (isMap(value)) return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, resolvePlaceholders(v)]));
        return value;
    };

    it('has a SETTINGS entry for every key of a full config, and no entry for a key that does not exist', () => {
        const patterns = new Set<string>();
        for (const v of ['A', 'B', 'C'] as const) {
            for (const leaf of leaves(apps[v].app.config)) {
                const known = SETTINGS[leaf.pattern] !== undefined;
                // a section left out (null) in one form is classified by the keys it has in another
                const section = leaf.value === null && below(leaf.pattern).length > 0;
                assert.ok(
                    known || section,
                    `config key ${leaf.pattern} has no reload classification: add it to SETTINGS in src/config/reload.ts`,
                );
                if (known) patterns.add(leaf.pattern);
            }
        }
        assert.deepEqual(
            Object.keys(SETTINGS).filter((k) => !patterns.has(k)),
            [],
            'SETTINGS entries that none of the full configs has: write them in fullConfig() above',
        );
    });

    it('applies each live key, names each restart key, and then has nothing pending', async () => {
        const covered = new Set<string>();
        for (const edit of EDITS) {
            const mw = apps[edit.variant];
            const file = path.join(mw.dir, 'mailwarden.yaml');
            const base = docs[edit.variant];
            const running = mw.app.config;
            const changes = Object.fromEntries(
                Object.entries(edit.set).map(([k, v]) => [k, resolvePlaceholders(v)] as const),
            );
            fs.writeFileSync(file, stringify(edited(base, changes)));
            const next = loadConfig(file, {});
            const mark = mw.logs.length;
            mw.app.reload();
            const lines = mw.logs.slice(mark);
            const what = `edit ${JSON.stringify(edit.set)} (${edit.variant})`;
            const reloaded = lines.find((l) => l.msg === 'reloaded' && l.reload === 'config');
            assert.ok(reloaded, `${what}: config reloaded; log: ${JSON.stringify(lines)}`);
            const restartLine = lines.find((l) => String(l.msg).startsWith('needs a restart: '));
            const restart = (restartLine?.restart ?? []) as string[];
            if (restartLine) {
                assert.equal(restartLine.level, 40, 'a warning');
                assert.equal(restartLine.msg, `needs a restart: ${restart.join(', ')}`);
            }
            const changed = (reloaded.changed ?? []) as string[];
            const was = new Map(leaves(running).map((l) => [l.path, l]));
            const now = new Map(leaves(next).map((l) => [l.path, l]));
            const differ = [...new Set([...was.keys(), ...now.keys()])].filter(
                (p) => JSON.stringify(was.get(p)?.value) !== JSON.stringify(now.get(p)?.value),
            );
            assert.ok(differ.length > 0, `${what} changes something`);
            for (const p of differ) {
                const leaf = now.get(p) ?? was.get(p)!;
                const setting = SETTINGS[leaf.pattern];
                if (setting === undefined) {
                    // a whole section or list entry appeared or went: the keys below it carry it
                    assert.ok(below(leaf.pattern).length > 0, `${what}: ${leaf.pattern} is not classified`);
                    continue;
                }
                covered.add(leaf.pattern);
                const key = fileKey(p, leaf.pattern);
                const named = restart.some((k) => key === k || key.startsWith(`${k}.`) || key.startsWith(`${k}[`));
                if (setting.reload === 'live') {
                    assert.deepEqual(valueAt(mw.app.config, p), now.get(p)?.value, `${what}: ${p} is in force`);
                    assert.ok(changed.includes(key), `${what}: the reload line lists ${key}`);
                    assert.ok(!named, `${what}: live ${key} is not said to need a restart`);
                } else {
                    assert.ok(named, `${what}: ${key} is named in "needs a restart" (got ${JSON.stringify(restart)})`);
                    assert.deepEqual(valueAt(mw.app.config, p), was.get(p)?.value, `${what}: ${p} keeps its value`);
                }
            }
            await edit.probe?.(mw);

            // the file as it was: nothing pending, the start config in force again
            fs.writeFileSync(file, stringify(base));
            const back = mw.logs.length;
            mw.app.reload();
            assert.ok(
                !mw.logs.slice(back).some((l) => String(l.msg).startsWith('needs a restart')),
                `${what}: nothing pending after writing the file back`,
            );
            assert.deepEqual(leaves(mw.app.config), leaves(loadConfig(file, {})), `${what}: back to the file`);
        }
        const missing = Object.keys(SETTINGS).filter((k) => !covered.has(k));
        assert.deepEqual(missing, [], 'config keys that no edit in this test changes: add an edit to EDITS');
    });

    it('applies softReject even while an edit has broken the rule files', async () => {
        const mw = apps.A;
        const file = path.join(mw.dir, 'mailwarden.yaml');
        const broken = path.join(f.rules!, '20-broken.yaml');
        fs.writeFileSync(broken, 'rules:\n  - id: broken\n    action: explode\n');
        try {
            fs.writeFileSync(file, stringify(edited(docs.A, { softReject: true })));
            const mark = mw.logs.length;
            mw.app.reload();
            const lines = mw.logs.slice(mark);
            assert.ok(lines.some((l) => l.msg === 'reload failed; the previous rules stay in force'));
            const config = lines.find((l) => l.msg === 'reloaded' && l.reload === 'config');
            assert.deepEqual(config?.changed, ['softReject']);
            assert.equal(await mailFrom(mw.port('mx'), 'blocked@example.net'), '451 4.7.1');
            // the config file reloaded, but the broken rule file is still on disk
            assert.equal(await invalidGauge(mw), 1, 'config_invalid while the rule file is broken');
        } finally {
            fs.rmSync(broken);
            fs.writeFileSync(file, stringify(docs.A));
            mw.app.reload();
        }
        assert.equal(await mailFrom(mw.port('mx'), 'blocked@example.net'), '550 5.7.1');
        assert.equal(await invalidGauge(mw), 0, 'config_invalid once the rule file is fixed');
    });

    it('keeps everything when the file is invalid, with the lines mailwarden check prints', async () => {
        const mw = apps.A;
        const file = path.join(mw.dir, 'mailwarden.yaml');
        const running = mw.app.config;
        const errors = async (): Promise<number> =>
            (await mw.app.metrics.configReloads.get()).values.find((v) => v.labels.result === 'error')!.value;
        const before = await errors();
        const bad = stringify(edited(docs.A, { softReject: 'yes', 'log.level': 'loud' })) + 'listner: []\n';
        fs.writeFileSync(file, bad);
        const printed: string[] = [];
        assert.equal(await runCheck({ configPath: file, env: {}, out: () => {}, err: (l) => printed.push(l) }), 1);
        assert.equal(printed.length, 3, printed.join('\n'));
        const mark = mw.logs.length;
        mw.app.reload();
        const failed = mw.logs
            .slice(mark)
            .find((l) => l.msg === 'reload failed; the running configuration stays in force');
        assert.ok(failed, 'the failure is logged');
        assert.equal(failed.reload, 'config');
        assert.deepEqual(failed.issues, printed, 'the same FILE:LINE:COL lines as mailwarden check');
        assert.ok((await errors()) >= before + 1, 'counted in config_reloads_total{result="error"}');
        assert.equal(mw.app.config, running, 'the running config stays');
        // the invalid file stays on disk: config_invalid says so until a reload succeeds, however
        // long ago the failure was counted and whatever else reloads fine meanwhile
        assert.equal(await invalidGauge(mw), 1, 'config_invalid after the failed reload');
        mw.app.reload();
        assert.equal(await invalidGauge(mw), 1, 'config_invalid after a second failed reload');
        fs.writeFileSync(file, stringify(docs.A));
        mw.app.reload();
        assert.equal(await invalidGauge(mw), 0, 'config_invalid once a reload succeeded');
    });

    it('refuses an emptied file: the running settings and rules stay, with the line mailwarden check prints', async () => {
        // `: > mailwarden.yaml` would otherwise switch to the shipped rules and reset softReject and dns.servers
        const mw = apps.A;
        const file = path.join(mw.dir, 'mailwarden.yaml');
        const running = mw.app.config;
        fs.writeFileSync(file, '');
        try {
            const printed: string[] = [];
            assert.equal(await runCheck({ configPath: file, env: {}, out: () => {}, err: (l) => printed.push(l) }), 1);
            assert.deepEqual(printed, [
                `${file}:1:1: the config file holds no settings (it is empty, or only comments): every key would take its default (the shipped rules among them); write "{}" to run on the defaults with this file, or give no config file at all (no -c, no MAILWARDEN_CONFIG, no ./mailwarden.yaml) for the embedded defaults`,
            ]);
            const mark = mw.logs.length;
            mw.app.reload();
            const lines = mw.logs.slice(mark);
            const failed = lines.find((l) => l.msg === 'reload failed; the running configuration stays in force');
            assert.ok(failed, JSON.stringify(lines));
            assert.deepEqual(failed.issues, printed);
            assert.ok(!lines.some((l) => l.msg === 'reloaded' && l.reload === 'config'));
            assert.equal(mw.app.config, running, 'the running config stays');
            assert.equal(mw.app.config.rules, f.rules);
            assert.equal(await invalidGauge(mw), 1, 'config_invalid while the file is empty');
            assert.equal(
                await mailFrom(mw.port('mx'), 'blocked@example.net'),
                '550 5.7.1',
                'the rules in force still refuse',
            );
        } finally {
            fs.writeFileSync(file, stringify(docs.A));
            mw.app.reload();
        }
        assert.equal(await invalidGauge(mw), 0, 'config_invalid once the file is written back');
    });
});

describe('resolv.conf on SIGHUP, without dns.servers', () => {
    /** A DNS server on port 53 of a loopback address of its own (resolv.conf names no port). */
    const onPort53 = async (): Promise<DnsTestServer> => {
        for (let attempt = 0; ; attempt++) {
            const host = `127.53.${1 + Math.floor(Math.random() * 254)}.${1 + Math.floor(Math.random() * 254)}`;
            try {
                return await startDnsServer({}, { host, port: 53 });
            } catch (err) {
                if (attempt >= 10) throw err;
            }
        }
    };
    /** Connects and hangs up: the client's reverse lookup starts at the connection. */
    const connectOnce = async (port: number): Promise<void> => {
        const c = await smtpConnect(port);
        await c.greeting();
        c.close();
    };

    it('reads resolv.conf again, asks the servers it names now, and names it in `changed`', async () => {
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mw-resolv-conf-'));
        const resolvConf = path.join(dir, 'resolv.conf');
        const first = await onPort53();
        const second = await onPort53();
        const up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN'] });
        fs.writeFileSync(resolvConf, `nameserver ${first.address.replace(/:53$/, '')}\n`);
        const mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}" }`,
                'http: false',
                'dns: { timeout: 1s }',
            ].join('\n'),
            { limitStore: createMemoryStore(), resolvConf },
        );
        try {
            await connectOnce(mw.port());
            await until('the server resolv.conf names is asked', () => first.queries.length > 0);

            // the operator fixes resolv.conf and reloads
            fs.writeFileSync(resolvConf, `# fixed\nnameserver ${second.address.replace(/:53$/, '')}\n`);
            let mark = mw.logs.length;
            mw.app.reload();
            const reloaded = mw.logs.slice(mark).find((l) => l.msg === 'reloaded' && l.reload === 'config');
            assert.deepEqual(reloaded?.changed, [resolvConf], JSON.stringify(mw.logs.slice(mark)));
            const askedFirst = first.queries.length;
            await connectOnce(mw.port());
            await until('the server resolv.conf names now is asked', () => second.queries.length > 0);
            assert.equal(first.queries.length, askedFirst, 'the old server is not asked any more');

            // the same servers again: nothing changed, no new resolver (its cache is kept)
            fs.writeFileSync(resolvConf, `nameserver ${second.address.replace(/:53$/, '')}\n`);
            mark = mw.logs.length;
            mw.app.reload();
            const again = mw.logs.slice(mark).find((l) => l.msg === 'reloaded' && l.reload === 'config');
            assert.deepEqual(again?.changed, []);
        } finally {
            await mw.stop();
            await up.close();
            await first.close();
            await second.close();
            fs.rmSync(dir, { recursive: true, force: true });
        }
    });
});
