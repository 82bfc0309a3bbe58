/**
 * mailwarden in front of a real Postfix with nothing else deciding: a loopback DNS server that
 * answers every name with NXDOMAIN (or as `zone` says) and an empty rules folder, so what a test
 * sees depends on the transport alone (XCLIENT, PROXY headers, what Postfix writes). `listeners`
 * are the YAML lines of the listener list; the upstream is the Postfix instance with XCLIENT.
 * It must not start anything it does not stop in close().
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startApp, type TestApp } from './app.ts';
import { startDnsServer, type DnsTestServer, type Zone } from './dns-server.ts';
import { startPostfix, type PostfixInstance, type PostfixOptions } from './postfix.ts';

export interface PostfixGateway {
    readonly postfix: PostfixInstance;
    readonly mw: TestApp;
    close(): Promise<void>;
}

/** Joins folded header lines (RFC 5322 section 2.2.3), so patterns need not care where a line was folded. */
export function unfold(message: string): string {
    return message.replace(/\r?\n[ \t]+/g, ' ');
}

export async function startPostfixGateway(
    postfixOptions: PostfixOptions,
    listeners: readonly string[],
    zone: Zone = {},
): Promise<PostfixGateway> {
    let postfix: PostfixInstance | undefined;
    let dns: DnsTestServer | undefined;
    let rulesDir: string | undefined;
    let mw: TestApp | undefined;
    const close = async (): Promise<void> => {
        await mw?.stop();
        await dns?.close();
        await postfix?.stop();
        if (rulesDir) await rm(rulesDir, { recursive: true, force: true });
    };
    try {
        postfix = await startPostfix(postfixOptions);
        dns = await startDnsServer(zone);
        rulesDir = await mkdtemp(path.join(os.tmpdir(), 'mailwarden-rules-'));
        // no rules on purpose (an empty folder is refused)
        await writeFile(path.join(rulesDir, '00-none.yaml'), 'rules: []\n');
        mw = await startApp(
            [
                'hostname: mx.test',
                'domains: [example.test]',
                'listeners:',
                ...listeners.map((l) => `  - ${l}`),
                `upstream: { url: "smtp://127.0.0.1:${postfix.port}", xclient: true }`,
                `dns: { servers: ["${dns.address}"], timeout: 1s }`,
                `rules: ${rulesDir}`,
                'http: false',
            ].join('\n'),
        );
        return { postfix, mw, close };
    } catch (err) {
        await close();
        throw err;
    }
}
