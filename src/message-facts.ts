/**
 * What the proxy knows about a received message and what it adds when forwarding it,
 * shared by the live session and `mailwarden explain` so both give the same answer:
 * the message facts (size, From and what its display name shows, or may show reordered by
 * right-to-left controls, bare line endings) and the header fields to prepend.
 * Pure functions; no I/O.
 */
import type { SpoolSummary } from './data/spool.ts';
import { fieldValue, receivedField, verdictField, type RawField, type ReceivedInfo } from './headers.ts';
import { domainOfAddress } from './rules/names.ts';
import { fromNameFacts } from './shown-address.ts';
import { parseAddresses } from './submission/sender-policy.ts';
import type { Decision, FactValue, HeaderField } from './types.ts';

/** The domain of an address, folded as the rules compare it (lower case, A-labels); null when there is none. */
export const domainOf = domainOfAddress;

/**
 * The first address of a From field value (RFC 5322 section 3.4), and how many there are: the
 * addresses in angle brackets if there are any, else the words with an `@` inside. Read in
 * linear time whatever the value holds (it is the fallback for values the RFC 5322 parser
 * refused, so the sender chooses them): split on delimiters, never a pattern that backtracks.
 */
export function firstAddress(value: string): { address: string | null; count: number } {
    const angle: string[] = [];
    for (const m of value.matchAll(/<([^<>\s]*)>/g)) {
        if (hasInnerAt(m[1]!, 0)) angle.push(m[1]!);
    }
    if (angle.length > 0) return { address: angle[0]!, count: angle.length };
    const bare = value.split(/[\s<>,;:"()]+/).filter((word) => hasInnerAt(word, 1));
    return { address: bare[0] ?? null, count: bare.length };
}

/** Whether `word` has an `@` with at least `before` characters before it and one after it. */
function hasInnerAt(word: string, before: number): boolean {
    const at = word.indexOf('@', before);
    return at >= 0 && at < word.length - 1;
}

/**
 * The author of a message from its From fields (RFC 5322 section 3.6.2), read with the RFC 5322
 * address parser so that comments, quoted strings and display names cannot hide or fake an
 * address: the first mailbox of the first From field, and the mailboxes of all From fields
 * counted. A value that does not parse falls back to the loose reading of firstAddress, so a
 * block list still sees the address a reader would most likely show.
 */
export function authorOf(fields: readonly RawField[]): { address: string | null; count: number } {
    let address: string | null = null;
    let count = 0;
    for (const f of fields) {
        if (f.name.toLowerCase() !== 'from') continue;
        const value = fieldValue(f);
        const parsed = parseAddresses(value);
        if (parsed !== null) {
            address ??= parsed[0] ?? null;
            count += parsed.length;
        } else {
            const loose = firstAddress(value);
            address ??= loose.address;
            count += loose.count;
        }
    }
    return { address, count };
}

/**
 * The fields a message may hold at most once, besides From: RFC 5322 section 3.6 (its table of
 * fields) and RFC 2045 (one MIME-Version, and one of each Content- field per entity).
 */
const AT_MOST_ONCE: ReadonlyMap<string, string> = new Map(
    [
        'Date',
        'Sender',
        'Reply-To',
        'To',
        'Cc',
        'Bcc',
        'Message-ID',
        'In-Reply-To',
        'References',
        'Subject',
        'MIME-Version',
        'Content-Type',
        'Content-Transfer-Encoding',
    ].map((name) => [name.toLowerCase(), name]),
);

/** The AT_MOST_ONCE fields that appear more than once, by their usual spelling, in the order they first repeat. */
export function duplicateFields(fields: readonly RawField[]): string[] {
    const seen = new Set<string>();
    const twice = new Set<string>();
    for (const f of fields) {
        const name = AT_MOST_ONCE.get(f.name.toLowerCase());
        if (name === undefined) continue;
        if (seen.has(name)) twice.add(name);
        else seen.add(name);
    }
    return [...twice];
}

/** Facts about the message itself, from its kept header fields and the spool summary. */
export function messageFacts(fields: readonly RawField[], summary: SpoolSummary): Record<string, FactValue> {
    const author = authorOf(fields);
    const authorDomain = author.address ? domainOf(author.address) : null;
    const from = fields.find((f) => f.name.toLowerCase() === 'from');
    const name = from ? fromNameFacts(fieldValue(from), authorDomain) : null;
    return {
        'message.size': summary.size,
        'message.bare_newlines': summary.bareLf + summary.bareCr + summary.nul,
        'header.from': author.address,
        'header.from.domain': authorDomain,
        'header.from.count': author.count,
        'header.duplicates': duplicateFields(fields),
        'header.from.name_domain': name?.nameDomain ?? null,
        'header.from.name_bidi': name?.nameBidi ?? false,
    };
}

export interface ForwardHeadersInput {
    readonly decision: Decision;
    /** Every rule that contributed, across stages. */
    readonly rules: readonly string[];
    readonly received: ReceivedInfo;
    /** Fields reported by the checks (Authentication-Results, Received-SPF). */
    readonly fromChecks: readonly HeaderField[];
    /** Fields added by tag rules of earlier stages. */
    readonly earlier: readonly HeaderField[];
    readonly sessionId: string;
}

/**
 * The fields prepended to a forwarded message, top first: our Received, the checks'
 * results, the verdict, then tag and quarantine markers (SPEC, "Headers").
 */
export function forwardHeaders(input: ForwardHeadersInput): HeaderField[] {
    const { decision } = input;
    const fields: HeaderField[] = [
        receivedField(input.received),
        ...input.fromChecks,
        verdictField(decision.action, input.rules, decision.score, input.sessionId),
        ...input.earlier,
    ];
    if (decision.action === 'tag') fields.push({ name: 'X-Spam-Flag', value: 'YES' });
    if (decision.action === 'quarantine') fields.push({ name: 'X-Mailwarden-Quarantine', value: input.sessionId });
    fields.push(...decision.headers);
    return fields;
}
