// A. Write-back throughput: regen.write_embeddings() against the naive one-UPDATE-per-row loop
// and the binary COPY ceiling, with and without the HNSW index, 1,536 dimensions.
// Every variant writes the same vectors into an emptied store; variants run in rotation (each
// round runs every variant once) so a noisy machine hurts them alike; the median round counts.
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import pgvector from 'pgvector';
import { float4ArrayParam } from '../src/db.ts';
import { prepareInputs, writeEmbeddings, type VectorItem } from '../src/store.ts';
import { binaryCopy, COPY_COLUMNS, type EmbeddingRow } from './copy-binary.ts';
import {
  check, fmtInt, fmtRate, median, openServer, renderTable, renderTargets, seededVector, serverInfo, timed,
  type BenchOptions, type BenchReport, type Table, type Target,
} from './support.ts';

const DIMENSIONS = 1536;
const TAG = 'bench@1';
const BATCHES = [100, 500, 2_000];
const DEFAULT_BATCH = 500;
const PREPARE_BATCH = 500;
// rows: vectors per variant without the index. subset: vectors per variant where each one costs a
// round trip (naive loop) or an HNSW insert; kept small so the whole run stays within minutes.
const SIZES = { full: { rows: 20_000, subset: 2_000, rounds: 3 }, quick: { rows: 2_000, subset: 200, rounds: 3 } };

type CopyFrom = (sql: string) => pg.Submittable & NodeJS.WritableStream;

interface Variant {
  path: string;
  perStatement: string;
  index: boolean;
  rows: EmbeddingRow[];
  /** Which table is emptied before each run; 'none' for work that does not touch the database. */
  target: 'store' | 'naive' | 'none';
  /** Whether the store's triggers run, so every written item must end current. */
  settles: boolean;
  breakdown?: boolean;
  write(): Promise<void>;
}

export async function run(options: BenchOptions): Promise<BenchReport> {
  const size = options.quick ? SIZES.quick : SIZES.full;
  const log = (line: string) => process.stderr.write(`write-back: ${line}\n`);
  const server = await openServer(log);
  try {
    const scratch = await server.createDatabase();
    const client = new pg.Client({ connectionString: scratch.url, application_name: 'pgregen bench write-back' });
    await client.connect();
    try {
      return await measure(client, size, log, server.origin);
    } finally {
      await client.end();
      await scratch.drop();
    }
  } finally {
    await server.stop();
  }
}

