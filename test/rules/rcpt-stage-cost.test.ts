/**
 * What a transaction's recipients cost the rules: one transaction of N recipients is driven
 * through the message flow (src/transaction.ts) and a loaded rule set whose rcpt-stage rule
 * reads `rcpt.to` from a pattern list, and the recipient values the rules read are counted
 * (not timed). The rcpt stage reads one recipient per RCPT, so the count grows linearly with N;
 * the data stage reads every recipient once.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { loadRuleSet } from '../../src/rules/index.ts';
import { MessageFlow, type FlowClient } from '../../src/transaction.ts';
import type { Decision, Facts, FactValue } from '../../src/types.ts';

const RULES = `lists:
  bad-rcpts: { type: pattern, file: bad-rcpts.txt }
rules:
  - id: bad-rcpt
    stage: rcpt
    when: { rcpt.to: { list: bad-rcpts } }
    action: reject
  - id: bad-rcpt-in-message
    stage: data
    when: { rcpt.to: { list: bad-rcpts } }
    action: reject
`;

const CLIENT: FlowClient = {
    identity: { ip: '192.0.2.7', port: 40000, ptr: null, helo: 'client.example', proto: 'ESMTP', login: null },
    tls: false,
};

/** The facts, with every list fact counting the elements read from it. */
function counting(facts: Facts, reads: { n: number }): Facts {
    const out: Record<string, FactValue> = {};
    for (const [k, v] of Object.entries(facts)) {
        out[k] = Array.isArray(v)
            ? (new Proxy(v, {
                  get(target, key, receiver) {
                      if (typeof key === 'string' && /^\d+$/.test(key)) reads.n++;
                      return Reflect.get(target, key, receiver) as unknown;
                  },
              }) as FactValue)
            : v;
    }
    return out;
}

const stage = (facts: Facts, decision: Decision) => ({ facts, headers: [], decision, checks: [] });

describe('the cost of a transaction’s recipients to the rules', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'mw-rcpt-cost-'));
    await writeFile(join(dir, '10-rcpt.yaml'), RULES);
    await writeFile(
        join(dir, 'bad-rcpts.txt'),
        Array.from({ length: 200 }, (_, i) => `^spamtrap${i}-[a-z]+@`).join('\n') + '\n',
    );
    const ruleSet = loadRuleSet(dir, { softReject: false });
    await rm(dir, { recursive: true, force: true });

    /** Recipient values the rules read at the rcpt stages and at the data stage of one transaction. */
    function transaction(n: number): { rcpt: number; data: number } {
        const flow = new MessageFlow('s1', { name: 'mx', mode: 'mx', bareNewline: 'reject' });
        const mailFacts = flow.mailStageFacts(CLIENT, 'x@sender.example');
        const tx = flow.begin(stage(mailFacts, ruleSet.decide('mail', mailFacts)), {
            mailFrom: 'x@sender.example',
            smtputf8: false,
            sizeLimit: 10_000_000,
        });
        const rcpt = { n: 0 };
        for (let i = 0; i < n; i++) {
            const to = `user${i}@example.org`;
            const facts = flow.rcptStageFacts(tx, to);
            const decision = ruleSet.decide('rcpt', counting(facts, rcpt));
            assert.equal(decision.action, 'accept');
            flow.recipientAccepted(tx, to, stage(facts, decision));
        }
        const data = { n: 0 };
        const dataFacts = flow.dataStageFacts(tx, {});
        assert.equal((dataFacts['rcpt.to'] as readonly string[]).length, n);
        assert.equal(ruleSet.decide('data', counting(dataFacts, data)).action, 'accept');
        return { rcpt: rcpt.n, data: data.n };
    }

    it('each RCPT reads one recipient: N recipients cost N reads at the rcpt stage, not N(N+1)/2', () => {
        const small = transaction(50);
        const large = transaction(400);
        assert.deepEqual(small, { rcpt: 50, data: 50 });
        assert.deepEqual(large, { rcpt: 400, data: 400 });
        // linear: eight times the recipients, eight times the work
        assert.equal(large.rcpt, 8 * small.rcpt);
    });

    it('a listed recipient is still refused at its RCPT, whatever came before it', () => {
        const flow = new MessageFlow('s2', { name: 'mx', mode: 'mx', bareNewline: 'reject' });
        const mailFacts = flow.mailStageFacts(CLIENT, 'x@sender.example');
        const tx = flow.begin(stage(mailFacts, ruleSet.decide('mail', mailFacts)), {
            mailFrom: 'x@sender.example',
            smtputf8: false,
            sizeLimit: 10_000_000,
        });
        const ok = flow.rcptStageFacts(tx, 'alice@example.org');
        flow.recipientAccepted(tx, 'alice@example.org', stage(ok, ruleSet.decide('rcpt', ok)));
        const bad = flow.rcptStageFacts(tx, 'spamtrap7-x@example.org');
        assert.deepEqual(bad['rcpt.to'], ['spamtrap7-x@example.org']);
        assert.equal(bad['rcpt.address'], 'spamtrap7-x@example.org');
        assert.equal(bad['rcpt.count'], 2);
        assert.equal(ruleSet.decide('rcpt', bad).action, 'reject');
        const next = flow.rcptStageFacts(tx, 'bob@example.org');
        assert.equal(ruleSet.decide('rcpt', next).action, 'accept');
    });
});
