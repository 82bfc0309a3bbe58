/**
 * Trimming of SP and HTAB (and, where asked, CR and LF) at both ends of a string in linear time.
 * Regular expressions of the form `/^[ \t]+|[ \t]+$/` retry at every character of a run of
 * white space inside the text, quadratic in a run an attacker sends 100,000 bytes long; and
 * String.prototype.trim removes more than the RFC 5322 / RFC 6376 white space (NBSP, U+2028, …).
 * Pure; nothing else belongs here.
 */

/** Without leading and trailing SP and HTAB (RFC 5234 WSP); with `lines`, CR and LF too. */
export function trimWsp(text: string, lines = false): string {
    const isWsp = (c: number): boolean => c === 0x20 || c === 0x09 || (lines && (c === 0x0d || c === 0x0a));
    let start = 0;
    let end = text.length;
    while (start < end && isWsp(text.charCodeAt(start))) start++;
    while (end > start && isWsp(text.charCodeAt(end - 1))) end--;
    return start === 0 && end === text.length ? text : text.slice(start, end);
}

/** Without trailing SP and HTAB. */
export function trimWspEnd(text: string): string {
    let end = text.length;
    while (end > 0 && (text.charCodeAt(end - 1) === 0x20 || text.charCodeAt(end - 1) === 0x09)) end--;
    return end === text.length ? text : text.slice(0, end);
}
