/**
 * The mailboxes of a From (or Sender) field value as mailauth reads them for DMARC, without
 * loading the rest of mailauth: the copy of nodemailer's address parser that mailauth's DKIM
 * verifier uses (resolved from it, not loaded through it), with the bound of mailauth-bounds.ts.
 * The main thread needs only this much of mailauth when verification runs in its own thread
 * (verify-thread.ts); the incoming header's checks and submission's sender binding read From
 * with it.
 *
 * It must not load mailauth's verifier or tools (they weigh about 25 MB of a process).
 */
import { createRequire } from 'node:module';
import { boundedAddressParser } from './mailauth-bounds.ts';

interface ParsedAddress {
    readonly address?: string;
    readonly group?: readonly ParsedAddress[];
}

const verifierRequire = createRequire(createRequire(import.meta.url).resolve('mailauth/lib/dkim/dkim-verifier.js'));
const addressparser = boundedAddressParser(
    verifierRequire('nodemailer/lib/addressparser') as Parameters<typeof boundedAddressParser>[0],
) as unknown as (value: string) => ParsedAddress[];

/**
 * The mailboxes of a From (or Sender) field value as mailauth reads them for DMARC: its address
 * parser on the trimmed value, group members included, as lib/dkim/dkim-verifier.js collects
 * the author addresses. Receivers that run mailauth or nodemailer read them the same way.
 */
export function mailauthAddresses(value: string): string[] {
    const out: string[] = [];
    for (const entry of addressparser(value.trim())) {
        for (const mailbox of entry.group ?? [entry]) if (mailbox.address) out.push(mailbox.address);
    }
    return out;
}
