/**
 * Measures processes from the outside through Linux /proc (proc(5)): CPU time from
 * /proc/PID/stat (utime, stime, and cutime/cstime of reaped children, in clock ticks), memory
 * from /proc/PID/status (VmRSS now, VmHWM the peak), and a process's descendants from
 * /proc/PID/task/TID/children. A TreeMonitor samples a process tree over one measurement
 * window: CPU used during the window and the peak of the tree's summed RSS.
 *
 * It must only read /proc, never signal or change a process, and must tolerate processes
 * that exit while it reads (a vanished file is a process that is gone).
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

export interface ProcStat {
    pid: number;
    comm: string;
    state: string;
    ppid: number;
    /** Clock ticks in user mode, kernel mode, and of waited-for children in each. */
    utime: number;
    stime: number;
    cutime: number;
    cstime: number;
    /** Resident pages. */
    rssPages: number;
}

/**
 * Parses one /proc/PID/stat line. The command name (field 2) is in parentheses and may itself
 * hold spaces and parentheses, so the fields after it are found from the last `)`.
 */
export function parseStat(text: string): ProcStat {
    const open = text.indexOf('(');
    const close = text.lastIndexOf(')');
    if (open < 0 || close < open) throw new Error(`not a /proc/PID/stat line: ${text.slice(0, 80)}`);
    const rest = text
        .slice(close + 2)
        .trim()
        .split(' ');
    // rest[0] is field 3 (state); field N is rest[N - 3]
    const field = (n: number): number => Number(rest[n - 3]);
    return {
        pid: Number(text.slice(0, open).trim()),
        comm: text.slice(open + 1, close),
        state: rest[0] ?? '?',
        ppid: field(4),
        utime: field(14),
        stime: field(15),
        cutime: field(16),
        cstime: field(17),
        rssPages: field(24),
    };
}

/** VmRSS and VmHWM of a /proc/PID/status text, in KiB (0 when absent, as for kernel threads). */
export function parseStatus(text: string): { vmRssKb: number; vmHwmKb: number } {
    const kb = (name: string): number => {
        const m = new RegExp(`^${name}:\\s+(\\d+)\\s+kB`, 'm').exec(text);
        return m ? Number(m[1]) : 0;
    };
    return { vmRssKb: kb('VmRSS'), vmHwmKb: kb('VmHWM') };
}

function read(path: string): string | null {
    try {
        return readFileSync(path, 'utf8');
    } catch {
        return null;
    }
}

export function readStat(pid: number): ProcStat | null {
    const text = read(`/proc/${pid}/stat`);
    return text === null ? null : parseStat(text);
}

export function readStatus(pid: number): { vmRssKb: number; vmHwmKb: number } | null {
    const text = read(`/proc/${pid}/status`);
    return text === null ? null : parseStatus(text);
}

/** Direct children of a process (every thread's children file), or [] when it is gone. */
export function childrenOf(pid: number): number[] {
    let tasks: string[];
    try {
        tasks = readdirSync(`/proc/${pid}/task`);
    } catch {
        return [];
    }
    const out: number[] = [];
    for (const tid of tasks) {
        const text = read(`/proc/${pid}/task/${tid}/children`);
        if (text) for (const c of text.trim().split(/\s+/)) if (c) out.push(Number(c));
    }
    return out;
}

/** The roots that still run and all their descendants. */
export function processTree(roots: readonly number[]): number[] {
    const seen = new Set<number>();
    const stack = roots.filter((pid) => pid > 0);
    while (stack.length > 0) {
        const pid = stack.pop()!;
        if (seen.has(pid) || readStat(pid) === null) continue;
        seen.add(pid);
        stack.push(...childrenOf(pid));
    }
    return [...seen];
}

let ticks: number | null = null;

/** USER_HZ, the unit of the /proc CPU fields (getconf CLK_TCK; 100 on every common Linux). */
export function clockTicksPerSecond(): number {
    if (ticks === null) {
        try {
            ticks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
        } catch {
            ticks = 100;
        }
    }
    return ticks;
}

/** CPU ticks of one process, its reaped children included. */
export function cpuTicks(stat: ProcStat): { user: number; system: number } {
    return { user: stat.utime + stat.cutime, system: stat.stime + stat.cstime };
}

export interface TreeUsage {
    /** CPU used by the tree during the window, in milliseconds. */
    cpuMs: number;
    userMs: number;
    systemMs: number;
    /** Largest sum of VmRSS over the tree seen while sampling (and at both ends), in MiB. */
    peakRssMb: number;
    /** VmRSS summed over the tree at the end, in MiB. */
    endRssMb: number;
    /** Largest VmHWM of one process of the tree at the end (its peak since it started), in MiB. */
    maxHwmMb: number;
    /** Most processes seen in the tree at once. */
    processes: number;
}

type Snapshot = Map<number, { user: number; system: number }>;

function snapshot(pids: readonly number[]): Snapshot {
    const out: Snapshot = new Map();
    for (const pid of pids) {
        const st = readStat(pid);
        if (st) out.set(pid, cpuTicks(st));
    }
    return out;
}

function rssKb(pids: readonly number[]): number {
    let sum = 0;
    for (const pid of pids) sum += readStatus(pid)?.vmRssKb ?? 0;
    return sum;
}

/**
 * Watches the tree of `roots` between start() and stop(): CPU used in the window (a process
 * born inside the window counts from zero; one that ended inside it counts through its
 * parent's cutime/cstime once reaped) and the peak summed RSS, sampled every `intervalMs`.
 */
export class TreeMonitor {
    private readonly roots: readonly number[];
    private readonly intervalMs: number;
    private start0: Snapshot = new Map();
    private timer: NodeJS.Timeout | null = null;
    private peakKb = 0;
    private processes = 0;

    constructor(roots: readonly number[], intervalMs = 100) {
        this.roots = roots;
        this.intervalMs = intervalMs;
    }

    start(): void {
        const pids = processTree(this.roots);
        this.start0 = snapshot(pids);
        this.peakKb = rssKb(pids);
        this.processes = pids.length;
        this.timer = setInterval(() => this.sample(), this.intervalMs);
        this.timer.unref();
    }

    private sample(): void {
        const pids = processTree(this.roots);
        this.processes = Math.max(this.processes, pids.length);
        this.peakKb = Math.max(this.peakKb, rssKb(pids));
    }

    stop(): TreeUsage {
        if (this.timer) clearInterval(this.timer);
        this.timer = null;
        const pids = processTree(this.roots);
        const end = snapshot(pids);
        const endKb = rssKb(pids);
        this.peakKb = Math.max(this.peakKb, endKb);
        let user = 0;
        let system = 0;
        for (const [pid, t] of end) {
            const before = this.start0.get(pid) ?? { user: 0, system: 0 };
            user += t.user - before.user;
            system += t.system - before.system;
        }
        let hwm = 0;
        for (const pid of pids) hwm = Math.max(hwm, readStatus(pid)?.vmHwmKb ?? 0);
        const msPerTick = 1000 / clockTicksPerSecond();
        return {
            cpuMs: (user + system) * msPerTick,
            userMs: user * msPerTick,
            systemMs: system * msPerTick,
            peakRssMb: this.peakKb / 1024,
            endRssMb: endKb / 1024,
            maxHwmMb: hwm / 1024,
            processes: Math.max(this.processes, pids.length),
        };
    }
}
