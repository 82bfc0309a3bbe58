// Unit tests of the DMARC disposition (src/sender-auth/dmarc-policy.ts): p / sp / np, t=y and the
// historic pct, psd records applied as inherited policies, strict and relaxed alignment,
// several From mailboxes, temporary errors (tempfail, never reject), ARC and local overrides.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
    alignedRelaxed,
    alignedStrict,
    applicablePolicies,
    couldAlign,
    decideDisposition,
    downgrade,
    isTesting,
    pctOf,
    type AppliedRecord,
    type DispositionInput,
} from '../../src/sender-auth/dmarc-policy.ts';
import { organizationalDomain } from '../../src/sender-auth/psl.ts';

function input(over: Partial<DispositionInput> = {}): DispositionInput {
    return {
        result: 'fail',
        authorDomain: 'example.com',
        recordDomain: 'example.com',
        record: { p: 'reject' },
        authorExists: null,
        exactlyAlignedPass: false,
        alignedTemperror: false,
        fromCount: 1,
        rejectMultipleFrom: true,
        arcTrusted: false,
        authenticated: false,
        ...over,
    };
}

const sub = { authorDomain: 'a.example.com', recordDomain: 'example.com' };

describe('applicable policy (RFC 9989 section 4.10.1)', () => {
    it('p for the domain that published the record', () => {
        const d = decideDisposition(input({ record: { p: 'quarantine', sp: 'reject' } }));
        assert.equal(d.policy, 'quarantine');
        assert.equal(d.disposition, 'quarantine');
    });

    it('sp for an inherited record, falling back to p', () => {
        assert.equal(decideDisposition(input({ ...sub, record: { p: 'reject', sp: 'none' } })).disposition, 'none');
        assert.equal(decideDisposition(input({ ...sub, record: { p: 'quarantine' } })).disposition, 'quarantine');
    });

    it('np for a non-existent subdomain, sp for an existing one', () => {
        const record: AppliedRecord = { p: 'none', sp: 'quarantine', np: 'reject' };
        assert.equal(decideDisposition(input({ ...sub, record, authorExists: false })).disposition, 'reject');
        assert.equal(decideDisposition(input({ ...sub, record, authorExists: true })).disposition, 'quarantine');
        // np is never used for the domain that published the record
        assert.equal(decideDisposition(input({ record, authorExists: false })).disposition, 'none');
    });

    it('np falls back to sp, then p', () => {
        assert.deepEqual(applicablePolicies({ p: 'reject' }, 'a.b', 'b', false), ['reject']);
        assert.deepEqual(applicablePolicies({ p: 'reject', sp: 'none' }, 'a.b', 'b', false), ['none']);
    });

    it('unknown existence with np and sp different: both candidates; tempfail if they disagree', () => {
        const record: AppliedRecord = { p: 'none', sp: 'none', np: 'reject' };
        assert.deepEqual(applicablePolicies(record, 'a.b', 'b', null), ['none', 'reject']);
        const d = decideDisposition(input({ ...sub, record, authorExists: null }));
        assert.equal(d.policy, null);
        assert.equal(d.disposition, 'tempfail');
        assert.equal(d.temperror, true);
    });

    it('a psd=y record found above the organizational domain applies like an inherited one', () => {
        const d = decideDisposition(
            input({
                authorDomain: 'giant.bank.example',
                recordDomain: 'bank.example',
                record: { p: 'none', sp: 'reject' },
                authorExists: true,
            }),
        );
        assert.equal(d.disposition, 'reject');
    });
});

describe('test mode: t=y and the historic pct', () => {
    it('t=y drops one level', () => {
        assert.equal(downgrade('reject'), 'quarantine');
        assert.equal(downgrade('quarantine'), 'none');
        assert.equal(downgrade('none'), 'none');
        const r = decideDisposition(input({ record: { p: 'reject', t: 'y' } }));
        assert.deepEqual(
            [r.policy, r.effective, r.disposition, r.override],
            ['reject', 'quarantine', 'quarantine', 'testing'],
        );
        const q = decideDisposition(input({ record: { p: 'quarantine', t: 'y' } }));
        assert.deepEqual([q.disposition, q.override], ['none', 'testing']);
    });

    it('pct=0 means t=y; pct 1..99 enforces fully; t= wins over pct', () => {
        assert.equal(isTesting({ p: 'reject', pct: 0 }), true);
        assert.equal(isTesting({ p: 'reject', pct: 50 }), false);
        assert.equal(isTesting({ p: 'reject', pct: 0, t: 'n' }), false);
        assert.equal(isTesting({ p: 'reject', pct: 100, t: 'y' }), true);
        assert.equal(decideDisposition(input({ record: { p: 'reject', pct: 1 } })).disposition, 'reject');
        assert.equal(decideDisposition(input({ record: { p: 'reject', pct: 0 } })).disposition, 'quarantine');
    });

    it('reads pct only when it is a whole number from 0 to 100', () => {
        assert.equal(pctOf('v=DMARC1; p=reject; pct=0'), 0);
        assert.equal(pctOf('v=DMARC1; p=reject; PCT = 25 ;'), 25);
        assert.equal(pctOf('v=DMARC1; p=reject; pct=abc'), undefined);
        assert.equal(pctOf('v=DMARC1; p=reject; pct=500'), undefined);
        assert.equal(pctOf('v=DMARC1; p=reject'), undefined);
    });
});

