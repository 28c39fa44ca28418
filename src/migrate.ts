// Model migration from TypeScript: the SQL functions do the work (regen.start_migration, cutover,
// rollback, retire); this adds the one step a function cannot take, dropping a retired version's
// HNSW index with DROP INDEX CONCURRENTLY, which must run outside a transaction so searches never wait.
import type { Db } from './db.ts';

export interface StartResult { source: string; version: string; items: number; jobs: number }
export interface RetireResult { vectors: number; droppedIndexes: string[] }

export async function startMigration(db: Db, source: string, version: string): Promise<StartResult> {
  const { rows: [row] } = await db.query<{ source: string; version: string; items: string; jobs: string }>(
    'select * from regen.start_migration($1::text, $2::text)', [source, version]);
  return { source: row!.source, version: row!.version, items: Number(row!.items), jobs: Number(row!.jobs ?? 0) };
}

export async function cutover(db: Db, source: string, version: string,
  options: { minCoverage?: number; force?: boolean; reason?: string } = {}): Promise<string> {
  const { rows: [row] } = await db.query<{ active: string }>(
    'select regen.cutover($1::text, $2::text, min_coverage => $3::float8, force => $4::boolean, reason => $5::text) as active',
    [source, version, options.minCoverage ?? 0.995, options.force ?? false, options.reason ?? null]);
  return row!.active;
}

export async function rollback(db: Db, source: string, reason?: string): Promise<string> {
  const { rows: [row] } = await db.query<{ active: string }>(
    'select regen.rollback($1::text, reason => $2::text) as active', [source, reason ?? null]);
  return row!.active;
}

/**
 * Removes a version the source no longer serves (see regen.retire for the rollback window), then
 * drops that version's HNSW index when no source uses it any more (other versions' indexes are
 * left alone, including one created and not yet registered). `db` must not be inside a
 * transaction (a pool or a client in autocommit).
 */
export async function retire(db: Db, source: string, version: string, minAge = '7 days'): Promise<RetireResult> {
  const { rows: [row] } = await db.query<{ vectors: string }>(
    'select regen.retire($1::text, $2::text, min_age => $3::interval) as vectors', [source, version, minAge]);
  const unused = await db.query<{ index_name: string }>(
    'select index_name from regen.unused_version_indexes() where version = $1::text', [version]);
  for (const { index_name } of unused.rows) {
    await db.query(`drop index concurrently if exists ${index_name}`);   // index_name is quoted by SQL (format %I)
  }
  return { vectors: Number(row!.vectors), droppedIndexes: unused.rows.map((r) => r.index_name) };
}
