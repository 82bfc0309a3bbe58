/**
 * A small program that tests start inside a private network namespace (with `nsenter`), where
 * their own process cannot reach: it serves DNS on loopback, or makes one SMTP exchange, and
 * prints the outcome as one JSON line. Test code only; it never reaches beyond loopback.
 *   dns                                  serve an empty zone (every name NXDOMAIN) until SIGTERM;
 *                                        prints {"address": "127.0.0.1:PORT"}
 *   greet HOST PORT                      prints {"code", "text"} of the greeting, then QUIT
 *   ehlo HOST PORT                       prints the EHLO reply and the answer to AUTH PLAIN
 *   send HOST PORT FROM TO               one message on port 25 style; prints every reply code
 *   submit HOST PORT USER PASS FROM TO   the same after STARTTLS and AUTH PLAIN
 */
import { startDnsServer } from './dns-server.ts';
import { sendMail, smtpConnect, type SmtpReply } from './smtp-client.ts';

const [command, ...args] = process.argv.slice(2);

const brief = (r: SmtpReply | undefined): { code: number; text: string } | null =>
    r ? { code: r.code, text: r.text } : null;

function message(from: string, to: string): string {
    const id = `${Date.now()}.${process.pid}`;
    return (
        `From: <${from}>\r\nTo: <${to}>\r\nSubject: deployment check ${id}\r\n` +
        `Date: ${new Date().toUTCString()}\r\nMessage-ID: <${id}@deploy.test>\r\n\r\nHello.\r\n`
    );
}

async function main(): Promise<void> {
    switch (command) {
        case 'dns': {
            const dns = await startDnsServer({});
            process.stdout.write(`${JSON.stringify({ address: dns.address })}\n`);
            process.on('SIGTERM', () => {
                void dns.close().then(() => process.exit(0));
            });
            return;
        }
        case 'greet': {
            const [host, port] = args;
            const c = await smtpConnect(Number(port), { host: host!, timeoutMs: 10_000 });
            const greeting = await c.greeting();
            await c.cmd('QUIT').catch(() => undefined);
            c.close();
            process.stdout.write(`${JSON.stringify(brief(greeting))}\n`);
            return;
        }
        case 'ehlo': {
            const [host, port] = args;
            const c = await smtpConnect(Number(port), { host: host!, timeoutMs: 10_000 });
            await c.greeting();
            const ehlo = await c.cmd('EHLO client.example');
            const auth = await c.cmd(`AUTH PLAIN ${Buffer.from('\0someone\0secret').toString('base64')}`);
            await c.cmd('QUIT').catch(() => undefined);
            c.close();
            process.stdout.write(`${JSON.stringify({ ehlo: brief(ehlo), auth: brief(auth) })}\n`);
            return;
        }
        case 'send': {
            const [host, port, from, to] = args;
            const r = await sendMail(Number(port), {
                host: host!,
                from: from!,
                to: [to!],
                helo: 'client.example',
                data: message(from!, to!),
                timeoutMs: 30_000,
            });
            process.stdout.write(
                `${JSON.stringify({ mail: brief(r.mail), rcpt: r.rcpt.map(brief), message: brief(r.message) })}\n`,
            );
            return;
        }
        case 'submit': {
            const [host, port, user, pass, from, to] = args;
            const c = await smtpConnect(Number(port), { host: host!, timeoutMs: 30_000 });
            await c.greeting();
            await c.cmd('EHLO laptop.example');
            const tls = await c.starttls({ rejectUnauthorized: false });
            await c.cmd('EHLO laptop.example');
            const auth = await c.cmd(`AUTH PLAIN ${Buffer.from(`\0${user!}\0${pass!}`).toString('base64')}`);
            const mail = await c.cmd(`MAIL FROM:<${from!}>`);
            const rcpt = await c.cmd(`RCPT TO:<${to!}>`);
            let done: SmtpReply | undefined;
            if (rcpt.code === 250 && (await c.cmd('DATA')).code === 354) {
                c.write(`${message(from!, to!)}.\r\n`);
                done = await c.reply();
            }
            await c.cmd('QUIT').catch(() => undefined);
            c.close();
            process.stdout.write(
                `${JSON.stringify({ tls: brief(tls), auth: brief(auth), mail: brief(mail), rcpt: [brief(rcpt)], message: brief(done) })}\n`,
            );
            return;
        }
        default:
            throw new Error(`unknown command ${command ?? ''}`);
    }
}

main().catch((err: unknown) => {
    process.stdout.write(`${JSON.stringify({ error: String(err) })}\n`);
    process.exitCode = 1;
});
