/**
 * `mailwarden dkim keygen --domain D --selector S [--type rsa|ed25519] [--bits 2048] [--out FILE]`:
 * makes a DKIM key pair (RFC 6376; Ed25519 per RFC 8463; RSA sizes per RFC 8301), writes the
 * private key (PKCS#8 PEM, mode 0600, never over an existing file) and prints the DNS TXT record
 * to publish on standard output, split into 255-octet strings (RFC 1035 section 3.3.14); what to
 * add to the configuration goes to standard error. It never prints the private key.
 * Exit codes: 0 done, 1 failed, 2 usage error.
 */
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { normalizeHostname } from '../config/net.ts';
import { DKIM_RSA_BITS, dkimRecord, generateDkimKey, zoneLine, type DkimKeyType } from '../submission/dkim-keys.ts';

export interface DkimIo {
    readonly out: (line: string) => void;
    readonly err: (line: string) => void;
    readonly cwd: string;
}

export const DKIM_USAGE = `Usage: mailwarden dkim keygen --domain DOMAIN --selector SELECTOR [options]

  --type rsa|ed25519   key type (default rsa; many receivers still cannot verify ed25519 alone)
  --bits N             RSA key size, ${DKIM_RSA_BITS.min} to ${DKIM_RSA_BITS.max} (default ${DKIM_RSA_BITS.default})
  --out FILE           where to write the private key (default DOMAIN.SELECTOR.key); never overwritten

Prints the TXT record to publish (SELECTOR._domainkey.DOMAIN) on standard output.
`;

const SELECTOR_RE = /^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$/;

/** Runs `mailwarden dkim …` (argv without the word `dkim`); returns the exit code. */
export function runDkim(argv: readonly string[], io: DkimIo): number {
    const usage = (message: string): number => {
        io.err(`mailwarden dkim: ${message}`);
        io.err('');
        for (const line of DKIM_USAGE.trimEnd().split('\n')) io.err(line);
        return 2;
    };
    let parsed;
    try {
        parsed = parseArgs({
            args: [...argv],
            allowPositionals: true,
            strict: true,
            options: {
                domain: { type: 'string' },
                selector: { type: 'string' },
                type: { type: 'string' },
                bits: { type: 'string' },
                out: { type: 'string' },
                help: { type: 'boolean', short: 'h' },
            },
        });
    } catch (err) {
        return usage(err instanceof Error ? err.message : String(err));
    }
    const { values, positionals } = parsed;
    if (values.help || positionals[0] === 'help') {
        for (const line of DKIM_USAGE.trimEnd().split('\n')) io.out(line);
        return 0;
    }
    if (positionals[0] !== 'keygen')
        return usage(positionals[0] ? `unknown action '${positionals[0]}'` : 'name an action: keygen');
    if (positionals.length > 1) return usage(`unexpected '${positionals[1] ?? ''}'`);
    const domain = values.domain === undefined ? null : normalizeHostname(values.domain);
    if (values.domain === undefined) return usage('--domain is required');
    if (domain === null) return usage(`--domain "${values.domain}" is not a domain name`);
    const selector = values.selector;
    if (selector === undefined) return usage('--selector is required');
    if (!SELECTOR_RE.test(selector))
        return usage(`--selector "${selector}" is not a DKIM selector (letters, digits, "-", labels joined by ".")`);
    const type = (values.type ?? 'rsa') as DkimKeyType;
    if (type !== 'rsa' && type !== 'ed25519') return usage(`--type must be rsa or ed25519, not "${values.type ?? ''}"`);
    if (values.bits !== undefined && type !== 'rsa') return usage('--bits applies to RSA keys only');
    const bits = values.bits === undefined ? DKIM_RSA_BITS.default : Number(values.bits);
    if (!(Number.isInteger(bits) && bits >= DKIM_RSA_BITS.min && bits <= DKIM_RSA_BITS.max)) {
        return usage(`--bits must be a whole number from ${DKIM_RSA_BITS.min} to ${DKIM_RSA_BITS.max}`);
    }
    const outName = values.out ?? `${domain}.${selector}.key`;
    const out = path.resolve(io.cwd, outName);

    const { privatePem, publicKey } = generateDkimKey(type, bits);
    try {
        // 'wx': refuse to replace a key that may be published already
        fs.writeFileSync(out, privatePem, { mode: 0o600, flag: 'wx' });
        fs.chmodSync(out, 0o600);
    } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        io.err(
            code === 'EEXIST'
                ? `mailwarden dkim: ${outName} exists already; it is not overwritten (choose another --out)`
                : `mailwarden dkim: cannot write ${outName}: ${err instanceof Error ? err.message : String(err)}`,
        );
        return 1;
    }
    io.out(zoneLine(selector, domain, dkimRecord(publicKey)));
    io.err(`wrote the private key to ${outName} (mode 0600); publish the TXT record above, then add:`);
    io.err('dkim:');
    io.err('  sign:');
    io.err(`    - { domain: ${domain}, selector: ${selector}, key: ${out} }`);
    return 0;
}
