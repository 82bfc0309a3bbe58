/**
 * The facts catalogue: every fact a rule may read, with its type, the first stage at which it
 * is known and a one-line description. Rule validation, `cases:` validation, reply templates
 * and the generated rules/README.md all read this one list, so the documentation cannot drift
 * from what the loader accepts. Declarations only: it must not compute facts (checks do that).
 */
import type { Stage } from '../types.ts';

/** SMTP stages in session order (RFC 5321 section 3: connect, HELO, MAIL, RCPT, DATA). */
export const STAGES: readonly Stage[] = Object.freeze(['connect', 'helo', 'mail', 'rcpt', 'data']);

/** Position of a stage in the session (connect = 0). */
export function stageIndex(stage: Stage): number {
    return STAGES.indexOf(stage);
}

/**
 * Value types. `ip`, `domain` and `address` are strings with matching semantics (CIDR
 * containment, suffix matching, case-insensitive comparison); `…[]` facts are lists whose
 * operators hold when they hold for any element.
 */
export type FactType =
    | 'string'
    | 'number'
    | 'boolean'
    | 'ip'
    | 'domain'
    | 'address'
    | 'string[]'
    | 'domain[]'
    | 'address[]';

export const FACT_TYPES: readonly FactType[] = Object.freeze([
    'string',
    'number',
    'boolean',
    'ip',
    'domain',
    'address',
    'string[]',
    'domain[]',
    'address[]',
]);

export interface FactSpec {
    /** Stable dot name used in rules, logs and `explain`. */
    readonly name: string;
    readonly type: FactType;
    /** The first stage at which the fact is known; rules of earlier stages may not read it. */
    readonly stage: Stage;
    readonly description: string;
    /** For enumerated string facts: every value a check may report (compared case-insensitively). */
    readonly values?: readonly string[];
    /**
     * The check that reports the fact at its stage (absent: the session knows it before any
     * check of the stage runs). Checks of one stage run side by side, so a rate limit or a
     * greylisting entry counted at that stage cannot read what a check reports there.
     */
    readonly check?: string;
}

/** The element type of a list type, or the type itself. */
export function elementType(type: FactType): Exclude<FactType, `${string}[]`> {
    return (type.endsWith('[]') ? type.slice(0, -2) : type) as Exclude<FactType, `${string}[]`>;
}

export function isListType(type: FactType): boolean {
    return type.endsWith('[]');
}

const AUTH_RESULTS = {
    spf: ['pass', 'fail', 'softfail', 'neutral', 'none', 'temperror', 'permerror'],
    dkim: ['pass', 'fail', 'neutral', 'none', 'policy', 'temperror', 'permerror'],
    dmarc: ['pass', 'fail', 'none', 'temperror', 'permerror'],
    arc: ['pass', 'fail', 'none'],
    iprev: ['pass', 'fail', 'temperror', 'permerror'],
} as const;

function fact(name: string, type: FactType, stage: Stage, description: string, values?: readonly string[]): FactSpec {
    return Object.freeze(
        values
            ? { name, type, stage, description, values: Object.freeze([...values]) }
            : { name, type, stage, description },
    );
}

/** The check that reports a fact (see FactSpec.check), or undefined. */
function reportedBy(name: string): string | undefined {
    if (name === 'client.ptr' || name.startsWith('iprev.')) return 'iprev';
    if (/^(spf|dkim|dmarc|arc)\./.test(name)) return 'mailauth';
    if (name === 'local.sender' || name === 'local.sender.proof' || name === 'header.from.mismatch') return 'mailauth';
    if (name === 'auth.temperror' || name === 'auth.limits' || name === 'auth.dns_queries') return 'mailauth';
    if (name.startsWith('ratelimit.') || name.startsWith('greylist.')) return 'ratelimit';
    if (name.startsWith('auth.login.')) return 'login_signals';
    if (/^(dnsbl|dnswl|rhsbl)\./.test(name) || name === 'client.ptr.generic') return 'reputation';
    if (name.startsWith('helo.')) return 'reputation';
    return undefined;
}

