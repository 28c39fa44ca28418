// P. search() in one round trip (issue 15, item 4): the TypeScript search() with a query already
// embedded (one statement, regen.search_tenant: the tenant set for that statement, then
// regen.search_scoped or regen.search_rows), against the naive single statement an application
// would otherwise run on a table of its own (`where tenant = $1 order by embedding <=> $2 limit 10`,
// a b-tree on tenant), on the same vectors, interleaved in one run, per tenant size. Both answers
// are exact at these sizes; the benchmark checks that they name the same rows. Last, with the
// application's edits piled up in the change log (no worker running), search() again beside the
// naive statement, for the two largest sizes.
//
//   npm run bench -- --only search-client [--quick]
import pg from 'pg';
import pgvector from 'pgvector';
import { search } from '../src/search.ts';
import { vectorBinary } from '../src/vector-binary.ts';
import {
  check, fmtInt, fmtMs, openServer, percentile, renderTargets, seededVector, serverInfo, timed,
  type BenchOptions, type BenchReport, type Table,
} from './support.ts';

const SIZES = {
  // tenants of each size; the 10,000-vector tenant is above the target's range, reported for scale
  // queries per method and tenant size: more where a search takes a fraction of a millisecond, so
  // that the p50 of each holds still between runs
  full: { dimensions: 1536, tenantsPerSize: 10, sizes: [1, 10, 100, 1_000, 10_000], queries: [3_000, 3_000, 1_000, 300, 300], warmup: 30 },
  quick: { dimensions: 64, tenantsPerSize: 3, sizes: [1, 10, 100, 1_000], queries: [40, 40, 40, 40], warmup: 5 },
};
const K = 10;
const TAG = 'bench@1';
const RATIO_TARGET = 1.2;

export async function run(options: BenchOptions): Promise<BenchReport> {
  const size = options.quick ? SIZES.quick : SIZES.full;
  const log = (line: string) => process.stderr.write(`search-client: ${line}\n`);
  const server = await openServer(log);
  try {
    const scratch = await server.createDatabase();
    try {
      return await measure(scratch.url, size, server.origin, log);
    } finally {
      await scratch.drop();
    }
  } finally {
    await server.stop();
  }
}

type Size = (typeof SIZES)['full'] | (typeof SIZES)['quick'];
type Method = 'naive' | 'naive, binary' | 'search()' | 'search(), rows' | 'naive, prepared' | 'search(), prepared'
  | 'floor: call only' | 'floor: bare search';

