/**
 * Judges a fault run from what the client recorded, what Postfix delivered and what mailwarden
 * logged: per recipient, delivered or refused as a healthy system would, lost, or delivered twice
 * (inside the documented window or not), and prints the per-fault report. It only reads.
 */
import type { FaultEvent } from './catalogue.ts';
import type { Delivery } from './mailbox.ts';
import type { MailwardenProcess } from './mailwarden-process.ts';
import type { MessageRecord } from './mta-client.ts';

export interface FaultReport {
    readonly fault: string;
    readonly messages: number;
    readonly recipients: number;
    /** Recipients delivered (Maildir), of those a healthy system delivers. */
    readonly delivered: number;
    /** Recipients refused with the 5xx a healthy system gives (unknown user). */
    readonly refused5xx: number;
    /** Recipients refused with a 5xx a healthy system does not give: a fault's 5xx. */
    readonly unexpected5xx: number;
    /** Attempts beyond the first per message. */
    readonly retries: number;
    /** Temporary failures seen by the client, by reply code. */
    readonly tempfails: Readonly<Record<string, number>>;
    /** Connections that dropped during an attempt, by the step it was at. */
    readonly dropped: Readonly<Record<string, number>>;
    readonly duplicatesInWindow: number;
    readonly duplicatesOutsideWindow: number;
    /** Extra copies Postfix delivered from one queue file (its own window after a crash). */
    readonly postfixRedeliveries: number;
    /** `duplicateRisk` log lines of mailwarden. */
    readonly duplicateRiskLogged: number;
    /** Recipients neither delivered nor refused with a 5xx. */
    readonly lost: number;
    /** Recipients the client got a 250 for that Postfix never delivered (counted in `lost` too). */
    readonly acceptedNotDelivered: number;
    /** Recipients delivered that a healthy system refuses. */
    readonly deliveredUnexpectedly: number;
    readonly spoolFilesLeft: number;
    /** `mailwarden_redis_errors_total` at the end of a run with limits in Redis (null without). */
    readonly redisErrors: number | null;
    readonly injected: Readonly<Record<string, number>>;
    readonly events: readonly FaultEvent[];
    /** Problems that fail the run (beyond the counts above), e.g. a SIGTERM exit that was not 0. */
    readonly problems: readonly string[];
    readonly seconds: number;
    readonly ok: boolean;
    /** Details of what failed, for the reader of a failed run. */
    readonly details: readonly string[];
}

/** The messageIds mailwarden flagged with `duplicateRisk` (the flagged line, or its session's last decision). */
export function duplicateRisks(logs: MailwardenProcess['logs']): Map<string, number> {
    const lastDecision = new Map<string, string>();
    const out = new Map<string, number>();
    for (const { run, line } of logs) {
        const session = `${run}/${String(line.session)}`;
        if (line.msg === 'decision' && typeof line.messageId === 'string') lastDecision.set(session, line.messageId);
        if (line.duplicateRisk === true) {
            const id = typeof line.messageId === 'string' ? line.messageId : lastDecision.get(session);
            if (id) out.set(id, (out.get(id) ?? 0) + 1);
        }
    }
    return out;
}

