/**
 * Loads a rules folder: every `*.yaml` / `*.yml` file in name order (dot files ignored), the
 * list files they declare, their rules, limits and greylisting (with the rules those imply)
 * and their `cases:`. Everything is validated before anything is used, and every problem is
 * collected and reported as `FILE:LINE:COL: message` (a RuleError), so an operator fixes
 * all of them in one go and a reload that fails keeps the previous rules. The result is
 * deeply frozen. `loadRules` is the one verdict `serve`, reload and `check` share: problems
 * refuse the folder; `cases:` examples that do not hold are warnings and refuse nothing.
 * Nothing is dropped unseen: a folder without rule files, a rule file that declares nothing
 * (empty, or only comments) and a `*.yaml` name that cannot be read (a broken symbolic link)
 * are problems, not skipped.
 * It never throws: an unexpected exception refuses the file (or folder) it happened in as a
 * positioned issue. YAML aliases are refused inside `when:` and a case's `facts:`, so loading
 * costs time linear in what is written. Reads files only: it must not open sockets or start
 * timers, and evaluates nothing but the files' own cases.
 */
import fs from 'node:fs';
import path from 'node:path';
import { isAlias, isMap, isScalar, type Node } from 'yaml';
import { formatIssue, IssuesError, sortIssues, type Issue } from '../config/issues.ts';
import { SourceReader, type Field } from '../config/reader.ts';
import { DEFAULT_RECIPIENT_DELIMITER } from '../config/sections/submission-auth.ts';
import { didYouMean } from '../config/suggest.ts';
import type { Action, FactValue, SmtpReply, Stage } from '../types.ts';
import { caseIssue, runCases } from './cases.ts';
import {
    caseFactValue,
    compileWhen,
    refuseAliases,
    type CompileContext,
    type Condition,
    type DeclaredList,
} from './conditions.ts';
import { FACTS, STAGES, catalogueIndex, stageIndex, type FactSpec } from './facts.ts';
import {
    greylistRule,
    limitRule,
    readGreylist,
    readLimit,
    type DeclarationContext,
    type GreylistSpec,
    type LimitSpec,
} from './limits.ts';
import { LIST_TYPES, buildList, type ListType } from './lists.ts';
import { RegexArena } from './regex.ts';
import {
    makeRuleSet,
    type CaseExpectation,
    type ListInfo,
    type Rule,
    type RuleCase,
    type RuleMode,
    type RuleSet,
} from './ruleset.ts';
import { MAX_HEADER_VALUE, MAX_REPLY_TEXT, firstNonPrintable, parseTemplate, type Template } from './template.ts';

export const ACTIONS: readonly Action[] = Object.freeze(['accept', 'tag', 'quarantine', 'tempfail', 'reject']);
export const MODES: readonly RuleMode[] = Object.freeze(['enforce', 'monitor']);

const FILE_KEYS = ['rules', 'lists', 'limits', 'greylist', 'cases'] as const;
export const RULE_KEYS = ['id', 'description', 'stage', 'when', 'action', 'reply', 'score', 'headers', 'mode'] as const;
const LIST_KEYS = ['type', 'file'] as const;
const REPLY_KEYS = ['code', 'enhanced', 'text'] as const;
const CASE_KEYS = ['name', 'stage', 'facts', 'expect'] as const;
const EXPECT_KEYS = ['action', 'rule', 'score', 'rules', 'headers', 'reply', 'monitor'] as const;

/** Rule ids and list names: lower-case words joined by single hyphens. */
export const KEBAB = /^[a-z0-9]+(?:-[a-z0-9]+)*$/;
/** Header names a rule may add (RFC 5322 section 3.6.8 field names, restricted to X- names). */
export const HEADER_NAME = /^X-[A-Za-z0-9-]+$/;
/** Header fields the product itself writes; a rule adding them could forge a verdict or a hold. */
export const RESERVED_HEADERS: readonly string[] = Object.freeze([
    'X-Mailwarden-Verdict',
    'X-Mailwarden-Quarantine',
    'X-Spam-Flag',
]);
/** RFC 3463 section 2: class.subject.detail. */
const ENHANCED = /^[245]\.\d{1,3}\.\d{1,3}$/;

/** All the problems found in a rules folder. */
export class RuleError extends IssuesError {
    constructor(issues: readonly Issue[]) {
        super(issues, 'RuleError');
    }
}

export interface LoadOptions {
    /** Turn 5xx decisions into their 4xx equivalents (config `softReject`). */
    readonly softReject: boolean;
    /** The facts rules may read (default: the catalogue in facts.ts). */
    readonly knownFacts?: readonly FactSpec[];
    /**
     * Characters that start a subaddress (config `auth.recipientDelimiter`, default `+`; ''
     * for none): address facts match lists by their base address too, and limit keys count it.
     */
    readonly recipientDelimiter?: string;
}

