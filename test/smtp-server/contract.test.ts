/**
 * The contract between src/smtp-server/ and the pinned smtp-server: every private member the
 * adaptations override or read, the init timer the pregreet test replaces, and every built-in
 * English text replies.ts rewrites. An upgrade of smtp-server that renames, removes or rewords
 * any of them fails here, naming what changed, instead of silently losing an adaptation (a
 * reply without its enhanced code, the fixed greeting pause back, PROXY headers read twice).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { describe, it } from 'node:test';
import { SMTPConnection, SMTPServer } from '../../src/smtp-server/library.ts';
import { BUILTIN_TEXT_PATTERNS, DISABLED_COMMANDS, DISABLED_TEXTS } from '../../src/smtp-server/replies.ts';

const require = createRequire(import.meta.url);
const pinned = (
    JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
        dependencies: Record<string, string>;
    }
).dependencies['smtp-server'];
const installed = (require('smtp-server/package.json') as { version: string }).version;
const connectionSource = readFileSync(require.resolve('smtp-server/lib/smtp-connection.js'), 'utf8');
const serverSource = readFileSync(require.resolve('smtp-server/lib/smtp-server.js'), 'utf8');
const streamSource = readFileSync(require.resolve('smtp-server/lib/smtp-stream.js'), 'utf8');

/** What src/smtp-server/adapter.ts, envelope.ts and commands.ts override or call on a connection. */
const CONNECTION_MEMBERS = [
    'init',
    'connectionReady',
    'send',
    'close',
    '_onCommand',
    '_onTimeout',
    '_onError',
    '_onClose',
    '_sendGreeting',
    '_getEnhancedStatusCode',
    '_parseAddressCommand',
    'handler_EHLO',
    'handler_HELO',
    'handler_MAIL',
    'handler_RCPT',
    'handler_DATA',
];

/** What the adapter overrides on the server. */
const SERVER_MEMBERS = ['connect', '_onError', '_handleProxy', '_acceptSocket', '_upgrade', '_onClientConnect'];

describe('the smtp-server the adaptations were written for', () => {
    it('is the pinned version, installed', () => {
        assert.equal(
            installed,
            pinned,
            'package.json pins the exact smtp-server version the adaptations were checked against',
        );
    });

    it('still has every connection member the adaptations override or call', () => {
        const proto = SMTPConnection.prototype as unknown as Record<string, unknown>;
        const missing = CONNECTION_MEMBERS.filter((name) => typeof proto[name] !== 'function');
        assert.deepEqual(missing, [], `SMTPConnection lacks ${missing.join(', ')}: adapt src/smtp-server/`);
    });

    it('still has every server member the adapter overrides', () => {
        const proto = SMTPServer.prototype as unknown as Record<string, unknown>;
        const missing = SERVER_MEMBERS.filter((name) => typeof proto[name] !== 'function');
        assert.deepEqual(missing, [], `SMTPServer lacks ${missing.join(', ')}: adapt src/smtp-server/adapter.ts`);
    });

    it('still reads the state fields the adapter reads', () => {
        for (const field of [
            '_closing',
            '_closed',
            '_socket',
            '_parser',
            '_dataStream',
            '_nextHandler',
            '_handlerPending',
            '_upgrading',
        ]) {
            assert.match(connectionSource, new RegExp(`this\\.${field}\\b`), `SMTPConnection no longer has ${field}`);
        }
        assert.match(
            readFileSync(require.resolve('smtp-server/lib/smtp-stream.js'), 'utf8'),
            /this\._dataMode\b[\s\S]*this\.dataBytes\b|this\.dataBytes\b[\s\S]*this\._dataMode\b/,
            'the data rate watch reads SMTPStream _dataMode and dataBytes',
        );
        assert.match(serverSource, /this\._pendingSockets\b/, 'SMTPServer no longer keeps _pendingSockets');
        assert.match(
            connectionSource,
            /this\._socket\.pipe\(this\._parser\)/,
            'the pregreet wait drops what the socket feeds SMTPStream _write before the greeting',
        );
        assert.match(
            streamSource,
            /this\.on\('finish', \(\) => this\._flushData\(\)\)/,
            'the end of input calls SMTPStream _flushData, which the adapter makes drop the unended line',
        );
    });

    it('still waits a fixed 100 ms before the greeting in init(), the pause the pregreet test replaces', () => {
        assert.match(
            connectionSource,
            /setTimeout\(\(\) => this\.connectionReady\(\), 100\)/,
            "init()'s greeting timer changed: check the adapter's init() override",
        );
    });

    it('writes no reply text that replies.ts does not know', () => {
        // every this.send(CODE, …) with a text written in the source: its literal parts, with X for
        // each part computed at run time (the server name, a command name)
        const unknown: string[] = [];
        let sends = 0;
        const saslSource = readFileSync(require.resolve('smtp-server/lib/sasl.js'), 'utf8');
        const lines = `${connectionSource}\n${saslSource}`.split('\n');
        for (let i = 0; i < lines.length; i++) {
            const m = /this\.send\((\d{3}),(.*)$/.exec(lines[i]!);
            if (!m) continue;
            sends++;
            const code = Number(m[1]);
            const args = m[2]!;
            // the greeting and the EHLO/HELO replies are built by the adapter; 3xx carries no enhanced code
            if (/^\s*this\.name \+ ' ' \+/.test(args) || (code >= 300 && code < 400)) continue;
            const parts = [...args.matchAll(/'([^'\\]*(?:\\.[^'\\]*)*)'/g)]
                .map((x) => x[1]!)
                .filter((t) => t !== 'string' && !/^[A-Z]+_[A-Z_]+$/.test(t) && t !== 'LHLO');
            const text = parts.join('X').trim();
            // texts from an Error or a callback: ours carry an enhanced code, and after a socket
            // error (`'Error: ' + err.message`) smtp-server writes nothing
            if (text === '' || text === 'Error:') continue;
            const known = BUILTIN_TEXT_PATTERNS.some((p) => p.test(text));
            const disabled = DISABLED_TEXTS.find(([p]) => p.test(text));
            if (disabled) {
                assert.ok(DISABLED_COMMANDS.includes(disabled[1]), `${disabled[1]} is not disabled`);
                continue;
            }
            if (!known) unknown.push(`line ${i + 1}: ${code} ${text}`);
        }
        assert.ok(sends > 60, `found only ${sends} replies in smtp-connection.js and sasl.js: adapt this test`);
        assert.deepEqual(
            unknown,
            [],
            'smtp-server can send these texts unmapped: add them to src/smtp-server/replies.ts',
        );
    });

    it('still writes every built-in text that replies.ts rewrites', () => {
        // string literals, read line by line so that an apostrophe in a comment cannot pair across lines
        const literals =
            `${connectionSource}\n${serverSource}\n${streamSource}\n${readFileSync(require.resolve('smtp-server/lib/sasl.js'), 'utf8')}`
                .split('\n')
                .flatMap((l) => [...l.matchAll(/'([^'\\]*(?:\\.[^'\\]*)*)'/g)].map((m) => m[1]!.trim()));
        for (const pattern of [...BUILTIN_TEXT_PATTERNS, ...DISABLED_TEXTS.map(([p]) => p)]) {
            assert.ok(
                literals.some((text) => pattern.test(text)),
                `smtp-server no longer writes a text matching ${pattern}: replies.ts would let it through unrewritten`,
            );
        }
    });
});
