/**
 * Hides credentials in text a config message would echo: the user information of a URL
 * (`smtp://user:secret@host` → `smtp://***@host`). Pure text in, text out; it must not decide
 * whether a value is valid, and what it returns is only for messages, never for use.
 */

/** `scheme://` followed by everything up to the last `@`: the user information, however it is written. */
const USERINFO = /^([a-z][a-z0-9+.-]*:\/\/)[\s\S]*@/i;

/**
 * The text with the user information of a URL (a user name, a password or both) shown as `***`;
 * also without a `scheme://` (`user:secret@host`, `smtp:user:secret@host`): whatever stands
 * before the last `@` once a `:` is in it.
 */
export function redactUserinfo(text: string): string {
    if (USERINFO.test(text)) return text.replace(USERINFO, '$1***@');
    const at = text.lastIndexOf('@');
    return at > 0 && text.slice(0, at).includes(':') ? `***${text.slice(at)}` : text;
}
