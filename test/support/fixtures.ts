// Shared fixtures for SQL-level tests: a version, an articles table registered as a source, and
// helpers to read the gap and write vectors the way the worker does.
import { createHash } from 'node:crypto';
import { prepareInputs, writeEmbeddings, type WriteResult } from '../../src/store.ts';
import type { Db } from '../../src/db.ts';

export const DIMS = 8;

/** A deterministic unit vector derived from a text (a stand-in provider for SQL-level tests). */
export function vectorOf(text: string, dims = DIMS): number[] {
  const out: number[] = [];
  let seed = createHash('sha256').update(text).digest();
  while (out.length < dims) {
    for (let i = 0; i + 4 <= seed.length && out.length < dims; i += 4) out.push(seed.readInt32BE(i) / 2 ** 31);
    seed = createHash('sha256').update(seed).digest();
  }
  const norm = Math.hypot(...out);
  return out.map((x) => x / norm);
}

export async function setupArticles(db: Db, options: { rows?: number; version?: string; chunkChars?: number } = {}): Promise<void> {
  const version = options.version ?? 'test@1';
  await db.query(`create table articles (
    id bigint primary key, tenant text not null, title text not null, body text, views integer not null default 0,
    published boolean not null default true)`);
  await db.query(
    `insert into articles (id, tenant, title, body, views)
     select g, 'tenant_' || (g % 3), 'Title ' || g, 'Body of article ' || g || '.', g from generate_series(1, $1::int) g`,
    [options.rows ?? 30]);
  await db.query(`select regen.create_version($1, 'test-model', $2, settings => $3::jsonb)`,
    [version, DIMS, JSON.stringify({ chunk_chars: options.chunkChars ?? 2000, chunk_overlap: 0 })]);
  await db.query(
    `select regen.register_source('articles', 'articles', 'id', $$title || E'\\n\\n' || coalesce(body, '')$$,
                                  tenant_column => 'tenant', priority_expression => 'views',
                                  filter_expression => 'published', version => $1)`,
    [version]);
}

export type Gap = { expected: number; current: number; missing: number; stale: number; outdated: number; failed: number };

export async function gap(db: Db, source = 'articles', version = 'test@1'): Promise<Gap> {
  const { rows } = await db.query<Record<string, string>>(
    `select expected, current, missing, stale, outdated, failed from regen.embedding_gap where source = $1 and version = $2`,
    [source, version]);
  const row = rows[0];
  if (!row) throw new Error(`no gap row for ${source} ${version}`);
  return Object.fromEntries(Object.entries(row).map(([k, v]) => [k, Number(v)])) as Gap;
}

/**
 * Folds the changes the capture triggers logged into the item states, as the worker does every
 * REGEN_ENQUEUE_INTERVAL_MS (regen.apply_changes); returns the changes applied.
 */
export async function applyChanges(db: Db): Promise<number> {
  const { rows } = await db.query<{ n: string }>('select regen.apply_changes() as n');
  return Number(rows[0]!.n);
}

/** Embeds rows as the worker would: prepare inputs, make a vector per distinct text, write back. */
export async function embedRows(db: Db, rowIds: string[], source = 'articles', version = 'test@1', dims = DIMS): Promise<{
  inputs: number; results: WriteResult[];
}> {
  const inputs = await prepareInputs(db, source, version, rowIds);
  const byText = new Map<string, number[]>();
  for (const input of inputs) {
    if (input.input !== null) byText.set(input.textHash.toString('hex'), vectorOf(input.input, dims));
  }
  const results = inputs.length === 0 ? [] : await writeEmbeddings(db, source, version, inputs.map((input) => ({
    rowId: input.rowId, chunkNo: input.chunkNo, contentHash: input.contentHash,
    embedding: byText.get(input.textHash.toString('hex'))!,
  })));
  return { inputs: byText.size, results };
}

export async function allRowIds(db: Db, table = 'articles'): Promise<string[]> {
  const { rows } = await db.query<{ id: string }>(`select id::text as id from ${table} order by id`);
  return rows.map((r) => r.id);
}

export function sha256(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}
