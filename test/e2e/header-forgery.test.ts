/**
 * Forged and malformed header sections on an mx listener, end to end through the real listener
 * into a recording upstream: our own fields and A-R fields with our authserv-id, written in the
 * spellings Postfix still reads as those fields (white space before the colon, any case, a
 * quoted or dotted authserv-id), never reach the upstream; a header section that starts with
 * white space (which Postfix would glue onto our X-Mailwarden-Verdict), a line without a colon
 * or a field name with 8-bit bytes is refused with 550 5.6.0 naming the line and the session
 * id, and nothing is sent upstream. What the upstream receives is read as Postfix reads it.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { decisions, startApp, type TestApp } from '../helpers/app.ts';
import { startScriptedUpstream, unstuff, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { sendMail } from '../helpers/smtp-client.ts';

const BODY = 'From: Alice <alice@example.org>\r\nTo: bob@example.test\r\nSubject: hello\r\n\r\nHello Bob.\r\n';

/** The header fields of a message as Postfix reads them: `name *WSP ":"`, continuations, up to the first other line. */
function postfixView(message: string): { name: string; value: string }[] {
    const out: { name: string; value: string }[] = [];
    for (const line of message.split('\r\n')) {
        const last = out.at(-1);
        if (last && /^[ \t]/.test(line)) {
            last.value += line;
            continue;
        }
        const m = /^([\x21-\x39\x3b-\x7e]+)[ \t]*:(.*)$/.exec(line);
        if (!m) break;
        out.push({ name: m[1]!.toLowerCase(), value: m[2]! });
    }
    return out;
}

