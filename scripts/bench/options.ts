/**
 * The command line of `npm run bench`: the options, their defaults, the usage text, and their
 * validation into the settings the run uses. docs/performance.md describes each option (a
 * test holds the two together).
 *
 * It must not start anything; a wrong option is a BenchUsageError for the caller to print.
 */
import { parseArgs } from 'node:util';
import { TARGETS, type Target } from './report.ts';

export const USAGE = `Usage: npm run bench -- [options]   (or: node scripts/bench.ts [options])

  --messages N        messages per measurement window (default 2000)
  --concurrency C     SMTP sessions in parallel (default 20)
  --rounds R          rounds; each visits every path and mode once, in a rotated order (default 3)
  --per-connection L  messages per connection, a comma-separated list (default 1,10)
  --warmup W          messages per path before the first round, not measured (default 1000)
  --targets T         paths to measure, from direct,passthrough,no-checks,mailwarden (default: all four)
  --large-share F     share of messages with a ~100 KB attachment (default 0.05)
  --seed S            corpus seed (default 42)
  --idle N            idle connections opened to measure memory per connection (default 500; 0: skip)
  --limit-factor F    multiply every rate and concurrency limit of the shipped rules (default 10000)
  --max-seconds S     time bound of the whole run; windows not done by then are skipped (default 900)
  --window-seconds S  time bound of one window (default 300)
  --workers W         mailwarden's workers setting, a number or auto (default: not written, the checkout's default)
  --profile           run mailwarden and the no-checks path with --cpu-prof and print the top costs
  --heap-profile      run mailwarden with --heap-prof as well and print the top allocation sites
  --top N             functions listed by --profile (default 25)
  --out DIR           where to write results.json and the logs (default: a new folder in the OS temp dir)
  --help              this text`;

export const OPTIONS = {
    messages: { type: 'string', default: '2000' },
    concurrency: { type: 'string', default: '20' },
    rounds: { type: 'string', default: '3' },
    'per-connection': { type: 'string', default: '1,10' },
    warmup: { type: 'string', default: '1000' },
    targets: { type: 'string', default: TARGETS.join(',') },
    'large-share': { type: 'string', default: '0.05' },
    seed: { type: 'string', default: '42' },
    idle: { type: 'string', default: '500' },
    'limit-factor': { type: 'string', default: '10000' },
    'max-seconds': { type: 'string', default: '900' },
    'window-seconds': { type: 'string', default: '300' },
    workers: { type: 'string' },
    profile: { type: 'boolean', default: false },
    'heap-profile': { type: 'boolean', default: false },
    top: { type: 'string', default: '25' },
    out: { type: 'string' },
    help: { type: 'boolean', default: false },
} as const;

export interface BenchOptions {
    messages: number;
    concurrency: number;
    rounds: number;
    perConnection: number[];
    warmup: number;
    targets: Target[];
    largeShare: number;
    seed: number;
    idle: number;
    limitFactor: number;
    maxSeconds: number;
    windowSeconds: number;
    /** mailwarden's `workers`; null: left out of the config (the checkout's default). */
    workers: number | 'auto' | null;
    profile: boolean;
    heapProfile: boolean;
    top: number;
    out: string | null;
    help: boolean;
}

export class BenchUsageError extends Error {}

function int(name: string, value: string, min: number): number {
    const n = Number(value);
    if (value.trim() === '' || !Number.isInteger(n) || n < min) {
        throw new BenchUsageError(`--${name} must be a whole number of at least ${min}, not "${value}"`);
    }
    return n;
}

/** The settings of a run from its arguments; throws BenchUsageError on a wrong one. */
export function parseBenchArgs(argv: readonly string[]): BenchOptions {
    let values;
    try {
        values = parseArgs({ args: [...argv], options: OPTIONS, strict: true, allowPositionals: false }).values;
    } catch (e) {
        throw new BenchUsageError(e instanceof Error ? e.message : String(e));
    }
    const targets = values.targets.split(',').map((t) => t.trim());
    for (const t of targets) {
        if (!(TARGETS as readonly string[]).includes(t)) {
            throw new BenchUsageError(`--targets: unknown path "${t}" (known: ${TARGETS.join(', ')})`);
        }
    }
    if (new Set(targets).size !== targets.length) throw new BenchUsageError('--targets: a path is named twice');
    const largeShare = Number(values['large-share']);
    if (!(largeShare >= 0 && largeShare <= 1)) throw new BenchUsageError('--large-share must be between 0 and 1');
    const perConnection = values['per-connection'].split(',').map((s) => int('per-connection', s.trim(), 1));
    if (new Set(perConnection).size !== perConnection.length) {
        throw new BenchUsageError('--per-connection: a value is given twice');
    }
    return {
        messages: int('messages', values.messages, 1),
        concurrency: int('concurrency', values.concurrency, 1),
        rounds: int('rounds', values.rounds, 1),
        perConnection,
        warmup: int('warmup', values.warmup, 0),
        targets: targets as Target[],
        largeShare,
        seed: int('seed', values.seed, 0),
        idle: int('idle', values.idle, 0),
        limitFactor: int('limit-factor', values['limit-factor'], 1),
        maxSeconds: int('max-seconds', values['max-seconds'], 10),
        windowSeconds: int('window-seconds', values['window-seconds'], 5),
        workers:
            values.workers === undefined
                ? null
                : values.workers === 'auto'
                  ? 'auto'
                  : int('workers', values.workers, 1),
        profile: values.profile || values['heap-profile'],
        heapProfile: values['heap-profile'],
        top: int('top', values.top, 1),
        out: values.out ?? null,
        help: values.help,
    };
}
