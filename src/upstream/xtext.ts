/**
 * Formatting of XCLIENT attributes (Postfix XCLIENT_README): values are xtext
 * (RFC 3461 section 4), IPv6 client addresses carry the `IPV6:` prefix, names are
 * `[UNAVAILABLE]` when known not to exist and `[TEMPUNAVAIL]` when a DNS failure left them
 * unknown for now, and all attributes go in one command line of at most 512 octets
 * including CRLF (RFC 5321 section 4.5.3.1.4).
 * Pure functions: no I/O, and no decision about whether XCLIENT is used at all.
 */
import net from 'node:net';
import ipaddr from 'ipaddr.js';
import type { ClientIdentity } from '../types.ts';
import { UpstreamError } from './types.ts';

/** The value Postfix expects when an attribute is not known. */
export const XCLIENT_UNAVAILABLE = '[UNAVAILABLE]';

/** The value Postfix expects when a name is not known for now (its lookup failed temporarily). */
export const XCLIENT_TEMPUNAVAIL = '[TEMPUNAVAIL]';

/** Longest command line without its CRLF (RFC 5321 section 4.5.3.1.4: 512 octets with it). */
export const MAX_COMMAND_LENGTH = 510;

/** Longest attribute value (as sent, xtext-encoded) Postfix accepts; longer ones get 501. */
export const MAX_XCLIENT_VALUE = 255;

const PLUS = 0x2b;
const EQUALS = 0x3d;

/**
 * xtext (RFC 3461 section 4): every octet outside `!`..`~`, and `+` and `=` themselves,
 * becomes `+` followed by two upper-case hex digits. The string is taken as UTF-8.
 */
export function xtextEncode(value: string): string {
    let out = '';
    for (const b of Buffer.from(value, 'utf8')) {
        if (b >= 0x21 && b <= 0x7e && b !== PLUS && b !== EQUALS) out += String.fromCharCode(b);
        else out += '+' + b.toString(16).toUpperCase().padStart(2, '0');
    }
    return out;
}

/** Decodes xtext (RFC 3461 section 4) into a UTF-8 string; throws RangeError on malformed input. */
export function xtextDecode(value: string): string {
    const bytes: number[] = [];
    for (let i = 0; i < value.length; i++) {
        const c = value.charCodeAt(i);
        if (c === PLUS) {
            const hex = value.slice(i + 1, i + 3);
            if (!/^[0-9A-F]{2}$/.test(hex)) throw new RangeError(`malformed xtext at offset ${i}`);
            bytes.push(parseInt(hex, 16));
            i += 2;
        } else if (c >= 0x21 && c <= 0x7e && c !== EQUALS) {
            bytes.push(c);
        } else {
            throw new RangeError(`character not allowed in xtext at offset ${i}`);
        }
    }
    return Buffer.from(bytes).toString('utf8');
}

/**
 * The ADDR value: IPv4 in dotted form, IPv6 as `IPV6:` plus the compressed form
 * (an IPv4-mapped IPv6 address is given as the IPv4 address it maps), anything else
 * `[UNAVAILABLE]`.
 */
export function xclientAddr(ip: string): string {
    const bare = ip.replace(/%.*$/, ''); // a zone index means nothing to the upstream
    const family = net.isIP(bare);
    if (family === 4) return bare;
    if (family !== 6) return XCLIENT_UNAVAILABLE;
    const addr = ipaddr.IPv6.parse(bare);
    if (addr.isIPv4MappedAddress()) return addr.toIPv4Address().toString();
    return `IPV6:${addr.toString()}`;
}

const LABEL = /^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$/;

/**
 * The NAME or REVERSE_NAME value: the name, or when there is none `[TEMPUNAVAIL]` if its
 * lookup failed for now and `[UNAVAILABLE]` otherwise; a name that is not a host name Postfix
 * accepts (it answers 501 to the whole command then) is `[UNAVAILABLE]`, as Postfix takes such a
 * name from its own lookup for none at all. A valid name is letters, digits, `-`, `_` and
 * dots, which xtext leaves as they are (RFC 3461 section 4).
 */
