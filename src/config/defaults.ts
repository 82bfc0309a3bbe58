/**
 * The embedded defaults: the configuration used when no config file exists (SPEC "Embedded
 * defaults"), composed of each section's defaults (declared beside the section in
 * config/sections/), and the defaults of the top-level keys that belong to no section.
 * Builds values only; it must not read files, validate input or look at the environment.
 */
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { defaultAuthentication } from './sections/authentication.ts';
import { DNS_DEFAULTS, defaultDns } from './sections/dns.ts';
import { HTTP_DEFAULTS, defaultHttp } from './sections/http.ts';
import { EMBEDDED_LISTENER, LISTENER_DEFAULTS, defaultListeners } from './sections/listeners.ts';
import { DEFAULT_LOG_LEVEL } from './sections/log.ts';
import { PREGREET_DEFAULTS, defaultPregreet } from './sections/pregreet.ts';
import { REDIS_DEFAULTS } from './sections/redis.ts';
import { defaultReputation } from './sections/reputation.ts';
import { SPOOL_DEFAULTS, defaultSpool } from './sections/spool.ts';
import { DEFAULT_RECIPIENT_DELIMITER } from './sections/submission-auth.ts';
import { UPSTREAM_DEFAULTS, defaultUpstream } from './sections/upstream.ts';
import type { Config } from './types.ts';

export { defaultAuthentication } from './sections/authentication.ts';
export { defaultListener } from './sections/listeners.ts';
export { defaultSpoolDir } from './sections/spool.ts';
export { defaultAuthLockout } from './sections/submission-auth.ts';

/** The `rules/` folder shipped with the package (`<package root>/rules`). */
export const PACKAGE_RULES_DIR: string = fileURLToPath(new URL('../../rules/', import.meta.url)).replace(/[\\/]$/, '');

/** How long transactions in flight may take to finish after SIGTERM. */
export const DEFAULT_SHUTDOWN_TIMEOUT_MS = 30_000;

/** Every section's default values in one object, as the section files declare them. */
export const DEFAULTS = {
    listener: EMBEDDED_LISTENER,
    ...LISTENER_DEFAULTS,
    pregreet: PREGREET_DEFAULTS,
    upstream: UPSTREAM_DEFAULTS,
    dns: DNS_DEFAULTS,
    redis: REDIS_DEFAULTS,
    http: HTTP_DEFAULTS,
    spool: SPOOL_DEFAULTS,
    shutdownTimeoutMs: DEFAULT_SHUTDOWN_TIMEOUT_MS,
    recipientDelimiter: DEFAULT_RECIPIENT_DELIMITER,
    logLevel: DEFAULT_LOG_LEVEL,
} as const;

/**
 * The whole embedded configuration. `baseDir` is where relative defaults resolve: the current
 * working directory without a config file, the config file's folder otherwise.
 */
export function defaultConfig(baseDir: string, source: string | null = null): Config {
    return {
        source,
        hostname: os.hostname(),
        domains: [],
        relayDomains: [],
        listeners: defaultListeners(false),
        pregreet: defaultPregreet(),
        tls: null,
        upstream: defaultUpstream(baseDir),
        dns: defaultDns(),
        redis: null,
        auth: null,
        rules: PACKAGE_RULES_DIR,
        softReject: false,
        http: defaultHttp(),
        spool: defaultSpool(),
        dkim: null,
        authentication: defaultAuthentication(),
        reputation: defaultReputation(),
        shutdownTimeoutMs: DEFAULT_SHUTDOWN_TIMEOUT_MS,
        workers: 'auto',
        log: { level: DEFAULT_LOG_LEVEL },
    };
}
