/**
 * The counter keys of limits and the triplets of greylisting, built from facts: values are
 * normalised (addresses and domains lower-cased, an address's subaddress folded out of limit
 * keys as the key part says, IP addresses cut to their network prefix)
 * and a value that is long or holds unusual characters is replaced by a hash, so a hostile
 * client cannot make huge keys or break the key format. The limit id is part of every key.
 * Pure: no clock, no randomness, no store.
 */
import { createHash } from 'node:crypto';
import { elementType, isListType } from '../rules/facts.ts';
import { formatIp, parseIp } from '../net/ip.ts';
import {
    GREYLIST_IPV4_PREFIX,
    GREYLIST_IPV6_PREFIX,
    GREYLIST_NETWORK_IPV6_PREFIX,
    type KeyPart,
    type LimitSpec,
} from '../rules/limits.ts';
import { baseAddress, domainOfAddress, foldAddress, foldMailDomain } from '../rules/names.ts';
import type { Facts, FactValue, Stage } from '../types.ts';

/** Longest value kept readable in a key; longer ones are hashed. */
const MAX_PART = 100;
/** Most keys one limit charges for one command (a message to many recipients, keyed by recipient). */
export const MAX_KEYS = 1000;

/** Printable ASCII without spaces, braces (the Cluster hash tag) or the separator. */
const SAFE = /^[\x21-\x7a\x7e]+$/;

function hashed(value: string): string {
    return `#${createHash('sha256').update(value, 'utf8').digest('base64url').slice(0, 27)}`;
}

/** A key part that is short and safe as it is, or its hash. */
export function safePart(value: string): string {
    return value.length <= MAX_PART && SAFE.test(value) && !value.includes('|') ? value : hashed(value);
}

/** `address` cut to `/v4` or `/v6` (IPv4-mapped IPv6 counts as IPv4); null when not an address. */
export function ipNetwork(address: string, v4: number, v6: number): string | null {
    const ip = parseIp(address.replace(/^\[|\]$/g, ''));
    if (ip === null) return null;
    if (ip.family === 4) {
        const size = 2 ** (32 - v4);
        const net = ip.value - (ip.value % size);
        return v4 >= 32 ? formatIp(ip) : `${formatIp({ family: 4, value: net })}/${v4}`;
    }
    const hostBits = BigInt(128 - v6);
    const net = (ip.value >> hostBits) << hostBits;
    return v6 >= 128 ? formatIp(ip) : `${formatIp({ family: 6, value: net })}/${v6}`;
}

function normalise(type: string, value: string | number | boolean, delimiter: string): string {
    if (typeof value !== 'string') return String(value);
    switch (type) {
        case 'address':
            // `alice+1@d` and `alice+2@d` are one mailbox: one counter (Postfix's recipient_delimiter)
            return baseAddress(value, delimiter);
        case 'domain':
            return foldMailDomain(value);
        default:
            return value.toLowerCase();
    }
}

/** The values one key part takes for these facts (several for a list fact); empty when missing. */
function partValues(part: KeyPart, facts: Facts, stage: Stage): string[] {
    if (part.kind === 'global') return ['*'];
    const raw: FactValue | undefined = facts[part.fact];
    if (part.kind === 'ip') {
        if (typeof raw !== 'string') return [];
        const net = ipNetwork(raw, part.v4, part.v6);
        return net === null ? [safePart(raw.toLowerCase())] : [net];
    }
    let values: readonly (string | number | boolean)[];
    if (part.fact === 'rcpt.domain' && stage === 'data') {
        // After RCPT the domains of every recipient of the message.
        const rcpts = facts['rcpt.to'];
        values = Array.isArray(rcpts)
            ? (rcpts as readonly string[]).map((a) => domainOfAddress(a) ?? '').filter((d) => d !== '')
            : [];
    } else if (part.fact === 'rcpt.address' && stage === 'data') {
        // After RCPT every recipient of the message, as rcpt.to.
        const rcpts = facts['rcpt.to'];
        values = Array.isArray(rcpts) ? (rcpts as readonly string[]) : [];
    } else if (Array.isArray(raw)) {
        // At the rcpt stage a recipient key counts the recipient being checked (the last one;
        // the rcpt stage's rcpt.to holds only it).
        values = part.fact === 'rcpt.to' && stage === 'rcpt' ? raw.slice(-1) : raw;
    } else if (raw === null || raw === undefined || raw === '') {
        values = [];
    } else {
        values = [raw as string | number | boolean];
    }
    const type = isListType(part.type) ? elementType(part.type) : part.type;
    const out = new Set<string>();
    for (const v of values) {
        if (v === '') continue;
        out.add(safePart(normalise(type, v, part.delimiter ?? '')));
    }
    return [...out];
}

/**
 * The store keys a limit charges for these facts: one, or several when a part is a list
 * (recipients at the data stage). Empty when a key fact is missing (no login, the null
 * sender's domain…): the limit does not apply then.
 */
export function limitKeys(spec: LimitSpec, facts: Facts, stage: Stage): string[] {
    let keys = [spec.id];
    for (const part of spec.key) {
        const values = partValues(part, facts, stage);
        if (values.length === 0) return [];
        const next: string[] = [];
        for (const k of keys) {
            for (const v of values) {
                if (next.length >= MAX_KEYS) break;
                next.push(`${k}|${v}`);
            }
        }
        keys = next;
    }
    return keys;
}

/**
 * An envelope sender as greylisting compares it (as postgrey does): lower-cased, a BATV
 * prefix (`prvs=…=`) removed and digit runs in the local part replaced by `#`, so the
 * per-attempt addresses of VERP and SRS senders still match on a retry. `<>` for the null sender.
 */
export function greylistSender(address: string): string {
    if (address === '') return '<>';
    const folded = foldAddress(address);
    const at = folded.lastIndexOf('@');
    let local = at < 0 ? folded : folded.slice(0, at);
    const domain = at < 0 ? '' : folded.slice(at);
    local = local.replace(/^(prvs|msprvs\d*|btv\d+)=[^=]*=/, '');
    local = local.replace(/\d+/g, '#');
    return `${local}${domain}`;
}

/**
 * The greylisting triplet (client network, sender, recipient) of an entry, the client it
 * counts, and the larger network whose new records are capped together (IPv4 /24, IPv6 /48:
 * one holder of a /48 has 65,536 /64s).
 */
export function greylistTriplet(
    id: string,
    clientIp: string,
    sender: string,
    recipient: string,
): { triplet: string; client: string; network: string } {
    const net = ipNetwork(clientIp, GREYLIST_IPV4_PREFIX, GREYLIST_IPV6_PREFIX) ?? safePart(clientIp.toLowerCase());
    const wide = ipNetwork(clientIp, GREYLIST_IPV4_PREFIX, GREYLIST_NETWORK_IPV6_PREFIX) ?? net;
    const client = `${id}|${net}`;
    return {
        triplet: `${client}|${safePart(greylistSender(sender))}|${safePart(foldAddress(recipient))}`,
        client,
        network: `${id}|${wide}`,
    };
}