interface ParsedFile {
    readonly file: string;
    readonly reader: SourceReader;
    readonly keys: Map<string, Field> | null;
    readonly lineStarts: number[];
}

interface Declaration extends DeclaredList {
    readonly file: string;
    readonly line: number;
    readonly listFile: string;
    readonly entries: number;
}

function lineStarts(text: string): number[] {
    const starts = [0];
    for (let i = text.indexOf('\n'); i >= 0; i = text.indexOf('\n', i + 1)) starts.push(i + 1);
    return starts;
}

function linePos(starts: readonly number[], offset: number): { line: number; col: number } {
    let a = 0;
    let b = starts.length - 1;
    while (a < b) {
        const mid = (a + b + 1) >> 1;
        if (starts[mid]! <= offset) a = mid;
        else b = mid - 1;
    }
    return { line: a + 1, col: offset - starts[a]! + 1 };
}

function deref(file: ParsedFile, node: unknown): Node | null {
    if (node === null || node === undefined) return null;
    if (isAlias(node)) return (node.resolve(file.reader.doc) as Node | undefined) ?? null;
    return node as Node;
}

/** Where a path really is (symlinks resolved), or null when it is not there. */
function realPath(file: string): string | null {
    try {
        return fs.realpathSync(file);
    } catch {
        return null;
    }
}

function describeError(err: unknown): string {
    const code = (err as { code?: string } | null)?.code;
    if (code === 'ENOENT') return 'no such file or folder';
    if (code === 'EACCES') return 'permission denied';
    if (code === 'EISDIR') return 'it is a folder';
    if (code === 'ENOTDIR') return 'not a folder';
    return err instanceof Error ? err.message : String(err);
}

/** Why a rule file's name leads nowhere: the error, and for a symbolic link where it points. */
function unreachable(file: string, err: unknown): string {
    try {
        if (fs.lstatSync(file).isSymbolicLink()) {
            return `${describeError(err)} (a symbolic link to ${fs.readlinkSync(file)})`;
        }
    } catch {
        // not even the name can be looked at: the error says why
    }
    return describeError(err);
}

/** Everything a load produced: the rule set, or the issues; and what to watch either way. */
export interface LoadResult {
    readonly ruleSet: RuleSet | null;
    readonly issues: readonly Issue[];
    /** With a rule set: the `cases:` examples that do not hold (severity `warning`); they refuse nothing. */
    readonly warnings: readonly Issue[];
    readonly watchDirs: readonly string[];
}

class Loader {
    readonly dir: string;
    readonly opts: LoadOptions;
    readonly facts: ReadonlyMap<string, FactSpec>;
    readonly issues: Issue[] = [];
    readonly files: ParsedFile[] = [];
    readonly lists = new Map<string, Declaration>();
    readonly rules: Rule[] = [];
    readonly ruleIds = new Map<string, { file: string; line: number }>();
    readonly cases: RuleCase[] = [];
    readonly limits: LimitSpec[] = [];
    readonly greylists: GreylistSpec[] = [];
    readonly watchDirs = new Set<string>();
    readonly arena = new RegexArena();
    /** Rule ids named by cases, checked once every rule is known. */
    readonly idRefs: { file: ParsedFile; offset: number; id: string }[] = [];

    constructor(dir: string, opts: LoadOptions) {
        this.dir = dir;
        this.opts = opts;
        this.facts = catalogueIndex(opts.knownFacts ?? FACTS);
        this.watchDirs.add(path.resolve(dir));
        this.watchDirs.add(path.resolve(dir, 'lists'));
    }

    report(file: ParsedFile, offset: number, message: string): void {
        file.reader.report(offset, message);
    }

    position(file: ParsedFile, offset: number): { line: number; col: number } {
        return linePos(file.lineStarts, Math.max(0, Math.min(offset, file.reader.text.length)));
    }

    run(): LoadResult {
        let entries: string[];
        try {
            entries = fs
                .readdirSync(this.dir)
                .filter((n) => /\.ya?ml$/.test(n) && !n.startsWith('.'))
                .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
        } catch (err) {
            this.issues.push({
                file: this.dir,
                line: 1,
                col: 1,
                message: `cannot read the rules folder: ${describeError(err)}`,
            });
            return this.result();
        }
        const names: string[] = [];
        for (const name of entries) {
            const file = path.join(this.dir, name);
            try {
                if (fs.statSync(file).isFile()) names.push(name);
            } catch (err) {
                // a rule file that cannot be reached (a symbolic link whose target moved) is
                // refused like one that cannot be read: skipping it would drop its rules unseen
                this.issues.push({ file, line: 1, col: 1, message: `cannot read the file: ${unreachable(file, err)}` });
            }
        }
        if (names.length === 0 && this.issues.length === 0) {
            // an empty folder (a deploy that copied nothing, a stray rm) would accept every message
            this.issues.push({
                file: this.dir,
                line: 1,
                col: 1,
                message:
                    'the rules folder holds no rule files (*.yaml): every message would be accepted unchecked; copy the shipped rules into it, or write a file with "rules: []" to run without rules on purpose',
            });
            return this.result();
        }
        for (const name of names) this.parse(name);
        for (const f of this.files) this.guard(f, () => this.declareLists(f));
        for (const f of this.files) this.guard(f, () => this.readLimits(f));
        for (const f of this.files) this.guard(f, () => this.readRules(f));
        for (const f of this.files) this.guard(f, () => this.readCases(f));
        for (const ref of this.idRefs) {
            if (!this.ruleIds.has(ref.id)) {
                this.report(
                    ref.file,
                    ref.offset,
                    `no rule has the id "${ref.id}"${didYouMean(ref.id, [...this.ruleIds.keys()])}`,
                );
            }
        }
        for (const f of this.files) this.issues.push(...f.reader.issues);
        return this.result();
    }

