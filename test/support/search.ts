// Helpers for test/search-*.test.ts: application roles, one search per transaction as such a role,
// brute-force answers computed by the superuser, and the comparison of the two.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import pgvector from 'pgvector';
import { expect } from 'vitest';
import type { Db } from '../../src/db.ts';
import { prepareInputs, writeEmbeddings } from '../../src/store.ts';
import type { TestDatabase } from './db.ts';

export type Hit = { source: string; row_id: string; chunk_no: number; distance: number };

/** A login role of this test run (roles are cluster-wide: a random suffix keeps parallel runs apart). */
export type TestRole = {
  name: string;
  /** Connections as this role; max 1 by default, so every checkout is the same backend. */
  pool: pg.Pool;
  /** Closes the pool, then drops what the role owns or was granted in this database, and the role. */
  drop(): Promise<void>;
};

/**
 * Creates a login role and connects as it. `grant` is what pgregen gives it: 'app' (grant_app),
 * 'admin' (grant_admin), or 'none'. `attributes` go to CREATE ROLE (e.g. 'superuser', 'bypassrls').
 */
export async function createRole(db: TestDatabase, label: string,
  options: { grant?: 'app' | 'admin' | 'none'; attributes?: string; max?: number } = {}): Promise<TestRole> {
  const name = `pgregen_${label}_${randomBytes(4).toString('hex')}`;
  await db.query(`create role ${name} login ${options.attributes ?? ''}`);
  if (options.grant === 'app') await db.query('select regen.grant_app($1)', [name]);
  if (options.grant === 'admin') await db.query('select regen.grant_admin($1)', [name]);
  const url = new URL(db.url);
  url.username = name;
  const pool = new pg.Pool({ connectionString: url.toString(), max: options.max ?? 1 });
  return {
    name,
    pool,
    async drop() {
      await pool.end();
      // DROP OWNED also takes the role out of the row-level security policies (grant_admin's).
      await db.query(`drop owned by ${name}`).catch(() => {});
      await db.query(`drop role if exists ${name}`);
    },
  };
}

type Rows = Array<Record<string, unknown>>;

/** Connects as the role, runs `work` in one transaction and rolls it back. */
export async function inTransaction<T>(role: TestRole, work: (q: (sql: string, values?: unknown[]) => Promise<Rows>) => Promise<T>): Promise<T> {
  const client = await role.pool.connect();
  try {
    await client.query('begin');
    return await work(async (sql, values) => (await client.query(sql, values)).rows);
  } finally {
    await client.query('rollback').catch(() => {});
    client.release();
  }
}

/** The HNSW index create_version() made for a version. */
export async function hnswIndexOf(db: Db, tag: string): Promise<string> {
  const { rows: [row] } = await db.query<{ name: string }>(
    `select '_embeddings_hnsw_v' || id as name from regen._versions where tag = $1`, [tag]);
  if (!row) throw new Error(`unknown version ${tag}`);
  return `regen.${row.name}`;
}

/** A vector in pgvector's text form, '[1,2,3]'. */
export function vectorText(v: ArrayLike<number>): string {
  return pgvector.toSql(Array.from(v)) as string;
}

export type SearchArgs = {
  k?: number;
  sources?: string[] | null;
  version?: string | null;
  maxDistance?: number | null;
  /** regen.search_exact_max_rows for this transaction (SET LOCAL); unset: the default. */
  exactMaxRows?: number;
  /** Other settings for this transaction (SET LOCAL), e.g. planner costs. */
  settings?: Record<string, string>;
  /** An index whose scans in this transaction are counted (pg_stat_get_xact_numscans). */
  countScansOf?: string;
};

/**
 * One search as the application would run it: a transaction, set_tenant, search_scoped, commit.
 * Returns the hits and, when asked, how often the given index was scanned by the search.
 */
