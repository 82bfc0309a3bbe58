/**
 * The `auth:` section: SMTP AUTH on submission listeners (not sender authentication, which is
 * `authentication:`). Exactly one credential backend (the users file or Dovecot's auth service),
 * the sendAs file that goes with Dovecot, the recipient delimiter, and the password-guessing
 * lockout (`auth.lockout`). Validation only: it must not read the users file or connect to
 * Dovecot; that a submission listener needs this section is checked in config/load.ts.
 */
import path from 'node:path';
import { isScalar } from 'yaml';
import { existingPath, readCidrs, sectionEntries } from '../fields.ts';
import { normalizeHost } from '../net.ts';
import type { Field, SourceReader } from '../reader.ts';
import { parseDuration } from '../units.ts';

export const AUTH_KEYS = ['users', 'dovecot', 'sendAs', 'recipientDelimiter', 'lockout'] as const;
export const LOCKOUT_KEYS = ['perIp', 'perLogin', 'perSession', 'exempt', 'loginKey'] as const;
/** How a login is counted: as written (lower-cased), or its part before the first `@` (Dovecot's `%Ln`). */
export const LOGIN_KEYS = ['login', 'localPart'] as const;
export type LoginKey = (typeof LOGIN_KEYS)[number];

/** Where Dovecot's auth service listens: a unix socket, or TCP (an `inet_listener` of `service auth`). */
export type DovecotAuthAddress =
    | { readonly kind: 'unix'; readonly path: string }
    | { readonly kind: 'tcp'; readonly host: string; readonly port: number };

/** A count per period, enforced as GCRA: a burst of `limit`, then one more every periodMs / limit. */
export interface CountPerPeriod {
    readonly limit: number;
    readonly periodMs: number;
}

/** Password-guessing protection of SMTP AUTH (src/submission/login-guard.ts). */
export interface AuthLockoutConfig {
    /** Failed logins allowed per client IP (IPv6: per /48); null: not limited. */
    readonly perIp: CountPerPeriod | null;
    /** Failed logins allowed per login name, from all addresses together; null: not limited. */
    readonly perLogin: CountPerPeriod | null;
    /** Failed logins in one connection; the last of them is answered 421 and the connection closed. */
    readonly perSession: number;
    /** Client networks (CIDRs) never counted and never locked out. */
    readonly exempt: readonly string[];
    /**
     * What `perLogin` counts a login as, before its password is checked: `login` (as written,
     * lower-cased) or `localPart` (the part before the first `@`, as Dovecot's
     * `auth_username_format = %Ln` names the account).
     */
    readonly loginKey: LoginKey;
}

/** SMTP AUTH on submission listeners (src/submission). Exactly one of `users` and `dovecot` is set. */
export interface SubmissionAuthConfig {
    /** The users file (logins, password hashes, sendAs); null when Dovecot checks passwords. */
    readonly users: string | null;
    /** Dovecot's auth socket; null when the users file checks passwords. */
    readonly dovecot: DovecotAuthAddress | null;
    /** With Dovecot: the file of login → sendAs addresses; null: each login may send as itself only. */
    readonly sendAs: string | null;
    /** Characters that start a subaddress (`alice+tag@`), as Postfix's recipient_delimiter; '' for none. */
    readonly recipientDelimiter: string;
    readonly lockout: AuthLockoutConfig;
}

/** Postfix's usual recipient_delimiter: `alice+tag@` may be used where `alice@` may (RFC 5233). */
export const DEFAULT_RECIPIENT_DELIMITER = '+';

/** The longest period of a failure count (as rate limits: GCRA state must stay exact within 2^53). */
const MAX_LOCKOUT_PERIOD_MS = 366 * 24 * 3_600_000;

/**
 * Password guessing on submission: 10 failed logins per client address per 15 minutes (one
 * more every 90 s after that), 20 per login per hour from everywhere (a login guessed from many
 * addresses), and the connection closed at the third failure, as Dovecot's login processes do.
 */
export function defaultAuthLockout(): AuthLockoutConfig {
    return {
        perIp: { limit: 10, periodMs: 15 * 60_000 },
        perLogin: { limit: 20, periodMs: 60 * 60_000 },
        perSession: 3,
        exempt: [],
        loginKey: 'login',
    };
}

/** Reads `auth:` (no default: without it, no submission listener); null when invalid (reported). */
export function submissionAuthSection(r: SourceReader, field: Field, baseDir: string): SubmissionAuthConfig | null {
    const entries = sectionEntries(r, field, AUTH_KEYS);
    if (!r.isMap(field)) return null;
    const users = entries.get('users');
    const dovecot = entries.get('dovecot');
    const sendAs = entries.get('sendAs');
    const delimiterField = entries.get('recipientDelimiter');
    const recipientDelimiter =
        (delimiterField && readRecipientDelimiter(r, delimiterField)) ?? DEFAULT_RECIPIENT_DELIMITER;
    const lockoutField = entries.get('lockout');
    let loginKeyOffset: number | undefined;
    const lockout = lockoutField
        ? readLockout(r, lockoutField, (offset) => (loginKeyOffset = offset))
        : defaultAuthLockout();
    if (users && dovecot) {
        r.report(
            dovecot.keyOffset,
            'auth.dovecot: write either auth.users (the users file) or auth.dovecot (Dovecot checks passwords), not both',
        );
        return null;
    }
    if (users) {
        if (sendAs) {
            r.report(
                sendAs.keyOffset,
                "auth.sendAs: applies only with auth.dovecot; with auth.users each user's sendAs is in the users file",
            );
        }
        if (lockout.loginKey === 'localPart') {
            r.report(
                loginKeyOffset ?? field.keyOffset,
                'auth.lockout.loginKey: localPart applies only with auth.dovecot (auth_username_format = %Ln); in a users file alice@a.example and alice@b.example are two users, and localPart would lock one out for the failures of the other',
            );
        }
        const file = existingPath(r, users, 'file', baseDir);
        return file === null ? null : { users: file, dovecot: null, sendAs: null, recipientDelimiter, lockout };
    }
    if (!dovecot) {
        r.fail(
            field,
            'missing "users" (the submission users file) or "dovecot" (the address of Dovecot\'s auth service)',
        );
        return null;
    }
    const address = readDovecotAddress(r, dovecot, baseDir);
    const sendAsFile = sendAs ? existingPath(r, sendAs, 'file', baseDir) : null;
    if (address === null || (sendAs && sendAsFile === null)) return null;
    return { users: null, dovecot: address, sendAs: sendAsFile, recipientDelimiter, lockout };
}

