/**
 * A client for Dovecot's authentication protocol (the "Dovecot SASL authentication protocol",
 * version 1.2, the one Postfix's `smtpd_sasl_type = dovecot` speaks), over a unix socket or TCP,
 * and the credential backend built on it.
 *
 *   C: VERSION 1 2 / CPID <pid>          S: VERSION 1 2, MECH …, SPID, CUID, COOKIE, DONE
 *   C: AUTH <id> PLAIN service=smtp nologin lip=… rip=… secured resp=<base64 \0login\0password>
 *   S: OK <id> user=…   |   FAIL <id> [user=…] [temp] [reason=…] …
 *
 * Fields are TAB-separated; values use Dovecot's \x01 escaping. PLAIN is RFC 4616. One connection
 * is kept and shared by all requests (each has its own id); it is re-opened after a failure.
 * Anything other than a clear answer — a socket that does not connect, a timeout, a reply that
 * does not follow the protocol, `FAIL … temp` — is 'unavailable' (454 4.7.0), never 'invalid'.
 * Passwords travel only inside the `resp=` field and are never logged or kept.
 */
import net from 'node:net';
import type { AuthContext, AuthOutcome, AuthResult, AuthBackend } from './auth-types.ts';
import type { DovecotAuthAddress } from '../config/types.ts';
import type { SenderPolicy } from './sender-policy.ts';
import { compileSenderPolicy } from './sender-policy.ts';
import { createSendAsTable, type ReloadEvent, type SendAsTable } from './users-file.ts';

export type { AuthContext, AuthOutcome, AuthResult } from './auth-types.ts';

export interface DovecotClientOptions {
    readonly address: DovecotAuthAddress;
    /** Time to connect and finish the handshake (default 3 s). */
    readonly connectTimeoutMs?: number;
    /** Time for one answer (default 15 s; Dovecot delays failures by auth_failure_delay, 2 s by default). */
    readonly timeoutMs?: number;
    /** The `service=` value (default `smtp`). */
    readonly service?: string;
    /** Requests in flight at most; beyond this the answer is 'unavailable' (default 256). */
    readonly maxPending?: number;
}

export interface DovecotClient {
    authenticate(login: string, password: string, context?: AuthContext): Promise<AuthOutcome>;
    close(): void;
}

export const DOVECOT_DEFAULTS = {
    connectTimeoutMs: 3_000,
    timeoutMs: 15_000,
    service: 'smtp',
    maxPending: 256,
} as const;

/** Longest line accepted from the server. */
const MAX_LINE = 65_536;

/** Dovecot's str_tabescape(): \x01 → \x011, TAB → \x01t, CR → \x01r, LF → \x01n. */
export function tabEscape(value: string): string {
    return value.replace(
        // eslint-disable-next-line no-control-regex -- \x01 is the protocol's escape character
        /[\x01\t\r\n]/g,
        (c) => ({ '\x01': '\x011', '\t': '\x01t', '\r': '\x01r', '\n': '\x01n' })[c] ?? c,
    );
}

/** The reverse of tabEscape. */
export function tabUnescape(value: string): string {
    // eslint-disable-next-line no-control-regex -- \x01 is the protocol's escape character
    return value.replace(/\x01(.)/g, (_m, c: string) => ({ '1': '\x01', t: '\t', r: '\r', n: '\n' })[c] ?? c);
}

/** Splits `key=value` / `flag` parameters. */
function parseParams(fields: readonly string[]): Map<string, string> {
    const out = new Map<string, string>();
    for (const f of fields) {
        const eq = f.indexOf('=');
        if (eq < 0) out.set(f, '');
        else out.set(f.slice(0, eq), tabUnescape(f.slice(eq + 1)));
    }
    return out;
}

class ProtocolError extends Error {}

/** An outcome, marked `lost` when the connection failed before the answer came. */
type Internal = AuthOutcome & { readonly lost?: boolean };

interface Pending {
    readonly resolve: (outcome: Internal) => void;
    readonly timer: NodeJS.Timeout;
}

/** One handshaken connection. */
class Connection {
    private readonly socket: net.Socket;
    private buffer = '';
    private handshakeDone = false;
    private versionSeen = false;
    private readonly mechs = new Set<string>();
    readonly pending = new Map<number, Pending>();
    closed = false;
    /** Why the connection ended. */
    failure: Error | null = null;
    /** Settles once: ready, or failed to become ready. */
    readonly ready: Promise<void>;
    private settleReady!: (err?: Error) => void;
    private onGone: (() => void) | null = null;

    constructor(address: DovecotAuthAddress, connectTimeoutMs: number, onGone: () => void) {
        this.onGone = onGone;
        this.ready = new Promise<void>((resolve, reject) => {
            this.settleReady = (err?: Error) => (err ? reject(err) : resolve());
        });
        this.ready.catch(() => {});
        this.socket =
            address.kind === 'unix'
                ? net.connect({ path: address.path })
                : net.connect({ host: address.host, port: address.port });
        this.socket.setEncoding('utf8');
        this.socket.setNoDelay(true);
        const timer = setTimeout(() => this.fail(new Error('timed out connecting to Dovecot')), connectTimeoutMs);
        this.ready.then(
            () => clearTimeout(timer),
            () => clearTimeout(timer),
        );
        this.socket.on('connect', () => {
            this.socket.write(`VERSION\t1\t2\nCPID\t${process.pid}\n`);
        });
        this.socket.on('data', (chunk: string) => this.onData(chunk));
        this.socket.on('error', (err) => this.fail(err));
        this.socket.on('close', () => this.fail(new Error('Dovecot closed the connection')));
    }

