/**
 * The `mailwarden` command line: parses arguments and dispatches to a command.
 * serve (run the proxy), check (validate config and rules), explain, users, dkim, auth,
 * --version, help.
 * Exit codes: 0 success, 1 invalid configuration or failed command, 2 usage error.
 * It must stay a thin dispatcher: commands live in src/commands/.
 */
import { parseArgs } from 'node:util';
import { VERSION } from './version.ts';

const USAGE = `Usage: mailwarden <command> [options]

Commands:
  serve [-c FILE]     run the proxy
  check [-c FILE] [--strict]
                      validate the configuration and every rule file, as serve and reload do,
                      and run the rules' cases (one that does not hold is a warning;
                      --strict exits 1 on warnings, for CI)
  explain [-c FILE] --client-ip IP [--helo NAME] --mail-from ADDR --rcpt ADDR [--rcpt ADDR…]
          [--listener NAME] [--auth-user USER] [--tls | --no-tls] [--raw] [--json] MESSAGE.eml
                      run every check and rule on a message without sending it, and show why
  users add|passwd|remove|list [-c FILE | --file FILE] [--send-as ADDR…] [LOGIN]
                      manage the submission users file (passwords stored as argon2id only)
  dkim keygen --domain D --selector S [--type rsa|ed25519] [--bits N] [--out FILE]
                      make a DKIM signing key and print the DNS record to publish
  auth status|unlock [-c FILE] [--ip ADDRESS] [--login LOGIN]
                      show or clear the failed-login counts of the login lockout
  help                show this text

Options:
  -c, --config FILE   configuration file (else $MAILWARDEN_CONFIG, else ./mailwarden.yaml,
                      else the embedded defaults)
  --version           print the version

Documentation: README.md and docs/ in the distribution.
`;

async function main(argv: string[]): Promise<number> {
    const { values, positionals } = parseArgs({
        args: argv,
        allowPositionals: true,
        strict: false,
        options: {
            config: { type: 'string', short: 'c' },
            strict: { type: 'boolean' },
            version: { type: 'boolean' },
            help: { type: 'boolean', short: 'h' },
        },
    });
    if (values.version) {
        process.stdout.write(`mailwarden ${VERSION}\n`);
        return 0;
    }
    const command = positionals[0] ?? (values.help ? 'help' : undefined);
    const configFlag = typeof values.config === 'string' ? values.config : undefined;
    // `serve --help` must not start serving, nor `check --help` check; the other commands have their own help
    if (values.help && (command === 'serve' || command === 'check')) {
        process.stdout.write(USAGE);
        return 0;
    }
    switch (command) {
        case 'serve': {
            const { runServe } = await import('./commands/serve.ts');
            return runServe({ configFlag });
        }
        case 'check': {
            const { resolveConfigPath } = await import('./config/load.ts');
            const { runCheck } = await import('./commands/check.ts');
            return runCheck({
                configPath: resolveConfigPath({ flag: configFlag, env: process.env, cwd: process.cwd() }),
                env: process.env,
                out: (line) => process.stdout.write(`${line}\n`),
                err: (line) => process.stderr.write(`${line}\n`),
                strict: values.strict === true,
            });
        }
        case 'explain': {
            const { resolveConfigPath } = await import('./config/load.ts');
            const { runExplain } = await import('./commands/explain.ts');
            return runExplain(argv.slice(argv.indexOf('explain') + 1), {
                out: (text) => process.stdout.write(text),
                err: (text) => process.stderr.write(text),
                env: process.env,
                resolveConfigPath: (flag) => resolveConfigPath({ flag, env: process.env, cwd: process.cwd() }),
            });
        }
        case 'users': {
            const { runUsers } = await import('./commands/users.ts');
            return runUsers(argv.slice(argv.indexOf('users') + 1), {
                stdin: process.stdin,
                out: (line) => process.stdout.write(`${line}\n`),
                err: (line) => process.stderr.write(`${line}\n`),
                prompt: (text) => process.stderr.write(text),
                env: process.env,
                cwd: process.cwd(),
            });
        }
        case 'dkim': {
            const { runDkim } = await import('./commands/dkim.ts');
            return runDkim(argv.slice(argv.indexOf('dkim') + 1), {
                out: (line) => process.stdout.write(`${line}\n`),
                err: (line) => process.stderr.write(`${line}\n`),
                cwd: process.cwd(),
            });
        }
        case 'auth': {
            const { runAuth } = await import('./commands/auth.ts');
            return runAuth(argv.slice(argv.indexOf('auth') + 1), {
                out: (line) => process.stdout.write(`${line}\n`),
                err: (line) => process.stderr.write(`${line}\n`),
                env: process.env,
                cwd: process.cwd(),
            });
        }
        case 'help':
            process.stdout.write(USAGE);
            return 0;
        default:
            process.stderr.write(command ? `mailwarden: unknown command '${command}'\n\n${USAGE}` : USAGE);
            return 2;
    }
}

main(process.argv.slice(2)).then(
    (code) => {
        if (code !== -1) process.exitCode = code;
    },
    (err: unknown) => {
        process.stderr.write(`mailwarden: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
        process.exitCode = 1;
    },
);
