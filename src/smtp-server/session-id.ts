/**
 * Session ids as smtp-server makes them (80 random bits written as 16 base-32 digits, `0-9a-v`),
 * without its cost per connection: smtp-server asks the kernel for 10 random bytes and goes
 * through a BigInt for every connection; here the bytes come from a pool refilled once every
 * few hundred connections, and the 16 digits are read straight off the 80 bits (five bits a
 * digit, the same digits BigInt's base-32 conversion gives, zero-padded).
 *
 * It must not be used for anything secret: an id names a session in logs and replies.
 */
import { randomFillSync } from 'node:crypto';

const DIGITS = '0123456789abcdefghijklmnopqrstuv';
const ID_BYTES = 10;
const pool = Buffer.alloc(ID_BYTES * 512);
let offset = pool.length;

/** The 16 base-32 digits of 10 bytes read as one big-endian number. */
export function formatSessionId(bytes: Uint8Array, at = 0): string {
    let id = '';
    // 80 bits in two 40-bit halves: each fits a double exactly and gives 8 digits
    for (let half = 0; half < 2; half++) {
        const o = at + half * 5;
        const low = ((bytes[o + 1]! << 24) | (bytes[o + 2]! << 16) | (bytes[o + 3]! << 8) | bytes[o + 4]!) >>> 0;
        let bits = bytes[o]! * 2 ** 32 + low;
        let digits = '';
        for (let i = 0; i < 8; i++) {
            digits = DIGITS[bits % 32]! + digits;
            bits = Math.floor(bits / 32);
        }
        id += digits;
    }
    return id;
}

/** A new session id: 80 random bits, 16 base-32 digits. */
export function sessionId(): string {
    if (offset + ID_BYTES > pool.length) {
        randomFillSync(pool);
        offset = 0;
    }
    const id = formatSessionId(pool, offset);
    offset += ID_BYTES;
    return id;
}