/** Judges one run: counts per recipient, duplicates in and outside the window. */
export function judge(
    fault: string,
    records: readonly MessageRecord[],
    deliveries: ReadonlyMap<string, readonly Delivery[]>,
    risks: ReadonlyMap<string, number>,
    events: readonly FaultEvent[],
): Omit<FaultReport, 'spoolFilesLeft' | 'redisErrors' | 'injected' | 'problems' | 'seconds' | 'ok'> {
    const kills = events.filter((e) => e.kind === 'mailwarden-sigkill').map((e) => e.at);
    const postfixCrashed = events.some((e) => e.kind === 'postfix-crash');
    let recipients = 0;
    let delivered = 0;
    let refused5xx = 0;
    let unexpected5xx = 0;
    let lost = 0;
    let acceptedNotDelivered = 0;
    let deliveredUnexpectedly = 0;
    let inWindow = 0;
    let outside = 0;
    let redeliveries = 0;
    let retries = 0;
    const tempfails: Record<string, number> = {};
    const dropped: Record<string, number> = {};
    const details: string[] = [];
    for (const r of records) {
        const m = r.message;
        retries += Math.max(0, r.attempts.length - 1);
        for (const a of r.attempts) {
            if (a.outcome === 'tempfail' && a.code) tempfails[a.code] = (tempfails[a.code] ?? 0) + 1;
            if (a.outcome === 'dropped') dropped[a.step] = (dropped[a.step] ?? 0) + 1;
        }
        // Copies allowed beyond the first: one per duplicateRisk line, one per SIGKILL that
        // struck while the client waited for the answer to its end of data.
        const killedInWindow = r.attempts.filter(
            (a) =>
                a.terminatorAt !== null &&
                a.outcome === 'dropped' &&
                kills.some((k) => k >= a.terminatorAt! && k <= a.end),
        ).length;
        const allowed = (risks.get(m.messageId) ?? 0) + killedInWindow;
        const copies = deliveries.get(m.token) ?? [];
        for (const spec of m.rcpts) {
            recipients++;
            const user = spec.address.split('@')[0]!;
            const state = r.rcpts.get(spec.address)!;
            const mine = copies.filter((d) => d.user === user);
            const queueIds = new Set(mine.map((d) => d.queueId ?? `?${d.file}`));
            const sameFile = mine.length - queueIds.size;
            const extra = queueIds.size - 1;
            if (spec.expect === 'deliver') {
                if (mine.length > 0) delivered++;
                if (state.state === 'refused') {
                    unexpected5xx++;
                    details.push(`${m.messageId} ${spec.address}: refused ${state.refusal ?? ''}`);
                } else if (mine.length === 0) {
                    lost++;
                    if (state.state === 'accepted') acceptedNotDelivered++;
                    details.push(
                        `${m.messageId} ${spec.address}: lost (client state ${state.state}); ${describeAttempts(r)}`,
                    );
                }
            } else if (state.state === 'refused') {
                refused5xx++;
                if (!/^55\d /.test(state.refusal ?? '')) {
                    unexpected5xx++;
                    details.push(`${m.messageId} ${spec.address}: refused with ${state.refusal ?? ''}`);
                }
            } else if (mine.length > 0) {
                deliveredUnexpectedly++;
            } else {
                lost++;
                details.push(`${m.messageId} ${spec.address}: never refused (client state ${state.state})`);
            }
            if (sameFile > 0) {
                redeliveries += sameFile;
                if (!postfixCrashed) {
                    outside += sameFile;
                    details.push(
                        `${m.messageId} ${spec.address}: Postfix delivered one queue file ${sameFile + 1} times`,
                    );
                }
            }
            if (extra > 0) {
                const ok = Math.min(extra, allowed);
                inWindow += ok;
                outside += extra - ok;
                if (extra > ok) {
                    details.push(
                        `${m.messageId} ${spec.address}: ${extra + 1} copies (queue ids ${[...queueIds].join(' ')}), ` +
                            `${allowed} in the window; ${describeAttempts(r)}`,
                    );
                }
            }
        }
    }
    return {
        fault,
        messages: records.length,
        recipients,
        delivered,
        refused5xx,
        unexpected5xx,
        retries,
        tempfails,
        dropped,
        duplicatesInWindow: inWindow,
        duplicatesOutsideWindow: outside,
        postfixRedeliveries: redeliveries,
        duplicateRiskLogged: [...risks.values()].reduce((a, b) => a + b, 0),
        lost,
        acceptedNotDelivered,
        deliveredUnexpectedly,
        events,
        details,
    };
}

function describeAttempts(r: MessageRecord): string {
    const t0 = r.attempts[0]?.start ?? 0;
    return r.attempts
        .map(
            (a) =>
                `[+${a.start - t0}ms ${a.outcome} at ${a.step}${a.code ? ` ${a.code}` : ''}${
                    a.terminatorAt ? ` eod+${a.terminatorAt - t0}ms` : ''
                } end+${a.end - t0}ms]`,
        )
        .join(' ');
}

/** The per-fault table of a run. */
export function formatReports(reports: readonly FaultReport[]): string {
    const head = [
        'fault',
        'msgs',
        'rcpts',
        'delivered',
        'refused 5xx',
        'retries',
        'dup in window',
        'dup outside',
        'lost',
        'result',
    ];
    const rows = reports.map((r) => [
        r.fault,
        String(r.messages),
        String(r.recipients),
        String(r.delivered),
        String(r.refused5xx),
        String(r.retries),
        String(r.duplicatesInWindow),
        String(r.duplicatesOutsideWindow),
        String(r.lost),
        r.ok ? 'ok' : 'FAILED',
    ]);
    const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
    const line = (cells: string[]): string => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
    const out = [line(head), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.map(line), ''];
    for (const r of reports) {
        const kv = (o: Readonly<Record<string, number>>): string =>
            Object.entries(o)
                .sort(([a], [b]) => a.localeCompare(b))
                .map(([k, v]) => `${k} ×${v}`)
                .join(', ') || 'none';
        out.push(`${r.fault} (${r.seconds} s)`);
        out.push(`  injected:  ${kv(r.injected)}`);
        out.push(`  tempfails: ${kv(r.tempfails)}`);
        out.push(`  dropped:   ${kv(r.dropped)}`);
        out.push(
            `  duplicateRisk logged ${r.duplicateRiskLogged}, Postfix redeliveries ${r.postfixRedeliveries}, ` +
                `unexpected 5xx ${r.unexpected5xx}, accepted but not delivered ${r.acceptedNotDelivered}, ` +
                `spool files left ${r.spoolFilesLeft}${r.redisErrors === null ? '' : `, Redis errors ${r.redisErrors}`}`,
        );
        for (const p of r.problems) out.push(`  PROBLEM: ${p}`);
        for (const d of r.details.slice(0, 20)) out.push(`  ${d}`);
    }
    return out.join('\n');
}
