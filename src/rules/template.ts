/**
 * Text templates for rule replies and header values: literal text with `{fact.name}`
 * placeholders (`{{` and `}}` stand for literal braces). Rendering substitutes each fact's
 * value, then makes the result safe to send: every control character (CR, LF, NUL, TAB…)
 * becomes a space, characters outside printable ASCII become `?` (RFC 5321 section 4.2
 * reply text and RFC 5322 section 2.2 field bodies are ASCII), and the text is cut to a
 * length that keeps the line within the protocol limits (RFC 5321 section 4.5.3.1.5: 512
 * octets per reply line; RFC 5322 section 2.1.1: 998 per header line). So a fact can never
 * start a new reply line or header field. Pure; the fact names are validated by the loader.
 */
import type { Facts, FactValue } from '../types.ts';

/** Longest rendered reply text: `550 5.7.1 ` plus this plus CRLF stays well under 512 octets. */
export const MAX_REPLY_TEXT = 400;
/** Longest rendered header value. */
export const MAX_HEADER_VALUE = 400;

export type TemplatePart = string | { readonly fact: string; readonly offset: number };

export interface Template {
    readonly source: string;
    readonly parts: readonly TemplatePart[];
    /** Names of the facts it reads. */
    readonly facts: readonly string[];
}

const NAME = /^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*$/;

/** Parses a template. An error carries the offset in `source` it refers to. */
export function parseTemplate(source: string): Template | { error: string; offset: number } {
    const parts: TemplatePart[] = [];
    let literal = '';
    for (let i = 0; i < source.length; ) {
        const c = source[i]!;
        if (c === '{' && source[i + 1] === '{') {
            literal += '{';
            i += 2;
        } else if (c === '}' && source[i + 1] === '}') {
            literal += '}';
            i += 2;
        } else if (c === '{') {
            const end = source.indexOf('}', i + 1);
            if (end < 0) return { error: 'unclosed "{" (write {{ for a literal brace)', offset: i };
            const name = source.slice(i + 1, end).trim();
            if (!NAME.test(name))
                return { error: `"{${name}}" is not a fact name (write {{ for a literal brace)`, offset: i };
            if (literal !== '') parts.push(literal);
            literal = '';
            parts.push({ fact: name, offset: i + 1 });
            i = end + 1;
        } else if (c === '}') {
            return { error: 'unexpected "}" (write }} for a literal brace)', offset: i };
        } else {
            literal += c;
            i++;
        }
    }
    if (literal !== '') parts.push(literal);
    const facts = [...new Set(parts.flatMap((p) => (typeof p === 'string' ? [] : [p.fact])))];
    return { source, parts, facts };
}

/** A fact value as text in a template: lists comma-separated, a missing fact as nothing. */
export function factText(value: FactValue | undefined): string {
    if (value === null || value === undefined) return '';
    if (Array.isArray(value)) return value.join(', ');
    return String(value);
}

/** Control characters to spaces, non-ASCII to `?`, then at most `max` characters. */
export function sanitizeText(text: string, max: number): string {
    // eslint-disable-next-line no-control-regex
    const clean = text.replace(/[\x00-\x1f\x7f]+/g, ' ').replace(/[^\x20-\x7e]/gu, '?');
    return clean.length > max ? clean.slice(0, max) : clean;
}

/** Renders a template over facts; the result is one safe line of at most `max` characters. */
export function renderTemplate(template: Template, facts: Facts, max: number): string {
    let out = '';
    for (const p of template.parts) out += typeof p === 'string' ? p : factText(facts[p.fact]);
    return sanitizeText(out, max);
}

/** The first character that may not appear in literal template text, or -1. */
export function firstNonPrintable(text: string): number {
    return text.search(/[^\x20-\x7e]/);
}
