// G. Search inside the tenant: regen.search_scoped() against the naive query
// `where tenant = $1 order by embedding <=> $2 limit 10` on the version's one global HNSW index,
// side by side in one run, per tenant-size bucket (Zipf-distributed tenant sizes): latency, rows
// returned and recall@10 against an exact top-10, and which path search_scoped took.
import pg from 'pg';
import { mulberry32 } from '../src/prng.ts';
import { prepareInputs, writeEmbeddings, type VectorItem } from '../src/store.ts';
import {
  buckets, buildTable, figures, judge, K, latencyTable, LOAD_BATCH, makeCorpus, mean, METHODS, pathTable, pct, recallOf, SEED,
  setupLines, sizeTable, TAG, tenantName, vectorText,
  type Bucket, type BucketResult, type Build, type Corpus, type Method, type Paths, type Query, type Sample, type Settings, type Size,
} from './search-support.ts';
import {
  check, fmtInt, fmtMs, openServer, percentile, renderTable, renderTargets, serverInfo, timed,
  type BenchOptions, type BenchReport, type Table,
} from './support.ts';

const SIZES: Record<'full' | 'quick', Size> = {
  full: { vectors: 200_000, tenants: 2_000, dimensions: 768, zipf: 1.2, queries: 200, warmup: 10, sweep: 100, exactMax: null, tenantIndexMin: 1_000 },
  // Smoke size: the exact-path threshold is scaled down with the data, so both paths run.
  quick: { vectors: 20_000, tenants: 200, dimensions: 128, zipf: 1.2, queries: 30, warmup: 3, sweep: 20, exactMax: 1_000, tenantIndexMin: 300 },
};
const SWEEP_EF = [40, 100, 200, 400];

interface Context extends Paths {
  owner: pg.Client;
  ours: pg.Client;
  naive: pg.Client;
  versionId: number;
  /** OIDs of the version's HNSW index and of the scope b-tree, for pg_stat_get_xact_numscans. */
  probe: string;
  corpus: Corpus;
}

export async function run(options: BenchOptions): Promise<BenchReport> {
  const size = options.quick ? SIZES.quick : SIZES.full;
  const log = (line: string) => process.stderr.write(`search: ${line}\n`);
  const server = await openServer(log);
  try {
    const scratch = await server.createDatabase();
    try {
      return await measure(scratch.url, size, options.quick, server.origin, log);
    } finally {
      await scratch.drop();
    }
  } finally {
    await server.stop();
  }
}

