/**
 * The text of rules/README.md, generated from the same tables the loader validates with (the
 * facts catalogue, the operator table, list types, rule keys, reserved headers, limits), so
 * the documentation cannot drift from the code. Returns Markdown; writing and formatting the
 * file is the job of scripts/gen-rules-readme.ts. Pure.
 */
import { formatDuration } from '../config/units.ts';
import { OPERATORS } from './conditions.ts';
import { FACTS, STAGES, type FactSpec } from './facts.ts';
import {
    CONCURRENCY_RETRY_SECONDS,
    DEFAULT_IPV6_PREFIX,
    GREYLIST_DEFAULTS,
    GREYLIST_IPV4_PREFIX,
    GREYLIST_IPV6_PREFIX,
    GREYLIST_KEYS,
    GREYLIST_NETWORK_IPV6_PREFIX,
    GREYLIST_NEW_PER_ENTRY,
    GREYLIST_NEW_PER_NETWORK,
    LIMIT_KEYS,
    LIMIT_PERS,
    PER_STAGE,
    type LimitPer,
} from './limits.ts';
import { LIST_TYPES, LIST_TYPE_DOCS, MAX_PATTERN_ENTRIES } from './lists.ts';
import { ACTIONS, RESERVED_HEADERS } from './load.ts';
import { ENGINE_HEAP_BYTES } from './regex.ts';
import { MAX_HEADER_VALUE, MAX_REPLY_TEXT } from './template.ts';

function cell(text: string): string {
    return text.replace(/\|/g, '\\|');
}

function factRow(f: FactSpec): string {
    const values = f.values ? ` Values: ${f.values.map((v) => `\`${v}\``).join(', ')}.` : '';
    return `| \`${f.name}\` | ${f.type} | ${f.stage} | ${cell(f.description)}.${values} |`;
}

const ACTION_DOCS: Readonly<Record<(typeof ACTIONS)[number], string>> = {
    accept: 'Ends evaluation of its stage: the message (or command) goes on, and the later rules of the stage are not evaluated. Tags already made stay (by earlier rules of this stage, and of earlier stages). Put allow-list rules first, at every stage, so they stop later tags and rejects.',
    tag: 'Does not end evaluation: adds the rule’s `score` and `headers`, then the next rules run. A message that only matched tag rules is forwarded with `X-Spam-Flag: YES`.',
    quarantine:
        'Ends evaluation: the message is forwarded with `X-Mailwarden-Quarantine: <id>`, which the after-filter Postfix holds (`header_checks`). Data stage only.',
    tempfail: 'Ends evaluation: the client gets a 4xx reply and keeps the message to try again later.',
    reject: 'Ends evaluation: the client gets a 5xx reply (4xx when `softReject` is on).',
};

const LIMIT_KEY_DOCS: Readonly<Record<(typeof LIMIT_KEYS)[number], string>> = {
    id: 'yes | Kebab-case, unique together with the rule ids: it is the id of the limit’s implicit rule (logs, `mailwarden_rule_hits_total{rule}`, `mailwarden_ratelimit_decisions_total{limit}`, `explain`, `cases:`).',
    description: 'no | Free text for people.',
    key: 'yes | What is counted: a fact name, `client.ip/N`, `global`, or a list of facts counted together (`[auth.user, client.ip]`). See below.',
    rate: 'one of rate, concurrency | `COUNT/PERIOD` (`100/1h`, `20/1m`, `5/s`), or a list of them, all enforced together (`[20/1m, 300/1h]`). For `per: byte` the count is a size (`200MB/1h`).',
    per: 'no | What one unit of the rate is, and so when it is counted (default `message`); see the table below.',
    concurrency: `one of rate, concurrency | At most this many simultaneous connections per key (counted at connect; refused with \`421 4.7.0\`, retry after ${CONCURRENCY_RETRY_SECONDS} s).`,
    ipv6Prefix: `no | Prefix length IPv6 clients are counted by when the key has \`client.ip\` (default ${DEFAULT_IPV6_PREFIX}).`,
    when: 'no | Conditions, as in rules: the limit counts only what they match. Left out: everything (written but empty is an error).',
    mode: 'no | `enforce` (default) or `monitor`: counted and reported (`ratelimit.monitor`, a monitor hit of the implicit rule), never refused.',
    onError:
        'no | What a store failure (Redis down or slow) does to the mail: `allow` (default: fail open, counted, and named in `ratelimit.error_allowed` and the log) or `tempfail` (a 4xx asking to retry).',
};

