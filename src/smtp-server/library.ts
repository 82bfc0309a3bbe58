/**
 * smtp-server's SMTPServer and SMTPConnection, loaded from the package's CommonJS build. Its ES
 * module build imports nodemailer's ES module for HTTP fetches (never used here), whose
 * `import http from 'node:http'` makes Node.js load its bundled HTTP client (undici) on the main
 * thread: about 13 MB of RSS for nothing, since an ES import of `node:http` reads every export,
 * the lazily loaded WebSocket classes among them. The two builds are the same source (the
 * contract test reads the CommonJS one). Every module of src/ takes smtp-server from here, so
 * that the adaptations and the server they adapt are the same classes.
 *
 * It must not add behaviour: the adaptations are in adapter.ts, envelope.ts and commands.ts.
 */
import { createRequire } from 'node:module';
import type * as Server from 'smtp-server';
import type * as Connection from 'smtp-server/lib/smtp-connection.js';

const require = createRequire(import.meta.url);

export const { SMTPServer } = require('smtp-server') as typeof Server;
export type SMTPServer = Server.SMTPServer;
export const { SMTPConnection } = require('smtp-server/lib/smtp-connection.js') as typeof Connection;
export type SMTPConnection = Connection.SMTPConnection;
