/**
 * docs/flow.md stays true for the envelope: every refusal made before any rule is listed with
 * its reply (code and enhanced status code from the reply table) and its metric reason.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { replyFor, type Situation } from '../../src/reply.ts';
import { ENVELOPE_REFUSALS } from '../../src/envelope/gate.ts';

const flow = readFileSync(new URL('../../docs/flow.md', import.meta.url), 'utf8');
const table = flow.slice(
    flow.indexOf('## MAIL and RCPT: what is refused before any rule'),
    flow.indexOf('## Never lose mail'),
);

describe('docs/flow.md: MAIL and RCPT refusals', () => {
    it('lists every metric reason', () => {
        for (const reason of ENVELOPE_REFUSALS) assert.ok(table.includes(`\`${reason}\``), reason);
    });

    it('gives each refusal the reply the table sends', () => {
        const situations: Situation[] = [
            'sender-syntax',
            'recipient-syntax',
            'command-syntax',
            'smtputf8-required',
            'param-not-offered',
            'param-invalid',
            'message-too-big',
            'too-many-recipients',
            'relay-denied',
            'relay-routing-denied',
            'sender-routing-refused',
            'upstream-feature-missing',
        ];
        for (const s of situations) {
            const r = replyFor(s, { id: 'x' });
            assert.ok(table.includes(`${r.code} ${r.enhanced}`), `${s}: ${r.code} ${r.enhanced}`);
        }
    });
});
