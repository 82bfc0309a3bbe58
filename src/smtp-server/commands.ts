/**
 * A gate in front of every command of an authenticated smtp-server connection: smtp-server has
 * no per-command hook, so this wraps the connection's `_onCommand` (the one method its command
 * parser calls for each command line). When the gate returns a reply, that reply is sent instead
 * of running the command; a 421 closes the connection (RFC 5321 section 3.8). QUIT always runs,
 * as do the continuation lines of an AUTH exchange and anything before AUTH succeeded.
 *
 * This is the only adaptation of smtp-server's command handling. It relies on internals of the
 * pinned version (3.21.x): `SMTPConnection.prototype._onCommand(command, callback)`,
 * `_nextHandler`, `session.user` and `send()`. checkCommandGateSupport() verifies them at start
 * and test/smtp-server/commands.test.ts fails loudly when an upgrade changes them.
 * It decides nothing itself: the gate does.
 */
import { SMTPConnection } from './library.ts';
import type { SmtpReply } from '../types.ts';

/** What the gate sees of a session. */
export interface GatedSession {
    readonly id: string;
    readonly user?: unknown;
}

/** Returns the reply that ends the session instead of running `command`, or null to run it. */
export type CommandGate = (session: GatedSession, command: string) => SmtpReply | null;

interface GateableConnection {
    session: GatedSession;
    _nextHandler: unknown;
    _onCommand: (this: GateableConnection, command: Buffer, callback?: () => void) => void;
    send(code: number, data?: string | string[], context?: unknown): void;
}

/**
 * A command's name exactly as smtp-server reads it (the UTF-8 text up to the first space,
 * upper-cased: `Rſet` is RSET there). Only the name is decoded: a space byte is never part of
 * another UTF-8 character, so cutting the bytes first gives the same name.
 */
export function commandName(command: Buffer | null | undefined): string {
    if (!command) return '';
    const space = command.indexOf(0x20);
    return command.toString('utf8', 0, space < 0 ? command.length : space).toUpperCase();
}

/** The smtp-server version these internals were read from. */
export const GATED_SMTP_SERVER = '3.21';

/** Throws when the installed smtp-server lacks the internals the gate wraps. */
export function checkCommandGateSupport(): void {
    const proto = SMTPConnection.prototype as unknown as Partial<GateableConnection>;
    if (typeof proto._onCommand !== 'function' || proto._onCommand.length !== 2 || typeof proto.send !== 'function') {
        throw new Error(
            `smtp-server changed: SMTPConnection.prototype._onCommand(command, callback) is gone; ` +
                `src/smtp-server/commands.ts was written for smtp-server ${GATED_SMTP_SERVER}`,
        );
    }
}

/** Wraps one connection's command handling; called once per connection, before its greeting. */
export function gateConnectionCommands(connection: unknown, gate: CommandGate): void {
    const conn = connection as GateableConnection;
    const original = conn._onCommand;
    conn._onCommand = function (this: GateableConnection, command: Buffer, callback?: () => void): void {
        // continuation lines of AUTH (and anything before a login) go to smtp-server untouched
        if (this.session.user && !this._nextHandler) {
            const name = commandName(command);
            if (name !== 'QUIT') {
                const reply = gate(this.session, name);
                if (reply) {
                    // as smtp-server's own 421s: send() closes the connection, nothing further runs
                    this.send(reply.code, `${reply.enhanced} ${reply.text}`);
                    if (reply.code !== 421) callback?.();
                    return;
                }
            }
        }
        original.call(this, command, callback);
    };
}
