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

interface Reading { open: number; failed: number; queuedItems: number; queuedJobs: number; activeJobs: number }

/** Open and failed items of the scope (from the gap views) and the jobs of its versions' queues. */
async function readScope(db: Db, scope: Scope): Promise<Reading> {
  const sources = scope.targets.map((t) => t.source);
  const versions = scope.targets.map((t) => t.version);
  const { rows: [gap] } = await db.query<{ open: string; failed: string }>(
    `select coalesce(sum(g.missing + g.stale + g.outdated), 0) as open, coalesce(sum(g.failed), 0) as failed
       from ${scope.tenant === undefined ? 'regen.embedding_gap' : 'regen.embedding_gap_by_tenant'} g
      where (g.source, g.version) in (select * from unnest($1::text[], $2::text[]))
        ${scope.tenant === undefined ? 'and $3::text is null' : 'and g.tenant = $3::text'}`,
    [sources, versions, scope.tenant ?? null]);
  const { rows: [queue] } = await db.query<{ items: string; jobs: string; active: string }>(
    `select coalesce(sum(q.items), 0) as items, coalesce(sum(q.jobs), 0) as jobs,
            coalesce(sum(q.jobs) filter (where q.state = 'active'), 0) as active
       from regen.queue_depth() q where q.version = any($1::text[])`, [versions]);
  return { open: Number(gap?.open ?? 0), failed: Number(gap?.failed ?? 0), queuedItems: Number(queue?.items ?? 0),
    queuedJobs: Number(queue?.jobs ?? 0), activeJobs: Number(queue?.active ?? 0) };
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
  const samples: Array<{ at: number; done: number }> = [];
  for (;;) {
    const r = await readScope(db, scope);
    // forced items are current already: only the queue shows what is left of them
    const remaining = scope.force ? Math.max(r.open, r.queuedItems) : r.open;
    total = Math.max(total || Math.max(enqueued, remaining), remaining);
    const done = total - remaining;
    const now = Date.now();
    if (samples.length === 0 || done !== samples[samples.length - 1]!.done) lastMoveAt = now;
    samples.push({ at: now, done });
    while (samples.length > 2 && now - samples[0]!.at > 10_000) samples.shift();
    const first = samples[0]!;
    const rate = now > first.at ? Math.max(0, (done - first.done) / ((now - first.at) / 1000)) : 0;
    const idle = remaining > 0 && r.activeJobs === 0 && now - lastMoveAt >= IDLE_NOTE_AFTER_MS;
    const progress: Progress = {
      done, total, remaining, failed: r.failed, rate, etaSeconds: remaining === 0 ? 0 : rate > 0 ? remaining / rate : null,
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