    /**
     * Runs one step over a file. Bad input is reported, never thrown; should a step throw all
     * the same, the file is refused with that message instead of the load ending in a crash.
     */
    guard(f: ParsedFile, step: () => void): void {
        try {
            step();
        } catch (err) {
            this.issues.push({
                file: f.file,
                line: 1,
                col: 1,
                message: `cannot load this file: ${describeError(err)}`,
            });
        }
    }

    result(): LoadResult {
        const watchDirs = Object.freeze([...this.watchDirs]);
        if (this.issues.length > 0) return { ruleSet: null, issues: sortIssues(this.issues), warnings: [], watchDirs };
        const lists: ListInfo[] = [...this.lists.values()].map((d) => ({
            name: d.name,
            type: d.type,
            file: d.listFile,
            entries: d.entries,
        }));
        // The rules limits and greylisting stand for come first in their stage (RuleSet.limits).
        const implicit = [...this.limits.map(limitRule), ...this.greylists.map(greylistRule)];
        const ruleSet = makeRuleSet({
            dir: this.dir,
            softReject: this.opts.softReject,
            files: this.files.map((f) => f.file),
            rules: [...implicit, ...this.rules],
            lists,
            cases: this.cases,
            limits: this.limits,
            greylists: this.greylists,
            watchDirs,
        });
        return { ruleSet, issues: [], warnings: [], watchDirs };
    }

    parse(name: string): void {
        const file = path.join(this.dir, name);
        let text: string;
        try {
            text = fs.readFileSync(file, 'utf8');
        } catch (err) {
            this.issues.push({ file, line: 1, col: 1, message: `cannot read the file: ${describeError(err)}` });
            return;
        }
        const reader = new SourceReader(file, text);
        // the reader's text: without a byte-order mark, as its offsets count
        const parsed: ParsedFile = { file, reader, keys: null, lineStarts: lineStarts(reader.text) };
        if (reader.failed) {
            this.files.push(parsed);
            return;
        }
        const root = reader.root();
        if (reader.isEmpty(root)) {
            // an emptied file (a truncated copy, a stray `: > file`) would drop its rules unseen
            reader.report(
                0,
                'the rule file declares nothing (it is empty, or holds only comments): its rules would stop applying unseen; write "rules: []" to keep a file without rules on purpose',
            );
            this.files.push(parsed);
            return;
        }
        const keys = reader.map(root, FILE_KEYS);
        this.files.push({ ...parsed, keys });
    }

    declareLists(f: ParsedFile): void {
        const field = f.keys?.get('lists');
        if (field === undefined || f.reader.isEmpty(field)) return;
        const node = deref(f, field.node);
        if (node === null || !isMap(node)) {
            f.reader.fail(field, `expected a map of list names to { type, file }; got ${f.reader.describe(field)}`);
            return;
        }
        for (const pair of node.items) {
            const keyNode = deref(f, pair.key);
            const keyAt = f.reader.offsetIn(field, keyNode?.range?.[0] ?? field.offset);
            const name = keyNode !== null && isScalar(keyNode) ? keyNode.value : undefined;
            if (typeof name !== 'string' || !KEBAB.test(name)) {
                this.report(
                    f,
                    keyAt,
                    `list name ${JSON.stringify(name)} must be kebab-case (lower-case letters, digits and single hyphens)`,
                );
                continue;
            }
            // the value as written (an alias is followed by map(), which then reports at the alias)
            const valueNode = (pair.value as Node | null) ?? null;
            const decl = f.reader.part(field, `lists.${name}`, valueNode, valueNode?.range?.[0] ?? keyAt, keyAt);
            const keys = f.reader.map(decl, LIST_KEYS);
            if (keys === null) continue;
            const typeField = keys.get('type');
            const fileField = keys.get('file');
            if (typeField === undefined) f.reader.fail(decl, 'missing type (ip, domain, address or pattern)');
            if (fileField === undefined) f.reader.fail(decl, 'missing file (a path relative to the rules folder)');
            const type = typeField ? f.reader.oneOf(typeField, LIST_TYPES) : null;
            const listPath = fileField ? f.reader.string(fileField, 'a file path') : null;
            const here = this.position(f, keyAt);
            const earlier = this.lists.get(name);
            if (earlier !== undefined) {
                this.report(f, keyAt, `list "${name}" is already declared at ${earlier.file}:${earlier.line}`);
                continue;
            }
            if (type === null || listPath === null || fileField === undefined) {
                // Declared, so references to it are not reported as undeclared; its file is not read.
                this.lists.set(name, {
                    name,
                    type: type ?? 'pattern',
                    matcher: null,
                    file: f.file,
                    line: here.line,
                    listFile: '',
                    entries: 0,
                });
                continue;
            }
            const listFile = path.isAbsolute(listPath) ? listPath : path.join(this.dir, listPath);
            this.watchDirs.add(path.dirname(path.resolve(listFile)));
            // a list file that is a symlink: the folder of its target too, where a feed renames its new copy
            const real = realPath(listFile);
            if (real !== null) this.watchDirs.add(path.dirname(real));
            const loaded = this.loadList(f, fileField, type, listFile);
            this.lists.set(name, {
                name,
                type,
                matcher: loaded?.matcher ?? null,
                file: f.file,
                line: here.line,
                listFile,
                entries: loaded?.matcher.size ?? 0,
            });
        }
    }

