/**
 * `mailwarden help` (the top-level usage) names, for each command with a usage text of its own,
 * every option that text documents, so that the short form an operator reads first (and the
 * README and runbook, which use `-c`) never lacks one: `explain --raw`, `users -c`, `auth -c`.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import { AUTH_USAGE } from '../../src/commands/auth.ts';
import { DKIM_USAGE } from '../../src/commands/dkim.ts';
import { EXPLAIN_HELP } from '../../src/commands/explain.ts';
import { USERS_USAGE } from '../../src/commands/users.ts';

const bin = fileURLToPath(new URL('../../bin/mailwarden.js', import.meta.url));
const help = execFileSync(process.execPath, [bin, 'help'], { encoding: 'utf8' });

/** The lines of `help` about `command`: from its line to the next command's. */
function entry(command: string): string {
    const lines = help.slice(help.indexOf('Commands:'), help.indexOf('Options:')).split('\n');
    const start = lines.findIndex((l) => l.startsWith(`  ${command} `));
    assert.ok(start >= 0, `help lists ${command}`);
    const end = lines.findIndex((l, i) => i > start && /^ {2}[a-z]/.test(l));
    return lines.slice(start, end < 0 ? undefined : end).join('\n');
}

/** The options a usage text documents (`-c` for `-c, --config`), without help itself. */
function options(usage: string): string[] {
    const found = new Set<string>();
    for (const m of usage.matchAll(/(?:^|[\s[|])(-c|--[a-z][a-z-]*)\b/g)) {
        const option = m[1] === '--config' ? '-c' : m[1]!;
        if (option !== '--help') found.add(option);
    }
    return [...found];
}

describe('mailwarden help', () => {
    for (const [command, usage] of [
        ['explain', EXPLAIN_HELP],
        ['users', USERS_USAGE],
        ['auth', AUTH_USAGE],
        ['dkim', DKIM_USAGE],
    ] as const) {
        it(`names every option of \`${command}\``, () => {
            const line = entry(command);
            for (const option of options(usage)) {
                assert.match(line, new RegExp(`(^|[\\s[|])${option}\\b`), `${command}: ${option} missing in\n${line}`);
            }
        });
    }
});
