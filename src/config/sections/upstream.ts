/**
 * The `upstream:` section: where accepted mail goes. An SMTP upstream (`smtp://`, `smtps://`:
 * XCLIENT, STARTTLS, certificate check, timeouts, keepalive) or a maildir folder (`maildir:`, for trials).
 * Validation only: it must not connect or create folders. Relay control and the XCLIENT warning,
 * which depend on the listeners and domains too, are checked in config/load.ts.
 */
import path from 'node:path';
import { sectionEntries } from '../fields.ts';
import { normalizeHost } from '../net.ts';
import type { Field, SourceReader } from '../reader.ts';
import { redactUserinfo } from '../redact.ts';
import { MAX_TIMER_MS } from '../units.ts';

const SMTP_ONLY_KEYS = [
    'xclient',
    'starttls',
    'tlsVerify',
    'connectTimeout',
    'timeout',
    'dataTimeout',
    'keepAlive',
] as const;
export const UPSTREAM_KEYS = ['url', ...SMTP_ONLY_KEYS] as const;

export type UpstreamConfig =
    | {
          readonly kind: 'smtp' | 'smtps';
          readonly url: string;
          readonly host: string;
          readonly port: number;
          readonly xclient: boolean;
          /** STARTTLS towards the upstream when it offers it (`smtp:` only). */
          readonly starttls: 'opportunistic' | 'required' | 'off';
          /** Verify the upstream's certificate. Off by default: the upstream is on loopback. */
          readonly tlsVerify: boolean;
          readonly connectTimeoutMs: number;
          readonly commandTimeoutMs: number;
          readonly dataTimeoutMs: number;
          /**
           * Idle time after which a connection with a transaction open and no command in flight
           * (while the client's message arrives and is checked) gets a NOOP; null: never.
           */
          readonly keepAliveMs: number | null;
      }
    | {
          readonly kind: 'maildir';
          readonly url: string;
          readonly path: string;
      };

export const DEFAULT_MAILDIR = './data/maildir';

export const UPSTREAM_DEFAULTS = {
    smtpPort: 25,
    smtpsPort: 465,
    xclient: true,
    tlsVerify: false,
    /** Connecting to an MTA on the same host or network is quick; a slow connect means trouble. */
    connectTimeoutMs: 10_000,
    /**
     * Waiting for the greeting and each command reply. RFC 5321 section 4.5.3.2 allows 5 minutes,
     * but the client is waiting on the other side of the proxy and Postfix answers in milliseconds.
     */
    commandTimeoutMs: 60_000,
    /**
     * Waiting for the upstream to take each part of the message and to answer the final dot.
     * RFC 5321 section 4.5.3.2.6 lets an MTA wait 10 minutes, but here a client waits on the
     * other side: Postfix's own before-queue proxy gives up after 100 s (smtpd_proxy_timeout).
     */
    dataTimeoutMs: 100_000,
    /**
     * Postfix drops a client silent for smtpd_timeout: 300 s, but 10 s while it is under stress
     * (`${stress?{10}:{300}}s`); the upstream's transaction waits while the client uploads its
     * message and the checks run, so it hears a NOOP well within the shorter one.
     */
    keepAliveMs: 5_000,
} as const;

/** True for names and addresses that stay on this host (127.0.0.0/8, ::1, localhost). */
export function isLoopbackHost(host: string): boolean {
    const h = host.toLowerCase().replace(/\.$/, '');
    return h === 'localhost' || h.endsWith('.localhost') || /^127\.\d+\.\d+\.\d+$/.test(h) || h === '::1';
}

/**
 * STARTTLS towards an `smtp://` upstream: `off` on loopback (nothing to protect, and Postfix's
 * loopback listener usually has no certificate), `opportunistic` elsewhere.
 */
export function defaultUpstreamStarttls(host: string): 'off' | 'opportunistic' {
    return isLoopbackHost(host) ? 'off' : 'opportunistic';
}

/** The default `maildir:` upstream, resolved against `baseDir`. */
export function defaultUpstream(baseDir: string): UpstreamConfig {
    return { kind: 'maildir', url: `maildir:${DEFAULT_MAILDIR}`, path: path.resolve(baseDir, DEFAULT_MAILDIR) };
}

/** The section as read, with the fields the checks across sections point at. */
export interface UpstreamEntry {
    /** null when invalid (reported). */
    readonly config: UpstreamConfig | null;
    /** `upstream.url`, when the section is a map that has it. */
    readonly urlField: Field | null;
    /** `upstream.xclient`, when given beside `url`. */
    readonly xclientField: Field | null;
}

/** Reads `upstream:`; a relative maildir path resolves against `baseDir`. */
export function upstreamSection(r: SourceReader, field: Field, baseDir: string): UpstreamEntry {
    const entries = sectionEntries(r, field, UPSTREAM_KEYS);
    if (!r.isMap(field)) return { config: null, urlField: null, xclientField: null };
    const urlField = entries.get('url');
    if (!urlField) {
        r.fail(field, 'missing "url" (smtp://HOST[:PORT], smtps://HOST[:PORT] or maildir:PATH)');
        return { config: null, urlField: null, xclientField: null };
    }
    const xclientField = entries.get('xclient') ?? null;
    return { config: readUpstream(r, entries, urlField, baseDir), urlField, xclientField };
}

