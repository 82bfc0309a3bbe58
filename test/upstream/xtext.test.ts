// Unit tests for XCLIENT value formatting: xtext (RFC 3461 section 4), the ADDR form,
// [UNAVAILABLE] and [TEMPUNAVAIL], NAME and REVERSE_NAME for each outcome of the reverse
// lookup, and the one command line within 512 octets.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { ClientIdentity } from '../../src/types.ts';
import {
    MAX_COMMAND_LENGTH,
    MAX_XCLIENT_VALUE,
    XCLIENT_UNAVAILABLE,
    xclientAddr,
    xclientCommand,
    xclientHelo,
    xclientName,
    xtextDecode,
    xtextEncode,
} from '../../src/upstream/xtext.ts';

const ALL = new Set(['NAME', 'ADDR', 'PORT', 'PROTO', 'HELO', 'LOGIN']);

function identity(over: Partial<ClientIdentity> = {}): ClientIdentity {
    return {
        ip: '192.0.2.10',
        port: 41000,
        ptr: 'mail.example.net',
        helo: 'mail.example.net',
        proto: 'ESMTP',
        login: null,
        ...over,
    };
}

describe('xtext', () => {
    it('encodes +, =, space, control and non-ASCII octets as +HH', () => {
        assert.equal(xtextEncode('a+b=c d'), 'a+2Bb+3Dc+20d');
        assert.equal(xtextEncode('tab\there\r\n'), 'tab+09here+0D+0A');
        assert.equal(xtextEncode('é'), '+C3+A9');
        assert.equal(xtextEncode('[UNAVAILABLE]'), '[UNAVAILABLE]');
        assert.equal(xtextEncode('!~'), '!~');
    });

    it('decodes what it encodes and refuses malformed input', () => {
        for (const s of ['a+b=c d', 'é ü', '', '+++', 'x\x00y']) assert.equal(xtextDecode(xtextEncode(s)), s);
        assert.throws(() => xtextDecode('a+2'), RangeError);
        assert.throws(() => xtextDecode('a b'), RangeError);
        assert.throws(() => xtextDecode('a=b'), RangeError);
    });
});

