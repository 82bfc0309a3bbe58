/**
 * The root logger (pino, JSON lines on stdout) and the adapter smtp-server expects.
 * Secrets never reach a log line: a `password` or `pass` field, at the top of a line or one
 * level down, is written as `[redacted]`. The check runs once per line and copies nothing
 * unless a secret is there (pino's path redaction re-serialised every field of every line).
 */
import { format } from 'node:util';
import { pino, type Logger } from 'pino';

export type { Logger };

const CENSOR = '[redacted]';
const SECRETS = ['password', 'pass'] as const;

function isSecretKey(key: string): boolean {
    return key === 'password' || key === 'pass';
}

/** A copy of `value` (its prototype and own fields kept) with every secret field it has censored. */
function censored(value: object): object {
    const proto = Object.getPrototypeOf(value) as object | null;
    let copy: Record<string, unknown>;
    if (Array.isArray(value)) copy = [...(value as unknown[])] as unknown as Record<string, unknown>;
    // an error keeps its message and stack (own, not enumerable) for the error serializer
    else if (value instanceof Error)
        copy = Object.create(proto, Object.getOwnPropertyDescriptors(value)) as Record<string, unknown>;
    else copy = Object.assign(Object.create(proto) as Record<string, unknown>, value);
    for (const key of SECRETS) if (Object.hasOwn(value, key)) copy[key] = CENSOR;
    return copy;
}

/**
 * The fields of one log line with secrets censored: a top-level `password`/`pass`, and a
 * `password`/`pass` inside any top-level object. Returns `obj` itself when there is none.
 */
export function redactSecrets(obj: Record<string, unknown>): Record<string, unknown> {
    let out: Record<string, unknown> | null = null;
    for (const key in obj) {
        if (!Object.hasOwn(obj, key)) continue;
        const value = obj[key];
        if (value === null || value === undefined) continue;
        if (isSecretKey(key)) {
            if (typeof value !== 'function') (out ??= { ...obj })[key] = CENSOR;
        } else if (typeof value === 'object' && SECRETS.some((k) => Object.hasOwn(value, k))) {
            (out ??= { ...obj })[key] = censored(value);
        }
    }
    return out ?? obj;
}

export function createLogger(level: string, destination?: NodeJS.WritableStream): Logger {
    const root = pino(
        {
            level,
            base: { service: 'mailwarden' },
            timestamp: pino.stdTimeFunctions.isoTime,
            formatters: { bindings: redactSecrets, log: redactSecrets },
        },
        destination as pino.DestinationStream | undefined,
    );
    // a child's bindings are serialised once, when it is made: they are censored there (children
    // are made from their parent's prototype chain, so every descendant uses this method)
    const proto = Object.getPrototypeOf(root) as Logger;
    root.child = function (this: Logger, bindings, options) {
        return proto.child.call(this, redactSecrets(bindings), options);
    } as Logger['child'];
    return root;
}

/**
 * A bunyan-style logger for smtp-server. smtp-server logs through it as (fields, format,
 * ...args): the format is filled in (never a bare `%s`), its `cid` and `host` fields become
 * our `session` and `client`. Only warnings and errors are kept: what smtp-server says at info
 * (connects, closes, STARTTLS) mailwarden logs itself with its own fields, and client
 * disconnects are not errors (smtp-server/adapter.ts logs those once, at info).
 */
export function smtpServerLogger(log: Logger): Record<string, (...args: unknown[]) => void> {
    const drop = (): void => undefined;
    const fwd =
        (level: 'warn' | 'error') =>
        (...args: unknown[]): void => {
            const first = args[0];
            const fields = first !== null && typeof first === 'object' ? (args.shift() as Record<string, unknown>) : {};
            const [message, ...rest] = args;
            const text = typeof message === 'string' ? format(message, ...rest) : args.map(String).join(' ');
            const out: Record<string, unknown> = {};
            if (fields.cid !== undefined) out.session = fields.cid;
            if (fields.host !== undefined) out.client = fields.host;
            if (fields.tnx !== undefined) out.step = fields.tnx;
            if (fields.err !== undefined) out.err = fields.err;
            log[level](out, text);
        };
    return { trace: drop, debug: drop, info: drop, warn: fwd('warn'), error: fwd('error'), fatal: fwd('error') };
}

/** What a line about a refusal before DATA says (session.ts, envelope/gate.ts). */
export interface RefusalLine {
    readonly stage: string;
    readonly helo: string | null;
    readonly from?: unknown;
    readonly rcpt?: string;
    /** Recipients accepted before this one. */
    readonly rcptCount?: number;
    readonly authUser?: string | null;
    readonly action: string;
    readonly rules: readonly string[];
    readonly reason: string;
    readonly reply: { readonly code: number; readonly enhanced: string | null };
}

/**
 * The fields every refusal line carries in the same names and order, whoever refused (the
 * rules, the envelope checks, the upstream), so one query reads them all (docs/runbook.md).
 */
export function refusalLineFields(r: RefusalLine): Record<string, unknown> {
    return {
        stage: r.stage,
        helo: r.helo,
        ...(typeof r.from === 'string' ? { from: r.from } : {}),
        ...(r.rcpt !== undefined ? { rcpt: r.rcpt } : {}),
        ...(r.rcptCount !== undefined ? { rcptCount: r.rcptCount } : {}),
        ...(r.authUser ? { authUser: r.authUser } : {}),
        action: r.action,
        rules: r.rules,
        reason: r.reason,
        reply: r.reply.code,
        ...(r.reply.enhanced ? { enhanced: r.reply.enhanced } : {}),
    };
}
