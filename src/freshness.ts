// Reading regen.freshness (sql/0026_freshness.sql): how long edits take to become searchable.
import type { Db } from './db.ts';
import { toNumber } from './json.ts';

export interface FreshnessRow {
  source: string;
  version: string;
  role: string;
  /** Rows with an edit not yet searchable in this version, and the age of the oldest (null: none). */
  edits_waiting: number;
  oldest_edit_seconds: number | null;
  /** Rows in backfill jobs, and how long the oldest such job has been queued (null: none). */
  backfill_waiting: number;
  oldest_backfill_seconds: number | null;
  /** Fresh edits made searchable in the last 5 minutes, and their delay from edit to vector. */
  edits_settled_5m: number;
  edit_delay_p50_seconds: number | null;
  edit_delay_p99_seconds: number | null;
  edit_delay_max_seconds: number | null;
}

/** The rows of regen.freshness; null when the installed schema has no such view (an older one). */
export async function readFreshness(db: Db): Promise<FreshnessRow[] | null> {
  const { rows: [view] } = await db.query<{ present: boolean }>(`select to_regclass('regen.freshness') is not null as present`);
  if (!view?.present) return null;
  const { rows } = await db.query<Record<string, unknown>>('select * from regen.freshness order by source, role, version');
  return rows.map((r) => ({
    source: String(r.source), version: String(r.version), role: String(r.role),
    edits_waiting: toNumber(r.edits_waiting) ?? 0, oldest_edit_seconds: toNumber(r.oldest_edit_seconds),
    backfill_waiting: toNumber(r.backfill_waiting) ?? 0, oldest_backfill_seconds: toNumber(r.oldest_backfill_seconds),
    edits_settled_5m: toNumber(r.edits_settled_5m) ?? 0, edit_delay_p50_seconds: toNumber(r.edit_delay_p50_seconds),
    edit_delay_p99_seconds: toNumber(r.edit_delay_p99_seconds), edit_delay_max_seconds: toNumber(r.edit_delay_max_seconds),
  }));
}
