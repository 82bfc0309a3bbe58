/**
 * Linear-time regular expressions for rules (`matches:`) and pattern lists, in RE2 syntax
 * (Google RE2 compiled to WebAssembly, package re2-wasm). RE2 has no backtracking, so a
 * pattern's running time grows linearly with its input whatever the pattern; backreferences
 * and lookaround, which need backtracking, are refused when the pattern is compiled.
 *
 * What this module works around (re2-wasm 1.0.2, measured): each instance of the engine has
 * one fixed 16 MB heap that cannot grow; running out of it aborts that instance; and the
 * package's `RE2` class never frees the programs it compiles. So each Arena owns a private
 * instance of the engine, every compiled program is freed explicitly, and an instance that
 * aborts (for example when the DFA caches of many patterns fill the heap under unusual input)
 * is replaced by a fresh one into which the patterns are compiled again, transparently.
 * Nothing but its arena may hold an instance: a dropped one (an old rule set after a reload,
 * an aborted instance) must be garbage-collected with its heap.
 * It must not be used for anything but matching: no captures, no replacement.
 */
import { createRequire } from 'node:module';

/** The engine's compiled-pattern handle (embind class WrappedRE2). */
interface Wrapped {
    ok(): boolean;
    error(): string;
    match(input: string, start: number, captures: boolean): { index: number };
    delete(): void;
}

interface Engine {
    WrappedRE2: new (pattern: string, ignoreCase: boolean, multiline: boolean, dotAll: boolean) => Wrapped;
}

const require = createRequire(import.meta.url);
const GLUE = require.resolve('re2-wasm/build/wasm/re2.js');

/** Size of the heap each engine instance has (fixed when the package was built). */
export const ENGINE_HEAP_BYTES = 16 * 1024 * 1024;

/**
 * A new, independent instance of the engine (its own heap). The package's loader is
 * evaluated again by loading it outside the module cache, through a require function made
 * for this call only: Node lists every module a require loads in the `children` of the
 * module that required it, so a long-lived require function would keep every instance (and
 * its 16 MB heap) reachable forever; this one, and with it the instance, is garbage once
 * the arena drops the engine (a rule set replaced by a reload, an instance that aborted).
 * Its diagnostics (it prints the reason when it aborts) are captured instead of going to
 * the console; our callers report failures themselves.
 */
function newEngine(): Engine {
    const cache = require.cache;
    const previous = cache[GLUE];
    delete cache[GLUE];
    const { log, warn } = console;
    console.log = console.warn = () => undefined;
    try {
        return createRequire(import.meta.url)(GLUE) as Engine;
    } finally {
        console.log = log;
        console.warn = warn;
        if (previous) cache[GLUE] = previous;
        else delete cache[GLUE];
    }
}

/** A pattern could not be matched even after the engine was replaced (treated as a tempfail). */
export class RegexEngineError extends Error {
    constructor(message: string) {
        super(message);
        this.name = 'RegexEngineError';
    }
}

export interface Pattern {
    readonly source: string;
    /** True when the pattern matches anywhere in `input` (case-insensitive). Throws RegexEngineError. */
    test(input: string): boolean;
}

interface Entry {
    readonly source: string;
    wrapped: Wrapped | null;
    /** Characters scanned since the program was compiled (its DFA cache grows with them). */
    scanned: number;
}

/** WebAssembly.RuntimeError: what an instance throws when it aborts (the project's lib settings do not declare it). */
const WasmRuntimeError = (globalThis as unknown as { WebAssembly: { RuntimeError: abstract new () => Error } })
    .WebAssembly.RuntimeError;

function isAbort(err: unknown): boolean {
    return err instanceof WasmRuntimeError;
}

