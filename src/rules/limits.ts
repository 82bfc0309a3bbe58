/**
 * Rate limits, concurrency limits and greylisting as rule files declare them (`limits:` and
 * `greylist:`): reading and validating each entry with positioned problems, and the implicit
 * rules each entry stands for. Those rules are ordinary rules placed first in their stage, so
 * `explain` shows them, `rule_hits_total` counts them and `cases:` can name them; they refuse
 * when the `ratelimit` check reports the entry's id as exceeded. Declarations only: it must
 * not count anything or talk to a store (src/limits/check.ts does both).
 */
import type { Field, SourceReader } from '../config/reader.ts';
import { didYouMean } from '../config/suggest.ts';
import { formatDuration, formatSize, parseDuration, parseSize } from '../config/units.ts';
import type { Window } from '../limits/types.ts';
import { replyFor, type ReplyDetail, type Situation } from '../reply.ts';
import type { Facts, Stage } from '../types.ts';
import { allOf, anyOf, showValue, type Condition } from './conditions.ts';
import { stageIndex, type FactSpec, type FactType } from './facts.ts';
import type { Rule, RuleMode, RuleReplySpec } from './rule.ts';
import { parseTemplate, type Template } from './template.ts';

/** What one unit of a rate is, and so when it is counted. */
export type LimitPer = 'connection' | 'message' | 'recipient' | 'byte';
export const LIMIT_PERS: readonly LimitPer[] = Object.freeze(['connection', 'message', 'recipient', 'byte']);

/** The stage at which each kind of rate is counted. */
export const PER_STAGE: Readonly<Record<LimitPer, Stage>> = Object.freeze({
    connection: 'connect',
    message: 'mail',
    recipient: 'rcpt',
    byte: 'data',
});

/** What happens to mail when the shared store fails: let it through (default), or ask to retry. */
export type OnError = 'allow' | 'tempfail';
export const ON_ERRORS: readonly OnError[] = Object.freeze(['allow', 'tempfail']);

export const LIMIT_KEYS = [
    'id',
    'description',
    'key',
    'rate',
    'per',
    'concurrency',
    'ipv6Prefix',
    'when',
    'mode',
    'onError',
] as const;
export const GREYLIST_KEYS = [
    'id',
    'description',
    'when',
    'delay',
    'retryWindow',
    'expire',
    'autoAllowAfter',
    'mode',
    'onError',
] as const;

/** The key word that makes one counter for all traffic. */
export const GLOBAL_KEY = 'global';
/** IPv6 clients are counted per /64 unless `ipv6Prefix` says otherwise (one site usually has a /64). */
export const DEFAULT_IPV6_PREFIX = 64;
/** Greylisting groups clients by network, as postgrey does: IPv4 /24, IPv6 /64. */
export const GREYLIST_IPV4_PREFIX = 24;
export const GREYLIST_IPV6_PREFIX = 64;
/**
 * New greylisting records (triplets first seen, each kept up to `retryWindow`) one network
 * may make, counted per IPv4 /24 and per IPv6 /48 (an allocation: its holder has 65,536 /64s
 * to write from): at most 1000 an hour. What one network can make the store hold is then
 * bounded (48,000 waiting records with a 2-day retryWindow) whatever its recipient rate; a
 * new triplet past it is not recorded ('capped') and is let through (its retry could not pass).
 */
export const GREYLIST_NETWORK_IPV6_PREFIX = 48;
export const GREYLIST_NEW_PER_NETWORK: Window = Object.freeze({ limit: 1000, periodMs: 60 * 60_000 });
/**
 * New greylisting records all networks together may make, per entry: at most 10,000 an hour,
 * so what greylisting can make the store hold is bounded whatever the number of networks
 * (about 254 bytes a record, kept `retryWindow`: with 2 days at most 10,000 + 48 x 10,000 =
 * 490,000 waiting records, about 124 MB, under the shipped `maxmemory 256mb`). A new triplet
 * past it is not recorded ('capped_global') and is let through as a capped one is.
 */
export const GREYLIST_NEW_PER_ENTRY: Window = Object.freeze({ limit: 10_000, periodMs: 60 * 60_000 });
/** What a client refused by a concurrency limit is told to wait. */
export const CONCURRENCY_RETRY_SECONDS = 60;

