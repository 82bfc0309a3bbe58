/**
 * Reads a parsed YAML document into typed values while collecting positioned issues:
 * maps with a closed key set, lists, strings, numbers, booleans, enums, durations, sizes,
 * and `${VAR}` expansion of every string value. Maps and lists nested more than
 * MAX_YAML_NESTING deep are refused before the document is built. Generic: it must not know
 * the config's keys or defaults, and it never throws on bad input.
 * Positions are the operator's: a value reached through a YAML alias (`*name`) is reported where
 * the alias is written, with "(from &name at line N)", not inside its anchor; a byte-order mark
 * (U+FEFF) is left out of the text, so columns on line 1 are those an editor shows.
 */
import {
    isAlias,
    isMap,
    isScalar,
    isSeq,
    isNode,
    LineCounter,
    parseDocument,
    Parser,
    visit,
    type CST,
    type Document,
    type Node,
} from 'yaml';
import { expandEnv } from './env.ts';
import type { Issue } from './issues.ts';
import { redactUserinfo } from './redact.ts';
import { didYouMean } from './suggest.ts';
import { parseDuration, parseSize, formatDuration } from './units.ts';

/** A value found in the document, with what is needed to point at it. */
export interface Field {
    /** Dotted key path for messages, e.g. `listeners[1].port`. */
    readonly path: string;
    /** The value node; null when the key has no value at all (`key:`). */
    readonly node: Node | null;
    /** Source offset used when reporting on this field. */
    readonly offset: number;
    /** Source offset of the key, when the field is a map entry. */
    readonly keyOffset: number;
    /**
     * Set when the value is part of one reached through a YAML alias: the alias's offset, where
     * everything inside it is reported (`offset` and `keyOffset` are that offset too).
     */
    readonly aliasAt?: number;
}

/**
 * Maps and lists may be nested at most this deep. The YAML library builds a document by
 * recursion, so the depth it manages before running out of stack depends on how warmed up the
 * process is (measured: 1,000 levels refused by a fresh process, accepted by a reload later);
 * files nested deeper are refused before the document is built, so that `check`, start and
 * reload accept exactly the same files. Hand-written files need far fewer levels.
 */
export const MAX_YAML_NESTING = 64;

/**
 * Source offset of the first map or list nested more than MAX_YAML_NESTING deep (the top
 * level is 1), or -1; feeds `lines` with the text's lines. Walks the syntax tree with an
 * explicit stack: no recursion, whatever the depth.
 */
function tooDeeplyNested(text: string, lines: LineCounter): number {
    const pending: [CST.Token | null | undefined, number][] = [];
    for (const top of new Parser(lines.addNewLine).parse(text)) {
        pending.push([top, 0]);
        while (pending.length > 0) {
            const [token, depth] = pending.pop()!;
            if (!token) continue;
            if (token.type === 'document') pending.push([token.value, depth]);
            else if (token.type === 'block-map' || token.type === 'block-seq' || token.type === 'flow-collection') {
                if (depth >= MAX_YAML_NESTING) return token.offset;
                // pushed last to first, so that the first too-deep collection in the file is found first
                for (let i = token.items.length - 1; i >= 0; i--) {
                    const item: CST.CollectionItem = token.items[i]!;
                    pending.push([item.value, depth + 1], [item.key, depth + 1]);
                }
            }
        }
    }
    return -1;
}

export class SourceReader {
    readonly file: string;
    readonly text: string;
    readonly issues: Issue[] = [];
    /** Things that are valid but probably not what the operator wants (`mailwarden check` prints them). */
    readonly warnings: Issue[] = [];
    readonly doc: Document.Parsed;
    private readonly lines: LineCounter;
    private readonly expanded = new WeakSet<Node>();
    /** Values whose `${…}` could not be expanded: already reported, so not judged again. */
    private readonly broken = new WeakSet<Node>();
    /** "(from &name at line N)" by the offset of each alias: said of whatever is reported there. */
    private readonly aliasNotes = new Map<number, string>();

    constructor(file: string, text: string) {
        this.file = file;
        // a byte-order mark is no part of the YAML (YAML 1.2 section 5.2) and an editor shows none:
        // without it, offsets and columns are those of what the operator sees
        if (text.startsWith('\uFEFF')) text = text.slice(1);
        this.text = text;
        this.lines = new LineCounter();
        // this first pass also gives the line counter its lines
        const deep = tooDeeplyNested(text, this.lines);
        if (deep >= 0) {
            this.doc = parseDocument('');
            this.report(
                deep,
                `maps and lists nested more than ${MAX_YAML_NESTING} levels deep; write it with fewer levels`,
            );
            return;
        }
        this.doc = parseDocument(text, { prettyErrors: false, uniqueKeys: true });
        const lines = new Set<number>();
        for (const e of [...this.doc.errors, ...this.doc.warnings]) {
            // Once the parser has given up, every later token is "unexpected": report the cause only.
            if (lines.size > 0 && / in YAML stream/.test(e.message)) continue;
            const { line } = this.lines.linePos(e.pos[0]);
            if (lines.has(line)) continue;
            lines.add(line);
            this.report(e.pos[0], `YAML syntax: ${e.message}${this.syntaxHint(e.pos[0])}`);
        }
        this.noteAliases();
    }