const CATALOGUE: readonly FactSpec[] = [
    fact('listener', 'string', 'connect', 'Name of the listener the client connected to (from the config)'),
    fact('listener.mode', 'string', 'connect', 'Mode of that listener', ['mx', 'submission']),
    fact('client.ip', 'ip', 'connect', 'Address of the SMTP client (the real client when PROXY protocol is used)'),
    fact(
        'client.ptr',
        'domain',
        'helo',
        'Forward-confirmed reverse DNS name of the client; null when there is none (RFC 8601 iprev)',
    ),
    fact(
        'iprev.ptr',
        'domain',
        'helo',
        "The client's reverse DNS name, confirmed or not: the confirmed one, else the first PTR name; null when there is none or the lookup failed (Postfix's reverse client name, passed on as XCLIENT REVERSE_NAME)",
    ),
    fact('iprev.result', 'string', 'helo', 'Result of the reverse DNS check', AUTH_RESULTS.iprev),
    fact(
        'client.ptr.generic',
        'boolean',
        'helo',
        "The client's reverse DNS name (confirmed or not) looks generic: it carries the address, as names of dynamically assigned addresses do (null without a reverse name)",
    ),
    fact(
        'dnsbl.score',
        'number',
        'helo',
        'Sum of the weights of the DNS block lists (reputation.dnsbl) that list the client address; 0 when none does or none is configured',
    ),
    fact(
        'dnsbl.listed',
        'string[]',
        'helo',
        'The block list answers that are listings, as zone=code (zen.spamhaus.org=127.0.0.4)',
    ),
    fact('dnsbl.zones', 'domain[]', 'helo', 'The block lists that list the client, in config order'),
    fact(
        'dnsbl.delist',
        'string[]',
        'helo',
        'The web pages (from the config) where the client can ask those lists for removal',
    ),
    fact(
        'dnsbl.errors',
        'string[]',
        'helo',
        'Block lists whose answer was an error, never a listing (refusal codes such as 127.255.255.254, answers outside the filter, DNS failures), as zone: what',
    ),
    fact(
        'dnswl.score',
        'number',
        'helo',
        'Sum of the (negative) weights of the DNS allow lists (reputation.dnswl) that list the client; below 0 the client has allow-list credit',
    ),
    fact('dnswl.listed', 'string[]', 'helo', 'The allow list answers that are listings, as zone=code'),
    fact(
        'rhsbl.helo.score',
        'number',
        'helo',
        'Sum of the weights of the domain lists (reputation.rhsbl) that list the HELO name',
    ),
    fact(
        'rhsbl.helo.listed',
        'string[]',
        'helo',
        'The domain list answers for the HELO name that are listings, as zone=code',
    ),
    fact(
        'helo.syntax',
        'string',
        'helo',
        'What the HELO/EHLO argument is (RFC 5321 section 4.1.1.1): a domain, an address literal, or invalid (neither)',
        ['domain', 'address-literal', 'invalid'],
    ),
    fact(
        'helo.literal_mismatch',
        'boolean',
        'helo',
        'The HELO argument is an address literal that is not the client address',
    ),
    fact(
        'helo.claims_us',
        'boolean',
        'helo',
        'The client names itself as us: our hostname, one of our domains, or one of our listener addresses',
    ),
    fact(
        'helo.resolves',
        'boolean',
        'helo',
        'The HELO domain has an A or AAAA record (false: it does not exist or has no address; null: not a domain, or DNS did not answer)',
    ),
    fact(
        'client.pregreet',
        'boolean',
        'connect',
        "True when the client sent something before the greeting during the pregreet wait (`pregreetWait`; postscreen's PREGREET)",
    ),
    fact(
        'client.pregreet.data',
        'string',
        'connect',
        'The first bytes (at most 64) a pregreeting client sent, non-printable ones as \\xHH; null when it did not talk first',
    ),
    fact('tls', 'boolean', 'connect', 'True once the session is encrypted (implicit TLS, or after STARTTLS)'),
    fact('helo', 'string', 'helo', 'Name the client gave in HELO or EHLO, as written (may be an address literal)'),
    fact('auth.user', 'string', 'mail', 'User name the client logged in with (SMTP AUTH); null when not logged in'),
    fact(
        'auth.login.ips',
        'number',
        'mail',
        'Submission: distinct client IPs the logged-in user sent from in the last hour, all instances together (null when not logged in)',
    ),
    fact(
        'auth.login.recipients',
        'number',
        'mail',
        'Submission: recipients the logged-in user sent to in the last hour (updated at each RCPT)',
    ),
    fact(
        'auth.login.failures',
        'number',
        'mail',
        'Submission: failed logins for this user name from any address, as the login lockout counts them (`auth.lockout.perLogin`; absent when that is false)',
    ),
    fact('mail.from', 'address', 'mail', 'Envelope sender (MAIL FROM); the empty string for the null sender <>'),
    fact('mail.from.domain', 'domain', 'mail', 'Domain of the envelope sender; null for the null sender'),
    fact(
        'rhsbl.sender.score',
        'number',
        'mail',
        'Sum of the weights of the domain lists (reputation.rhsbl) that list the envelope sender domain',
    ),
    fact(
        'rhsbl.sender.listed',
        'string[]',
        'mail',
        'The domain list answers for the envelope sender domain that are listings, as zone=code',
    ),
    fact(
        'rcpt.to',
        'address[]',
        'rcpt',
        'Recipients. At the rcpt stage only the recipient being checked (one element: each RCPT is decided alone, and a rule that accepts one recipient accepts no other); at the data stage every accepted recipient of the message, in order',
    ),
    fact(
        'rcpt.address',
        'address',
        'rcpt',
        'The recipient being checked (rcpt stage), as given in RCPT TO; at the data stage, the last accepted recipient (rcpt.to holds them all)',
    ),
    fact(
        'rcpt.domain',
        'domain',
        'rcpt',
        'Domain of the recipient being checked (rcpt stage); at the data stage, of the last accepted recipient',
    ),
    fact(
        'rcpt.count',
        'number',
        'rcpt',
        'Number of recipients so far (at the rcpt stage: those accepted before, plus the one being checked)',
    ),
    fact('header.from', 'address', 'data', 'Address in the From header field (the author, RFC 5322 section 3.6.2)'),
    fact(
        'header.from.domain',
        'domain',
        'data',
        'Domain of the From header address: the author domain exactly as DMARC evaluated it',
    ),
    fact(
        'header.from.count',
        'number',
        'data',
        'Mailboxes in the From field(s), all fields counted (more than one is a spoofing tool)',
    ),
    fact(
        'header.duplicates',
        'string[]',
        'data',
        'Header fields that may appear at most once (RFC 5322 section 3.6: Date, Sender, Reply-To, To, Cc, Bcc, Message-ID, In-Reply-To, References, Subject; RFC 2045: MIME-Version, Content-Type, Content-Transfer-Encoding) and appear more than once, by their usual spelling (`Subject`, `Message-ID`; compared without regard to case); From is counted by header.from.count. A reader shows the first, a DKIM signature covers the last: a field put above a signed message shows text no signature vouches for',
    ),
    fact(
        'header.from.name_domain',
        'domain',
        'data',
        'Domain of an address the From field shows besides the author\'s, in its display name or a comment (RFC 2047 encoded-words decoded), whose organizational domain is not the author\'s: `"ceo@bank.example" <a@evil.example>` gives bank.example; null when it shows none',
    ),
    fact(
        'header.from.name_bidi',
        'boolean',
        'data',
        "The first From field (RFC 2047 encoded-words decoded) holds a bidirectional control or mark (U+200E, U+200F, U+061C, U+202A to U+202E, U+2066 to U+2069) and at least two `@` signs, fullwidth and small `@` counted (NFKC): an address in the name or a comment whose order the controls rearrange on the screen, so a reader may see `ceo@bank.example` where header.from.name_domain finds none. Not when every address it holds, read as written, is of the author's organization (a right-to-left name that repeats its own address), nor for a right-to-left name with marks and only the author's address",
    ),
    fact(
        'header.from.mismatch',
        'boolean',
        'data',
        "The session's RFC 5322 reading of From named a different domain than the DMARC parser's, or only one of them found a domain (at most one mailbox each): a From crafted to show one domain and have another judged",
    ),
    fact(
        'local.sender',
        'boolean',
        'data',
        'The envelope sender domain or a From domain is one of the local domains (config domains) or below one',
    ),
    fact(
        'local.sender.proof',
        'string',
        'data',
        'What proves a local.sender message came from the domain it claims: pass (an SPF pass for a local domain, a passing DKIM signature of a local domain or aligned with the From domain, or a trusted ARC sealer vouching for the author), temperror (none of these, but the SPF check of a local domain, or a DKIM signature of a local domain or one that could align with a local From, failed temporarily), none; null when local.sender is false. An SPF pass or error for some other envelope domain, or a DKIM error of some other domain, proves nothing about a local From',
        ['pass', 'temperror', 'none'],
    ),
    fact('message.size', 'number', 'data', 'Size of the message in bytes'),
    fact(
        'message.bare_newlines',
        'number',
        'data',
        'Number of bare LF, bare CR and NUL characters seen in the message data',
    ),
    fact(
        'spf.result',
        'string',
        'data',
        'SPF result (RFC 7208 section 2.6) for the envelope sender, or for the HELO name with the null sender',
        AUTH_RESULTS.spf,
    ),
    fact('spf.domain', 'domain', 'data', 'Domain SPF checked'),
    fact(
        'dkim.result',
        'string',
        'data',
        'Best DKIM result over all signatures (pass if any passes); none when the message is not signed',
        AUTH_RESULTS.dkim,
    ),
    fact('dkim.domains', 'domain[]', 'data', 'Signing domains (d=) of the DKIM signatures that pass'),
    fact(
        'dkim.aligned',
        'boolean',
        'data',
        'A passing DKIM signature is aligned with the From header domain (DMARC alignment)',
    ),
    fact('dkim.count', 'number', 'data', 'Number of DKIM signatures verified'),
    fact(
        'dkim.unsigned_bytes',
        'number',
        'data',
        'Body bytes after the signed length (l=, RFC 6376 section 3.5) of a passing DKIM signature, the most over the passing signatures: text anyone could have added to a signed message; 0 when every passing signature covers the whole body',
    ),
    fact(
        'dkim.skipped',
        'number',
        'data',
        'DKIM signatures not verified because the message carried more than the per-message limits allow',
    ),
    fact(
        'dmarc.result',
        'string',
        'data',
        'DMARC result for the author domain (permerror: there is no single author domain)',
        AUTH_RESULTS.dmarc,
    ),
    fact(
        'dmarc.policy',
        'string',
        'data',
        'Published policy that applies to the author domain (p=, sp= or np=, before t=); null without a policy or when undecided',
        ['none', 'quarantine', 'reject'],
    ),
    fact(
        'dmarc.disposition',
        'string',
        'data',
        'What to do with the message after p/sp/np/t/pct and overrides: the final DMARC verdict (tempfail: a temporary DNS error decides)',
        ['none', 'quarantine', 'reject', 'tempfail'],
    ),
    fact(
        'dmarc.override',
        'string',
        'data',
        'Why the disposition is lower than the policy: arc (a trusted ARC sealer vouches), local (an authenticated submission client), testing (the domain asks for test mode); null otherwise',
        ['arc', 'local', 'testing'],
    ),
    fact('dmarc.reason', 'string', 'data', 'Short explanation of the DMARC outcome, for logs and explain'),
    fact('dmarc.domain', 'domain', 'data', 'Domain where the applied DMARC record was published'),
    fact('arc.result', 'string', 'data', 'Validation of the ARC chain (RFC 8617 section 5.2)', AUTH_RESULTS.arc),
    fact(
        'arc.trusted',
        'boolean',
        'data',
        'The ARC chain passes and its newest seal is from a sealer the operator trusts',
    ),
    fact('arc.sealer', 'domain', 'data', 'Domain (d=) of the newest ARC seal; null when there is none'),
    fact(
        'auth.temperror',
        'boolean',
        'data',
        'A temporary DNS error decided the DMARC outcome (the disposition is tempfail)',
    ),
    fact(
        'auth.limits',
        'string[]',
        'data',
        'Per-message verification limits the message ran into: dkim_signatures, dkim_body_hashes, dkim_signed_fields, arc_sets, header_runs, header_folds, body_line_length, body_rewrites, dns_queries, dns_bytes (empty for normal mail)',
    ),
    fact(
        'auth.dns_queries',
        'number',
        'data',
        'DNS queries the message needed for SPF, DKIM, DMARC and ARC, cache hits included (at most authentication.maxDnsQueries)',
    ),
    fact(
        'score',
        'number',
        'connect',
        'Sum of the scores of the tag rules matched so far (tag rules add to it as they match)',
    ),
    fact(
        'ratelimit.exceeded',
        'string[]',
        'connect',
        'Ids of the limits (rule files, limits:) this connection, message or recipient goes over at this stage, in enforce mode; their implicit rules refuse it',
    ),
    fact(
        'ratelimit.monitor',
        'string[]',
        'connect',
        'Ids of the mode: monitor limits that would have been exceeded at this stage (counted, nothing refused)',
    ),
    fact(
        'ratelimit.retry_after',
        'number',
        'connect',
        'Seconds, rounded up, until what the exceeded limits refused would be admitted; null when no limit was exceeded',
    ),
    fact(
        'ratelimit.error',
        'string[]',
        'connect',
        'Ids of the limits whose shared store failed at this stage and whose onError is tempfail',
    ),
    fact(
        'ratelimit.error_allowed',
        'string[]',
        'connect',
        'Ids of the limits (and the greylisting entry) whose shared store failed and let the mail through uncounted (onError: allow, or mode: monitor), at this stage or an earlier one of the connection and transaction (a refused recipient leaves nothing); the decision log line lists them as limitErrors',
    ),
    fact(
        'greylist.id',
        'string',
        'rcpt',
        'Id of the greylisting entry (rule files, greylist:) that applied to this recipient; null when none did',
    ),
    fact(
        'greylist.result',
        'string',
        'rcpt',
        'Greylisting of this recipient: new (first try, refused), early (retried too soon, refused), pass (retried after the delay), known-client (the client retried correctly often enough), capped (first try from a network that made as many new records as it may this hour: not recorded, let through), capped_global (the same, as all networks together made as many as the entry may this hour), skipped (no entry applied), error (the store failed)',
        ['new', 'early', 'pass', 'known-client', 'capped', 'capped_global', 'skipped', 'error'],
    ),
    fact(
        'greylist.retry_after',
        'number',
        'rcpt',
        'For new and early: seconds, rounded up, until a retry passes; null otherwise',
    ),
];

/** The catalogue, in the order the documentation lists it. */
export const FACTS: readonly FactSpec[] = Object.freeze(
    CATALOGUE.map((f) => {
        const check = reportedBy(f.name);
        return check === undefined ? f : Object.freeze({ ...f, check });
    }),
);

/** Looks a fact up by name in a catalogue. */
export function catalogueIndex(facts: readonly FactSpec[]): ReadonlyMap<string, FactSpec> {
    return new Map(facts.map((f) => [f.name, f]));
}
