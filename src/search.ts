// search(): embeds a query with the model of the version it will be compared with, then asks
// regen.search_scoped for the tenant's nearest chunks in one transaction whose tenant is set with
// regen.set_tenant (SET LOCAL: gone at commit, so nothing follows the connection back to the pool).
// Routing, preprocessing, filtering and ranking happen in SQL.
import type OpenAI from 'openai';
import type pg from 'pg';
import pgvector from 'pgvector';
import { PgregenError } from './errors.ts';

export interface SearchOptions {
  /** The tenant whose rows are searched (and the only one whose rows can come back). */
  tenant: string;
  /** How many chunks, 1 to 1,000 (default 10). */
  k?: number;
  /** Sources to search (default: every source; their active versions must then be one). */
  sources?: string[];
  /** A version to read instead of the active one (a shadow read during a migration). */
  version?: string;
  /** Only chunks at most this far from the query (in the version's distance). */
  maxDistance?: number;
}

export interface SearchHit {
  source: string;
  rowId: string;
  chunkNo: number;
  distance: number;
  /** The version searched: the one the query was embedded for. */
  version: string;
}

export interface SearchContext {
  /** Connections of a role granted with regen.grant_app(). */
  pool: pg.Pool;
  /** An OpenAI (or compatible) client for the versions' provider. */
  openai: OpenAI;
}

interface SearchInput {
  version: string;
  model: string;
  dimensions: number;
  send_dimensions: boolean;
  input: string;
}

export async function search(context: SearchContext, text: string, options: SearchOptions): Promise<SearchHit[]> {
  if (typeof text !== 'string' || text.trim() === '') throw new PgregenError('the query text is empty', 'pass the text to search for');
  if (typeof options.tenant !== 'string' || options.tenant === '') {
    throw new PgregenError('no tenant given', 'search(text, { tenant, ... }): every search runs inside one tenant');
  }
  const { pool, openai } = context;
  const sources = options.sources ?? null;

  // Which version the search will read, and the query as that version preprocesses text.
  const { rows: [target] } = await pool.query<SearchInput>(
    'select * from regen.search_input($1::text, $2::text[], $3::text)', [text, sources, options.version ?? null]);
  if (!target) return [];   // no source in scope

  // Embedded outside the transaction: no connection waits idle in a transaction on the provider.
  const response = await openai.embeddings.create({
    model: target.model,
    input: target.input,
    ...(target.send_dimensions ? { dimensions: target.dimensions } : {}),
  });
  const embedding = response.data[0]?.embedding as number[] | undefined;
  if (!embedding) throw new PgregenError(`the provider returned no embedding for the query (model ${target.model})`);

  const client = await pool.connect();
  try {
    await client.query('begin');
    await client.query('select regen.set_tenant($1)', [options.tenant]);
    // The version is named, so a cutover between the two statements cannot pair the query with
    // vectors of another model.
    const { rows } = await client.query<{ source: string; row_id: string; chunk_no: number; distance: number }>(
      'select * from regen.search_scoped($1::vector, $2::integer, $3::text[], $4::text, $5::float8)',
      [pgvector.toSql(embedding), options.k ?? 10, sources, target.version, options.maxDistance ?? null]);
    await client.query('commit');
    return rows.map((r) => ({ source: r.source, rowId: r.row_id, chunkNo: r.chunk_no, distance: r.distance, version: target.version }));
  } catch (err) {
    await client.query('rollback').catch(() => {});
    throw err;
  } finally {
    client.release();
  }
}