const SECOND = 1000;
const MINUTE = 60 * SECOND;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
/** The store's bounds: periods up to 366 days, limit × period within 2^52. */
const MAX_PERIOD_MS = 366 * DAY;
const MAX_PRODUCT = 2 ** 52;
const MAX_CONCURRENCY = 1_000_000;

/** postgrey's defaults, which most greylisting set-ups follow. */
export const GREYLIST_DEFAULTS = Object.freeze({
    delayMs: 5 * MINUTE,
    retryWindowMs: 2 * DAY,
    expireMs: 35 * DAY,
    autoAllowAfter: 5,
});

/** One part of a limit's key. */
export type KeyPart =
    | { readonly kind: 'global' }
    | { readonly kind: 'ip'; readonly fact: string; readonly v4: number; readonly v6: number }
    | {
          readonly kind: 'fact';
          readonly fact: string;
          readonly type: FactType;
          /** For address facts: the characters that start a subaddress, folded out of the key. */
          readonly delimiter?: string;
      };

/** A validated `limits:` entry. */
export interface LimitSpec {
    readonly id: string;
    readonly description: string | null;
    readonly file: string;
    readonly line: number;
    /** Where it is counted: connect (per connection, concurrency), mail, rcpt or data. */
    readonly stage: Stage;
    /** null for a concurrency limit. */
    readonly per: LimitPer | null;
    readonly key: readonly KeyPart[];
    /** The key as written (`client.ip/24`, `auth.user + client.ip`), for messages. */
    readonly keyText: string;
    /** Rate windows in units (bytes, or KB when `unit` is 1024); null for a concurrency limit. */
    readonly windows: readonly Window[] | null;
    /** Bytes per unit of a byte rate: 1, or 1024 when exact bytes would overflow the arithmetic. */
    readonly unit: number;
    /** The rates as written (`100/1h`), for messages. */
    readonly rateText: string | null;
    /** Most simultaneous connections; null for a rate limit. */
    readonly concurrency: number | null;
    readonly mode: RuleMode;
    readonly onError: OnError;
    readonly when: Condition;
}

/** A validated `greylist:` entry. */
export interface GreylistSpec {
    readonly id: string;
    readonly description: string | null;
    readonly file: string;
    readonly line: number;
    readonly when: Condition;
    readonly delayMs: number;
    readonly retryWindowMs: number;
    /** How long a passed triplet and a client's pass count live after their last use. */
    readonly expireMs: number;
    /** Passes after which the client's network is no longer greylisted (0: never). */
    readonly autoAllowAfter: number;
    readonly mode: RuleMode;
    readonly onError: OnError;
}

/** What the loader lends the readers below. */
export interface DeclarationContext {
    readonly reader: SourceReader;
    readonly file: string;
    readonly facts: ReadonlyMap<string, FactSpec>;
    /** Characters that start a subaddress ('' for none): address key parts count the base address. */
    readonly recipientDelimiter: string;
    line(offset: number): number;
    /** Reads and registers an entry id (kebab-case, unique with rule ids); null when reported. */
    claimId(item: Field, idField: Field | undefined, example: string): string | null;
    /** Compiles a `when:` at `stage`; null when reported. */
    compileWhen(
        field: Field | undefined,
        fallback: number,
        stage: Stage,
        factProblem: (spec: FactSpec) => string | null,
    ): Condition | null;
}

/**
 * Why a limit or greylisting entry evaluated at `stage` cannot read a fact, or null. `what`
 * names it in messages ("this limit (per message)", "greylisting").
 */
export function factProblemAt(stage: Stage, what: string): (spec: FactSpec) => string | null {
    return (spec) => {
        if (spec.check === 'ratelimit') {
            return `fact "${spec.name}" is reported by the rate limits and greylisting themselves, so ${what} cannot use it`;
        }
        if (stageIndex(spec.stage) > stageIndex(stage)) {
            return `fact "${spec.name}" is not known until the ${spec.stage} stage, and ${what} runs at the ${stage} stage`;
        }
        if (spec.check !== undefined && spec.stage === stage) {
            return `fact "${spec.name}" is reported by the ${spec.check} check, which runs alongside ${what} at the ${stage} stage, so it cannot be used here`;
        }
        return null;
    };
}

