/**
 * The signals that came while `serve` was loading and starting. bin/mailwarden.js holds SIGHUP and
 * SIGUSR2 from its first moment (once Node.js has started) (without a handler, either would end Node.js: a log rotation's
 * `kill -HUP` during a slow start stopped the gateway); once serve's own handlers are in place it
 * takes them over here and each is acted on as if it came then (a SIGHUP reloads, so an edit
 * made while the process started is read too). It must be called only after those handlers are
 * installed: between the launcher's handler leaving and serve's arriving, the signal would again
 * end the process. Without the launcher (tests that import serve) nothing was held.
 */

interface Held {
    release(): string[];
}

const KEY = Symbol.for('mailwarden.earlySignals');

/** Removes the launcher's holding handlers and delivers what they held to the handlers now installed. */
export function takeOverEarlySignals(onHeld: (signals: readonly NodeJS.Signals[]) => void = () => {}): void {
    const slot = (globalThis as Record<symbol, unknown>)[KEY] as Held | undefined;
    if (!slot) return;
    delete (globalThis as Record<symbol, unknown>)[KEY];
    // the launcher holds only SIGHUP and SIGUSR2 (HELD_SIGNALS in bin/mailwarden.js)
    const signals = slot.release() as NodeJS.Signals[];
    if (signals.length === 0) return;
    onHeld(signals);
    for (const signal of signals) process.emit(signal, signal);
}