    loadList(f: ParsedFile, at: Field, type: ListType, listFile: string): ReturnType<typeof buildList> | null {
        let text: string;
        try {
            text = fs.readFileSync(listFile, 'utf8');
        } catch (err) {
            f.reader.fail(at, `cannot read list file ${listFile}: ${describeError(err)}`);
            return null;
        }
        const built = buildList(type, text);
        for (const p of built.problems) this.issues.push({ file: listFile, line: p.line, col: 1, message: p.message });
        return built;
    }

    /** Validates a template's facts and literal text; returns it or null (reported). */
    template(f: ParsedFile, field: Field, stage: Stage, max: number, what: string): Template | null {
        const node = deref(f, field.node);
        const raw = node !== null && isScalar(node) ? node.value : undefined;
        const source = typeof raw === 'number' ? String(raw) : f.reader.string(field, what);
        if (source === null) return null;
        const start = this.textStart(f, field);
        // a place in the text, or the alias it came through
        const at = (index: number): number => f.reader.offsetIn(field, start + index);
        const parsed = parseTemplate(source);
        if ('error' in parsed) {
            this.report(f, at(parsed.offset), `${field.path}: ${parsed.error}`);
            return null;
        }
        let ok = true;
        const literal = parsed.parts.filter((p) => typeof p === 'string').join('');
        const bad = firstNonPrintable(literal);
        if (bad >= 0) {
            const c = literal.codePointAt(bad)!;
            this.report(
                f,
                field.offset,
                `${field.path}: only printable ASCII is allowed (found U+${c.toString(16).toUpperCase().padStart(4, '0')}); SMTP replies and header fields are ASCII (RFC 5321 section 4.2, RFC 5322 section 2.2)`,
            );
            ok = false;
        }
        if (literal.length > max) {
            this.report(f, field.offset, `${field.path}: at most ${max} characters (got ${literal.length})`);
            ok = false;
        }
        for (const p of parsed.parts) {
            if (typeof p === 'string') continue;
            const spec = this.facts.get(p.fact);
            if (spec === undefined) {
                this.report(
                    f,
                    at(p.offset),
                    `${field.path}: unknown fact "${p.fact}"${didYouMean(p.fact, [...this.facts.keys()])}`,
                );
                ok = false;
            } else if (stageIndex(spec.stage) > stageIndex(stage)) {
                this.report(
                    f,
                    at(p.offset),
                    `${field.path}: fact "${p.fact}" is not known until the ${spec.stage} stage, and this rule runs at the ${stage} stage`,
                );
                ok = false;
            }
        }
        return ok ? parsed : null;
    }

    /** Offset of the first character of a scalar's text (after an opening quote). */
    textStart(f: ParsedFile, field: Field): number {
        const node = deref(f, field.node);
        const start = node?.range?.[0] ?? field.offset;
        const quoted =
            node !== null && isScalar(node) && (node.type === 'QUOTE_DOUBLE' || node.type === 'QUOTE_SINGLE');
        return start + (quoted ? 1 : 0);
    }

    number(f: ParsedFile, field: Field, what: string): number | null {
        const node = deref(f, field.node);
        const v = node !== null && isScalar(node) ? node.value : undefined;
        if (typeof v !== 'number' || !Number.isFinite(v)) {
            f.reader.fail(field, `expected ${what}; got ${f.reader.describe(field)}`);
            return null;
        }
        return v;
    }

