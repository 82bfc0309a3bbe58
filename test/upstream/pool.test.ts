// The pool of idle upstream connections, with stand-in entries and timers under the test's
// control: the newest usable entry is handed out and leaves the pool, unusable ones are dropped
// on the way, and the bounds (number kept, idle time, uses) and close() end entries with QUIT.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { IdlePool, type PoolEntry } from '../../src/upstream/pool.ts';

class Entry implements PoolEntry {
    readonly name: string;
    usable = true;
    /** True while the pool holds it idle (it told so). */
    idling = false;
    discarded = 0;
    /** When set, discard() waits for it (a QUIT in flight). */
    quitting: Promise<void> | null = null;
    quitDone = false;

    constructor(name: string) {
        this.name = name;
    }

    idle(on: boolean): void {
        this.idling = on;
    }

    async discard(): Promise<void> {
        this.discarded++;
        if (this.quitting) await this.quitting;
        this.quitDone = true;
    }
}

/** Timers run only when the test says so. */
class Clock {
    private next = 1;
    readonly pending = new Map<number, { fn: () => void; ms: number }>();

    readonly setTimer = (fn: () => void, ms: number): unknown => {
        const id = this.next++;
        this.pending.set(id, { fn, ms });
        return id;
    };

    readonly clearTimer = (handle: unknown): void => {
        this.pending.delete(handle as number);
    };

    /** Runs every pending timer. */
    fire(): void {
        const due = [...this.pending.values()];
        this.pending.clear();
        for (const t of due) t.fn();
    }
}

function pool(over: { maxIdle?: number; maxUses?: number } = {}) {
    const clock = new Clock();
    const p = new IdlePool<Entry>({
        maxIdle: over.maxIdle ?? 4,
        idleTimeoutMs: 5000,
        maxUses: over.maxUses ?? 100,
        setTimer: clock.setTimer,
        clearTimer: clock.clearTimer,
    });
    return { p, clock };
}

describe('idle upstream connection pool', () => {
    it('hands out the newest entry with its uses, once: a taken entry is no longer in the pool', () => {
        const { p } = pool();
        const a = new Entry('a');
        const b = new Entry('b');
        assert.equal(p.give(a, 1), true);
        assert.equal(p.give(b, 3), true);
        assert.equal(a.idling && b.idling, true, 'idle entries are told so');
        assert.equal(p.size, 2);
        const first = p.take();
        assert.equal(first?.entry, b);
        assert.equal(first?.uses, 3);
        assert.equal(b.idling, false, 'a taken entry is in use again');
        assert.equal(p.take()?.entry, a);
        assert.equal(p.take(), null);
        assert.equal(a.discarded + b.discarded, 0);
    });

    it('skips and discards entries that became unusable while idle', () => {
        const { p } = pool();
        const good = new Entry('good');
        const closed = new Entry('closed');
        const spoke = new Entry('spoke');
        p.give(good, 1);
        p.give(closed, 1);
        p.give(spoke, 1);
        closed.usable = false;
        spoke.usable = false;
        const dropped: string[] = [];
        assert.equal(p.take((e) => dropped.push(e.name))?.entry, good);
        assert.deepEqual(dropped, ['spoke', 'closed']);
        assert.equal(closed.discarded, 1);
        assert.equal(spoke.discarded, 1);
        assert.equal(p.size, 0);
    });

    it('keeps at most maxIdle entries and closes the one given beyond', () => {
        const { p } = pool({ maxIdle: 2 });
        const entries = ['a', 'b', 'c'].map((n) => new Entry(n));
        assert.deepEqual(
            entries.map((e) => p.give(e, 1)),
            [true, true, false],
        );
        assert.equal(p.size, 2);
        assert.deepEqual(
            entries.map((e) => e.discarded),
            [0, 0, 1],
        );
    });

    it('closes an entry that has served maxUses clients instead of keeping it', () => {
        const { p } = pool({ maxUses: 3 });
        const worn = new Entry('worn');
        const fresh = new Entry('fresh');
        assert.equal(p.give(worn, 3), false);
        assert.equal(p.give(fresh, 2), true);
        assert.equal(worn.discarded, 1);
        assert.equal(p.take()?.entry, fresh);
    });

    it('does not keep an entry that is already unusable', () => {
        const { p } = pool();
        const dead = new Entry('dead');
        dead.usable = false;
        assert.equal(p.give(dead, 1), false);
        assert.equal(dead.discarded, 1);
        assert.equal(p.size, 0);
    });

    it('closes an entry left idle for idleTimeoutMs; taking one stops its timer', () => {
        const { p, clock } = pool();
        const taken = new Entry('taken');
        const left = new Entry('left');
        p.give(left, 1);
        p.give(taken, 1);
        assert.deepEqual(
            [...clock.pending.values()].map((t) => t.ms),
            [5000, 5000],
        );
        assert.equal(p.take()?.entry, taken);
        assert.equal(clock.pending.size, 1);
        clock.fire();
        assert.equal(left.discarded, 1);
        assert.equal(taken.discarded, 0);
        assert.equal(p.size, 0);
        assert.equal(p.take(), null);
    });

    it('close() ends every idle entry, waits for their QUIT, and keeps nothing given afterwards', async () => {
        const { p, clock } = pool();
        const a = new Entry('a');
        const b = new Entry('b');
        let finish = (): void => {};
        a.quitting = new Promise((resolve) => (finish = resolve));
        p.give(a, 1);
        p.give(b, 1);
        let closed = false;
        const closing = p.close().then(() => (closed = true));
        assert.equal(a.discarded + b.discarded, 2);
        assert.equal(clock.pending.size, 0, 'no idle timer left');
        await new Promise((resolve) => setImmediate(resolve));
        assert.equal(closed, false, 'still waiting for the QUIT of a');
        finish();
        await closing;
        assert.equal(a.quitDone && b.quitDone, true);
        const late = new Entry('late');
        assert.equal(p.give(late, 1), false);
        assert.equal(late.discarded, 1);
        assert.equal(p.take(), null);
    });
});
