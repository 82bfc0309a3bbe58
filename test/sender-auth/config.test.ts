// The `authentication:` config section: defaults (with and without a config file), every key
// read and normalized, and frozen like the rest of the config. Bad values are covered by the
// bad-config corpus (test/fixtures/config-errors/27-bad-authentication).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { ConfigError, loadConfig } from '../../src/config/load.ts';

const dirs: string[] = [];

function load(yaml: string) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mailwarden-auth-config-'));
    dirs.push(dir);
    fs.writeFileSync(path.join(dir, 'mailwarden.yaml'), yaml);
    return loadConfig(path.join(dir, 'mailwarden.yaml'), {}, { cwd: dir });
}

after(() => {
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

describe('authentication config', () => {
    const defaults = {
        timeoutMs: 15_000,
        thread: true,
        minRsaBits: 1024,
        strict: false,
        maxDnsQueries: 100,
        spf: { maxLookups: 10 },
        dkim: { rejectRsaSha1: true, maxSignatures: 5, maxBodyHashes: 3, maxSignedFields: 100 },
        dmarc: { mode: 'rfc9989', rejectMultipleFrom: true },
        arc: { trustedSealers: [], maxSets: 10 },
    };

    it('has defaults without a config file and when the section is left out', () => {
        assert.deepEqual(loadConfig(null, {}).authentication, defaults);
        assert.deepEqual(load('hostname: mx.example.com\n').authentication, defaults);
        assert.deepEqual(load('authentication:\n').authentication, defaults);
    });

    it('reads every key; sealer names are normalized', () => {
        const c = load(
            [
                'authentication:',
                '  timeout: 20s',
                '  thread: false',
                '  minRsaBits: 2048',
                '  strict: true',
                '  maxDnsQueries: 40',
                '  spf: { maxLookups: 5 }',
                '  dkim: { rejectRsaSha1: false, maxSignatures: 3, maxBodyHashes: 2, maxSignedFields: 50 }',
                '  dmarc: { mode: rfc7489, rejectMultipleFrom: false }',
                '  arc: { trustedSealers: [Google.COM, "bücher.example."], maxSets: 50 }',
                '',
            ].join('\n'),
        );
        assert.deepEqual(c.authentication, {
            timeoutMs: 20_000,
            thread: false,
            minRsaBits: 2048,
            strict: true,
            maxDnsQueries: 40,
            spf: { maxLookups: 5 },
            dkim: { rejectRsaSha1: false, maxSignatures: 3, maxBodyHashes: 2, maxSignedFields: 50 },
            dmarc: { mode: 'rfc7489', rejectMultipleFrom: false },
            arc: { trustedSealers: ['google.com', 'xn--bcher-kva.example'], maxSets: 50 },
        });
        assert.ok(Object.isFrozen(c.authentication.arc.trustedSealers));
    });

    it('keeps defaults for the keys a partial section leaves out', () => {
        const c = load('authentication:\n  arc: { trustedSealers: [google.com] }\n');
        assert.deepEqual(c.authentication, { ...defaults, arc: { trustedSealers: ['google.com'], maxSets: 10 } });
    });

    it('rejects unknown keys with their position', () => {
        assert.throws(
            () => load('authentication:\n  dmarc: { mode: rfc9989, pct: 100 }\n'),
            (err: unknown) => {
                assert.ok(err instanceof ConfigError);
                assert.match(err.message, /mailwarden\.yaml:2:27: unknown key "pct" in authentication\.dmarc/);
                return true;
            },
        );
    });
});
