/**
 * The `reputation:` section: list sites in postscreen's syntax with an optional delisting page,
 * weights whose sign matches the kind of list, the probe interval, and FILE:LINE:COL errors
 * for everything else.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, describe, it } from 'node:test';
import { parseConfiguredSite, type ListKind } from '../../src/reputation/sites.ts';
import { cleanup, issuesOf, loadText } from './helpers.ts';

after(cleanup);

describe('reputation config', () => {
    it('defaults to no lists and a 5 minute probe interval', () => {
        const { config } = loadText('hostname: mx.example.test\n');
        assert.deepEqual(config.reputation, { dnsbl: [], dnswl: [], rhsbl: [], probeIntervalMs: 300_000 });
    });

    it('keeps the sites as written, with their delisting pages', () => {
        const { config } = loadText(
            [
                'reputation:',
                "  dnsbl: ['zen.spamhaus.org=127.0.0.[2..11]*3   https://check.spamhaus.org/', bl.spamcop.net]",
                "  dnswl: ['list.dnswl.org=127.0.[0..255].[1..3]*-5']",
                "  rhsbl: ['dbl.spamhaus.org=127.0.1.[2..99]*3']",
                '  probeInterval: 2m',
                '',
            ].join('\n'),
        );
        assert.deepEqual(config.reputation, {
            dnsbl: ['zen.spamhaus.org=127.0.0.[2..11]*3 https://check.spamhaus.org/', 'bl.spamcop.net'],
            dnswl: ['list.dnswl.org=127.0.[0..255].[1..3]*-5'],
            rhsbl: ['dbl.spamhaus.org=127.0.1.[2..99]*3'],
            probeIntervalMs: 120_000,
        });
    });

    it('refuses bad sites, wrong-signed weights, duplicates and unknown keys, each at its place', () => {
        const issues = issuesOf(
            [
                'reputation:',
                '  dnsbl:',
                '    - zen.spamhaus.org=127.0.0.[2..300]*3',
                '    - list.dnswl.org*-5',
                '    - bl.example.test ftp://example.test/',
                '    - bl.example.test',
                '    - bl.example.test=127.0.0.2',
                '  dnswl: [wl.example.test*2]',
                '  probeInterval: 1s',
                '  zones: []',
                '',
            ].join('\n'),
        );
        assert.equal(issues.length, 7, issues.join('\n'));
        const byLine = (l: number): string => issues.find((i) => i.startsWith(`${l}:`)) ?? '';
        assert.match(byLine(3), /^3:7: reputation\.dnsbl\[0\]: .*"\[2\.\.300\]" is not an octet/);
        assert.match(byLine(4), /^4:7: reputation\.dnsbl\[1\]: a block list needs a positive weight/);
        assert.match(byLine(5), /^5:7: .*"ftp:\/\/example\.test\/" is not a web address/);
        assert.match(byLine(7), /^7:7: .*bl\.example\.test is listed twice under dnsbl/);
        assert.match(byLine(8), /^8:11: reputation\.dnswl\[0\]: an allow list needs a negative weight/);
        assert.match(byLine(9), /^9:18: reputation\.probeInterval: must be between 10s and 1d/);
        assert.match(byLine(10), /^10:3: unknown key "zones" in reputation/);
    });

    it('ships the public lists commented out, each a valid site once its line is uncommented', () => {
        const text = readFileSync(new URL('../../deploy/mailwarden.yaml', import.meta.url), 'utf8');
        const section = text.slice(text.indexOf('\nreputation:'));
        let kind: ListKind | null = null;
        const sites: [ListKind, string][] = [];
        for (const line of section.split('\n')) {
            const k = /^ {2}(dnsbl|dnswl|rhsbl):\s*$/.exec(line);
            if (k) kind = k[1] as ListKind;
            const site = /^ {4}# - (.+)$/.exec(line);
            if (site && kind) sites.push([kind, site[1]!]);
            assert.ok(!/^ {4}- /.test(line), `no public list is on by default: ${line}`);
        }
        assert.ok(sites.length >= 4, JSON.stringify(sites));
        for (const [k, site] of sites) assert.ok(!('error' in parseConfiguredSite(site, k)), `${k}: ${site}`);
        const { config } = loadText(section.replace(/^ {4}# - /gm, '    - ').replace(/^\n/, ''));
        assert.equal(
            config.reputation.dnsbl.length + config.reputation.dnswl.length + config.reputation.rhsbl.length,
            sites.length,
        );
    });
});
