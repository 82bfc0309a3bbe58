/**
 * Rule conditions: compiled once from the YAML of a rule's `when:` into predicates over facts,
 * with explanations for `mailwarden explain`. The operator set is closed: OPERATORS below holds
 * one record per operator, its documentation (the generated rules/README.md lists it) beside its
 * compile function, so an operator cannot be added without both; a mapping means all of its conditions, `any:`,
 * `all:` and `not:` combine them. Compilation reports every problem with its position and
 * never throws for bad input; its work is linear in the `when:` as written, because YAML
 * aliases are refused there (each use would be compiled again), as are empty condition maps
 * (they would match everything) and numbers for text facts (YAML reads 0x10 as 16).
 * Evaluation is pure and never changes the facts.
 */
import { domainToUnicode } from 'node:url';
import { isAlias, isMap, isScalar, isSeq, visit, type Alias, type Document, type Node } from 'yaml';
import { didYouMean } from '../config/suggest.ts';
import type { Facts, FactValue, Stage } from '../types.ts';
import { elementType, isListType, stageIndex, type FactSpec, type FactType } from './facts.ts';
import { IpSet, formatIp, parseIp, parseRange, type IpRange } from '../net/ip.ts';
import type { ListMatcher, ListType } from './lists.ts';
import { foldDomain, parseDomain, someDomainOrParent } from '../net/domain.ts';
import { baseOfFolded, domainOfAddress, foldAddress, foldMailDomain, parseAddress } from './names.ts';
import { matchesEverything, type RegexArena } from './regex.ts';

export type OperatorName =
    | 'eq'
    | 'ne'
    | 'in'
    | 'cidr'
    | 'domain'
    | 'suffix'
    | 'matches'
    | 'gt'
    | 'gte'
    | 'lt'
    | 'lte'
    | 'exists'
    | 'list';

type Elem = Exclude<FactType, `${string}[]`>;

export interface OperatorDoc {
    readonly name: OperatorName;
    /** What the operator's value is. */
    readonly value: string;
    /** Fact types it applies to (element types for list facts). */
    readonly types: readonly Elem[];
    readonly description: string;
    readonly example: string;
}

const TEXT: readonly Elem[] = ['string', 'ip', 'domain', 'address'];
const ALL: readonly Elem[] = ['string', 'number', 'boolean', 'ip', 'domain', 'address'];

/** What an operator's compile function gets: the fact, its element type, the operator's value and where it stands. */
interface OperatorInput {
    /** Reads values and reports problems (FILE:LINE:COL through the compile context). */
    readonly c: Compiler;
    readonly spec: FactSpec;
    readonly elem: Elem;
    readonly op: OperatorName;
    readonly node: Node | null;
    /** The operator's offset in the rule file. */
    readonly at: number;
    /** The value's offset (the operator's when there is no value). */
    readonly valueAt: number;
}

/** One operator: its documentation (rules/README.md is generated from it) and how its value compiles. */
export interface Operator extends OperatorDoc {
    compile(input: OperatorInput): Condition | null;
}