function readUpstream(
    r: SourceReader,
    entries: Map<string, Field>,
    urlField: Field,
    baseDir: string,
): UpstreamConfig | null {
    const url = r.string(urlField, 'a URL');
    if (url === null) return null;
    const accepted = 'write smtp://HOST[:PORT], smtps://HOST[:PORT] or maildir:PATH';
    const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(url)?.[1]?.toLowerCase();
    if (scheme === 'maildir') {
        const dir = url.slice('maildir:'.length);
        if (dir.trim() === '') {
            r.fail(
                urlField,
                `"${redactUserinfo(url)}" names no folder; write maildir:PATH, e.g. maildir:${DEFAULT_MAILDIR}`,
            );
            return null;
        }
        for (const key of SMTP_ONLY_KEYS) {
            const f = entries.get(key);
            if (f) r.report(f.keyOffset, `upstream.${key}: applies only to smtp:// and smtps:// upstreams`);
        }
        return { kind: 'maildir', url, path: path.resolve(baseDir, dir) };
    }
    if (scheme !== 'smtp' && scheme !== 'smtps') {
        r.fail(urlField, `unsupported upstream "${redactUserinfo(url)}": ${accepted}`);
        return null;
    }
    const target = smtpTarget(r, urlField, url, scheme);
    const starttlsField = entries.get('starttls');
    let starttls: 'opportunistic' | 'required' | 'off' = target ? defaultUpstreamStarttls(target.host) : 'off';
    if (starttlsField) {
        if (scheme === 'smtps') {
            r.report(
                starttlsField.keyOffset,
                'upstream.starttls: does not apply to smtps:// (TLS from the first byte)',
            );
        } else if (r.isBoolean(starttlsField) && r.boolean(starttlsField) === false) {
            starttls = 'off';
        } else {
            starttls = r.oneOf(starttlsField, ['opportunistic', 'required', 'off'] as const) ?? starttls;
        }
    }
    const d = UPSTREAM_DEFAULTS;
    const opt = <T>(key: string, read: (f: Field) => T | null, fallback: T): T => {
        const f = entries.get(key);
        return (f && read(f)) ?? fallback;
    };
    const xclient = opt('xclient', (f) => r.boolean(f), d.xclient);
    const tlsVerify = opt('tlsVerify', (f) => r.boolean(f), d.tlsVerify);
    const connectTimeoutMs = opt('connectTimeout', (f) => r.duration(f, 1, MAX_TIMER_MS), d.connectTimeoutMs);
    const commandTimeoutMs = opt('timeout', (f) => r.duration(f, 1, MAX_TIMER_MS), d.commandTimeoutMs);
    const dataTimeoutMs = opt('dataTimeout', (f) => r.duration(f, 1, MAX_TIMER_MS), d.dataTimeoutMs);
    const keepAliveField = entries.get('keepAlive');
    let keepAliveMs: number | null = d.keepAliveMs;
    if (keepAliveField) {
        if (r.isBoolean(keepAliveField)) {
            if (r.boolean(keepAliveField) === false) keepAliveMs = null;
        } else {
            keepAliveMs = r.duration(keepAliveField, 1, MAX_TIMER_MS) ?? keepAliveMs;
        }
    }
    if (target === null) return null;
    return {
        kind: scheme,
        url,
        host: target.host,
        port: target.port,
        xclient,
        starttls,
        tlsVerify,
        connectTimeoutMs,
        commandTimeoutMs,
        dataTimeoutMs,
        keepAliveMs,
    };
}

function smtpTarget(
    r: SourceReader,
    field: Field,
    url: string,
    scheme: 'smtp' | 'smtps',
): { host: string; port: number } | null {
    const form = `write ${scheme}://HOST or ${scheme}://HOST:PORT`;
    let parsed: URL;
    try {
        parsed = new URL(url);
    } catch {
        const bad = /:(\d+)\/?$/.test(url) ? 'has a bad port (1 to 65535)' : 'is not a valid URL';
        r.fail(field, `"${redactUserinfo(url)}" ${bad}; ${form}`);
        return null;
    }
    const extra = parsed.username || parsed.password || (parsed.pathname !== '' && parsed.pathname !== '/');
    if (extra || parsed.search || parsed.hash) {
        r.fail(field, `"${redactUserinfo(url)}" has parts an SMTP upstream cannot use (user, path or query); ${form}`);
        return null;
    }
    const rawHost = parsed.hostname.replace(/^\[(.*)\]$/, '$1');
    const host = rawHost === '' ? null : normalizeHost(rawHost);
    if (host === null) {
        r.fail(field, `"${redactUserinfo(url)}" has no valid host; ${form}`);
        return null;
    }
    const defaultPort = scheme === 'smtp' ? UPSTREAM_DEFAULTS.smtpPort : UPSTREAM_DEFAULTS.smtpsPort;
    const port = parsed.port === '' ? defaultPort : Number(parsed.port);
    if (port === 0) {
        r.fail(field, `"${redactUserinfo(url)}" has a bad port (1 to 65535); ${form}`);
        return null;
    }
    return { host, port };
}
