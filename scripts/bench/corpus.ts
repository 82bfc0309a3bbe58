/**
 * The benchmark's message corpus and the DNS zone that goes with it: RSA-2048 DKIM keys made
 * with node:crypto, messages of realistic shape (multipart/alternative of 3–10 KB, a share
 * with a ~100 KB base64 attachment) signed with mailauth's dkimSign (relaxed/relaxed,
 * rsa-sha256, RFC 6376), and spoofs of a DMARC p=reject domain (RFC 7489 section 6.3) that a
 * filter must refuse. Everything is drawn from a seeded generator, so one seed gives the same
 * classes, sizes and texts every run (the keys, and so the signatures, are new each run).
 *
 * It must not touch the network or the disk: the zone is data for the loopback test DNS
 * server, the messages are buffers in memory.
 */
import crypto from 'node:crypto';
import { dkimSign } from 'mailauth';
import type { Zone } from '../../test/helpers/dns-server.ts';

/** The client address the load generator connects from; SPF of the good domains covers it. */
export const CLIENT_IP = '127.0.0.1';
export const CLIENT_HELO = 'client.test';
/** The recipients' domain: mailwarden's `domains`. */
export const RCPT_DOMAIN = 'dest.test';
export const SELECTOR = 'bench2048';
/** The spoofed domain: SPF does not cover the client and DMARC says p=reject. */
export const SPOOFED_DOMAIN = 'bank.test';
const SIGNING_DOMAINS = ['good.test', 'includes.test', 'news.test', 'bank.test'] as const;
type SigningDomain = (typeof SIGNING_DOMAINS)[number];

export type CorpusClass =
    /** good.test: SPF pass, DKIM pass, DMARC pass (p=quarantine). */
    | 'aligned'
    /** includes.test: SPF passes four lookups deep (three includes, an `a:`), DMARC p=reject with adkim=s. */
    | 'spf-includes'
    /** news.test: SPF through `a` and `mx`, DMARC p=none, list headers. */
    | 'newsletter'
    /** good.test signed, then the body altered: DKIM fails, DMARC still passes through aligned SPF. */
    | 'dkim-broken'
    /** MAIL FROM and From at bank.test, unsigned: SPF fail, DMARC fail, p=reject. */
    | 'spoof-envelope'
    /** MAIL FROM at good.test (SPF pass, not aligned), From at bank.test, unsigned: DMARC fail, p=reject. */
    | 'spoof-header';

/** Share of each class, in the order they are drawn. */
export const CLASS_SHARES: readonly (readonly [CorpusClass, number])[] = [
    ['aligned', 0.6],
    ['spf-includes', 0.1],
    ['newsletter', 0.1],
    ['dkim-broken', 0.05],
    ['spoof-envelope', 0.075],
    ['spoof-header', 0.075],
];

export interface CorpusMessage {
    /** Position in the corpus. */
    readonly index: number;
    readonly class: CorpusClass;
    /** `reject`: a filter must answer 5xx; `accept`: it must reach the sink. */
    readonly expect: 'accept' | 'reject';
    /** The Message-ID field's value without angle brackets: how the sink tells messages apart. */
    readonly id: string;
    readonly mailFrom: string;
    readonly rcptTo: string;
    /** True for the ~100 KB messages with an attachment. */
    readonly large: boolean;
    /** The message as the sender wrote it (CRLF line ends, not dot-stuffed). */
    readonly raw: Buffer;
}

export interface CorpusOptions {
    count: number;
    seed: number;
    /** Share of messages with a ~100 KB attachment (0–1). */
    largeShare: number;
    keys: DkimKeys;
    /** The signatures' t= (default: now). */
    signTime?: Date;
}

export type DkimKeys = Readonly<Record<SigningDomain, { readonly privateKey: string; readonly record: string }>>;

/** A deterministic generator of numbers in [0, 1): xorshift32 over a seed spread by a multiply. */
export function seededRandom(seed: number): () => number {
    let state = Math.imul(seed ^ 0x9e3779b9, 0x85ebca6b) >>> 0 || 0x1234567;
    return () => {
        state ^= state << 13;
        state >>>= 0;
        state ^= state >>> 17;
        state ^= state << 5;
        state >>>= 0;
        return state / 4294967296;
    };
}