export function xclientName(ptr: string | null, temporary = false): string {
    if (ptr === null) return temporary ? XCLIENT_TEMPUNAVAIL : XCLIENT_UNAVAILABLE;
    const name = ptr.replace(/\.$/, '');
    const labels = name.split('.');
    const valid =
        name.length > 0 &&
        name.length <= MAX_XCLIENT_VALUE &&
        labels.every((l) => LABEL.test(l)) &&
        !/^\d+$/.test(labels[labels.length - 1] ?? '');
    return valid ? name : XCLIENT_UNAVAILABLE;
}

/** The HELO value: the client's HELO/EHLO argument, or `[UNAVAILABLE]` when unknown or too long. */
export function xclientHelo(helo: string | null): string {
    if (helo === null || helo === '') return XCLIENT_UNAVAILABLE;
    const value = xtextEncode(helo);
    return value.length <= MAX_XCLIENT_VALUE ? value : XCLIENT_UNAVAILABLE;
}

function xclientPort(port: number): string {
    return Number.isInteger(port) && port > 0 && port < 65536 ? String(port) : XCLIENT_UNAVAILABLE;
}

type Attribute = [name: string, value: string];

function line(attrs: readonly Attribute[]): string {
    return 'XCLIENT ' + attrs.map(([n, v]) => `${n}=${v}`).join(' ');
}

/**
 * The XCLIENT command that passes `client` on, using only the attributes the upstream
 * advertised (`advertised` holds upper-case names); null when none applies.
 *
 * NAME is the forward-confirmed name and REVERSE_NAME the reverse name, confirmed or not
 * (client.reverse). Postfix copies NAME into the reverse name only when NAME is a name;
 * without REVERSE_NAME its reverse name stays the one of the TCP peer (us), which then
 * passes reject_unknown_reverse_client_hostname and check_reverse_client_hostname_access for
 * every client. A name whose lookup failed for now goes as `[TEMPUNAVAIL]`, which Postfix's
 * reject_unknown_* answer with 4xx as for a client of its own, whereas `[UNAVAILABLE]` gets
 * unknown_client_reject_code (550 at many sites).
 *
 * Always one command. Postfix (smtpd xclient_cmd) resets HELO, PROTO and LOGIN that the
 * latest XCLIENT did not carry, and once NAME and ADDR are the real client's it checks
 * any further XCLIENT against smtpd_authorized_xclient_hosts with them and refuses it, so
 * no split into several commands keeps every attribute. To stay within 512 octets, HELO,
 * then NAME, then REVERSE_NAME fall back to `[UNAVAILABLE]` (the EHLO that follows carries
 * the HELO name anyway). A LOGIN that cannot be sent as is fails with UpstreamError('xclient'):
 * passing the client on without its login would turn a submission into anonymous mail.
 */
export function xclientCommand(client: ClientIdentity, advertised: ReadonlySet<string>): string | null {
    const attrs: Attribute[] = [];
    const reverse = client.reverse;
    const temporary = reverse?.temporary === true;
    if (advertised.has('NAME')) attrs.push(['NAME', xclientName(client.ptr, temporary)]);
    // after NAME: Postfix takes the last word on the reverse name
    if (advertised.has('REVERSE_NAME')) {
        attrs.push(['REVERSE_NAME', xclientName(reverse ? reverse.name : client.ptr, temporary)]);
    }
    if (advertised.has('ADDR')) attrs.push(['ADDR', xclientAddr(client.ip)]);
    if (advertised.has('PORT')) attrs.push(['PORT', xclientPort(client.port)]);
    if (advertised.has('PROTO')) attrs.push(['PROTO', client.proto]);
    if (advertised.has('HELO')) attrs.push(['HELO', xclientHelo(client.helo)]);
    if (advertised.has('LOGIN') && client.login !== null) {
        const login = xtextEncode(client.login);
        if (login.length > MAX_XCLIENT_VALUE) {
            throw new UpstreamError('xclient', 'login name too long to pass on with XCLIENT');
        }
        attrs.push(['LOGIN', login]);
    }
    if (attrs.length === 0) return null;
    for (const fallback of ['HELO', 'NAME', 'REVERSE_NAME']) {
        if (line(attrs).length <= MAX_COMMAND_LENGTH) break;
        const attr = attrs.find(([n]) => n === fallback);
        // a `[TEMPUNAVAIL]` is short, and says more than `[UNAVAILABLE]`
        if (attr && attr[1] !== XCLIENT_TEMPUNAVAIL) attr[1] = XCLIENT_UNAVAILABLE;
    }
    return line(attrs);
}