    readRules(f: ParsedFile): void {
        const field = f.keys?.get('rules');
        if (field === undefined || f.reader.isEmpty(field)) return;
        const items = f.reader.list(field, 'rules');
        if (items === null) return;
        for (const item of items) this.readRule(f, item);
    }

    readRule(f: ParsedFile, item: Field): void {
        const keys = f.reader.map(item, RULE_KEYS);
        if (keys === null) return;
        const issuesBefore = f.reader.issues.length;
        const get = (k: (typeof RULE_KEYS)[number]): Field | undefined => keys.get(k);
        const at = this.position(f, item.offset);

        const id = this.claimId(f, item, get('id'), 'dmarc-reject');
        const descField = get('description');
        const description =
            descField && !f.reader.isEmpty(descField) ? f.reader.string(descField, 'a description') : null;
        const stageField = get('stage');
        const stage: Stage | null = stageField ? f.reader.oneOf(stageField, STAGES) : 'data';
        const modeField = get('mode');
        const mode: RuleMode | null = modeField ? f.reader.oneOf(modeField, MODES) : 'enforce';
        const actionField = get('action');
        let action: Action | null = null;
        if (actionField === undefined) f.reader.fail(item, `missing action (${ACTIONS.join(', ')})`);
        else action = f.reader.oneOf(actionField, ACTIONS);
        if (action === 'quarantine' && stage !== null && stage !== 'data' && stageField) {
            f.reader.fail(
                stageField,
                'quarantine marks the message, so a quarantine rule runs at the data stage (stage: data)',
            );
        }

        const whenField = get('when');
        const when =
            stage === null
                ? null
                : compileWhen(
                      whenField === undefined ? undefined : whenField.node,
                      whenField?.offset ?? item.offset,
                      this.compileContext(f, stage, whenField ?? item),
                  );

        let score = 0;
        const scoreField = get('score');
        if (scoreField !== undefined) {
            if (action !== null && action !== 'tag') {
                f.reader.fail(scoreField, `only tag rules add to the score (this rule's action is ${action})`);
            } else {
                score = this.number(f, scoreField, 'a number (may be negative)') ?? 0;
            }
        }

        let reply: Rule['reply'] = null;
        const replyField = get('reply');
        if (replyField !== undefined && action !== null) {
            if (action !== 'reject' && action !== 'tempfail') {
                f.reader.fail(
                    replyField,
                    `only reject and tempfail rules send a reply (this rule's action is ${action})`,
                );
            } else if (stage !== null) {
                reply = this.reply(f, replyField, action, stage);
            }
        }

        const headers: { name: string; value: Template }[] = [];
        const headersField = get('headers');
        if (headersField !== undefined && action !== null) {
            if (action === 'reject' || action === 'tempfail') {
                f.reader.fail(
                    headersField,
                    `headers are added to forwarded messages; a ${action} rule forwards nothing`,
                );
            } else if (stage !== null) {
                this.headers(f, headersField, stage, headers);
            }
        }

        if (
            f.reader.issues.length > issuesBefore ||
            id === null ||
            stage === null ||
            mode === null ||
            action === null ||
            when === null
        ) {
            return;
        }
        this.rules.push({
            id,
            description,
            file: f.file,
            line: at.line,
            stage,
            action,
            mode,
            score,
            when,
            reply,
            headers,
        });
    }

    /**
     * Reads and registers the id of a rule, limit or greylisting entry: kebab-case and unique
     * across all three (limits and greylisting stand for rules of the same name). Null when reported.
     */
    claimId(f: ParsedFile, item: Field, idField: Field | undefined, example: string): string | null {
        if (idField === undefined) {
            f.reader.fail(item, `missing id (a kebab-case name such as ${example})`);
            return null;
        }
        const id = f.reader.string(idField, 'a rule id');
        if (id === null) return null;
        if (!KEBAB.test(id)) {
            f.reader.fail(
                idField,
                `"${id}" is not kebab-case (lower-case letters, digits and single hyphens, e.g. ${example})`,
            );
            return null;
        }
        const first = this.ruleIds.get(id);
        if (first) {
            f.reader.fail(idField, `duplicate rule id "${id}" (first defined at ${first.file}:${first.line})`);
            return null;
        }
        this.ruleIds.set(id, { file: f.file, line: this.position(f, idField.offset).line });
        return id;
    }