const PER_DOCS: Readonly<Record<LimitPer, string>> = {
    connection: 'each new connection; refused with `421 4.7.0`, which closes it',
    message: 'each MAIL FROM (each transaction), like Postfix anvil’s message rate; refused with `450 4.7.1`',
    recipient: 'each RCPT TO; that recipient is refused with `450 4.7.1`, the others stay',
    byte: 'the size of each message at the end of DATA; the message is refused with `450 4.7.1`',
};

const GREYLIST_KEY_DOCS: Readonly<Record<(typeof GREYLIST_KEYS)[number], string>> = {
    id: 'Kebab-case, unique together with the rule ids (the implicit rule’s id). Required.',
    description: 'Free text for people.',
    when: 'Conditions (facts known at RCPT): only matching recipients are greylisted. Left out: all (written but empty is an error).',
    delay: `How long a new triplet is refused (default ${formatDuration(GREYLIST_DEFAULTS.delayMs)}).`,
    retryWindow: `A retry passes only between \`delay\` and this long after the first try; later it starts over (default ${formatDuration(GREYLIST_DEFAULTS.retryWindowMs)}).`,
    expire: `How long a passed triplet, and a client's pass count, are kept after their last use (default ${formatDuration(GREYLIST_DEFAULTS.expireMs)}).`,
    autoAllowAfter: `After this many messages the upstream accepted, each to a recipient that passed the delay, a client network is no longer greylisted while it keeps sending (default ${GREYLIST_DEFAULTS.autoAllowAfter}; 0: never).`,
    mode: '`enforce` (default) or `monitor`: triplets are recorded and counted, nothing is delayed; a first try is recorded for `retryWindow` only when the upstream accepts the message for its recipient, else for `delay`.',
    onError: '`allow` (default) or `tempfail`, as for limits.',
};

function limitsSection(): string {
    const limitKeys = LIMIT_KEYS.map((k) => `| \`${k}\` | ${LIMIT_KEY_DOCS[k]} |`);
    const pers = LIMIT_PERS.map((p) => `| \`${p}\` | ${PER_STAGE[p]} | ${PER_DOCS[p]} |`);
    const greylistKeys = GREYLIST_KEYS.map((k) => `| \`${k}\` | ${cell(GREYLIST_KEY_DOCS[k])} |`);
    // Facts checks report, by check and stage; a family of two or more shown as `spf.*`.
    const groups = new Map<string, string[]>();
    for (const f of FACTS) {
        if (f.check === undefined || f.check === 'ratelimit') continue;
        const k = `the ${f.check} check at ${f.stage}`;
        groups.set(k, [...(groups.get(k) ?? []), f.name]);
    }
    const byCheck = [...groups]
        .map(([k, names]) => {
            const shown: string[] = [];
            for (const n of names) {
                const family = n.split('.')[0]!;
                const many = names.filter((m) => m.startsWith(`${family}.`)).length > 1;
                const text = many ? `${family}.*` : n;
                if (!shown.includes(text)) shown.push(text);
            }
            return `${k} (${shown.map((n) => `\`${n}\``).join(', ')})`;
        })
        .join('; ');
    return `## Limits and greylisting