export async function searchAs(pool: pg.Pool, tenant: string, query: ArrayLike<number> | string,
  args: SearchArgs = {}): Promise<{ hits: Hit[]; scans: number }> {
  const client = await pool.connect();
  try {
    await client.query('begin');
    if (args.exactMaxRows !== undefined) {
      await client.query(`select set_config('regen.search_exact_max_rows', $1, true)`, [String(args.exactMaxRows)]);
    }
    for (const [name, value] of Object.entries(args.settings ?? {})) {
      await client.query('select set_config($1, $2, true)', [name, value]);
    }
    await client.query('select regen.set_tenant($1)', [tenant]);
    const scans = async () => args.countScansOf === undefined ? 0 : Number((await client.query<{ n: string }>(
      'select pg_stat_get_xact_numscans($1::regclass) as n', [args.countScansOf])).rows[0]!.n);
    const before = await scans();
    const { rows } = await client.query<Hit>(
      `select * from regen.search_scoped($1::vector, $2::integer, $3::text[], $4::text, $5::float8)`,
      [typeof query === 'string' ? query : vectorText(query), args.k ?? 10, args.sources ?? null, args.version ?? null,
       args.maxDistance ?? null]);
    const after = await scans();
    await client.query('commit');
    return { hits: rows, scans: after - before };
  } catch (error) {
    await client.query('rollback').catch(() => {});
    throw error;
  } finally {
    client.release();
  }
}

export type Distance = 'cosine' | 'l2' | 'inner_product';
const OPERATORS: Record<Distance, string> = { cosine: '<=>', l2: '<->', inner_product: '<#>' };

/**
 * The exact nearest rows, as the superuser (no row-level security) reads them: every vector of the
 * version, tenant and sources, ranked by the version's distance. The distance is taken on the
 * untyped column, which no HNSW index (built on a cast) can serve, so this is a full ranking.
 */
export async function bruteForce(db: Db, scope: { version: string; tenant: string; sources?: string[] | null;
  distance: Distance; maxDistance?: number | null }, query: ArrayLike<number> | string, limit: number): Promise<Hit[]> {
  const { rows } = await db.query<Hit>(
    `select s.name as source, e.row_id, e.chunk_no, (e.embedding ${OPERATORS[scope.distance]} $1::vector)::float8 as distance
       from regen._embeddings e
       join regen._sources s on s.id = e.source_id
       join regen._versions v on v.id = e.version_id
      where v.tag = $2 and e.tenant = $3 and ($4::text[] is null or s.name = any($4))
        and ($6::float8 is null or (e.embedding ${OPERATORS[scope.distance]} $1::vector) <= $6)
      order by distance, s.name, e.row_id, e.chunk_no
      limit $5`,
    [typeof query === 'string' ? query : vectorText(query), scope.version, scope.tenant, scope.sources ?? null, limit,
     scope.maxDistance ?? null]);
  return rows;
}

/** The true distance, in one version, of each hit's stored vector to the query (superuser). */
export async function trueDistances(db: Db, version: string, distance: Distance, query: ArrayLike<number> | string,
  hits: Hit[]): Promise<Map<string, { distance: number; tenant: string }>> {
  const { rows } = await db.query<{ key: string; distance: number; tenant: string }>(
    `select s.name || '/' || e.row_id || '/' || e.chunk_no as key, e.tenant,
            (e.embedding ${OPERATORS[distance]} $1::vector)::float8 as distance
       from regen._embeddings e
       join regen._sources s on s.id = e.source_id
       join regen._versions v on v.id = e.version_id
       join unnest($3::text[], $4::text[], $5::int[]) h(source, row_id, chunk_no)
         on h.source = s.name and h.row_id = e.row_id and h.chunk_no = e.chunk_no
      where v.tag = $2`,
    [typeof query === 'string' ? query : vectorText(query), version, hits.map((h) => h.source), hits.map((h) => h.row_id),
     hits.map((h) => h.chunk_no)]);
  return new Map(rows.map((r) => [r.key, { distance: r.distance, tenant: r.tenant }]));
}

export const keyOf = (h: Hit) => `${h.source}/${h.row_id}/${h.chunk_no}`;

/**
 * The hits are the exact top k: as many as min(k, rows in scope), the same distances in the same
 * order as the brute-force ranking, and each hit one of the ranked rows at its own distance (rows
 * tied at a distance may come in any order, and either of two rows tied at the k-th place may come).
 * `truth` must hold the brute-force ranking of at least k + a few rows (or all rows of the scope).
 */