    /** The `limits:` and `greylist:` sections of a file. */
    readLimits(f: ParsedFile): void {
        const ctx: DeclarationContext = {
            reader: f.reader,
            file: f.file,
            facts: this.facts,
            recipientDelimiter: this.opts.recipientDelimiter ?? DEFAULT_RECIPIENT_DELIMITER,
            line: (offset) => this.position(f, offset).line,
            claimId: (item, idField, example) => this.claimId(f, item, idField, example),
            compileWhen: (field, fallback, stage, factProblem): Condition | null =>
                compileWhen(field === undefined ? undefined : field.node, field?.offset ?? fallback, {
                    ...this.compileContext(f, stage, field),
                    factProblem,
                }),
        };
        const limitsField = f.keys?.get('limits');
        if (limitsField !== undefined && !f.reader.isEmpty(limitsField)) {
            for (const item of f.reader.list(limitsField, 'limits') ?? []) {
                const spec = readLimit(ctx, item);
                if (spec !== null) this.limits.push(spec);
            }
        }
        const greylistField = f.keys?.get('greylist');
        if (greylistField !== undefined && !f.reader.isEmpty(greylistField)) {
            for (const item of f.reader.list(greylistField, 'greylisting entries') ?? []) {
                const spec = readGreylist(ctx, item);
                if (spec !== null) this.greylists.push(spec);
            }
        }
    }

    /** What compileWhen needs; `within`: the field of the condition, whose alias (if any) takes its reports. */
    compileContext(f: ParsedFile, stage: Stage, within?: Field): CompileContext {
        return {
            doc: f.reader.doc,
            report: (offset, message) => this.report(f, within ? f.reader.offsetIn(within, offset) : offset, message),
            facts: this.facts,
            stage,
            lists: this.lists,
            arena: this.arena,
            recipientDelimiter: this.opts.recipientDelimiter ?? DEFAULT_RECIPIENT_DELIMITER,
        };
    }

    reply(f: ParsedFile, field: Field, action: 'reject' | 'tempfail', stage: Stage): Rule['reply'] {
        const keys = f.reader.map(field, REPLY_KEYS);
        if (keys === null) return null;
        const codeField = keys.get('code');
        const textField = keys.get('text');
        const enhancedField = keys.get('enhanced');
        if (codeField === undefined)
            f.reader.fail(field, `missing code (${action === 'reject' ? '5xx, e.g. 550' : '4xx, e.g. 451'})`);
        if (textField === undefined)
            f.reader.fail(field, 'missing text (what happened, why, and what the sender can do)');
        const code = codeField
            ? action === 'reject'
                ? f.reader.integer(codeField, 500, 599, 'a 5xx reply code for reject')
                : f.reader.integer(codeField, 400, 499, 'a 4xx reply code for tempfail')
            : null;
        let enhanced: string | null = code === null ? null : `${String(code)[0]}.7.1`;
        if (enhancedField !== undefined) {
            const node = deref(f, enhancedField.node);
            const raw = node !== null && isScalar(node) ? node.value : undefined;
            const text = typeof raw === 'string' || typeof raw === 'number' ? String(raw) : null;
            if (text === null || !ENHANCED.test(text)) {
                f.reader.fail(
                    enhancedField,
                    `expected an enhanced status code such as 5.7.1 (RFC 3463: class.subject.detail); got ${f.reader.describe(enhancedField)}`,
                );
                enhanced = null;
            } else if (code !== null && text[0] !== String(code)[0]) {
                f.reader.fail(
                    enhancedField,
                    `the enhanced code's class ${text[0]} must match the reply code ${code} (RFC 3463 section 2)`,
                );
                enhanced = null;
            } else {
                enhanced = text;
            }
        }
        const text = textField ? this.template(f, textField, stage, MAX_REPLY_TEXT, 'the reply text') : null;
        if (code === null || enhanced === null || text === null) return null;
        return { code, enhanced, text };
    }

    headers(f: ParsedFile, field: Field, stage: Stage, out: { name: string; value: Template }[]): void {
        const node = deref(f, field.node);
        if (node === null || !isMap(node) || node.items.length === 0) {
            f.reader.fail(field, `expected a map of header names to values; got ${f.reader.describe(field)}`);
            return;
        }
        for (const pair of node.items) {
            const keyNode = deref(f, pair.key);
            const keyAt = f.reader.offsetIn(field, keyNode?.range?.[0] ?? field.offset);
            const name = keyNode !== null && isScalar(keyNode) ? keyNode.value : undefined;
            if (typeof name !== 'string' || !HEADER_NAME.test(name) || name.length > 76) {
                this.report(
                    f,
                    keyAt,
                    `headers: ${JSON.stringify(name)} is not an allowed header name (X- followed by letters, digits and hyphens, e.g. X-Spam-Reason)`,
                );
                continue;
            }
            const reserved = RESERVED_HEADERS.find((r) => r.toLowerCase() === name.toLowerCase());
            if (reserved) {
                this.report(
                    f,
                    keyAt,
                    `headers: ${reserved} is written by mailwarden itself and cannot be set by a rule`,
                );
                continue;
            }
            const valueNode = (pair.value as Node | null) ?? null;
            const valueField = f.reader.part(
                field,
                `headers.${name}`,
                valueNode,
                valueNode?.range?.[0] ?? keyAt,
                keyAt,
            );
            const value = this.template(f, valueField, stage, MAX_HEADER_VALUE, 'a header value');
            if (value !== null) out.push({ name, value });
        }
    }