async function measure(url: string, size: Size, quick: boolean, origin: string, log: (line: string) => void): Promise<BenchReport> {
  const owner = new pg.Client({ connectionString: url, application_name: 'pgregen bench search (owner)' });
  await owner.connect();
  const role = `pgregen_bench_app_${Math.random().toString(16).slice(2, 10)}`;
  const clients: pg.Client[] = [];
  try {
    const info = await serverInfo(owner);
    const started = performance.now();
    const corpus = makeCorpus({ vectors: size.vectors, tenants: size.tenants, dimensions: size.dimensions, zipf: size.zipf });
    const corpusMs = performance.now() - started;
    log(`${fmtInt(size.vectors)} vectors over ${fmtInt(size.tenants)} tenants, largest ${fmtInt(corpus.sizes[0]!)}, smallest ${fmtInt(corpus.sizes.at(-1)!)}`);
    const { build, versionId, indexName } = await buildStore(owner, corpus, log);
    build.corpusMs = corpusMs;
    // Tenants of at least tenantIndexMin vectors get an HNSW index of their own, as an operator
    // would give them with `pgregen tenant-indexes --min-rows N` (regen.tenant_index_plan).
    const { rows: plan } = await owner.query<{ statement: string }>(
      `select statement from regen.tenant_index_plan($1::bigint) where action = 'create'`, [size.tenantIndexMin]);
    build.tenantIndexes = plan.length;
    build.tenantIndexMin = size.tenantIndexMin;
    await owner.query(`set maintenance_work_mem = '1GB'`);
    build.tenantIndexMs = await timed(async () => {
      for (const { statement } of plan) await owner.query(statement);
    });
    await owner.query('reset maintenance_work_mem');
    log(`${plan.length} tenant indexes (tenants of >= ${fmtInt(size.tenantIndexMin)} vectors) built in ${(build.tenantIndexMs / 1000).toFixed(0)} s`);

    // The application role: it searches under row-level security, one tenant per transaction.
    const password = Math.random().toString(36).slice(2);
    await owner.query(`create role ${role} login password '${password}'`);
    await owner.query('select regen.grant_app($1)', [role]);
    const appUrl = new URL(url);
    appUrl.username = role;
    appUrl.password = password;
    const connect = async (name: string) => {
      const client = new pg.Client({ connectionString: appUrl.toString(), application_name: `pgregen bench search (${name})` });
      await client.connect();
      clients.push(client);
      return client;
    };
    const ours = await connect('search_scoped');
    const naive = await connect('naive');
    if (size.exactMax !== null) await ours.query(`set regen.search_exact_max_rows = ${size.exactMax}`);
    // With the scope b-tree that sql/0008_search.sql adds, the planner reads a small tenant through it
    // and sorts; the baseline is the HNSW index, so sorts are off on the naive session (see explainNaive).
    await naive.query('set enable_sort = off');
    // The baseline is one global index: a generic plan cannot prove a tenant index's predicate.
    await naive.query('set plan_cache_mode = force_generic_plan');
    const settings = await sessionSettings(owner, ours, naive);
    const { rows: [oids] } = await owner.query<{ hnsw: string; scope: string }>(
      `select $1::regclass::oid::text as hnsw, 'regen._embeddings_scope'::regclass::oid::text as scope`, [`regen.${indexName}`]);
    const ctx: Context = {
      owner, ours, naive, versionId, indexName, corpus, exactMax: settings.exactMax,
      probe: `select pg_stat_get_xact_numscans(${oids!.hnsw}) as hnsw, pg_stat_get_xact_numscans(${oids!.scope}) as scope,
                     (select coalesce(sum(pg_stat_get_xact_numscans(c.oid)), 0) from pg_class c
                       where c.relnamespace = 'regen'::regnamespace and c.relname ^@ '${indexName}_t') as tenant`,
    };

    const results: BucketResult[] = [];
    const queriesOf = new Map<Bucket, Query[]>();
    for (const [i, bucket] of buckets(corpus.sizes).entries()) {
      const queries = await makeQueries(ctx, bucket, size.warmup + size.queries, mulberry32(SEED + 1 + i));
      queriesOf.set(bucket, queries);
      results.push(await measureBucket(ctx, bucket, queries, size.warmup, log));
    }
    const sweepTable = await sweep(ctx, sweepRows(ctx, results, queriesOf, size, settings), log);

    const tables = [buildTable(build, corpus), sizeTable(results, ctx), latencyTable(results), pathTable(results, ctx), sweepTable];
    const targets = judge(results, ctx);
    tables.push(renderTargets(targets));
    for (const table of tables) console.log(`\n${renderTable(table)}`);
    return {
      title: 'G. Search inside the tenant: regen.search_scoped vs the naive query on one HNSW index',
      setup: setupLines(size, quick, origin, corpus, build, settings),
      tables, targets, figures: figures(results), server: info,
    };
  } finally {
    for (const client of clients) await client.end().catch(() => {});
    await owner.query(`drop owned by ${role}`).catch(() => {});
    await owner.query(`drop role if exists ${role}`).catch(() => {});
    await owner.end();
  }
}

/**
 * The source table, its version and registration, and every vector stored and current: loaded with
 * the version's HNSW index dropped (prepare_inputs + write_embeddings, as the worker would, in big
 * batches), then the index recreated with its own definition, and the table vacuumed and analyzed.
 */
