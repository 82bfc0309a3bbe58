/**
 * List files (allow and block lists) compiled once into lookup structures:
 * - ip: addresses and CIDR ranges, IPv4 and IPv6 → IpSet (sorted merged ranges, bisection)
 * - domain: an entry matches the domain and every subdomain → a Set probed label by label
 * - address: exact, case-insensitive; `@example.com` matches every address at that domain → Sets
 * - pattern: RE2 patterns, one per line → a few combined RE2 programs
 * One entry per line; blank lines and lines starting with `#` are ignored; in ip, domain and
 * address lists a `#` after white space starts a comment. Bad entries are reported with their
 * line number. Pure: the caller reads the file; nothing here touches the file system.
 *
 * Measured (test/rules/lists.test.ts): a 100,000-entry ip, domain or address list builds in
 * about 100 to 150 ms; a 2,000-entry pattern list compiles in about 0.4 s. Measured apart, a
 * 1,000,000-entry one takes 2 to 3.3 s (synchronous: every session waits) and 250 to 300 MB,
 * again on every reload; the rules reference advises about 100,000 entries at most.
 */
import { IpSet, parseRange, type IpRange } from '../net/ip.ts';
import { foldDomain, parseDomain, someDomainOrParent } from '../net/domain.ts';
import { domainOfAddress, foldAddress, parseAddress } from './names.ts';
import { matchesEverything, RegexArena, type Pattern } from './regex.ts';

export type ListType = 'ip' | 'domain' | 'address' | 'pattern';
export const LIST_TYPES: readonly ListType[] = Object.freeze(['ip', 'domain', 'address', 'pattern']);

/** What each list type holds, for messages and the documentation. */
export const LIST_TYPE_DOCS: Readonly<Record<ListType, string>> = Object.freeze({
    ip: 'IPv4 and IPv6 addresses and CIDR ranges (`192.0.2.0/24`, `2001:db8::/32`); IPv4-mapped IPv6 values match IPv4 entries',
    domain: 'domain names; an entry matches that domain and all its subdomains (`example.com` matches `mail.example.com`)',
    address:
        'mail addresses, compared case-insensitively; an entry `@example.com` matches every address at exactly that domain',
    pattern:
        'RE2 regular expressions, one per line, matched case-insensitively anywhere in the value (anchor with `^` and `$`)',
});

/**
 * Pattern lists are compiled into RE2 programs that share one engine heap of fixed size
 * (see regex.ts), so they are bounded; IP, domain and address lists are not.
 */
export const MAX_PATTERN_ENTRIES = 2000;
/** Patterns per combined RE2 program (measured: bigger programs overflow RE2's DFA budget and slow down). */
const PATTERNS_PER_PROGRAM = 100;
/** At most this many bad entries are reported per list file. */
const MAX_PROBLEMS = 20;

export interface ListMatcher {
    readonly type: ListType;
    /** Number of entries. */
    readonly size: number;
    /**
     * Membership of a value of the list's kind: an IP address (ip), a domain (domain), an
     * address (address), any text (pattern). Pattern lists may throw RegexEngineError.
     */
    has(value: string): boolean;
}

export interface ListProblem {
    /** 1-based line in the list file. */
    readonly line: number;
    readonly message: string;
}

interface Line {
    readonly line: number;
    readonly text: string;
}