/** One RSA-2048 key per signing domain, with its DKIM key record (RFC 6376 section 3.6.1). */
export function makeKeys(bits = 2048): DkimKeys {
    const entries = SIGNING_DOMAINS.map((domain) => {
        const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: bits });
        const der = publicKey.export({ type: 'spki', format: 'der' }).toString('base64');
        return [
            domain,
            {
                privateKey: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
                record: `v=DKIM1; k=rsa; p=${der}`,
            },
        ] as const;
    });
    return Object.fromEntries(entries) as unknown as DkimKeys;
}

/** The DNS the corpus needs: SPF, DKIM keys, DMARC policies, MX/A, and forward-confirmed reverse DNS of the client. */
export function corpusZone(keys: DkimKeys): Zone {
    const dkim = (d: SigningDomain): string => keys[d].record;
    return {
        // Reverse DNS of the client, confirmed forward (iprev pass).
        '1.0.0.127.in-addr.arpa': { PTR: [CLIENT_HELO] },
        [CLIENT_HELO]: { A: [CLIENT_IP] },

        'good.test': { TXT: ['v=spf1 ip4:127.0.0.0/8 -all'], A: ['127.0.0.1'], MX: [mx('mx.good.test')] },
        'mx.good.test': { A: ['127.0.0.1'] },
        [`${SELECTOR}._domainkey.good.test`]: { TXT: [dkim('good.test')] },
        '_dmarc.good.test': { TXT: ['v=DMARC1; p=quarantine; adkim=r; aspf=r; rua=mailto:dmarc@good.test'] },

        // Three includes, one nested, and the client's address found through an `a:` term.
        'includes.test': {
            TXT: ['v=spf1 include:_a.spf.includes.test include:_b.spf.includes.test include:_c.spf.includes.test -all'],
            A: ['127.0.0.1'],
            MX: [mx('mx.good.test')],
        },
        '_a.spf.includes.test': { TXT: ['v=spf1 ip4:192.0.2.0/24 ip4:198.51.100.0/24 ~all'] },
        '_b.spf.includes.test': { TXT: ['v=spf1 ip6:2001:db8::/32 include:_d.spf.includes.test ~all'] },
        '_d.spf.includes.test': { TXT: ['v=spf1 ip4:203.0.113.0/24 ?all'] },
        '_c.spf.includes.test': { TXT: ['v=spf1 a:relay.includes.test -all'] },
        'relay.includes.test': { A: [CLIENT_IP] },
        [`${SELECTOR}._domainkey.includes.test`]: { TXT: [dkim('includes.test')] },
        '_dmarc.includes.test': { TXT: ['v=DMARC1; p=reject; adkim=s; aspf=r'] },

        'news.test': { TXT: ['v=spf1 a mx ~all'], A: ['192.0.2.80'], MX: [mx('mx.news.test')] },
        'mx.news.test': { A: [CLIENT_IP] },
        [`${SELECTOR}._domainkey.news.test`]: { TXT: [dkim('news.test')] },
        '_dmarc.news.test': { TXT: ['v=DMARC1; p=none; rua=mailto:dmarc@news.test'] },

        [SPOOFED_DOMAIN]: { TXT: ['v=spf1 ip4:192.0.2.10 -all'], A: ['192.0.2.10'], MX: [mx('mx.bank.test')] },
        'mx.bank.test': { A: ['192.0.2.10'] },
        [`${SELECTOR}._domainkey.${SPOOFED_DOMAIN}`]: { TXT: [dkim('bank.test')] },
        [`_dmarc.${SPOOFED_DOMAIN}`]: { TXT: ['v=DMARC1; p=reject; adkim=s; aspf=s'] },

        [RCPT_DOMAIN]: { A: ['127.0.0.1'], MX: [mx(`mx.${RCPT_DOMAIN}`)] },
        [`mx.${RCPT_DOMAIN}`]: { A: ['127.0.0.1'] },
    };
}

function mx(exchange: string): { exchange: string; priority: number } {
    return { exchange, priority: 10 };
}

const WORDS = (
    'we you they our your this that with from about after before please thanks kind regards ' +
    'meeting agenda minutes quarter budget forecast invoice payment order shipment delivery tracking ' +
    'customer account support ticket release version notes update schedule review draft final ' +
    'attached document report summary project milestone deadline team office travel booking ' +
    'confirm cancel change request approve question answer follow next week monday friday today ' +
    'morning afternoon call video room lunch new old price offer subscription newsletter event'
).split(' ');

