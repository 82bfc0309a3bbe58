/**
 * Parses the duration and size notations used in the config file (`5s`, `10m`, `50MB`, …).
 * Pure functions: bad input gives null, never an exception; no I/O, no defaults.
 */

/** The longest timer Node.js supports (about 24.8 days): the bound of durations used as timeouts. */
export const MAX_TIMER_MS = 2_147_483_647;

const DURATION_UNITS: Readonly<Record<string, number>> = {
    ms: 1,
    s: 1000,
    m: 60_000,
    h: 3_600_000,
    d: 86_400_000,
};

/**
 * Binary multiples: `1KB` is 1024 bytes, `1MB` is 1024 KB, `1GB` is 1024 MB
 * (the convention of Postfix's `message_size_limit` documentation and of most mail software).
 */
const SIZE_UNITS: Readonly<Record<string, number>> = {
    b: 1,
    kb: 1024,
    mb: 1024 ** 2,
    gb: 1024 ** 3,
};

const DURATION_RE = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$/;
const SIZE_RE = /^(\d+(?:\.\d+)?)\s*(b|kb|mb|gb)?$/i;

/**
 * `500ms`, `5s`, `10m`, `1h`, `2d` (a decimal number is allowed: `1.5s`) → milliseconds,
 * rounded to a whole millisecond. A unit is required. Returns null for anything else.
 */
export function parseDuration(text: unknown): number | null {
    if (typeof text !== 'string') return null;
    const m = DURATION_RE.exec(text.trim());
    if (!m) return null;
    const unit = DURATION_UNITS[m[2] ?? ''];
    if (unit === undefined) return null;
    const ms = Math.round(Number(m[1]) * unit);
    return Number.isSafeInteger(ms) ? ms : null;
}

/**
 * A whole number of bytes (`1234` or `'1234'`), or a number with a unit `B`, `KB`, `MB`, `GB`
 * (case-insensitive, binary multiples: KB = 1024) → bytes, rounded down. Returns null for
 * anything else, including negative numbers and fractions of a byte without a unit.
 */
export function parseSize(value: unknown): number | null {
    if (typeof value === 'number') {
        return Number.isSafeInteger(value) && value >= 0 ? value : null;
    }
    if (typeof value !== 'string') return null;
    const m = SIZE_RE.exec(value.trim());
    if (!m) return null;
    const unitName = (m[2] ?? 'b').toLowerCase();
    const unit = SIZE_UNITS[unitName];
    if (unit === undefined) return null;
    if (unitName === 'b' && m[1]?.includes('.')) return null;
    const bytes = Math.floor(Number(m[1]) * unit);
    return Number.isSafeInteger(bytes) ? bytes : null;
}

/** Renders milliseconds in the config notation (largest unit that divides evenly), for messages and docs. */
export function formatDuration(ms: number): string {
    for (const unit of ['d', 'h', 'm', 's'] as const) {
        const size = DURATION_UNITS[unit] ?? 1;
        if (ms !== 0 && ms % size === 0) return `${ms / size}${unit}`;
    }
    return `${ms}ms`;
}

/** Renders bytes in the config notation (largest binary unit that divides evenly). */
export function formatSize(bytes: number): string {
    for (const unit of ['GB', 'MB', 'KB'] as const) {
        const size = SIZE_UNITS[unit.toLowerCase()] ?? 1;
        if (bytes !== 0 && bytes % size === 0) return `${bytes / size}${unit}`;
    }
    return `${bytes}B`;
}
