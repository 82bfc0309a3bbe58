/**
 * Reads the profiles Node.js writes with --cpu-prof (.cpuprofile: the V8 CPU profile, a call
 * tree with a sample list and the time between samples) and --heap-prof (.heapprofile: the V8
 * sampling heap profile, a call tree with bytes allocated per frame and still live when it was
 * written), and summarises where the time or memory goes: per function (self and total time),
 * and per group (a package in node_modules, a project file, Node.js internals, GC).
 *
 * It must only read the JSON it is given; it does not run or attach to any process.
 */
import path from 'node:path';

export interface CallFrame {
    functionName: string;
    url: string;
    /** 0-based, as V8 reports it. */
    lineNumber: number;
    columnNumber?: number;
    scriptId?: string | number;
}

export interface CpuProfileNode {
    id: number;
    callFrame: CallFrame;
    hitCount?: number;
    children?: number[];
}

export interface CpuProfile {
    nodes: CpuProfileNode[];
    /** Microseconds. */
    startTime: number;
    endTime: number;
    /** Node id of each sample. */
    samples?: number[];
    /** Microseconds from the previous sample (from startTime for the first). */
    timeDeltas?: number[];
}

export interface HeapProfileNode {
    callFrame: CallFrame;
    /** Bytes attributed to this frame itself. */
    selfSize: number;
    id?: number;
    children?: HeapProfileNode[];
}

export interface HeapProfile {
    head: HeapProfileNode;
}

export interface FunctionCost {
    /** Function name (`(anonymous)` when it has none). */
    name: string;
    /** `file:line` relative to the project or its package, or a V8 pseudo-frame's name. */
    location: string;
    group: string;
    selfMs: number;
    /** Time with this function anywhere on the stack (recursion counted once). */
    totalMs: number;
    /**
     * Its self time split by caller (`name location`), largest first: the nearest frame up the
     * stack in the project or a package, skipping Node.js internals and builtins, so a socket
     * write is charged to the code that wrote.
     */
    callers: { caller: string; ms: number }[];
}

export interface GroupCost {
    group: string;
    selfMs: number;
}

export interface CpuSummary {
    /** Sampled time not idle: what the process spent working. */
    busyMs: number;
    idleMs: number;
    samples: number;
    /** Every function, by self time, largest first. */
    functions: FunctionCost[];
    /** Every group, by self time, largest first. */
    groups: GroupCost[];
}

const PSEUDO: Record<string, string> = {
    '(garbage collector)': 'GC',
    '(program)': 'V8 and native code (program)',
    '(idle)': 'idle',
    '(root)': 'root',
};

/**
 * Where a frame belongs: the npm package for files under node_modules (with its scope), the
 * project file for files under `projectRoot`, `node:<module>` for Node.js's own code, `native`
 * for frames without a script (builtins), WebAssembly modules together, and the V8
 * pseudo-frames by name.
 */
export function groupOf(frame: CallFrame, projectRoot: string): string {
    const url = frame.url;
    if (!url) return PSEUDO[frame.functionName] ?? 'native';
    if (url.startsWith('wasm://')) return 'wasm (WebAssembly module)';
    if (url.startsWith('node:')) {
        const parts = url.slice('node:'.length).split('/');
        return parts[0] === 'internal' && parts.length > 1
            ? `node:${parts[1]!.replace(/\.js$/, '')}`
            : `node:${parts[0]}`;
    }
    const file = url.startsWith('file://') ? decodeURIComponent(url.slice('file://'.length)) : url;
    const nm = file.lastIndexOf('/node_modules/');
    if (nm >= 0) {
        const rest = file.slice(nm + '/node_modules/'.length).split('/');
        return rest[0]!.startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]!;
    }
    const root = projectRoot.endsWith('/') ? projectRoot : projectRoot + '/';
    if (file.startsWith(root)) return file.slice(root.length);
    return path.basename(file);
}

/** `file:line` for a frame, relative to its package or the project; the pseudo-frame name for V8's own. */
export function locationOf(frame: CallFrame, projectRoot: string): string {
    const url = frame.url;
    if (!url) return frame.functionName || '(native)';
    const line = frame.lineNumber >= 0 ? `:${frame.lineNumber + 1}` : '';
    if (url.startsWith('node:')) return url + line;
    const file = url.startsWith('file://') ? decodeURIComponent(url.slice('file://'.length)) : url;
    const nm = file.lastIndexOf('/node_modules/');
    if (nm >= 0) return file.slice(nm + '/node_modules/'.length) + line;
    const root = projectRoot.endsWith('/') ? projectRoot : projectRoot + '/';
    return (file.startsWith(root) ? file.slice(root.length) : file) + line;
}

function keyOf(frame: CallFrame): string {
    return `${frame.functionName}\u0000${frame.url}\u0000${frame.lineNumber}\u0000${frame.columnNumber ?? -1}`;
}

/**
 * Summarises one or more CPU profiles (for example one per worker process) together.
 * A sample lasts until the next one (the last until endTime), as Chrome DevTools counts it;
 * a profile without sample lists falls back on hitCount × the mean interval.
 */