async function measure(client: pg.Client, size: typeof SIZES.full, log: (line: string) => void, origin: string): Promise<BenchReport> {
  const info = await serverInfo(client);
  const copyFrom = await loadCopyFrom();
  const setup: string[] = [`database: ${origin}`];

  log(`source table with ${fmtInt(size.rows)} rows`);
  await client.query('create table docs (id bigint primary key, tenant text, body text)');
  await client.query(
    `insert into docs select g, 'tenant-' || (g % 10), 'document ' || g || ': ' || md5(g::text) from generate_series(1, $1::int) g`,
    [size.rows]);
  await client.query(`select regen.create_version($1, 'bench-model', $2)`, [TAG, DIMENSIONS]);
  await client.query(`select regen.register_source('docs', 'docs', 'id', 'body', 'tenant', null, 1, null, $1)`, [TAG]);
  const { rows: [ids] } = await client.query<{ version_id: number; source_id: number }>(
    `select (select id from regen._versions where tag = $1) as version_id, (select id from regen._sources where name = 'docs') as source_id`,
    [TAG]);
  const indexName = `_embeddings_hnsw_v${ids!.version_id}`;
  const { rows: [index] } = await client.query<{ indexdef: string }>(
    `select indexdef from pg_indexes where schemaname = 'regen' and indexname = $1`, [indexName]);
  check(index !== undefined, `create_version made no index ${indexName}`);

  // Preparing records each row's chunk plan; it is not part of the write times, so measured alone.
  const allIds = Array.from({ length: size.rows }, (_, i) => String(i + 1));
  let prepared = 0;
  const prepareMs = await timed(async () => {
    for (let i = 0; i < allIds.length; i += PREPARE_BATCH) {
      prepared += (await prepareInputs(client, 'docs', TAG, allIds.slice(i, i + PREPARE_BATCH))).length;
    }
  });
  check(prepared === size.rows, `prepare_inputs returned ${prepared} inputs for ${size.rows} one-chunk rows`);
  const prepareRate = size.rows / (prepareMs / 1000);
  log(`prepare_inputs: ${fmtRate(prepareRate)} rows/s`);

  const { rows: items } = await client.query<{ row_id: string; tenant: string | null; content_hash: Buffer; text_hash: Buffer }>(
    `select row_id, tenant, content_hash, chunk_hashes[1] as text_hash from regen._items
      where source_id = $1 and version_id = $2 and plan_hash = content_hash and cardinality(chunk_hashes) = 1
      order by row_id::bigint`, [ids!.source_id, ids!.version_id]);
  check(items.length === size.rows, `${items.length} of ${size.rows} items have a one-chunk plan after prepare_inputs`);
  // Generated before any timing: the provider's work is not what is measured.
  const rows: EmbeddingRow[] = items.map((it) => ({
    rowId: it.row_id, chunkNo: 1, tenant: it.tenant, contentHash: it.content_hash, textHash: it.text_hash,
    embedding: seededVector(Number(it.row_id), DIMENSIONS),
  }));
  const subset = rows.slice(0, size.subset);

  await client.query('create table naive (id bigint primary key, embedding vector(1536))');

  const variants = buildVariants(client, rows, subset, copyFrom, info.superuser, ids!);
  const samples = new Map<Variant, number[]>(variants.map((v) => [v, []]));
  for (let round = 1; round <= size.rounds; round++) {
    for (const variant of variants) {
      await reset(client, variant, indexName, index.indexdef);
      const ms = await timed(() => variant.write());
      await verify(client, variant);
      const rate = variant.rows.length / (ms / 1000);
      samples.get(variant)!.push(rate);
      log(`round ${round}/${size.rounds}  ${describe(variant)}: ${fmtRate(rate)} vectors/s`);
    }
  }

  const rate = (path: string, perStatement: string, withIndex: boolean) => {
    const variant = variants.find((v) => v.path === path && v.perStatement === perStatement && v.index === withIndex);
    return variant && median(samples.get(variant)!);
  };
  const figures: Record<string, number> = { 'prepare_inputs rows/s': prepareRate };
  for (const v of variants) figures[`${describe(v)} vectors/s`] = median(samples.get(v)!);

  setup.push(
    `${fmtInt(size.rows)} source rows of one short text each (one chunk), vectors of ${fmtInt(DIMENSIONS)} float4 made before timing`,
    `without the index every variant writes all ${fmtInt(size.rows)} vectors; with the HNSW index, and for the naive loop either way, ` +
      `each run writes the first ${fmtInt(size.subset)} (a rate, so comparable; HNSW inserts slow down as the graph grows, ` +
      `so with-index rates are for an index of at most ${fmtInt(size.subset)} vectors)`,
    `${size.rounds} rounds, each running every variant once in turn; each run starts from an empty store ` +
      '(truncate, index dropped or recreated empty, vacuum, checkpoint); the figure is the median round',
    `prepare_inputs (batches of ${PREPARE_BATCH}, not part of the write times): ${fmtRate(prepareRate)} rows/s`,
  );
  if (!copyFrom) setup.push('COPY not measured: the package pg-copy-streams is not installed');
  if (!info.superuser) setup.push('triggers-off variants not measured: session_replication_role needs a superuser');

  const tables: Table[] = [mainTable(variants, samples, size.rounds), breakdownTable(variants, samples)];
  const targets: Target[] = [];
  const we = (withIndex: boolean) => rate('regen.write_embeddings', String(DEFAULT_BATCH), withIndex);
  for (const withIndex of [false, true]) {
    const naive = rate('naive UPDATE loop', '1 row', withIndex);
    const ours = we(withIndex);
    if (naive && ours) {
      targets.push({
        name: `write_embeddings (batch ${DEFAULT_BATCH}) vs the naive loop, ${withIndex ? 'with' : 'without'} the HNSW index`,
        measured: `${(ours / naive).toFixed(1)}× faster`, target: '≥ 10×', met: ours / naive >= 10,
      });
    }
  }
  const copy = rate('binary COPY', 'all', false);
  const ours = we(false);
  if (copy && ours) {
    targets.push({
      name: `binary COPY (store triggers on) vs write_embeddings (batch ${DEFAULT_BATCH}), without the index`,
      measured: `COPY ${(copy / ours).toFixed(2)}× faster`, target: '≤ 2×', met: copy / ours <= 2,
    });
    const bare = rate('binary COPY, triggers off', 'all', false);
    if (bare) tables[0]!.notes!.push(`Bare ceiling (COPY with triggers off) is ${(bare / ours).toFixed(2)}× write_embeddings (batch ${DEFAULT_BATCH}, no index).`);
  }
  tables.push(renderTargets(targets));

  for (const table of tables) console.log(`\n${renderTable(table)}`);
  return { title: 'A. Write-back throughput', setup, tables, targets, figures, server: info };
}