async function buildStore(owner: pg.Client, corpus: Corpus, log: (line: string) => void) {
  const { vectors, dimensions } = corpus.shape;
  const build = {} as Build;
  build.docsMs = await timed(async () => {
    await owner.query('create table docs (id bigint primary key, tenant text not null, body text not null)');
    for (let first = 1; first <= vectors; first += 50_000) {
      const ids = Array.from({ length: Math.min(50_000, vectors - first + 1) }, (_, i) => first + i);
      await owner.query(`insert into docs select id, tenant, 'document ' || id || ' of tenant ' || tenant
                           from unnest($1::bigint[], $2::text[]) u(id, tenant)`,
        [ids, ids.map((id) => tenantName(corpus.tenantOf[id]!))]);
    }
    await owner.query('analyze docs');
  });
  await owner.query(`select regen.create_version($1, 'local-hash', $2, settings => '{"distance": "cosine"}')`, [TAG, dimensions]);
  build.registerMs = await timed(() => owner.query(
    `select regen.register_source(name => 'docs', relation => 'docs', id_column => 'id', content_expression => 'body',
                                  tenant_column => 'tenant', version => $1)`, [TAG]));
  const { rows: [ids] } = await owner.query<{ version_id: number; source_id: number }>(
    `select (select id from regen._versions where tag = $1) as version_id, (select id from regen._sources where name = 'docs') as source_id`, [TAG]);
  const versionId = ids!.version_id;
  const indexName = `_embeddings_hnsw_v${versionId}`;
  const { rows: [index] } = await owner.query<{ indexdef: string }>(
    `select indexdef from pg_indexes where schemaname = 'regen' and indexname = $1`, [indexName]);
  check(index !== undefined, `create_version made no index ${indexName}`);
  build.indexDef = index.indexdef;

  // Without the HNSW index, writes cost the heap and b-trees only; the index is built once at the end.
  await owner.query(`drop index regen.${pg.escapeIdentifier(indexName)}`);
  await owner.query('analyze regen._items');
  build.prepareMs = 0;
  build.writeMs = 0;
  build.vectorMs = 0;
  for (let first = 1; first <= vectors; first += LOAD_BATCH) {
    const rowIds = Array.from({ length: Math.min(LOAD_BATCH, vectors - first + 1) }, (_, i) => String(first + i));
    let inputs: Awaited<ReturnType<typeof prepareInputs>> = [];
    build.prepareMs += await timed(async () => (inputs = await prepareInputs(owner, 'docs', TAG, rowIds)));
    check(inputs.length === rowIds.length && inputs.every((i) => i.chunkNo === 1 && i.input !== null),
      `prepare_inputs returned ${inputs.length} inputs for ${rowIds.length} one-chunk rows of distinct text`);
    let items: VectorItem[] = [];
    build.vectorMs += await timed(async () => {
      items = inputs.map((i) => ({ rowId: i.rowId, chunkNo: 1, contentHash: i.contentHash, embedding: corpus.vector(Number(i.rowId)) }));
    });
    build.writeMs += await timed(async () => {
      const refused = (await writeEmbeddings(owner, 'docs', TAG, items)).find((r) => !r.stored);
      check(!refused, `write_embeddings refused row ${refused?.rowId}: ${refused?.reason}`);
    });
    const done = first - 1 + rowIds.length;
    if (done % 50_000 === 0 || done === vectors) log(`stored ${fmtInt(done)} of ${fmtInt(vectors)} vectors`);
  }
  const { rows: [stored] } = await owner.query<{ vectors: number; current: number }>(
    `select (select count(*) from regen._embeddings where version_id = $1)::int as vectors,
            (select count(*) from regen._items where version_id = $1 and embedded_hash = content_hash)::int as current`, [versionId]);
  check(stored!.vectors === vectors && stored!.current === vectors,
    `${stored!.vectors} vectors stored and ${stored!.current} items current, expected ${vectors} of each`);

  log('building the HNSW index');
  await owner.query(`set maintenance_work_mem = '2GB'`);
  await owner.query('set max_parallel_maintenance_workers = 1');
  build.indexMs = await timed(() => owner.query(build.indexDef));
  await owner.query('reset maintenance_work_mem');
  await owner.query('reset max_parallel_maintenance_workers');
  build.vacuumMs = await timed(() => owner.query('vacuum analyze regen._embeddings'));
  const { rows: [bytes] } = await owner.query<{ index: string; heap: string }>(
    `select pg_relation_size($1::regclass) as index, pg_table_size('regen._embeddings') as heap`, [`regen.${indexName}`]);
  build.indexBytes = Number(bytes!.index);
  build.tableBytes = Number(bytes!.heap);
  log(`index built in ${(build.indexMs / 1000).toFixed(0)} s`);
  return { build, versionId, indexName };
}


