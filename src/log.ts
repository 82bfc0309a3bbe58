/**
 * The root logger (pino, JSON lines on stdout) and the adapter smtp-server expects.
 * Secrets never reach a log line: AUTH data and passwords are redacted by path.
 */
import { format } from 'node:util';
import { pino, type Logger } from 'pino';

export type { Logger };

export function createLogger(level: string, destination?: NodeJS.WritableStream): Logger {
    return pino(
        {
            level,
            base: { service: 'mailwarden' },
            timestamp: pino.stdTimeFunctions.isoTime,
            redact: { paths: ['password', '*.password', 'auth.password', 'pass', '*.pass'], censor: '[redacted]' },
        },
        destination as pino.DestinationStream | undefined,
    );
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