function buildVariants(
  client: pg.Client, rows: EmbeddingRow[], subset: EmbeddingRow[], copyFrom: CopyFrom | undefined, superuser: boolean,
  ids: { version_id: number; source_id: number },
): Variant[] {
  const variants: Variant[] = [];
  for (const withIndex of [false, true]) {
    const written = withIndex ? subset : rows;
    for (const batch of BATCHES) {
      const batches = toBatches(written, batch).map((b) => b.map(toItem));
      variants.push({
        path: 'regen.write_embeddings', perStatement: String(batch), index: withIndex, rows: written, target: 'store', settles: true,
        write: () => writeAll(client, batches),
      });
    }
    if (copyFrom) {
      const copy = () => copyRows(client, copyFrom, written, ids);
      variants.push({ path: 'binary COPY', perStatement: 'all', index: withIndex, rows: written, target: 'store', settles: true, write: copy });
      if (superuser) {
        variants.push({
          path: 'binary COPY, triggers off', perStatement: 'all', index: withIndex, rows: written, target: 'store', settles: false,
          write: () => withoutTriggers(client, copy),
        });
      }
    }
    variants.push({
      path: 'naive UPDATE loop', perStatement: '1 row', index: withIndex, rows: subset, target: 'naive', settles: false,
      write: () => naiveLoop(client, subset),
    });
  }

  // Where write_embeddings' time goes (default batch, no index): each step adds one part of its work.
  const batches = toBatches(rows, DEFAULT_BATCH);
  const step = (path: string, target: Variant['target'], settles: boolean, write: () => Promise<void>): Variant =>
    ({ path, perStatement: String(DEFAULT_BATCH), index: false, rows, target, settles, breakdown: true, write });
  const params = (batch: EmbeddingRow[]) => [batch.map((r) => r.rowId), batch.map((r) => r.chunkNo), batch.map((r) => r.contentHash), float4ArrayParam(flatten(batch))];
  const each = (sql: string) => async () => {
    for (const batch of batches) await client.query(sql, params(batch));
  };
  const unnestInsert = each(UNNEST_INSERT.replaceAll('$version', String(ids.version_id)).replaceAll('$source', String(ids.source_id)));
  variants.push(
    step('client: flatten and encode the float4[] parameter only', 'none', false, async () => {
      for (const batch of batches) params(batch);
    }),
    step('send the parameters, select their sizes', 'none', false, each(
      'select cardinality($1::text[]) + cardinality($2::integer[]) + cardinality($3::bytea[]) + cardinality($4::real[])')),
    step('+ slice each vector and cast to vector', 'none', false, each(
      `select count(*) from unnest($1::text[], $2::integer[], $3::bytea[]) with ordinality u(row_id, chunk_no, content_hash, ord)
        where (($4::real[])[(ord - 1) * ${DIMENSIONS} + 1 : ord * ${DIMENSIONS}])::vector is not null`)),
  );
  if (superuser) variants.push(step('+ plain insert … select unnest, triggers off', 'store', false, () => withoutTriggers(client, unnestInsert)));
  variants.push(step('+ plain insert … select unnest (settle trigger on)', 'store', true, unnestInsert));
  if (superuser) {
    const items = batches.map((b) => b.map(toItem));
    variants.push(step('regen.write_embeddings, triggers off', 'store', false, () => withoutTriggers(client, () => writeAll(client, items))));
  }
  return variants;
}

