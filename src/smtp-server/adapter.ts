/**
 * Everything mailwarden changes in smtp-server's own behaviour, in one place. It subclasses
 * SMTPServer and SMTPConnection of the pinned smtp-server and overrides a few of their
 * internal (underscore) methods, which that version declares in its .d.ts:
 *
 * - PROXY protocol: a peer in the listener's trusted CIDRs must open with a v1 or v2 header,
 *   read by our own parser (net/proxy-socket.ts, net/proxy-protocol.ts) within
 *   `preTransactionTimeout`; the client it names is the session's client from then on (slots,
 *   checks, XCLIENT). A v2 LOCAL header (a balancer's health check) or a v1 UNKNOWN line keeps
 *   the socket's own addresses. A missing, malformed or late header, and a header from any
 *   other peer, closes the connection without a reply, with a log line and a count.
 * - Replies: every reply of every connection, from the very first one (the `421` of a full
 *   listener is sent before any handler runs), passes through send() here. EHLO advertises
 *   ENHANCEDSTATUSCODES and every reply except the greeting and the replies to HELO/EHLO
 *   carries exactly one enhanced code (RFC 2034 section 4), from smtp-server/replies.ts;
 *   smtp-server's own codes are switched off so none is ever doubled. On submission, AUTH is
 *   offered only once the session is encrypted (RFC 8314 section 3; RFC 4954 section 4).
 * - Connection slots: `maxClients` per listener and `maxClientsPerNetwork` per client network
 *   (network-slots.ts), counted from the moment the client's address is known (at accept on
 *   an implicit-TLS listener, so a network cannot fill the handshake queue either); a refused
 *   client gets `421 4.7.0` (an implicit-TLS client that cannot be answered is disconnected).
 * - A pre-transaction deadline (postscreen-like): a session that has not had a MAIL FROM
 *   accepted within `preTransactionTimeout` of its start, or (on mx) of the end of its last
 *   message, is closed with `421 4.4.2` (a sender that reuses a connection sends its next MAIL
 *   at once; Postfix's cache keeps one idle for 2 s); a PROXY header or an implicit TLS
 *   handshake gets the same time (smtp-server would wait `socketTimeout`).
 * - An envelope deadline: from the first MAIL FROM accepted since the session started or since
 *   its last accepted DATA, the client must have DATA accepted within `socketTimeout` of its own
 *   time (the time our answers take pushes it back, by at most another `socketTimeout`; RSET and
 *   a new MAIL do not restart it); then `421 4.4.2`. The idle timeout alone would let a client
 *   hold its slot, and the upstream session behind it, for ever by sending a RCPT every few
 *   minutes. smtp-server has no BDAT (RFC 3030), so DATA is the only way to a message.
 * - Logging: a client that resets or drops the connection is logged once, at info, with the
 *   session id, address, port and where the session was; real errors once, at error.
 * - HELO/EHLO: a name that is not valid UTF-8 is refused with `501 5.5.4` (never rewritten).
 * - Command lines end with CRLF (RFC 5321 section 2.3.8): what is left of one when the client
 *   closes its side is dropped; smtp-server would run it.
 * - AUTH on submission: every PLAIN/LOGIN response is checked (base64, PLAIN authzid) before
 *   smtp-server decodes it (submission/sasl-response.ts).
 * - Envelope commands: EHLO offers, and MAIL/RCPT parse, through smtp-server/envelope.ts; on
 *   submission, each command of a logged-in session first passes smtp-server/commands.ts's gate.
 * - Whether a session's client is still there (clientGone), for a 250 that cannot reach it.
 *
 * Texts come from reply.ts; limits and timeouts from the listener's config. No policy here.
 */
import { isUtf8 } from 'node:buffer';
import type net from 'node:net';
import type tls from 'node:tls';
import type { SMTPServerOptions } from 'smtp-server';
import type { SMTPConnectionOptions, TLSError } from 'smtp-server/lib/smtp-connection.js';
import type { SMTPStream } from 'smtp-server/lib/smtp-stream.js';
import { SMTPConnection, SMTPServer } from './library.ts';
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics.ts';
import { plainAddress } from '../net/ip.ts';
import { classifyOpening, OPENING_BYTES } from '../net/opening-bytes.ts';
import { readProxyHeader } from '../net/proxy-socket.ts';
import { clientNetwork, createNetworkSlots, type NetworkSlot, type NetworkSlots } from '../net/network-slots.ts';
import { pregreetSample, PREGREET_SAMPLE_BYTES, type PregreetLookup, type PregreetResult } from '../pregreet.ts';
import { replyFor } from '../reply.ts';
import { saslResponseProblem } from '../submission/sasl-response.ts';
import { commandName, gateConnectionCommands, type CommandGate } from './commands.ts';
import { adaptEnvelopeCommands, type EnvelopeHooks } from './envelope.ts';
import { rewriteBuiltinReply, rewriteHelloReply } from './replies.ts';
import { sessionId } from './session-id.ts';
import type { SmtpReply } from '../types.ts';

export interface AdapterOptions {
    /** Listener name, for metrics (the logger already carries it). */
    readonly listener: string;
    readonly submission: boolean;
    /** True for peers that must open with a PROXY protocol header. */
    readonly trustProxy: (ip: string) => boolean;
    /** Whether the listener reads PROXY headers at all (for the log line of an untrusted one). */
    readonly proxyEnabled: boolean;
    readonly maxClientsPerNetwork: number;
    readonly preTransactionTimeoutMs: number;
    /** The listener's idle timeout; also the base of the time a message's data may take. */
    readonly socketTimeoutMs: number;
    readonly log: Logger;
    readonly metrics: Metrics;
    /** Runs before each command of a logged-in session (a changed password ends it); null: none. */
    readonly commandGate?: CommandGate | null;
    /** What EHLO offers and how MAIL/RCPT are read (smtp-server/envelope.ts); null: smtp-server's own. */
    readonly envelope?: EnvelopeHooks | null;
    /** The pregreet test; null or a wait of 0: the greeting goes out as soon as onConnect allows. */
    readonly pregreet?: PregreetHooks | null;
}

