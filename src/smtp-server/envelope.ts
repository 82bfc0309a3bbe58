/**
 * The one adaptation of smtp-server internals for the envelope, per connection:
 * - EHLO: the extensions listed are the ones this session may use (envelope/extensions.ts):
 *   SIZE as the smaller of our limit and the upstream's, 8BITMIME, SMTPUTF8, DSN and
 *   REQUIRETLS as the upstream allows. smtp-server reads its `hide…` and `size` options while
 *   it builds the reply, so they are set for that synchronous call and restored after it.
 *   What was offered is remembered for the session (offerOf); HELO offers nothing.
 * - MAIL and RCPT: smtp-server's own address parser (`_parseAddressCommand`, which reads the
 *   line as UTF-8 with replacement characters, splits quoted local parts at spaces, converts
 *   A-labels to Unicode and decodes parameter values) is replaced by envelope/command.ts,
 *   which reads the octets as sent. smtp-server is handed the canonical address and no
 *   parameters (so none of its own parameter handling applies); the full parse, or why it
 *   failed, is kept for the session (envelopeOf), whose callbacks answer from reply.ts.
 * It relies on: SMTPConnection#handler_EHLO, #handler_HELO, #_parseAddressCommand (called by
 * handler_MAIL and handler_RCPT with the command line as a Buffer, its result passed to
 * onMailFrom/onRcptTo as the address object), and the server's `options` object read at EHLO.
 * assertSmtpServerInternals() fails the start when those are missing; a test pins the behaviour.
 * Nothing here decides policy or chooses reply texts.
 */
import type { SMTPServerAddress, SMTPServerSession } from 'smtp-server';
import { SMTPConnection } from './library.ts';
import { parseEnvelopeCommand, type EnvelopeParse } from '../envelope/command.ts';
import type { EhloOffer } from '../envelope/extensions.ts';

type Handler = (command: Buffer, callback: () => void) => void;

/** The parts of an smtp-server connection this module touches. */
export interface EnvelopeAdaptableConnection {
    secure: boolean;
    session: SMTPServerSession;
    _server: { options: object };
    handler_EHLO: Handler;
    handler_HELO: Handler;
    _parseAddressCommand(name: string, command: Buffer | string): unknown;
}

/** The smtp-server options EHLO reads to list extensions. */
interface EhloOptions {
    hide8BITMIME?: boolean | undefined;
    hideSMTPUTF8?: boolean | undefined;
    hideDSN?: boolean | undefined;
    hideREQUIRETLS?: boolean | undefined;
    size?: number | undefined;
}

const offers = new WeakMap<SMTPServerSession, EhloOffer>();
const parses = new WeakMap<object, EnvelopeParse>();

/** What the latest EHLO or HELO of this session offered; null before either. */
export function offerOf(session: SMTPServerSession): EhloOffer | null {
    return offers.get(session) ?? null;
}

/** The parse of the MAIL or RCPT command behind the address smtp-server passed to a callback. */
export function envelopeOf(address: SMTPServerAddress): EnvelopeParse | null {
    return parses.get(address) ?? null;
}

/** Throws when the pinned smtp-server no longer has what this module relies on. */
export function assertSmtpServerInternals(): void {
    const proto = SMTPConnection.prototype as unknown as Record<string, unknown>;
    const missing = ['handler_EHLO', 'handler_HELO', 'handler_MAIL', 'handler_RCPT', '_parseAddressCommand'].filter(
        (name) => typeof proto[name] !== 'function',
    );
    if (missing.length > 0) {
        throw new Error(
            `smtp-server changed: SMTPConnection lacks ${missing.join(', ')}; src/smtp-server/envelope.ts must be adapted`,
        );
    }
}

export interface EnvelopeHooks {
    /** The extensions to offer to a session that is (or is not) encrypted, after EHLO or HELO. */
    offer(session: { readonly secure: boolean; readonly extended: boolean }): EhloOffer;
}

/** Installs the EHLO/HELO and MAIL/RCPT adaptations on one connection, before its first command. */
export function adaptEnvelopeCommands(connection: EnvelopeAdaptableConnection, hooks: EnvelopeHooks): void {
    const ehlo = connection.handler_EHLO;
    const helo = connection.handler_HELO;
    connection.handler_EHLO = function (command, callback) {
        const offer = hooks.offer({ secure: connection.secure, extended: true });
        offers.set(connection.session, offer);
        const options = connection._server.options as EhloOptions;
        const saved: EhloOptions = {
            hide8BITMIME: options.hide8BITMIME,
            hideSMTPUTF8: options.hideSMTPUTF8,
            hideDSN: options.hideDSN,
            hideREQUIRETLS: options.hideREQUIRETLS,
            size: options.size,
        };
        options.hide8BITMIME = !offer.eightBitMime;
        options.hideSMTPUTF8 = !offer.smtputf8;
        options.hideDSN = !offer.dsn;
        options.hideREQUIRETLS = !offer.requireTls;
        options.size = offer.sizeLimit;
        try {
            ehlo.call(connection, command, callback);
        } finally {
            Object.assign(options, saved);
        }
    };
    connection.handler_HELO = function (command, callback) {
        offers.set(connection.session, hooks.offer({ secure: connection.secure, extended: false }));
        helo.call(connection, command, callback);
    };
    connection._parseAddressCommand = (name, command) => {
        const kind = /^mail/i.test(name.trim()) ? 'mail' : 'rcpt';
        const line = typeof command === 'string' ? Buffer.from(command, 'utf8') : command;
        const parsed = parseEnvelopeCommand(kind, line);
        // smtp-server refuses an empty recipient itself; a placeholder lets the refusal reach onRcptTo
        const address = { address: parsed.ok ? parsed.mailbox.address : kind === 'rcpt' ? '-' : '', args: false };
        parses.set(address, parsed);
        return address;
    };
}
