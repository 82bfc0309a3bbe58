/**
 * The root logger (pino, JSON lines on stdout) and the adapter smtp-server expects.
 * Secrets never reach a log line: AUTH data and passwords are redacted by path.
 */
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

/** A bunyan-style logger for smtp-server that forwards only warnings and errors. */
export function smtpServerLogger(log: Logger): Record<string, (...args: unknown[]) => void> {
    const drop = (): void => undefined;
    const fwd =
        (level: 'warn' | 'error') =>
        (...args: unknown[]): void => {
            const [first, ...rest] = args;
            if (first && typeof first === 'object') log[level]({ smtp: first }, rest.map(String).join(' '));
            else log[level](args.map(String).join(' '));
        };
    return { trace: drop, debug: drop, info: drop, warn: fwd('warn'), error: fwd('error'), fatal: fwd('error') };
}
