/**
 * The messages between the primary and its workers over the cluster IPC channel: a worker says
 * it is ready (listening), the primary asks a worker for its metrics (as JSON, to be summed)
 * or its readiness, and the worker answers with the id of the question. Shapes and guards only;
 * it must not send anything itself. Signals (SIGTERM, SIGUSR2, SIGHUP) travel as signals.
 */
import type { MetricObjectWithValues, MetricValue } from 'prom-client';

export type WorkerMetrics = MetricObjectWithValues<MetricValue<string>>[];

/** Primary → worker. */
export type Question = { readonly mailwarden: 'metrics' | 'readiness'; readonly id: number };

/** Worker → primary. */
export type Answer =
    | { readonly mailwarden: 'ready' }
    | { readonly mailwarden: 'metrics'; readonly id: number; readonly metrics: WorkerMetrics }
    | { readonly mailwarden: 'readiness'; readonly id: number; readonly reason: string | null };

function isRecord(m: unknown): m is Record<string, unknown> {
    return m !== null && typeof m === 'object';
}

export function isQuestion(m: unknown): m is Question {
    return isRecord(m) && (m.mailwarden === 'metrics' || m.mailwarden === 'readiness') && typeof m.id === 'number';
}

export function isAnswer(m: unknown): m is Answer {
    if (!isRecord(m)) return false;
    if (m.mailwarden === 'ready') return true;
    if (typeof m.id !== 'number') return false;
    if (m.mailwarden === 'metrics') return Array.isArray(m.metrics);
    return m.mailwarden === 'readiness' && (m.reason === null || typeof m.reason === 'string');
}
