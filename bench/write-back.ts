// A. Write-back throughput: regen.write_embeddings() against the naive one-UPDATE-per-row loop
// and the binary COPY ceiling, with and without the HNSW index, 1,536 dimensions.
// Every variant writes the same vectors into an emptied store; variants run in rotation (each
// round runs every variant once) so a noisy machine hurts them alike; the median round counts.
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import pgvector from 'pgvector';
import { prepareInputs, writeEmbeddings, type VectorItem } from '../src/store.ts';
import { binaryCopy, COPY_COLUMNS, float4ArrayParam, vectorArrayParam, type EmbeddingRow } from './pg-binary.ts';
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
const SIZES = { full: { rows: 20_000, subset: 1_000, rounds: 3 }, quick: { rows: 2_000, subset: 200, rounds: 3 } };

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
  /** Set on the breakdown's variants: the wire format of the vectors, and the step it measures. */
  breakdown?: { format: string; step: string };
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

interface Setup {
  ids: { version_id: number; source_id: number };
  /** pgvector's type and cosine operator class, schema-qualified: it may live off the search_path. */
  vector: { name: string; cosine: string; oid: number };
  indexName: string;
  indexes: { store: string; naive: string };
  rows: EmbeddingRow[];
  subset: EmbeddingRow[];
  prepareRate: number;
}

async function measure(client: pg.Client, size: typeof SIZES.full, log: (line: string) => void, origin: string): Promise<BenchReport> {
  const info = await serverInfo(client);
  const copyFrom = await loadCopyFrom();
  const setup = await prepareSource(client, size, log);
  const variants = [
    ...mainVariants(client, setup, copyFrom, info.superuser),
    ...breakdownVariants(client, setup, info.superuser),
  ];
  const samples = new Map<Variant, number[]>(variants.map((v) => [v, []]));
  for (let round = 1; round <= size.rounds; round++) {
    for (const variant of variants) {
      await reset(client, variant, setup);
      const ms = await timed(() => variant.write());
      await verify(client, variant);
      const rate = variant.rows.length / (ms / 1000);
      samples.get(variant)!.push(rate);
      log(`round ${round}/${size.rounds}  ${describe(variant)}: ${fmtRate(rate)} vectors/s`);
    }
  }

  const lines = [
    `database: ${origin}`,
    `${fmtInt(size.rows)} source rows of one short text each (one chunk), vectors of ${fmtInt(DIMENSIONS)} float4 made before timing`,
    `without the index every variant writes all ${fmtInt(size.rows)} vectors; with the HNSW index, and for the naive loop either way, ` +
      `each run writes the first ${fmtInt(size.subset)} (a rate, so comparable; kept this small so the whole benchmark stays ` +
      `within about 15 minutes on a 2-core machine; HNSW inserts slow down as the graph grows, so with-index rates are for an ` +
      `index of at most ${fmtInt(size.subset)} vectors)`,
    `${size.rounds} rounds, each running every variant once in turn; each run starts from an empty store ` +
      '(truncate, index dropped or recreated empty, vacuum, checkpoint); the figure is the median round',
    `prepare_inputs (batches of ${PREPARE_BATCH}, not part of the write times): ${fmtRate(setup.prepareRate)} rows/s`,
  ];
  if (!copyFrom) lines.push('COPY not measured: the package pg-copy-streams is not installed');
  if (!info.superuser) lines.push('triggers-off variants not measured: session_replication_role needs a superuser');
  const tables = [mainTable(variants, samples, size.rounds), breakdownTable(variants, samples)];
  const targets = judge(variants, samples, tables[0]!);
  tables.push(renderTargets(targets));
  for (const table of tables) console.log(`\n${renderTable(table)}`);

  const figures: Record<string, number> = { 'prepare_inputs rows/s': setup.prepareRate };
  for (const v of variants) figures[`${describe(v)} vectors/s`] = median(samples.get(v)!);
  return { title: 'A. Write-back throughput', setup: lines, tables, targets, figures, server: info };
}