// The insert write_embeddings does, without its checks (length, NaN, duplicates, staleness) and row locks.
const UNNEST_INSERT = `
  insert into regen._embeddings ${COPY_COLUMNS}
  select $version, $source, u.row_id, u.chunk_no, it.tenant, u.content_hash, it.chunk_hashes[u.chunk_no],
         (($4::real[])[(u.ord - 1) * ${DIMENSIONS} + 1 : u.ord * ${DIMENSIONS}])::vector
  from unnest($1::text[], $2::integer[], $3::bytea[]) with ordinality u(row_id, chunk_no, content_hash, ord)
  join regen._items it on it.source_id = $source and it.version_id = $version and it.row_id = u.row_id`;

async function writeAll(client: pg.Client, batches: VectorItem[][]): Promise<void> {
  for (const batch of batches) {
    const results = await writeEmbeddings(client, 'docs', TAG, batch);
    check(results.length === batch.length, `write_embeddings returned ${results.length} results for ${batch.length} vectors`);
    const refused = results.find((r) => !r.stored);
    check(!refused, `write_embeddings refused row ${refused?.rowId} chunk ${refused?.chunkNo}: ${refused?.reason}`);
  }
}

async function copyRows(client: pg.Client, copyFrom: CopyFrom, rows: EmbeddingRow[], ids: { version_id: number; source_id: number }): Promise<void> {
  const stream = client.query(copyFrom(`copy regen._embeddings ${COPY_COLUMNS} from stdin (format binary)`));
  await pipeline(Readable.from(binaryCopy(rows, ids.version_id, ids.source_id)), stream);
}

/** What an application without pgregen does: one autocommitted UPDATE per row, the vector as text. */
async function naiveLoop(client: pg.Client, rows: EmbeddingRow[]): Promise<void> {
  for (const row of rows) {
    const result = await client.query('update naive set embedding = $1 where id = $2', [pgvector.toSql(Array.from(row.embedding)), row.rowId]);
    check(result.rowCount === 1, `naive update of id ${row.rowId} changed ${result.rowCount} rows`);
  }
}

/** Runs `work` with triggers (the store's settle and release triggers) off: the bare table's cost. */
async function withoutTriggers(client: pg.Client, work: () => Promise<void>): Promise<void> {
  await client.query('set session_replication_role = replica');
  try {
    await work();
  } finally {
    await client.query('reset session_replication_role');
  }
}

/** Same starting point for every run: an empty target table, the index as the variant wants it, no bloat. */
async function reset(client: pg.Client, variant: Variant, indexName: string, indexdef: string): Promise<void> {
  if (variant.target === 'store') {
    await client.query('truncate regen._embeddings'); // its trigger un-settles every item, as wanted
    await client.query('truncate regen._cache');
    await client.query(`drop index if exists regen.${pg.escapeIdentifier(indexName)}`);
    if (variant.index) await client.query(indexdef);
    await client.query('select regen.compact_gap()');
    await client.query('vacuum analyze regen._items, regen._gap_deltas, regen._gap_counts, regen._embeddings');
  } else if (variant.target === 'naive') {
    await client.query('truncate naive');
    await client.query('insert into naive (id) select unnest($1::bigint[])', [variant.rows.map((r) => r.rowId)]);
    await client.query('drop index if exists naive_embedding_hnsw');
    if (variant.index) await client.query('create index naive_embedding_hnsw on naive using hnsw (embedding vector_cosine_ops)');
    await client.query('vacuum analyze naive');
  }
  await client.query('checkpoint');
}