async function measure(url: string, size: Size, origin: string, log: (line: string) => void): Promise<BenchReport> {
  const owner = new pg.Client({ connectionString: url, application_name: 'pgregen bench search-client (owner)' });
  await owner.connect();
  const role = `pgregen_bench_app_${Math.random().toString(16).slice(2, 10)}`;
  // one connection per method, so that each waits as long between its own calls as the others
  // do (a connection just used answers faster than one that sat idle while others ran)
  const pools = new Map<Method, pg.Pool>();
  try {
    const info = await serverInfo(owner);
    // tenants t<size>_<n>; rows numbered in tenant order; each row's vector seeded by its id
    const tenants: Array<{ name: string; size: number; first: number }> = [];
    let next = 1;
    for (const n of size.sizes) {
      const count = n >= 10_000 ? 1 : size.tenantsPerSize;
      for (let i = 0; i < count; i++) {
        tenants.push({ name: `t${n}_${i}`, size: n, first: next });
        next += n;
      }
    }
    const total = next - 1;
    log(`loading ${fmtInt(total)} rows of ${size.dimensions} dimensions into the application's table`);
    await owner.query(`create table docs (id bigint primary key, tenant text not null, body text not null, embedding vector(${size.dimensions}) not null)`);
    for (const t of tenants) {
      for (let at = 0; at < t.size; at += 1000) {
        const ids = Array.from({ length: Math.min(1000, t.size - at) }, (_, i) => t.first + at + i);
        await owner.query(`insert into docs select id, $1, 'row ' || id, v::vector from unnest($2::bigint[], $3::text[]) x(id, v)`,
          [t.name, ids, ids.map((id) => pgvector.toSql(Array.from(seededVector(id, size.dimensions))))]);
      }
    }
    await owner.query('create index on docs (tenant)');
    await owner.query('analyze docs');
    // where each side keeps its vectors: the application's table as pgvector stores them by default,
    // pgregen's store inline (storage main, sql/0001)
    const { rows: [storage] } = await owner.query<{ heap: string; toast: string }>(
      `select pg_size_pretty(pg_relation_size(c.oid)) as heap, pg_size_pretty(coalesce(pg_relation_size(nullif(c.reltoastrelid, 0)), 0)) as toast
         from pg_class c where c.oid = 'docs'::regclass`);

    // pgregen: the same rows as a source, the same vectors in its store (loaded the fast way, as the
    // owner: the worker would write the same rows), and the version's HNSW index built after
    log('the same vectors in pgregen\'s store');
    await owner.query(`select regen.create_version($1, 'bench-model', $2, settings => '{"distance": "cosine"}')`, [TAG, size.dimensions]);
    await owner.query(`select regen.register_source('docs', 'docs', 'id', 'body', tenant_column => 'tenant', version => $1)`, [TAG]);
    const { rows: [index] } = await owner.query<{ indexname: string; indexdef: string }>(
      `select i.indexname, i.indexdef from pg_indexes i join regen._versions v on i.indexname = '_embeddings_hnsw_v' || v.id
        where i.schemaname = 'regen' and v.tag = $1`, [TAG]);
    if (index) await owner.query(`drop index regen.${index.indexname}`);
    await owner.query(`insert into regen._embeddings (version_id, source_id, row_id, chunk_no, tenant, content_hash, text_hash, embedding)
      select v.id, s.id, d.id::text, 1, d.tenant, sha256(convert_to(d.body, 'UTF8')), sha256(convert_to(d.body, 'UTF8')), d.embedding
        from docs d, regen._versions v, regen._sources s where v.tag = $1 and s.name = 'docs'`, [TAG]);
    log('building the version\'s HNSW index');
    await owner.query(`set maintenance_work_mem = '512MB'`);
    const { rows: [ddl] } = await owner.query<{ statement: string }>(
      `select statement from regen.version_index_plan($1) where action = 'create'`, [TAG]);
    if (ddl) await owner.query(ddl.statement.replace(/ concurrently/i, ''));
    await owner.query('analyze regen._embeddings');
    await owner.query(`create role ${role} login`);
    await owner.query('select regen.grant_app($1)', [role]);
    await createFloors(owner, role);
    const appUrl = new URL(url);
    appUrl.username = role;
    const pool = (method: Method) => pools.get(method)!;

    // as node-postgres sends a query by default (unnamed: parsed each time, the vector as pgvector's
    // text), with the vector in binary as search() sends it, and as a named prepared statement
    const NAIVE = 'select id from docs where tenant = $1 order by embedding <=> $2 limit 10';
    const naiveSearch = async (method: Method, tenant: string, query: number[]) => (await pool(method).query<{ id: string }>(
      method === 'naive, prepared' ? { name: 'naive', text: NAIVE, values: [tenant, pgvector.toSql(query)] }
        : { text: NAIVE, values: [tenant, method === 'naive, binary' ? vectorBinary(query) : pgvector.toSql(query)] },
    )).rows.map((r) => String(r.id));
    // the version is not named: the search most applications make (the active version)
    const ours = async (method: Method, tenant: string, query: number[]) =>
      (await search({ pool: pool(method), prepare: method === 'search(), prepared' }, query, { tenant, k: K, rows: method === 'search(), rows' }))
        .map((h) => h.rowId);
    // the floors, called as search() calls regen.search_tenant (one unnamed statement, the vector in binary)
    const floor = async (method: Method, tenant: string, query: number[]) => (await pool(method).query<{ row_id: string }>({
      text: `select * from bench_floor_${method === 'floor: call only' ? 'call' : 'search'}($1::text, $2, $3::integer, $4::text[], $5::text, $6::float8, $7::boolean)`,
      values: [tenant, vectorBinary(query), K, null, null, null, false],
    })).rows.map((r) => r.row_id);

    const methods: Method[] = ['naive', 'naive, binary', 'search()', 'search(), rows', 'naive, prepared', 'search(), prepared',
      'floor: call only', 'floor: bare search'];
    for (const method of methods) {
      pools.set(method, new pg.Pool({ connectionString: method.startsWith('naive') ? url : appUrl.toString(), max: 1 }));
    }
    const samples = new Map<string, number[]>();
    let compared = 0;
    for (const [at, n] of size.sizes.entries()) {
      const group = tenants.filter((t) => t.size === n);
      const queries = size.queries[at]!;
      log(`tenants of ${fmtInt(n)} vectors: ${queries} queries per method`);
      for (let q = 0; q < size.warmup + queries; q++) {
        const tenant = group[q % group.length]!;
        const query = Array.from(seededVector(1_000_000 + q * 7 + n, size.dimensions));
        const order = q % 2 === 0 ? methods : [...methods].reverse();   // alternate who goes first
        const answers = new Map<Method, string[]>();
        for (const method of order) {
          const started = performance.now();
          answers.set(method, method.startsWith('naive') ? await naiveSearch(method, tenant.name, query)
            : method.startsWith('floor') ? await floor(method, tenant.name, query) : await ours(method, tenant.name, query));
          const ms = performance.now() - started;
          if (q >= size.warmup) {
            const key = `${n}/${method}`;
            if (!samples.has(key)) samples.set(key, []);
            samples.get(key)!.push(ms);
          }
        }
        // the same rows (single-chunk rows: chunks and rows agree), exact on both sides
        const expected = answers.get('naive')!;
        check(expected.length === Math.min(K, n), `naive answered ${expected.length} rows for a tenant of ${n}`);
        for (const method of methods.filter((m) => m !== 'floor: call only')) {
          check(JSON.stringify(answers.get(method)) === JSON.stringify(expected),
            `${method} and the naive query disagree for ${tenant.name}: ${answers.get(method)} vs ${expected}`);
        }
        compared++;
      }
    }

    const backlog = await measureBacklog(owner, tenants, size, samples, (tenant, query) => naiveSearch('naive', tenant, query),
      (tenant, query) => ours('search()', tenant, query), log);

    const rows: string[][] = [];
    const floorRows: string[][] = [];
    const targets = [];
    const figures: Record<string, number> = {};
    for (const [at, n] of size.sizes.entries()) {
      const p = (method: Method, pct: number) => percentile(samples.get(`${n}/${method}`)!, pct);
      const ratio = p('search()', 50) / p('naive', 50);
      const rowsRatio = p('search(), rows', 50) / p('naive', 50);
      const preparedRatio = p('search(), prepared', 50) / p('naive, prepared', 50);
      const binaryRatio = p('search()', 50) / p('naive, binary', 50);
      rows.push([fmtInt(n), fmtInt(size.queries[at]!), fmtMs(p('naive', 50)), fmtMs(p('naive', 99)), fmtMs(p('search()', 50)), fmtMs(p('search()', 99)),
        fmtMs(p('search(), rows', 50)), fmtMs(p('search(), rows', 99)), `${ratio.toFixed(2)}×`, `${rowsRatio.toFixed(2)}×`,
        fmtMs(p('naive, binary', 50)), `${binaryRatio.toFixed(2)}×`,
        fmtMs(p('naive, prepared', 50)), fmtMs(p('search(), prepared', 50)), `${preparedRatio.toFixed(2)}×`]);
      const vsBinary = (method: Method) => `${fmtMs(p(method, 50))} (${(p(method, 50) / p('naive, binary', 50)).toFixed(2)}×)`;
      floorRows.push([fmtInt(n), fmtMs(p('naive, binary', 50)), vsBinary('floor: call only'), vsBinary('floor: bare search'), vsBinary('search()')]);
      figures[`p50_ratio_floor_call_${n}`] = p('floor: call only', 50) / p('naive, binary', 50);
      figures[`p50_ratio_floor_search_${n}`] = p('floor: bare search', 50) / p('naive, binary', 50);
      figures[`p50_ratio_binary_${n}`] = binaryRatio;
      figures[`p50_ratio_prepared_${n}`] = preparedRatio;
      figures[`p50_ratio_${n}`] = ratio;
      if (n <= 1_000) {
        targets.push({
          name: `tenants of ${fmtInt(n)} vector(s): p50 of search() (one round trip, query embedded) / p50 of the naive statement, both sent as node-postgres sends them by default`,
          measured: `${ratio.toFixed(2)}× (${fmtMs(p('search()', 50))} ms against ${fmtMs(p('naive', 50))} ms; p99 ${fmtMs(p('search()', 99))} against ${fmtMs(p('naive', 99))})`,
          target: `≤ ${RATIO_TARGET}×`, met: ratio <= RATIO_TARGET,
        });
        targets.push({
          name: `tenants of ${fmtInt(n)} vector(s): the same, against the naive statement with its vector sent in binary too (as search() sends it; both unnamed)`,
          measured: `${binaryRatio.toFixed(2)}× (${fmtMs(p('search()', 50))} ms against ${fmtMs(p('naive, binary', 50))} ms; p99 ${fmtMs(p('search()', 99))} against ${fmtMs(p('naive, binary', 99))})`,
          target: `≤ ${RATIO_TARGET}×`, met: binaryRatio <= RATIO_TARGET,
        });
      }
    }
    const latency: Table = {
      title: 'Latency per search, client-side (ms): the naive statement against search() with the query embedded',
      headers: ['vectors in the tenant', 'queries per method', 'naive p50', 'naive p99', 'search() p50', 'search() p99',
        'search() rows p50', 'search() rows p99', 'search() / naive, p50', 'rows / naive, p50',
        'naive binary p50', 'search() / naive binary, p50', 'naive prepared p50', 'search() prepared p50', 'prepared / prepared, p50'],
      rows,
      notes: [
        `Each query ran through all six (and the two floors below), in alternating order, each method on a connection of its own (the application role for search() and the floors, the owner for the naive statement), so that each sits idle as long between its calls; ${fmtInt(compared)} queries compared, each returning the same ${K} rows from every side.`,
        'naive and search(): as node-postgres sends a query by default (an unnamed statement, parsed every time); prepared: a named prepared statement for the naive query, and search() with { prepare: true } (one parse per connection).',
        'The vector: search() sends it in pgvector\'s binary format (src/vector-binary.ts: a Buffer, which node-postgres sends in binary); naive and naive prepared as pgvector.toSql() formats it (text), naive binary as search() does. At 1,536 dimensions the text costs the client its formatting and the server its parsing.',
        'search() is one round trip here: one statement, regen.search_tenant, which sets the tenant for itself, then searches under row-level security. With a text instead of an embedding, search() adds one round trip (regen.search_input: the version and the text as it preprocesses it) and the provider\'s call.',
      ],
    };
    const floors: Table = {
      title: 'Where the time goes, against the naive statement with its vector in binary (p50, ms, and the ratio to it)',
      headers: ['vectors in the tenant', 'naive binary', 'floor: call only', 'floor: bare search', 'search()'],
      rows: floorRows,
      notes: [
        'The floors are plpgsql functions of regen.search_tenant\'s signature and settings, called as search() calls it (one unnamed statement, the vector in binary), by the application role, in the same interleaved rounds.',
        '"call only" returns nothing: what calling a function in one statement costs. "bare search" sets the tenant as regen.set_tenant does, runs the exact search of the store with the version and the source as constants (row-level security applies), and restores the tenant: the least a one-statement search under row-level security costs. It leaves out the scope (active version, sources, distance, size), the exact path\'s size bound, rows moved out of the tenant and not yet applied, and the argument checks, which search_tenant needs to be right for every caller.',
      ],
    };
    return {
      title: 'P. search() in one round trip against the naive single statement',
      setup: [
        `source table docs (id bigint primary key, tenant text, body text, embedding vector(${size.dimensions})), a b-tree on tenant; ${fmtInt(total)} rows in ${tenants.length} tenants (${size.tenantsPerSize} of each size ${size.sizes.filter((n) => n < 10_000).map(fmtInt).join(', ')}${size.sizes.includes(10_000) ? ', and one of 10,000' : ''}), vectors seeded per row`,
        `pgregen: the table registered as source docs (version ${TAG}, cosine), the same vectors in regen._embeddings (loaded the fast way, as the owner), the version's HNSW index built afterwards; searched as a role given regen.grant_app, naming neither a version nor sources (the active version: regen._default_scope)`,
        'naive: select id from docs where tenant = $1 order by embedding <=> $2 limit 10 (exact: the b-tree, then a sort), as the owner',
        `docs after loading: heap ${storage!.heap}, TOAST ${storage!.toast} (vectors over about 2 kB go out of line with pgvector's default storage; regen._embeddings keeps them inline)`,
        `queries: a seeded random vector each, ${size.warmup} warm-up per size, then ${size.sizes.map((n, i) => `${fmtInt(size.queries[i]!)} for tenants of ${fmtInt(n)}`).join(', ')}, timed per method`,
        `database: ${origin}`,
      ],
      tables: [latency, floors, backlog.table, renderTargets(targets)],
      targets,
      figures: { ...figures, ...backlog.figures },
      server: info,
    };
  } finally {
    for (const p of pools.values()) await p.end();
    await owner.query(`drop owned by ${role}`).catch(() => {});
    await owner.query(`drop role if exists ${role}`).catch(() => {});
    await owner.end();
  }
}

