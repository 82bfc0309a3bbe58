/**
 * Counts what Postfix delivered, for the fault harness: reads the Maildirs (`new/`) of the
 * test users and finds each message's harness token and the Postfix queue id it was delivered
 * from (Postfix's own Received line, `… by postfix.test (Postfix) with ESMTP id QUEUEID`).
 * Files already read are remembered, so repeated scans cost only the new files.
 * It only reads; it never changes a Maildir.
 */
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';

export const TOKEN_FIELD = 'X-Harness-Token';

export interface Delivery {
    readonly user: string;
    readonly file: string;
    /** Postfix's queue id, or null when its Received line is missing. */
    readonly queueId: string | null;
}

export interface MailboxScanner {
    /** Reads new files; returns the deliveries by token. */
    scan(): Promise<ReadonlyMap<string, readonly Delivery[]>>;
    /** Files read so far. */
    readonly files: number;
}

/** Joins folded header lines (RFC 5322 section 2.2.3). */
function unfold(text: string): string {
    return text.replace(/\r?\n[ \t]+/g, ' ');
}

/** The token and Postfix queue id of one delivered message. */
export function readDelivered(text: string): { token: string | null; queueId: string | null } {
    const end = text.search(/\r?\n\r?\n/);
    const head = unfold(end < 0 ? text : text.slice(0, end));
    const token = new RegExp(`^${TOKEN_FIELD}: *(\\S+)`, 'mi').exec(head)?.[1] ?? null;
    const queueId = /^Received: .*? by postfix\.test \(Postfix\) with \S+ id ([0-9A-Za-z]+)/m.exec(head)?.[1] ?? null;
    return { token, queueId };
}

export function mailboxScanner(maildir: (user: string) => string, users: readonly string[]): MailboxScanner {
    const seen = new Set<string>();
    const byToken = new Map<string, Delivery[]>();
    return {
        get files() {
            return seen.size;
        },
        async scan() {
            for (const user of users) {
                const dir = path.join(maildir(user), 'new');
                let names: string[];
                try {
                    names = await readdir(dir);
                } catch {
                    continue;
                }
                for (const name of names) {
                    const key = `${user}/${name}`;
                    if (seen.has(key)) continue;
                    seen.add(key);
                    const { token, queueId } = readDelivered(await readFile(path.join(dir, name), 'utf8'));
                    if (!token) continue;
                    const list = byToken.get(token) ?? [];
                    list.push({ user, file: name, queueId });
                    byToken.set(token, list);
                }
            }
            return byToken;
        },
    };
}