async function verify(client: pg.Client, variant: Variant): Promise<void> {
  const n = variant.rows.length;
  if (variant.target === 'store') {
    const { rows: [r] } = await client.query<{ stored: number; current: number }>(
      `select (select count(*) from regen._embeddings)::int as stored,
              (select count(*) from regen._items where embedded_hash = content_hash)::int as current`);
    check(r!.stored === n, `${describe(variant)}: ${r!.stored} vectors stored, expected ${n}`);
    check(r!.current === (variant.settles ? n : 0), `${describe(variant)}: ${r!.current} items current, expected ${variant.settles ? n : 0}`);
  } else if (variant.target === 'naive') {
    const { rows: [r] } = await client.query<{ n: number }>('select count(embedding)::int as n from naive');
    check(r!.n === n, `${describe(variant)}: ${r!.n} vectors stored, expected ${n}`);
  }
}

function mainTable(variants: Variant[], samples: Map<Variant, number[]>, rounds: number): Table {
  return {
    title: `Write-back throughput, ${fmtInt(DIMENSIONS)} dimensions (vectors/s, median of ${rounds} runs)`,
    headers: ['write path', 'vectors per statement', 'HNSW index', 'vectors per run', 'vectors/s', 'slowest – fastest run'],
    rows: variants.filter((v) => !v.breakdown).map((v) => {
      const s = samples.get(v)!;
      return [v.path, v.perStatement, v.index ? 'yes' : 'no', fmtInt(v.rows.length), fmtRate(median(s)),
        `${fmtRate(Math.min(...s))} – ${fmtRate(Math.max(...s))}`];
    }),
    notes: ['"triggers off": session_replication_role = replica, so the store\'s settle trigger does not run (items stay unsettled).'],
  };
}

function breakdownTable(variants: Variant[], samples: Map<Variant, number[]>): Table {
  return {
    title: `Where write_embeddings spends its time (batch ${DEFAULT_BATCH}, no index; each step adds work to the one above)`,
    headers: ['step', 'vectors/s', 'µs per vector'],
    rows: variants.filter((v) => v.breakdown).map((v) => {
      const r = median(samples.get(v)!);
      return [v.path, fmtRate(r), (1e6 / r).toFixed(0)];
    }),
    notes: ['The plain insert skips write_embeddings\' checks and row locks but joins regen._items for tenant and text hash, as it does.'],
  };
}

function describe(v: Variant): string {
  return `${v.path} (${v.perStatement === 'all' ? 'one statement' : `${v.perStatement} per statement`}, ${v.index ? 'with' : 'no'} index)`;
}

function toItem(row: EmbeddingRow): VectorItem {
  return { rowId: row.rowId, chunkNo: row.chunkNo, contentHash: row.contentHash, embedding: row.embedding };
}

function toBatches<T>(list: T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < list.length; i += size) out.push(list.slice(i, i + size));
  return out;
}

/** As src/store.ts does before encoding: every vector of a batch in one Float32Array. */
function flatten(rows: EmbeddingRow[]): Float32Array {
  const flat = new Float32Array(rows.length * DIMENSIONS);
  rows.forEach((r, i) => flat.set(r.embedding, i * DIMENSIONS));
  return flat;
}

/** pg-copy-streams is optional here: without it the COPY variants are skipped, not the benchmark. */
async function loadCopyFrom(): Promise<CopyFrom | undefined> {
  const name = 'pg-copy-streams'; // a variable, so the type checker does not require the package
  try {
    const module = (await import(name)) as { from?: CopyFrom; default?: { from?: CopyFrom } };
    return module.from ?? module.default?.from;
  } catch {
    return undefined;
  }
}
