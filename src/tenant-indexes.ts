// Tenant indexes: SQL decides which tenants get an HNSW index of their own (regen.tenant_index_plan);
// this runs the statements, one at a time and outside a transaction, because CREATE and DROP INDEX
// CONCURRENTLY cannot run in one. Searches and writes go on meanwhile.
import type { Db } from './db.ts';

export interface TenantIndexStep {
  action: 'create' | 'drop';
  version: string | null;
  tenant: string | null;
  vectors: number;
  indexName: string;
  statement: string;
  /** Milliseconds the statement took; absent in a dry run. */
  ms?: number;
}

export interface TenantIndexOptions {
  /** Tenants with at least this many vectors of a version get an index (default 10,000). */
  minRows?: number;
  /** Only this version (default: every version). */
  version?: string;
  /** Return the plan without running it. */
  dryRun?: boolean;
  /** Called before each statement runs. */
  onStep?: (step: TenantIndexStep) => void;
}

/** `db` must not be inside a transaction: a pool, or a client in autocommit. */
export async function tenantIndexes(db: Db, options: TenantIndexOptions = {}): Promise<TenantIndexStep[]> {
  const { rows } = await db.query<{ action: 'create' | 'drop'; version: string | null; tenant: string | null; vectors: string; index_name: string; statement: string }>(
    'select * from regen.tenant_index_plan(min_rows => $1::bigint, version => $2::text)', [options.minRows ?? 10_000, options.version ?? null]);
  const steps: TenantIndexStep[] = rows.map((r) => ({
    action: r.action, version: r.version, tenant: r.tenant, vectors: Number(r.vectors), indexName: r.index_name, statement: r.statement,
  }));
  if (options.dryRun) return steps;
  for (const step of steps) {
    options.onStep?.(step);
    const started = performance.now();
    await db.query(step.statement);
    step.ms = Math.round(performance.now() - started);
  }
  return steps;
}
