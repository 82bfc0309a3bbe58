/**
 * Password hashes for submission logins: recognising the accepted formats (argon2id/argon2i/
 * argon2d in the PHC string format, bcrypt `$2a$`/`$2b$`/`$2y$`), hashing new passwords
 * (argon2id only, with the OWASP minimum parameters m=19456 KiB, t=2, p=1), verifying a
 * password against a stored hash, making a dummy hash with the same cost as real ones, and a
 * small semaphore that bounds how many verifications run at once (each costs tens of
 * milliseconds of CPU, so they are a denial-of-service lever).
 * Both libraries compare digests in constant time. Nothing here logs or keeps a password;
 * plaintext or unknown formats are never accepted as a stored hash.
 */
import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import type * as Argon2 from '@node-rs/argon2';
import bcrypt from 'bcryptjs';

/**
 * @node-rs/argon2 (a native module, about 3 MB per process), loaded the first time an argon2
 * hash is read or made: a gateway without a users file never loads it.
 */
let argon2Module: typeof Argon2 | undefined;
function argon2(): typeof Argon2 {
    argon2Module ??= createRequire(import.meta.url)('@node-rs/argon2') as typeof Argon2;
    return argon2Module;
}
const argon2Hash: typeof Argon2.hash = (...args) => argon2().hash(...args);
const argon2Options: typeof Argon2.parseOptions = (...args) => argon2().parseOptions(...args);
const argon2Verify: typeof Argon2.verify = (...args) => argon2().verify(...args);

/** Parameters of the argon2id hashes mailwarden writes (OWASP Password Storage Cheat Sheet minimum). */
export const ARGON2_PARAMS = { memoryCost: 19_456, timeCost: 2, parallelism: 1 } as const;

/** Upper bounds on stored hash parameters: a typo must not make each login cost gigabytes or minutes. */
export const HASH_LIMITS = { argon2MemoryKiB: 1_048_576, argon2Time: 20, argon2Parallelism: 16, bcryptCost: 16 };

export type HashKind = 'argon2' | 'bcrypt';

/** What a stored hash is, with its cost parameters; or why it is not one we accept. */
export type HashInfo =
    | {
          readonly kind: 'argon2';
          readonly variant: string;
          readonly memoryCost: number;
          readonly timeCost: number;
          readonly parallelism: number;
      }
    | { readonly kind: 'bcrypt'; readonly cost: number }
    | { readonly kind: null; readonly problem: string };

const ARGON2_RE =
    /^\$argon2(id|i|d)\$(?:v=(?:16|19)\$)?m=\d+,t=\d+,p=\d+(?:,[a-z]+=[^$,]*)*\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$/;
// bcrypt: $2a$/$2b$/$2y$, two-digit cost, 22 characters of salt and 31 of digest (bcrypt's base64 alphabet)
const BCRYPT_RE = /^\$2[aby]\$(\d{2})\$[./A-Za-z0-9]{53}$/;
const NOT_A_HASH =
    'is not a password hash (argon2id, or bcrypt $2a$/$2b$/$2y$); plaintext passwords are refused: set it with `mailwarden users passwd`';

