/**
 * RFC 2047 encoded-words (`=?charset?B|Q?text?=`) decoded as a mail program shows them, for the
 * checks that must see what a reader sees (what a From field's name shows, whose
 * Authentication-Results a field claims to be). A charset the runtime does not know is read as
 * UTF-8 (ASCII, `@` and dots included, comes through as written) rather than left encoded, and
 * UTF-7 (RFC 2152), which some mail programs still decode, is decoded here. Linear in the
 * text's length: the patterns' classes exclude the delimiters they stop at. Pure; it never
 * throws.
 */

/** `=?charset?B|Q?text?=` (RFC 2047 section 2). */
const ENCODED_WORD = /=\?([^?\s]{1,75})\?([bBqQ])\?([^?\s]*)\?=/g;

/** The text with its encoded-words decoded; white space between two of them dropped (RFC 2047 section 6.2). */
export function decodeEncodedWords(text: string): string {
    if (!text.includes('=?')) return text;
    return text
        .replace(/(\?=)[ \t\r\n]+(?==\?)/g, '$1')
        .replace(ENCODED_WORD, (_word, charset: string, enc: string, data: string) => {
            const bytes =
                enc === 'b' || enc === 'B'
                    ? Buffer.from(data, 'base64')
                    : Buffer.from(
                          data
                              .replace(/_/g, ' ')
                              .replace(/=([0-9a-fA-F]{2})/g, (_m, hex: string) =>
                                  String.fromCharCode(parseInt(hex, 16)),
                              ),
                          'latin1',
                      );
            // RFC 2231 section 5: a language after `*`
            return decodeCharset(bytes, charset.split('*')[0]!.toLowerCase());
        });
}

function decodeCharset(bytes: Buffer, charset: string): string {
    if (charset === 'utf-7' || charset === 'unicode-1-1-utf-7') return decodeUtf7(bytes.toString('latin1'));
    try {
        return new TextDecoder(charset).decode(bytes);
    } catch {
        return new TextDecoder('utf-8').decode(bytes);
    }
}

const BASE64_RUN = /\+([A-Za-z0-9+/]*)-?/g;

/** UTF-7 (RFC 2152): `+` opens modified base64 of UTF-16BE, ended by `-` (dropped) or any other character; `+-` is `+`. */
export function decodeUtf7(text: string): string {
    return text.replace(BASE64_RUN, (run: string, b64: string) => {
        if (b64 === '') return run === '+-' ? '+' : run;
        const bytes = Buffer.from(b64, 'base64');
        let out = '';
        for (let i = 0; i + 1 < bytes.length; i += 2) out += String.fromCharCode((bytes[i]! << 8) | bytes[i + 1]!);
        return out;
    });
}
