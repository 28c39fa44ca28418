// search(): embeds a query with the model of the version it will be compared with, then asks
// regen.search_tenant for the tenant's nearest chunks (regen.search_scoped) or rows
// (regen.search_rows): one statement that sets the tenant for the search only, so nothing follows
// the connection back to the pool. Two round trips to the database for a text (the version and
// its preprocessing, then the search), one for a query already embedded. Routing, preprocessing,
// filtering and ranking happen in SQL. The pool may be a streaming replica's: nothing here writes.
import type OpenAI from 'openai';
import type pg from 'pg';
import { PgregenError } from './errors.ts';
import { vectorBinary } from './vector-binary.ts';

export interface SearchOptions {
  /** The tenant whose rows are searched (and the only one whose rows can come back). */
  tenant: string;
  /** How many chunks (or rows, with `rows`), 1 to 1,000 (default 10). */
  k?: number;
  /** The k nearest distinct rows, each at its best chunk (regen.search_rows), instead of the k nearest chunks. */
  rows?: boolean;
  /** Sources to search (default: every source; their active versions must then be one). */
  sources?: string[];
  /**
   * A version to read instead of the active one (a shadow read during a migration). With a query
   * already embedded, name the version it was embedded for: a cutover in between would otherwise
   * compare it with vectors of another model of the same size.
   */
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
  /** Connections of a role granted with regen.grant_app(): the primary's, or a hot standby's (read-only). */
  pool: pg.Pool;
  /** An OpenAI (or compatible) client for the versions' provider (not needed for a query already embedded). */
  openai?: OpenAI;
  /**
   * Send the search as a named prepared statement, parsed once per connection (about a quarter of a
   * millisecond less per search). Not through PgBouncer in transaction mode unless it keeps
   * prepared statements (1.21 and later, with max_prepared_statements set). Default false.
   */
  prepare?: boolean;
}

interface SearchInput {
  version: string;
  model: string;
  dimensions: number;
  send_dimensions: boolean;
  input: string;
}

/** regen.search_scoped returns at most this many chunks. */
export const MAX_K = 1000;

/**
 * Refuses bad arguments before anything is sent to the database or the provider, with the codes
 * regen.search_scoped uses for them: RG040 no tenant, RG041 an invalid search argument.
 */
export function checkSearchArguments(query: unknown, options: SearchOptions): void {
  if (Array.isArray(query)) {
    if (query.length === 0 || query.some((x) => typeof x !== 'number' || !Number.isFinite(x))) {
      throw new PgregenError('the query vector must be a non-empty array of finite numbers', 'pass the text to search for, or its embedding', 'RG041');
    }
  } else if (typeof query !== 'string' || query.trim() === '') {
    throw new PgregenError('the query text is empty', 'pass the text to search for', 'RG041');
  }
  if (typeof options?.tenant !== 'string' || options.tenant === '') {
    throw new PgregenError('no tenant given', 'search(text, { tenant, ... }): every search runs inside one tenant', 'RG040');
  }
  const k = options.k ?? 10;
  if (!Number.isInteger(k) || k < 1 || k > MAX_K) {
    throw new PgregenError(`k must be between 1 and ${MAX_K}, not ${String(options.k)}`, undefined, 'RG041');
  }
  if (options.maxDistance !== undefined && options.maxDistance !== null && !(typeof options.maxDistance === 'number' && !Number.isNaN(options.maxDistance))) {
    throw new PgregenError(`max_distance must be a number, not ${String(options.maxDistance)}`, undefined, 'RG041');
  }
  if (options.rows !== undefined && options.rows !== null && typeof options.rows !== 'boolean') {
    throw new PgregenError(`rows must be true or false, not ${String(options.rows)}`, undefined, 'RG041');
  }
  if (options.sources !== undefined && options.sources !== null &&
      (!Array.isArray(options.sources) || options.sources.some((s) => typeof s !== 'string' || s === ''))) {
    throw new PgregenError('sources must be an array of source names', 'leave it out to search every source', 'RG041');
  }
}

/** The deepest cause of an error, e.g. `connect ECONNREFUSED 127.0.0.1:8080` under openai's "Connection error." */
function rootCause(err: unknown): string {
  let at = err as { cause?: unknown; message?: string } | undefined;
  let message = at?.message ?? String(err);
  for (let depth = 0; at?.cause && depth < 5; depth++) {
    at = at.cause as { cause?: unknown; message?: string };
    if (at?.message) message = at.message;
  }
  return message;
}

/**
 * A failed embeddings request as an error that names the endpoint and what to check. `openai`'s own
 * errors say only "Connection error." for an endpoint that cannot be reached.
 */
export function embeddingError(openai: OpenAI, model: string, err: unknown): PgregenError {
  const endpoint = `${String(openai.baseURL ?? '').replace(/\/+$/, '')}/embeddings`;
  const status = (err as { status?: unknown }).status;
  if (typeof status !== 'number') {
    return new PgregenError(`cannot reach the embeddings endpoint ${endpoint}: ${rootCause(err)}`,
      'check the base URL (OPENAI_BASE_URL for the pgregen command line; unset means https://api.openai.com/v1) and that the server answers',
      undefined, undefined, { cause: err });
  }
  const hint = status === 401 || status === 403 ? 'check the API key (OPENAI_API_KEY for the pgregen command line)'
    : status === 404 ? `check that the endpoint serves model ${model} (the version's model, see regen.versions)`
      : status === 429 || status >= 500 ? 'the provider is overloaded or failing: try again later' : undefined;
  return new PgregenError(`the embeddings endpoint ${endpoint} answered ${status} for model ${model}: ${(err as Error).message}`,
    hint, undefined, undefined, { cause: err });
}