    private onData(chunk: string): void {
        this.buffer += chunk;
        let nl: number;
        while ((nl = this.buffer.indexOf('\n')) >= 0) {
            const line = this.buffer.slice(0, nl);
            this.buffer = this.buffer.slice(nl + 1);
            try {
                this.onLine(line);
            } catch (err) {
                this.fail(err instanceof Error ? err : new Error(String(err)));
                return;
            }
            if (this.closed) return;
        }
        if (this.buffer.length > MAX_LINE) this.fail(new ProtocolError('Dovecot sent an overlong line'));
    }

    private onLine(line: string): void {
        const fields = line.split('\t');
        const cmd = fields[0] ?? '';
        if (!this.handshakeDone) {
            if (!this.versionSeen) {
                if (cmd !== 'VERSION' || fields[1] !== '1') {
                    throw new ProtocolError('the server does not speak the Dovecot auth protocol version 1');
                }
                this.versionSeen = true;
                return;
            }
            switch (cmd) {
                case 'MECH':
                    this.mechs.add((fields[1] ?? '').toUpperCase());
                    return;
                case 'SPID':
                case 'CUID':
                case 'COOKIE':
                    return;
                case 'DONE':
                    if (!this.mechs.has('PLAIN')) throw new ProtocolError('Dovecot does not offer the PLAIN mechanism');
                    this.handshakeDone = true;
                    this.settleReady();
                    return;
                default:
                    // later protocol minor versions may add handshake lines
                    if (/^[A-Z][A-Z0-9-]*$/.test(cmd)) return;
                    throw new ProtocolError('unexpected handshake line from Dovecot');
            }
        }
        if (cmd !== 'OK' && cmd !== 'FAIL' && cmd !== 'CONT') throw new ProtocolError('unexpected reply from Dovecot');
        const id = Number(fields[1]);
        if (!/^\d+$/.test(fields[1] ?? '')) throw new ProtocolError('reply without a request id from Dovecot');
        const params = parseParams(fields.slice(2));
        let outcome: AuthOutcome;
        if (cmd === 'OK') {
            const user = params.get('user');
            outcome = user ? { result: 'ok', user } : { result: 'ok' };
        } else if (cmd === 'FAIL') {
            const reason = params.get('reason') ?? params.get('code');
            const temp = params.has('temp') || params.get('code') === 'temp_fail';
            // the account as Dovecot named it (after auth_username_format, realms): failures count there too
            const user = params.get('user');
            outcome = {
                result: temp ? 'unavailable' : 'invalid',
                reason: reason ?? (temp ? 'temporary failure' : 'failed'),
                ...(user && !temp ? { user } : {}),
            };
        } else {
            // CONT: PLAIN with an initial response needs no continuation; abandon the connection
            throw new ProtocolError('Dovecot asked for a continuation PLAIN does not need');
        }
        const p = this.pending.get(id);
        if (!p) return; // its request timed out
        this.pending.delete(id);
        clearTimeout(p.timer);
        p.resolve(outcome);
    }

    send(line: string): void {
        this.socket.write(line);
    }

    /** Ends the connection: every request in flight becomes 'unavailable'. */
    fail(err: Error): void {
        if (this.closed) return;
        this.closed = true;
        this.failure = err;
        this.settleReady(err);
        this.socket.destroy();
        for (const [id, p] of this.pending) {
            clearTimeout(p.timer);
            this.pending.delete(id);
            p.resolve({ result: 'unavailable', reason: err.message, lost: true });
        }
        const gone = this.onGone;
        this.onGone = null;
        gone?.();
    }
}

