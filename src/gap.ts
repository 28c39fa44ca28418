// Reading the gap views.
import type { Db } from './db.ts';

export interface GapRow {
  source: string;
  version: string;
  role?: string;
  tenant?: string | null;
  expected: number;
  current: number;
  missing: number;
  stale: number;
  outdated: number;
  failed: number;
  queued: number;
  coverage: number;
  cutover_ready?: boolean;
}

const COUNTS = ['expected', 'current', 'missing', 'stale', 'outdated', 'failed', 'queued'] as const;

export async function readGap(db: Db, options: { byTenant?: boolean; source?: string } = {}): Promise<GapRow[]> {
  const view = options.byTenant ? 'regen.embedding_gap_by_tenant' : 'regen.embedding_gap';
  const order = options.byTenant ? 'source, version, tenant' : 'source, role, version';
  const { rows } = await db.query<Record<string, unknown>>(
    `select * from ${view} where $1::text is null or source = $1 order by ${order}`, [options.source ?? null]);
  return rows.map((row) => {
    const out = { ...row } as Record<string, unknown>;
    for (const key of COUNTS) out[key] = Number(row[key]);
    out.coverage = Number(row.coverage);
    return out as unknown as GapRow;
  });
}