/** Text of about `bytes` bytes: sentences wrapped at 76 characters, an empty line between paragraphs. */
function paragraphs(rnd: () => number, bytes: number): string[] {
    const lines: string[] = [];
    let size = 0;
    let line = '';
    const push = (): void => {
        lines.push(line);
        size += line.length + 2;
        line = '';
    };
    while (size + line.length < bytes) {
        const n = 5 + Math.floor(rnd() * 11);
        for (let k = 0; k < n; k++) {
            let word = WORDS[Math.floor(rnd() * WORDS.length)]!;
            if (k === 0) word = word[0]!.toUpperCase() + word.slice(1);
            if (k === n - 1) word += '.';
            if (line.length + word.length + 1 > 76) push();
            line = line ? `${line} ${word}` : word;
        }
        if (rnd() < 0.1) {
            push();
            lines.push('');
            size += 2;
        }
    }
    if (line) push();
    return lines;
}

function drawClass(r: number): CorpusClass {
    let sum = 0;
    for (const [name, share] of CLASS_SHARES) {
        sum += share;
        if (r < sum) return name;
    }
    return CLASS_SHARES[CLASS_SHARES.length - 1]![0];
}

const DISPLAY: Record<CorpusClass, string> = {
    aligned: 'Ann Example',
    'spf-includes': 'Billing',
    newsletter: 'News Letter',
    'dkim-broken': 'Carl Example',
    'spoof-envelope': 'Bank Security',
    'spoof-header': 'Bank Security',
};

interface Draft {
    head: string[];
    body: string;
}

function draft(i: number, cls: CorpusClass, large: boolean, rnd: () => number, fromAddress: string): Draft {
    const fromDomain = fromAddress.slice(fromAddress.indexOf('@') + 1);
    const to = `user${i % 50}@${RCPT_DOMAIN}`;
    const date = new Date(Date.UTC(2026, 10, 2, 9, 0, 0) + i * 41_000).toUTCString().replace('GMT', '+0000');
    const hex = (n: number): string => Math.floor(rnd() * 16 ** n).toString(16);
    const boundary = `=_part_${i}_${hex(8)}`;
    const head = [
        `Received: from app${i % 4}.${fromDomain} (app${i % 4}.${fromDomain} [10.1.2.${i % 250}])\r\n` +
            `\tby smtp-out.${fromDomain} with ESMTPSA id ${hex(10).toUpperCase()}\r\n\tfor <${to}>; ${date}`,
        `From: ${DISPLAY[cls]} <${fromAddress}>`,
        `To: User ${i % 50} <${to}>`,
        `Subject: ${paragraphs(rnd, 40)[0]!.slice(0, 64)}`,
        `Date: ${date}`,
        `Message-ID: <bench.${i}.${hex(8)}@${fromDomain}>`,
        'MIME-Version: 1.0',
    ];
    if (cls === 'newsletter') {
        head.push(
            `List-Unsubscribe: <https://news.test/u/${i}>, <mailto:unsubscribe+${i}@news.test>`,
            'List-Unsubscribe-Post: List-Unsubscribe=One-Click',
            'Precedence: bulk',
        );
    }
    // 3–10 KB in all: two renderings of the same text (plain and HTML) of 1.2–4.4 KB each
    const textBytes = 1_200 + Math.floor(rnd() * 3_200);
    const text = paragraphs(rnd, textBytes);
    const html = [
        '<html><head><meta charset="us-ascii"></head><body>',
        ...text.map((l) => (l === '' ? '</p><p>' : l)),
        '</body></html>',
    ];
    const part = (type: string, lines: string[]): string[] => [
        `--${boundary}`,
        `Content-Type: ${type}; charset=us-ascii`,
        'Content-Transfer-Encoding: 7bit',
        '',
        ...lines,
        '',
    ];
    let body: string[];
    if (!large) {
        head.push(`Content-Type: multipart/alternative; boundary="${boundary}"`);
        body = ['This is a multi-part message in MIME format.', '', ...part('text/plain', text)];
        body.push(...part('text/html', html), `--${boundary}--`, '');
    } else {
        // a ~72 KB attachment, ~98 KB once base64-encoded (RFC 2045 section 6.8: lines of 76)
        const attachment = Buffer.alloc(72 * 1024);
        for (let k = 0; k < attachment.length; k += 4) attachment.writeUInt32LE(Math.floor(rnd() * 2 ** 32), k);
        const encoded = attachment.toString('base64').match(/.{1,76}/g) ?? [];
        head.push(`Content-Type: multipart/mixed; boundary="${boundary}"`);
        body = [
            'This is a multi-part message in MIME format.',
            '',
            ...part('text/plain', text),
            `--${boundary}`,
            'Content-Type: application/pdf; name="statement.pdf"',
            'Content-Transfer-Encoding: base64',
            'Content-Disposition: attachment; filename="statement.pdf"',
            '',
            ...encoded,
            '',
            `--${boundary}--`,
            '',
        ];
    }
    return { head, body: body.join('\r\n') };
}

