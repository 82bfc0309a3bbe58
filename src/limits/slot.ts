/**
 * The Redis Cluster hash slot of a key (CRC16/XMODEM of the key, or of its hash tag: the part
 * between the first `{` and the next `}` when that part is not empty, modulo 16384), as the
 * Cluster specification defines it. The store groups the keys of a stage by slot, one script
 * call per slot. Pure: it must not talk to Redis.
 */

const TABLE = new Uint16Array(256);
for (let i = 0; i < 256; i++) {
    let crc = i << 8;
    for (let bit = 0; bit < 8; bit++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
    TABLE[i] = crc;
}

function crc16(bytes: Uint8Array): number {
    let crc = 0;
    for (const b of bytes) crc = ((crc << 8) & 0xffff) ^ TABLE[((crc >> 8) ^ b) & 0xff]!;
    return crc;
}

export function hashSlot(key: string): number {
    const open = key.indexOf('{');
    if (open >= 0) {
        const close = key.indexOf('}', open + 1);
        if (close > open + 1) key = key.slice(open + 1, close);
    }
    return crc16(Buffer.from(key, 'utf8')) % 16384;
}
