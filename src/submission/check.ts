/**
 * The `mailwarden check` step for submission: validates the contents of the users file
 * (`auth.users`: logins, password hashes, sendAs) or of the sendAs file beside Dovecot
 * (`auth.sendAs`), with the same `FILE:LINE:COL` issues that serve would refuse to start with.
 * It reads files only; it never connects to Dovecot and never prints a password or hash.
 */
import fs from 'node:fs';
import type { CheckValidator } from '../commands/check.ts';
import type { Issue } from '../config/issues.ts';
import type { Config } from '../config/types.ts';
import { parseUsersText, type PasswordMode } from './users-file.ts';

function validateFile(file: string, mode: PasswordMode): Issue[] {
    let text: string;
    try {
        text = fs.readFileSync(file, 'utf8');
    } catch (err) {
        return [
            {
                file,
                line: 1,
                col: 1,
                message: `cannot read the file: ${err instanceof Error ? err.message : String(err)}`,
            },
        ];
    }
    return parseUsersText(file, text, mode).issues;
}

export const submissionFilesCheck: CheckValidator = {
    name: 'submission users',
    validate(config: Config): Issue[] {
        const auth = config.auth;
        if (!auth) return [];
        if (auth.users) return validateFile(auth.users, 'required');
        if (auth.sendAs) return validateFile(auth.sendAs, 'forbidden');
        return [];
    },
};