describe('XCLIENT values', () => {
    it('formats ADDR for IPv4, IPv6 and IPv4-mapped IPv6', () => {
        assert.equal(xclientAddr('192.0.2.1'), '192.0.2.1');
        assert.equal(xclientAddr('2001:DB8:0:0::1'), 'IPV6:2001:db8::1');
        assert.equal(xclientAddr('::ffff:192.0.2.1'), '192.0.2.1');
        assert.equal(xclientAddr('fe80::1%eth0'), 'IPV6:fe80::1');
        assert.equal(xclientAddr('not an address'), XCLIENT_UNAVAILABLE);
    });

    it('uses [UNAVAILABLE] for unknown, invalid or overlong NAME and HELO', () => {
        assert.equal(xclientName(null), '[UNAVAILABLE]');
        assert.equal(xclientName('mail.example.net.'), 'mail.example.net');
        assert.equal(xclientName('bad name.example'), '[UNAVAILABLE]');
        assert.equal(xclientName('192.0.2.1'), '[UNAVAILABLE]');
        assert.equal(xclientName(`${'a'.repeat(63)}.`.repeat(5) + 'example'), '[UNAVAILABLE]');
        assert.equal(xclientHelo(null), '[UNAVAILABLE]');
        assert.equal(xclientHelo('x y'), 'x+20y');
        assert.equal(xclientHelo('+'.repeat(100)), '[UNAVAILABLE]');
    });

    it('sends only advertised attributes, LOGIN only for a logged-in client', () => {
        assert.equal(
            xclientCommand(identity(), new Set(['ADDR', 'NAME'])),
            'XCLIENT NAME=mail.example.net ADDR=192.0.2.10',
        );
        assert.equal(xclientCommand(identity(), new Set(['FOO'])), null);
        assert.equal(
            xclientCommand(identity(), ALL),
            'XCLIENT NAME=mail.example.net ADDR=192.0.2.10 PORT=41000 PROTO=ESMTP HELO=mail.example.net',
        );
        assert.match(xclientCommand(identity({ login: 'bob' }), ALL) ?? '', / LOGIN=bob$/);
    });

    it('keeps everything in one command within 512 octets, HELO then NAME giving way', () => {
        const longName = `${'n'.repeat(60)}.`.repeat(3) + 'example';
        const helo = 'h'.repeat(200);
        const login = 'l'.repeat(MAX_XCLIENT_VALUE);
        const full = xclientCommand(identity({ ptr: longName, helo, login: 'bob' }), ALL) ?? '';
        assert.ok(full.includes(`NAME=${longName}`) && full.includes(`HELO=${helo}`));
        assert.ok(full.length <= MAX_COMMAND_LENGTH, `${full.length} octets`);

        const squeezed = xclientCommand(identity({ ptr: longName, helo, login }), ALL) ?? '';
        assert.ok(squeezed.length <= MAX_COMMAND_LENGTH, `${squeezed.length} octets`);
        assert.match(squeezed, /HELO=\[UNAVAILABLE\]/);
        assert.match(squeezed, /NAME=\[UNAVAILABLE\]/);
        assert.match(squeezed, /ADDR=192\.0\.2\.10 PORT=41000 PROTO=ESMTP/);
        assert.ok(squeezed.endsWith(`LOGIN=${login}`));
    });

    it('passes the reverse name, confirmed or not, as REVERSE_NAME where advertised', () => {
        const names = new Set(['NAME', 'ADDR', 'REVERSE_NAME']);
        const sent = (over: Partial<ClientIdentity>, advertised: ReadonlySet<string> = names): string =>
            xclientCommand(identity(over), advertised) ?? '';
        // forward-confirmed: both names are the confirmed one
        assert.equal(
            sent({ reverse: { name: 'mail.example.net', temporary: false } }),
            'XCLIENT NAME=mail.example.net REVERSE_NAME=mail.example.net ADDR=192.0.2.10',
        );
        // a PTR name that does not resolve back: not verified, but the reverse name all the same
        assert.equal(
            sent({ ptr: null, reverse: { name: '10-2-0-192.dyn.isp.example', temporary: false } }),
            'XCLIENT NAME=[UNAVAILABLE] REVERSE_NAME=10-2-0-192.dyn.isp.example ADDR=192.0.2.10',
        );
        // no PTR (NXDOMAIN), or a PTR name that is not a host name: both unknown
        assert.equal(
            sent({ ptr: null, reverse: { name: null, temporary: false } }),
            'XCLIENT NAME=[UNAVAILABLE] REVERSE_NAME=[UNAVAILABLE] ADDR=192.0.2.10',
        );
        assert.equal(
            sent({ ptr: null, reverse: { name: 'bad name.example', temporary: false } }),
            'XCLIENT NAME=[UNAVAILABLE] REVERSE_NAME=[UNAVAILABLE] ADDR=192.0.2.10',
        );
        // an upstream that does not advertise REVERSE_NAME hears NAME alone
        assert.equal(
            sent({ ptr: null, reverse: { name: 'x.dyn.isp.example', temporary: false } }, new Set(['NAME', 'ADDR'])),
            'XCLIENT NAME=[UNAVAILABLE] ADDR=192.0.2.10',
        );
        // before any reverse lookup (no iprev check), the reverse name is the confirmed one, if any
        assert.equal(sent({}), 'XCLIENT NAME=mail.example.net REVERSE_NAME=mail.example.net ADDR=192.0.2.10');
        assert.equal(sent({ ptr: null }), 'XCLIENT NAME=[UNAVAILABLE] REVERSE_NAME=[UNAVAILABLE] ADDR=192.0.2.10');
    });

    it('keeps REVERSE_NAME within 512 octets too, giving way after HELO and NAME', () => {
        const all = new Set([...ALL, 'REVERSE_NAME']);
        const longName = `${'r'.repeat(60)}.`.repeat(3) + 'example';
        const helo = 'h'.repeat(200);
        const login = 'l'.repeat(200);
        const unconfirmed = { ptr: null, reverse: { name: longName, temporary: false }, helo, login };
        const squeezed = xclientCommand(identity(unconfirmed), all) ?? '';
        assert.ok(squeezed.length <= MAX_COMMAND_LENGTH, `${squeezed.length} octets`);
        // HELO gave way, and that was enough: the reverse name is kept
        assert.match(squeezed, / NAME=\[UNAVAILABLE\] REVERSE_NAME=r{60}\./);
        assert.match(squeezed, /HELO=\[UNAVAILABLE\]/);
        const confirmed = { ptr: longName, reverse: { name: longName, temporary: false }, helo, login };
        const both = xclientCommand(identity(confirmed), all) ?? '';
        assert.ok(both.length <= MAX_COMMAND_LENGTH, `${both.length} octets`);
        assert.match(both, / NAME=\[UNAVAILABLE\] REVERSE_NAME=r{60}\./);
        assert.ok(both.endsWith(`LOGIN=${login}`));
        // and the reverse name as well when even that is not enough
        const longest = 'l'.repeat(MAX_XCLIENT_VALUE);
        const last = xclientCommand(identity({ ...unconfirmed, login: longest }), all) ?? '';
        assert.ok(last.length <= MAX_COMMAND_LENGTH, `${last.length} octets`);
        assert.match(last, / NAME=\[UNAVAILABLE\] REVERSE_NAME=\[UNAVAILABLE\] /);
    });

    it('passes a name whose lookup failed for now as [TEMPUNAVAIL]', () => {
        const names = new Set(['NAME', 'ADDR', 'REVERSE_NAME']);
        const sent = (over: Partial<ClientIdentity>, advertised: ReadonlySet<string> = names): string =>
            xclientCommand(identity(over), advertised) ?? '';
        // the PTR lookup failed (SERVFAIL, timeout): both unknown for now
        assert.equal(
            sent({ ptr: null, reverse: { name: null, temporary: true } }),
            'XCLIENT NAME=[TEMPUNAVAIL] REVERSE_NAME=[TEMPUNAVAIL] ADDR=192.0.2.10',
        );
        // the PTR name is known but its address lookup failed: the verified name is unknown for now
        assert.equal(
            sent({ ptr: null, reverse: { name: 'mail.example.net', temporary: true } }),
            'XCLIENT NAME=[TEMPUNAVAIL] REVERSE_NAME=mail.example.net ADDR=192.0.2.10',
        );
        // an upstream that does not advertise REVERSE_NAME hears NAME alone
        assert.equal(
            sent({ ptr: null, reverse: { name: 'x.dyn.isp.example', temporary: true } }, new Set(['NAME', 'ADDR'])),
            'XCLIENT NAME=[TEMPUNAVAIL] ADDR=192.0.2.10',
        );
        // an answer about the name stays [UNAVAILABLE]
        assert.equal(
            sent({ ptr: null, reverse: { name: null, temporary: false } }),
            'XCLIENT NAME=[UNAVAILABLE] REVERSE_NAME=[UNAVAILABLE] ADDR=192.0.2.10',
        );
        assert.equal(xclientName(null, true), '[TEMPUNAVAIL]');
        // a short [TEMPUNAVAIL] never gives way to [UNAVAILABLE] for the 512 octets
        const longName = `${'r'.repeat(60)}.`.repeat(3) + 'example';
        const long = { ptr: null, reverse: { name: longName, temporary: true }, helo: 'h'.repeat(200) };
        const squeezed =
            xclientCommand(
                identity({ ...long, login: 'l'.repeat(MAX_XCLIENT_VALUE) }),
                new Set([...ALL, 'REVERSE_NAME']),
            ) ?? '';
        assert.ok(squeezed.length <= MAX_COMMAND_LENGTH, `${squeezed.length} octets`);
        assert.match(squeezed, / NAME=\[TEMPUNAVAIL\] REVERSE_NAME=\[UNAVAILABLE\] /);
    });

    it('refuses a LOGIN too long to pass on', () => {
        assert.throws(
            () => xclientCommand(identity({ login: '='.repeat(100) }), ALL),
            (err: unknown) => (err as { kind?: string }).kind === 'xclient',
        );
    });
});
