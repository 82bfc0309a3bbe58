/**
 * The messages in hand, as the shutdown drain (App.stop) sees them: from a DATA command to its
 * decision line, whether or not the client is still connected. A message is either still on its
 * way (being received, checked, or sent upstream without its end-of-data marker), or its end of
 * data went upstream and only the upstream's answer is awaited (RFC 5321 section 4.1.1.4: the
 * upstream takes responsibility with that answer, so it alone says whether the message was
 * delivered). The drain abandons the first kind (the marker is then never sent, so the
 * upstream discards what it got) and waits for the second, then may cut it short.
 * It holds no session state and decides nothing about the mail; replies and log lines stay
 * with the session.
 */
import type { Readable } from 'node:stream';
import type { Config } from './config/types.ts';

/**
 * How long a stop waits, after shutdownTimeout, for the answers to ends of data already sent:
 * upstream.dataTimeout, the longest the upstream may take to answer one (a maildir answers at once).
 */
export function answerWaitMs(config: Pick<Config, 'upstream'>): number {
    return config.upstream.kind === 'maildir' ? 0 : config.upstream.dataTimeoutMs;
}

/**
 * The longest a process's stop may take under `config`: shutdownTimeout, the wait for answers
 * (above), then the Redis QUIT (up to redis.commandTimeout); the fixed graces of App.stop (two of
 * a second, the upstream QUIT of at most two) are in the callers' margin. The primary kills a
 * worker, and a worker whose primary is gone ends itself, only past this bound plus that margin.
 */
export function stopBoundMs(config: Pick<Config, 'shutdownTimeoutMs' | 'upstream' | 'redis'>): number {
    return config.shutdownTimeoutMs + answerWaitMs(config) + (config.redis?.commandTimeoutMs ?? 0);
}

/** One message from its DATA command to its decision line. */
export class MessageWork {
    private readonly registry: Set<MessageWork>;
    /** The session (client connection) the message came in on. */
    readonly sessionId: string;
    private source: Readable | null = null;
    private stopUpstream: (() => void) | null = null;
    private endSent = false;
    /** Why the drain stopped the message (abandon or cut), for its decision line; null: it did not. */
    private stoppedBecause: string | null = null;

    constructor(registry: Set<MessageWork>, sessionId: string) {
        this.registry = registry;
        this.sessionId = sessionId;
        registry.add(this);
    }

    /**
     * The message goes upstream from `source`; `stop` ends the upstream connection. The end of
     * data counts as sent once the upstream read the whole source: it writes the marker in the
     * same turn of the event loop, before any timer (the drain's) can run.
     */
    forwarding(source: Readable, stop: () => void): Readable {
        // the upstream reads the source only once DATA was answered 354 (or not at all, when the
        // message is refused first): until then an abandon's error would have no listener and be
        // thrown. Whoever reads it still sees the error.
        source.on('error', () => undefined);
        this.source = source;
        this.stopUpstream = stop;
        source.once('end', () => (this.endSent = true));
        if (this.stoppedBecause !== null) this.abandon();
        return source;
    }

    /** Why the drain stopped this message, or null when it did not. */
    get stopped(): string | null {
        return this.stoppedBecause;
    }

    /** True once the end of data went upstream and its answer is awaited. */
    get awaitingAnswer(): boolean {
        return this.endSent;
    }

    /** Before the end of data: the message source fails, so the upstream never gets the marker. */
    abandon(): void {
        if (this.endSent) return;
        this.stoppedBecause = 'shutting down: the message was not sent upstream in full';
        this.source?.destroy(new Error(this.stoppedBecause));
    }

    /** After the end of data: stops waiting for the answer (the message may have been accepted). */
    cut(): void {
        // a message abandoned before its end of data keeps that reason
        if (this.endSent) this.stoppedBecause = 'shutting down: the upstream had not answered the end of the message';
        this.stopUpstream?.();
    }

    /** The decision line was logged. */
    done(): void {
        this.registry.delete(this);
    }
}
