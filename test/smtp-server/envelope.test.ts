/**
 * Pins what src/smtp-server/envelope.ts relies on in smtp-server, against a bare SMTPServer
 * (no app): EHLO lists the extensions from the `hide…` and `size` options read during the
 * call, MAIL and RCPT hand the command line as octets to `_parseAddressCommand` and its result,
 * unchanged, to onMailFrom/onRcptTo, and with no parameters given to it, smtp-server applies
 * none of its own parameter checks. If an smtp-server upgrade changes any of this, these fail.
 */
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { SMTPServerAddress, SMTPServerSession } from 'smtp-server';
import { SMTPServer } from '../../src/smtp-server/library.ts';
import type { EnvelopeParse } from '../../src/envelope/command.ts';
import type { EhloOffer } from '../../src/envelope/extensions.ts';
import {
    adaptEnvelopeCommands,
    assertSmtpServerInternals,
    envelopeOf,
    offerOf,
    type EnvelopeAdaptableConnection,
} from '../../src/smtp-server/envelope.ts';
import { smtpConnect, type SmtpClient } from '../helpers/smtp-client.ts';

const OFFER: EhloOffer = {
    extended: true,
    sizeLimit: 12345,
    eightBitMime: false,
    smtputf8: true,
    dsn: true,
    requireTls: false,
    auth: false,
};

interface Seen {
    command: 'mail' | 'rcpt';
    address: SMTPServerAddress;
    parse: EnvelopeParse | null;
    offer: EhloOffer | null;
}

class AdaptedServer extends SMTPServer {
    override connect(socket: Socket, options?: Parameters<SMTPServer['connect']>[1]): void {
        super.connect(socket, options);
        const connection = [...(this as unknown as { connections: Set<unknown> }).connections].at(-1);
        adaptEnvelopeCommands(connection as EnvelopeAdaptableConnection, {
            offer: (s) => ({ ...OFFER, extended: s.extended }),
        });
    }
}

describe('smtp-server internals the envelope adapter relies on', () => {
    let server: AdaptedServer;
    let port: number;
    const seen: Seen[] = [];
    before(async () => {
        assertSmtpServerInternals();
        server = new AdaptedServer({
            authOptional: true,
            disabledCommands: ['AUTH'],
            hideDSN: true,
            hideREQUIRETLS: true,
            size: 99999,
            logger: false,
            onMailFrom(address, session: SMTPServerSession, cb) {
                seen.push({ command: 'mail', address, parse: envelopeOf(address), offer: offerOf(session) });
                const parse = envelopeOf(address);
                cb(parse?.ok ? null : Object.assign(new Error('5.1.7 refused here'), { responseCode: 553 }));
            },
            onRcptTo(address, session, cb) {
                seen.push({ command: 'rcpt', address, parse: envelopeOf(address), offer: offerOf(session) });
                const parse = envelopeOf(address);
                cb(parse?.ok ? null : Object.assign(new Error('5.1.3 refused here'), { responseCode: 553 }));
            },
        });
        await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
        port = (server.server.address() as { port: number }).port;
    });
    after(() => new Promise<void>((resolve) => server.close(() => resolve())));

    async function session(hello = 'EHLO client.example'): Promise<{ c: SmtpClient; lines: readonly string[] }> {
        const c = await smtpConnect(port);
        await c.greeting();
        const r = await c.cmd(hello);
        assert.equal(r.code, 250, r.raw);
        return { c, lines: r.lines };
    }

    it('EHLO lists the offered extensions and SIZE, and the server options are left as they were', async () => {
        const { c, lines } = await session();
        c.close();
        assert.ok(lines.includes('DSN'), lines.join('|'));
        assert.ok(lines.includes('SMTPUTF8'));
        assert.ok(lines.includes('SIZE 12345'));
        assert.ok(!lines.includes('8BITMIME'));
        assert.ok(!lines.includes('REQUIRETLS'));
        const options = server.options as { hideDSN?: boolean; size?: number; hide8BITMIME?: boolean };
        assert.equal(options.hideDSN, true);
        assert.equal(options.size, 99999);
        assert.equal(options.hide8BITMIME, undefined);
    });

    it('MAIL and RCPT reach the callbacks with our parse of the octets, parameters untouched by smtp-server', async () => {
        const before = seen.length;
        const { c } = await session();
        // RET would be refused by smtp-server with hideDSN:false handling, SIZE over its limit with 552:
        // neither happens, the parse carries them to the session
        const mail = await c.cmd('MAIL FROM:<"john doe"@example.net> RET=HDRS SIZE=1000000 REQUIRETLS');
        assert.equal(mail.code, 250, mail.raw);
        const rcpt = await c.cmd('RCPT TO:<xn--bcher-kva.example@xn--bcher-kva.example> NOTIFY=SUCCESS');
        assert.equal(rcpt.code, 250, rcpt.raw);
        c.write(Buffer.concat([Buffer.from('RCPT TO:<a'), Buffer.from([0xff]), Buffer.from('@example.net>\r\n')]));
        const bad = await c.reply();
        assert.equal(bad.code, 553, 'an unparsable recipient still reaches onRcptTo');
        const empty = await c.cmd('RCPT TO:<>');
        assert.equal(empty.code, 553, 'so does an empty one');
        c.close();
        const [m, r, b, e] = seen.slice(before);
        assert.equal(m?.address.address, '"john doe"@example.net');
        assert.equal(m?.address.args, false);
        assert.ok(m?.parse?.ok);
        assert.deepEqual(
            m.parse.params.map((p) => p.keyword),
            ['RET', 'SIZE', 'REQUIRETLS'],
        );
        assert.equal(m.offer?.dsn, true);
        assert.equal(r?.address.address, 'xn--bcher-kva.example@xn--bcher-kva.example', 'no conversion to Unicode');
        assert.ok(r?.parse?.ok);
        assert.equal(b?.parse?.ok, false);
        assert.equal(e?.parse?.ok, false);
    });

    it('HELO offers nothing', async () => {
        const before = seen.length;
        const { c } = await session('HELO client.example');
        assert.equal((await c.cmd('MAIL FROM:<a@example.net>')).code, 250);
        c.close();
        assert.equal(seen[before]?.offer?.extended, false);
    });
});
