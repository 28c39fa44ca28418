// Evaluation runs and shadow comparisons. The client's part is small: embed each query with the
// model of the version it will be compared with (regen.search_input, as search() does), search
// with regen.search_rows inside one tenant (each row once, at its best chunk), and hand the ranked row
// ids to SQL, which scores, compares and stores the run (sql/0010_evaluation.sql).
import type OpenAI from 'openai';
import type pg from 'pg';
import pgvector from 'pgvector';
import { PgregenError } from '../errors.ts';
import { embedTexts } from '../search.ts';
import type { QuerySet } from './query-set.ts';

export interface EvalContext {
  /** Connections of a role that may search and record runs (the schema's owner, or one given regen.grant_admin). */
  pool: pg.Pool;
  /** An OpenAI (or compatible) client for the versions' provider. */
  openai: OpenAI;
}

export interface EvaluateOptions {
  version: string;
  querySet: QuerySet;
  /** The tenant whose rows are searched: judgements name rows of this tenant. */
  tenant: string;
  /** Sources to search (default: every source that uses the version). */
  sources?: string[];
  /** Rows per query that count, 1 to 1,000 (default 10). */
  k?: number;
}

export interface ShadowOptions {
  versionA: string;
  versionB: string;
  queries: Array<{ id: string; text: string }>;
  tenant: string;
  /** Sources to search (default: every source that uses both versions). */
  sources?: string[];
  k?: number;
  /** Name of the query set, stored with the run. */
  querySet?: string;
}

export interface EvalRun {
  id: number;
  at: Date;
  version: string;
  sources: string[];
  tenant: string;
  querySet: string;
  k: number;
  queries: number;
  recallAtK: number;
  mrr: number;
  ndcgAtK: number;
  actor: string;
}

export interface ShadowRun {
  id: number;
  at: Date;
  versionA: string;
  versionB: string;
  sources: string[];
  tenant: string;
  querySet: string | null;
  k: number;
  queries: number;
  overlapAtK: number;
  rankAgreement: number;
  actor: string;
}

/** Queries sent to the provider per request. */
const EMBED_BATCH = 256;
/** regen.search_rows returns at most this many rows. */
const MAX_K = 1000;

export async function evaluate(context: EvalContext, options: EvaluateOptions): Promise<EvalRun> {
  const k = checkArguments(options.tenant, options.k, options.querySet.queries.length);
  const sources = await runSources(context.pool, [options.version], options.sources);
  const queries = options.querySet.queries;
  // RG061 before any query is embedded when no result could match a judgement (record_eval_run checks it again)
  await context.pool.query('select regen._check_eval_scope($1::text, $2::text, $3::text[], $4::jsonb)',
    [options.version, options.tenant, sources, JSON.stringify(queries.map((q) => ({ id: q.id, judgements: q.judgements })))]);
  const vectors = await embedQueries(context, queries.map((q) => q.text), sources, options.version);
  const ranked = await rankAll(context.pool, options.tenant, vectors, k, sources, options.version);
  const results = queries.map((q, i) => ({ id: q.id, ranked: ranked[i], judgements: q.judgements }));
  const { rows: [run] } = await context.pool.query(
    `select * from regen.record_eval_run($1::text, $2::text, $3::integer, $4::jsonb, $5::text, $6::text[])`,
    [options.version, options.querySet.name, k, JSON.stringify(results), options.tenant, sources]);
  return {
    id: Number(run.id), at: run.at, version: run.version, sources: run.sources, tenant: run.tenant, querySet: run.query_set,
    k: run.k, queries: run.queries, recallAtK: run.recall_at_k, mrr: run.mrr, ndcgAtK: run.ndcg_at_k, actor: run.actor,
  };
}