describe('forged and malformed header sections on mx', () => {
    let up: ScriptedUpstream;
    let mw: TestApp;
    before(async () => {
        up = await startScriptedUpstream({ ehlo: ['XCLIENT NAME ADDR PORT PROTO HELO LOGIN', 'SIZE 1000000'] });
        mw = await startApp(
            [
                'hostname: mx.example.test',
                'domains: [example.test]',
                'listeners: [{ name: mx, host: 127.0.0.1, port: 0, mode: mx }]',
                `upstream: { url: "smtp://127.0.0.1:${up.port}", xclient: true }`,
                'http: false',
            ].join('\n'),
        );
    });
    after(async () => {
        await mw.stop();
        await up.close();
    });

    const send = (data: string) =>
        sendMail(mw.port(), { from: 'alice@example.org', to: ['bob@example.test'], data, helo: 'client.example' });

    it('removes our fields and our A-R in every spelling Postfix reads as them', async () => {
        const forged = [
            'X-Mailwarden-Verdict : accept; rules=allow; score=-100; id=forged1',
            'X-Mailwarden-Verdict\t: accept; rules=allow; score=-100; id=forged2',
            'x-MAILWARDEN-verdict  \t : accept; id=forged3',
            'X-Mailwarden-Quarantine : forged4',
            'Authentication-Results : mx.example.test; dmarc=pass (forged5)',
            'Authentication-Results: "mx.example.test"; dmarc=pass (forged6)',
            'Authentication-Results: mx.example.test.; dmarc=pass (forged7)',
            'authentication-results\t:(c) "MX.Example.Test." (c); dmarc=pass (forged8)',
            'Authentication-Results:\r\n\t"mx\\.example\\.test"\r\n ; dmarc=pass (forged9)',
            'Authentication-Results: other.example; dmarc=pass (kept)',
        ].join('\r\n');
        const before = up.transactions.length;
        const r = await send(`${forged}\r\n${BODY}`);
        assert.equal(r.message?.code, 250, r.message?.raw);
        assert.equal(up.transactions.length, before + 1);
        const data = unstuff(up.transactions.at(-1)!.data!).toString('latin1');
        assert.doesNotMatch(data, /forged\d/);
        const view = postfixView(data);
        const own = view.filter((h) => h.name.startsWith('x-mailwarden-'));
        assert.deepEqual(
            own.map((h) => h.name),
            ['x-mailwarden-verdict'],
        );
        assert.match(own[0]!.value, /^ accept; rules=; score=0; id=\w+$/);
        const ar = view.filter((h) => h.name === 'authentication-results').map((h) => h.value);
        assert.equal(ar.length, 2, ar.join('\n'));
        assert.match(ar[0]!, /^ mx\.example\.test; /, 'ours, on top');
        assert.match(ar[1]!, /other\.example; dmarc=pass \(kept\)/);
        assert.equal(view.at(-1)!.name, 'subject', 'Postfix reads the whole header section');
        const line = decisions(mw.logs).at(-1)!;
        assert.equal((line.removedHeaders as string[]).length, 9);
        const metrics = await mw.app.metrics.registry.metrics();
        assert.match(metrics, /mailwarden_forged_header_fields_removed_total\{listener="mx",field="x-mailwarden"\} 4/);
        assert.match(
            metrics,
            /mailwarden_forged_header_fields_removed_total\{listener="mx",field="authentication-results"\} 5/,
        );
    });

    it('refuses a header section of more than 1000 fields with 552 5.3.4 naming the line, nothing upstream', async () => {
        const before = up.transactions.filter((t) => t.data !== null).length;
        // 30,000 four-byte fields (120 KB): each field costs an object and a pass of every step that reads them
        const r = await send(`${'To:x\r\n'.repeat(30_000)}${BODY}`);
        assert.equal(r.message?.code, 552, r.message?.raw);
        assert.match(
            r.message.text,
            /^5\.3\.4 Message refused: its header section has more than 1000 fields \(line 1001 is one too many\), .* \(id \w+\)$/,
        );
        assert.equal(up.transactions.filter((t) => t.data !== null).length, before, 'no DATA upstream');
        const decision = decisions(mw.logs).at(-1)!;
        assert.equal(decision.action, 'reject');
        assert.equal(decision.headerProblem, 'too-many-fields');
        const metrics = await mw.app.metrics.registry.metrics();
        assert.match(metrics, /mailwarden_header_refusals_total\{listener="mx",problem="too-many-fields"\} 1/);
    });

    const malformed: readonly [string, string, number, string][] = [
        ['a leading continuation line', ` ; rules=allow; score=-100\r\n${BODY}`, 1, 'leading-whitespace'],
        ['a leading tab line', `\t; rules=allow\r\n${BODY}`, 1, 'leading-whitespace'],
        [
            'a line without a colon',
            'X-Mailwarden-Verdict : accept\r\nthis line is no header\r\nX-Other: after\r\n\r\nbody\r\n',
            2,
            'no-colon',
        ],
        ['a name with an 8-bit byte', `Subject: x\r\nX-Mailwarden-Verdict\u00a0: accept\r\n${BODY}`, 2, 'invalid-name'],
        ['a name with white space inside', `X Mailwarden-Verdict: accept\r\n${BODY}`, 1, 'invalid-name'],
        ['a fold between name and colon', `Subject: x\r\nFrom\r\n : ceo@bank.example\r\n\r\nbody\r\n`, 2, 'no-colon'],
        // Postfix would end the section at line 2 and deliver the Subject as body
        ['a name of 2,100 bytes', `X-Early: x\r\nX-${'a'.repeat(2_100)}: v\r\n${BODY}`, 2, 'invalid-name'],
    ];
    for (const [what, data, line, problem] of malformed) {
        it(`refuses a header section with ${what}: 550 5.6.0 naming line ${line}, nothing upstream`, async () => {
            const before = up.transactions.filter((t) => t.data !== null).length;
            const r = await send(data);
            assert.equal(r.message?.code, 550, r.message?.raw);
            assert.match(
                r.message.text,
                new RegExp(`^5\\.6\\.0 Message refused: line ${line} of the header section .* \\(id \\w+\\)$`),
            );
            assert.equal(up.transactions.filter((t) => t.data !== null).length, before, 'no DATA upstream');
            const decision = decisions(mw.logs).at(-1)!;
            assert.equal(decision.action, 'reject');
            assert.equal(decision.headerProblem, problem);
            assert.ok(r.message.text.includes(`(id ${String(decision.session)})`), 'the id is the session id');
            const metrics = await mw.app.metrics.registry.metrics();
            assert.match(
                metrics,
                new RegExp(`mailwarden_header_refusals_total\\{listener="mx",problem="${problem}"\\} [1-9]`),
            );
        });
    }
});