One line in a rule file caps a sender, a login, an IP address, a network or a domain. With
\`redis:\` in the config the counts are kept in Redis and shared by every mailwarden instance;
without it each process counts on its own. How the counting works and what happens when Redis
fails is described in \`docs/rate-limits.md\`.

\`\`\`yaml
limits:
  - { id: sender-rate, key: mail.from, rate: 100/1h } # per message by default
  - { id: ip-rcpts, key: client.ip/24, rate: [200/1m, 2000/1h], per: recipient }
  - { id: login-rate, key: auth.user, rate: 500/1d, when: { listener.mode: submission } }
  - { id: ip-conns, key: client.ip, concurrency: 10 } # simultaneous connections
  - { id: big-senders, key: mail.from.domain, rate: 200MB/1h, per: byte, mode: monitor, onError: tempfail }
greylist:
  - { id: greylist, when: { iprev.result: { ne: pass } }, delay: 5m, retryWindow: 4h, expire: 36d, autoAllowAfter: 5 }
\`\`\`

### Limit keys

| key | required | meaning |
| --- | --- | --- |
${limitKeys.join('\n')}

| \`per\` | counted at | one unit is |
| --- | --- | --- |
${pers.join('\n')}

- **Rates** use GCRA: \`20/1m\` admits 20 at once, then one every 3 seconds; it never admits 40
  around a minute boundary. Several rates are decided together: a message refused by one of them
  uses up none of the others. A byte rate larger than exact arithmetic allows is counted in KB.
- **Keys**: \`client.ip\` counts one IPv4 address, or one IPv6 /${DEFAULT_IPV6_PREFIX}; \`client.ip/24\` an IPv4
  network (IPv6 still per \`ipv6Prefix\`). \`rcpt.address\`, \`rcpt.to\` and \`rcpt.domain\` count the
  recipient being checked (at RCPT) or every recipient of the message (\`per: byte\`). \`global\` is one counter for
  all traffic. Any other fact known at the counting stage may be used. Values are normalised
  (addresses and domains lower-cased, IP addresses cut to the prefix) and long or unusual values are
  hashed, so a client cannot make huge keys. An address is counted without its subaddress
  (\`alice+1@example.com\` and \`alice+2@example.com\` are \`alice@example.com\`, as Postfix delivers
  them), with the delimiter \`auth.recipientDelimiter\` (default \`+\`; a local part that starts with it
  has no subaddress). The limit id is part of every key.
- A limit does not apply when one of its key facts is missing: no login (\`auth.user\`), the null
  sender (\`mail.from\`, \`mail.from.domain\`).
- A key or \`when\` may read facts known at the counting stage, except the facts checks report at
  that same stage (the checks run side by side): ${byCheck}.
- A limit’s implicit rule runs **first** in its stage, before allow-list rules: exempt a network
  with \`when: { not: { client.ip: { list: allow-networks } } }\`.
- The reply says which limit was reached and when to retry (\`{ratelimit.retry_after}\` seconds);
  a byte limit whose smallest window is smaller than the message says so. A store failure with
  \`onError: tempfail\` answers \`451 4.7.1\` (\`421 4.7.0\` at connect): a temporary problem applying a
  sending limit.
- Each counted limit adds to \`mailwarden_ratelimit_decisions_total{limit,result}\` with result \`allowed\`,
  \`limited\`, \`monitor_limited\`, \`error_allowed\` or \`error_tempfail\`.

### Greylisting

Greylisting (RFC 6647) refuses the first delivery attempt of a new **triplet**: the client's network
(IPv4 /${GREYLIST_IPV4_PREFIX}, IPv6 /${GREYLIST_IPV6_PREFIX}), the envelope sender and the recipient. A real mail server retries
after a few minutes and passes; much spam software never does. It runs at RCPT, after the limits
of that stage; the first entry whose \`when\` holds applies. The sender is compared as postgrey does:
lower-cased, a BATV \`prvs=…=\` prefix removed and digit runs replaced, so VERP and SRS senders match
on a retry.

| key | meaning |
| --- | --- |
${greylistKeys.join('\n')}

The refusal is \`450 4.7.1 Greylisted: please try again in N seconds (RFC 6647)…\`; a retry that comes
too early is told the remaining wait. One client network (IPv4 /${GREYLIST_IPV4_PREFIX}, IPv6 /${GREYLIST_NETWORK_IPV6_PREFIX}) records at most
${GREYLIST_NEW_PER_NETWORK.limit} new triplets an hour per entry, so no client can fill the store with them: past that a new
triplet is not recorded (\`greylist.result\` \`capped\`) and is let through: its retry could never pass, and
greylisting delays only clients that do not retry, so deferring what cannot be recorded would gain nothing
and could block a neighbour on the same network for good. All networks together record at most
${GREYLIST_NEW_PER_ENTRY.limit.toLocaleString('en')} new triplets an hour per entry, so what greylisting makes the store hold is bounded
whatever the number of networks; past that a new triplet is let through unrecorded too (\`capped_global\`). Results are counted as
\`mailwarden_ratelimit_decisions_total{limit="greylist",result}\` (\`new\`, \`early\`, \`pass\`, \`known\`, \`capped\`, \`capped_global\`; an
entry in \`mode: monitor\` delays nothing, and counts \`monitor_new\` and \`monitor_early\` instead
of \`new\` and \`early\`).

### Facts and cases

The \`ratelimit\` check reports \`ratelimit.exceeded\`, \`ratelimit.monitor\`, \`ratelimit.error\`,
\`ratelimit.error_allowed\`, \`ratelimit.retry_after\` at every stage, and \`greylist.id\`, \`greylist.result\`, \`greylist.retry_after\`
at RCPT. Cases test the implicit rules through them:

\`\`\`yaml
cases:
  - name: a sender over its rate gets 450 at MAIL FROM
    stage: mail
    facts: { mail.from: a@example.org, ratelimit.exceeded: [sender-rate], ratelimit.retry_after: 36 }
    expect: { action: tempfail, rule: sender-rate }
\`\`\`
`;
}