/** The closed operator set: each operator one record, as documented. */
export const OPERATORS: readonly Operator[] = Object.freeze(
    [
        {
            name: 'eq',
            compile: compileEquality,
            value: 'a value of the fact’s type',
            types: ALL,
            description:
                'Equal. Text compares case-insensitively, domains also ignore a trailing dot, IP addresses compare by value. An address with a subaddress is also equal to its base address (`alice+tag@example.com` to `alice@example.com`, delimiter `auth.recipientDelimiter`, default `+`), as Postfix looks up `user+ext@domain`, then `user@domain`; a value with a subaddress matches only that subaddress. Writing `fact: value` means the same.',
            example: '`dmarc.result: fail` or `dmarc.result: { eq: fail }`',
        },
        {
            name: 'ne',
            compile: compileEquality,
            value: 'a value of the fact’s type',
            types: ALL,
            description:
                'Not equal: exactly when `eq` does not hold (so it holds for a missing fact, and for a list fact when no element is equal).',
            example: '`spf.result: { ne: pass }`',
        },
        {
            name: 'in',
            compile: compileIn,
            value: 'a list of values',
            types: ALL,
            description: 'Equal to one of the values (as `eq`: an address also by its base address).',
            example: '`dmarc.policy: { in: [quarantine, reject] }`',
        },
        {
            name: 'cidr',
            compile: compileCidr,
            value: 'a list of addresses or CIDR ranges',
            types: ['ip'],
            description:
                'The address lies in one of the ranges (IPv4 and IPv6; IPv4-mapped IPv6 addresses count as IPv4).',
            example: '`client.ip: { cidr: [192.0.2.0/24, "2001:db8::/32"] }`',
        },
        {
            name: 'domain',
            compile: compileDomains,
            value: 'a list of domain names',
            types: ['domain', 'address'],
            description: 'The domain (for an address: its domain part) is exactly one of these.',
            example: '`header.from.domain: { domain: [example.com] }`',
        },
        {
            name: 'suffix',
            compile: compileDomains,
            value: 'a list of domain names',
            types: ['domain', 'address'],
            description: 'The domain (for an address: its domain part) is one of these or a subdomain of one.',
            example: '`client.ptr: { suffix: [example.net] }`',
        },
        {
            name: 'matches',
            compile: compileMatches,
            value: 'an RE2 regular expression',
            types: TEXT,
            description:
                'The pattern matches anywhere in the value, ignoring case (anchor with `^` and `$`). An address or domain is tested as written and in its other spelling (with non-ASCII characters also in its A-label form, with A-labels also in its U-label form), so `@xn--bcher-kva\\.example$` matches `a@bücher.example` and `@bücher\\.example$` matches `a@xn--bcher-kva.example` (as `in` and `domain` compare folded names). RE2 syntax: matching time is linear in the input; backreferences and lookaround are refused.',
            example: '`helo: { matches: "^\\\\[?[0-9.]+\\\\]?$" }`',
        },
        {
            name: 'gt',
            compile: compileComparison,
            value: 'a number',
            types: ['number'],
            description: 'Greater than.',
            example: '`rcpt.count: { gt: 50 }`',
        },
        {
            name: 'gte',
            compile: compileComparison,
            value: 'a number',
            types: ['number'],
            description: 'Greater than or equal.',
            example: '`score: { gte: 10 }`',
        },
        {
            name: 'lt',
            compile: compileComparison,
            value: 'a number',
            types: ['number'],
            description: 'Less than.',
            example: '`message.size: { lt: 1024 }`',
        },
        {
            name: 'lte',
            compile: compileComparison,
            value: 'a number',
            types: ['number'],
            description: 'Less than or equal.',
            example: '`header.from.count: { lte: 0 }`',
        },
        {
            name: 'exists',
            compile: compileExists,
            value: '`true` or `false`',
            types: ALL,
            description: 'The fact has a value (is not null); for a list fact: it is not empty.',
            example: '`auth.user: { exists: false }`',
        },
        {
            name: 'list',
            compile: compileList,
            value: 'the name of a declared list',
            types: TEXT,
            description:
                'Membership in a list file: `ip` lists for ip facts, `domain` lists for domain and address facts (the address’s domain), `address` lists for address facts (as `eq`: an address also by its base address, `alice+tag@` by an `alice@` entry), `pattern` lists for any text (as `matches`: an address or domain also in its other spelling, A-labels or U-labels).',
            example: '`mail.from: { list: block-senders }`',
        },
    ].map((o) => Object.freeze({ ...o, types: Object.freeze([...o.types]) }) as Operator),
);

const OPERATOR_NAMES = OPERATORS.map((o) => o.name);
const COMBINATORS = ['any', 'all', 'not'] as const;

/** A compiled condition. */
export interface Condition {
    test(facts: Facts): boolean;
    /** Evaluates every part (no short cut) and says why each held or not. */
    explain(facts: Facts): { readonly ok: boolean; readonly text: string };
}

/** A list as the loader declared it; `matcher` is null when its file could not be loaded. */
export interface DeclaredList {
    readonly name: string;
    readonly type: ListType;
    readonly matcher: ListMatcher | null;
}

export interface CompileContext {
    readonly doc: Document.Parsed;
    report(offset: number, message: string): void;
    readonly facts: ReadonlyMap<string, FactSpec>;
    readonly stage: Stage;
    readonly lists: ReadonlyMap<string, DeclaredList>;
    readonly arena: RegexArena;
    /**
     * Characters that start a subaddress (`auth.recipientDelimiter`; '' or left out: none).
     * `in`, `eq` and address lists match an address fact by its base address too.
     */
    readonly recipientDelimiter?: string;
    /**
     * Why a known fact cannot be read here, or null when it can. Left out: a fact may be read
     * from its stage on. Rate limits use it to refuse facts their own stage's checks report.
     */
    readonly factProblem?: (spec: FactSpec) => string | null;
}

const ALWAYS: Condition = Object.freeze({
    test: () => true,
    explain: () => ({ ok: true, text: 'no conditions (always matches)' }),
});

function offsetOf(node: Node | null | undefined, fallback: number): number {
    return node?.range?.[0] ?? fallback;
}

function deref(doc: Document.Parsed, node: unknown): Node | null {
    if (node === null || node === undefined) return null;
    if (isAlias(node)) return (node.resolve(doc) as Node | undefined) ?? null;
    return node as Node;
}

function mark(ok: boolean): string {
    return ok ? '✓' : '✗';
}

/** A fact value shortened for explanations. */
export function showValue(value: FactValue | undefined): string {
    if (value === undefined || value === null) return 'null';
    const text = JSON.stringify(value);
    return text.length > 80 ? `${text.slice(0, 77)}…` : text;
}

