/**
 * `${VAR}` and `${VAR:-default}` expansion of config strings from an environment map.
 * `$${` stands for a literal `${`. Reports problems with their offset in the text; it must
 * not read process.env itself or throw.
 */

export interface ExpansionProblem {
    /** Offset of the `${` in the input text. */
    readonly index: number;
    /** The reference as written, e.g. `${SMTP_PORT}`. */
    readonly reference: string;
    readonly message: string;
}

export interface Expansion {
    readonly value: string;
    /** True when at least one `${…}` was replaced. */
    readonly expanded: boolean;
    readonly problems: readonly ExpansionProblem[];
}

const NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;

export function expandEnv(text: string, env: Readonly<Record<string, string | undefined>>): Expansion {
    if (!text.includes('$')) return { value: text, expanded: false, problems: [] };
    let out = '';
    let expanded = false;
    const problems: ExpansionProblem[] = [];
    let i = 0;
    while (i < text.length) {
        if (text.startsWith('$${', i)) {
            out += '${';
            i += 3;
            continue;
        }
        if (!text.startsWith('${', i)) {
            out += text[i];
            i++;
            continue;
        }
        const end = text.indexOf('}', i + 2);
        if (end < 0) {
            problems.push({
                index: i,
                reference: text.slice(i),
                message: 'unterminated "${": write ${NAME} or ${NAME:-default} (or "$${" for a literal "${")',
            });
            out += text.slice(i);
            break;
        }
        const reference = text.slice(i, end + 1);
        const body = text.slice(i + 2, end);
        const sep = body.indexOf(':-');
        const name = sep < 0 ? body : body.slice(0, sep);
        const fallback = sep < 0 ? null : body.slice(sep + 2);
        if (!NAME_RE.test(name)) {
            problems.push({
                index: i,
                reference,
                message: `bad variable reference "${reference}": write \${NAME} or \${NAME:-default} (or "$\${" for a literal "\${")`,
            });
        } else {
            const value = env[name];
            if (value !== undefined && value !== '') out += value;
            else if (fallback !== null) out += fallback;
            else if (value === '') out += '';
            else problems.push({ index: i, reference, message: `environment variable ${name} is not set` });
            expanded = true;
        }
        i = end + 1;
    }
    return { value: out, expanded, problems };
}