    /**
     * Records, for each alias, the line of the anchor it stands for. The anchors are taken in
     * document order, so an alias names the last anchor of its name before it, as YAML says.
     */
    private noteAliases(): void {
        if (!this.text.includes('*')) return;
        const anchors = new Map<string, Node>();
        visit(this.doc, (_key, node) => {
            if (isAlias(node)) {
                const target = anchors.get(node.source);
                const at = node.range?.[0];
                if (target === undefined || at === undefined) return;
                // the anchor is written before its node (`&name {`, `&name\n  key:`)
                const start = target.range?.[0] ?? 0;
                const anchorAt = this.text.lastIndexOf(`&${node.source}`, start);
                const { line } = this.lines.linePos(anchorAt >= 0 ? anchorAt : start);
                this.aliasNotes.set(at, ` (from &${node.source} at line ${line})`);
            } else if (isNode(node) && node.anchor) {
                anchors.set(node.anchor, node);
            }
        });
    }

    /** Explains the two syntax errors config files meet most. */
    private syntaxHint(offset: number): string {
        if (this.text.startsWith('${', offset - 1) || this.text.startsWith('${', offset)) {
            return ' (inside { } or [ ], put values that contain ${…} in quotes)';
        }
        if (this.text.startsWith('::', offset)) return ' (put IPv6 addresses in quotes, e.g. "::")';
        return '';
    }

    /** Issues so far (syntax errors are reported by the constructor). */
    get failed(): boolean {
        return this.issues.length > 0;
    }

    report(offset: number, message: string): void {
        const { line, col } = this.lines.linePos(Math.max(0, Math.min(offset, this.text.length)));
        this.issues.push({ file: this.file, line, col, message: `${message}${this.aliasNotes.get(offset) ?? ''}` });
    }

    /** Records a warning at the field's key (the config stays valid). */
    warn(field: Field, message: string): void {
        const { line, col } = this.lines.linePos(Math.max(0, Math.min(field.keyOffset, this.text.length)));
        const note = this.aliasNotes.get(field.keyOffset) ?? '';
        this.warnings.push({ file: this.file, line, col, message: `${field.path}: ${message}${note}` });
    }

    /** The offset of the alias `field`'s value was reached through (its own or an enclosing one), if any. */
    aliasAt(field: Field): number | undefined {
        return field.aliasAt ?? (field.node !== null && isAlias(field.node) ? field.offset : undefined);
    }

    /** Where to report on a part of `field`'s value written at `offset`: there, or at the alias it came through. */
    offsetIn(field: Field, offset: number): number {
        return this.aliasAt(field) ?? offset;
    }

    /**
     * A part of `field`'s value (a map entry, a list item) as a field, at `offset` and `keyOffset`
     * where it is written; when the value came through an alias, at the alias.
     */
    part(field: Field, path: string, node: Node | null, offset: number, keyOffset: number): Field {
        const via = this.aliasAt(field);
        return via === undefined
            ? { path, node, offset, keyOffset }
            : { path, node, offset: via, keyOffset: via, aliasAt: via };
    }

    fail(field: Field, message: string): void {
        if (field.node !== null && this.broken.has(field.node)) return;
        this.report(field.offset, field.path === '' ? message : `${field.path}: ${message}`);
    }

    /** The document's top-level value as a field. */
    root(): Field {
        const node = (this.doc.contents as Node | null) ?? null;
        const offset = node?.range?.[0] ?? 0;
        return { path: '', node, offset, keyOffset: offset };
    }

    /** Replaces `${VAR}` / `${VAR:-default}` in every string value (map keys stay as written). */
    expandEnvironment(env: Readonly<Record<string, string | undefined>>): void {
        visit(this.doc, {
            Scalar: (key, node) => {
                if (key === 'key' || typeof node.value !== 'string') return;
                const result = expandEnv(node.value, env);
                for (const p of result.problems) {
                    this.report(this.offsetInScalar(node, p.index, p.reference), p.message);
                }
                if (result.problems.length > 0) this.broken.add(node);
                if (result.expanded || result.value !== node.value) {
                    node.value = result.value;
                    if (result.expanded) this.expanded.add(node);
                }
            },
        });
    }

