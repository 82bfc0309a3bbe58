/**
 * The header-section step at the end of DATA, shared by the live session and `mailwarden
 * explain` so that both give the same answer for the same bytes:
 *   1. parse the section strictly, as Postfix and DKIM verifiers read it (headers.ts); a section
 *      that does not parse is refused with `550 5.6.0` naming the line, on every listener, and
 *      a field longer than Postfix keeps whole, or more than MAX_HEADER_FIELDS fields, with
 *      `552 5.3.4`;
 *   2. remove incoming X-Mailwarden-* fields and Authentication-Results fields with our
 *      authserv-id (RFC 8601 section 5), whatever their spelling;
 *   3. on submission, bind the author fields to the login before anything is signed: exactly one
 *      From, at most one Sender, every mailbox of those and of any Resent-From and Resent-Sender
 *      (signed with the login's domain too) owned and read as the same mailboxes by the parser
 *      DMARC and receivers use (`553 5.7.1`). The Resent-From and Resent-Sender fields together
 *      may take MAX_HEADER_FIELD bytes, as one From may; past that none of them is parsed and
 *      the message is refused as having an unreadable one (`553 5.7.1`).
 * Replies come from the reply table. It must not log, count metrics or touch the upstream; the
 * caller does, with the `problem` it returns.
 */
import {
    fieldValue,
    filterIncomingFields,
    MAX_HEADER_FIELD,
    MAX_HEADER_FIELDS,
    parseHeaderSection,
    type RawField,
} from './headers.ts';
import { replyFor, type HeaderSenderProblem } from './reply.ts';
import { mailauthAddresses } from './sender-auth/mailauth-addresses.ts';
import { checkHeaderSenders, type AuthorField, type SenderPolicy } from './submission/index.ts';
import type { SmtpReply } from './types.ts';

export interface HeaderStepInput {
    /** The header section: the message up to, not including, the empty line that ends it. */
    readonly section: Buffer;
    /** Our authserv-id (the configured hostname). */
    readonly authservId: string;
    readonly sessionId: string;
    /** Submission: the login and the addresses it may use; null on mx listeners. */
    readonly binding: { readonly login: string; readonly policy: SenderPolicy } | null;
}

export type HeaderStepResult =
    | { readonly ok: true; readonly kept: readonly RawField[]; readonly removed: readonly RawField[] }
    | {
          readonly ok: false;
          readonly reply: SmtpReply;
          /** For the decision log line. */
          readonly reason: string;
          /** Metric label: a header problem or an author-field problem. */
          readonly problem: string;
      };

/** The problem of an author field that cannot be read. */
const UNREADABLE: Readonly<Record<AuthorField, HeaderSenderProblem>> = {
    From: 'unreadable-from',
    Sender: 'unreadable-sender',
    'Resent-From': 'unreadable-resent-from',
    'Resent-Sender': 'unreadable-resent-sender',
};

/**
 * The fields of RFC 5322 section 3.6.6 that are bound to the login, lower case. A message resent
 * several times has a block for each resending, so there may be several of them; each is
 * parsed twice (ours and the DMARC parser), so their bytes together are bounded as one author
 * field's are: a header section of nothing but Resent-From fields would otherwise hold the main
 * thread for hundreds of milliseconds per message.
 */
const RESENT_AUTHOR_FIELDS: ReadonlySet<string> = new Set(['resent-from', 'resent-sender']);

/** The first Resent-From or Resent-Sender field past MAX_HEADER_FIELD bytes of them together, or null. */
function resentPastBound(fields: readonly RawField[]): RawField | null {
    let bytes = 0;
    for (const f of fields) {
        if (!RESENT_AUTHOR_FIELDS.has(f.name.toLowerCase())) continue;
        bytes += f.raw.length;
        if (bytes > MAX_HEADER_FIELD) return f;
    }
    return null;
}

/** Runs the three steps; the first refusal wins. */
export function headerStep(input: HeaderStepInput): HeaderStepResult {
    const id = input.sessionId;
    const parsed = parseHeaderSection(input.section);
    if (!parsed.ok) {
        const { line, problem } = parsed;
        if (problem === 'field-too-long') {
            return {
                ok: false,
                reply: replyFor('header-field-too-big', { id, line, limit: MAX_HEADER_FIELD }),
                reason: `header field at line ${line} longer than ${MAX_HEADER_FIELD} bytes`,
                problem,
            };
        }
        if (problem === 'too-many-fields') {
            return {
                ok: false,
                reply: replyFor('header-too-many-fields', { id, line, limit: MAX_HEADER_FIELDS }),
                reason: `header section of more than ${MAX_HEADER_FIELDS} fields (line ${line})`,
                problem,
            };
        }
        return {
            ok: false,
            reply: replyFor('header-malformed', { id, line, headerProblem: problem }),
            reason: `header section does not parse: line ${line}: ${problem}`,
            problem,
        };
    }
    const { kept, removed } = filterIncomingFields(parsed.fields, input.authservId);
    if (input.binding === null) return { ok: true, kept, removed };
    const { login, policy } = input.binding;
    // before any Resent field is parsed. Below the bound every one is still bound, not only the
    // topmost block: a signature naming Resent-From once covers the bottom-most one (RFC 6376
    // section 5.4.2)
    const pastBound = resentPastBound(kept);
    if (pastBound !== null) {
        const field: AuthorField = pastBound.name.toLowerCase() === 'resent-from' ? 'Resent-From' : 'Resent-Sender';
        const problem = UNREADABLE[field];
        return {
            ok: false,
            reply: replyFor('header-sender-invalid', { id, login, senderProblem: problem }),
            reason: `header ${field} at line ${pastBound.line}: Resent-From and Resent-Sender fields longer than ${MAX_HEADER_FIELD} bytes together`,
            problem,
        };
    }
    const values = (name: string): string[] =>
        kept.filter((f) => f.name.toLowerCase() === name).map((f) => fieldValue(f));
    const result = checkHeaderSenders(
        login,
        {
            from: values('from'),
            sender: values('sender'),
            resentFrom: values('resent-from'),
            resentSender: values('resent-sender'),
        },
        policy,
        mailauthAddresses,
    );
    if (result.ok) return { ok: true, kept, removed };
    if (result.reason === 'not-owned') {
        return {
            ok: false,
            reply: replyFor('sender-not-owned', { id, address: result.address, login }),
            reason: `header ${result.field}: not-owned`,
            problem: 'not-owned',
        };
    }
    const problem: HeaderSenderProblem =
        result.reason === 'several'
            ? result.field === 'From'
                ? 'several-from'
                : 'several-sender'
            : result.reason === 'no-from'
              ? 'no-from'
              : UNREADABLE[result.field];
    return {
        ok: false,
        reply: replyFor('header-sender-invalid', {
            id,
            login,
            senderProblem: problem,
            ...('count' in result ? { count: result.count } : {}),
        }),
        reason: `header ${result.field}: ${problem}`,
        problem,
    };
}