describe('results other than fail', () => {
    it('pass, none and permerror never restrict', () => {
        for (const result of ['pass', 'none', 'permerror'] as const) {
            assert.equal(decideDisposition(input({ result })).disposition, 'none');
        }
    });

    it('a failing record-less result is none', () => {
        assert.equal(decideDisposition(input({ result: 'fail', record: null })).disposition, 'none');
    });
});

describe('temporary errors: tempfail, never reject', () => {
    it('DMARC record lookup temperror: tempfail', () => {
        const d = decideDisposition(input({ result: 'temperror', record: null, recordDomain: null }));
        assert.equal(d.disposition, 'tempfail');
        assert.equal(d.temperror, true);
    });

    it('...unless an identifier identical to the author domain passed (aligned in any mode)', () => {
        const d = decideDisposition(input({ result: 'temperror', record: null, exactlyAlignedPass: true }));
        assert.equal(d.disposition, 'none');
        assert.equal(d.temperror, false);
    });

    it('...or every possible policy is none', () => {
        const d = decideDisposition(input({ result: 'temperror', record: { p: 'quarantine', t: 'y' } }));
        assert.equal(d.disposition, 'none');
    });

    it('SPF or DKIM temperror on an identifier that could align, nothing passing: tempfail', () => {
        const d = decideDisposition(input({ alignedTemperror: true }));
        assert.equal(d.disposition, 'tempfail');
        assert.equal(d.temperror, true);
    });

    it('...but not when the policy is none anyway', () => {
        assert.equal(decideDisposition(input({ alignedTemperror: true, record: { p: 'none' } })).disposition, 'none');
    });
});

describe('overrides and multiple From', () => {
    it('a trusted ARC chain turns a failure into none', () => {
        const d = decideDisposition(input({ arcTrusted: true }));
        assert.deepEqual([d.disposition, d.override, d.policy], ['none', 'arc', 'reject']);
    });

    it('ARC wins over a temporary error on another identifier', () => {
        assert.equal(decideDisposition(input({ arcTrusted: true, alignedTemperror: true })).disposition, 'none');
    });

    it('an authenticated client: none whatever the result; an override (local) only when DMARC did not pass', () => {
        const d = decideDisposition(input({ authenticated: true, fromCount: 3 }));
        assert.deepEqual([d.disposition, d.override], ['none', 'local']);
        const passed = decideDisposition(input({ authenticated: true, result: 'pass' }));
        assert.deepEqual([passed.disposition, passed.override], ['none', null]);
        const noPolicy = decideDisposition(input({ authenticated: true, result: 'none', record: null }));
        assert.deepEqual([noPolicy.disposition, noPolicy.override], ['none', null]);
    });

    it('several From mailboxes: reject with rejectMultipleFrom, even when DMARC passes', () => {
        assert.equal(decideDisposition(input({ result: 'pass', fromCount: 2 })).disposition, 'reject');
        assert.equal(decideDisposition(input({ result: 'permerror', fromCount: 2 })).disposition, 'reject');
        assert.equal(
            decideDisposition(input({ result: 'permerror', fromCount: 2, rejectMultipleFrom: false })).disposition,
            'none',
        );
    });
});

describe('alignment (RFC 9989 section 3.2.10)', () => {
    const org = (d: string) => organizationalDomain(d);

    it('strict: identical domains only', () => {
        assert.equal(alignedStrict('example.com', 'example.com'), true);
        assert.equal(alignedStrict('mail.example.com', 'example.com'), false);
        assert.equal(alignedStrict('example.com', 'mail.example.com'), false);
    });

    it('relaxed: same organizational domain, in both directions', () => {
        assert.equal(alignedRelaxed('mail.example.com', 'example.com', org), true);
        assert.equal(alignedRelaxed('example.com', 'news.example.com', org), true);
        assert.equal(alignedRelaxed('a.example.com', 'b.example.com', org), true);
        assert.equal(alignedRelaxed('example.net', 'example.com', org), false);
        assert.equal(alignedRelaxed('a.example.co.uk', 'b.example.co.uk', org), true);
        assert.equal(alignedRelaxed('other.co.uk', 'example.co.uk', org), false);
    });

    it('couldAlign: what a temporary error on an identifier may hide', () => {
        assert.equal(couldAlign('example.com', 'example.com', 'example.com', true), true);
        assert.equal(couldAlign('mail.example.com', 'example.com', 'example.com', true), false);
        assert.equal(couldAlign('mail.example.com', 'www.example.com', 'example.com', false), true);
        assert.equal(couldAlign('example.net', 'example.com', 'example.com', false), false);
        assert.equal(couldAlign('a.example.com', 'b.example.com', null, false), true);
        assert.equal(couldAlign('a.example.net', 'b.example.com', null, false), false);
    });
});
