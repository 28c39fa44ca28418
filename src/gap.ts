// Reading the gap views.
import type { Db } from './db.ts';
import { PgregenError } from './errors.ts';

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
  /** Vectors adopted without verification (regen.finish_adoption with force): searchable, re-embedded by the next rebuild. */
  adopted: number;
  queued: number;
  coverage: number;
  cutover_ready?: boolean;
}

const COUNTS = ['expected', 'current', 'missing', 'stale', 'outdated', 'failed', 'adopted', 'queued'] as const;

export async function readGap(db: Db, options: { byTenant?: boolean; source?: string } = {}): Promise<GapRow[]> {
  const view = options.byTenant ? 'regen.embedding_gap_by_tenant' : 'regen.embedding_gap';
  const order = options.byTenant ? 'source, version, tenant' : 'source, role, version';
  const { rows } = await db.query<Record<string, unknown>>(
    `select * from ${view} where $1::text is null or source = $1 order by ${order}`, [options.source ?? null]);
  if (rows.length === 0 && options.source !== undefined) await requireSource(db, options.source);
  return rows.map((row) => {
    const out = { ...row } as Record<string, unknown>;
    for (const key of COUNTS) out[key] = Number(row[key]);
    out.coverage = Number(row.coverage);
    return out as unknown as GapRow;
  });
}

/** Refuses (RG010, as the SQL functions do) a source name that is not registered, naming the ones that are. */
export async function requireSource(db: Db, name: string): Promise<void> {
  const { rows } = await db.query<{ name: string }>('select name from regen.sources order by name');
  if (rows.some((r) => r.name === name)) return;
  throw new PgregenError(`unknown source '${name}'`,
    rows.length === 0 ? 'no source is registered yet: register one with pgregen source register (regen.register_source())'
      : `registered sources: ${rows.map((r) => r.name).join(', ')} (pgregen source list)`, 'RG010');
}

/** Coverage of a version over some sources (the least covered one), or null when none of them uses it. */
export async function versionCoverage(db: Db, version: string, sources: string[]): Promise<number | null> {
  const { rows } = await db.query<{ coverage: string | null }>(
    'select min(coverage) as coverage from regen.embedding_gap where version = $1 and source = any($2::text[])', [version, sources]);
  return rows[0]?.coverage == null ? null : Number(rows[0].coverage);
}