/** Parses one rate, `COUNT/PERIOD` (`100/1h`, `20/m`; for bytes `200MB/1h`). */
export function parseRate(text: string, bytes: boolean): { limit: number; periodMs: number } | { error: string } {
    const form = bytes ? 'a size per period such as 200MB/1h' : 'a count per period such as 100/1h or 20/1m';
    const parts = text.split('/');
    if (parts.length !== 2) return { error: `"${text}" is not a rate; write ${form}` };
    const count = parts[0]!.trim();
    const period = parts[1]!.trim();
    let limit: number | null;
    if (bytes) {
        limit = parseSize(count);
        if (limit === null || limit < 1)
            return { error: `"${text}": the amount must be a size such as 500KB or 200MB` };
    } else {
        limit = /^\d+$/.test(count) ? Number(count) : null;
        if (limit === null || !Number.isSafeInteger(limit) || limit < 1)
            return { error: `"${text}": the count must be a whole number of 1 or more; write ${form}` };
    }
    const periodMs = /^(s|m|h|d)$/.test(period) ? parseDuration(`1${period}`) : parseDuration(period);
    if (periodMs === null) return { error: `"${text}": the period must be a duration such as 30s, 10m, 1h or 1d` };
    if (periodMs < SECOND || periodMs > MAX_PERIOD_MS) return { error: `"${text}": the period must be 1s to 366d` };
    return { limit, periodMs };
}

function rateLabel(limit: number, periodMs: number, bytes: boolean): string {
    return `${bytes ? formatSize(limit) : String(limit)}/${formatDuration(periodMs)}`;
}

/** The prefix lengths a network part counts by: the text is fixed at load, for clients of either family. */
function prefixes(p: KeyPart & { kind: 'ip' }): string {
    return `/${p.v4} or IPv6 /${p.v6}`;
}

/** For an address key, the IPv6 network it counts by when that is not one address: " (or IPv6 /64)". */
function v6Network(p: KeyPart & { kind: 'ip' }): string {
    return p.v6 >= 128 ? '' : ` (or IPv6 /${p.v6})`;
}

/** The phrase a refusal uses for whose traffic a key counts. */
function whose(key: readonly KeyPart[]): string {
    const one = (p: KeyPart): string => {
        if (p.kind === 'global') return 'for this server in total';
        if (p.kind === 'ip')
            return p.v4 >= 32 ? `from your IP address${v6Network(p)}` : `from your network (${prefixes(p)})`;
        switch (p.fact) {
            case 'auth.user':
                return 'for your login';
            case 'mail.from':
                return 'from this sender address';
            case 'mail.from.domain':
                return 'from this sender domain';
            case 'rcpt.to':
            case 'rcpt.address':
                return 'to this recipient';
            case 'rcpt.domain':
                return 'to this recipient domain';
            case 'helo':
                return 'from this HELO name';
            case 'header.from':
                return 'from this author address';
            case 'header.from.domain':
                return 'from this author domain';
            default:
                return `for this ${p.fact}`;
        }
    };
    // A network right after a sending identity says where that identity is counted: "from this
    // sender address on your network (/24 or IPv6 /64)"; other parts are joined with "and".
    const sender = (p: KeyPart | undefined): boolean =>
        p?.kind === 'fact' &&
        ['mail.from', 'mail.from.domain', 'helo', 'auth.user', 'header.from', 'header.from.domain'].includes(p.fact);
    const where = (p: KeyPart & { kind: 'ip' }): string =>
        p.v4 >= 32 ? `at your IP address${v6Network(p)}` : `on your network (${prefixes(p)})`;
    return key
        .map((p, i) => (i === 0 ? one(p) : p.kind === 'ip' && sender(key[i - 1]) ? where(p) : `and ${one(p)}`))
        .join(' ');
}

function template(text: string): Template {
    const t = parseTemplate(text);
    if ('error' in t) throw new Error(`internal reply template: ${t.error}`);
    return t;
}