// Two floors, to tell what any one-statement search under row-level security costs from what
// regen.search_tenant adds: plpgsql functions of search_tenant's signature and settings, called as
// search() calls it. "call only" returns nothing: the cost of calling a function in one statement.
// "bare search" does the least such a search can: sets the tenant as regen.set_tenant does (the
// setting and the transaction marker that row-level security reads), runs the exact search of the
// version's store with the version and the source as constants, restores the tenant. It leaves out
// what search_tenant must do to be right for every caller: the scope (the active version, its
// sources, distance and size), the size bound of the exact path, rows moved out of the tenant but
// not yet applied, and the argument checks.
async function createFloors(owner: pg.Client, role: string): Promise<void> {
  const { rows: [scope] } = await owner.query<{ version_id: number; source: string; vector_schema: string }>(
    `select sc.version_id, s.name as source, e.extnamespace::regnamespace::text as vector_schema
       from regen._default_scope sc, regen._sources s, pg_extension e
      where s.id = sc.source_ids[1] and e.extname = 'vector'`);
  const signature = `(tenant text, query vector, k integer default 10, sources text[] default null, version text default null,
                      max_distance double precision default null, per_row boolean default false)
    returns table (source text, row_id text, chunk_no integer, distance double precision, version_searched text)
    language plpgsql volatile security invoker
    set plan_cache_mode = force_generic_plan set jit = off set search_path = pg_catalog, regen, ${scope!.vector_schema}, pg_temp`;
  await owner.query(`create function bench_floor_call${signature} as $$ begin return; end $$`);
  await owner.query(`create function bench_floor_search${signature} as $$
    declare
      v_set text;
    begin
      v_set := set_config('regen.tenant_id', tenant, true);
      v_set := set_config('regen.tenant_marker', regen._transaction_marker(), true);
      return query
        select ${pg.escapeLiteral(scope!.source)}::text, e.row_id, e.chunk_no, (e.embedding <=> query)::float8, ${pg.escapeLiteral(TAG)}::text
        from regen._embeddings e
        where e.version_id = ${Number(scope!.version_id)} and e.tenant = bench_floor_search.tenant
        order by e.embedding <=> query
        limit k;
      v_set := set_config('regen.tenant_id', '', true);
      v_set := set_config('regen.tenant_marker', '', true);
    end $$`);
  await owner.query(`grant execute on function bench_floor_call, bench_floor_search to ${role}`);
}