/** Adds RE2's own message to a hint for the features people most often expect from other engines. */
export function describeRe2Error(error: string, source = ''): string {
    if (/invalid escape sequence: \\[1-9]/.test(error)) return `${error} (RE2 has no backreferences)`;
    if (/invalid perl operator: \(\?(?:[=!]|<$|<[=!])/.test(error) && /\(\?(?:[=!]|<[=!])/.test(source)) {
        return `${error} (RE2 has no lookahead or lookbehind)`;
    }
    if (/invalid perl operator: \(\?</.test(error)) return `${error} (write named groups as (?P<name>…))`;
    return error;
}

/**
 * A set of compiled patterns sharing one engine instance. Compile with `add` (at load time);
 * match with the returned Pattern's `test`.
 */
export class RegexArena {
    readonly #entries: Entry[] = [];
    readonly #recycleAfter: number;
    #engine: Engine | null = null;
    #resets = 0;

    /**
     * @param recycleAfter a pattern's program is recompiled (dropping its DFA cache) once it
     *   has scanned this many characters; Infinity keeps it for the arena's life.
     */
    constructor(recycleAfter = 256 * 1024) {
        this.#recycleAfter = recycleAfter;
    }

    #live(): Engine {
        this.#engine ??= newEngine();
        return this.#engine;
    }

    /** How many times an aborted engine instance was replaced (for diagnostics). */
    get resets(): number {
        return this.#resets;
    }

    /** Drops an aborted instance; every program is compiled again on first use. */
    #reset(): void {
        this.#resets++;
        this.#engine = null;
        for (const e of this.#entries) {
            e.wrapped = null;
            e.scanned = 0;
        }
    }

    /** Compiles `source` and returns the engine's message when it is not a valid RE2 pattern. */
    #compile(source: string): Wrapped | string {
        const engine = this.#live();
        const wrapped = new engine.WrappedRE2(source, true, false, false);
        if (!wrapped.ok()) {
            const error = wrapped.error();
            wrapped.delete();
            return describeRe2Error(error, source);
        }
        return wrapped;
    }

    /**
     * Compiles a pattern into the arena. Returns an error message for a pattern RE2 refuses or
     * one that does not fit in the engine's heap next to the arena's other patterns.
     */
    add(source: string): { pattern: Pattern } | { error: string } {
        let compiled: Wrapped | string;
        try {
            compiled = this.#compile(source);
        } catch (err) {
            if (!isAbort(err)) throw err;
            this.#reset();
            return {
                error: `too large: the patterns do not fit in the engine's ${ENGINE_HEAP_BYTES >> 20} MB of memory`,
            };
        }
        if (typeof compiled === 'string') return { error: compiled };
        const entry: Entry = { source, wrapped: compiled, scanned: 0 };
        this.#entries.push(entry);
        return { pattern: Object.freeze({ source, test: (input: string) => this.#test(entry, input) }) };
    }

    /** Checks that `source` compiles, without keeping it. Returns null or the error message. */
    check(source: string): string | null {
        try {
            const compiled = this.#compile(source);
            if (typeof compiled === 'string') return compiled;
            compiled.delete();
            return null;
        } catch (err) {
            if (!isAbort(err)) throw err;
            this.#reset();
            return `too large: the pattern does not fit in the engine's ${ENGINE_HEAP_BYTES >> 20} MB of memory`;
        }
    }

    #test(entry: Entry, input: string): boolean {
        for (let attempt = 0; ; attempt++) {
            try {
                let wrapped = entry.wrapped;
                if (wrapped === null) {
                    const compiled = this.#compile(entry.source);
                    if (typeof compiled === 'string')
                        throw new RegexEngineError(`pattern stopped compiling: ${compiled}`);
                    wrapped = entry.wrapped = compiled;
                }
                const found = wrapped.match(input, 0, false).index >= 0;
                entry.scanned += input.length;
                if (entry.scanned > this.#recycleAfter) {
                    wrapped.delete();
                    entry.wrapped = null;
                    entry.scanned = 0;
                }
                return found;
            } catch (err) {
                if (!isAbort(err)) throw err;
                this.#reset();
                if (attempt > 0) {
                    throw new RegexEngineError(
                        `the regular-expression engine ran out of memory matching /${entry.source}/ against ${input.length} characters`,
                    );
                }
            }
        }
    }
}

/** Values unlike each other, one of each kind a fact holds: a pattern that matches them all matches every value. */
const EVERYTHING_PROBES = ['', 'x', 'Mail.example.COM', '\u0001q@z.example', '192.0.2.1'];

/**
 * True when `pattern` matches every value (an empty alternative, as in `@partner\.example$|`,
 * or everything optional, as in `(x)?$`): an allow rule with it would accept every sender.
 * `^$`, which matches only the empty value, is not such a pattern.
 */
export function matchesEverything(pattern: Pattern): boolean {
    return EVERYTHING_PROBES.every((v) => pattern.test(v));
}