function entries(text: string, trailingComments: boolean): Line[] {
    const out: Line[] = [];
    const lines = text.split('\n');
    for (let i = 0; i < lines.length; i++) {
        let t = lines[i]!;
        if (i === 0 && t.charCodeAt(0) === 0xfeff) t = t.slice(1);
        if (trailingComments) {
            const hash = t.search(/\s#/);
            if (hash >= 0) t = t.slice(0, hash);
        }
        t = t.trim();
        if (t === '' || t.startsWith('#')) continue;
        out.push({ line: i + 1, text: t });
    }
    return out;
}

class Problems {
    readonly list: ListProblem[] = [];
    #more = 0;
    add(line: number, message: string): void {
        if (this.list.length < MAX_PROBLEMS) this.list.push({ line, message });
        else this.#more++;
    }
    finish(): ListProblem[] {
        if (this.#more > 0) {
            const last = this.list[this.list.length - 1]!;
            this.list.push({ line: last.line, message: `…and ${this.#more} more bad entries` });
        }
        return this.list;
    }
}

function ipList(lines: readonly Line[], problems: Problems): ListMatcher {
    const ranges: IpRange[] = [];
    for (const { line, text } of lines) {
        const r = parseRange(text);
        if ('error' in r) problems.add(line, r.error);
        else ranges.push(r);
    }
    const set = new IpSet(ranges);
    return { type: 'ip', size: ranges.length, has: (value) => set.has(value) };
}

/** True when `domain` or one of its parent domains is in `set` (one probe per label of a name that could be there). */
export function hasDomainOrParent(set: ReadonlySet<string>, domain: string): boolean {
    return someDomainOrParent(foldDomain(domain), (d) => set.has(d));
}

function domainList(lines: readonly Line[], problems: Problems): ListMatcher {
    const set = new Set<string>();
    for (const { line, text } of lines) {
        const d = parseDomain(text);
        if (d === null) {
            const hint = /^(\*\.|\.)/.test(text)
                ? ` (write ${text.replace(/^\*?\./, '')}: an entry already covers its subdomains)`
                : '';
            problems.add(line, `"${text}" is not a domain name${hint}`);
        } else {
            set.add(d);
        }
    }
    return { type: 'domain', size: set.size, has: (value) => value !== '' && hasDomainOrParent(set, value) };
}

function addressList(lines: readonly Line[], problems: Problems): ListMatcher {
    const addresses = new Set<string>();
    const domains = new Set<string>();
    for (const { line, text } of lines) {
        if (text.startsWith('@')) {
            const d = parseDomain(text.slice(1));
            if (d === null) problems.add(line, `"${text}" is not @ followed by a domain name`);
            else domains.add(d);
            continue;
        }
        const a = parseAddress(text);
        if (a === null)
            problems.add(line, `"${text}" is not a mail address (write local@domain, or @domain for a whole domain)`);
        else addresses.add(a);
    }
    return {
        type: 'address',
        size: addresses.size + domains.size,
        has: (value) => {
            if (addresses.has(foldAddress(value))) return true;
            const d = domainOfAddress(value);
            return d !== null && domains.has(d);
        },
    };
}

/**
 * Finds what would stop a pattern from being combined safely with others: unbalanced
 * parentheses or a trailing backslash could join it with its neighbour. RE2 syntax: `\Q…\E`
 * quotes, `[…]` classes (with `[]…]`, `[^]…]` and `[[:name:]]`). Returns a message or null.
 */
export function unbalanced(source: string): string | null {
    let depth = 0;
    let i = 0;
    const n = source.length;
    while (i < n) {
        const c = source[i];
        if (c === '\\') {
            if (i + 1 >= n) return 'trailing backslash';
            if (source[i + 1] === 'Q') {
                const end = source.indexOf('\\E', i + 2);
                i = end < 0 ? n : end + 2;
                continue;
            }
            i += 2;
            continue;
        }
        if (c === '[') {
            i++;
            if (source[i] === '^') i++;
            if (source[i] === ']') i++;
            while (i < n && source[i] !== ']') {
                if (source[i] === '\\') {
                    if (i + 1 >= n) return 'trailing backslash';
                    i += 2;
                } else if (source.startsWith('[:', i)) {
                    const end = source.indexOf(':]', i + 2);
                    i = end < 0 ? i + 1 : end + 2;
                } else {
                    i++;
                }
            }
            if (i >= n) return 'missing closing ]';
            i++;
            continue;
        }
        if (c === '(') depth++;
        else if (c === ')' && --depth < 0) return 'unexpected )';
        i++;
    }
    return depth > 0 ? 'missing )' : null;
}

function patternList(lines: readonly Line[], problems: Problems): ListMatcher {
    if (lines.length > MAX_PATTERN_ENTRIES) {
        problems.add(
            lines[MAX_PATTERN_ENTRIES]!.line,
            `a pattern list holds at most ${MAX_PATTERN_ENTRIES} entries (this one has ${lines.length}); use a domain, address or ip list for plain values`,
        );
        return { type: 'pattern', size: 0, has: () => false };
    }
    const arena = new RegexArena(4 * 1024 * 1024);
    const good: Line[] = [];
    for (const l of lines) {
        const why = unbalanced(l.text);
        if (why !== null) problems.add(l.line, `"${l.text}" is not a valid RE2 pattern: ${why}`);
        else good.push(l);
    }
    const programs: Pattern[] = [];
    for (let k = 0; k < good.length; k += PATTERNS_PER_PROGRAM) {
        const chunk = good.slice(k, k + PATTERNS_PER_PROGRAM);
        const added = arena.add(chunk.map((l) => `(?:${l.text})`).join('|'));
        if ('pattern' in added && matchesEverything(added.pattern)) {
            // an entry that matches every value makes the whole list do so: name it (entries
            // that only together match every value are what the operator wrote: kept)
            let found = false;
            for (const l of chunk) {
                const one = arena.add(`(?:${l.text})`);
                if ('pattern' in one && matchesEverything(one.pattern)) {
                    problems.add(
                        l.line,
                        `"${l.text}" matches every value (an empty alternative, or everything optional)`,
                    );
                    found = true;
                }
            }
            if (found) continue;
        }
        if ('pattern' in added) {
            programs.push(added.pattern);
            continue;
        }
        if (added.error.startsWith('too large')) {
            problems.add(chunk[0]!.line, `pattern list ${added.error}; shorten the list`);
            break;
        }
        let found = false;
        for (const l of chunk) {
            const error = arena.check(l.text);
            if (error !== null) {
                problems.add(l.line, `"${l.text}" is not a valid RE2 pattern: ${error}`);
                found = true;
            }
        }
        if (!found) problems.add(chunk[0]!.line, `these patterns cannot be combined: ${added.error}`);
    }
    return {
        type: 'pattern',
        size: good.length,
        has: (value) => programs.some((p) => p.test(value)),
    };
}

/**
 * Builds the matcher for a list file's text. Problems are bad entries by line; the matcher
 * is meaningful only when there are none.
 */
export function buildList(type: ListType, text: string): { matcher: ListMatcher; problems: ListProblem[] } {
    const problems = new Problems();
    const lines = entries(text, type !== 'pattern');
    let matcher: ListMatcher;
    switch (type) {
        case 'ip':
            matcher = ipList(lines, problems);
            break;
        case 'domain':
            matcher = domainList(lines, problems);
            break;
        case 'address':
            matcher = addressList(lines, problems);
            break;
        case 'pattern':
            matcher = patternList(lines, problems);
            break;
    }
    return { matcher: Object.freeze(matcher), problems: problems.finish() };
}