function listOfWords(values: readonly (string | number | boolean)[]): string {
    const shown = values.slice(0, 5).map(String).join(', ');
    return values.length > 5 ? `${shown}, … (${values.length} in all)` : shown;
}

/** Folds a scalar of a fact's element type for equality; null for values that cannot be equal to anything. */
function foldFor(type: Elem, v: unknown): string | number | boolean | null {
    switch (type) {
        case 'number':
            return typeof v === 'number' ? v : null;
        case 'boolean':
            return typeof v === 'boolean' ? v : null;
        case 'ip': {
            if (typeof v !== 'string') return null;
            const ip = parseIp(v);
            return ip === null ? v.toLowerCase() : `${ip.family}:${ip.value}`;
        }
        case 'domain':
            return typeof v === 'string' ? foldMailDomain(v) : null;
        case 'address':
            return typeof v === 'string' ? foldAddress(v) : null;
        case 'string':
            return typeof v === 'string' || typeof v === 'number' ? String(v).toLowerCase() : null;
    }
}

/**
 * The forms an address fact's value is looked up by, as Postfix's access maps look up
 * `user+ext@domain`, then `user@domain`: the folded address, and its base address when it has
 * a subaddress.
 */
function addressForms(v: string, delimiters: string): string[] {
    const folded = foldAddress(v);
    const base = baseOfFolded(folded, delimiters);
    return base === folded ? [folded] : [folded, base];
}

/**
 * The text forms a pattern is tested against: the value as written and, for an address or a
 * domain, its other spelling: holding non-ASCII characters, its folded A-label form
 * (`a@bücher.example` is also `a@xn--bcher-kva.example`); holding A-labels, its U-label form
 * (`a@XN--BCHER-KVA.example` is also `a@bücher.example`). So a pattern written either way
 * matches a value sent either way, as `in` and `domain` do.
 */
function patternForms(elem: Elem, v: string): string[] {
    if (elem !== 'address' && elem !== 'domain') return [v];
    // eslint-disable-next-line no-control-regex
    if (!/^[\x00-\x7f]*$/.test(v)) {
        const folded = elem === 'address' ? foldAddress(v) : foldDomain(v);
        return folded === v ? [v] : [v, folded];
    }
    if (!/(?:^|[.@])xn--/i.test(v)) return [v];
    const at = elem === 'address' ? v.lastIndexOf('@') : -1;
    const unicode = domainToUnicode(v.slice(at + 1));
    // eslint-disable-next-line no-control-regex
    if (unicode === '' || /^[\x00-\x7f]*$/.test(unicode)) return [v];
    return [v, `${v.slice(0, at + 1)}${unicode}`];
}

interface Leaf {
    readonly op: OperatorName;
    /** For element-wise operators: the test of one element. */
    readonly element: (v: unknown) => boolean;
    /** What holding means, e.g. `is fail`, `in list block-senders`. */
    readonly says: string;
    readonly negative: string;
}

function leafCondition(spec: FactSpec, leaf: Leaf, expectExists: boolean): Condition {
    const name = spec.name;
    const many = isListType(spec.type);
    const test = (facts: Facts): boolean => {
        const value = facts[name];
        if (leaf.op === 'exists') {
            const present = value !== null && value !== undefined && !(Array.isArray(value) && value.length === 0);
            return present === expectExists;
        }
        if (leaf.op === 'ne') {
            if (value === null || value === undefined) return true;
            return Array.isArray(value) ? !value.some((v) => leaf.element(v)) : !leaf.element(value);
        }
        if (value === null || value === undefined) return false;
        return Array.isArray(value) ? value.some((v) => leaf.element(v)) : leaf.element(value);
    };
    const elementwise = many && leaf.op !== 'exists' && leaf.op !== 'ne';
    return {
        test,
        explain(facts) {
            const ok = test(facts);
            const why = elementwise
                ? ok
                    ? `an element ${leaf.says}`
                    : `no element ${leaf.says}`
                : many && leaf.op === 'ne'
                  ? ok
                      ? `no element ${leaf.negative}`
                      : `an element ${leaf.negative}`
                  : ok
                    ? leaf.says
                    : leaf.negative;
            return { ok, text: `${name} = ${showValue(facts[name])} (${why}) ${mark(ok)}` };
        },
    };
}

type Scalar = string | number | boolean | null;

class Compiler {
    readonly ctx: CompileContext;
    constructor(ctx: CompileContext) {
        this.ctx = ctx;
    }

