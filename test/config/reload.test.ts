/**
 * The reload classification (src/config/reload.ts) on its own: which keys changed between
 * two configs and how each is named, that a key missing from SETTINGS counts as needing a
 * restart (never silently ignored), the config in force after a reload, and that
 * docs/configuration.md lists exactly the live keys. The walk over every key with a running
 * app is test/e2e/config-reload.test.ts.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { SETTINGS, changedKeys, configAfterReload, diffConfig, reloadOf } from '../../src/config/reload.ts';
import type { Config } from '../../src/config/types.ts';
import { cleanup, loadText } from './helpers.ts';

after(cleanup);

const BASE = [
    'hostname: mx.example.test',
    'domains: [example.test]',
    'listeners: [{ name: mx, host: 127.0.0.1, port: 2525, mode: mx }]',
    'upstream: { url: "smtp://127.0.0.1:10026", timeout: 30s }',
    'softReject: false',
    'log: { level: info }',
].join('\n');

const load = (yaml: string): Config => loadText(yaml).config;

describe('config reload classification', () => {
    it('names changed keys as they are written in the file, and says which need a restart', () => {
        const before = load(BASE);
        const after = load(
            BASE.replace('timeout: 30s', 'timeout: 31s')
                .replace('softReject: false', 'softReject: true')
                .replace('port: 2525', 'port: 2526'),
        );
        const changes = diffConfig(before, after);
        assert.deepEqual(
            changes.map((c) => [c.path, c.pattern, c.key, c.reload]),
            [
                ['listeners[0].port', 'listeners[].port', 'listeners[0].port', 'restart'],
                ['upstream.commandTimeoutMs', 'upstream.commandTimeoutMs', 'upstream.timeout', 'restart'],
                ['softReject', 'softReject', 'softReject', 'live'],
            ],
        );
        assert.deepEqual(changedKeys(changes.filter((c) => c.reload === 'restart')), [
            'listeners[0].port',
            'upstream.timeout',
        ]);
    });

    it('names one key for a URL that changes several fields, a listener added, a section added', () => {
        const before = load(BASE);
        const after = load(
            BASE.replace('127.0.0.1:10026', 'localhost:2500')
                .replace('mode: mx }]', 'mode: mx }, { name: mx2, host: 127.0.0.1, port: 2527 }]')
                .concat('\nredis: { url: "redis://127.0.0.1:6379" }\n'),
        );
        const changes = diffConfig(before, after);
        assert.deepEqual(changedKeys(changes), ['listeners[1]', 'upstream.url', 'redis']);
        assert.ok(changes.every((c) => c.reload === 'restart'));
    });

    it('counts a key missing from SETTINGS as needing a restart', () => {
        const before = load(BASE);
        const after = { ...before, greetDelay: { delayMs: 3000 } } as unknown as Config;
        assert.deepEqual(
            diffConfig(before, after).map((c) => [c.key, c.reload]),
            [['greetDelay', 'restart']],
        );
        assert.equal(reloadOf('authentication'), 'live', 'a section whose keys are all live');
        assert.equal(reloadOf('dkim'), 'restart');
        assert.equal(reloadOf('no.such.key'), 'restart');
    });

    it('keeps the running value of restart keys and takes the new value of live ones', () => {
        const before = load(BASE);
        const next = load(BASE.replace('softReject: false', 'softReject: true').replace('port: 2525', 'port: 2526'));
        const running = configAfterReload(before, next, diffConfig(before, next));
        assert.equal(running.softReject, true);
        assert.equal(running.listeners[0]!.port, 2525);
        assert.ok(Object.isFrozen(running) && Object.isFrozen(running.listeners[0]));
        assert.deepEqual(
            diffConfig(running, next).map((c) => c.key),
            ['listeners[0].port'],
            'still pending',
        );
        assert.equal(configAfterReload(before, before, []), before, 'nothing changed: the same object');
    });

    it('is what docs/configuration.md lists as live and as needing a restart', () => {
        const doc = fs.readFileSync(path.join(import.meta.dirname, '..', '..', 'docs', 'configuration.md'), 'utf8');
        const section = doc.slice(doc.indexOf('<!-- live keys:'), doc.indexOf('<!-- end of the reload lists -->'));
        const liveText = section.slice(section.indexOf('**Live**'), section.indexOf('**Restart needed**'));
        const restartText = section.slice(section.indexOf('**Restart needed**'));
        const keys = (text: string): string[] => [...text.matchAll(/`([a-zA-Z][\w.]*)`/g)].map((m) => m[1]!);
        const fileKey = (p: string): string => SETTINGS[p]!.key ?? p;
        const live = [
            ...new Set(
                Object.keys(SETTINGS)
                    .filter((p) => SETTINGS[p]!.reload === 'live')
                    .map(fileKey),
            ),
        ];
        assert.deepEqual(keys(liveText).sort(), live.sort());
        const restartNames = keys(restartText);
        for (const p of Object.keys(SETTINGS).filter((k) => SETTINGS[k]!.reload === 'restart')) {
            const key = fileKey(p);
            assert.ok(
                restartNames.some((n) => key === n || key.startsWith(`${n}.`) || key.startsWith(`${n}[`)),
                `docs/configuration.md names ${key} as needing a restart`,
            );
        }
    });
});
