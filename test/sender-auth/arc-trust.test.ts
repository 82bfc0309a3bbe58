// Unit tests of the ARC trust decision (src/sender-auth/arc-trust.ts): reading an
// ARC-Authentication-Results payload, which hop may vouch for the author domain, and that an
// untrusted hop newer than a trusted one cancels the override.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { evaluateArcTrust, parseAuthResults, type ArcHop } from '../../src/sender-auth/arc-trust.ts';

const aligned = (d: string) => d === 'bank.example' || d.endsWith('.bank.example');

function hop(instance: number, sealer: string, results: string): ArcHop {
    return { instance, sealer, results };
}

describe('parseAuthResults', () => {
    it('reads methods, results and properties; comments and quotes do not confuse it', () => {
        const r = parseAuthResults(
            ' i=2; mx.google.com;\r\n dkim=pass (2048-bit; key) header.i=@bank.example header.s=s1;\r\n' +
                ' spf=pass (google.com: "quoted; text") smtp.mailfrom="a;b"@bank.example;\r\n dmarc=pass (p=REJECT sp=NONE dis=NONE) header.from=bank.example',
        );
        const byMethod = new Map(r.map((x) => [x.method, x]));
        assert.equal(byMethod.get('dkim')?.result, 'pass');
        assert.equal(byMethod.get('dkim')?.props.get('header.i'), '@bank.example');
        assert.equal(byMethod.get('spf')?.props.get('smtp.mailfrom'), '"a;b"@bank.example');
        assert.equal(byMethod.get('dmarc')?.props.get('header.from'), 'bank.example');
    });

    it('skips what it cannot read', () => {
        assert.deepEqual(parseAuthResults('mx.example; none'), []);
        assert.deepEqual(parseAuthResults(''), []);
    });
});

describe('evaluateArcTrust', () => {
    const base = {
        result: 'pass' as const,
        trustedSealers: new Set(['google.com', 'lists.example']),
        authorDomain: 'bank.example',
        aligned,
    };

    it('the newest hop trusted and vouching: override possible', () => {
        const t = evaluateArcTrust({
            ...base,
            hops: [hop(1, 'google.com', 'mx.google.com; dmarc=pass header.from=bank.example')],
        });
        assert.equal(t.trusted, true);
        assert.deepEqual(t.vouching, { instance: 1, sealer: 'google.com', method: 'dmarc' });
    });

    it('an aligned dkim=pass (header.d or header.i) or spf=pass also vouches', () => {
        const dkim = evaluateArcTrust({
            ...base,
            hops: [hop(1, 'google.com', 'g; dkim=pass header.d=mail.bank.example')],
        });
        assert.equal(dkim.vouching?.method, 'dkim');
        const spf = evaluateArcTrust({
            ...base,
            hops: [hop(1, 'google.com', 'g; spf=pass smtp.mailfrom=x@bank.example')],
        });
        assert.equal(spf.vouching?.method, 'spf');
        const other = evaluateArcTrust({
            ...base,
            hops: [hop(1, 'google.com', 'g; dkim=pass header.d=evil.example; dmarc=pass header.from=evil.example')],
        });
        assert.equal(other.vouching, null);
    });

    it('an spf=pass for the HELO name vouches only when the results show the null sender', () => {
        const spf = (results: string) => evaluateArcTrust({ ...base, hops: [hop(1, 'google.com', results)] }).vouching;
        // DMARC's SPF identity is MAIL FROM; the HELO name only stands in for the null sender
        assert.equal(spf('g; spf=pass smtp.helo=bank.example; spf=none smtp.mailfrom=x@attacker.example'), null);
        assert.equal(spf('g; spf=none smtp.mailfrom=attacker.example; spf=pass smtp.helo=mail.bank.example'), null);
        assert.equal(spf('g; spf=pass smtp.mailfrom=x@attacker.example smtp.helo=bank.example'), null);
        // a verifier may record only the HELO check for a non-null MAIL FROM (RFC 7208 section 2.3)
        assert.equal(spf('g; spf=pass smtp.helo=bank.example'), null);
        assert.equal(spf('g; spf=pass (domain of x@attacker.example: helo checked) smtp.helo=bank.example'), null);
        assert.equal(spf('g; spf=pass smtp.mailfrom="" smtp.helo=bank.example'), null);
        assert.equal(
            spf('g; spf=pass smtp.mailfrom=<> smtp.helo=bank.example; spf=none smtp.mailfrom=x@attacker.example'),
            null,
        );
        assert.equal(spf('g; spf=pass smtp.mailfrom=postmaster@other.example smtp.helo=bank.example'), null);
        assert.equal(spf('g; spf=pass smtp.mailfrom=<> smtp.helo=bank.example')?.method, 'spf');
        assert.equal(spf('g; spf=pass smtp.mailfrom="<>" smtp.helo=bank.example')?.method, 'spf');
        assert.equal(spf('g; spf=pass smtp.helo=bank.example; spf=none smtp.mailfrom=<>')?.method, 'spf');
        assert.equal(
            spf('g; spf=pass smtp.helo=bank.example; spf=none smtp.mailfrom=Postmaster@Bank.example')?.method,
            'spf',
        );
        assert.equal(spf('g; spf=pass smtp.helo=attacker.example'), null);
    });

    it('an older trusted hop vouches when every newer hop is trusted too', () => {
        const t = evaluateArcTrust({
            ...base,
            hops: [
                hop(1, 'google.com', 'g; dmarc=pass header.from=bank.example'),
                hop(2, 'lists.example', 'l; dkim=fail header.d=bank.example'),
            ],
        });
        assert.deepEqual(t.vouching, { instance: 1, sealer: 'google.com', method: 'dmarc' });
    });

    it('an untrusted newest hop: not trusted, nothing vouches', () => {
        const t = evaluateArcTrust({
            ...base,
            hops: [
                hop(1, 'google.com', 'g; dmarc=pass header.from=bank.example'),
                hop(2, 'evil.example', 'e; dmarc=pass header.from=bank.example'),
            ],
        });
        assert.equal(t.trusted, false);
        assert.equal(t.sealer, 'evil.example');
        assert.equal(t.vouching, null);
    });

    it('an untrusted hop in between stops the search', () => {
        const t = evaluateArcTrust({
            ...base,
            hops: [
                hop(1, 'google.com', 'g; dmarc=pass header.from=bank.example'),
                hop(2, 'evil.example', 'e; none'),
                hop(3, 'lists.example', 'l; dmarc=fail header.from=bank.example'),
            ],
        });
        assert.equal(t.trusted, true);
        assert.equal(t.vouching, null);
    });

    it('a chain that does not validate is never trusted', () => {
        for (const result of ['fail', 'none'] as const) {
            const t = evaluateArcTrust({
                ...base,
                result,
                hops: [hop(1, 'google.com', 'g; dmarc=pass header.from=bank.example')],
            });
            assert.equal(t.trusted, false);
            assert.equal(t.vouching, null);
        }
    });
});