    scalar(node: Node | null): { ok: true; value: Scalar } | { ok: false } {
        if (node === null) return { ok: true, value: null };
        if (!isScalar(node)) return { ok: false };
        const v = node.value;
        if (v === null || typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean')
            return { ok: true, value: v };
        return { ok: false };
    }

    describe(node: Node | null): string {
        if (node === null) return 'nothing';
        if (isMap(node)) return 'a map';
        if (isSeq(node)) return 'a list';
        const s = this.scalar(node);
        if (!s.ok) return 'an unsupported value';
        return s.value === null ? 'nothing' : typeof s.value === 'string' ? `"${s.value}"` : String(s.value);
    }

    /** A mapping (all of its conditions). */
    compile(raw: unknown, fallback: number, where: string): Condition | null {
        const node = deref(this.ctx.doc, raw);
        const at = offsetOf(node, fallback);
        if (node === null || (isScalar(node) && node.value === null)) {
            this.ctx.report(at, `${where}: expected a map of conditions (fact: value, any:, all:, not:); got nothing`);
            return null;
        }
        if (!isMap(node)) {
            this.ctx.report(
                at,
                `${where}: expected a map of conditions (fact: value, any:, all:, not:); got ${this.describe(node)}`,
            );
            return null;
        }
        if (node.items.length === 0) {
            this.ctx.report(at, `${where}: an empty map of conditions would always hold; write its conditions`);
            return null;
        }
        const parts: Condition[] = [];
        let bad = false;
        for (const pair of node.items) {
            const keyNode = deref(this.ctx.doc, pair.key);
            const keyAt = offsetOf(keyNode, at);
            const key = keyNode !== null && isScalar(keyNode) ? keyNode.value : undefined;
            if (typeof key !== 'string') {
                this.ctx.report(keyAt, `${where}: condition keys are fact names or any, all, not`);
                bad = true;
                continue;
            }
            const value = deref(this.ctx.doc, pair.value);
            const c = this.entry(key, keyAt, value);
            if (c === null) bad = true;
            else parts.push(c);
        }
        if (bad) return null;
        return allOf(parts, false);
    }

    entry(key: string, keyAt: number, value: Node | null): Condition | null {
        const valueAt = offsetOf(value, keyAt);
        if (key === 'any' || key === 'all') {
            if (value === null || !isSeq(value) || value.items.length === 0) {
                this.ctx.report(
                    valueAt,
                    `${key}: expected a non-empty list of conditions; got ${value !== null && isSeq(value) ? 'an empty list' : this.describe(value)}`,
                );
                return null;
            }
            const parts: Condition[] = [];
            let bad = false;
            for (const item of value.items) {
                const c = this.compile(item, valueAt, key);
                if (c === null) bad = true;
                else parts.push(c);
            }
            if (bad) return null;
            return key === 'any' ? anyOf(parts) : allOf(parts, true);
        }
        if (key === 'not') {
            const inner = this.compile(value, valueAt, 'not');
            return inner === null ? null : notOf(inner);
        }
        const spec = this.ctx.facts.get(key);
        if (spec === undefined) {
            const hint = didYouMean(key, [...this.ctx.facts.keys(), ...COMBINATORS]);
            this.ctx.report(keyAt, `unknown fact "${key}"${hint}`);
            return null;
        }
        const problem = this.ctx.factProblem
            ? this.ctx.factProblem(spec)
            : stageIndex(spec.stage) > stageIndex(this.ctx.stage)
              ? `fact "${key}" is not known until the ${spec.stage} stage, and this rule runs at the ${this.ctx.stage} stage (set stage: ${spec.stage})`
              : null;
        if (problem !== null) {
            this.ctx.report(keyAt, problem);
            return null;
        }
        return this.factTest(spec, value, keyAt);
    }

    factTest(spec: FactSpec, value: Node | null, keyAt: number): Condition | null {
        const at = offsetOf(value, keyAt);
        if (value !== null && isSeq(value)) {
            this.ctx.report(at, `${spec.name}: a list of values needs an operator, e.g. { in: [...] }`);
            return null;
        }
        if (value === null || !isMap(value)) {
            const s = this.scalar(value);
            if (!s.ok) {
                this.ctx.report(at, `${spec.name}: expected a value or an operator map; got ${this.describe(value)}`);
                return null;
            }
            if (s.value === null) {
                this.ctx.report(
                    at,
                    `${spec.name}: no value given (to test for a missing fact, write { exists: false })`,
                );
                return null;
            }
            return this.operator(spec, 'eq', value, at);
        }
        if (value.items.length !== 1) {
            this.ctx.report(
                at,
                `${spec.name}: an operator map holds exactly one operator (got ${value.items.length}); combine several with all: [...]`,
            );
            return null;
        }
        const pair = value.items[0]!;
        const opNode = deref(this.ctx.doc, pair.key);
        const opAt = offsetOf(opNode, at);
        const op = opNode !== null && isScalar(opNode) ? opNode.value : undefined;
        if (typeof op !== 'string' || !(OPERATOR_NAMES as readonly string[]).includes(op)) {
            const hint = typeof op === 'string' ? didYouMean(op, OPERATOR_NAMES) : '';
            this.ctx.report(opAt, `unknown operator "${String(op)}"${hint}; operators: ${OPERATOR_NAMES.join(', ')}`);
            return null;
        }
        return this.operator(spec, op as OperatorName, deref(this.ctx.doc, pair.value), opAt);
    }

    /** Reads one value of the fact's element type for eq/ne/in; reports and returns undefined when bad. */
    typedValue(spec: FactSpec, node: Node | null, fallback: number, op: string): string | number | boolean | undefined {
        const at = offsetOf(node, fallback);
        const what = op === '' ? spec.name : op;
        const elem = elementType(spec.type);
        const s = this.scalar(node);
        const got = this.describe(node);
        if (!s.ok || s.value === null) {
            this.ctx.report(at, `${what}: expected ${typeWord(elem)}; got ${got}`);
            return undefined;
        }
        const v = s.value;
        switch (elem) {
            case 'number':
                if (typeof v !== 'number') {
                    this.ctx.report(at, `${what}: expected a number; got ${got}`);
                    return undefined;
                }
                return v;
            case 'boolean':
                if (typeof v !== 'boolean') {
                    this.ctx.report(at, `${what}: expected true or false; got ${got}`);
                    return undefined;
                }
                return v;
            default: {
                if (typeof v === 'boolean') {
                    this.ctx.report(at, `${what}: expected text; got ${got} (quote it to compare with the word)`);
                    return undefined;
                }
                if (typeof v === 'number') {
                    // YAML reads 0x10 as 16 and 1e3 as 1000: comparing the number's text would
                    // surprise. A number written as it reads (a numeric login, 1001) is its text.
                    const written =
                        node !== null && isScalar(node) && typeof node.source === 'string' ? node.source : null;
                    if (written === null || written !== String(v)) {
                        const shown = written ?? got;
                        const reads = shown === got ? '' : ` (YAML reads ${shown} as a number)`;
                        this.ctx.report(
                            at,
                            `${what}: expected text; got the number ${got}${reads}: quote it ("${shown}")`,
                        );
                        return undefined;
                    }
                }
                const text = String(v);
                if (elem === 'ip' && parseIp(text) === null) {
                    this.ctx.report(at, `${what}: "${text}" is not an IP address`);
                    return undefined;
                }
                if (elem === 'domain' && parseDomain(text) === null) {
                    this.ctx.report(at, `${what}: "${text}" is not a domain name`);
                    return undefined;
                }
                if (elem === 'address' && text !== '' && parseAddress(text) === null) {
                    this.ctx.report(at, `${what}: "${text}" is not a mail address`);
                    return undefined;
                }
                if (spec.values && !spec.values.includes(text.toLowerCase())) {
                    this.ctx.report(
                        at,
                        `${spec.name} is never "${text}"${didYouMean(text, spec.values)}; its values are ${spec.values.join(', ')}`,
                    );
                    return undefined;
                }
                return text;
            }
        }
    }

    /** A non-empty list of strings (for cidr, domain, suffix). */
    stringList(node: Node | null, fallback: number, op: string): { text: string; at: number }[] | null {
        const at = offsetOf(node, fallback);
        if (node === null || !isSeq(node) || node.items.length === 0) {
            this.ctx.report(
                at,
                `${op}: expected a non-empty list; got ${node !== null && isSeq(node) ? 'an empty list' : this.describe(node)}`,
            );
            return null;
        }
        const out: { text: string; at: number }[] = [];
        let bad = false;
        for (const raw of node.items) {
            const item = deref(this.ctx.doc, raw);
            const s = this.scalar(item);
            if (!s.ok || typeof s.value !== 'string') {
                this.ctx.report(offsetOf(item, at), `${op}: expected text; got ${this.describe(item)}`);
                bad = true;
                continue;
            }
            out.push({ text: s.value, at: offsetOf(item, at) });
        }
        return bad ? null : out;
    }

    operator(spec: FactSpec, op: OperatorName, node: Node | null, at: number): Condition | null {
        const elem = elementType(spec.type);
        const operator = OPERATORS.find((o) => o.name === op)!;
        if (!operator.types.includes(elem)) {
            const fits = OPERATORS.filter((o) => o.types.includes(elem)).map((o) => o.name);
            this.ctx.report(
                at,
                `${op}: does not apply to ${spec.name}, which is ${typeWord(spec.type)}; use ${fits.join(', ')}`,
            );
            return null;
        }
        return operator.compile({ c: this, spec, elem, op, node, at, valueAt: offsetOf(node, at) });
    }

    listOperator(spec: FactSpec, elem: Elem, node: Node | null, at: number): Condition | null {
        const s = this.scalar(node);
        if (!s.ok || typeof s.value !== 'string' || s.value === '') {
            this.ctx.report(at, `list: expected the name of a list; got ${this.describe(node)}`);
            return null;
        }
        const name = s.value;
        const declared = this.ctx.lists.get(name);
        if (declared === undefined) {
            const names = [...this.ctx.lists.keys()];
            const hint = didYouMean(name, names);
            this.ctx.report(at, `list "${name}" is not declared${hint}; declare it under lists: in a rule file`);
            return null;
        }
        const fits: Record<ListType, readonly Elem[]> = {
            ip: ['ip'],
            domain: ['domain', 'address'],
            address: ['address'],
            pattern: TEXT,
        };
        if (!fits[declared.type].includes(elem)) {
            this.ctx.report(
                at,
                `list "${name}" is ${declared.type === 'ip' || declared.type === 'address' ? 'an' : 'a'} ${declared.type} list and cannot be used with ${spec.name}, which is ${typeWord(spec.type)}`,
            );
            return null;
        }
        const matcher = declared.matcher;
        const delimiters = this.ctx.recipientDelimiter ?? '';
        const element = (x: unknown): boolean => {
            if (matcher === null || typeof x !== 'string') return false;
            if (declared.type === 'domain' && elem === 'address') {
                const d = domainOfAddress(x);
                return d !== null && matcher.has(d);
            }
            if (declared.type === 'pattern') return patternForms(elem, x).some((f) => matcher.has(f));
            if (elem === 'address') return addressForms(x, delimiters).some((a) => matcher.has(a));
            return matcher.has(x);
        };
        return leafCondition(
            spec,
            { op: 'list', element, says: `in list ${name}`, negative: `not in list ${name}` },
            true,
        );
    }
}

/** Equal or not equal (`eq`, `ne`; `fact: value` is `eq`). */
function compileEquality({ c, spec, elem, op, node, at }: OperatorInput): Condition | null {
    const v = c.typedValue(spec, node, at, op === 'eq' && node !== null && !isMap(node) ? '' : op);
    if (v === undefined) return null;
    const want = foldFor(elem, v);
    const shown = elem === 'ip' ? formatIp(parseIp(String(v))!) : String(v);
    const delimiters = c.ctx.recipientDelimiter ?? '';
    const leaf: Leaf = {
        op,
        element:
            elem === 'address'
                ? (x) => typeof x === 'string' && addressForms(x, delimiters).includes(want as string)
                : (x) => foldFor(elem, x) === want,
        says: `is ${shown}`,
        negative: `is not ${shown}`,
    };
    return leafCondition(spec, op === 'ne' ? { ...leaf, says: leaf.negative, negative: leaf.says } : leaf, true);
}

/** One of a list of values. */
function compileIn({ c, spec, elem, op, node, valueAt }: OperatorInput): Condition | null {
    if (node === null || !isSeq(node) || node.items.length === 0) {
        c.ctx.report(
            valueAt,
            `in: expected a non-empty list of values; got ${node !== null && isSeq(node) ? 'an empty list' : c.describe(node)}`,
        );
        return null;
    }
    const values: (string | number | boolean)[] = [];
    let bad = false;
    for (const raw of node.items) {
        const v = c.typedValue(spec, deref(c.ctx.doc, raw), valueAt, 'in');
        if (v === undefined) bad = true;
        else values.push(v);
    }
    if (bad) return null;
    const set = new Set(values.map((v) => foldFor(elem, v)));
    const shown = `[${listOfWords(values)}]`;
    const delimiters = c.ctx.recipientDelimiter ?? '';
    const element =
        elem === 'address'
            ? (x: unknown) => typeof x === 'string' && addressForms(x, delimiters).some((a) => set.has(a))
            : (x: unknown) => set.has(foldFor(elem, x));
    return leafCondition(spec, { op, element, says: `in ${shown}`, negative: `not in ${shown}` }, true);
}

/** In one of the CIDR ranges. */
function compileCidr({ c, spec, op, node, valueAt }: OperatorInput): Condition | null {
    const items = c.stringList(node, valueAt, 'cidr');
    if (items === null) return null;
    const ranges: IpRange[] = [];
    let bad = false;
    for (const { text, at: itemAt } of items) {
        const r = parseRange(text);
        if ('error' in r) {
            c.ctx.report(itemAt, `cidr: ${r.error}`);
            bad = true;
        } else {
            ranges.push(r);
        }
    }
    if (bad) return null;
    const set = new IpSet(ranges);
    const shown = listOfWords(items.map((i) => i.text));
    return leafCondition(
        spec,
        {
            op,
            element: (x) => typeof x === 'string' && set.has(x),
            says: `in ${shown}`,
            negative: `not in ${shown}`,
        },
        true,
    );
}

/** One of the domains (`domain`), or under one (`suffix`). */
function compileDomains({ c, spec, elem, op, node, valueAt }: OperatorInput): Condition | null {
    const items = c.stringList(node, valueAt, op);
    if (items === null) return null;
    const set = new Set<string>();
    let bad = false;
    for (const { text, at: itemAt } of items) {
        const d = parseDomain(text);
        if (d === null) {
            c.ctx.report(itemAt, `${op}: "${text}" is not a domain name`);
            bad = true;
        } else {
            set.add(d);
        }
    }
    if (bad) return null;
    const domainOf = (x: unknown): string | null =>
        typeof x !== 'string' ? null : elem === 'address' ? domainOfAddress(x) : foldDomain(x);
    const shown = listOfWords(items.map((i) => i.text));
    if (op === 'domain') {
        return leafCondition(
            spec,
            {
                op,
                element: (x) => {
                    const d = domainOf(x);
                    return d !== null && set.has(d);
                },
                says: `is one of ${shown}`,
                negative: `is none of ${shown}`,
            },
            true,
        );
    }
    return leafCondition(
        spec,
        {
            op,
            element: (x) => {
                const d = domainOf(x);
                return d !== null && someDomainOrParent(d, (name) => set.has(name));
            },
            says: `is or is under ${shown}`,
            negative: `is not and is not under ${shown}`,
        },
        true,
    );
}

/** An RE2 pattern. */
function compileMatches({ c, spec, elem, op, node, valueAt }: OperatorInput): Condition | null {
    const s = c.scalar(node);
    if (!s.ok || typeof s.value !== 'string') {
        c.ctx.report(valueAt, `matches: expected a regular expression in quotes; got ${c.describe(node)}`);
        return null;
    }
    if (s.value === '') {
        c.ctx.report(valueAt, 'matches: an empty pattern matches everything; use { exists: true }');
        return null;
    }
    const added = c.ctx.arena.add(s.value);
    if ('error' in added) {
        c.ctx.report(valueAt, `matches: "${s.value}" is not a valid RE2 pattern: ${added.error}`);
        return null;
    }
    const pattern = added.pattern;
    if (matchesEverything(pattern)) {
        // `@partner\.example$|` or `(x)?$`: an allow rule with it would accept every sender
        c.ctx.report(
            valueAt,
            `matches: "${s.value}" matches every value (an empty alternative, or everything optional); use { exists: true } if that is meant`,
        );
        return null;
    }
    return leafCondition(
        spec,
        {
            op,
            element: (x) => (typeof x === 'string' ? patternForms(elem, x).some((f) => pattern.test(f)) : false),
            says: `matches /${s.value}/`,
            negative: `does not match /${s.value}/`,
        },
        true,
    );
}

/** A number comparison (`gt`, `gte`, `lt`, `lte`). */
function compileComparison({ c, spec, op, node, valueAt }: OperatorInput): Condition | null {
    const s = c.scalar(node);
    if (!s.ok || typeof s.value !== 'number' || !Number.isFinite(s.value)) {
        c.ctx.report(valueAt, `${op}: expected a number; got ${c.describe(node)}`);
        return null;
    }
    const n = s.value;
    const sign = ({ gt: '>', gte: '>=', lt: '<', lte: '<=' } as Readonly<Record<string, string>>)[op];
    const cmp =
        op === 'gt'
            ? (x: number) => x > n
            : op === 'gte'
              ? (x: number) => x >= n
              : op === 'lt'
                ? (x: number) => x < n
                : (x: number) => x <= n;
    return leafCondition(
        spec,
        {
            op,
            element: (x) => typeof x === 'number' && cmp(x),
            says: `${sign} ${n}`,
            negative: `not ${sign} ${n}`,
        },
        true,
    );
}

/** Has a value. */
function compileExists({ c, spec, op, node, valueAt }: OperatorInput): Condition | null {
    const s = c.scalar(node);
    if (!s.ok || typeof s.value !== 'boolean') {
        c.ctx.report(valueAt, `exists: expected true or false; got ${c.describe(node)}`);
        return null;
    }
    const want = s.value;
    return leafCondition(
        spec,
        {
            op,
            element: () => true,
            says: want ? 'exists' : 'does not exist',
            negative: want ? 'does not exist' : 'exists',
        },
        want,
    );
}

/** Membership in a declared list file. */
function compileList({ c, spec, elem, node, valueAt }: OperatorInput): Condition | null {
    return c.listOperator(spec, elem, node, valueAt);
}

const TYPE_WORDS: Readonly<Record<FactType, string>> = {
    string: 'text',
    number: 'a number',
    boolean: 'true or false',
    ip: 'an IP address',
    domain: 'a domain name',
    address: 'a mail address',
    'string[]': 'a list of texts',
    'domain[]': 'a list of domain names',
    'address[]': 'a list of mail addresses',
};

function typeWord(type: FactType): string {
    return TYPE_WORDS[type];
}

/** All of `parts`; `explicit` (an `all:` in a rule file) shows them as "all of (…)". */
export function allOf(parts: readonly Condition[], explicit: boolean): Condition {
    if (parts.length === 0) return ALWAYS;
    if (parts.length === 1 && !explicit) return parts[0]!;
    return {
        test: (facts) => parts.every((p) => p.test(facts)),
        explain(facts) {
            const rs = parts.map((p) => p.explain(facts));
            const ok = rs.every((r) => r.ok);
            const inner = rs.map((r) => r.text).join('; ');
            return { ok, text: explicit ? `all of (${inner}) ${mark(ok)}` : inner };
        },
    };
}

/** A nested AND shown in brackets so it reads unambiguously inside any/not. */
function grouped(c: Condition, facts: Facts): { ok: boolean; text: string } {
    const r = c.explain(facts);
    return r.text.includes('; ') && !r.text.startsWith('all of (')
        ? { ok: r.ok, text: `(${r.text}) ${mark(r.ok)}` }
        : r;
}

/** Any of `parts` (an `any:` in a rule file). */
export function anyOf(parts: readonly Condition[]): Condition {
    return {
        test: (facts) => parts.some((p) => p.test(facts)),
        explain(facts) {
            const rs = parts.map((p) => grouped(p, facts));
            const ok = rs.some((r) => r.ok);
            return { ok, text: `any of (${rs.map((r) => r.text).join(' | ')}) ${mark(ok)}` };
        },
    };
}

function notOf(inner: Condition): Condition {
    return {
        test: (facts) => !inner.test(facts),
        explain(facts) {
            const r = grouped(inner, facts);
            return { ok: !r.ok, text: `not (${r.text}) ${mark(!r.ok)}` };
        },
    };
}

/**
 * Reports the first YAML alias (`*name`) in `node` (keys included) at its position, with how
 * many there are; true when there is one. The walk does not follow aliases, so it costs one
 * visit per node written.
 */
export function refuseAliases(
    node: Node | null,
    report: (offset: number, message: string) => void,
    where: string,
    instead: string,
): boolean {
    if (node === null) return false;
    const aliases: Alias[] = [];
    visit(node, {
        Alias(_key, alias) {
            aliases.push(alias);
        },
    });
    const first = aliases[0];
    if (first === undefined) return false;
    const more = aliases.length > 1 ? ` (${aliases.length} in all)` : '';
    report(
        first.range?.[0] ?? node.range?.[0] ?? 0,
        `${where}: YAML aliases such as *${first.source} are not accepted here${more}, because each use would be expanded again; ${instead}`,
    );
    return true;
}

/**
 * Compiles a rule's `when:`. `raw` undefined means no `when:` key: always matches. A `when:`
 * written but empty (nothing, null, `{}`) is an error, as is a YAML alias anywhere inside it
 * (each use would be compiled again: nested aliases cost exponential time). Returns null when
 * it had problems, which are reported through the context.
 */
export function compileWhen(raw: Node | null | undefined, fallback: number, ctx: CompileContext): Condition | null {
    if (raw === undefined) return ALWAYS;
    if (refuseAliases(raw, (offset, message) => ctx.report(offset, message), 'when', 'write the conditions out'))
        return null;
    const at = offsetOf(raw, fallback);
    if (raw === null || (isScalar(raw) && raw.value === null) || (isMap(raw) && raw.items.length === 0)) {
        ctx.report(
            at,
            'when: is empty, so it would match everything; write its conditions, or leave when: out for a rule that always applies',
        );
        return null;
    }
    return new Compiler(ctx).compile(raw, fallback, 'when');
}

/**
 * Checks one fact value of a `cases:` example against the catalogue. Returns the value in
 * the shape facts have (null kept), or an error message.
 */
export function caseFactValue(spec: FactSpec, value: unknown): { value: FactValue } | { error: string } {
    if (value === null) return { value: null };
    const elem = elementType(spec.type);
    const one = (v: unknown): string | number | boolean | { error: string } => {
        if (elem === 'number') return typeof v === 'number' ? v : { error: `${spec.name} is a number` };
        if (elem === 'boolean') return typeof v === 'boolean' ? v : { error: `${spec.name} is true or false` };
        if (typeof v === 'number')
            return { error: `${spec.name} is ${typeWord(elem)}; got the number ${v}: quote the value as written` };
        if (typeof v !== 'string') return { error: `${spec.name} is ${typeWord(elem)}` };
        const text = v;
        // Domains and addresses are taken as given: checks report what clients sent, odd or hostile.
        if (elem === 'ip' && parseIp(text) === null) return { error: `"${text}" is not an IP address` };
        if (spec.values && !spec.values.includes(text.toLowerCase())) {
            return {
                error: `${spec.name} is never "${text}"${didYouMean(text, spec.values)}; its values are ${spec.values.join(', ')}`,
            };
        }
        return text;
    };
    if (isListType(spec.type)) {
        if (!Array.isArray(value)) return { error: `${spec.name} is a list; write [ ... ]` };
        const out: string[] = [];
        for (const v of value as unknown[]) {
            const r = one(v);
            if (typeof r === 'object') return r;
            out.push(String(r));
        }
        return { value: out };
    }
    if (Array.isArray(value)) return { error: `${spec.name} is ${typeWord(spec.type)}, not a list` };
    const r = one(value);
    return typeof r === 'object' ? r : { value: r };
}