export async function shadowCompare(context: EvalContext, options: ShadowOptions): Promise<ShadowRun> {
  const k = checkArguments(options.tenant, options.k, options.queries.length);
  const sources = await runSources(context.pool, [options.versionA, options.versionB], options.sources);
  const texts = options.queries.map((q) => q.text);
  const [vectorsA, vectorsB] = await Promise.all([
    embedQueries(context, texts, sources, options.versionA),
    embedQueries(context, texts, sources, options.versionB),
  ]);
  const rankedA = await rankAll(context.pool, options.tenant, vectorsA, k, sources, options.versionA);
  const rankedB = await rankAll(context.pool, options.tenant, vectorsB, k, sources, options.versionB);
  const results = options.queries.map((q, i) => ({ id: q.id, a: rankedA[i], b: rankedB[i] }));
  const { rows: [run] } = await context.pool.query(
    `select * from regen.record_shadow_run($1::text, $2::text, $3::integer, $4::jsonb, $5::text, $6::text[], $7::text)`,
    [options.versionA, options.versionB, k, JSON.stringify(results), options.tenant, sources, options.querySet ?? null]);
  return {
    id: Number(run.id), at: run.at, versionA: run.version_a, versionB: run.version_b, sources: run.sources, tenant: run.tenant,
    querySet: run.query_set, k: run.k, queries: run.queries, overlapAtK: run.overlap_at_k, rankAgreement: run.rank_agreement,
    actor: run.actor,
  };
}

function checkArguments(tenant: string, k: number | undefined, queries: number): number {
  if (typeof tenant !== 'string' || tenant === '') {
    throw new PgregenError('no tenant given', 'runs search inside one tenant: pass the tenant whose rows the queries are judged on');
  }
  const depth = k ?? 10;
  if (!Number.isInteger(depth) || depth < 1 || depth > MAX_K) {
    throw new PgregenError(`k must be an integer between 1 and ${MAX_K}, not ${String(k)}`);
  }
  if (queries === 0) throw new PgregenError('no queries to run', 'pass at least one query');
  return depth;
}

/** The sources the run reads (SQL decides: those given, or all, that use every version). */
async function runSources(pool: pg.Pool, versions: string[], sources: string[] | undefined): Promise<string[]> {
  const { rows } = await pool.query<{ sources: string[] }>(
    'select regen.run_sources($1::text[], $2::text[]) as sources', [versions, sources ?? null]);
  return rows[0]!.sources;
}

/** One vector per text, embedded with the version's model after the version's preprocessing. */
async function embedQueries(context: EvalContext, texts: string[], sources: string[], version: string): Promise<number[][]> {
  const { rows } = await context.pool.query<{ model: string; dimensions: number; send_dimensions: boolean; input: string }>(
    `select s.model, s.dimensions, s.send_dimensions, s.input
       from unnest($1::text[]) with ordinality q(text, ord)
       cross join lateral regen.search_input(q.text, $2::text[], $3::text) s
      order by q.ord`,
    [texts, sources, version]);
  const target = rows[0];
  if (!target || rows.length !== texts.length) throw new PgregenError(`no source in scope for version ${version}`);
  return embedTexts(context.openai, { model: target.model, dimensions: target.dimensions, sendDimensions: target.send_dimensions },
    rows.map((r) => r.input), EMBED_BATCH);
}

/**
 * Each query's rows, nearest first (regen.search_rows: each row once, at its best chunk). All
 * searches run in one transaction with the tenant set.
 */
async function rankAll(pool: pg.Pool, tenant: string, vectors: number[][], k: number, sources: string[], version: string): Promise<string[][]> {
  const qualify = sources.length > 1;   // row ids of two sources may collide: "source:row_id"
  const client = await pool.connect();
  try {
    await client.query('begin');
    await client.query('select regen.set_tenant($1)', [tenant]);
    const ranked: string[][] = [];
    for (const vector of vectors) {
      const { rows } = await client.query<{ source: string; row_id: string }>(
        'select source, row_id from regen.search_rows($1, $2::integer, $3::text[], $4::text)',
        [pgvector.toSql(vector), k, sources, version]);
      ranked.push(rows.map((r) => (qualify ? `${r.source}:${r.row_id}` : r.row_id)));
    }
    await client.query('commit');
    return ranked;
  } catch (err) {
    await client.query('rollback').catch(() => {});
    throw err;
  } finally {
    client.release();
  }
}