/** The pregreet test as the adapter runs it (pregreet.ts holds the memory and exemptions). */
export interface PregreetHooks {
    readonly waitMs: number;
    lookup(ip: string): Promise<PregreetLookup>;
    remember(ip: string): Promise<void>;
}

/** What the pregreet test found on one connection, for the session's facts. */
export interface PregreetOutcome {
    readonly result: PregreetResult;
    /** What the client sent before the greeting (pregreetSample), or null. */
    readonly sent: string | null;
}

/**
 * Error replies (4xx and 5xx, 421 aside) one session may collect before it is closed with
 * `421 4.7.0`: Postfix's `smtpd_hard_error_limit` default. A client probing addresses or
 * repeating refused commands is cut off instead of costing a slot for ever.
 */
export const HARD_ERROR_LIMIT = 20;

/**
 * The slowest a message's data may arrive, in bytes per second (Postfix's
 * `smtpd_min_data_rate` default): DATA may take `socketTimeout` plus one second per 500 bytes
 * received. A client trickling a byte now and then, which never trips the idle timeout, is
 * closed with `421 4.4.2`.
 */
export const MIN_DATA_RATE = 500;

/**
 * EHLO, HELO, NOOP, RSET, VRFY, ETRN and HELP a session may send before each further one counts
 * as an error reply (towards HARD_ERROR_LIMIT): Postfix's `smtpd_junk_command_limit` default,
 * over the commands Postfix counts (its EHLO and HELO among them; HELP, which Postfix does not
 * have, is an error there). Reset when a message is accepted. A client cannot hold a slot, and
 * through it an upstream connection, for ever by sending one of them every few minutes, nor
 * have its HELO name checked and a new upstream connection opened without end. A RCPT naming a
 * recipient already accepted in the transaction counts too (Postfix does not need this; it
 * stops a client repeating one address): it adds nothing, smtp-server just answers 250 again.
 */
const JUNK_COMMAND_LIMIT = 100;
const JUNK_COMMANDS = new Set(['EHLO', 'HELO', 'NOOP', 'RSET', 'VRFY', 'ETRN', 'HELP']);
/** Commands that may only end a pipelined group (RFC 2920 section 3.1; QUIT ends the session anyway). */
const GROUP_ENDING = new Set(['EHLO', 'HELO', 'DATA', 'VRFY', 'EXPN', 'NOOP']);

/**
 * The most a socket read gives at once (libuv's 64 KiB buffer): a chunk this long may be followed
 * by more of the same read, handed over as chunks of their own.
 */
const FULL_READ = 64 * 1024;

/** Socket errors that mean the client went away or its network failed: not our errors. */
const CLIENT_GONE = new Set(['ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ECONNABORTED', 'EHOSTUNREACH', 'ENETUNREACH']);

type SocketError = Error & { code?: string; meta?: { stage?: string; remoteAddress?: string } };

/** A TLS failure the client caused (bad handshake, alert, no shared cipher, renegotiation attempt). */
function isClientTlsFailure(err: SocketError): boolean {
    const code = err.code ?? '';
    return err.meta?.stage === 'connect' || code.startsWith('ERR_SSL_') || code.startsWith('ERR_TLS_');
}

/** What a client failure is called in logs. */
function clientEvent(err: SocketError): string {
    if (err.code && CLIENT_GONE.has(err.code)) return 'client reset';
    if (err.code === 'ERR_TLS_HANDSHAKE_TIMEOUT') return 'TLS handshake timeout';
    return 'TLS failure';
}

function line(reply: SmtpReply): string {
    return `${reply.enhanced} ${reply.text}`;
}

/** Why a connection is refused before its session starts. */
type Refusal = { readonly reason: 'network_limit'; readonly network: string } | { readonly reason: 'max_clients' };

class MailwardenConnection extends SMTPConnection {
    readonly #adapter: AdapterOptions;
    #slot: NetworkSlot | null;
    readonly #refusal: Refusal | null;
    /** True while smtp-server sends the greeting or answers HELO/EHLO: those carry no enhanced code. */
    #plain = false;
    #transactionStarted = false;
    /** No MAIL FROM accepted since the session started or its last message ended: the pre-transaction deadline applies. */
    #awaitingMail = true;
    /** smtp-server's count of messages ended (its `_transactionCounter`) when last looked at. */
    #messagesEnded = 0;
    #deadline: NodeJS.Timeout | null = null;
    /** Runs from the first MAIL FROM accepted since the start or the last DATA, until DATA (see the file comment). */
    #envelopeDeadline: NodeJS.Timeout | null = null;
    /** When the command being answered was taken up (performance.now()), while the envelope deadline runs. */
    #answering: number | null = null;
    /** Time spent answering commands (checks, the upstream) since the envelope deadline was armed or last pushed back. */
    #answeredMs = 0;
    /** How far the envelope deadline has been pushed back in all (at most socketTimeout). */
    #pushedBackMs = 0;
    /** The envelope deadline passed while a command was being answered: looked at again when it is. */
    #envelopeDue = false;
    /** Recipients of the transaction before the RCPT being answered: a repeated one adds none. */
    #recipientsBefore = 0;
    #failureLogged = false;
    /** The SASL exchange under way on submission: its mechanism and how many responses were checked. */
    #sasl: { readonly mechanism: string; step: number } | null = null;
    /** Set when the opening bytes were not SMTP: nothing more is read or answered. */
    #foreign = false;
    /** Error replies sent so far (HARD_ERROR_LIMIT). */
    #errors = 0;
    /** JUNK_COMMANDS since the last accepted message (JUNK_COMMAND_LIMIT). */
    #junk = 0;
    /** The reply about to be sent answers a junk command over the limit: it counts as an error. */
    #junkOver = false;
    /**
     * The chunk the parser reads command lines from, and where its next unread line starts;
     * `outer`: the length of the chunk the socket delivered it in (the parser reads the rest of
     * a chunk after the end of data as a chunk of its own).
     */
    #input: { readonly chunk: Buffer; pos: number; readonly outer: number } | null = null;
    /** Watches the data rate while DATA is received (MIN_DATA_RATE). */
    #dataWatch: NodeJS.Timeout | null = null;
    /** True while the pregreet wait runs: what arrives is recorded, and dropped before the parser. */
    #pregreetWatching = false;
    #pregreetBytes: Buffer | null = null;
    #pregreetOutcome: PregreetOutcome | null = null;