export function expectExactTopK(hits: Hit[], truth: Hit[], k: number, what: string): void {
  const n = Math.min(k, truth.length);
  expect(hits.length, `${what}: number of hits`).toBe(n);
  expect(hits.map((h) => h.distance), `${what}: distances`).toEqual(truth.slice(0, n).map((t) => t.distance));
  const truthDistance = new Map(truth.map((t) => [keyOf(t), t.distance]));
  for (const hit of hits) {
    expect(truthDistance.get(keyOf(hit)), `${what}: ${keyOf(hit)} is not among the nearest rows at its distance`).toBe(hit.distance);
  }
  expect(new Set(hits.map(keyOf)).size, `${what}: a row came twice`).toBe(hits.length);
}

/** Hits are sorted nearest first. */
export function expectSorted(hits: Hit[], what: string): void {
  const distances = hits.map((h) => h.distance);
  expect(distances, `${what}: not nearest first`).toEqual([...distances].sort((a, b) => a - b));
}

/** Standard normal numbers from a uniform generator (Box-Muller). */
export function gaussian(random: () => number): () => number {
  return () => Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
}

/**
 * Embeds rows of a source for a version the way the worker does (prepare_inputs, then
 * write_embeddings), with vectors from `vectorFor`; throws if a vector is refused.
 */
export async function embedWith(db: Db, source: string, version: string, rowIds: string[],
  vectorFor: (input: string) => number[]): Promise<number> {
  const inputs = await prepareInputs(db, source, version, rowIds);
  const byText = new Map<string, number[]>();
  for (const input of inputs) {
    if (input.input !== null) byText.set(input.textHash.toString('hex'), vectorFor(input.input));
  }
  if (inputs.length === 0) return 0;
  const results = await writeEmbeddings(db, source, version, inputs.map((input) => ({
    rowId: input.rowId, chunkNo: input.chunkNo, contentHash: input.contentHash,
    embedding: byText.get(input.textHash.toString('hex'))!,
  })));
  const refused = results.filter((r) => !r.stored);
  if (refused.length > 0) throw new Error(`${refused.length} vectors refused, first: ${JSON.stringify(refused[0])}`);
  return results.length;
}

/** Tenants of a known size in the large store (docs rows); every other tenant is filler. */
export const SIZED_TENANTS = { t1: 1, t10: 10, t100: 100, t10k: 10_000, t100k: 100_000 } as const;
export const LARGE = { version: 'large@16', dims: 16, docs: 200_000, clusters: 48, mixedDocs: 3_000, mixedNotes: 1_500, notes: 2_000 };

/**
 * The large store: 200,000 docs rows (the sized tenants, a 'mixed' tenant of 3,000 and 300 filler
 * tenants, shuffled) and 2,000 notes rows (1,500 of them 'mixed'), both sources of one 16-dimension
 * cosine version, with clustered vectors: 48 random centres in [-1, 1]^16, each vector a centre plus
 * noise of standard deviation 0.4 per dimension (a sum of three uniforms), so that neighbours crowd
 * together, clusters overlap a little, and an approximate index has to work for its recall. (With
 * far tighter clusters, noise 0.125, HNSW loses whole clusters: islands the greedy descent never
 * reaches, recall@10 ~0.9 even with pgvector's default build parameters.)
 *
 * Loaded the fast way, as the owner, and said so: the rows are registered as sources (their items
 * captured as usual), but the vectors are written by one INSERT straight into regen._embeddings
 * with the version's HNSW index dropped, and the index is built afterwards from its own definition
 * (pg_indexes), with pgvector's default parameters as create_version() made it. Through
 * prepare_inputs/write_embeddings with the index in place, the 202,000 vectors would take several
 * minutes of HNSW inserts; search reads only regen._embeddings, so the store is the same.
 * The build is most of this file's time (~80 s on a 2-core machine). Cheaper build parameters were
 * measured and rejected: m = 8, ef_construction = 32 builds in ~20 s but gives recall@10 0.982 on
 * average and 0.945 for the worst 20 of 300 queries; m = 16, ef_construction = 32 (~40 s) 0.991 and
 * 0.955; the defaults 0.998 and 0.985.
 */