export function summariseCpuProfiles(profiles: readonly CpuProfile[], projectRoot: string): CpuSummary {
    const byKey = new Map<string, FunctionCost>();
    const groups = new Map<string, number>();
    let busyUs = 0;
    let idleUs = 0;
    let sampleCount = 0;

    for (const profile of profiles) {
        const nodes = new Map<number, CpuProfileNode>();
        const parent = new Map<number, number>();
        for (const n of profile.nodes) {
            nodes.set(n.id, n);
            for (const c of n.children ?? []) parent.set(c, n.id);
        }
        // self time per node, in microseconds
        const selfUs = new Map<number, number>();
        const samples = profile.samples ?? [];
        const deltas = profile.timeDeltas ?? [];
        if (samples.length > 0 && deltas.length === samples.length) {
            let t = profile.startTime;
            const times = deltas.map((d) => (t += d));
            for (let i = 0; i < samples.length; i++) {
                const next = i + 1 < samples.length ? times[i + 1]! : profile.endTime;
                const us = Math.max(0, next - times[i]!);
                selfUs.set(samples[i]!, (selfUs.get(samples[i]!) ?? 0) + us);
            }
            sampleCount += samples.length;
        } else {
            const hits = profile.nodes.reduce((a, n) => a + (n.hitCount ?? 0), 0);
            const per = hits > 0 ? (profile.endTime - profile.startTime) / hits : 0;
            for (const n of profile.nodes) if (n.hitCount) selfUs.set(n.id, n.hitCount * per);
            sampleCount += hits;
        }

        const costOf = (frame: CallFrame): FunctionCost => {
            const key = keyOf(frame);
            let cost = byKey.get(key);
            if (!cost) {
                cost = {
                    name: frame.functionName || '(anonymous)',
                    location: locationOf(frame, projectRoot),
                    group: groupOf(frame, projectRoot),
                    selfMs: 0,
                    totalMs: 0,
                    callers: [],
                };
                byKey.set(key, cost);
            }
            return cost;
        };

        for (const [id, us] of selfUs) {
            const node = nodes.get(id);
            if (!node) continue;
            const frame = node.callFrame;
            if (frame.functionName === '(idle)' && !frame.url) {
                idleUs += us;
                continue;
            }
            busyUs += us;
            const own = costOf(frame);
            own.selfMs += us / 1000;
            let up: CallFrame | undefined;
            for (let cur = parent.get(id); cur !== undefined; cur = parent.get(cur)) {
                const f = nodes.get(cur)?.callFrame;
                if (!f || (f.functionName === '(root)' && !f.url)) break;
                up ??= f; // the immediate caller, if no frame of our own is found
                if (f.url && !f.url.startsWith('node:')) {
                    up = f;
                    break;
                }
            }
            if (up) {
                const caller = `${up.functionName || '(anonymous)'} ${locationOf(up, projectRoot)}`;
                const entry = own.callers.find((c) => c.caller === caller);
                if (entry) entry.ms += us / 1000;
                else own.callers.push({ caller, ms: us / 1000 });
            }
            groups.set(own.group, (groups.get(own.group) ?? 0) + us / 1000);
            // total time: every distinct function on the stack, once
            const onStack = new Set<FunctionCost>();
            for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
                const f = nodes.get(cur)?.callFrame;
                if (f && !(f.functionName === '(root)' && !f.url)) onStack.add(costOf(f));
            }
            for (const c of onStack) c.totalMs += us / 1000;
        }
    }
    const functions = [...byKey.values()].filter((f) => f.totalMs > 0).sort((a, b) => b.selfMs - a.selfMs);
    for (const f of functions) f.callers.sort((a, b) => b.ms - a.ms);
    return {
        busyMs: busyUs / 1000,
        idleMs: idleUs / 1000,
        samples: sampleCount,
        functions,
        groups: [...groups.entries()].map(([group, selfMs]) => ({ group, selfMs })).sort((a, b) => b.selfMs - a.selfMs),
    };
}

export interface HeapSite {
    name: string;
    location: string;
    group: string;
    bytes: number;
}

/** Bytes per allocating function and per group over one or more sampling heap profiles, largest first. */
export function summariseHeapProfiles(
    profiles: readonly HeapProfile[],
    projectRoot: string,
): { totalBytes: number; sites: HeapSite[]; groups: { group: string; bytes: number }[] } {
    const sites = new Map<string, HeapSite>();
    const groups = new Map<string, number>();
    let total = 0;
    for (const profile of profiles) {
        const stack: HeapProfileNode[] = [profile.head];
        while (stack.length > 0) {
            const node = stack.pop()!;
            stack.push(...(node.children ?? []));
            if (node.selfSize <= 0) continue;
            const key = keyOf(node.callFrame);
            let site = sites.get(key);
            if (!site) {
                site = {
                    name: node.callFrame.functionName || '(anonymous)',
                    location: locationOf(node.callFrame, projectRoot),
                    group: groupOf(node.callFrame, projectRoot),
                    bytes: 0,
                };
                sites.set(key, site);
            }
            site.bytes += node.selfSize;
            groups.set(site.group, (groups.get(site.group) ?? 0) + node.selfSize);
            total += node.selfSize;
        }
    }
    return {
        totalBytes: total,
        sites: [...sites.values()].sort((a, b) => b.bytes - a.bytes),
        groups: [...groups.entries()].map(([group, bytes]) => ({ group, bytes })).sort((a, b) => b.bytes - a.bytes),
    };
}
