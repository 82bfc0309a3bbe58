/**
 * "Did you mean" hints for misspelt config keys and values.
 * Pure string comparison; it must not know which keys exist.
 */

function editDistance(a: string, b: string): number {
    let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
    for (let i = 1; i <= a.length; i++) {
        const cur = [i];
        for (let j = 1; j <= b.length; j++) {
            const cost = a[i - 1] === b[j - 1] ? 0 : 1;
            cur[j] = Math.min((prev[j] ?? 0) + 1, (cur[j - 1] ?? 0) + 1, (prev[j - 1] ?? 0) + cost);
        }
        prev = cur;
    }
    return prev[b.length] ?? 0;
}

const squash = (s: string): string => s.toLowerCase().replace(/[-_\s]/g, '');

/** The closest candidate when it is plausibly what was meant, else null. */
export function closest(word: string, candidates: readonly string[]): string | null {
    const w = squash(word);
    let best: string | null = null;
    let bestDistance = Infinity;
    for (const c of candidates) {
        const d = editDistance(w, squash(c));
        if (d < bestDistance) {
            best = c;
            bestDistance = d;
        }
    }
    if (best === null) return null;
    const limit = Math.max(1, Math.floor(Math.max(w.length, best.length) / 3));
    return bestDistance <= limit ? best : null;
}

/** ` (did you mean "x"?)` or an empty string. */
export function didYouMean(word: string, candidates: readonly string[]): string {
    const c = closest(word, candidates);
    return c === null ? '' : ` (did you mean "${c}"?)`;
}