/** What the two paths and the naive query will run with, read back from the server and the function. */
async function sessionSettings(owner: pg.Client, ours: pg.Client, naive: pg.Client): Promise<Settings> {
  // the defaults are in the function behind search_scoped and search_rows
  const { rows: [fn] } = await owner.query<{ src: string }>(
    `select prosrc as src from pg_proc where pronamespace = 'regen'::regnamespace and proname = '_search'`);
  const fallback = (name: string) => Number(new RegExp(`_search_setting\\('${name.replace('.', '\\.')}',\\s*(\\d+)`).exec(fn!.src)?.[1]);
  const { rows: [set] } = await ours.query<{ exact: string | null }>(`select nullif(current_setting('regen.search_exact_max_rows', true), '') as exact`);
  // pgvector defines its settings when its library loads, on the first use of a vector in the session.
  await naive.query(`select '[1]'::vector`);
  const { rows: [n] } = await naive.query<{ ef: string; iterative: string; buffers: string }>(
    `select current_setting('hnsw.ef_search') as ef, current_setting('hnsw.iterative_scan') as iterative, current_setting('shared_buffers') as buffers`);
  const exactDefault = fallback('regen.search_exact_max_rows');
  check(Number.isFinite(exactDefault), 'could not read the default of regen.search_exact_max_rows from regen._search');
  return {
    exactMax: set!.exact ? Number(set!.exact) : exactDefault,
    exactMaxSource: set!.exact ? `set for this run (default ${fmtInt(exactDefault)})` : 'the default',
    efDefault: fallback('regen.search_ef_search'),
    tenantEfDefault: fallback('regen.search_tenant_ef_search'),
    naiveEf: n!.ef, naiveIterative: n!.iterative, sharedBuffers: n!.buffers,
  };
}

/** Queries near random tenants of the bucket, each with its exact top-k (brute force as the owner). */
async function makeQueries(ctx: Context, bucket: Bucket, count: number, random: () => number): Promise<Query[]> {
  const queries: Query[] = [];
  // The distance on the untyped column matches no index: every row of the tenant is read and ranked.
  const exact = `select row_id from regen._embeddings where version_id = ${ctx.versionId} and tenant = $1
                  order by embedding <=> $2::vector, row_id limit ${K}`;
  const { rows: plan } = await ctx.owner.query(`explain ${exact}`, [tenantName(bucket.tenants[0]!), vectorText(ctx.corpus.vector(1))]);
  check(!plan.some((r) => /hnsw/.test(r['QUERY PLAN'])), `the exact top-${K} query uses an HNSW index`);
  for (let i = 0; i < count; i++) {
    const tenant = bucket.tenants[Math.floor(random() * bucket.tenants.length)]!;
    const text = vectorText(ctx.corpus.query(tenant, random).vector);
    let truth: string[] = [];
    const truthMs = await timed(async () => (truth = (await ctx.owner.query<{ row_id: string }>(exact, [tenantName(tenant), text])).rows.map((r) => r.row_id)));
    check(truth.length === Math.min(K, ctx.corpus.sizes[tenant]!), `exact top-${K} of ${tenantName(tenant)} has ${truth.length} rows`);
    queries.push({ tenant, text, truth, truthMs });
  }
  return queries;
}