/** A reply of the table (reply.ts) as a rule reply, its placeholders filled in from the facts. */
function ruleReply(situation: Situation, detail: ReplyDetail): RuleReplySpec {
    const r = replyFor(situation, detail);
    return { code: r.code, enhanced: r.enhanced, text: template(r.text) };
}

/** A condition: the list fact `fact` holds `value`. */
function listHolds(fact: string, value: string): Condition {
    const test = (facts: Facts): boolean => {
        const v = facts[fact];
        return Array.isArray(v) && v.includes(value);
    };
    return {
        test,
        explain(facts) {
            const ok = test(facts);
            return {
                ok,
                text: `${fact} = ${showValue(facts[fact])} (${ok ? 'holds' : 'does not hold'} "${value}") ${ok ? '✓' : '✗'}`,
            };
        },
    };
}

/** A condition: the string fact `fact` is one of `values`. */
function isOneOf(fact: string, values: readonly string[]): Condition {
    const test = (facts: Facts): boolean => {
        const v = facts[fact];
        return typeof v === 'string' && values.includes(v);
    };
    const shown = values.length === 1 ? `"${values[0]}"` : `one of ${values.join(', ')}`;
    return {
        test,
        explain(facts) {
            const ok = test(facts);
            return {
                ok,
                text: `${fact} = ${showValue(facts[fact])} (${ok ? 'is' : 'is not'} ${shown}) ${ok ? '✓' : '✗'}`,
            };
        },
    };
}

/** The size in bytes of the smallest window of a byte rate: a message above it can never fit. */
export function byteCeiling(spec: LimitSpec): number {
    if (spec.per !== 'byte' || spec.windows === null) return Infinity;
    return Math.min(...spec.windows.map((w) => w.limit)) * spec.unit;
}

/** The rule a limit stands for: tempfail when the check reports its id. */
export function limitRule(spec: LimitSpec): Rule {
    const connection = spec.stage === 'connect';
    const detail: ReplyDetail = {
        id: '',
        limitId: spec.id,
        limitKind: spec.concurrency !== null ? 'concurrency' : (spec.per ?? 'message'),
        whose: whose(spec.key),
        rate: spec.rateText ?? '',
        retry: '{ratelimit.retry_after}',
    };
    const reply = ruleReply(connection ? 'connection-limit-exceeded' : 'limit-exceeded', detail);
    const failed = ruleReply(connection ? 'connection-limit-failed' : 'limit-failed', detail);
    const ceiling = byteCeiling(spec);
    const tooBig: RuleReplySpec | null = ceiling === Infinity ? null : ruleReply('limit-message-too-big', detail);
    const enforce = spec.mode === 'enforce';
    const when = enforce
        ? spec.onError === 'tempfail'
            ? anyOf([listHolds('ratelimit.exceeded', spec.id), listHolds('ratelimit.error', spec.id)])
            : listHolds('ratelimit.exceeded', spec.id)
        : listHolds('ratelimit.monitor', spec.id);
    const kind =
        spec.concurrency !== null
            ? `at most ${spec.concurrency} connections at once`
            : `${spec.rateText} per ${spec.per}`;
    return {
        id: spec.id,
        description: spec.description ?? `Limit: ${kind} by ${spec.keyText}`,
        file: spec.file,
        line: spec.line,
        stage: spec.stage,
        action: 'tempfail',
        mode: spec.mode,
        score: 0,
        when,
        reply,
        headers: [],
        implicit: 'limit',
        pickReply(facts) {
            const errors = facts['ratelimit.error'];
            const exceeded = facts['ratelimit.exceeded'];
            const inError = Array.isArray(errors) && errors.includes(spec.id);
            if (inError && !(Array.isArray(exceeded) && exceeded.includes(spec.id))) return failed;
            const size = facts['message.size'];
            if (tooBig && typeof size === 'number' && size > ceiling) return tooBig;
            return null;
        },
    };
}

/**
 * The rule a greylisting entry stands for: tempfail a new or early triplet. A capped one (new,
 * not recorded) is let through: its retry could never pass, and any MTA that retries gets past
 * greylisting anyway, so deferring it gains nothing and could block a neighbour for good.
 */
