/**
 * The benchmark's arithmetic: percentiles of latencies, median (min–max) over rounds, and the
 * plain-text table it prints. Pure functions over numbers and strings.
 *
 * It must not measure anything itself nor read the clock.
 */

/**
 * The p-th percentile (0–100) by the nearest-rank method: the smallest value with at least
 * p % of the values at or below it. `sorted` must be in ascending order. NaN for no values.
 */
export function percentile(sorted: readonly number[], p: number): number {
    if (sorted.length === 0) return NaN;
    if (p <= 0) return sorted[0]!;
    const rank = Math.ceil((p / 100) * sorted.length);
    return sorted[Math.min(sorted.length, rank) - 1]!;
}

export function median(values: readonly number[]): number {
    const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
    if (v.length === 0) return NaN;
    const h = v.length >> 1;
    return v.length % 2 === 1 ? v[h]! : (v[h - 1]! + v[h]!) / 2;
}

export interface Spread {
    median: number;
    min: number;
    max: number;
}

/** Median, minimum and maximum of the finite values (NaN each when there are none). */
export function spread(values: readonly number[]): Spread {
    const v = values.filter((x) => Number.isFinite(x));
    if (v.length === 0) return { median: NaN, min: NaN, max: NaN };
    return { median: median(v), min: Math.min(...v), max: Math.max(...v) };
}

/** A number with `digits` decimals, `–` when it is not finite. */
export function fmt(x: number, digits = 1): string {
    return Number.isFinite(x) ? x.toFixed(digits) : '–';
}

/** `median (min–max)`, or just the median when every round gave the same value or there was one round. */
export function fmtSpread(s: Spread, digits = 1): string {
    if (!Number.isFinite(s.median)) return '–';
    const lo = fmt(s.min, digits);
    const hi = fmt(s.max, digits);
    return lo === hi ? fmt(s.median, digits) : `${fmt(s.median, digits)} (${lo}–${hi})`;
}

/**
 * A table with aligned columns. `align` gives each column's side (`l` or `r`); by default the
 * first column is left-aligned and the others, numbers, right-aligned.
 */
export function textTable(
    header: readonly string[],
    rows: readonly (readonly string[])[],
    align: readonly ('l' | 'r')[] = [],
): string {
    const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => (r[c] ?? '').length)));
    const side = (c: number): 'l' | 'r' => align[c] ?? (c === 0 ? 'l' : 'r');
    const line = (cells: readonly string[]): string =>
        cells
            .map((cell, c) => (side(c) === 'l' ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!)))
            .join('  ')
            .trimEnd();
    return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

/** The same table in Markdown (for docs/performance.md). */
export function markdownTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
    const line = (cells: readonly string[]): string => `| ${cells.join(' | ')} |`;
    return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n');
}
