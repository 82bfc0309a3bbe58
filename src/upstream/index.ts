/**
 * Picks the upstream implementation for the configured URL scheme: `smtp:`/`smtps:`
 * (the SMTP client) or `maildir:` (local files). Builds objects only; connects to nothing.
 */
import type { UpstreamConfig } from '../config/types.ts';
import type { UpstreamDeps } from './common.ts';
import { createMaildirUpstream } from './maildir.ts';
import { createSmtpUpstream } from './smtp-client.ts';
import type { Upstream } from './types.ts';

export type { UpstreamDeps, UpstreamLogger } from './common.ts';
export { createMaildirUpstream } from './maildir.ts';
export { createSmtpUpstream } from './smtp-client.ts';

export function createUpstream(config: UpstreamConfig, deps: UpstreamDeps): Upstream {
    switch (config.kind) {
        case 'maildir':
            return createMaildirUpstream({ path: config.path, hostname: deps.hostname, logger: deps.logger });
        case 'smtp':
        case 'smtps':
            return createSmtpUpstream(config, deps);
    }
}