function naiveSql(ctx: Context): string {
  const cast = `vector(${ctx.corpus.shape.dimensions})`;
  return `select row_id from regen._embeddings where version_id = ${ctx.versionId} and tenant = $1
           order by embedding::${cast} <=> $2::${cast} limit ${K}`;
}

const OURS_SQL = 'select * from regen.search_scoped($1::vector, $2::integer)';

/**
 * One search in its own transaction, as an application does it. Index scans are counted by probes
 * before and after the search statement (PostgreSQL 15 keeps unflushed counts of earlier
 * transactions in pg_stat_get_xact_numscans, so only the difference counts); the probes are not timed.
 */
async function searchOnce(ctx: Context, method: Method, query: Query): Promise<{ sample: Sample; returned: string[] }> {
  const client = method === 'ours' ? ctx.ours : ctx.naive;
  const tenant = tenantName(query.tenant);
  const timedQuery = async <R extends pg.QueryResultRow>(text: string, values?: unknown[]) => {
    const start = performance.now();
    const result = await client.query<R>(text, values);
    return { rows: result.rows, ms: performance.now() - start };
  };
  const probe = async () => (await client.query<{ hnsw: string; scope: string; tenant: string }>(ctx.probe)).rows[0]!;
  const begin = await timedQuery('begin');
  const set = await timedQuery('select regen.set_tenant($1)', [tenant]);
  const before = await probe();
  const search = method === 'ours'
    ? await timedQuery<{ row_id: string }>(OURS_SQL, [query.text, K])
    : await timedQuery<{ row_id: string }>(naiveSql(ctx), [tenant, query.text]);
  const after = await probe();
  const commit = await timedQuery('commit');
  const returned = search.rows.map((r) => r.row_id);
  return {
    returned,
    sample: {
      ms: search.ms, transactionMs: begin.ms + set.ms + search.ms + commit.ms, rows: returned.length, expected: query.truth.length,
      recall: recallOf(returned, query.truth),
      hnswScans: Number(after.hnsw) - Number(before.hnsw), scopeScans: Number(after.scope) - Number(before.scope),
      tenantScans: Number(after.tenant) - Number(before.tenant),
    },
  };
}

async function measureBucket(ctx: Context, bucket: Bucket, queries: Query[], warmup: number, log: (line: string) => void): Promise<BucketResult> {
  const result: BucketResult = {
    bucket, samples: { ours: [], naive: [] }, foreign: { ours: 0, naive: 0 }, naivePlan: await explainNaive(ctx, queries[0]!),
    truthMs: queries.slice(warmup).map((q) => q.truthMs),
  };
  for (const [i, query] of queries.entries()) {
    // Interleaved, and alternating which goes first, so a noisy moment hurts both alike.
    for (const method of i % 2 ? METHODS : [...METHODS].reverse()) {
      const { sample, returned } = await searchOnce(ctx, method, query);
      if (i < warmup) continue;
      result.samples[method].push(sample);
      result.foreign[method] += returned.filter((id) => ctx.corpus.tenantOf[Number(id)] !== query.tenant).length;
    }
  }
  const naiveHnsw = result.samples.naive.filter((s) => s.hnswScans === 1 && s.tenantScans === 0).length;
  check(naiveHnsw === result.samples.naive.length,
    `the naive query scanned the HNSW index on ${naiveHnsw} of ${result.samples.naive.length} queries of bucket ${bucket.label}`);
  const s = (m: Method) => result.samples[m];
  log(`bucket ${bucket.label}: p50 ${fmtMs(percentile(s('ours').map((x) => x.ms), 50))} ms vs naive ${fmtMs(percentile(s('naive').map((x) => x.ms), 50))} ms, ` +
    `recall ${mean(s('ours').map((x) => x.recall)).toFixed(3)} vs ${mean(s('naive').map((x) => x.recall)).toFixed(3)}`);
  return result;
}

