// createSubmissionAuth picks the backend `auth:` names (users file or Dovecot) and hands out
// sender bindings; createDkimSignerFromConfig takes `dkim:` as loadConfig returns it.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { defaultAuthLockout } from '../../src/config/defaults.ts';
import { generateDkimKey } from '../../src/submission/dkim-keys.ts';
import { hashPassword } from '../../src/submission/hashes.ts';
import {
    createDkimSignerFromConfig,
    createSubmissionAuth,
    mayUse,
    type ReloadEvent,
} from '../../src/submission/index.ts';
import { freePort } from '../helpers/smtp-client.ts';

let dir: string;
before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mw-subidx-'));
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('createSubmissionAuth', () => {
    it('builds the users-file backend', async () => {
        const file = path.join(dir, 'users.yaml');
        fs.writeFileSync(
            file,
            `users:\n  - login: Alice@Example.com\n    password: "${await hashPassword('pw')}"\n    sendAs: ["@example.com"]\n`,
        );
        const events: ReloadEvent[] = [];
        const auth = createSubmissionAuth(
            { users: file, dovecot: null, sendAs: null, recipientDelimiter: '', lockout: defaultAuthLockout() },
            { onReload: (e) => events.push(e) },
        );
        try {
            assert.equal(auth.kind, 'users');
            assert.equal(await auth.verify('alice@example.com', 'pw'), 'ok');
            const ok = await auth.authenticate('alice@example.com', 'pw');
            assert.deepEqual([ok.result, ok.user], ['ok', 'Alice@Example.com']);
            assert.equal(auth.credentialState?.('alice@example.com', ok.credential!), 'current');
            const policy = auth.sendAs('Alice@Example.com');
            assert.equal(mayUse('Alice@Example.com', 'anyone@example.com', policy), true);
            assert.equal(policy.recipientDelimiter, '');
            auth.reload();
        } finally {
            auth.close();
        }
    });

    it('builds the Dovecot backend (unavailable while nothing listens)', async () => {
        const auth = createSubmissionAuth({
            users: null,
            dovecot: { kind: 'tcp', host: '127.0.0.1', port: await freePort() },
            sendAs: null,
            recipientDelimiter: '+',
            lockout: defaultAuthLockout(),
        });
        try {
            assert.equal(auth.kind, 'dovecot');
            assert.equal(await auth.verify('alice@example.com', 'pw', { remoteIp: '192.0.2.1' }), 'unavailable');
            assert.equal(mayUse('alice@example.com', 'alice+x@example.com', auth.sendAs('alice@example.com')), true);
        } finally {
            auth.close();
        }
    });
});

describe('createDkimSignerFromConfig', () => {
    it('takes the loaded dkim section', () => {
        const keyFile = path.join(dir, 'k.pem');
        fs.writeFileSync(keyFile, generateDkimKey('ed25519').privatePem);
        const signer = createDkimSignerFromConfig({
            sign: [{ domain: 'example.com', selector: 's', keyFile, algorithm: 'ed25519-sha256' }],
            headers: null,
        });
        assert.deepEqual(signer.keyFor('mail.example.com'), { domain: 'example.com', selector: 's' });
    });
});