// With changes pending: the application edits every row EDITS times and deletes one row in 100
// while no worker runs (a bulk edit while the worker is away), so the change log holds them all.
// search() must leave out the deleted rows at once (regen._moved_rows), and for every row it ranks
// exactly it probes the log's index on (source_id, row_id), which then holds every pending change
// of that row. Measured against the naive statement on the same rows, interleaved; the answers must
// still agree (the naive statement no longer sees the deleted rows either).
const EDITS = 14;

async function measureBacklog(owner: pg.Client, tenants: Array<{ name: string; size: number }>, size: Size,
  quiet: Map<string, number[]>, naive: (tenant: string, query: number[]) => Promise<string[]>,
  ours: (tenant: string, query: number[]) => Promise<string[]>, log: (line: string) => void): Promise<{ table: Table; figures: Record<string, number> }> {
  log(`changes pending: ${EDITS} edits of every row and a delete of one row in 100, no worker running`);
  for (let edit = 0; edit < EDITS; edit++) await owner.query(`update docs set body = body || '.'`);
  await owner.query('delete from docs where id % 100 = 0');
  // the application's table vacuumed, as autovacuum would soon (the naive statement would read the
  // dead versions of the edits otherwise); the log analyzed, as autovacuum would too
  await owner.query('vacuum analyze docs');
  await owner.query('analyze regen._change_log');
  const { rows: [pending] } = await owner.query<{ n: number; moved: number }>(
    `select count(*)::int as n, count(*) filter (where not present)::int as moved from regen._changes`);
  const sizes = size.sizes.filter((n) => n >= 100).slice(-2);
  const queries = (n: number) => (n >= 10_000 ? 30 : n >= 1_000 ? 100 : 200);
  const samples = new Map<string, number[]>();
  const add = (key: string, ms: number) => { if (!samples.has(key)) samples.set(key, []); samples.get(key)!.push(ms); };
  const answer = async (work: () => Promise<string[]>) => { let ids: string[] = []; const ms = await timed(async () => { ids = await work(); }); return { ids, ms }; };
  for (const n of sizes) {
    const group = tenants.filter((t) => t.size === n);
    for (let q = 0; q < queries(n) + 2; q++) {
      const tenant = group[q % group.length]!.name;
      const query = Array.from(seededVector(2_000_000 + q * 7 + n, size.dimensions));
      const a = q % 2 === 0 ? await answer(() => naive(tenant, query)) : undefined;
      const b = await answer(() => ours(tenant, query));
      const c = a ?? await answer(() => naive(tenant, query));
      check(JSON.stringify(b.ids) === JSON.stringify(c.ids), `with changes pending, search() and the naive query disagree for ${tenant}: ${b.ids} vs ${c.ids}`);
      if (q < 2) continue;   // the first queries plan again (the log was analyzed)
      add(`${n}/naive`, c.ms);
      add(`${n}/ours`, b.ms);
    }
  }
  const rows: string[][] = [];
  const figures: Record<string, number> = {};
  for (const n of sizes) {
    const p = (key: string) => percentile(samples.get(key)!, 50);
    const quietOurs = percentile(quiet.get(`${n}/search()`)!, 50);
    const quietNaive = percentile(quiet.get(`${n}/naive`)!, 50);
    rows.push([fmtInt(n), String(samples.get(`${n}/ours`)!.length), fmtMs(quietNaive), fmtMs(quietOurs), `${(quietOurs / quietNaive).toFixed(2)}×`,
      fmtMs(p(`${n}/naive`)), fmtMs(p(`${n}/ours`)), `${(p(`${n}/ours`) / p(`${n}/naive`)).toFixed(2)}×`, `${(p(`${n}/ours`) / quietOurs).toFixed(2)}×`]);
    figures[`backlog_ratio_${n}`] = p(`${n}/ours`) / p(`${n}/naive`);
    figures[`backlog_slowdown_${n}`] = p(`${n}/ours`) / quietOurs;
  }
  return {
    figures,
    table: {
      title: `Search with changes pending: ${fmtInt(pending!.n)} changes in the log (${fmtInt(pending!.moved)} of them deletes), p50 (ms)`,
      headers: ['vectors in the tenant', 'queries per method', 'nothing pending: naive', 'nothing pending: search()', 'ratio',
        'pending: naive', 'pending: search()', 'ratio', 'search(), pending / nothing pending'],
      rows,
      notes: [
        `After the rounds above: ${EDITS} UPDATEs of every row's text (each logged by the capture trigger, one change per row) and a DELETE of one row in 100, with no worker running, so nothing was applied; then the application's table vacuumed and the log analyzed. The naive statement and search() ran interleaved and named the same rows every time: the deleted rows left both answers at once.`,
        '"nothing pending" repeats the p50s of the first table, from the same run. What a backlog costs search() is the exact path\'s probe of the change log for each row it ranks (README, roadmap item 3).',
      ],
    },
  };
}
