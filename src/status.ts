// The state of pgregen in one value: schema (applied and pending migrations), sources with their
// versions and coverage, the queue, failures, rebuild progress, freshness, model migrations and recovery.
import { readdirSync } from 'node:fs';
import type { Db } from './db.ts';
import { readFreshness, type FreshnessRow } from './freshness.ts';
import { readGap, type GapRow } from './gap.ts';
import { SQL_DIR } from './install.ts';
import { jsonRows, toIsoTime } from './json.ts';

export interface Status {
  /** lastAppliedAt: ISO 8601. */
  schema: { applied: string[]; pending: string[]; lastAppliedAt: string | null };
  sources: GapRow[];
  queue: Array<{ version: string; state: string; jobs: number; items: number }>;
  failed: number;
  /** Rows of regen.rebuild_progress (counts and rates as numbers, eta_seconds, last_error_at in ISO 8601). */
  progress: Array<Record<string, unknown>>;
  /** Rows of regen.migration_status (counts and scores as numbers, times in ISO 8601); null when the installed schema has no such view. */
  migrations: Array<Record<string, unknown>> | null;
  /** regen.recovery_status (verifiedAt, lostSince in ISO 8601); null when the installed schema has no such view. */
  recovery: { storeVerified: boolean; verifiedAt: string | null; autoRecover: boolean; lostItemsWaiting: number; lostSince: string | null } | null;
  /** Rows of regen.freshness; null when the installed schema has no such view. */
  freshness: FreshnessRow[] | null;
}

/** Everything `pgregen status` shows, as values. */
export async function readStatus(db: Db): Promise<Status> {
  // executed_at is a timestamp without time zone, written by the server's clock in its time zone
  const { rows: applied } = await db.query<{ name: string; executed_at: Date | null }>(
    `select name, executed_at::timestamptz as executed_at from regen.migrations where id > 0 order by id`);
  const known = readdirSync(SQL_DIR).filter((f) => /^\d{4}_\w+\.sql$/.test(f)).sort().map((f) => f.slice(5, -'.sql'.length));
  const names = applied.map((r) => r.name);
  const queue = await db.query<{ version: string; state: string; jobs: string; items: string }>('select * from regen.queue_depth()');
  const sources = await readGap(db);
  const progress = await db.query(
    `select source, version, done, total, percent, queued, rate_per_minute, extract(epoch from eta)::float8 as eta_seconds,
            failures, last_error, last_error_at
       from regen.rebuild_progress
      where queued > 0 or rate_per_minute > 0 or last_error_at > now() - interval '1 hour'
      order by source, version`);
  const { rows: [view] } = await db.query<{ present: boolean }>(`select to_regclass('regen.migration_status') is not null as present`);
  const migrations = view?.present ? jsonRows(await db.query('select * from regen.migration_status')) : null;
  const { rows: [recoveryView] } = await db.query<{ present: boolean }>(`select to_regclass('regen.recovery_status') is not null as present`);
  const recoveryRow = recoveryView?.present
    ? (await db.query<{ store_verified: boolean; verified_at: Date | null; auto_recover: boolean; lost_items_waiting: string; lost_since: Date | null }>(
      'select * from regen.recovery_status')).rows[0] : undefined;
  const freshness = await readFreshness(db);
  return {
    schema: { applied: names, pending: known.filter((n) => !names.includes(n)), lastAppliedAt: toIsoTime(applied.at(-1)?.executed_at) },
    sources,
    queue: queue.rows.map((r) => ({ version: r.version, state: r.state, jobs: Number(r.jobs), items: Number(r.items) })),
    failed: sources.reduce((n, s) => n + s.failed, 0),
    progress: jsonRows(progress),
    migrations,
    recovery: recoveryRow ? {
      storeVerified: recoveryRow.store_verified, verifiedAt: toIsoTime(recoveryRow.verified_at), autoRecover: recoveryRow.auto_recover,
      lostItemsWaiting: Number(recoveryRow.lost_items_waiting), lostSince: toIsoTime(recoveryRow.lost_since),
    } : null,
    freshness,
  };
}