    readCases(f: ParsedFile): void {
        const field = f.keys?.get('cases');
        if (field === undefined || f.reader.isEmpty(field)) return;
        const items = f.reader.list(field, 'cases');
        if (items === null) return;
        for (const item of items) this.readCase(f, item);
    }

    readCase(f: ParsedFile, item: Field): void {
        const keys = f.reader.map(item, CASE_KEYS);
        if (keys === null) return;
        const before = f.reader.issues.length;
        const nameField = keys.get('name');
        if (nameField === undefined) f.reader.fail(item, 'missing name (what the example shows)');
        const name = nameField ? f.reader.string(nameField, 'a case name') : null;
        const stageField = keys.get('stage');
        const stage: Stage | null = stageField ? f.reader.oneOf(stageField, STAGES) : 'data';
        const facts: Record<string, FactValue> = {};
        const factsField = keys.get('facts');
        if (factsField !== undefined && !f.reader.isEmpty(factsField)) this.caseFacts(f, factsField, stage, facts);
        const expectField = keys.get('expect');
        let expect: CaseExpectation | null = null;
        if (expectField === undefined) f.reader.fail(item, 'missing expect (at least { action: … })');
        else expect = this.expectation(f, expectField);
        if (f.reader.issues.length > before || name === null || stage === null || expect === null) return;
        const at = this.position(f, item.offset);
        this.cases.push({ file: f.file, line: at.line, col: at.col, name, stage, facts, expect });
    }

    caseFacts(f: ParsedFile, field: Field, stage: Stage | null, out: Record<string, FactValue>): void {
        // An alias would be expanded again at each use (and the YAML library throws past 100 of them).
        const report = (offset: number, message: string): void => this.report(f, offset, message);
        if (refuseAliases(field.node, report, 'facts', 'write the values out')) return;
        const node = deref(f, field.node);
        if (node === null || !isMap(node)) {
            f.reader.fail(field, `expected a map of fact names to values; got ${f.reader.describe(field)}`);
            return;
        }
        for (const pair of node.items) {
            const keyNode = deref(f, pair.key);
            const keyAt = keyNode?.range?.[0] ?? field.offset;
            const name = keyNode !== null && isScalar(keyNode) ? keyNode.value : undefined;
            const spec = typeof name === 'string' ? this.facts.get(name) : undefined;
            if (typeof name !== 'string' || spec === undefined) {
                this.report(
                    f,
                    keyAt,
                    `unknown fact "${String(name)}"${typeof name === 'string' ? didYouMean(name, [...this.facts.keys()]) : ''}`,
                );
                continue;
            }
            if (stage !== null && stageIndex(spec.stage) > stageIndex(stage)) {
                this.report(
                    f,
                    keyAt,
                    `fact "${name}" is not known until the ${spec.stage} stage, and this case runs at the ${stage} stage`,
                );
                continue;
            }
            const valueNode = deref(f, pair.value);
            let js: unknown;
            try {
                js = valueNode === null ? null : valueNode.toJS(f.reader.doc);
            } catch (err) {
                this.report(f, valueNode?.range?.[0] ?? keyAt, `facts.${name}: ${describeError(err)}`);
                continue;
            }
            const r = caseFactValue(spec, js);
            if ('error' in r) this.report(f, valueNode?.range?.[0] ?? keyAt, `facts.${name}: ${r.error}`);
            else out[name] = r.value;
        }
    }

    idList(f: ParsedFile, field: Field): string[] | null {
        const items = f.reader.list(field, 'rule ids');
        if (items === null) return null;
        const ids: string[] = [];
        for (const item of items) {
            const id = f.reader.string(item, 'a rule id');
            if (id === null) return null;
            this.idRefs.push({ file: f, offset: item.offset, id });
            ids.push(id);
        }
        return ids;
    }

