/**
 * The `log:` section: the lowest level written (`trace` to `error`). Validation only: it must
 * not create the logger.
 */
import { sectionEntries } from '../fields.ts';
import type { Field, SourceReader } from '../reader.ts';

export const LOG_KEYS = ['level'] as const;
export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error'] as const;

export type LogLevel = (typeof LOG_LEVELS)[number];

export interface LogConfig {
    readonly level: LogLevel;
}

export const DEFAULT_LOG_LEVEL = 'info';

/** Reads `log: { level }`; the level is the default when left out or invalid (reported). */
export function logSection(r: SourceReader, field: Field): LogConfig {
    const entries = sectionEntries(r, field, LOG_KEYS);
    const level = entries.get('level');
    return { level: (level && r.oneOf(level, LOG_LEVELS)) ?? DEFAULT_LOG_LEVEL };
}
