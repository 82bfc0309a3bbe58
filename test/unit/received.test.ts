/**
 * Our Received field (src/headers.ts receivedField) with hostile client names: a reverse name
 * or HELO name is written only when it is a host name (or, for HELO, an address literal),
 * `unknown` otherwise, so nothing a client or its DNS controls can shape the trace field.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { formatField, receivedField, type ReceivedInfo } from '../../src/headers.ts';
import { isAddressLiteral, isTraceHostname } from '../../src/net/trace-names.ts';

const BASE: ReceivedInfo = {
    helo: 'client.example',
    ip: '192.0.2.1',
    ptr: 'mail.client.example',
    hostname: 'mx.example.com',
    protocol: 'ESMTP',
    id: 'abc',
    recipient: null,
    tlsCipher: null,
    date: new Date(Date.UTC(2026, 10, 29, 1, 2, 3)),
};

const from = (over: Partial<ReceivedInfo>): string =>
    /^from (.*?) by mx\.example\.com /.exec(receivedField({ ...BASE, ...over }).value)![1]!;

describe('Received: client names', () => {
    it('writes valid names as they are', () => {
        assert.equal(from({}), 'client.example (mail.client.example [192.0.2.1])');
        assert.equal(
            from({ helo: '[192.0.2.1]', ptr: '_ptr.example.net.' }),
            '[192.0.2.1] (_ptr.example.net. [192.0.2.1])',
        );
        assert.equal(from({ helo: '[IPv6:2001:db8::1]' }), '[IPv6:2001:db8::1] (mail.client.example [192.0.2.1])');
    });

    it('writes a reverse name with brackets, parentheses, spaces or controls as unknown', () => {
        for (const ptr of [
            'evil(x)[127.0.0.9].example',
            'a b.example',
            'x.example) by mx.example.com (y',
            'a\r\nX: y',
            '-bad.example',
            'a..b',
            '',
        ]) {
            assert.equal(from({ ptr }), 'client.example (unknown [192.0.2.1])', JSON.stringify(ptr));
        }
    });

    it('writes a HELO name that is neither a host name nor an address literal as unknown', () => {
        for (const helo of ['a(b)[c]', '[999.1.1.1]', '[IPv6:nope]', 'x y', 'x;by=evil', '"quoted"', 'a\tb']) {
            assert.equal(from({ helo }), 'unknown (mail.client.example [192.0.2.1])', JSON.stringify(helo));
        }
        assert.equal(from({ helo: null, ptr: null }), 'unknown (unknown [192.0.2.1])');
    });

    it('names a recipient whose address folding would change (a quoted local part with spaces) nowhere', () => {
        assert.match(receivedField({ ...BASE, recipient: 'bob@example.com' }).value, / for <bob@example\.com>;/);
        const quoted = receivedField({ ...BASE, recipient: '"john doe"@example.com' });
        assert.doesNotMatch(quoted.value, / for /);
        assert.ok(!formatField(quoted).includes('john'));
    });

    it('host name and literal checks', () => {
        assert.equal(isTraceHostname(`${'a'.repeat(63)}.example`), true);
        assert.equal(isTraceHostname(`${'a'.repeat(64)}.example`), false);
        assert.equal(isTraceHostname(`${'a.'.repeat(127)}ab`), false);
        assert.equal(isAddressLiteral('[192.0.2.1]'), true);
        assert.equal(isAddressLiteral('192.0.2.1'), false);
        assert.equal(isAddressLiteral('[IPv6:::1]'), true);
    });
});