export function greylistRule(spec: GreylistSpec): Rule {
    const refused =
        spec.mode === 'enforce' && spec.onError === 'tempfail' ? ['new', 'early', 'error'] : ['new', 'early'];
    const failed = ruleReply('greylist-failed', { id: '' });
    return {
        id: spec.id,
        description:
            spec.description ??
            `Greylisting: a new sender, recipient and client network waits ${formatDuration(spec.delayMs)}`,
        file: spec.file,
        line: spec.line,
        stage: 'rcpt',
        action: 'tempfail',
        mode: spec.mode,
        score: 0,
        when: allOf([isOneOf('greylist.id', [spec.id]), isOneOf('greylist.result', refused)], false),
        reply: ruleReply('greylisted', { id: '', retry: '{greylist.retry_after}' }),
        headers: [],
        implicit: 'greylist',
        pickReply: (facts) => (facts['greylist.result'] === 'error' ? failed : null),
    };
}

function readMode(
    ctx: DeclarationContext,
    keys: Map<string, Field>,
): { mode: RuleMode | null; onError: OnError | null } {
    const modeField = keys.get('mode');
    const onErrorField = keys.get('onError');
    return {
        mode: modeField ? ctx.reader.oneOf(modeField, ['enforce', 'monitor'] as const) : 'enforce',
        onError: onErrorField ? ctx.reader.oneOf(onErrorField, ON_ERRORS) : 'allow',
    };
}

function readDescription(ctx: DeclarationContext, keys: Map<string, Field>): string | null {
    const field = keys.get('description');
    return field && !ctx.reader.isEmpty(field) ? ctx.reader.string(field, 'a description') : null;
}

/** Strings of a field holding one string or a list of strings. */
function stringsOf(ctx: DeclarationContext, field: Field, what: string): { text: string; field: Field }[] | null {
    const r = ctx.reader;
    if (!r.isList(field)) {
        const text = r.string(field, what);
        return text === null ? null : [{ text, field }];
    }
    const items = r.list(field, what);
    if (items === null) return null;
    if (items.length === 0) {
        r.fail(field, `expected ${what}; got an empty list`);
        return null;
    }
    const out: { text: string; field: Field }[] = [];
    for (const item of items) {
        const text = r.string(item, what);
        if (text === null) return null;
        out.push({ text, field: item });
    }
    return out;
}

/** Reads a `key:` value: one key part or a list of them. */
function readKey(
    ctx: DeclarationContext,
    field: Field,
    stage: Stage,
    what: string,
    v6: number,
): { parts: KeyPart[]; text: string } | null {
    const items = stringsOf(ctx, field, 'a key (a fact name, client.ip/N or global)');
    if (items === null) return null;
    const problem = factProblemAt(stage, what);
    const parts: KeyPart[] = [];
    const seen = new Set<string>();
    let bad = false;
    for (const { text, field: at } of items) {
        if (seen.has(text)) {
            ctx.reader.fail(at, `"${text}" is given twice`);
            bad = true;
            continue;
        }
        seen.add(text);
        if (text === GLOBAL_KEY) {
            if (items.length > 1) {
                ctx.reader.fail(at, 'global counts all traffic together, so it cannot be combined with other keys');
                bad = true;
            } else parts.push({ kind: 'global' });
            continue;
        }
        const slash = text.indexOf('/');
        const name = slash < 0 ? text : text.slice(0, slash);
        const spec = ctx.facts.get(name);
        if (spec === undefined) {
            const hint = didYouMean(name, [...ctx.facts.keys(), GLOBAL_KEY]);
            ctx.reader.fail(at, `unknown fact "${name}"${hint}`);
            bad = true;
            continue;
        }
        const p = problem(spec);
        if (p !== null) {
            ctx.reader.fail(at, p);
            bad = true;
            continue;
        }
        if (spec.type === 'ip') {
            let v4 = 32;
            if (slash >= 0) {
                const n = text.slice(slash + 1);
                v4 = /^\d{1,2}$/.test(n) ? Number(n) : -1;
                if (v4 < 1 || v4 > 32) {
                    ctx.reader.fail(
                        at,
                        `"${text}": the prefix after / is an IPv4 prefix length from 1 to 32 (IPv6 clients are counted per /${DEFAULT_IPV6_PREFIX}, or per ipv6Prefix)`,
                    );
                    bad = true;
                    continue;
                }
            }
            parts.push({ kind: 'ip', fact: name, v4, v6 });
            continue;
        }
        if (slash >= 0) {
            ctx.reader.fail(at, `"${text}": only an IP address fact (client.ip) takes a prefix length`);
            bad = true;
            continue;
        }
        const address = spec.type === 'address' || spec.type === 'address[]';
        parts.push({
            kind: 'fact',
            fact: name,
            type: spec.type,
            ...(address ? { delimiter: ctx.recipientDelimiter } : {}),
        });
    }
    if (bad) return null;
    return { parts, text: items.map((i) => i.text).join(' + ') };
}