/**
 * EXPLAIN ANALYZE of the naive query as the application role: the scan it uses and what its filter
 * threw away; and which scan the planner would choose with sorts allowed (plain EXPLAIN).
 */
async function explainNaive(ctx: Context, query: Query): Promise<{ plan: string; unforced: string }> {
  const literals = [tenantName(query.tenant), query.text].map((v) => ctx.naive.escapeLiteral(v)).join(', ');
  await ctx.naive.query('begin');
  try {
    await ctx.naive.query('select regen.set_tenant($1)', [tenantName(query.tenant)]);
    // EXPLAIN of a prepared statement, so that the plan is the generic one the searches run
    await ctx.naive.query(`prepare pgregen_naive(text, vector) as ${naiveSql(ctx)}`);
    const { rows: [r] } = await ctx.naive.query<{ 'QUERY PLAN': Array<{ Plan: PlanNode }> }>(
      `explain (analyze, format json) execute pgregen_naive(${literals})`);
    const scan = findScan(r!['QUERY PLAN'][0]!.Plan);
    check(scan !== undefined && scan['Index Name'] === ctx.indexName,
      `the naive query does not scan ${ctx.indexName} (it scans ${scan?.['Index Name'] ?? scan?.['Node Type'] ?? 'nothing'}): it is not the HNSW baseline`);
    await ctx.naive.query('set local enable_sort = on');
    const { rows: [u] } = await ctx.naive.query<{ 'QUERY PLAN': Array<{ Plan: PlanNode }> }>(`explain (format json) execute pgregen_naive(${literals})`);
    const chosen = findScan(u!['QUERY PLAN'][0]!.Plan);
    return {
      plan: `${scan['Node Type']} using ${scan['Index Name']}: ${fmtInt(scan['Actual Rows'])} rows kept, ` +
        `${fmtInt(scan['Rows Removed by Filter'] ?? 0)} removed by the filter`,
      unforced: chosen ? `${chosen['Node Type']}${indexOf(chosen) ? ` using ${indexOf(chosen)}` : ''}` : 'no scan',
    };
  } finally {
    await ctx.naive.query('rollback');
    await ctx.naive.query('deallocate all');
  }
}

interface PlanNode {
  'Node Type': string;
  'Index Name'?: string;
  'Actual Rows': number;
  'Rows Removed by Filter'?: number;
  Plans?: PlanNode[];
}

/** The index a scan reads: its own, or that of the bitmap index scan under a bitmap heap scan. */
function indexOf(node: PlanNode): string | undefined {
  return node['Index Name'] ?? node.Plans?.map(indexOf).find((name) => name !== undefined);
}

function findScan(node: PlanNode): PlanNode | undefined {
  if (/Scan/.test(node['Node Type'])) return node;
  for (const child of node.Plans ?? []) {
    const found = findScan(child);
    if (found) return found;
  }
  return undefined;
}

interface SweepRow {
  scope: string;
  label: string;
  /** Statements run on the search_scoped session before the queries (undone after them). */
  set: string[];
  queries: Query[];
}

/**
 * search_scoped with other settings of its own: ef_search on the largest tenant, and the threshold
 * on the bucket of 1,000–9,999 vectors (the other path than the main run took there).
 */
