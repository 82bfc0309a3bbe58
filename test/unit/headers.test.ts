/**
 * Header building and filtering: forged own headers and A-R fields with our authserv-id
 * are removed (RFC 8601 section 5), folding keeps lines short, values never carry CR/LF.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
    authservIdOf,
    filterIncomingFields,
    formatField,
    parseHeaderSection,
    receivedField,
    rfc5322Date,
    verdictField,
} from '../../src/headers.ts';

const section = Buffer.from(
    [
        'Received: from a by b;',
        '\tSun, 1 Nov 2026 00:00:00 +0000',
        'X-Mailwarden-Verdict: accept; rules=; score=0; id=forged',
        'x-mailwarden-quarantine: no',
        'Authentication-Results: mx.example.com; dmarc=pass',
        'Authentication-Results: (comment) MX.EXAMPLE.COM (c2); spf=pass',
        'Authentication-Results: other.example; spf=pass',
        'From: Alice <alice@example.org>',
        '',
    ].join('\r\n'),
);

describe('headers', () => {
    it('parses folded fields byte for byte', () => {
        const fields = parseHeaderSection(section);
        assert.equal(fields.length, 7);
        assert.equal(fields[0]!.name, 'Received');
        assert.equal(Buffer.concat(fields.map((f) => f.raw)).toString(), section.toString());
    });
    it('finds the authserv-id past comments and case', () => {
        assert.equal(authservIdOf(' (c) MX.Example.COM (x); spf=pass'), 'mx.example.com');
        assert.equal(authservIdOf(' mx.example.com 1; none'), 'mx.example.com');
    });
    it('removes our own headers and A-R fields with our authserv-id only', () => {
        const { kept, removed } = filterIncomingFields(parseHeaderSection(section), 'mx.example.com');
        assert.deepEqual(
            kept.map((f) => f.name),
            ['Received', 'Authentication-Results', 'From'],
        );
        assert.match(kept[1]!.raw.toString(), /other\.example/);
        assert.equal(removed.length, 4);
    });
    it('folds long values and strips CR/LF from values', () => {
        const text = formatField({ name: 'X-Test', value: `${'word '.repeat(40)}\r\nInjected: yes` });
        for (const line of text.split('\r\n').slice(0, -1)) assert.ok(line.length <= 78, line);
        assert.doesNotMatch(text, /\r\nInjected/);
        assert.ok(text.endsWith('\r\n'));
    });
    it('builds Received and verdict fields', () => {
        const r = receivedField({
            helo: 'client.example',
            ip: '192.0.2.1',
            ptr: null,
            hostname: 'mx.example.com',
            protocol: 'ESMTPS',
            id: 'abc',
            recipient: 'bob@example.com',
            tlsCipher: null,
            date: new Date(Date.UTC(2026, 10, 29, 1, 2, 3)),
        });
        assert.equal(
            r.value,
            'from client.example (unknown [192.0.2.1]) by mx.example.com (mailwarden) with ESMTPS id abc for <bob@example.com>; Sun, 29 Nov 2026 01:02:03 +0000',
        );
        assert.equal(verdictField('tag', ['a', 'b'], 3, 'xyz').value, 'tag; rules=a,b; score=3; id=xyz');
        assert.equal(rfc5322Date(new Date(Date.UTC(2026, 0, 5, 9, 8, 7))), 'Mon, 5 Jan 2026 09:08:07 +0000');
    });
    it('writes IPv6 client addresses with the IPv6: prefix', () => {
        const r = receivedField({
            helo: null,
            ip: '2001:db8::1',
            ptr: null,
            hostname: 'mx',
            protocol: 'SMTP',
            id: 'i',
            recipient: null,
            tlsCipher: null,
            date: new Date(0),
        });
        assert.match(r.value, /^from unknown \(unknown \[IPv6:2001:db8::1\]\) by mx/);
    });
});