const SIGNED_FIELDS = ['from', 'to', 'subject', 'date', 'message-id', 'mime-version', 'content-type'];

async function sign(raw: Buffer, domain: SigningDomain, keys: DkimKeys, signTime: Date): Promise<Buffer> {
    const headerList =
        domain === 'news.test' ? [...SIGNED_FIELDS, 'list-unsubscribe', 'list-unsubscribe-post'] : SIGNED_FIELDS;
    const result = await dkimSign(raw, {
        canonicalization: 'relaxed/relaxed',
        algorithm: 'rsa-sha256',
        signTime,
        signatureData: [{ signingDomain: domain, selector: SELECTOR, privateKey: keys[domain].privateKey, headerList }],
    } as Parameters<typeof dkimSign>[1]);
    if (result.errors.length > 0) throw new Error(`DKIM signing failed: ${JSON.stringify(result.errors)}`);
    return Buffer.concat([Buffer.from(result.signatures), raw]);
}

/** Generates the corpus: `count` messages, classes in CLASS_SHARES proportions, sizes as described above. */
export async function generateCorpus(options: CorpusOptions): Promise<CorpusMessage[]> {
    const rnd = seededRandom(options.seed);
    const signTime = options.signTime ?? new Date();
    const out: CorpusMessage[] = [];
    for (let i = 0; i < options.count; i++) {
        const cls = drawClass(rnd());
        const large = rnd() < options.largeShare;
        const spoof = cls === 'spoof-envelope' || cls === 'spoof-header';
        const fromDomain: SigningDomain =
            cls === 'spf-includes'
                ? 'includes.test'
                : cls === 'newsletter'
                  ? 'news.test'
                  : spoof
                    ? SPOOFED_DOMAIN
                    : 'good.test';
        const local = spoof ? 'security' : cls === 'newsletter' ? 'news' : `user${i % 97}`;
        const fromAddress = `${local}@${fromDomain}`;
        const mailFrom =
            cls === 'spoof-header'
                ? `bounce+${i}@good.test`
                : cls === 'newsletter'
                  ? `bounce+${i}@news.test`
                  : fromAddress;
        const { head, body } = draft(i, cls, large, rnd, fromAddress);
        let raw: Buffer = Buffer.from(head.join('\r\n') + '\r\n\r\n' + body, 'latin1');
        if (!spoof) raw = await sign(raw, fromDomain, options.keys, signTime);
        if (cls === 'dkim-broken') {
            // a footer added after signing, as a list server or a scanner might: the body hash no longer matches
            raw = Buffer.concat([raw, Buffer.from('-- \r\nScanned by the outbound relay.\r\n', 'latin1')]);
        }
        const id = /^Message-ID: <([^>]+)>/im.exec(head.join('\r\n'))![1]!;
        out.push({
            index: i,
            class: cls,
            expect: spoof ? 'reject' : 'accept',
            id,
            mailFrom,
            rcptTo: `user${i % 50}@${RCPT_DOMAIN}`,
            large,
            raw,
        });
    }
    return out;
}

/**
 * The message as it goes on the wire after DATA (RFC 5321 section 4.5.2): every line starting
 * with "." gets one more, then the terminating `.CRLF`. The raw message ends with CRLF.
 */
export function toWire(raw: Buffer): Buffer {
    let text = raw.toString('latin1');
    if (text.startsWith('.')) text = '.' + text;
    text = text.replaceAll('\r\n.', '\r\n..');
    if (!text.endsWith('\r\n')) text += '\r\n';
    return Buffer.from(text + '.\r\n', 'latin1');
}

/** Counts per class, and how many must be refused. */
export function describeCorpus(corpus: readonly CorpusMessage[]): {
    messages: number;
    bytes: number;
    meanBytes: number;
    large: number;
    spoofs: number;
    classes: Record<string, number>;
} {
    const classes: Record<string, number> = {};
    let bytes = 0;
    for (const m of corpus) {
        classes[m.class] = (classes[m.class] ?? 0) + 1;
        bytes += m.raw.length;
    }
    return {
        messages: corpus.length,
        bytes,
        meanBytes: corpus.length ? Math.round(bytes / corpus.length) : 0,
        large: corpus.filter((m) => m.large).length,
        spoofs: corpus.filter((m) => m.expect === 'reject').length,
        classes,
    };
}
