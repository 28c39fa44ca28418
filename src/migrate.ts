// Model migration from TypeScript: the SQL functions do the work (regen.start_migration, cutover,
// rollback, retire); this adds the steps a function cannot take, which must run outside a
// transaction so searches never wait: building the HNSW index of the version a cutover or rollback
// makes active (CREATE INDEX CONCURRENTLY), and dropping a retired version's (DROP INDEX CONCURRENTLY).
import type { Db } from './db.ts';
import { buildVersionIndexes, type BuildIndexOptions } from './versions.ts';

export interface StartResult { source: string; version: string; items: number; jobs: number }
export interface RetireResult { vectors: number; droppedIndexes: string[] }

export async function startMigration(db: Db, source: string, version: string): Promise<StartResult> {
  const { rows: [row] } = await db.query<{ source: string; version: string; items: string; jobs: string }>(
    'select * from regen.start_migration($1::text, $2::text)', [source, version]);
  return { source: row!.source, version: row!.version, items: Number(row!.items), jobs: Number(row!.jobs ?? 0) };
}

export interface FlipOptions {
  /** How the version's index is built when it has none yet (progress, maintenance_work_mem). */
  index?: Omit<BuildIndexOptions, 'version' | 'backfilledOnly'>;
}

/**
 * Runs a step that makes a version active; when SQL refuses it for want of a valid HNSW index
 * (RG056), builds that index concurrently and runs the step again. Every other refusal (below the
 * gate, say) comes first, so nothing is built for a step that would be refused anyway.
 */
async function withVersionIndex<T>(db: Db, version: () => Promise<string>, step: () => Promise<T>, options: FlipOptions): Promise<T> {
  try {
    return await step();
  } catch (err) {
    if ((err as { code?: string }).code !== 'RG056') throw err;
  }
  await buildVersionIndexes(db, { ...options.index, version: await version() });
  return step();
}

/**
 * Makes `version` the one `source` serves (regen.cutover), building its HNSW index first when it
 * has none yet (a version being built gets it only now). `db` must not be inside a transaction.
 */
export async function cutover(db: Db, source: string, version: string,
  options: { minCoverage?: number; force?: boolean; reason?: string } & FlipOptions = {}): Promise<string> {
  return withVersionIndex(db, async () => version, async () => {
    const { rows: [row] } = await db.query<{ active: string }>(
      'select regen.cutover($1::text, $2::text, min_coverage => $3::float8, force => $4::boolean, reason => $5::text) as active',
      [source, version, options.minCoverage ?? 0.995, options.force ?? false, options.reason ?? null]);
    return row!.active;
  }, options);
}

/** Serves the previous version again (regen.rollback); its index is built first in the rare case it has none. */
export async function rollback(db: Db, source: string, reason?: string, options: FlipOptions = {}): Promise<string> {
  const previous = async () => {
    const { rows: [row] } = await db.query<{ version: string }>(
      `select version from regen.embedding_gap where source = $1 and role = 'previous'`, [source]);
    return row!.version;
  };
  return withVersionIndex(db, previous, async () => {
    const { rows: [row] } = await db.query<{ active: string }>(
      'select regen.rollback($1::text, reason => $2::text) as active', [source, reason ?? null]);
    return row!.active;
  }, options);
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