/** The whole README as Markdown (not yet formatted). */
export function renderRulesReadme(): string {
    const operators = OPERATORS.map(
        (o) =>
            `| \`${o.name}\` | ${cell(o.value)} | ${o.types.join(', ')} | ${cell(o.description)} | ${cell(o.example)} |`,
    );
    const lists = LIST_TYPES.map((t) => `| \`${t}\` | ${cell(LIST_TYPE_DOCS[t])} |`);
    const actions = ACTIONS.map((a) => `| \`${a}\` | ${cell(ACTION_DOCS[a])} |`);
    return `<!-- Generated by scripts/gen-rules-readme.ts from src/rules (facts, operators, list types). Do not edit by hand. -->

# Rule files

Checks report **facts** about a connection and a message (\`client.ip\`, \`spf.result\`,
\`dmarc.disposition\`, …); **rules** turn facts into a decision: \`accept\`, \`tag\`,
\`quarantine\`, \`tempfail\` or \`reject\`. This folder holds the rules mailwarden ships, which an
operator can run unchanged, and this reference.

- Rule files are YAML files (\`*.yaml\`, \`*.yml\`) in one folder, loaded in file-name order
  (\`10-allow-block.yaml\` before \`20-dmarc.yaml\`). Files whose name starts with a dot are ignored.
  A folder without rule files, a rule file that declares nothing (empty, or only comments: an
  emptied file would drop its rules unseen; write \`rules: []\` to keep a file without rules on
  purpose) and a \`*.yaml\` name that cannot be read (a symbolic link whose target moved) are errors,
  not skipped.
- List files (allow and block lists) usually live in the \`lists/\` sub-folder.
- \`mailwarden check\` validates every file and runs every \`cases:\` example; problems are printed as
  \`FILE:LINE:COL: message\`, all at once. \`serve\`, a reload and \`check\` accept exactly the same
  files: what \`check\` refuses, \`serve\` refuses to start with and a reload refuses, with the same
  lines; a case that does not hold is a warning in all three (see [Cases](#cases)).
- Rules are reloaded on \`SIGHUP\` and when a file in the folder, in \`lists/\` or in the folder of a
  declared list file changes. When the new files have a problem, the previous rules stay in force and
  the problem is logged.
- Swapped folders and symlinks are followed: a rules folder renamed into place (\`mv rules.new rules\`)
  or a link to it pointed at another release (\`ln -sfn releases/v2 rules\`) is reloaded and watched
  from then on, and a list file that is a symlink is watched in its own folder and in its target's, so
  a feed renaming its new copy there is seen too. A link higher up (\`rules: current/rules\` with
  \`current -> releases/v2\`) and a link pointed at a release not there yet are followed too: every
  2 seconds the real path of the rules folder and of each watched folder is looked at again, and a
  change (or the missing release appearing) reloads the rules. \`SIGHUP\` always reads the files the
  paths name now, and the watching follows them.

## A rule file

A file is a map with up to five keys: \`lists:\` (list declarations), \`rules:\` (a list of rules),
\`limits:\` and \`greylist:\` (see [Limits and greylisting](#limits-and-greylisting)) and \`cases:\`
(examples that must hold). Unknown keys are errors everywhere.

\`\`\`yaml
lists:
  block-senders: { type: address, file: lists/block-senders.txt } # path relative to the rules folder

rules:
  - id: dmarc-reject # kebab-case, unique across all files
    description: The author domain asks receivers to reject mail that fails DMARC
    stage: data # connect | helo | mail | rcpt | data (default data)
    when: # all of these must hold
      dmarc.result: fail # a plain value means "equal"
      dmarc.disposition: { in: [reject] }
    action: reject # accept | tag | quarantine | tempfail | reject
    reply:
      code: 550
      enhanced: 5.7.1
      text: "Mail claiming to be from {header.from.domain} failed that domain's DMARC check."
    mode: enforce # or monitor

  - id: spf-fail-tag
    when: { spf.result: fail, not: { dkim.aligned: true } }
    action: tag
    score: 5
    headers: { X-Mailwarden-Reason: "SPF fail for {mail.from.domain}" }

cases:
  - name: a DMARC failure with p=reject is refused
    facts: { dmarc.result: fail, dmarc.disposition: reject, header.from.domain: example.com }
    expect: { action: reject, rule: dmarc-reject }
\`\`\`

### Rule keys

| key | required | meaning |
| --- | --- | --- |
| \`id\` | yes | Name used in logs, metrics (\`mailwarden_rule_hits_total{rule}\`), the \`X-Mailwarden-Verdict\` header and \`explain\`. Kebab-case; unique across all files. |
| \`description\` | no | Free text for people. |
| \`stage\` | no | When the rule runs: ${STAGES.map((s) => `\`${s}\``).join(', ')} (default \`data\`). A rule may only read facts known at its stage. |
| \`when\` | no | Conditions, all of which must hold. Left out: the rule always matches. Written but empty (\`when:\` with its conditions commented out, \`when: {}\`) is an error, not "always". |
| \`action\` | yes | ${ACTIONS.map((a) => `\`${a}\``).join(', ')}. |
| \`reply\` | no | \`{ code, enhanced, text }\` for \`reject\` (5xx code) and \`tempfail\` (4xx code) rules only. Left out: the default reply (\`550 5.7.1\` or \`451 4.7.1\` with a generic text and the session id). |
| \`score\` | no | \`tag\` rules only: a number (may be negative, default 0) added to the fact \`score\`. |
| \`headers\` | no | \`accept\`, \`tag\` and \`quarantine\` rules only: header fields added to the forwarded message. |
| \`mode\` | no | \`enforce\` (default) or \`monitor\`. |

### Stages

Each rule belongs to one stage, and at each stage only that stage's rules run, in file order and
then in order within the file. The stages follow the SMTP dialogue: \`connect\` (client connected),
\`helo\` (HELO/EHLO), \`mail\` (MAIL FROM), \`rcpt\` (each RCPT TO), \`data\` (the whole message
received). Facts accumulate: a data-stage rule can read \`client.ip\`. An allow-list rule that must
protect a message from data-stage rejects therefore has to be a data-stage rule too.

The \`rcpt\` stage decides each recipient alone, as Postfix's \`smtpd_recipient_restrictions\` do:
\`rcpt.address\` is the recipient of this RCPT TO, \`rcpt.domain\` its domain, and \`rcpt.to\` holds only
that recipient, never the ones accepted before it. A rule that accepts \`postmaster@example.org\`
therefore accepts that recipient and no other of the same message, and a list condition costs one
lookup per RCPT. \`rcpt.count\` counts the recipients accepted before plus this one. At the \`data\`
stage \`rcpt.to\` is every accepted recipient, in order, while \`rcpt.address\` and \`rcpt.domain\` are
the last accepted recipient's: a data-stage rule about "any recipient" reads \`rcpt.to\`.

### Actions

| action | effect |
| --- | --- |
${actions.join('\n')}

The first matching rule whose action is not \`tag\` wins and evaluation stops. When no rule matches the
decision is \`accept\` ("no rule matched"). Tag rules that matched before the winning rule still count
(their headers and score are kept).

## Conditions

\`when:\` is a map. Each key is a fact name or one of the combinators below; all entries must hold.

| combinator | meaning |
| --- | --- |
| \`any: [ {…}, {…} ]\` | at least one of the maps holds |
| \`all: [ {…}, {…} ]\` | every map holds (useful to test one fact twice) |
| \`not: {…}\` | the map does not hold |

A fact's value is either a plain value (equality) or a map with exactly one operator:

| operator | value | fact types | meaning | example |
| --- | --- | --- | --- | --- |
${operators.join('\n')}

- A fact that is missing (null) satisfies only \`exists: false\` and \`ne\`.
- **List facts** (types ending in \`[]\`, such as \`rcpt.to\` at the data stage): an operator holds when it
  holds for **any element**; \`ne\` holds when no element is equal; \`exists\` means "not empty".
- Values are checked when the rules load: a domain must be a domain name, an IP an address, a value
  of an enumerated fact (such as \`spf.result\`) one of its values, and an operator must fit the fact's
  type (\`gt\` only on numbers, \`cidr\` only on IP addresses).
- Values of text facts (text, domains, addresses, IP addresses) are written as text: a plain value
  that YAML reads as another number (\`0x10\`, \`1e3\`, \`012\`) is refused; quote it (\`"0x10"\`). A
  number written as it reads (\`1001\`) is taken as that text. In the facts of [cases](#cases)
  every number for a text fact is refused.
- A map of conditions may not be empty (\`{}\` would always hold), inside \`any:\`, \`all:\` and \`not:\`
  too.
- YAML aliases (\`*name\`) are refused inside \`when:\` and inside a case's \`facts:\` (the first is
  reported at its position): every use of an alias would be compiled again, so nested aliases could
  cost exponential time. Write the conditions out; anchors and aliases elsewhere in a file are fine,
  and a problem in a value reached through an alias is reported where the alias is written, with
  \`(from &name at line N)\`.
- Maps and lists may be nested at most 64 levels deep in a rule file. A \`when:\` is at level 4, so
  it holds about 60 \`not:\` or 30 \`any:\`/\`all:\` inside each other. A file nested deeper is refused
  at the first map or list past that level, the same way by \`mailwarden check\`, at start and on
  reload.
- Regular expressions use [RE2 syntax](https://github.com/google/re2/wiki/Syntax) and always ignore
  case. RE2 matches in time linear in the input, so no pattern can stall the proxy; it refuses
  backreferences (\`\\1\`) and lookaround (\`(?=\`, \`(?<=\`) when the rules load.

## Lists

Declare a list once, in any rule file, and use it from any rule with \`{ list: NAME }\`:

\`\`\`yaml
lists:
  block-networks: { type: ip, file: lists/block-networks.txt }
rules:
  - id: block-networks
    stage: connect
    when: { client.ip: { list: block-networks } }
    action: reject
\`\`\`

| type | entries |
| --- | --- |
${lists.join('\n')}

- One entry per line. Blank lines and lines starting with \`#\` are ignored; in \`ip\`, \`domain\` and
  \`address\` lists a \`#\` after a space also starts a comment.
- A bad entry is reported as \`LISTFILE:LINE:1: message\` and the rules do not load.
- CIDR ranges with host bits set (\`10.0.0.1/8\`) are refused, as in Postfix \`cidr\` tables.
- In \`ip\`, \`domain\` and \`address\` lists a lookup costs one binary search or one probe per
  domain label, whatever the size; loading is what grows with it. Keep each of these lists to
  about **100,000 entries**, which load in about 0.1 to 0.15 s. A list of 1,000,000 entries takes
  2 to 3.3 s to load (\`ip\`, \`domain\` and \`address\` alike) and 250 to 300 MB more memory. A
  list is built in one go, so every session of the process stalls for that time, at start and on
  every reload, and each reload (on \`SIGHUP\` or a change to any list file, so a list fed by cron
  every few minutes does it every few minutes) builds every list again. Serve much larger sets of
  networks or domains as a DNS list from a local DNS server instead (\`reputation.dnsbl\`,
  \`dnswl\` or \`rhsbl\` in the config; it must answer the RFC 5782 test entries like any DNS list):
  that costs one query per client and nothing at reload.
- A \`pattern\` list holds at most ${MAX_PATTERN_ENTRIES} entries, because its patterns are compiled into
  RE2 programs that share a fixed ${ENGINE_HEAP_BYTES >> 20} MB of memory; use the other types for plain values.
- Replace a list file atomically: write the new version next to it and rename it over the old
  one (\`mv\`, or an editor that saves that way). The change is picked up within a second, and a
  file is read as it is then: one rewritten in place by a slow writer (\`curl … > list\`, a
  generator) is read half written, and a half list is enforced until the rest arrives.

## Replies and headers

\`reply.text\` and header values are templates: \`{fact.name}\` is replaced by the fact's value (a list
fact by its elements separated by commas, a missing fact by nothing); write \`{{\` and \`}}\` for
literal braces. Fact names are checked when the rules load.

- What you write must be printable ASCII (SMTP reply text and header fields are ASCII).
- What a fact brings in is made safe: every control character (CR, LF, NUL, TAB…) becomes a space and
  every non-ASCII character \`?\`, so no value can start a new reply line or header field. Reply texts
  are cut at ${MAX_REPLY_TEXT} characters and header values at ${MAX_HEADER_VALUE}, which keeps each
  line within the SMTP limit of 512 octets per reply line.
- \`enhanced\` is an RFC 3463 code (\`5.7.1\`) whose first digit matches the reply code's; left out it is
  \`5.7.1\` or \`4.7.1\`.
- Write replies for people: what happened, why, and what the sender can do.
- Header names must match \`X-[A-Za-z0-9-]+\` (so a rule cannot add \`Received\`, \`From\` or
  \`Authentication-Results\`), and these names, which mailwarden writes itself, are refused:
  ${RESERVED_HEADERS.map((h) => `\`${h}\``).join(', ')}. Incoming copies of \`X-Mailwarden-*\` fields are
  removed before the rule's fields are added, so \`X-Mailwarden-Reason\` and the like are trustworthy.

## Score, tags and monitor mode

- The fact \`score\` starts at 0 and grows as tag rules match, so a later rule can test
  \`score: { gte: 10 }\`.
- \`mode: monitor\` rules are evaluated, counted (\`mailwarden_rule_hits_total{mode="monitor"}\`) and logged, and
  change nothing: no score, no headers, no reply, evaluation goes on. The ids of those that matched
  at any stage (connect, helo, mail, rcpt, data) are in the \`monitor\` field of the transaction's
  \`decision\` log line, or of its \`refused\` line when a stage refused it; those of the data stage
  are also in its \`reason\` as "would <action>" (\`monitor: would tag (display-name-spoof)\`). Use it to
  try a new rule on real traffic before enforcing it, or to stop a rule from refusing mail at once
  (save the file: it is reloaded within a second). The rule's \`cases:\` that expect it enforced then
  become warnings that name it (see [Cases](#cases)); nothing is refused because of them.
- The config switch \`softReject: true\` (like Postfix \`soft_bounce\`) turns every \`reject\` decision into
  a \`tempfail\` whose reply is the 4xx equivalent (\`550 5.7.1\` → \`450 4.7.1\`, "Message refused" →
  "Message deferred"; at connect \`421 4.7.0\`, the only deferral a greeting may be): senders retry, so
  mistakes in new rules can be fixed without losing mail.

${limitsSection()}
## Cases

Examples in \`cases:\` make rules tested code.

\`\`\`yaml
cases:
  - name: own-domain spoof from outside is refused # required
    stage: data # default data
    facts: { listener.mode: mx, local.sender: true, spf.result: fail }
    expect:
      action: reject # required
      rule: own-domain-spoof # the rule that ended evaluation, or null for none
      score: 0 # optional, like the keys below
      rules: [own-domain-spoof] # tag rules and the final rule that contributed
      headers: { X-Example: value } # headers added by rules
      reply: { code: 550, enhanced: 5.7.1, text: "…" } # null: the rule gave no reply
      monitor: [] # monitor-mode rules that matched
\`\`\`

Facts left out are missing (null); facts are checked against the catalogue below. Cases run with
\`softReject\` off.

### When a case does not hold

Every load (\`serve\`, each reload, \`mailwarden check\`) runs the cases, and one that does not hold is
reported as a **warning**:

\`\`\`
rules/40-own-domain.yaml:43:5: warning: case "a message from outside claiming our domain without SPF or DKIM is refused" does not hold: expected action reject, rule own-domain-spoof; got action accept, rule none; rule own-domain-spoof is in monitor mode; this case expects its enforce outcome — update the case (expect what happens without the rule, and add monitor: [own-domain-spoof]) or set the rule back to mode: enforce
\`\`\`

- \`mailwarden check\` prints warnings after any errors and still exits 0 (\`ok: FILE (N warnings; …)\`);
  \`serve\` starts and a reload applies the rules, logging the same lines (\`rule cases do not hold\`,
  level warn). \`mailwarden check --strict\` exits 1 on warnings: use it in the CI of your rule files,
  never as the service's start check.
- When a case fails only because a rule it involves was switched between \`mode: enforce\` and
  \`mode: monitor\` (a limit's or greylisting entry's too), the warning names the rule, its mode and
  what to change.
- Why warnings and not errors: a rule file that loads is valid, and it is the file in force. Refusing
  it for an example would make \`check\` (the systemd unit's \`ExecStartPre\`) stop the next start, or a
  reload keep yesterday's rules, in the middle of an incident, for instance right after a rule was
  put in monitor mode to stop it refusing mail. Everything that makes a file invalid (syntax,
  unknown keys, facts, operators, values, lists, ids named by cases) stays an error in all three.


## Facts

The stage is the first at which the fact is known; rules of earlier stages cannot read it.

| fact | type | stage | meaning |
| --- | --- | --- | --- |
${FACTS.map(factRow).join('\n')}
`;
}