/** Reads `rate:` (one rate or a list of them) into windows. */
function readRates(
    ctx: DeclarationContext,
    field: Field,
    bytes: boolean,
): { windows: Window[]; unit: number; text: string } | null {
    const r = ctx.reader;
    const what = bytes ? 'a rate such as 200MB/1h' : 'a rate such as 100/1h';
    const items = stringsOf(ctx, field, what);
    if (items === null) return null;
    const windows: { limit: number; periodMs: number; field: Field; text: string }[] = [];
    let bad = false;
    for (const { text, field: at } of items) {
        const parsed = parseRate(text, bytes);
        if ('error' in parsed) {
            r.fail(at, parsed.error);
            bad = true;
            continue;
        }
        const twin = windows.find((w) => w.periodMs === parsed.periodMs);
        if (twin !== undefined) {
            r.fail(at, `"${text}": a rate per ${formatDuration(parsed.periodMs)} is already given ("${twin.text}")`);
            bad = true;
            continue;
        }
        windows.push({ ...parsed, field: at, text });
    }
    if (bad) return null;
    // Exact GCRA arithmetic needs limit × period within 2^52; byte rates fall back to KB units.
    const fits = (unit: number): boolean =>
        windows.every((w) => Math.floor(w.limit / unit) >= 1 && Math.floor(w.limit / unit) * w.periodMs <= MAX_PRODUCT);
    const unit = fits(1) ? 1 : bytes && fits(1024) ? 1024 : 0;
    if (unit === 0) {
        const worst = windows.find((w) => w.limit * w.periodMs > MAX_PRODUCT) ?? windows[0]!;
        r.fail(
            worst.field,
            `"${worst.text}" is too large to count exactly (amount × period in milliseconds must stay within 2^52); use a shorter period`,
        );
        return null;
    }
    return {
        windows: windows.map((w) => ({ limit: Math.floor(w.limit / unit), periodMs: w.periodMs })),
        unit,
        text: windows.map((w) => rateLabel(w.limit, w.periodMs, bytes)).join(', '),
    };
}

/** The `limit` label under which greylisting decisions are counted. */
export const GREYLIST_LABEL = 'greylist';