/** A version's model as a client embeds for it (regen.search_input, regen.adoption_sample). */
export interface EmbeddingTarget {
  model: string;
  dimensions: number;
  /** Whether the request names the dimensions (the version's send_dimensions). */
  sendDimensions: boolean;
}

/**
 * One vector per input, in order, `batch` inputs per request; a provider that cannot be reached or
 * refuses is a PgregenError naming the endpoint, one that answers with the wrong count is refused.
 */
export async function embedTexts(openai: OpenAI, target: EmbeddingTarget, inputs: string[], batch = 256): Promise<number[][]> {
  const vectors: number[][] = [];
  for (let at = 0; at < inputs.length; at += batch) {
    const input = inputs.slice(at, at + batch);
    const response = await openai.embeddings.create({
      model: target.model, input, ...(target.sendDimensions ? { dimensions: target.dimensions } : {}),
    }).catch((err: unknown) => { throw embeddingError(openai, target.model, err); });
    const data = [...response.data].sort((a, b) => a.index - b.index);
    if (data.length !== input.length) {
      throw new PgregenError(`the provider returned ${data.length} embeddings for ${input.length} texts (model ${target.model})`);
    }
    vectors.push(...data.map((d) => d.embedding as number[]));
  }
  return vectors;
}

/**
 * The tenant's nearest chunks (or, with `rows`, distinct rows) to `query`: a text, which is embedded
 * first, or its embedding. Every refusal is a PgregenError with the RGnnn code of its reason (bad
 * arguments are refused before any call; SQL's refusals keep their code, detail and hint); a provider
 * that cannot be reached or refuses is a PgregenError naming the endpoint.
 */
export async function search(context: SearchContext, query: string | number[], options: SearchOptions): Promise<SearchHit[]> {
  checkSearchArguments(query, options);
  try {
    if (Array.isArray(query)) return await searchVector(context, query, options.version ?? null, options);
    return await searchText(context, query, options);
  } catch (err) {
    throw PgregenError.fromSql(err);
  }
}

/** One statement: regen.search_tenant sets the tenant and searches (the version: the one named, else the active one). */
const SEARCH_TENANT = 'select * from regen.search_tenant($1::text, $2, $3::integer, $4::text[], $5::text, $6::float8, $7::boolean)';

async function searchVector(context: SearchContext, embedding: number[], version: string | null, options: SearchOptions): Promise<SearchHit[]> {
  // The query is not cast by name (`::vector` would need pgvector's schema on the role's
  // search_path): the parameter takes search_tenant's argument type, and is sent in binary.
  let query: Buffer;
  try {
    query = vectorBinary(embedding);
  } catch (err) {
    throw new PgregenError(`the query vector does not fit pgvector's vector: ${(err as Error).message}`, 'pass the embedding as the model returned it', 'RG041');
  }
  const values = [options.tenant, query, options.k ?? 10, options.sources ?? null, version,
    options.maxDistance ?? null, options.rows ?? false];
  const { rows } = await context.pool.query<{ source: string; row_id: string; chunk_no: number; distance: number; version_searched: string }>(
    context.prepare ? { name: 'pgregen.search_tenant', text: SEARCH_TENANT, values } : { text: SEARCH_TENANT, values });
  return rows.map((r) => ({ source: r.source, rowId: r.row_id, chunkNo: r.chunk_no, distance: r.distance, version: r.version_searched }));
}

async function searchText(context: SearchContext, text: string, options: SearchOptions): Promise<SearchHit[]> {
  const { pool, openai } = context;
  const sources = options.sources ?? null;
  if (!openai) throw new PgregenError('no OpenAI client to embed the query with', 'pass { pool, openai } to search(), or the query\'s embedding', 'RG041');

  // Which version the search will read, and the query as that version preprocesses text.
  const { rows: [target] } = await pool.query<SearchInput>(
    'select * from regen.search_input($1::text, $2::text[], $3::text)', [text, sources, options.version ?? null]);
  if (!target) return [];   // no source in scope

  // Embedded outside the transaction: no connection waits idle in a transaction on the provider.
  let response: Awaited<ReturnType<OpenAI['embeddings']['create']>>;
  try {
    response = await openai.embeddings.create({
      model: target.model,
      input: target.input,
      ...(target.send_dimensions ? { dimensions: target.dimensions } : {}),
    });
  } catch (err) {
    throw embeddingError(openai, target.model, err);
  }
  const embedding = response.data[0]?.embedding as number[] | undefined;
  if (!embedding) throw new PgregenError(`the provider returned no embedding for the query (model ${target.model})`);

  // The version is named, so a cutover between the two statements cannot pair the query with
  // vectors of another model.
  return searchVector(context, embedding, target.version, options);
}