/** Creates the client. It connects on first use. */
export function createDovecotClient(opts: DovecotClientOptions): DovecotClient {
    const connectTimeoutMs = opts.connectTimeoutMs ?? DOVECOT_DEFAULTS.connectTimeoutMs;
    const timeoutMs = opts.timeoutMs ?? DOVECOT_DEFAULTS.timeoutMs;
    const service = opts.service ?? DOVECOT_DEFAULTS.service;
    const maxPending = opts.maxPending ?? DOVECOT_DEFAULTS.maxPending;
    let conn: Connection | null = null;
    let nextId = 1;
    let closed = false;
    let inFlight = 0;

    const connection = (): Connection => {
        if (conn && !conn.closed) return conn;
        const c = new Connection(opts.address, connectTimeoutMs, () => {
            if (conn === c) conn = null;
        });
        conn = c;
        return c;
    };

    const attempt = async (line: (id: number) => string): Promise<Internal> => {
        const c = connection();
        try {
            await c.ready;
        } catch (err) {
            return { result: 'unavailable', reason: err instanceof Error ? err.message : String(err), lost: true };
        }
        if (c.closed) return { result: 'unavailable', reason: c.failure?.message ?? 'connection lost', lost: true };
        const id = nextId;
        nextId = nextId >= 0xffff_fffe ? 1 : nextId + 1;
        return new Promise((resolve) => {
            const timer = setTimeout(() => {
                c.pending.delete(id);
                resolve({ result: 'unavailable', reason: 'Dovecot did not answer in time' });
                // a server that stops answering is abandoned; the next request reconnects
                c.fail(new Error('Dovecot did not answer in time'));
            }, timeoutMs);
            c.pending.set(id, { timer, resolve });
            c.send(line(id));
        });
    };

    return {
        async authenticate(login: string, password: string, context: AuthContext = {}): Promise<AuthOutcome> {
            if (closed) return { result: 'unavailable', reason: 'client closed' };
            // PLAIN cannot carry NUL (RFC 4616 section 2); such credentials cannot be right
            if (login === '' || login.includes('\0') || password.includes('\0'))
                return { result: 'invalid', reason: 'malformed credentials', unchecked: true };
            if (Buffer.byteLength(login) + Buffer.byteLength(password) > 4096)
                return { result: 'invalid', reason: 'credentials too long', unchecked: true };
            if (inFlight >= maxPending) return { result: 'unavailable', reason: 'too many authentications in flight' };
            const resp = Buffer.from(`\0${login}\0${password}`, 'utf8').toString('base64');
            const fields = [`service=${tabEscape(service)}`, 'nologin'];
            if (context.localIp) fields.push(`lip=${tabEscape(context.localIp)}`);
            if (context.remoteIp) fields.push(`rip=${tabEscape(context.remoteIp)}`);
            if (context.localPort) fields.push(`lport=${context.localPort}`);
            if (context.remotePort) fields.push(`rport=${context.remotePort}`);
            if (context.secured !== false) fields.push('secured');
            fields.push(`resp=${resp}`);
            const line = (id: number): string => `AUTH\t${id}\tPLAIN\t${fields.join('\t')}\n`;
            inFlight++;
            try {
                const reused = conn !== null && !conn.closed;
                let outcome = await attempt(line);
                // a kept connection may have been closed by the server meanwhile: try a fresh one once
                if (outcome.lost && reused && !closed) outcome = await attempt(line);
                const { lost: _lost, ...rest } = outcome;
                return rest;
            } finally {
                inFlight--;
            }
        },
        close(): void {
            closed = true;
            conn?.fail(new Error('client closed'));
            conn = null;
        },
    };
}

export interface DovecotBackendOptions {
    readonly address: DovecotAuthAddress;
    /** The sendAs file; null: each login may send as itself only. */
    readonly sendAs: string | null;
    readonly recipientDelimiter?: string;
    readonly connectTimeoutMs?: number;
    readonly timeoutMs?: number;
    readonly watch?: boolean;
    readonly debounceMs?: number;
    /** Reloads of the sendAs file. */
    readonly onReload?: (event: ReloadEvent) => void;
}

/** An AuthBackend that asks Dovecot, with sender binding from the sendAs file. */
export interface DovecotBackend extends AuthBackend {
    verify(login: string, password: string, context?: AuthContext): Promise<AuthResult>;
    /** Like verify, with the user name Dovecot reports (use it as the session's login). */
    authenticate(login: string, password: string, context?: AuthContext): Promise<AuthOutcome>;
    sendAs(login: string): SenderPolicy;
    /** Re-reads the sendAs file (throws ConfigError and keeps the current one when invalid). */
    reload(): void;
    close(): void;
}

/** Builds the Dovecot backend; a sendAs file is loaded now (throws ConfigError when invalid). */
export function createDovecotBackend(opts: DovecotBackendOptions): DovecotBackend {
    const client = createDovecotClient({
        address: opts.address,
        ...(opts.connectTimeoutMs === undefined ? {} : { connectTimeoutMs: opts.connectTimeoutMs }),
        ...(opts.timeoutMs === undefined ? {} : { timeoutMs: opts.timeoutMs }),
    });
    const delimiter = opts.recipientDelimiter === undefined ? {} : { recipientDelimiter: opts.recipientDelimiter };
    let table: SendAsTable | null = null;
    try {
        table =
            opts.sendAs === null
                ? null
                : createSendAsTable(opts.sendAs, {
                      ...delimiter,
                      ...(opts.watch === undefined ? {} : { watch: opts.watch }),
                      ...(opts.debounceMs === undefined ? {} : { debounceMs: opts.debounceMs }),
                      ...(opts.onReload ? { onReload: opts.onReload } : {}),
                  });
    } catch (err) {
        client.close();
        throw err;
    }
    return {
        authenticate: (login, password, context) => client.authenticate(login, password, context),
        async verify(login, password, context) {
            return (await client.authenticate(login, password, context)).result;
        },
        sendAs(login: string): SenderPolicy {
            return table ? table.sendAs(login) : compileSenderPolicy(login, null, delimiter);
        },
        reload(): void {
            table?.reload();
        },
        close(): void {
            client.close();
            table?.close();
        },
    };
}