/** Reads one `limits:` entry; null when it had problems (reported). */
export function readLimit(ctx: DeclarationContext, item: Field): LimitSpec | null {
    const r = ctx.reader;
    const keys = r.map(item, LIMIT_KEYS);
    if (keys === null) return null;
    const before = r.issues.length;
    const id = ctx.claimId(item, keys.get('id'), 'sender-rate');
    if (id === GREYLIST_LABEL) {
        // greylisting is counted as ratelimit_decisions_total{limit="greylist"}; a limit of that name would mix in
        r.fail(
            keys.get('id') ?? item,
            `the limit id "${GREYLIST_LABEL}" is reserved for greylisting's metrics; choose another`,
        );
    }
    const description = readDescription(ctx, keys);
    const { mode, onError } = readMode(ctx, keys);
    const rateField = keys.get('rate');
    const concurrencyField = keys.get('concurrency');
    const perField = keys.get('per');
    const keyField = keys.get('key');

    let per: LimitPer | null = null;
    let concurrency: number | null = null;
    if (rateField !== undefined && concurrencyField !== undefined) {
        r.fail(concurrencyField, 'a limit has either rate (per period) or concurrency (at once), not both');
    } else if (rateField === undefined && concurrencyField === undefined) {
        r.fail(item, 'missing rate (e.g. rate: 100/1h) or concurrency (e.g. concurrency: 10)');
    }
    if (concurrencyField !== undefined) {
        concurrency = r.integer(concurrencyField, 1, MAX_CONCURRENCY, 'a number of simultaneous connections');
        if (perField !== undefined)
            r.fail(perField, 'concurrency limits count open connections; per applies to rates only');
    } else {
        per = perField ? r.oneOf(perField, LIMIT_PERS) : 'message';
    }
    const stage: Stage = concurrencyField !== undefined ? 'connect' : PER_STAGE[per ?? 'message'];
    const what = concurrencyField !== undefined ? 'this concurrency limit' : `this limit (per ${per ?? 'message'})`;

    const v6Field = keys.get('ipv6Prefix');
    const v6 = v6Field ? r.integer(v6Field, 1, 128, 'an IPv6 prefix length') : DEFAULT_IPV6_PREFIX;
    let key: { parts: KeyPart[]; text: string } | null = null;
    if (keyField === undefined)
        r.fail(item, 'missing key (what is counted: a fact such as mail.from, client.ip/24, or global)');
    else key = readKey(ctx, keyField, stage, what, v6 ?? DEFAULT_IPV6_PREFIX);
    if (v6Field !== undefined && key !== null && !key.parts.some((p) => p.kind === 'ip'))
        r.fail(v6Field, 'ipv6Prefix applies to a client.ip key');

    const rates =
        rateField !== undefined && concurrencyField === undefined && per !== null
            ? readRates(ctx, rateField, per === 'byte')
            : null;
    const when = ctx.compileWhen(keys.get('when'), item.offset, stage, factProblemAt(stage, what));

    if (r.issues.length > before || id === null || mode === null || onError === null || key === null || when === null)
        return null;
    if (concurrency === null && rates === null) return null;
    return {
        id,
        description,
        file: ctx.file,
        line: ctx.line(item.offset),
        stage,
        per,
        key: key.parts,
        keyText: key.text,
        windows: rates?.windows ?? null,
        unit: rates?.unit ?? 1,
        rateText: rates?.text ?? null,
        concurrency,
        mode,
        onError,
        when,
    };
}

/** Reads one `greylist:` entry; null when it had problems (reported). */
export function readGreylist(ctx: DeclarationContext, item: Field): GreylistSpec | null {
    const r = ctx.reader;
    const keys = r.map(item, GREYLIST_KEYS);
    if (keys === null) return null;
    const before = r.issues.length;
    const id = ctx.claimId(item, keys.get('id'), 'greylist');
    const description = readDescription(ctx, keys);
    const { mode, onError } = readMode(ctx, keys);
    const d = GREYLIST_DEFAULTS;
    const delayField = keys.get('delay');
    const windowField = keys.get('retryWindow');
    const expireField = keys.get('expire');
    const autoField = keys.get('autoAllowAfter');
    const delayMs = delayField ? r.duration(delayField, SECOND, DAY) : d.delayMs;
    const retryWindowMs = windowField ? r.duration(windowField, MINUTE, MAX_PERIOD_MS) : d.retryWindowMs;
    const expireMs = expireField ? r.duration(expireField, HOUR, MAX_PERIOD_MS) : d.expireMs;
    const autoAllowAfter = autoField
        ? r.integer(autoField, 0, 1000, 'a number of passes (0: never)')
        : d.autoAllowAfter;
    if (delayMs !== null && retryWindowMs !== null && retryWindowMs <= delayMs) {
        r.fail(
            windowField ?? delayField ?? item,
            `retryWindow (${formatDuration(retryWindowMs)}) must be longer than delay (${formatDuration(delayMs)}): a retry is only counted between the two`,
        );
    }
    const when = ctx.compileWhen(keys.get('when'), item.offset, 'rcpt', factProblemAt('rcpt', 'greylisting'));
    if (
        r.issues.length > before ||
        id === null ||
        mode === null ||
        onError === null ||
        delayMs === null ||
        retryWindowMs === null ||
        expireMs === null ||
        autoAllowAfter === null ||
        when === null
    )
        return null;
    return {
        id,
        description,
        file: ctx.file,
        line: ctx.line(item.offset),
        when,
        delayMs,
        retryWindowMs,
        expireMs,
        autoAllowAfter,
        mode,
        onError,
    };
}
