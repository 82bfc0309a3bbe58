/**
 * Field readers shared by several config sections, over the SourceReader: a section's entries,
 * host names and hosts, lists of addresses or CIDRs, paths that must exist, PEM files, a field's
 * line, and the address a section binds. They report problems through the reader; they must not
 * know any section's keys or defaults, and must not import a section or config/load.ts.
 */
import fs from 'node:fs';
import path from 'node:path';
import { isIp, normalizeCidr } from '../net/ip.ts';
import { ioReason } from './issues.ts';
import { normalizeHost, normalizeHostname } from './net.ts';
import type { Field, SourceReader } from './reader.ts';

/** An address and port a section listens on, for the clash check across sections (config/load.ts). */
export interface Binding {
    readonly host: string;
    readonly port: number;
    /** Who binds it, for messages: `listener "mx"`, `http`. */
    readonly owner: string;
    readonly line: number;
    /** Where a clash with a later binding is reported (its port value). */
    readonly at: Field;
}

/**
 * The items of a list of addresses or CIDRs, normalised (`192.0.2.7` → `192.0.2.7/32`); one
 * that does not parse is reported, and with `distinct` so is one listed twice.
 */
export function readCidrs(r: SourceReader, items: readonly Field[], distinct: boolean): string[] {
    const out: string[] = [];
    for (const item of items) {
        const text = r.string(item, 'an IP address or CIDR');
        if (text === null) continue;
        const parsed = normalizeCidr(text);
        if ('error' in parsed) r.fail(item, parsed.error);
        else if (distinct && out.includes(parsed.cidr)) r.fail(item, `"${text}" is listed twice`);
        else out.push(parsed.cidr);
    }
    return out;
}

/** Entries of a section map, with `key:` (no value) treated as absent. Unknown keys are reported. */
export function sectionEntries(r: SourceReader, field: Field, keys: readonly string[]): Map<string, Field> {
    const entries = r.map(field, keys) ?? new Map<string, Field>();
    for (const [k, f] of entries) if (r.isEmpty(f)) entries.delete(k);
    return entries;
}

/** A host name (RFC 1123), lower-case A-label. */
export function readHostname(r: SourceReader, field: Field): string | null {
    const text = r.string(field, 'a host name');
    if (text === null) return null;
    const name = normalizeHostname(text);
    if (name === null) r.fail(field, `"${text}" is not a valid host name`);
    return name;
}

/**
 * An address to listen on: an IP address or `localhost` (lower-cased). Another host name is
 * refused: Node.js would look it up only when `serve` binds, so a name that does not resolve
 * (or resolves elsewhere) would pass `check` and a reload, and stop the next start.
 */
export function readListenHost(r: SourceReader, field: Field): string | null {
    const text = r.string(field, 'an IP address or localhost');
    if (text === null) return null;
    if (text.toLowerCase() === 'localhost') return 'localhost';
    if (isIp(text)) return text.toLowerCase();
    const hint = /^\[.*\]$/.test(text)
        ? ' (write IPv6 addresses without brackets)'
        : normalizeHost(text) !== null
          ? `: serve would look a host name up only when it starts listening, so check cannot vouch for it; write the address instead ("0.0.0.0" for every IPv4 address, "::" for every address)`
          : '';
    r.fail(field, `"${text}" is not an IP address or localhost${hint}`);
    return null;
}

/** The 1-based line a field's value starts on. */
export function lineOf(r: SourceReader, field: Field): number {
    const before = r.text.slice(0, field.offset);
    return before.split('\n').length;
}

/** A path (relative to the config file's folder) that must exist as a file or folder. */
export function existingPath(r: SourceReader, field: Field, kind: 'file' | 'folder', baseDir: string): string | null {
    const text = r.string(field, `a ${kind} path`);
    if (text === null) return null;
    const resolved = path.resolve(baseDir, text);
    let stat: fs.Stats;
    try {
        stat = fs.statSync(resolved);
    } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        r.fail(field, code === 'ENOENT' ? `no such ${kind}: ${resolved}` : `cannot use ${resolved}: ${ioReason(err)}`);
        return null;
    }
    if (kind === 'file' && !stat.isFile()) {
        r.fail(field, `${resolved} is not a file`);
        return null;
    }
    if (kind === 'folder' && !stat.isDirectory()) {
        r.fail(field, `${resolved} is not a folder`);
        return null;
    }
    try {
        fs.accessSync(resolved, fs.constants.R_OK | (kind === 'folder' ? fs.constants.X_OK : 0));
    } catch (err) {
        r.fail(field, `cannot read ${resolved}: ${ioReason(err)}`);
        return null;
    }
    return resolved;
}

/** A readable file that looks like PEM. */
export function pemFile(r: SourceReader, field: Field, baseDir: string): { path: string; content: string } | null {
    const file = existingPath(r, field, 'file', baseDir);
    if (file === null) return null;
    let content: string;
    try {
        content = fs.readFileSync(file, 'utf8');
    } catch (err) {
        r.fail(field, `cannot read ${file}: ${ioReason(err)}`);
        return null;
    }
    if (!content.includes('-----BEGIN')) {
        r.fail(field, `${file} is not a PEM file (no "-----BEGIN" line)`);
        return null;
    }
    return { path: file, content };
}
