// Sources: the tables whose rows carry embeddings, through regen.register_source,
// regen.unregister_source and regen.sources.
import type { Db } from './db.ts';
import { jsonRows } from './json.ts';

export interface SourceRow {
  name: string;
  relation: string;
  id_column: string;
  content_expression: string;
  tenant_column: string | null;
  priority_expression: string | null;
  weight: number;
  filter_expression: string | null;
  active_version: string;
  /** ISO 8601. */
  created_at: string;
}

export interface SourceDefinition {
  /** The table, optionally schema-qualified. */
  table: string;
  /** A column with a primary key or unique index of its own. */
  idColumn: string;
  /** SQL expression of the text to embed. */
  content: string;
  tenantColumn?: string;
  /** SQL expression (float8): higher is embedded first. */
  priority?: string;
  /** Heavier sources go first in rebuilds (default 1). */
  weight?: number;
  /** SQL expression (boolean): only rows where it is true are embedded. */
  filter?: string;
  /** The version to build and serve. */
  version: string;
}

export interface RegisteredSource { name: string; table: string; version: string; rows: number }

/** Installs change capture on the table and tracks its rows for the version; reports how many rows wait to be embedded. */
export async function registerSource(db: Db, name: string, def: SourceDefinition): Promise<RegisteredSource> {
  await db.query(
    `select regen.register_source(name => $1::text, relation => $2::text::regclass, id_column => $3::name,
                                  content_expression => $4::text, tenant_column => $5::name, priority_expression => $6::text,
                                  weight => $7::float8, filter_expression => $8::text, version => $9::text)`,
    [name, def.table, def.idColumn, def.content, def.tenantColumn ?? null, def.priority ?? null, def.weight ?? 1, def.filter ?? null, def.version]);
  const { rows: [gap] } = await db.query<{ relation: string; expected: string }>(
    `select s.relation::text as relation, g.expected from regen.sources s
       join regen.embedding_gap g on g.source = s.name and g.role = 'active' where s.name = $1`, [name]);
  return { name, table: gap?.relation ?? def.table, version: def.version, rows: Number(gap?.expected ?? 0) };
}

export async function listSources(db: Db): Promise<SourceRow[]> {
  const result = await db.query(
    `select name, relation::text as relation, id_column::text as id_column, content_expression, tenant_column::text as tenant_column,
            priority_expression, weight, filter_expression, active_version, created_at
       from regen.sources order by name`);
  return jsonRows<SourceRow>(result);
}

/** Drops the source's capture triggers, items and vectors (the vectors move to the cache); the table stays. */
export async function unregisterSource(db: Db, name: string): Promise<{ name: string; table: string }> {
  const { rows: [row] } = await db.query<{ relation: string }>('select relation::text as relation from regen.sources where name = $1', [name]);
  await db.query('select regen.unregister_source($1::text)', [name]);   // RG010 for an unknown name, with its hint
  return { name, table: row?.relation ?? '' };
}

/**
 * Mirrors a source's active version's vectors into a vector column of its table (regen.set_mirror),
 * or stops (column null). The worker writes the mirror (regen.sync_mirrors), never the application's
 * write path. Returns the column mirrored into, or null.
 */
export async function setMirror(db: Db, source: string, column: string | null): Promise<string | null> {
  const { rows } = await db.query<{ column: string | null }>('select regen.set_mirror($1::text, $2::name) as column', [source, column]);
  return rows[0]?.column ?? null;
}
