/**
 * `mailwarden explain`: runs every check and rule on a message file without sending it, and
 * prints the facts, each rule considered (matched or not, and why), the decision, the SMTP
 * reply the client would get and the header fields that would be added (SPEC, "Commands").
 * It uses the same checks, rules, relay control and header code as the live proxy, with the
 * configured DNS; it never connects to the upstream and changes no state. A message larger than
 * `spool.memoryLimit` goes to a spool file as in the live proxy, but in a temporary folder of its
 * own (mode 0700), removed when it ends, a signal included: it never creates, cleans or writes
 * to the service's `spool.dir`, whose files belong to the running proxy (and often to its user).
 * Operator errors (an unknown listener, no temporary folder) are one line on stderr, exit 1.
 * The session is encrypted (the `tls` fact, ESMTPS in Received) as `--tls`/`--no-tls` say, else
 * as serve's would be: always on an implicit-TLS listener, on a submission listener and with a
 * login (serve offers AUTH only over TLS), not on an mx listener; a state serve never reaches
 * (a login in clear text, no TLS on an implicit-TLS listener, TLS where none is offered) is a
 * usage error, exit 2.
 */
import { rmSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { Readable } from 'node:stream';
import { parseArgs } from 'node:util';
import { defaultChecks } from '../checks/index.ts';
import { ConfigError, loadConfig } from '../config/load.ts';
import type { Config, ListenerConfig } from '../config/types.ts';
import { MessageSpool, SpoolMemory } from '../data/spool.ts';
import { parseEnvelopeCommand, type EnvelopeParse } from '../envelope/command.ts';
import { syntaxRefusal } from '../envelope/gate.ts';
import { relayPolicy } from '../envelope/relay.ts';
import { createResolver } from '../dns/resolver.ts';
import { createMemoryStore } from '../limits/memory-store.ts';
import { formatField } from '../headers.ts';
import { headerStep } from '../incoming-header.ts';
import { messageFacts } from '../message-facts.ts';
import { createMetrics } from '../metrics.ts';
import { isIp, plainAddress } from '../net/ip.ts';
import { runStage, type CheckOutcome, type StageResult } from '../pipeline.ts';
import { formatReply, replyFor } from '../reply.ts';
import { createReputationService } from '../reputation/service.ts';
import { RuleError, loadRuleSet, ruleOptions, type RuleSet, type TraceEntry } from '../rules/index.ts';
import { createSubmissionAuth } from '../submission/index.ts';
import {
    MAX_HEADER_SECTION,
    MessageFlow,
    type FlowClient,
    type ProtocolRefusal,
    type Transaction,
} from '../transaction.ts';
import type {
    Decider,
    Decision,
    Facts,
    FactValue,
    HeaderField,
    SmtpReply,
    Stage,
    CheckContext,
    ClientIdentity,
} from '../types.ts';
import { VERSION } from '../version.ts';

export interface ExplainIo {
    readonly out: (text: string) => void;
    readonly err: (text: string) => void;
    readonly env: NodeJS.ProcessEnv;
    readonly resolveConfigPath: (flag: string | undefined) => string | null;
}

interface StageReport {
    readonly stage: Stage;
    readonly facts: Facts;
    readonly checks: readonly CheckOutcome[];
    readonly rules: readonly TraceEntry[];
    readonly decision: Decision;
}

export interface ExplainReport {
    readonly version: string;
    readonly stages: readonly StageReport[];
    readonly decision: Decision;
    readonly reply: SmtpReply;
    readonly headers: readonly HeaderField[];
    /** Where the message stopped: the stage of a refusal, or `data` when it would be forwarded. */
    readonly stoppedAt: Stage;
    /** The DNS lists of `reputation:` and whether their health probe passed (unhealthy lists are not asked). */
    readonly lists: readonly { zone: string; kind: string; healthy: boolean; reason: string }[];
}

/**
 * A problem the operator can fix (a listener name, the temporary folder, options that describe a
 * session serve never has): said in one line, without a stack; exit 1, or 2 for the options.
 */
export class ExplainError extends Error {
    readonly exitCode: 1 | 2;

    constructor(message: string, exitCode: 1 | 2 = 1) {
        super(message);
        this.exitCode = exitCode;
    }
}

/** The private spool folders of explanations under way, for `runExplain` to remove if a signal ends it. */
const privateSpools = new Set<string>();

/** The signals that end the command; each removes the private spool folders first. */
const ENDING_SIGNALS: readonly NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

/** A new, empty spool folder of explain's own under the OS temporary folder (mkdtemp: mode 0700). */
async function privateSpoolFolder(): Promise<string> {
    try {
        const dir = await mkdtemp(join(tmpdir(), 'mailwarden-explain-'));
        privateSpools.add(dir);
        return dir;
    } catch (err) {
        throw new ExplainError(
            `cannot make a temporary spool folder in ${tmpdir()} (set TMPDIR to a writable folder): ${err instanceof Error ? err.message : String(err)}`,
        );
    }
}

const USAGE =
    'usage: mailwarden explain [-c FILE] --client-ip IP [--helo NAME] --mail-from ADDR --rcpt ADDR [--rcpt ADDR…] ' +
    '[--listener NAME] [--auth-user USER] [--tls | --no-tls] [--raw] [--json] MESSAGE.eml';

/** `explain --help`: the usage line and what each option means. */
export const EXPLAIN_HELP = `${USAGE}

Runs every check and rule on MESSAGE.eml without sending it anywhere, and prints the facts,
each rule considered and whether it matched, the decision, the SMTP reply and the header
fields that would be added. Limits are counted on a fresh store, as for a first message.

Options:
  -c, --config FILE   configuration file (else $MAILWARDEN_CONFIG, else ./mailwarden.yaml,
                      else the embedded defaults)
  --client-ip IP      address of the connecting client (required)
  --helo NAME         name the client gives in HELO/EHLO
  --mail-from ADDR    envelope sender (required; "" for the null sender of bounces)
  --rcpt ADDR         envelope recipient (required; repeat it for several)
  --listener NAME     listener the message arrives on (default: the first one)
  --auth-user USER    SMTP AUTH login, as on a submission listener
  --tls, --no-tls     whether the session is encrypted (STARTTLS or implicit TLS): the tls
                      fact and ESMTPS in Received. Default: yes on a submission or implicit-TLS
                      listener and with --auth-user (serve takes a login only over TLS), no on
                      an mx listener with STARTTLS or none
  --raw               take the file byte for byte; without it, a file with no CR at all (as
                      postcat and most saved .eml files write them) is read with CRLF line
                      ends, as the message crossed SMTP, and a note says so
  --json              print the report as JSON
  -h, --help          show this text
`;

/** What explain is told about the transaction (the command line's options). */
export interface ExplainInput {
    readonly clientIp: string;
    readonly helo: string | null;
    readonly mailFrom: string;
    readonly rcpts: readonly string[];
    readonly listener: string | null;
    readonly authUser: string | null;
    /** Whether the session is encrypted; left out: as serve's session would be (sessionTls). */
    readonly tls?: boolean;
    readonly message: Buffer;
}

/**
 * Whether the explained session is encrypted: `asked` (--tls, --no-tls) when serve can have
 * such a session, else an ExplainError (exit 2); by default as serve's would be.
 */
export function sessionTls(listener: ListenerConfig, authUser: string | null, asked: boolean | undefined): boolean {
    if (asked === false && listener.tls === 'implicit') {
        throw new ExplainError(`--no-tls: listener ${listener.name} uses implicit TLS, every session is encrypted`, 2);
    }
    if (asked === false && authUser !== null) {
        throw new ExplainError('--no-tls with --auth-user: serve takes a login only over TLS', 2);
    }
    if (asked === true && listener.tls === 'none') {
        throw new ExplainError(`--tls: listener ${listener.name} offers no TLS (tls: none)`, 2);
    }
    return asked ?? (listener.tls === 'implicit' || listener.mode === 'submission' || authUser !== null);
}

/**
 * Runs the pipeline on one message; exported for tests. A message bigger than the memory limit
 * is read through a spool file, as serve does, but in a folder of explain's own, removed at the
 * end whatever happens: the service's spool folder and its files are never touched.
 */
export async function explainMessage(config: Config, ruleSet: RuleSet, input: ExplainInput): Promise<ExplainReport> {
    const spoolDir = await privateSpoolFolder();
    try {
        return await explainWith(spoolDir, config, ruleSet, input);
    } finally {
        await rm(spoolDir, { recursive: true, force: true });
        privateSpools.delete(spoolDir);
    }
}

async function explainWith(
    spoolDir: string,
    config: Config,
    ruleSet: RuleSet,
    input: ExplainInput,
): Promise<ExplainReport> {
    const listener = input.listener ? config.listeners.find((l) => l.name === input.listener) : config.listeners[0];
    if (!listener) {
        throw new ExplainError(
            `no listener named ${input.listener ?? ''} in the configuration (${config.listeners.map((l) => l.name).join(', ')})`,
        );
    }
    const tls = sessionTls(listener, input.authUser, input.tls);
    const resolver = createResolver({ servers: config.dns.servers, timeoutMs: config.dns.timeoutMs });
    const metrics = createMetrics(VERSION);
    // limits are evaluated against a fresh in-memory store: explain shows what a first message
    // from this client would meet, and never charges the counters of the running proxy
    const store = createMemoryStore();
    // the DNS lists are probed first, as serve does before its first client: a list whose
    // probe fails is not asked, and the report says why
    const reputation = createReputationService(config, {
        resolve: resolver.resolve,
        reverse: resolver.reverse,
        metrics,
        log: { info: () => undefined, warn: () => undefined },
        now: Date.now,
    });
    await reputation.start(2 * config.dns.timeoutMs);
    reputation.stop();
    const lists = reputation.health.states().map((s) => ({
        zone: s.site.zone,
        kind: s.kind,
        healthy: s.state.healthy,
        reason: s.state.reason,
    }));
    const checks = defaultChecks(
        config,
        resolver,
        metrics,
        { store, declarations: () => ruleSet, metrics, now: Date.now, instanceId: 'explain' },
        reputation.check,
    );
    // submission: the login's sender binding, from the same users (or sendAs) file the proxy reads
    const auth =
        listener.mode === 'submission' && input.authUser !== null && config.auth !== null
            ? createSubmissionAuth(config.auth)
            : null;
    const binding =
        auth && input.authUser !== null ? { login: input.authUser, policy: auth.sendAs(input.authUser) } : null;
    const stages: StageReport[] = [];
    let trace: readonly TraceEntry[] = [];
    const tracing: Decider = {
        decide(stage, facts) {
            const r = ruleSet.evaluate(stage, facts, { trace: true });
            // rule files named relative to the rules folder, as `mailwarden check` does
            trace = r.trace.map((t) => ({ ...t, file: relative(ruleSet.dir, t.file) || t.file }));
            return r.decision;
        },
    };
    const sessionId = 'explain';
    // the same message flow as the live session (transaction.ts); only the I/O differs
    const flow = new MessageFlow(sessionId, listener);
    let identity: ClientIdentity = {
        ip: input.clientIp,
        port: 0,
        ptr: null,
        helo: input.helo,
        proto: 'ESMTP',
        login: input.authUser,
    };
    const client = (): FlowClient => ({ identity, tls });
    const spool = new MessageSpool({
        memoryLimit: config.spool.memoryLimit,
        memory: new SpoolMemory(),
        dir: spoolDir,
        maxSize: listener.maxMessageSize,
        maxHeaderSize: MAX_HEADER_SECTION,
    });
    try {
        const run = async (
            stage: Stage,
            facts: Facts,
            message: CheckContext['message'] = null,
        ): Promise<StageResult> => {
            trace = [];
            const r = await runStage(stage, checks, { ...flow.context(facts, identity), message }, tracing);
            stages.push({ stage, facts: r.facts, checks: r.checks, rules: trace, decision: r.decision });
            return r;
        };
        const stop = (stage: Stage, decision: Decision, reply: SmtpReply | null): ExplainReport | null =>
            reply ? { version: VERSION, stages, decision, reply, headers: [], stoppedAt: stage, lists } : null;
        const refused = (stage: Stage, tx: Transaction | null, r: ProtocolRefusal): ExplainReport =>
            stop(stage, MessageFlow.refusedBeforeRules(flow.score(tx), r.reason), r.reply)!;
        /** What the live session answers a MAIL or RCPT that does not parse, and why (envelope/gate.ts). */
        const syntaxRefused = (
            step: 'mail' | 'rcpt',
            parse: Extract<EnvelopeParse, { ok: false }>,
        ): ProtocolRefusal => {
            const { refusal, reply } = syntaxRefusal(step, parse, sessionId);
            return { reason: `envelope: ${refusal}`, reply };
        };

        const connect = await run('connect', flow.connectStageFacts(client()));
        let stopped = stop('connect', connect.decision, flow.refusal('connect', connect.decision));
        if (stopped) return stopped;
        flow.connected(connect);
        const helo = await run('helo', flow.heloStageFacts(client()));
        if ((stopped = stop('helo', helo.decision, flow.refusal('helo', helo.decision)))) return stopped;
        // the reverse name is known from the helo stage on (the iprev check runs there)
        identity = { ...identity, ...flow.heloDone(helo) };
        // the addresses as the live session reads them: parsed strictly, then in canonical form
        const sender = parseEnvelopeCommand('mail', Buffer.from(`MAIL FROM:<${input.mailFrom}>`, 'utf8'));
        if (!sender.ok) return refused('mail', null, syntaxRefused('mail', sender));
        const mailFrom = sender.mailbox.address;
        const notOwned = flow.senderRefusal(binding, mailFrom);
        if (notOwned) return refused('mail', null, notOwned);
        const mail = await run('mail', flow.mailStageFacts(client(), mailFrom));
        if ((stopped = stop('mail', mail.decision, flow.refusal('mail', mail.decision)))) return stopped;
        const tx = flow.begin(mail, {
            mailFrom,
            smtputf8: false,
            sizeLimit: listener.maxMessageSize,
        });
        const relay = relayPolicy(config, listener);
        for (const to of input.rcpts) {
            // relay control comes before the rcpt rules, as in the live session
            const parsed = parseEnvelopeCommand('rcpt', Buffer.from(`RCPT TO:<${to}>`, 'utf8'));
            if (!parsed.ok) return refused('rcpt', tx, syntaxRefused('rcpt', parsed));
            const decision = relay.decide(parsed.mailbox, input.authUser !== null);
            if (decision.verdict === 'refused') {
                const domain = parsed.mailbox.asciiDomain ?? '';
                return refused('rcpt', tx, {
                    reason: `relaying denied: ${domain} is not in domains or relayDomains`,
                    reply: flow.withId(replyFor('relay-denied', { id: sessionId, domain })),
                });
            }
            if (decision.verdict === 'routed') {
                const domain = decision.routedDomain ?? '';
                return refused('rcpt', tx, {
                    reason: `relaying denied: the local part routes the message on to ${domain || 'a destination that is not a domain name'} (sender-specified routing)`,
                    reply: flow.withId(replyFor('relay-routing-denied', { id: sessionId, domain })),
                });
            }
            if (decision.verdict === 'routing') {
                return refused('rcpt', tx, {
                    reason: 'sender-specified routing in the local part (it stays within our domains)',
                    reply: flow.withId(replyFor('sender-routing-refused', { id: sessionId })),
                });
            }
            const recipient = parsed.mailbox.address;
            const rcpt = await run('rcpt', flow.rcptStageFacts(tx, recipient));
            if ((stopped = stop('rcpt', rcpt.decision, flow.refusal('rcpt', rcpt.decision)))) return stopped;
            flow.recipientAccepted(tx, recipient, rcpt);
        }

        const summary = await spool.ingest(Readable.from([input.message]));
        const protocol = flow.protocolRefusal(summary, tx.sizeLimit);
        if (protocol) return refused('data', tx, protocol);
        const header = headerStep({
            section: await spool.readBuffer(0, summary.headerLength),
            authservId: config.hostname,
            sessionId,
            binding,
        });
        if (!header.ok) return refused('data', tx, { reason: header.reason, reply: flow.headerRefusal(header.reply) });
        const { kept } = header;
        const data = await run('data', flow.dataStageFacts(tx, messageFacts(kept, summary)), {
            stream: () => spool.read(0, summary.size),
            size: summary.size,
        });
        const verdict = flow.finish(tx, data);
        if ((stopped = stop('data', verdict.decision, verdict.refusal))) return stopped;
        const headers = flow.headers(verdict, tx, data.headers, {
            helo: input.helo,
            ip: input.clientIp,
            ptr: identity.ptr,
            hostname: config.hostname,
            // RFC 3848, as the live session names it: S for TLS, A for a login
            protocol: `ESMTP${tls ? 'S' : ''}${input.authUser ? 'A' : ''}`,
            id: sessionId,
            tlsCipher: null,
            date: new Date(),
        });
        const ok = replyFor('accepted', { id: sessionId, queueId: null });
        return { version: VERSION, stages, decision: verdict.decision, reply: ok, headers, stoppedAt: 'data', lists };
    } finally {
        await Promise.all(checks.map((c) => (c.end ? c.end(sessionId).catch(() => undefined) : Promise.resolve())));
        await spool.dispose();
        await store.close();
        resolver.close();
        auth?.close();
    }
}

function show(value: FactValue | undefined): string {
    if (value === null || value === undefined) return 'null';
    if (Array.isArray(value)) return `[${value.join(', ')}]`;
    return typeof value === 'string' ? JSON.stringify(value) : String(value);
}

/** The report as text for people. */
export function renderReport(report: ExplainReport): string {
    const lines: string[] = [];
    if (report.lists.length > 0) {
        lines.push('dns lists:');
        for (const l of report.lists) {
            lines.push(`  ${l.zone} (${l.kind}): ${l.healthy ? 'healthy, asked' : `disabled, not asked: ${l.reason}`}`);
        }
        lines.push('');
    }
    for (const s of report.stages) {
        lines.push(`== ${s.stage} ==`);
        if (s.checks.length > 0) {
            lines.push(
                `checks: ${s.checks.map((c) => `${c.name} ${c.ms} ms${c.error ? ` (error: ${c.error})` : ''}`).join(', ')}`,
            );
        }
        lines.push('facts:');
        for (const key of Object.keys(s.facts).sort()) lines.push(`  ${key} = ${show(s.facts[key])}`);
        lines.push(s.rules.length === 0 ? 'rules: none for this stage' : 'rules:');
        for (const r of s.rules) {
            const mark = r.skipped ? '-' : r.matched ? (r.mode === 'monitor' ? '~' : '+') : ' ';
            const state = r.skipped
                ? 'not evaluated (an earlier rule decided)'
                : r.matched
                  ? r.mode === 'monitor'
                      ? `matched, monitor only: would ${r.action}`
                      : `matched: ${r.action}`
                  : 'no match';
            lines.push(`  ${mark} ${r.id} (${r.file}:${r.line}) ${state}`);
            if (!r.skipped && r.detail) lines.push(`      ${r.detail}`);
        }
        lines.push(`decision: ${s.decision.action} (${s.decision.reason})`, '');
    }
    lines.push(`== result ==`);
    lines.push(
        `decision: ${report.decision.action}; rules: ${report.decision.rules.join(', ') || 'none'}; score ${report.decision.score}`,
    );
    lines.push(`stopped at: ${report.stoppedAt}`);
    lines.push(`reply: ${formatReply(report.reply)}`);
    if (report.headers.length === 0) lines.push('headers added: none (the message would not be forwarded)');
    else {
        lines.push('headers added:');
        for (const h of report.headers)
            lines.push(
                ...formatField(h)
                    .trimEnd()
                    .split('\r\n')
                    .map((l) => `  ${l}`),
            );
    }
    return `${lines.join('\n')}\n`;
}

/** A file with line feeds and not a single carriage return: text saved with Unix line ends. */
function isUnixText(message: Buffer): boolean {
    return message.includes(0x0a) && !message.includes(0x0d);
}

export async function runExplain(argv: readonly string[], io: ExplainIo): Promise<number> {
    let parsed;
    try {
        parsed = parseArgs({
            args: [...argv],
            allowPositionals: true,
            options: {
                config: { type: 'string', short: 'c' },
                'client-ip': { type: 'string' },
                helo: { type: 'string' },
                'mail-from': { type: 'string' },
                rcpt: { type: 'string', multiple: true },
                listener: { type: 'string' },
                'auth-user': { type: 'string' },
                tls: { type: 'boolean' },
                'no-tls': { type: 'boolean' },
                raw: { type: 'boolean' },
                json: { type: 'boolean' },
                help: { type: 'boolean', short: 'h' },
            },
        });
    } catch (err) {
        io.err(`mailwarden explain: ${err instanceof Error ? err.message : String(err)}\n${USAGE}\n`);
        return 2;
    }
    const v = parsed.values;
    if (v.help) {
        io.out(EXPLAIN_HELP);
        return 0;
    }
    const file = parsed.positionals[0];
    if (!v['client-ip'] || v['mail-from'] === undefined || !v.rcpt?.length || !file) {
        io.err(`${USAGE}\n`);
        return 2;
    }
    if (v.tls && v['no-tls']) {
        io.err(`mailwarden explain: --tls and --no-tls together\n${USAGE}\n`);
        return 2;
    }
    let config: Config;
    let ruleSet: RuleSet;
    try {
        config = loadConfig(io.resolveConfigPath(v.config), io.env);
        ruleSet = loadRuleSet(config.rules, ruleOptions(config));
    } catch (err) {
        if (err instanceof ConfigError || err instanceof RuleError) {
            io.err(`${err.message}\n`);
            return 1;
        }
        throw err;
    }
    let message: Buffer;
    try {
        message = await readFile(file);
    } catch (err) {
        io.err(`mailwarden explain: cannot read ${file}: ${err instanceof Error ? err.message : String(err)}\n`);
        return 1;
    }
    if (!v.raw && isUnixText(message)) {
        // a message saved on a Unix system (postcat, an .eml file) lost its CRs, which it had on
        // the wire (RFC 5321 section 2.3.8): read byte for byte it would be refused for bare LFs
        message = Buffer.from(message.toString('latin1').replace(/\n/g, '\r\n'), 'latin1');
        io.err(
            `mailwarden explain: note: ${file} has no CR at all; read with CRLF line ends, as it crossed SMTP (--raw: byte for byte)\n`,
        );
    }
    // as the live session sees it: an IPv4 client of a dual-stack socket by its IPv4 address
    const clientIp = plainAddress(v['client-ip']);
    if (!isIp(clientIp)) {
        io.err(`mailwarden explain: --client-ip ${v['client-ip']} is not an IP address\n${USAGE}\n`);
        return 2;
    }
    // a signal that ends the command (Ctrl-C during a slow DNS lookup) removes the private spool
    // folder first, since it may hold the message's text, then ends it as the signal would
    const onSignal = (signal: NodeJS.Signals): void => {
        for (const dir of privateSpools) rmSync(dir, { recursive: true, force: true });
        for (const s of ENDING_SIGNALS) process.removeListener(s, onSignal);
        process.kill(process.pid, signal);
    };
    for (const s of ENDING_SIGNALS) process.on(s, onSignal);
    let report: ExplainReport;
    try {
        report = await explainMessage(config, ruleSet, {
            clientIp,
            helo: v.helo ?? null,
            mailFrom: v['mail-from'],
            rcpts: v.rcpt,
            listener: v.listener ?? null,
            authUser: v['auth-user'] ?? null,
            ...(v.tls ? { tls: true } : v['no-tls'] ? { tls: false } : {}),
            message,
        });
    } catch (err) {
        if (!(err instanceof ExplainError)) throw err;
        io.err(`mailwarden explain: ${err.message}\n`);
        return err.exitCode;
    } finally {
        for (const s of ENDING_SIGNALS) process.removeListener(s, onSignal);
    }
    io.out(v.json ? `${JSON.stringify(report, null, 2)}\n` : renderReport(report));
    return 0;
}
