/**
 * Bounds on what mailauth's synchronous parsing can cost, whatever a message or the sending
 * domain's DNS holds. mailauth tests values with regular expressions and encoders whose time
 * grows with the square of their length, on the main thread, where no check timeout can stop
 * them (one value blocked every connection of the process for seconds to minutes). Each bound
 * keeps the result of every value a real sender writes:
 *
 * - SPF (RFC 7208): `boundedExpansion` cuts a macro expansion longer than a domain name as
 *   section 7.3 cuts a target name (labels removed from the left until at most 253 characters
 *   remain; a single longer label is cut to its last 253 characters, which leaves it as invalid
 *   as before, a label having at most 63); `guardSpfRecords` makes a TXT answer holding an SPF
 *   record (`v=spf1`) longer than MAX_SPF_RECORD characters a permanent error of that record;
 * - IDNA: `boundedToASCII` refuses a label of more than 63 code points before punycode encodes
 *   it (quadratic in the label: 3 s for 33,000 distinct characters); mailauth catches the error
 *   and keeps the label, which no DNS name can hold;
 * - addresses: `boundedAddressParser` reads a value with more than MAX_ADDRESS_COLONS group colons
 *   (a nest of groups, which RFC 5322 does not allow and mailauth's parser re-reads up to 50
 *   times) or longer than an author field may be as two mailboxes of the reserved `.invalid`
 *   domain (RFC 2606): a From that cannot be read is refused by the DMARC disposition
 *   (dmarc-policy.ts), and on submission it cannot match the login.
 *
 * It must not change the result of any value within the bounds, and must not see DKIM or DMARC
 * lookups (only the resolver handed to the SPF evaluation is wrapped).
 */
import type { DnsResolve } from '../dns/scoped.ts';
import { MAX_HEADER_FIELD } from '../headers.ts';
import { MAX_DOMAIN_LABEL, MAX_DOMAIN_NAME } from '../net/domain.ts';

/**
 * Longest SPF record evaluated. RFC 7208 section 3.4 asks publishers to stay within 450 octets
 * (one UDP answer); real records with long ip4/ip6 lists reach 2 KB. Longer is a permerror.
 */
export const MAX_SPF_RECORD = 4096;

/** An expansion cut to at most MAX_DOMAIN_NAME characters (RFC 7208 section 7.3). */
export function cutExpansion(value: string): string {
    if (value.length <= MAX_DOMAIN_NAME) return value;
    let start = 0;
    while (value.length - start > MAX_DOMAIN_NAME) {
        const dot = value.indexOf('.', start);
        if (dot < 0) return value.slice(value.length - MAX_DOMAIN_NAME);
        start = dot + 1;
    }
    return value.slice(start);
}

type Expander = (input: unknown, values: unknown) => string;

/** mailauth's macro expander with its result cut to a domain name's length. */
export function boundedExpansion(expand: Expander): Expander {
    return (input, values) => cutExpansion(expand(input, values));
}

/** The error mailauth's SPF evaluation turns into a permerror of the record. */
function permError(text: string): Error {
    return Object.assign(new Error('SPF failure'), { spfResult: { error: 'permerror', text } });
}

/** A record mailauth would read as SPF: `v=spf1` after any leading white space (its lenient mode trims). */
function isSpfRecord(joined: string): boolean {
    const t = joined.trimStart();
    return t.slice(0, 6).toLowerCase() === 'v=spf1' && (t.length === 6 || /\s/.test(t.charAt(6)));
}

/** The resolver for one SPF evaluation: oversized SPF records answer as a permerror. */
export function guardSpfRecords(resolve: DnsResolve): DnsResolve {
    return async (name, rrtype) => {
        const answer: unknown = await resolve(name, rrtype);
        if (rrtype !== 'TXT' || !Array.isArray(answer)) return answer;
        const rows: readonly unknown[] = answer;
        for (const row of rows) {
            const joined = Array.isArray(row) ? row.map(String).join('') : String(row);
            if (isSpfRecord(joined) && joined.length > MAX_SPF_RECORD) {
                throw permError(
                    `the SPF record of ${name} is ${joined.length} characters long, more than ${MAX_SPF_RECORD}`,
                );
            }
        }
        return rows;
    };
}

/** Labels as punycode.js splits a domain (RFC 3490 section 3.1 label separators). */
const LABEL_SEPARATORS = /[.\u3002\uff0e\uff61]/;

/** punycode.js's toASCII refusing a label longer than a DNS label can be, before encoding it. */
export function boundedToASCII(toASCII: (input: string) => string): (input: string) => string {
    return (input) => {
        const domain = input.slice(input.lastIndexOf('@') + 1);
        for (const label of domain.split(LABEL_SEPARATORS)) {
            if (label.length > MAX_DOMAIN_LABEL && [...label].length > MAX_DOMAIN_LABEL) {
                throw new RangeError(`a label of more than ${MAX_DOMAIN_LABEL} characters is not a DNS label`);
            }
        }
        return toASCII(input);
    };
}

/** Most colons, outside quoted strings and comments, in an address list mailauth's parser reads (a group is one). */
export const MAX_ADDRESS_COLONS = 16;

/** Longest address list mailauth's parser reads: the session refuses longer author fields. */
export const MAX_ADDRESS_VALUE = MAX_HEADER_FIELD;

interface ParsedMailbox {
    readonly name: string;
    readonly address?: string;
    readonly group?: readonly ParsedMailbox[];
}
type AddressParser = (value: string, opts?: object) => ParsedMailbox[];

/** What a value that cannot be read is read as: two mailboxes of distinct `.invalid` domains. */
export const UNREADABLE_ADDRESSES: readonly ParsedMailbox[] = Object.freeze([
    Object.freeze({ name: '', address: 'unreadable@unreadable.invalid' }),
    Object.freeze({ name: '', address: 'unreadable@other.unreadable.invalid' }),
]);

/** True for the mailboxes a value that cannot be read is read as (DMARC refuses the message). */
export function isUnreadableAddress(address: string): boolean {
    return UNREADABLE_ADDRESSES.some((m) => m.address === address);
}

/**
 * The colons mailauth's parser (nodemailer's addressparser) can read as group openers: those
 * outside quoted strings (where a backslash escapes the next character), comments (which end at
 * the first `)`: it does not nest them) and domain literals, read as its tokenizer reads them.
 */
function groupColons(value: string, most: number): number {
    let colons = 0;
    let expecting = ''; // the character that ends the open quoted string or comment
    let literal = false;
    for (let i = 0; i < value.length; i++) {
        const c = value[i];
        if (expecting === '"') {
            if (c === '\\') i++;
            else if (c === '"') expecting = '';
        } else if (expecting === ')') {
            if (c === ')') expecting = '';
        } else if (literal) {
            if (c === ']' || c === ',' || c === ';') literal = false;
        } else if (c === '"') expecting = '"';
        else if (c === '(') expecting = ')';
        else if (c === '[') literal = true;
        else if (c === ':' && ++colons > most) return colons;
    }
    return colons;
}

/** mailauth's address parser, reading a nest of groups, or a value over the author field limit, as UNREADABLE_ADDRESSES. */
export function boundedAddressParser(parse: AddressParser): AddressParser {
    return (value, opts) => {
        if (value.length > MAX_ADDRESS_VALUE || groupColons(value, MAX_ADDRESS_COLONS) > MAX_ADDRESS_COLONS) {
            return UNREADABLE_ADDRESSES.map((m) => ({ ...m }));
        }
        return parse(value, opts);
    };
}
