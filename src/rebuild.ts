// The rebuild button (regen.rebuild) and following a rebuild to its end: how much of its scope is
// done, how fast, and whether it closed, got stuck or was interrupted. The CLI and the demo show it.
import type { Db } from './db.ts';
import { pause } from './pause.ts';

export interface RebuildRow { source: string; version: string; items: number; estimated_tokens: number | null; jobs: number }

export interface RebuildOptions {
  /** Only this source (default: every source). */
  source?: string;
  /** This version instead of each source's active one (e.g. one being built). */
  version?: string;
  /** Every item, current or not, skipping the cache. */
  force?: boolean;
  /** Enqueue nothing: count items and estimate tokens. */
  dryRun?: boolean;
  /** Only the rows of this tenant. */
  tenant?: string;
}

/** Enqueues the gap of the scope hot-first (or, with dryRun, only counts it): one row per (source, version). */
export async function rebuild(db: Db, options: RebuildOptions = {}): Promise<RebuildRow[]> {
  const { rows } = await db.query<Record<string, string | null>>(
    'select * from regen.rebuild($1::text, $2::text, force => $3::boolean, dry_run => $4::boolean, tenant => $5::text)',
    [options.source ?? null, options.version ?? null, options.force ?? false, options.dryRun ?? false, options.tenant ?? null]);
  return rows.map((r) => ({
    source: r.source!, version: r.version!, items: Number(r.items), jobs: Number(r.jobs),
    estimated_tokens: r.estimated_tokens === null ? null : Number(r.estimated_tokens),
  }));
}

/** What a rebuild covers: the (source, version) pairs regen.rebuild() answered for, and its tenant. */
export interface Scope { targets: Array<{ source: string; version: string }>; tenant?: string; force: boolean }

export interface Progress {
  done: number; total: number; remaining: number; failed: number;
  /** items per second over the last 10 s */
  rate: number;
  etaSeconds: number | null;
  note: string;
}

export type Outcome = { kind: 'closed' | 'stuck' | 'interrupted'; last: Progress };

/** regen.rebuild_status(): open work, rate and ETA of a scope, computed in SQL. */
export interface ScopeStatus {
  open: number; failed: number; settledRecently: number; ratePerSecond: number; etaSeconds: number | null;
  queuedItems: number; queuedJobs: number; activeJobs: number;
}

/** The status of a rebuild's scope, as regen.rebuild_status computes it (rate over the last 10 s). */
export async function scopeStatus(db: Db, scope: Scope): Promise<ScopeStatus> {
  const { rows: [r] } = await db.query<Record<string, string | null>>(
    'select * from regen.rebuild_status($1::text[], $2::text[], tenant => $3::text)',
    [scope.targets.map((t) => t.source), scope.targets.map((t) => t.version), scope.tenant ?? null]);
  return {
    open: Number(r!.open), failed: Number(r!.failed), settledRecently: Number(r!.settled_recently),
    ratePerSecond: Number(r!.rate_per_second), etaSeconds: r!.eta_seconds === null ? null : Number(r!.eta_seconds),
    queuedItems: Number(r!.queued_items), queuedJobs: Number(r!.queued_jobs), activeJobs: Number(r!.active_jobs),
  };
}

const IDLE_NOTE_AFTER_MS = 15_000;
const STUCK_AFTER_POLLS = 5;

/**
 * Polls the scope every second until its gap is closed (every item current or failed; with force,
 * until the versions' queues are empty as well), until open items are left with no job queued for
 * five polls in a row (stuck), or until `stop` fires (interrupted).
 */
export async function trackProgress(db: Db, scope: Scope, enqueued: number, stop: AbortSignal,
  report: (p: Progress) => void, everyMs = 1000): Promise<Outcome> {
  let total = 0;
  let emptyPolls = 0;
  let lastMoveAt = Date.now();
  let lastDone = -1;
  for (;;) {
    const r = await scopeStatus(db, scope);
    // forced items are current already: only the queue shows what is left of them
    const remaining = scope.force ? Math.max(r.open, r.queuedItems) : r.open;
    total = Math.max(total || Math.max(enqueued, remaining), remaining);
    const done = total - remaining;
    const now = Date.now();
    if (done !== lastDone) lastMoveAt = now;
    lastDone = done;
    const idle = remaining > 0 && r.activeJobs === 0 && now - lastMoveAt >= IDLE_NOTE_AFTER_MS;
    // rate and ETA as SQL computes them (forced items: at that rate, against what is left in the queue)
    const etaSeconds = !scope.force ? r.etaSeconds : remaining === 0 ? 0 : r.ratePerSecond > 0 ? remaining / r.ratePerSecond : null;
    const progress: Progress = {
      done, total, remaining, failed: r.failed, rate: r.ratePerSecond, etaSeconds,
      note: idle ? 'nothing in flight: is a pgregen worker running?' : '',
    };
    report(progress);
    if (remaining === 0) return { kind: 'closed', last: progress };
    emptyPolls = r.queuedJobs === 0 ? emptyPolls + 1 : 0;
    if (emptyPolls >= STUCK_AFTER_POLLS) return { kind: 'stuck', last: progress };
    await pause(everyMs, stop);
    if (stop.aborted) return { kind: 'interrupted', last: progress };
  }
}