/** The source, its version and registration, every row prepared (timed), and the vectors to write. */
async function prepareSource(client: pg.Client, size: typeof SIZES.full, log: (line: string) => void): Promise<Setup> {
  log(`source table with ${fmtInt(size.rows)} rows`);
  await client.query('create table docs (id bigint primary key, tenant text, body text)');
  await client.query(
    `insert into docs select g, 'tenant-' || (g % 10), 'document ' || g || ': ' || md5(g::text) from generate_series(1, $1::int) g`,
    [size.rows]);
  await client.query(`select regen.create_version($1, 'bench-model', $2)`, [TAG, DIMENSIONS]);
  await client.query(`select regen.register_source('docs', 'docs', 'id', 'body', 'tenant', null, 1, null, $1)`, [TAG]);
  const { rows: [ids] } = await client.query<Setup['ids']>(
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

  const { rows: [vector] } = await client.query<Setup['vector']>(
    `select format('%I.vector', n.nspname) as name, format('%I.vector_cosine_ops', n.nspname) as cosine, t.oid::int as oid
       from pg_type t join pg_extension e on e.extname = 'vector' join pg_namespace n on n.oid = e.extnamespace
      where t.typname = 'vector' and t.typnamespace = e.extnamespace`);
  await client.query(`create table naive (id bigint primary key, embedding ${vector!.name}(${DIMENSIONS}))`);
  const indexes = { store: index.indexdef, naive: `create index naive_embedding_hnsw on naive using hnsw (embedding ${vector!.cosine})` };
  return { ids: ids!, vector: vector!, indexName, indexes, rows, subset: rows.slice(0, size.subset), prepareRate };
}

/** The three write paths, each without and with the HNSW index. */
function mainVariants(client: pg.Client, setup: Setup, copyFrom: CopyFrom | undefined, superuser: boolean): Variant[] {
  const variants: Variant[] = [];
  for (const withIndex of [false, true]) {
    const written = withIndex ? setup.subset : setup.rows;
    // A batch larger than the run is one statement of the whole run: measured once, and said so.
    for (const batch of new Set(BATCHES.map((size) => Math.min(size, written.length)))) {
      const batches = toBatches(written, batch).map((b) => b.map(toItem));
      variants.push({
        path: 'regen.write_embeddings', perStatement: fmtInt(batch), index: withIndex, rows: written, target: 'store', settles: true,
        write: () => writeAll(client, batches),
      });
    }
    if (copyFrom) {
      const copy = () => copyRows(client, copyFrom, written, setup.ids);
      variants.push({ path: 'binary COPY', perStatement: 'all', index: withIndex, rows: written, target: 'store', settles: true, write: copy });
      if (superuser) {
        variants.push({
          path: 'binary COPY, triggers off', perStatement: 'all', index: withIndex, rows: written, target: 'store', settles: false,
          write: () => withoutTriggers(client, copy),
        });
      }
    }
    variants.push({
      path: 'naive UPDATE loop', perStatement: '1 row', index: withIndex, rows: setup.subset, target: 'naive', settles: false,
      write: () => naiveLoop(client, setup.subset),
    });
  }
  return variants;
}

/**
 * Where the write time goes (default batch, no index), for both wire formats a batch of vectors can
 * travel in: each step adds one part of the work, up to the plain insert write_embeddings does;
 * the call itself (with its checks and row locks, in whatever format src/store.ts sends) closes it.
 */
function breakdownVariants(client: pg.Client, setup: Setup, superuser: boolean): Variant[] {
  const rows = setup.rows;
  const batches = toBatches(rows, DEFAULT_BATCH);
  const sql = (text: string) => text.replaceAll('$version', String(setup.ids.version_id))
    .replaceAll('$source', String(setup.ids.source_id)).replaceAll('$vector', setup.vector.name);
  const formats = [
    { name: FLOAT4, encode: (b: EmbeddingRow[]) => float4ArrayParam(b.map((r) => r.embedding)), type: 'real[]', insert: UNNEST_INSERT,
      slice: `select count(*) from unnest($1::text[], $2::integer[], $3::bytea[]) with ordinality u(row_id, chunk_no, content_hash, ord)
               where (($4::real[])[(ord - 1) * ${DIMENSIONS} + 1 : ord * ${DIMENSIONS}])::$vector is not null` },
    { name: VECTOR, encode: (b: EmbeddingRow[]) => vectorArrayParam(b.map((r) => r.embedding), setup.vector.oid), type: '$vector[]',
      insert: VECTOR_INSERT, slice: undefined },
  ];
  const variants: Variant[] = [];
  for (const format of formats) {
    const step = (name: string, target: Variant['target'], settles: boolean, write: () => Promise<void>) => variants.push(
      { path: `${name} (${format.name})`, perStatement: fmtInt(DEFAULT_BATCH), index: false, rows, target, settles, write,
        breakdown: { format: format.name, step: name } });
    const params = (batch: EmbeddingRow[]) =>
      [batch.map((r) => r.rowId), batch.map((r) => r.chunkNo), batch.map((r) => r.contentHash), format.encode(batch)];
    const each = (text: string) => async () => {
      for (const batch of batches) await client.query(sql(text), params(batch));
    };
    step('client: encode the batch', 'none', false, async () => {
      for (const batch of batches) params(batch);
    });
    step('+ send it, select its sizes', 'none', false, each(
      `select cardinality($1::text[]) + cardinality($2::integer[]) + cardinality($3::bytea[]) + cardinality($4::${format.type})`));
    if (format.slice) step('+ cut each vector out and cast it to vector', 'none', false, each(format.slice));
    if (superuser) step('+ plain insert … select unnest, triggers off', 'store', false, () => withoutTriggers(client, each(format.insert)));
    step('+ settle trigger on', 'store', true, each(format.insert));
  }
  if (superuser) {
    const items = batches.map((b) => b.map(toItem));
    variants.push({
      path: 'regen.write_embeddings, triggers off', perStatement: fmtInt(DEFAULT_BATCH), index: false, rows, target: 'store',
      settles: false, write: () => withoutTriggers(client, () => writeAll(client, items)),
      breakdown: { format: 'as src/store.ts sends it', step: 'regen.write_embeddings, triggers off' },
    });
  }
  return variants;
}

const FLOAT4 = 'one float4[], cut in SQL';
const VECTOR = 'binary vector[]';

/** The targets of the brief, as ratios of medians; like with like (same index state). */
function judge(variants: Variant[], samples: Map<Variant, number[]>, main: Table): Target[] {
  const rate = (path: string, perStatement: string, withIndex: boolean) => {
    const variant = variants.find((v) => v.path === path && v.perStatement === perStatement && v.index === withIndex && !v.breakdown);
    return variant && median(samples.get(variant)!);
  };
  const targets: Target[] = [];
  for (const withIndex of [false, true]) {
    const naive = rate('naive UPDATE loop', '1 row', withIndex);
    const run = variants.find((v) => v.path === 'regen.write_embeddings' && v.index === withIndex)!.rows.length;
    const ours = rate('regen.write_embeddings', fmtInt(Math.min(DEFAULT_BATCH, run)), withIndex);
    if (naive && ours) {
      targets.push({
        name: `write_embeddings (batch ${fmtInt(Math.min(DEFAULT_BATCH, run))}) vs the naive loop, ${withIndex ? 'with' : 'without'} the HNSW index`,
        measured: `${(ours / naive).toFixed(1)}× faster`, target: '≥ 10×', met: ours / naive >= 10,
      });
    }
  }
  const ours = rate('regen.write_embeddings', fmtInt(DEFAULT_BATCH), false);
  const copy = rate('binary COPY', 'all', false);
  if (copy && ours) {
    targets.push({
      name: `binary COPY (store triggers on) vs write_embeddings (batch ${DEFAULT_BATCH}), without the index`,
      measured: `COPY ${(copy / ours).toFixed(2)}× faster`, target: '≤ 2×', met: copy / ours <= 2,
    });
  }
  const bare = rate('binary COPY, triggers off', 'all', false);
  if (bare && ours) main.notes!.push(`Bare ceiling (COPY with triggers off) is ${(bare / ours).toFixed(2)}× write_embeddings (batch ${DEFAULT_BATCH}, no index).`);
  return targets;
}

// The insert write_embeddings does, without its checks (length, NaN, duplicates, staleness) and row locks.
const UNNEST_INSERT = `
  insert into regen._embeddings ${COPY_COLUMNS}
  select $version, $source, u.row_id, u.chunk_no, it.tenant, u.content_hash, it.chunk_hashes[u.chunk_no],
         (($4::real[])[(u.ord - 1) * ${DIMENSIONS} + 1 : u.ord * ${DIMENSIONS}])::$vector
  from unnest($1::text[], $2::integer[], $3::bytea[]) with ordinality u(row_id, chunk_no, content_hash, ord)
  join regen._items it on it.source_id = $source and it.version_id = $version and it.row_id = u.row_id`;
const VECTOR_INSERT = `
  insert into regen._embeddings ${COPY_COLUMNS}
  select $version, $source, u.row_id, u.chunk_no, it.tenant, u.content_hash, it.chunk_hashes[u.chunk_no], u.embedding
  from unnest($1::text[], $2::integer[], $3::bytea[], $4::$vector[]) u(row_id, chunk_no, content_hash, embedding)
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
async function reset(client: pg.Client, variant: Variant, { indexName, indexes }: Setup): Promise<void> {
  if (variant.target === 'store') {
    await client.query('truncate regen._embeddings'); // its trigger un-settles every item, as wanted
    await client.query('truncate regen._cache');
    await client.query(`drop index if exists regen.${pg.escapeIdentifier(indexName)}`);
    if (variant.index) await client.query(indexes.store);
    await client.query('select regen.compact_gap()');
    await client.query('vacuum analyze regen._items, regen._gap_deltas, regen._gap_counts, regen._embeddings');
  } else if (variant.target === 'naive') {
    await client.query('truncate naive');
    await client.query('insert into naive (id) select unnest($1::bigint[])', [variant.rows.map((r) => r.rowId)]);
    await client.query('drop index if exists naive_embedding_hnsw');
    if (variant.index) await client.query(indexes.naive);
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
  const micros = (v: Variant | undefined) => (v ? (1e6 / median(samples.get(v)!)).toFixed(0) : '—');
  const parts = variants.filter((v) => v.breakdown && v.breakdown.format !== 'as src/store.ts sends it');
  const steps = [...new Set(parts.map((v) => v.breakdown!.step))];
  const cell = (step: string, format: string) => micros(parts.find((v) => v.breakdown!.step === step && v.breakdown!.format === format));
  const whole = variants.find((v) => v.path === 'regen.write_embeddings' && v.perStatement === fmtInt(DEFAULT_BATCH) && !v.index);
  const off = variants.find((v) => v.path === 'regen.write_embeddings, triggers off');
  return {
    title: `Where the write time goes (µs per vector, batch ${DEFAULT_BATCH}, no index; each step adds work to the one above)`,
    headers: ['step', `vectors as ${FLOAT4}`, `vectors as ${VECTOR}`],
    rows: steps.map((step) => [step, cell(step, FLOAT4), cell(step, VECTOR)]),
    notes: [
      `regen.write_embeddings itself, as src/store.ts sends the vectors: ${micros(whole)} µs per vector` +
        (off ? ` (${micros(off)} with triggers off)` : '') + '; beyond the plain insert it judges every item and locks the items first.',
      'The plain insert joins regen._items for tenant and text hash, as write_embeddings does.',
    ],
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
