/**
 * The `mailwarden check` step for submission: validates the contents of the users file
 * (`auth.users`: logins, password hashes, sendAs) or of the sendAs file beside Dovecot
 * (`auth.sendAs`), with the same `FILE:LINE:COL` issues that serve would refuse to start with.
 * It also warns about permissions: a users file that other users can read (its hashes can be
 * cracked offline) or that anyone but its owner and group can write, and a sendAs file others can
 * write. It reads files only; it never connects to Dovecot and never prints a password or hash.
 */
import fs from 'node:fs';
import type { CheckValidator, CheckWarning } from '../config/check-validator.ts';
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

const octal = (mode: number): string => `0${(mode & 0o777).toString(8).padStart(3, '0')}`;

/** Permission warnings for the users file (hashes) or the sendAs file (who may send as whom). */
export function filePermissionWarnings(file: string, holds: 'hashes' | 'bindings'): CheckWarning[] {
    let mode: number;
    try {
        mode = fs.statSync(file).mode;
    } catch {
        return []; // unreadable files are reported as issues by validate()
    }
    const problems: string[] = [];
    if (holds === 'hashes' && mode & 0o004) {
        problems.push('readable by every user of this machine, and the password hashes in it can be cracked offline');
    }
    if (mode & 0o002) problems.push('writable by every user of this machine');
    else if (mode & 0o020) problems.push('writable by its group');
    if (problems.length === 0) return [];
    const what = holds === 'hashes' ? 'add a login or replace a hash' : 'let a login send as any address';
    const writable = (mode & 0o022) !== 0;
    return [
        {
            file,
            message:
                `${problems.join(', and ')} (mode ${octal(mode)})` +
                `${writable ? `; a writer could ${what}` : ''}. Fix: chmod ${holds === 'hashes' ? '600' : '644'} ${file}` +
                (holds === 'hashes' ? ' (or 640 with a group only mailwarden is in)' : ''),
        },
    ];
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
    warn(config: Config): CheckWarning[] {
        const auth = config.auth;
        if (auth?.users) return filePermissionWarnings(auth.users, 'hashes');
        if (auth?.sendAs) return filePermissionWarnings(auth.sendAs, 'bindings');
        return [];
    },
};