export async function loadLargeStore(db: TestDatabase): Promise<{ hnswIndex: string; centers: number[][] }> {
  const client = await db.pool.connect();
  try {
    await client.query('select setseed(0.42)');   // one session: random() replays the same data
    await client.query(`create table centers as
      select c, array_agg(random() * 2 - 1 order by i) as v
      from generate_series(0, ${LARGE.clusters - 1}) c cross join generate_series(1, ${LARGE.dims}) i group by c`);
    const sized = Object.entries(SIZED_TENANTS);
    // rank r of a shuffled id: the first ranks go to the sized tenants, then 'mixed', then filler
    let upTo = 0;
    const cases = sized.map(([tenant, n]) => `when r <= ${(upTo += n)} then '${tenant}'`).join(' ');
    await client.query(`create table docs (id integer primary key, tenant text not null, body text not null)`);
    await client.query(`insert into docs
      select g, case ${cases} when r <= ${upTo + LARGE.mixedDocs} then 'mixed' else 'filler_' || (r % 300) end, 'doc ' || g
      from (select g, row_number() over (order by random()) as r from generate_series(1, ${LARGE.docs}) g) shuffled`);
    await client.query(`create table notes (id integer primary key, tenant text not null, body text not null)`);
    await client.query(`insert into notes
      select g, case when g <= ${LARGE.mixedNotes} then 'mixed' else 'filler_' || (g % 300) end, 'note ' || g
      from generate_series(1, ${LARGE.notes}) g`);
    await client.query(`select regen.create_version($1, 'synthetic', $2, settings => '{"chunk_overlap": 0}')`, [LARGE.version, LARGE.dims]);
    for (const source of ['docs', 'notes']) {
      await client.query(`select regen.register_source($1::text, $1::regclass, 'id', 'body', tenant_column => 'tenant', version => $2)`, [source, LARGE.version]);
    }

    const { rows: [index] } = await client.query<{ indexname: string; indexdef: string }>(
      `select i.indexname, i.indexdef from pg_indexes i join regen._versions v on i.indexname = '_embeddings_hnsw_v' || v.id
        where i.schemaname = 'regen' and i.tablename = '_embeddings' and v.tag = $1`, [LARGE.version]);
    if (!index || !/ WHERE /.test(index.indexdef)) throw new Error(`no HNSW index for ${LARGE.version}: ${JSON.stringify(index)}`);
    await client.query(`drop index regen.${index.indexname}`);
    // content_hash and text_hash as prepare_inputs computes them for a one-chunk text
    await client.query(`insert into regen._embeddings (version_id, source_id, row_id, chunk_no, tenant, content_hash, text_hash, embedding)
      select v.id, s.id, r.id::text, 1, r.tenant, sha256(convert_to(r.body, 'UTF8')), sha256(convert_to(r.body, 'UTF8')),
             (select array_agg(ce.v[i] + 0.8 * (random() + random() + random() - 1.5) order by i)
                from generate_series(1, ${LARGE.dims}) i)::vector
      from (select 'docs' as source, id, tenant, body, floor(random() * ${LARGE.clusters})::int as c from docs
            union all
            select 'notes', id, tenant, body, floor(random() * ${LARGE.clusters})::int from notes) r
      join centers ce on ce.c = r.c
      join regen._sources s on s.name = r.source
      join regen._versions v on v.tag = $1`, [LARGE.version]);
    await client.query(`set maintenance_work_mem = '256MB'`);
    await client.query(`set max_parallel_maintenance_workers = 1`);
    await client.query(index.indexdef);
    await client.query('analyze regen._embeddings');
    const { rows } = await client.query<{ v: number[] }>('select v from centers order by c');
    return { hnswIndex: `regen.${index.indexname}`, centers: rows.map((r) => r.v) };
  } finally {
    client.release();
  }
}