    expectation(f: ParsedFile, field: Field): CaseExpectation | null {
        const keys = f.reader.map(field, EXPECT_KEYS);
        if (keys === null) return null;
        const before = f.reader.issues.length;
        const actionField = keys.get('action');
        if (actionField === undefined) f.reader.fail(field, `missing action (${ACTIONS.join(', ')})`);
        const action = actionField ? f.reader.oneOf(actionField, ACTIONS) : null;
        const out: { -readonly [K in keyof CaseExpectation]: CaseExpectation[K] } = { action: action ?? 'accept' };
        const ruleField = keys.get('rule');
        if (ruleField !== undefined) {
            if (f.reader.isEmpty(ruleField)) {
                out.rule = null;
            } else {
                const id = f.reader.string(ruleField, 'a rule id, or null for none');
                if (id !== null) {
                    this.idRefs.push({ file: f, offset: ruleField.offset, id });
                    out.rule = id;
                }
            }
        }
        const scoreField = keys.get('score');
        if (scoreField !== undefined) out.score = this.number(f, scoreField, 'a number') ?? 0;
        const rulesField = keys.get('rules');
        if (rulesField !== undefined) out.rules = this.idList(f, rulesField) ?? [];
        const monitorField = keys.get('monitor');
        if (monitorField !== undefined) out.monitor = this.idList(f, monitorField) ?? [];
        const headersField = keys.get('headers');
        if (headersField !== undefined) {
            const node = deref(f, headersField.node);
            if (node !== null && isMap(node)) {
                const headers: Record<string, string> = {};
                for (const pair of node.items) {
                    const k = deref(f, pair.key);
                    const v = deref(f, pair.value);
                    const name = k !== null && isScalar(k) ? k.value : undefined;
                    const value = v !== null && isScalar(v) ? v.value : undefined;
                    if (typeof name !== 'string' || (typeof value !== 'string' && typeof value !== 'number')) {
                        this.report(
                            f,
                            f.reader.offsetIn(headersField, k?.range?.[0] ?? headersField.offset),
                            'headers: expected header names mapped to text',
                        );
                        continue;
                    }
                    headers[name] = String(value);
                }
                out.headers = headers;
            } else if (f.reader.isEmpty(headersField)) {
                out.headers = {};
            } else {
                f.reader.fail(
                    headersField,
                    `expected a map of header names to values; got ${f.reader.describe(headersField)}`,
                );
            }
        }
        const replyField = keys.get('reply');
        if (replyField !== undefined) {
            if (f.reader.isEmpty(replyField)) {
                out.reply = null;
            } else {
                const r = f.reader.map(replyField, REPLY_KEYS);
                if (r !== null) {
                    const code = r.get('code');
                    const enhanced = r.get('enhanced');
                    const text = r.get('text');
                    if (!code || !enhanced || !text) f.reader.fail(replyField, 'expected { code, enhanced, text }');
                    const c = code ? f.reader.integer(code, 200, 599, 'a reply code') : null;
                    const eNode = enhanced ? deref(f, enhanced.node) : null;
                    const e = eNode !== null && isScalar(eNode) ? String(eNode.value) : null;
                    const t = text ? f.reader.string(text, 'the reply text') : null;
                    if (c !== null && e !== null && t !== null)
                        out.reply = { code: c, enhanced: e, text: t } satisfies SmtpReply;
                }
            }
        }
        if (f.reader.issues.length > before || action === null) return null;
        return out;
    }
}

/** The load options a configuration gives: `softReject`, and `auth.recipientDelimiter` (default `+`). */
export function ruleOptions(config: {
    readonly softReject: boolean;
    readonly auth: { readonly recipientDelimiter: string } | null;
}): LoadOptions {
    return {
        softReject: config.softReject,
        recipientDelimiter: config.auth?.recipientDelimiter ?? DEFAULT_RECIPIENT_DELIMITER,
    };
}

/**
 * Loads and validates; returns the rule set or every issue, and the folders to watch. With a
 * rule set, also runs its `cases:`: those that do not hold come back as warnings. `serve`
 * (start), every reload and `mailwarden check` go through here, so they accept exactly the
 * same folders and report the same lines.
 */
export function loadRules(dir: string, opts: LoadOptions): LoadResult {
    let loader: Loader | null = null;
    try {
        loader = new Loader(dir, opts);
        const r = loader.run();
        if (r.ruleSet === null) return r;
        return { ...r, warnings: sortIssues(runCases(r.ruleSet).failed.map(caseIssue)) };
    } catch (err) {
        // Not thrown for bad input (see Loader.guard); should it happen, the folder is refused, nothing crashes.
        const issue: Issue = { file: dir, line: 1, col: 1, message: `cannot load the rules: ${describeError(err)}` };
        const watchDirs = loader ? [...loader.watchDirs] : [path.resolve(dir), path.resolve(dir, 'lists')];
        return { ruleSet: null, issues: [issue], warnings: [], watchDirs: Object.freeze(watchDirs) };
    }
}

/**
 * Loads a rules folder. Throws RuleError carrying every problem found; nothing is partially
 * applied. Cases that do not hold are not problems (see loadRules for them).
 */
export function loadRuleSet(dir: string, opts: LoadOptions): RuleSet {
    const r = loadRules(dir, opts);
    if (r.ruleSet === null) throw new RuleError(r.issues);
    return r.ruleSet;
}

/**
 * What `mailwarden check` reports for a rules folder: every load problem (errors), or, when it
 * loads, every `cases:` example that does not hold (warnings). An empty array means all is well.
 */
export function checkRules(dir: string, opts: LoadOptions): Issue[] {
    const r = loadRules(dir, opts);
    return r.ruleSet === null ? [...r.issues] : [...r.warnings];
}

/** checkRules rendered as `FILE:LINE:COL: [warning: ]message` lines. */
export function validateRulesForCheck(dir: string, softReject: boolean): string[] {
    return checkRules(dir, { softReject }).map(formatIssue);
}