    /** Best source offset of `reference`, found at `index` of a scalar's value. */
    private offsetInScalar(node: Node, index: number, reference: string): number {
        const [start, end] = node.range ?? [0, 0];
        const quoted = isScalar(node) && (node.type === 'QUOTE_DOUBLE' || node.type === 'QUOTE_SINGLE') ? 1 : 0;
        const direct = start + quoted + index;
        if (this.text.startsWith(reference, direct)) return direct;
        const found = this.text.indexOf(reference, start);
        return found >= 0 && found < end ? found : start;
    }

    /** Follows YAML aliases (`*name`). */
    private deref(field: Field): Node | null {
        let node = field.node;
        if (node !== null && isAlias(node)) {
            const target = node.resolve(this.doc);
            if (target === undefined) {
                if (!this.broken.has(node)) {
                    this.fail(field, `unknown alias *${node.source}`);
                    this.broken.add(node);
                }
                return null;
            }
            node = target;
        }
        return node;
    }

    /** True when the key is absent or written without a value (`key:`, `key: null`, `key: ~`). */
    isEmpty(field: Field | undefined): boolean {
        if (field === undefined) return true;
        const node = this.deref(field);
        return node === null || (isScalar(node) && node.value === null);
    }

    /** A human description of what a node holds, for "expected X, got Y" messages. */
    describe(field: Field): string {
        const node = this.deref(field);
        if (node === null) return 'nothing';
        if (isMap(node)) return 'a map';
        if (isSeq(node)) return 'a list';
        if (isScalar(node)) {
            const v = node.value;
            if (v === null) return 'nothing';
            // a URL's user and password are never repeated (`expected a map; got "redis://***@host"`)
            if (typeof v === 'string') return `"${redactUserinfo(v)}"`;
            if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return String(v);
        }
        return 'an unsupported value';
    }

    private scalar(field: Field): unknown {
        const node = this.deref(field);
        return node !== null && isScalar(node) ? node.value : undefined;
    }

    private wasExpanded(field: Field): boolean {
        const node = this.deref(field);
        return node !== null && this.expanded.has(node);
    }

    /**
     * A map whose keys must all be among `keys`. Returns the present entries by key (unknown
     * keys reported with a suggestion), or null (reported) when the value is not a map.
     * `elsewhere` names, for keys that belong one level down, where they go (`maxMessageSize`
     * → `listeners[]`): the suggestion then points there.
     */
    map(
        field: Field,
        keys: readonly string[],
        elsewhere: Readonly<Record<string, string>> = {},
    ): Map<string, Field> | null {
        const node = this.deref(field);
        if (node === null || !isMap(node)) {
            const shown = keys.length > 4 ? [...keys.slice(0, 3), '…'] : keys;
            this.fail(field, `expected a map (${shown.join(', ')}); got ${this.describe(field)}`);
            return null;
        }
        const out = new Map<string, Field>();
        for (const pair of node.items) {
            const keyNode = pair.key as Node | null;
            const keyOffset = this.offsetIn(field, keyNode?.range?.[0] ?? node.range?.[0] ?? 0);
            const keyValue = keyNode !== null && isScalar(keyNode) ? keyNode.value : undefined;
            if (typeof keyValue !== 'string') {
                this.report(keyOffset, `${field.path ? `${field.path}: ` : ''}keys must be plain words`);
                continue;
            }
            if (!keys.includes(keyValue)) {
                const where = field.path ? ` in ${field.path}` : '';
                const parent = Object.hasOwn(elsewhere, keyValue) ? elsewhere[keyValue] : undefined;
                const hint =
                    parent === undefined
                        ? didYouMean(keyValue, keys)
                        : ` (did you mean "${parent}.${keyValue}"? it is set on each entry of ${parent.replace(/\[\]$/, '')})`;
                this.report(keyOffset, `unknown key "${keyValue}"${where}${hint}`);
                continue;
            }
            const valueNode = (pair.value as Node | null) ?? null;
            const path = field.path ? `${field.path}.${keyValue}` : keyValue;
            out.set(keyValue, this.part(field, path, valueNode, valueNode?.range?.[0] ?? keyOffset, keyOffset));
        }
        return out;
    }

    /** A list; returns its items as fields, or null (reported) when the value is not a list. */
    list(field: Field, what: string): Field[] | null {
        const node = this.deref(field);
        if (node === null || !isSeq(node)) {
            this.fail(field, `expected a list of ${what}; got ${this.describe(field)}`);
            return null;
        }
        return node.items.map((item, i) => {
            const n = (item as Node | null) ?? null;
            const offset = n?.range?.[0] ?? node.range?.[0] ?? 0;
            return this.part(field, `${field.path}[${i}]`, n, offset, offset);
        });
    }

    /** True when the value is a map (after aliases). */
    isMap(field: Field): boolean {
        const node = this.deref(field);
        return node !== null && isMap(node);
    }