function sweepRows(ctx: Context, results: BucketResult[], queriesOf: Map<Bucket, Query[]>, size: Size, settings: Settings): SweepRow[] {
  const pick = (r: BucketResult) => queriesOf.get(r.bucket)!.slice(size.warmup, size.warmup + size.sweep);
  const largest = results.at(-1)!;
  const largestSize = ctx.corpus.sizes[0]!;
  const scope = `largest tenant (${fmtInt(largestSize)} vectors)`;
  // Both ef settings: the largest tenant is searched through its own index when it has one.
  const rows: SweepRow[] = SWEEP_EF.map((ef) => ({
    scope, queries: pick(largest),
    label: `regen.search_ef_search = regen.search_tenant_ef_search = ${ef}` +
      (ef === settings.efDefault ? ' (the default of the first)' : '') + (ef === settings.tenantEfDefault ? ' (the default of the second)' : '') +
      (largestSize > ctx.exactMax ? '' : ' (exact path: no effect)'),
    set: [`set regen.search_ef_search = ${ef}`, `set regen.search_tenant_ef_search = ${ef}`],
  }));
  // Both thresholds up: the exact path, whether or not the tenant has an index of its own.
  const never = 100_000_000;
  rows.push({ scope, queries: pick(largest), label: `regen.search_exact_max_rows = ${fmtInt(largestSize)}: the exact path`,
    set: [`set regen.search_exact_max_rows = ${largestSize}`, `set regen.search_tenant_index_min_rows = ${never}`] });
  const mid = results.find((r) => r.bucket.low >= 1_000 && r.bucket.high < 10_000);
  if (mid) {
    // As without tenant indexes: exact up to regen.search_exact_max_rows, whatever index a tenant has.
    rows.push({ scope: `bucket ${mid.bucket.label}`, queries: pick(mid),
      label: `regen.search_tenant_index_min_rows = ${fmtInt(never)}: tenant indexes not used below regen.search_exact_max_rows ` +
        `(${fmtInt(ctx.exactMax)}), so ${mid.bucket.high <= ctx.exactMax ? 'every tenant exact' : 'as the default'}`,
      set: [`set regen.search_tenant_index_min_rows = ${never}`] });
  }
  return rows;
}

async function sweep(ctx: Context, rows: SweepRow[], log: (line: string) => void): Promise<Table> {
  const out: string[][] = [];
  for (const row of rows) {
    for (const statement of row.set) await ctx.ours.query(statement);
    for (const query of row.queries.slice(0, 3)) await searchOnce(ctx, 'ours', query);   // warm-up
    const samples: Sample[] = [];
    for (const query of row.queries) samples.push((await searchOnce(ctx, 'ours', query)).sample);
    await ctx.ours.query('reset regen.search_ef_search');
    await ctx.ours.query('reset regen.search_tenant_index_min_rows');
    await ctx.ours.query('reset regen.search_tenant_ef_search');
    await ctx.ours.query(`set regen.search_exact_max_rows = ${ctx.exactMax}`);
    out.push([row.scope, row.label, fmtInt(samples.length), fmtMs(pct(samples, 50)), fmtMs(pct(samples, 95)), fmtMs(pct(samples, 99)),
      mean(samples.map((s) => s.recall)).toFixed(3), Math.min(...samples.map((s) => s.recall)).toFixed(1),
      `${samples.filter((s) => s.hnswScans + s.tenantScans > 0).length} / ${samples.length}` +
        (samples.some((s) => s.tenantScans > 0) ? ` (the tenant's own: ${samples.filter((s) => s.tenantScans > 0).length})` : '')]);
    log(`sweep ${row.scope}, ${row.label}: p50 ${out.at(-1)![3]} ms, recall ${out.at(-1)![6]}`);
  }
  return {
    title: 'Sweep (a side experiment, not the main result): regen.search_scoped with other settings of its own (ms, search statement)',
    headers: ['queries of', 'setting', 'queries', 'p50', 'p95', 'p99', `recall@${K}`, 'worst query recall', 'scanned the HNSW index'],
    rows: out,
    notes: ['The first queries of the bucket in the main run, again (3 warm-up searches before each row); the setting made with SET on ' +
      'the application\'s session, as an application would (or ALTER ROLE … SET), and undone after the row.'],
  };
}