    constructor(
        server: MailwardenSmtpServer,
        socket: net.Socket | tls.TLSSocket,
        options: SMTPConnectionOptions | null | undefined,
        extra: { adapter: AdapterOptions; slot: NetworkSlot | null; refusal: Refusal | null },
    ) {
        super(server, socket, options);
        this.#adapter = extra.adapter;
        this.#slot = extra.slot;
        this.#refusal = extra.refusal;
    }

    #fields(): Record<string, unknown> {
        return { session: this.id, client: plainAddress(this.remoteAddress), clientPort: this.remotePort };
    }

    /** Where the session was when something happened, for log lines. */
    #stage(): string {
        if (this._dataStream) return 'data';
        if (this.session.envelope?.mailFrom) return 'transaction';
        if (this.#transactionStarted) return 'between transactions';
        return this.hostNameAppearsAs ? 'before MAIL' : 'before HELO';
    }

    override init(): void {
        const maxClients = this._server.options.maxClients;
        // smtp-server's own check, made here so its 421 gets our code and text (it counts this connection too)
        const refusal: Refusal | null =
            this.#refusal ??
            (maxClients && this._server.connections.size > maxClients ? { reason: 'max_clients' } : null);
        if (refusal) {
            const reply =
                refusal.reason === 'network_limit'
                    ? replyFor('too-many-network-connections', { id: this.id, network: refusal.network })
                    : replyFor('too-many-connections', { id: this.id });
            this.#adapter.metrics.connectionsRefused.inc({ listener: this.#adapter.listener, reason: refusal.reason });
            this.#adapter.log.info(
                { ...this.#fields(), reason: refusal.reason, ...(refusal.reason === 'network_limit' ? refusal : {}) },
                'connection refused: too many connections',
            );
            this._setListeners(() => this.send(reply.code, line(reply)));
            return;
        }
        // the pre-transaction time runs from the greeting: the pregreet wait comes on top
        this.#armDeadline(this.#adapter.preTransactionTimeoutMs + this.#pregreetWait());
        this.#watchOpening();
        // smtp-server's init() waits a fixed 100 ms before every greeting; the wait is ours here
        this._setListeners(() => {
            this.#greetWhenReady().catch((err: unknown) => {
                this.#adapter.log.error({ ...this.#fields(), err }, 'pregreet test failed');
                if (!this._closing && !this._closed) this.connectionReady();
            });
        });
    }

    #pregreetWait(): number {
        return this.#adapter.pregreet?.waitMs ?? 0;
    }

    /** What the pregreet test found (null: not tested on this listener). */
    pregreetOutcome(): PregreetOutcome | null {
        return this.#pregreetOutcome;
    }

    /**
     * The pregreet test (postscreen's greet test): a client neither exempt nor remembered waits
     * `pregreetWait` for the greeting; anything it sends meanwhile is recorded, and neither
     * answered nor run (an unfinished last line included).
     */
    async #greetWhenReady(): Promise<void> {
        const hooks = this.#adapter.pregreet;
        if (!hooks || hooks.waitMs <= 0) return this.connectionReady();
        const ip = plainAddress(this.remoteAddress);
        const started = performance.now();
        this.#pregreetWatching = true;
        const socket = this._socket;
        const onData = (chunk: Buffer): void => {
            const held = this.#pregreetBytes ?? Buffer.alloc(0);
            if (held.length < PREGREET_SAMPLE_BYTES) {
                this.#pregreetBytes = Buffer.concat([held, chunk.subarray(0, PREGREET_SAMPLE_BYTES - held.length)]);
            }
        };
        socket.on('data', onData);
        let timer: NodeJS.Timeout | undefined;
        const waited = new Promise<null>((resolve) => {
            timer = setTimeout(() => resolve(null), hooks.waitMs);
        });
        const lookup = hooks.lookup(ip).catch((): PregreetLookup => 'error');
        const early = await Promise.race([lookup, waited]);
        const skip = (early === 'cached' || early === 'exempt') && this.#pregreetBytes === null;
        if (!skip) await waited;
        clearTimeout(timer);
        socket.removeListener('data', onData);
        this.#pregreetWatching = false;
        if (this._closing || this._closed) return;
        const talked = this.#pregreetBytes !== null;
        const result: PregreetResult = skip
            ? early
            : talked
              ? 'fail'
              : early === 'error' || early === null
                ? 'error'
                : 'pass';
        const sent = this.#pregreetBytes ? pregreetSample(this.#pregreetBytes) : null;
        this.#pregreetOutcome = { result, sent };
        this.#adapter.metrics.pregreet.inc({ result });
        const ms = Math.round(performance.now() - started);
        const fields = { ...this.#fields(), pregreet: result, waitedMs: ms };
        if (talked) this.#adapter.log.info({ ...fields, sent }, 'pregreet: the client talked before the greeting');
        else if (result === 'pass' || result === 'error') {
            this.#adapter.log.info(fields, 'pregreet: the client waited for the greeting');
            void hooks.remember(ip);
        } else this.#adapter.log.debug(fields, 'pregreet: greeted at once');
        this.connectionReady();
    }

    /**
     * Reads the first bytes the client sends alongside the SMTP parser (this listener runs
     * first): a PROXY header here came from a peer that is not trusted to send one (a trusted
     * peer's header was read and removed before the session); an HTTP request line or a TLS
     * ClientHello is not SMTP at all. Each closes the connection at once, without a reply.
     */
    #watchOpening(): void {
        const socket = this._socket;
        let seen = Buffer.alloc(0);
        const onData = (chunk: Buffer): void => {
            seen = Buffer.concat([seen, chunk.subarray(0, OPENING_BYTES)]);
            const kind = classifyOpening(seen);
            if (kind === null && seen.length < OPENING_BYTES) return;
            socket.removeListener('data', onData);
            if (kind === 'proxy' || kind === 'http' || kind === 'tls') this.#refuseForeign(kind);
        };
        socket.on('data', onData);
    }

    #refuseForeign(kind: 'proxy' | 'http' | 'tls'): void {
        this.#foreign = true;
        const adapter = this.#adapter;
        if (kind !== 'proxy') {
            // as Postfix ("HTTP command from …") and postscreen: no SMTP client sends this; no reply
            adapter.metrics.foreignProtocol.inc({ listener: adapter.listener, kind });
            adapter.log.info(
                {
                    ...this.#fields(),
                    kind,
                    reason: kind === 'http' ? 'HTTP request line' : 'TLS ClientHello on a plain SMTP connection',
                },
                `connection closed: ${kind === 'http' ? 'HTTP request' : 'TLS handshake'} on the SMTP port`,
            );
            this._socket.destroy();
            return;
        }
        adapter.metrics.proxyHeaders.inc({ listener: adapter.listener, result: 'untrusted' });
        adapter.log.info(
            {
                ...this.#fields(),
                reason: adapter.proxyEnabled
                    ? 'PROXY header from a peer outside proxyProtocol'
                    : 'PROXY header on a listener without proxyProtocol',
                kind,
            },
            'connection closed: PROXY header from an untrusted peer',
        );
        this._socket.destroy();
    }

    override _onCommand(command: Buffer, callback?: () => void): void {
        // smtp-server takes up the next command only once the one before is answered
        if (this.#envelopeDeadline && command) this.#answering = performance.now();
        const input = this.#input;
        if (input && command) {
            // the line just read ends at the next line feed of the chunk
            const nl = input.chunk.indexOf(0x0a, input.pos);
            input.pos = nl < 0 ? input.chunk.length : nl + 1;
        }
        // the opening bytes were refused: the socket is being destroyed, nothing is answered
        if (this.#foreign) return;
        if (command && !this._nextHandler) {
            const verb = commandName(command);
            if (GROUP_ENDING.has(verb)) {
                if (this.#inputAfterCommand()) return this.#refusePipelining(verb, callback);
                // the rest of the same read may reach the parser only after this command: over TLS
                // each record is a chunk of its own, and a read that filled its buffer is followed
                // by the next one; once the read is over, all of it is in
                if (this.secure || (this.#input?.outer ?? 0) >= FULL_READ) {
                    setImmediate(() => this.#groupEnded(command, verb, callback));
                    return;
                }
            }
            if (JUNK_COMMANDS.has(verb) && ++this.#junk > JUNK_COMMAND_LIMIT) this.#junkOver = true;
        }
        this.#checkSaslResponse(command, callback);
    }

    /** A command that ends a pipelined group, looked at again once the rest of its read reached the parser. */
    #groupEnded(command: Buffer, verb: string, callback?: () => void): void {
        if (this._closing || this._closed) return callback?.();
        if (this.#inputAfterCommand()) return this.#refusePipelining(verb, callback);
        if (JUNK_COMMANDS.has(verb) && ++this.#junk > JUNK_COMMAND_LIMIT) this.#junkOver = true;
        this.#checkSaslResponse(command, callback);
    }

    /**
     * RFC 2920 section 3.1: EHLO, HELO, DATA, VRFY, EXPN and NOOP end a pipelined group. A client
     * that sent more before the answer to one of them (in the same read, a later TLS record of it
     * included, or queued behind it) is out of step (after DATA its message would be read as
     * commands were DATA refused; sending on without the answer to EHLO is what spam software
     * does): answered `554 5.5.0` and closed, as Postfix does
     * (smtpd_forbid_unauth_pipelining, the default from Postfix 3.9).
     */
    #refusePipelining(command: string, callback?: () => void): void {
        this.#adapter.metrics.sessionsCut.inc({ listener: this.#adapter.listener, reason: 'pipelining' });
        this.#adapter.log.info(
            { ...this.#fields(), stage: this.#stage(), command },
            'closing: input sent before the reply to a command that ends a pipelined group',
        );
        const reply = replyFor('pipelining-violation', { id: this.id, command });
        this.#sendReply(reply.code, line(reply));
        this.close();
        callback?.();
    }

    /**
     * smtp-server's parser, watched: which chunk it reads and how far (see #input), so that
     * what a client sent after a command that must end a pipelined group can be told. During the
     * pregreet wait it is fed nothing: what the client sends then is dropped whole. A command
     * line ends with CRLF (RFC 5321 section 2.3.8): what is left of one when the client closes its
     * side is dropped, where smtp-server would run it.
     */
    override _createParser(): SMTPStream {
        const parser = super._createParser();
        parser._flushData = () => {
            parser._remainder = '';
        };
        const write = parser._write.bind(parser);
        let outer: number | null = null;
        parser._write = (chunk, encoding, next) => {
            // talking before the greeting: recorded by the pregreet test (the rules decide), never
            // read as commands, an unfinished last line included (postscreen discards it all); what
            // the socket had read when the wait ended is all dropped, however much it was
            if (this.#pregreetWatching) return next();
            let done = next;
            if (outer === null) {
                // a chunk from the socket (not the rest of one, given back after the end of data)
                outer = chunk.length;
                done = (err) => {
                    outer = null;
                    next(err);
                };
            }
            this.#input = { chunk, pos: 0, outer };
            write(chunk, encoding, done);
        };
        return parser;
    }

    /**
     * True when the client sent more after the command just read, before its reply: the rest of
     * the chunk the command came in, or chunks queued behind it.
     */
    #inputAfterCommand(): boolean {
        const input = this.#input;
        const parser = this._parser;
        if (input && input.pos < input.chunk.length) return true;
        // the parser's buffer holds the chunk being read and whatever came after it
        if (parser && input && parser.writableLength > input.outer) return true;
        return this._socket.readableLength > 0;
    }

    #armDeadline(ms: number): void {
        this.#deadline = setTimeout(() => this.#deadlinePassed(), ms);
        this.#deadline.unref();
    }

    #deadlinePassed(): void {
        this.#deadline = null;
        if (this._closing || this._closed || !this.#awaitingMail) return;
        // a command is being answered (a slow check, the login service): its outcome decides
        if (this._handlerPending) return this.#armDeadline(1000);
        const seconds = Math.round(this.#adapter.preTransactionTimeoutMs / 1000);
        this.#adapter.metrics.connectionTimeouts.inc({ listener: this.#adapter.listener, timeout: 'pre_transaction' });
        this.#adapter.log.info(
            { ...this.#fields(), stage: this.#stage(), seconds },
            'closing: no mail transaction started in time',
        );
        const reply = replyFor('no-transaction-timeout', { id: this.id, seconds });
        this.send(reply.code, line(reply));
    }

    #armEnvelopeDeadline(ms: number): void {
        this.#envelopeDeadline = setTimeout(() => this.#envelopeDeadlinePassed(), ms);
        this.#envelopeDeadline.unref();
    }

    #stopEnvelopeDeadline(): void {
        if (this.#envelopeDeadline) clearTimeout(this.#envelopeDeadline);
        this.#envelopeDeadline = null;
        this.#envelopeDue = false;
    }

    /** `afterAnswer`: called again as the answer to the command that was pending is sent. */
    #envelopeDeadlinePassed(afterAnswer = false): void {
        this.#envelopeDeadline = null;
        if (this._closing || this._closed) return;
        // a command is being answered (a slow check, the upstream): its outcome decides, and the
        // deadline is looked at again as its answer goes out (send())
        if (!afterAnswer && this._handlerPending) {
            this.#envelopeDue = true;
            return;
        }
        // the deadline counts the client's time, not ours: the time our answers took (a slow
        // upstream, the checks) pushes it back (RFC 5321 section 4.5.3.2 bounds each wait for a
        // reply), by at most one more socketTimeout in all: answers the client can make slow
        // (checks of names it chose, a Postfix asking about its recipients) must not buy it the
        // slot for ever
        const owed = Math.min(Math.round(this.#answeredMs), this.#adapter.socketTimeoutMs - this.#pushedBackMs);
        this.#answeredMs = 0;
        if (owed >= 1) {
            this.#pushedBackMs += owed;
            return this.#armEnvelopeDeadline(owed);
        }
        const seconds = Math.round(this.#adapter.socketTimeoutMs / 1000);
        this.#adapter.metrics.connectionTimeouts.inc({ listener: this.#adapter.listener, timeout: 'envelope' });
        this.#adapter.log.info(
            {
                ...this.#fields(),
                stage: this.#stage(),
                seconds,
                recipients: this.session.envelope?.rcptTo.length ?? 0,
            },
            'closing: no message sent in time after MAIL FROM',
        );
        const reply = replyFor('envelope-timeout', { id: this.id, seconds });
        this.send(reply.code, line(reply));
    }

    #releaseSlot(): void {
        this.#stopDataWatch();
        this.#stopEnvelopeDeadline();
        if (this.#deadline) clearTimeout(this.#deadline);
        this.#deadline = null;
        this.#slot?.release();
        this.#slot = null;
    }

    override send(code: number, data?: string | string[] | null, context?: string | false): void {
        if (this.#answering !== null) {
            this.#answeredMs += performance.now() - this.#answering;
            this.#answering = null;
        }
        if (
            context === 'RCPT_TO_OK' &&
            this.session.envelope.rcptTo.length === this.#recipientsBefore &&
            ++this.#junk > JUNK_COMMAND_LIMIT
        ) {
            this.#junkOver = true;
        }
        this.#sendReply(code, data, context);
        if (this.#envelopeDue) {
            this.#envelopeDue = false;
            this.#envelopeDeadlinePassed(true);
        }
        if (context === 'DATA_OK') this.#junk = 0;
        const junk = this.#junkOver;
        this.#junkOver = false;
        const error = (code >= 400 && code !== 421) || (junk && code < 400);
        if (error && ++this.#errors === HARD_ERROR_LIMIT && !this._closing && !this._closed) {
            this.#adapter.metrics.sessionsCut.inc({ listener: this.#adapter.listener, reason: 'error_limit' });
            this.#adapter.log.info(
                { ...this.#fields(), errors: this.#errors, stage: this.#stage() },
                'closing: too many errors in this session',
            );
            const reply = replyFor('too-many-errors', { id: this.id });
            this.#sendReply(reply.code, line(reply));
        }
    }

    /**
     * smtp-server resets the session after each message's last reply (and at RSET, EHLO, HELO);
     * its message count tells which: after a message, the next MAIL FROM has
     * `preTransactionTimeout` again on mx listeners, so a client cannot sit between messages on
     * junk commands.
     */
    override _resetSession(): void {
        super._resetSession();
        // on submission the client has logged in (and its logins are counted): a mail program may
        // keep its connection between two messages for as long as socketTimeout
        if (this._transactionCounter === this.#messagesEnded || this.#adapter.submission) return;
        this.#messagesEnded = this._transactionCounter;
        this.#awaitingMail = true;
        if (!this.#deadline && !this._closing && !this._closed)
            this.#armDeadline(this.#adapter.preTransactionTimeoutMs);
    }

    /** RCPT as smtp-server runs it; the count before it tells a repeated recipient (send()). */
    override handler_RCPT(command: Buffer, callback: () => void): void {
        this.#recipientsBefore = this.session.envelope.rcptTo.length;
        super.handler_RCPT(command, callback);
    }

    /**
     * DATA as smtp-server starts it, plus a watch on the rate the message arrives at: the idle
     * timeout alone never ends a client that sends a byte every few seconds. DATA with a
     * recipient is accepted (smtp-server refuses it only without one): the envelope deadline
     * ends there, and the data rate rule takes over.
     */
    override handler_DATA(command: Buffer, callback: () => void): void {
        if (this.session.envelope.rcptTo.length > 0) this.#stopEnvelopeDeadline();
        super.handler_DATA(command, callback);
        const parser = this._parser;
        if (!parser || !parser._dataMode || this.#dataWatch) return;
        const started = performance.now();
        this.#dataWatch = setInterval(() => {
            const current = this._parser;
            if (!current || !current._dataMode || this._closing || this._closed) return this.#stopDataWatch();
            const allowedMs = this.#adapter.socketTimeoutMs + (current.dataBytes * 1000) / MIN_DATA_RATE;
            if (performance.now() - started <= allowedMs) return;
            this.#stopDataWatch();
            this.#adapter.metrics.sessionsCut.inc({ listener: this.#adapter.listener, reason: 'data_rate' });
            this.#adapter.log.info(
                { ...this.#fields(), bytes: current.dataBytes, ms: Math.round(performance.now() - started) },
                'closing: message data arrives too slowly',
            );
            const reply = replyFor('data-too-slow', { id: this.id, rate: String(MIN_DATA_RATE) });
            this.#sendReply(reply.code, line(reply));
        }, 1000);
        this.#dataWatch.unref();
    }

    #stopDataWatch(): void {
        if (this.#dataWatch) clearInterval(this.#dataWatch);
        this.#dataWatch = null;
    }

    #sendReply(code: number, data?: string | string[] | null, context?: string | false): void {
        if (Array.isArray(data)) {
            // EHLO (the only multi-line reply); on submission, AUTH only once the session is encrypted
            const lines = this.#adapter.submission && !this.secure ? data.filter((l) => !/^AUTH\b/i.test(l)) : data;
            super.send(code, lines, false);
            return;
        }
        if (this.#plain) {
            // the greeting and the replies to HELO/EHLO: no enhanced code (RFC 2034 section 3)
            super.send(code, typeof data === 'string' ? rewriteHelloReply(code, data) : data, false);
            return;
        }
        if (code >= 300 && code < 400) {
            super.send(code, data, false);
            return;
        }
        if (code === 250 && context === 'MAIL_FROM_OK') {
            this.#transactionStarted = true;
            this.#awaitingMail = false;
            if (this.#deadline) clearTimeout(this.#deadline);
            this.#deadline = null;
            if (!this.#envelopeDeadline) {
                this.#answeredMs = 0;
                this.#pushedBackMs = 0;
                this.#armEnvelopeDeadline(this.#adapter.socketTimeoutMs);
            }
        }
        super.send(
            code,
            rewriteBuiltinReply(code, data ?? '', typeof context === 'string' ? context : undefined),
            false,
        );
    }

    /**
     * On submission, each response of a PLAIN or LOGIN exchange is checked before smtp-server
     * decodes it (submission/sasl-response.ts): a response that is not base64 gets `501 5.5.2`,
     * a PLAIN authorization identity other than the login `535 5.7.8`; either ends the exchange.
     */
    #checkSaslResponse(command: Buffer, callback?: () => void): void {
        if (this.#adapter.submission && command) {
            // read exactly as smtp-server reads it (UTF-8; the command name ends at the first space,
            // the arguments are split on any white space, Unicode's included), so no spelling is
            // checked here as one thing and acted on there as another
            const text = command.toString('utf8');
            let response: string | null = null;
            if (this._nextHandler && this.#sasl) {
                response = text.trim();
            } else if (!this._nextHandler) {
                const args = commandName(command) === 'AUTH' ? text.trim().split(/\s+/) : null;
                this.#sasl = args ? { mechanism: (args[1] ?? '').toUpperCase(), step: 0 } : null;
                // more than one argument after the mechanism is no base64 response either
                response = args && args.length > 2 ? args.slice(2).join(' ') : null;
            }
            const sasl = this.#sasl;
            if (sasl && (sasl.mechanism === 'PLAIN' || sasl.mechanism === 'LOGIN')) {
                if (response !== null) {
                    const problem = saslResponseProblem(sasl.mechanism, sasl.step++, response);
                    if (problem) {
                        this._nextHandler = false;
                        this.#sasl = null;
                        // one auth line per attempt, as for checked ones; no password was checked
                        this.#adapter.metrics.smtpAuth.inc({ listener: this.#adapter.listener, result: 'invalid' });
                        this.#adapter.log.info(
                            {
                                ...this.#fields(),
                                mechanism: sasl.mechanism,
                                result: 'invalid',
                                reason: problem === 'authzid' ? 'authorization identity' : 'malformed credentials',
                            },
                            'auth',
                        );
                        const reply = replyFor(problem === 'authzid' ? 'auth-invalid' : 'auth-response-invalid', {
                            id: this.id,
                        });
                        this.send(reply.code, line(reply));
                        callback?.();
                        return;
                    }
                }
            }
        }
        super._onCommand(command, callback);
    }

    /** smtp-server's own enhanced codes are never added: send() above puts in exactly one. */
    override _getEnhancedStatusCode(): string {
        return '';
    }

    override _sendGreeting(): void {
        this.#plain = true;
        try {
            super._sendGreeting();
        } finally {
            this.#plain = false;
        }
    }

    /**
     * A HELO/EHLO argument that is not valid UTF-8 (RFC 6531 section 3.3 allows U-labels, not
     * other 8-bit bytes) is refused, never decoded into replacement characters and passed on
     * upstream (XCLIENT HELO=, the EHLO after it) and into Received. True when it was refused.
     */
    #refuseHelloName(command: Buffer, callback: () => void): boolean {
        if (isUtf8(command)) return false;
        const reply = replyFor('command-syntax', { id: this.id, reason: 'the host name is not valid UTF-8' });
        this.send(reply.code, line(reply));
        callback();
        return true;
    }

    override handler_EHLO(command: Buffer, callback: () => void): void {
        if (this.#refuseHelloName(command, callback)) return;
        this.#plain = true;
        try {
            super.handler_EHLO(command, callback);
        } finally {
            this.#plain = false;
        }
    }

    override handler_HELO(command: Buffer, callback: () => void): void {
        if (this.#refuseHelloName(command, callback)) return;
        this.#plain = true;
        try {
            super.handler_HELO(command, callback);
        } finally {
            this.#plain = false;
        }
    }

    override _onTimeout(): void {
        const open = !this._closing;
        super._onTimeout();
        if (open && this._closing) {
            this.#adapter.metrics.connectionTimeouts.inc({ listener: this.#adapter.listener, timeout: 'idle' });
            this.#adapter.log.info({ ...this.#fields(), stage: this.#stage() }, 'closing: client idle too long');
        }
    }

    /**
     * Socket errors. smtp-server logs every one at error with unformatted placeholders and
     * reports those inside a transaction a second time through the server's 'error' event; a
     * client that went away is not an error of ours, so it is logged once, at info.
     */
    override _onError(err: SocketError): void {
        const code = err.code ?? '';
        if (CLIENT_GONE.has(code) || isClientTlsFailure(err)) {
            if (!this.#failureLogged) {
                this.#failureLogged = true;
                this.#adapter.log.info(
                    { ...this.#fields(), stage: this.#stage(), code: code || undefined, reason: err.message },
                    `connection ended by the client: ${clientEvent(err)}`,
                );
            }
            // outside a transaction there is nothing to finish; inside, the socket's close event ends it
            if (!this.session.envelope?.mailFrom) this.close();
            return;
        }
        this.#adapter.log.error({ ...this.#fields(), stage: this.#stage(), err }, 'connection error');
    }

    override close(): void {
        // a connection the server has closed no longer holds a slot (as for maxClients)
        this.#releaseSlot();
        super.close();
    }

    override _onClose(): void {
        this.#releaseSlot();
        // here, not by a listener on the socket: STARTTLS (smtp-server's upgrade) removes every
        // listener of the plain socket it replaces
        (this._server as MailwardenSmtpServer).forget(this.id);
        super._onClose();
    }
}

/**
 * smtp-server with mailwarden's connection handling (see the file comment). Build it with the
 * listener's smtp-server options and the adapter options; `options.maxClients` is the listener's.
 */
export class MailwardenSmtpServer extends SMTPServer {
    readonly #adapter: AdapterOptions;
    readonly #networks: NetworkSlots;
    /** Slots taken at accept (implicit TLS), by raw socket and then by the TLS socket on top of it. */
    readonly #accepted = new WeakMap<net.Socket, NetworkSlot>();
    /** Open connections by session id (STARTTLS replaces a connection's `_socket`). */
    readonly #byId = new Map<string, MailwardenConnection>();

    constructor(options: SMTPServerOptions, adapter: AdapterOptions) {
        super(options);
        this.#adapter = adapter;
        this.#networks = createNetworkSlots(adapter.maxClientsPerNetwork);
    }

    /** True when the client of this session can no longer be written to. */
    clientGone(id: string): boolean {
        const socket = this.#byId.get(id)?._socket;
        return !socket || socket.destroyed || !socket.writable;
    }

    /** Connections known by session id: open ones only (tests and diagnostics). */
    get knownConnections(): number {
        return this.#byId.size;
    }

    /** A connection closed: its session id is forgotten (MailwardenConnection._onClose). */
    forget(id: string): void {
        this.#byId.delete(id);
    }

    /** What the pregreet test found for this session (null: not tested). */
    pregreetOutcome(id: string): PregreetOutcome | null {
        return this.#byId.get(id)?.pregreetOutcome() ?? null;
    }

    /** Connections open now from `ip`'s network (tests and diagnostics). */
    networkConnections(ip: string): number {
        return this.#networks.count(ip);
    }

    override _expectsProxyHeader(socket: net.Socket): boolean {
        return this.#adapter.trustProxy(plainAddress(socket.remoteAddress));
    }

    /**
     * Trusted peers: the PROXY header is read here, by our parser (smtp-server's reads v1
     * only). Other peers go on at once, as in smtp-server, which then reads nothing before the
     * session.
     */
    override _handleProxy(socket: net.Socket, callback: Parameters<SMTPServer['_handleProxy']>[1]): void {
        const id = sessionId();
        if (!this._expectsProxyHeader(socket)) {
            // as smtp-server does, with a session id made by sessionId()
            const hosts = this.options.ignoredHosts;
            const ignore = hosts && hosts.includes(socket.remoteAddress!);
            setImmediate(() => callback(null, { id, ignore }));
            return;
        }
        const peer = plainAddress(socket.remoteAddress);
        const adapter = this.#adapter;
        const refuse = (result: string, reason: string): void => {
            adapter.metrics.proxyHeaders.inc({ listener: adapter.listener, result });
            adapter.log.info(
                { session: id, client: peer, clientPort: socket.remotePort, result, reason },
                'connection closed: no valid PROXY header',
            );
            socket.on('error', () => undefined);
            socket.destroy();
            callback(new Error(`PROXY header: ${reason}`));
        };
        readProxyHeader(socket).then(
            (read) => {
                if (!read.ok) return refuse(read.reason, read.detail);
                const { header } = read;
                if (header.command === 'local' || !header.source) {
                    // the balancer speaking for itself (a health check): the socket's own addresses
                    adapter.metrics.proxyHeaders.inc({ listener: adapter.listener, result: 'local' });
                    adapter.log.debug({ session: id, client: peer, version: header.version }, 'PROXY LOCAL header');
                    return callback(null, { id });
                }
                adapter.metrics.proxyHeaders.inc({ listener: adapter.listener, result: 'proxy' });
                adapter.log.debug(
                    { session: id, proxy: peer, client: header.source.address, version: header.version },
                    'PROXY header',
                );
                callback(null, {
                    id,
                    remoteAddress: header.source.address,
                    remotePort: header.source.port,
                });
            },
            (err: unknown) => refuse('invalid', err instanceof Error ? err.message : String(err)),
        );
    }

    override _acceptSocket(socket: net.Socket, handshake: boolean): (() => void) | false {
        let slot: NetworkSlot | null = null;
        const proxied = this._expectsProxyHeader(socket);
        if (handshake && !proxied) {
            // implicit TLS: the address is known now, and nothing can be said before the handshake
            const ip = plainAddress(socket.remoteAddress);
            slot = this.#networks.acquire(ip);
            if (!slot) {
                this.#adapter.metrics.connectionsRefused.inc({
                    listener: this.#adapter.listener,
                    reason: 'network_limit',
                });
                this.#adapter.log.info(
                    { client: ip, clientPort: socket.remotePort, reason: 'network_limit', network: clientNetwork(ip) },
                    'connection refused before the TLS handshake: too many connections',
                );
                socket.on('error', () => undefined);
                socket.destroy();
                return false;
            }
            const taken = slot;
            this.#accepted.set(socket, taken);
            socket.once('close', () => taken.release());
        }
        const release = super._acceptSocket(socket, handshake);
        if (release === false) {
            slot?.release();
            return false;
        }
        // the PROXY header and the TLS handshake get the pre-transaction time, not socketTimeout
        if (handshake || proxied) socket.setTimeout(this.#adapter.preTransactionTimeoutMs);
        return release;
    }

    override _upgrade(socket: net.Socket, callback: (err: TLSError | null, tlsSocket?: tls.TLSSocket) => void): void {
        super._upgrade(socket, (err, tlsSocket) => {
            const slot = this.#accepted.get(socket);
            if (slot && tlsSocket) this.#accepted.set(tlsSocket, slot);
            callback(err, tlsSocket);
        });
        const top = this._pendingSockets.get(socket);
        if (top && top !== socket) top.setTimeout(this.#adapter.preTransactionTimeoutMs);
    }

    /** smtp-server's connect(), with our connection class, so its very first reply is ours too. */
    override connect(socket: net.Socket | tls.TLSSocket, socketOptions?: SMTPConnectionOptions | null): void {
        let slot = this.#accepted.get(socket) ?? null;
        let refusal: Refusal | null = null;
        if (!slot) {
            const ip = plainAddress(socketOptions?.remoteAddress ?? socket.remoteAddress);
            slot = this.#networks.acquire(ip);
            if (slot) {
                const taken = slot;
                socket.once('close', () => taken.release());
            } else refusal = { reason: 'network_limit', network: clientNetwork(ip) };
        }
        const connection = new MailwardenConnection(this, socket, socketOptions, {
            adapter: this.#adapter,
            slot,
            refusal,
        });
        if (this.#adapter.commandGate) gateConnectionCommands(connection, this.#adapter.commandGate);
        if (this.#adapter.envelope) {
            adaptEnvelopeCommands(connection, this.#adapter.envelope);
        }
        const id = connection.id;
        this.#byId.set(id, connection);
        this.connections.add(connection);
        connection.on('error', (err: Error) => this._onError(err));
        connection.on('connect', (data: Parameters<SMTPServer['_onClientConnect']>[0]) => this._onClientConnect(data));
        connection.init();
    }

    /**
     * Server-level errors. A failed implicit TLS handshake arrives here: the client's doing,
     * logged once at info; anything else goes to the listener's 'error' handler.
     */
    override _onError(err: SocketError): void {
        if (isClientTlsFailure(err) || (err.code && CLIENT_GONE.has(err.code))) {
            if (err.code === 'ERR_TLS_HANDSHAKE_TIMEOUT') {
                this.#adapter.metrics.connectionTimeouts.inc({
                    listener: this.#adapter.listener,
                    timeout: 'handshake',
                });
            }
            this.#adapter.log.info(
                { client: plainAddress(err.meta?.remoteAddress), code: err.code, reason: err.message },
                `connection ended before the session: ${clientEvent(err)}`,
            );
            return;
        }
        super._onError(err);
    }
}