/** `auth.lockout:` — failed-login limits per client IP, per login and per connection; exempt networks. */
function readLockout(r: SourceReader, field: Field, loginKeyAt: (offset: number) => void): AuthLockoutConfig {
    const d = defaultAuthLockout();
    const entries = sectionEntries(r, field, LOCKOUT_KEYS);
    if (!r.isMap(field)) return d;
    const perIp = entries.get('perIp');
    const perLogin = entries.get('perLogin');
    const perSession = entries.get('perSession');
    const exempt = entries.get('exempt');
    const loginKey = entries.get('loginKey');
    if (loginKey) loginKeyAt(loginKey.keyOffset);
    return {
        perIp: perIp ? failureRate(r, perIp) : d.perIp,
        perLogin: perLogin ? failureRate(r, perLogin) : d.perLogin,
        perSession: (perSession && r.integer(perSession, 1, 100, 'a number of failed logins')) ?? d.perSession,
        exempt: exempt ? cidrList(r, exempt) : d.exempt,
        loginKey: (loginKey && r.oneOf(loginKey, LOGIN_KEYS)) ?? d.loginKey,
    };
}

/** `COUNT/PERIOD` (`10/15m`), or `false` for no limit. */
function failureRate(r: SourceReader, field: Field): CountPerPeriod | null {
    const form = 'write a count per period such as 10/15m or 20/1h, or false for no limit';
    if (r.isBoolean(field)) {
        if (r.boolean(field) === false) return null;
        r.fail(field, `true is not a rate; ${form}`);
        return null;
    }
    const text = r.string(field, `a count per period such as 10/15m`);
    if (text === null) return null;
    const m = /^(\d+)\s*\/\s*(\S+)$/.exec(text);
    if (!m) {
        r.fail(field, `"${text}" is not a rate; ${form}`);
        return null;
    }
    const limit = Number(m[1]);
    const unit = m[2]!;
    const periodMs = /^(s|m|h|d)$/.test(unit) ? parseDuration(`1${unit}`) : parseDuration(unit);
    if (!Number.isSafeInteger(limit) || limit < 1 || limit > 100_000) {
        r.fail(field, `"${text}": the count must be a whole number from 1 to 100000`);
        return null;
    }
    if (periodMs === null || periodMs < 1_000 || periodMs > MAX_LOCKOUT_PERIOD_MS) {
        r.fail(field, `"${text}": the period must be a duration from 1s to 366d, such as 15m or 1h`);
        return null;
    }
    return { limit, periodMs };
}

/** A list of addresses or CIDRs, normalised (`192.0.2.7` → `192.0.2.7/32`). */
function cidrList(r: SourceReader, field: Field): string[] {
    return readCidrs(r, r.list(field, 'addresses or CIDRs such as 192.0.2.0/24') ?? [], true);
}

/** `unix:PATH` (or an absolute path), or `[inet:]HOST:PORT`. */
function readDovecotAddress(r: SourceReader, field: Field, baseDir: string): DovecotAuthAddress | null {
    const text = r.string(field, "the address of Dovecot's auth service");
    if (text === null) return null;
    const form = 'write unix:PATH (e.g. unix:/run/dovecot/auth-client) or HOST:PORT (an inet_listener of service auth)';
    if (text.startsWith('unix:') || text.startsWith('/')) {
        const socket = text.startsWith('unix:') ? text.slice('unix:'.length).trim() : text;
        if (socket === '') {
            r.fail(field, `"${text}" names no socket; ${form}`);
            return null;
        }
        return { kind: 'unix', path: path.resolve(baseDir, socket) };
    }
    const rest = text.startsWith('inet:') ? text.slice('inet:'.length) : text;
    const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(rest) ?? /^([^:[\]]+):(\d{1,5})$/.exec(rest);
    const host = m?.[1] === undefined ? null : normalizeHost(m[1]);
    const port = Number(m?.[2]);
    if (host === null || !(port >= 1 && port <= 65535)) {
        r.fail(field, `"${text}" is not an address of Dovecot's auth service; ${form}`);
        return null;
    }
    return { kind: 'tcp', host, port };
}

/** Subaddress delimiter characters; `false` or "" for none. */
function readRecipientDelimiter(r: SourceReader, field: Field): string | null {
    if (r.isBoolean(field)) {
        if (r.boolean(field) === false) return '';
        r.fail(field, 'expected delimiter characters such as "+", or false for none');
        return null;
    }
    const node = field.node;
    const value = node !== null && isScalar(node) && typeof node.value === 'string' ? node.value : null;
    if (value === null) {
        r.fail(field, `expected delimiter characters such as "+", or false for none; got ${r.describe(field)}`);
        return null;
    }
    if (!/^[!#$%&'*+\-/=?^_`{|}~.]{0,8}$/.test(value)) {
        r.fail(field, `"${value}": use punctuation such as "+" or "-" (not letters, digits, "@", quotes or spaces)`);
        return null;
    }
    return value;
}
