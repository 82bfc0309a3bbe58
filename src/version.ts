/**
 * What is running: the release version, read once from package.json, and how the launcher
 * (bin/mailwarden.js) loaded mailwarden's modules — from the JavaScript `npm run build` wrote
 * into dist/, or stripped of their types as they loaded because dist/ is missing or older than
 * the source. No other side effects.
 */
import { readFileSync } from 'node:fs';

export const VERSION: string = (
    JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }
).version;

/** Modules loaded from dist/ and modules stripped at load, as the launcher counted them; undefined without the launcher (tests import src/ directly). */
export function loadedModules(): { compiled: number; stripped: number } | undefined {
    const counts = (globalThis as Record<symbol, unknown>)[Symbol.for('mailwarden.modules')] as
        | { compiled: number; stripped: number }
        | undefined;
    return counts ? { compiled: counts.compiled, stripped: counts.stripped } : undefined;
}