    /** True when the value is a list (after aliases). */
    isList(field: Field): boolean {
        const node = this.deref(field);
        return node !== null && isSeq(node);
    }

    /** True when the value is the plain word `word` (as written or from a `${VAR}`). */
    isWord(field: Field, word: string): boolean {
        const v = this.scalar(field);
        return typeof v === 'string' && v.trim() === word;
    }

    /** True when the value reads as `true` or `false` (see `boolean`). */
    isBoolean(field: Field): boolean {
        const v = this.scalar(field);
        return (
            typeof v === 'boolean' ||
            (typeof v === 'string' && this.wasExpanded(field) && /^(true|false)$/i.test(v.trim()))
        );
    }

    /** A non-empty string. */
    string(field: Field, what = 'a string'): string | null {
        const v = this.scalar(field);
        if (typeof v !== 'string') {
            this.fail(field, `expected ${what}; got ${this.describe(field)}`);
            return null;
        }
        if (v.trim() === '') {
            this.fail(field, `expected ${what}; got an empty string`);
            return null;
        }
        return v.trim();
    }

    /**
     * A password or other secret: a string, as string() reads it, but a wrong value is described by
     * its kind only (`got a number`), never repeated in the message.
     */
    secret(field: Field, what = 'a string'): string | null {
        const v = this.scalar(field);
        if (typeof v === 'string') return this.string(field, what);
        const node = this.deref(field);
        const kind =
            node === null || v === null
                ? 'nothing'
                : isMap(node)
                  ? 'a map'
                  : isSeq(node)
                    ? 'a list'
                    : typeof v === 'number' || typeof v === 'bigint'
                      ? 'a number (not shown; quote it to make it a string)'
                      : typeof v === 'boolean'
                        ? 'true or false (not shown; quote it to make it a string)'
                        : 'an unsupported value';
        this.fail(field, `expected ${what}; got ${kind}`);
        return null;
    }

    /** An integer between min and max. A `${VAR}` value is read as a number. */
    integer(field: Field, min: number, max: number, what = 'a whole number'): number | null {
        let v = this.scalar(field);
        if (typeof v === 'string' && this.wasExpanded(field) && /^[-+]?\d+$/.test(v.trim())) v = Number(v.trim());
        const range = max === Infinity ? `${min} or more` : `${min} to ${max}`;
        if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
            this.fail(field, `expected ${what} (${range}); got ${this.describe(field)}`);
            return null;
        }
        return v;
    }

    /** `true` or `false`. A `${VAR}` value may be written `true` or `false`. */
    boolean(field: Field): boolean | null {
        let v = this.scalar(field);
        if (typeof v === 'string' && this.wasExpanded(field) && /^(true|false)$/i.test(v.trim())) {
            v = v.trim().toLowerCase() === 'true';
        }
        if (typeof v !== 'boolean') {
            this.fail(field, `expected true or false; got ${this.describe(field)}`);
            return null;
        }
        return v;
    }

    /** One of a closed set of words. */
    oneOf<T extends string>(field: Field, values: readonly T[]): T | null {
        const v = this.scalar(field);
        if (typeof v === 'string' && (values as readonly string[]).includes(v.trim())) return v.trim() as T;
        const hint = typeof v === 'string' ? didYouMean(v, values) : '';
        this.fail(field, `expected one of ${values.join(', ')}; got ${this.describe(field)}${hint}`);
        return null;
    }

    /** A duration (`500ms`, `5s`, `10m`, `1h`, `2d`) in milliseconds, within bounds. */
    duration(field: Field, minMs: number, maxMs: number): number | null {
        const v = this.scalar(field);
        const ms = parseDuration(v);
        if (ms === null) {
            const hint = typeof v === 'number' ? ` (add a unit: ${v}s, ${v}ms, …)` : '';
            this.fail(
                field,
                `expected a duration such as 500ms, 5s, 10m, 1h or 2d; got ${this.describe(field)}${hint}`,
            );
            return null;
        }
        if (ms < minMs || ms > maxMs) {
            this.fail(field, `must be between ${formatDuration(minMs)} and ${formatDuration(maxMs)}`);
            return null;
        }
        return ms;
    }

    /** A size (`1234`, `512B`, `100KB`, `50MB`, `1GB`; KB = 1024 bytes) in bytes, at least `min`. */
    size(field: Field, min: number): number | null {
        const v = this.scalar(field);
        const bytes = parseSize(v);
        if (bytes === null) {
            this.fail(field, `expected a size such as 1048576, 512KB, 50MB or 1GB; got ${this.describe(field)}`);
            return null;
        }
        if (bytes < min) {
            this.fail(field, `must be at least ${min} bytes`);
            return null;
        }
        return bytes;
    }
}