/** Recognises a stored password hash. Never throws. */
export function inspectHash(value: string): HashInfo {
    const argon = ARGON2_RE.exec(value);
    if (argon) {
        let parsed;
        try {
            parsed = argon2Options(value);
        } catch {
            return { kind: null, problem: 'is not a valid argon2 hash (the PHC string does not parse)' };
        }
        const { memoryCost, timeCost, parallelism } = parsed;
        if (
            memoryCost > HASH_LIMITS.argon2MemoryKiB ||
            timeCost > HASH_LIMITS.argon2Time ||
            parallelism > HASH_LIMITS.argon2Parallelism
        ) {
            return {
                kind: null,
                problem: `has argon2 parameters beyond what one login may cost (m ≤ ${HASH_LIMITS.argon2MemoryKiB}, t ≤ ${HASH_LIMITS.argon2Time}, p ≤ ${HASH_LIMITS.argon2Parallelism})`,
            };
        }
        return { kind: 'argon2', variant: `argon2${argon[1] ?? ''}`, memoryCost, timeCost, parallelism };
    }
    const bc = BCRYPT_RE.exec(value);
    if (bc) {
        const cost = Number(bc[1]);
        if (cost < 4 || cost > HASH_LIMITS.bcryptCost) {
            return { kind: null, problem: `has bcrypt cost ${cost}; accepted: 4 to ${HASH_LIMITS.bcryptCost}` };
        }
        return { kind: 'bcrypt', cost };
    }
    if (/^\$argon2/.test(value))
        return { kind: null, problem: 'is not a valid argon2 hash (PHC string format expected)' };
    if (/^\$2[aby]?\$/.test(value)) return { kind: null, problem: 'is not a valid bcrypt hash' };
    if (/^\{[A-Z0-9.-]+\}/.test(value) || /^\$(1|5|6|y|7)\$/.test(value)) {
        return { kind: null, problem: 'uses a hash scheme that is not supported (use argon2id, or bcrypt)' };
    }
    return { kind: null, problem: NOT_A_HASH };
}

/** Hashes a new password as argon2id with ARGON2_PARAMS. */
export async function hashPassword(password: string): Promise<string> {
    // Algorithm.Argon2id is the library's default (its enum is a const enum, not importable here)
    const out = await argon2Hash(password, { ...ARGON2_PARAMS });
    if (!out.startsWith('$argon2id$')) throw new Error('argon2 produced an unexpected hash format');
    return out;
}

/** Checks a password against a stored hash (argon2 or bcrypt). A hash of another format throws. */
export async function verifyPassword(stored: string, password: string): Promise<boolean> {
    const info = inspectHash(stored);
    if (info.kind === 'argon2') return argon2Verify(stored, password);
    if (info.kind === 'bcrypt') return bcrypt.compare(password, stored);
    throw new Error('not a supported password hash');
}

/**
 * A hash of a random secret with the same cost as `like` (argon2id with ARGON2_PARAMS when
 * null): verifying an unknown login against it takes about as long as a real one.
 */
export async function makeDummyHash(like: HashInfo | null): Promise<string> {
    const secret = randomBytes(24).toString('base64');
    if (like?.kind === 'bcrypt') return bcrypt.hash(secret, like.cost);
    if (like?.kind === 'argon2') {
        return argon2Hash(secret, {
            memoryCost: like.memoryCost,
            timeCost: like.timeCost,
            parallelism: like.parallelism,
        });
    }
    return argon2Hash(secret, { ...ARGON2_PARAMS });
}

/** The cost of a hash as a comparable key (`argon2:m,t,p` or `bcrypt:cost`), or null. */
export function costKey(info: HashInfo): string | null {
    if (info.kind === 'argon2') return `argon2:${info.memoryCost},${info.timeCost},${info.parallelism}`;
    if (info.kind === 'bcrypt') return `bcrypt:${info.cost}`;
    return null;
}

/**
 * Runs at most `max` tasks at once; up to `maxQueue` more wait in order. Beyond that,
 * `run` returns `overflow` at once without running the task.
 */
export class Semaphore {
    private active = 0;
    private readonly waiting: (() => void)[] = [];
    readonly max: number;
    readonly maxQueue: number;

    constructor(max: number, maxQueue: number) {
        if (!(Number.isInteger(max) && max >= 1)) throw new Error(`bad concurrency ${max}`);
        this.max = max;
        this.maxQueue = Math.max(0, maxQueue);
    }

    get running(): number {
        return this.active;
    }

    get queued(): number {
        return this.waiting.length;
    }

    async run<T, O>(task: () => Promise<T>, overflow: O): Promise<T | O> {
        if (this.active >= this.max) {
            if (this.waiting.length >= this.maxQueue) return overflow;
            await new Promise<void>((resolve) => this.waiting.push(resolve));
        } else {
            this.active++;
        }
        try {
            return await task();
        } finally {
            const next = this.waiting.shift();
            // the slot passes straight to the next waiter, so `active` stays the same
            if (next) next();
            else this.active--;
        }
    }
}
