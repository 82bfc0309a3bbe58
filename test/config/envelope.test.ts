/**
 * The config keys of the envelope: `relayDomains`, per-listener `maxRecipients`, the rule that
 * an mx listener in front of an SMTP upstream needs `domains` (or `relayDomains`), and the
 * warning for `upstream.xclient: false` that `mailwarden check` prints without failing.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { runCheck } from '../../src/commands/check.ts';
import { loadConfigWithWarnings } from '../../src/config/load.ts';
import { cleanup, folderWith, issuesOf, loadText } from './helpers.ts';

after(cleanup);

describe('relayDomains', () => {
    it('defaults to none, and reads exact names and .name (every subdomain) in A-label form', () => {
        assert.deepEqual(loadText('domains: [example.com]\n').config.relayDomains, []);
        const { config } = loadText(
            'domains: [example.com]\nrelayDomains: [Partner.Example, .sub.example, .Bücher.example, xn--mnchen-3ya.example]\n',
        );
        assert.deepEqual(config.relayDomains, [
            'partner.example',
            '.sub.example',
            '.xn--bcher-kva.example',
            'xn--mnchen-3ya.example',
        ]);
    });

    it('refuses what is not a domain, repeats, and names already in domains', () => {
        assert.deepEqual(
            issuesOf(
                'domains: [example.com]\nrelayDomains: [a..b, "-x.example", ., example.com, x.example, X.example]\n',
            ),
            [
                '2:16: relayDomains[0]: "a..b" is not a domain name (write example.net, or .example.net for its subdomains)',
                '2:22: relayDomains[1]: "-x.example" is not a domain name (write example.net, or .example.net for its subdomains)',
                '2:36: relayDomains[2]: "." is not a domain name (write example.net, or .example.net for its subdomains)',
                '2:39: relayDomains[3]: "example.com" is already one of domains',
                '2:63: relayDomains[5]: "X.example" is listed twice',
            ],
        );
    });
});

describe('maxRecipients', () => {
    it("defaults to 1000 (Postfix's smtpd_recipient_limit) and is set per listener", () => {
        const { config } = loadText(
            'listeners:\n  - { name: a, host: 127.0.0.1, port: 2525 }\n  - { name: b, host: 127.0.0.1, port: 2526, maxRecipients: 50 }\n',
        );
        assert.deepEqual(
            config.listeners.map((l) => l.maxRecipients),
            [1000, 50],
        );
        assert.match(
            issuesOf('listeners: [{ name: a, host: 127.0.0.1, port: 2525, maxRecipients: many }]\n')[0] ?? '',
            /maxRecipients: expected a number of recipients/,
        );
    });
});

describe('an mx listener in front of an SMTP upstream', () => {
    const SMTP = 'upstream: { url: "smtp://127.0.0.1:10026" }\n';

    it('needs domains or relayDomains', () => {
        assert.deepEqual(issuesOf(SMTP), [
            '1:18: upstream.url: the mx listener "mx" forwards to an SMTP upstream, so mailwarden must know which recipients to accept: list your domains in "domains" (and the ones you relay for in "relayDomains")',
        ]);
        assert.deepEqual(issuesOf(`${SMTP}domains: []\n`).length, 1, 'an empty list is no list');
        assert.deepEqual(loadText(`${SMTP}domains: [example.com]\n`).config.domains, ['example.com']);
        assert.deepEqual(loadText(`${SMTP}relayDomains: [.example.net]\n`).config.relayDomains, ['.example.net']);
    });

    it('is the only case: submission-only listeners and a Maildir upstream need no domains', () => {
        const cert = path.join(import.meta.dirname, 'fixtures', 'tls');
        const yaml =
            `${SMTP}tls: { cert: "${cert}/cert.pem", key: "${cert}/key.pem" }\nauth: { users: users.yaml }\n` +
            'listeners: [{ name: sub, host: 127.0.0.1, port: 587, mode: submission }]\n';
        const { config } = loadText(yaml, {}, { 'users.yaml': 'users: []\n' });
        assert.equal(config.listeners[0]?.mode, 'submission');
        assert.deepEqual(loadText('upstream: { url: "maildir:./m" }\n').config.domains, []);
    });
});

describe('upstream.xclient: false', () => {
    const yaml = 'domains: [example.org]\nupstream:\n  url: smtp://127.0.0.1:10026\n  xclient: false\n';

    it('loads, with a warning at the key', () => {
        const dir = folderWith({ 'mailwarden.yaml': yaml });
        const { config, warnings } = loadConfigWithWarnings(path.join(dir, 'mailwarden.yaml'), {});
        assert.equal(config.upstream.kind === 'smtp' && config.upstream.xclient, false);
        assert.equal(warnings.length, 1);
        assert.equal(warnings[0]?.line, 4);
        assert.equal(warnings[0]?.col, 3);
        assert.match(
            warnings[0]?.message ?? '',
            /^upstream\.xclient: false: the upstream sees mailwarden .* permit_mynetworks/,
        );
        const on = folderWith({ 'mailwarden.yaml': yaml.replace('false', 'true') });
        assert.deepEqual(loadConfigWithWarnings(path.join(on, 'mailwarden.yaml'), {}).warnings, []);
    });

    it('is printed by check as FILE:LINE:COL: warning:, with exit 0', async () => {
        const dir = folderWith({ 'config.yaml': yaml });
        const out: string[] = [];
        const err: string[] = [];
        const code = await runCheck({
            configPath: 'config.yaml',
            cwd: dir,
            env: {},
            out: (l) => out.push(l),
            err: (l) => err.push(l),
            validators: [],
        });
        assert.equal(code, 0);
        assert.equal(err.length, 1);
        assert.match(err[0] ?? '', /^config\.yaml:4:3: warning: upstream\.xclient: false: /);
        assert.deepEqual(out, ['ok: config.yaml (1 warning; serve and reload accept these files as they are)']);
    });
});

describe('proxyProtocol: true', () => {
    const yaml =
        'domains: [example.org]\nlisteners:\n  - name: mx\n    host: 0.0.0.0\n    port: 25\n    mode: mx\n    proxyProtocol: true\n';

    it('loads, with a warning at the key: any peer could name any client address', () => {
        const dir = folderWith({ 'mailwarden.yaml': yaml });
        const { config, warnings } = loadConfigWithWarnings(path.join(dir, 'mailwarden.yaml'), {});
        assert.deepEqual(config.listeners[0]?.proxyProtocol, ['0.0.0.0/0', '::/0']);
        assert.equal(warnings.length, 1);
        assert.equal(warnings[0]?.line, 7);
        assert.equal(warnings[0]?.col, 5);
        assert.match(warnings[0]?.message ?? '', /proxyProtocol: true: every peer may open with a PROXY header/);
        const listed = folderWith({ 'mailwarden.yaml': yaml.replace('true', '[10.0.0.5]') });
        assert.deepEqual(loadConfigWithWarnings(path.join(listed, 'mailwarden.yaml'), {}).warnings, []);
    });
});
