/**
 * Writes rules/README.md from the rules engine's own tables (src/rules/docs.ts), formatted
 * with the project's Prettier settings. With `--check` it writes nothing and exits 1 when the
 * file differs from what would be generated (run by the tests, so the docs cannot drift).
 * Development tool: it is not part of the running product.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as prettier from 'prettier';
import { renderRulesReadme } from '../src/rules/docs.ts';

export const README = fileURLToPath(new URL('../rules/README.md', import.meta.url));

/** The README as it should be on disk. */
export async function generatedReadme(): Promise<string> {
    const config = (await prettier.resolveConfig(README)) ?? {};
    return prettier.format(renderRulesReadme(), { ...config, filepath: README });
}

/** Returns the exit code. */
export async function main(args: readonly string[], out: (line: string) => void = console.log): Promise<number> {
    const check = args.includes('--check');
    const wanted = await generatedReadme();
    const current = fs.existsSync(README) ? fs.readFileSync(README, 'utf8') : null;
    const rel = path.relative(process.cwd(), README);
    if (check) {
        if (current === wanted) return 0;
        out(`${rel} is out of date: run node scripts/gen-rules-readme.ts`);
        return 1;
    }
    if (current !== wanted) fs.writeFileSync(README, wanted);
    out(current === wanted ? `${rel} is up to date` : `wrote ${rel}`);
    return 0;
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
    process.exitCode = await main(process.argv.slice(2));
}
