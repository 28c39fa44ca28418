// For the search benchmark (bench/search.ts): its data, tenant sizes drawn from Zipf's law and
// clustered synthetic vectors, every one of them recomputable from its row id and the seed (so the
// benchmark never holds the whole corpus in memory, and a query can start from any row); the
// tenant-size buckets; and the layout of its section of RESULTS.md (tables, targets, setup lines).
import { mulberry32 } from '../src/prng.ts';
import { fmtInt, fmtMs, fmtRate, percentile, type Table, type Target } from './support.ts';

export interface CorpusShape {
  vectors: number;
  tenants: number;
  dimensions: number;
  /** Zipf exponent: the tenant of rank r holds a share proportional to r^-s. */
  zipf: number;
}

// How the vectors are made (unit vectors throughout; noise is an isotropic Gaussian direction):
//   GLOBAL_TOPICS shared topics; each tenant has 1 + floor(log2(size)) topics of its own, each a
//   global topic moved by TOPIC_SPREAD; a row is one of its tenant's topics moved by ROW_SPREAD;
//   a query is a row of the tenant moved by QUERY_SPREAD. Cosine similarity, roughly: row to its
//   topic 0.71, two rows of one tenant topic 0.5, rows of two tenants sharing a global topic 0.3.
export const GLOBAL_TOPICS = 64;
export const TOPIC_SPREAD = 0.8;
export const ROW_SPREAD = 1.0;
export const QUERY_SPREAD = 0.6;
export const SEED = 20_261_122;

export interface Corpus {
  shape: CorpusShape;
  /** Vectors per tenant, largest first; tenant i is named tenantName(i). */
  sizes: number[];
  /** Tenant index of each row id (ids 1..vectors; index 0 unused). */
  tenantOf: Int32Array;
  /** Row ids of each tenant, ascending. */
  rowsOf: number[][];
  /** Topics per tenant. */
  topicsOf: number[];
  /** The row's vector, recomputed from its id. */
  vector(rowId: number): Float32Array;
  /** A query near the tenant's data: a random row of the tenant, moved by QUERY_SPREAD. */
  query(tenant: number, random: () => number): { nearRow: number; vector: Float32Array };
}

export function tenantName(index: number): string {
  return `t${String(index + 1).padStart(4, '0')}`;
}

/**
 * Tenant sizes summing to `total`: tenant of rank r gets round(total · r^-s / H), at least 1, and
 * the largest takes what rounding left over. Largest first.
 */
export function zipfSizes(total: number, tenants: number, s: number): number[] {
  const weights = Array.from({ length: tenants }, (_, i) => (i + 1) ** -s);
  const h = weights.reduce((a, b) => a + b, 0);
  const sizes = weights.map((w) => Math.max(1, Math.round((total * w) / h)));
  sizes[0]! += total - sizes.reduce((a, b) => a + b, 0);
  if (sizes[0]! < sizes[1]!) throw new Error(`zipfSizes(${total}, ${tenants}, ${s}): rounding left the largest tenant smaller than the second`);
  return sizes;
}

export function makeCorpus(shape: CorpusShape): Corpus {
  const { vectors, tenants, dimensions } = shape;
  const sizes = zipfSizes(vectors, tenants, shape.zipf);
  const random = mulberry32(SEED);

  // Rows of all tenants interleaved in id order (a seeded shuffle), as tenants that write at the
  // same time would leave them in the table: a tenant's rows are spread over the heap.
  const slots = new Int32Array(vectors);
  for (let t = 0, at = 0; t < tenants; t++) for (let i = 0; i < sizes[t]!; i++) slots[at++] = t;
  for (let i = vectors - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    const swap = slots[i]!;
    slots[i] = slots[j]!;
    slots[j] = swap;
  }
  const tenantOf = new Int32Array(vectors + 1);
  const rowsOf: number[][] = sizes.map(() => []);
  for (let id = 1; id <= vectors; id++) {
    tenantOf[id] = slots[id - 1]!;
    rowsOf[slots[id - 1]!]!.push(id);
  }

  const global = Array.from({ length: GLOBAL_TOPICS }, () => normalise(gaussianVector(dimensions, random)));
  const topics: Float32Array[][] = sizes.map((size) =>
    Array.from({ length: 1 + Math.floor(Math.log2(size)) }, () =>
      normalise(moved(global[Math.floor(random() * GLOBAL_TOPICS)]!, TOPIC_SPREAD, random))));

  const vector = (rowId: number) => {
    const rowRandom = mulberry32(SEED ^ Math.imul(rowId, 0x9e3779b1));
    const own = topics[tenantOf[rowId]!]!;
    return normalise(moved(own[Math.floor(rowRandom() * own.length)]!, ROW_SPREAD, rowRandom));
  };
  return {
    shape, sizes, tenantOf, rowsOf, topicsOf: topics.map((t) => t.length), vector,
    query(tenant, queryRandom) {
      const rows = rowsOf[tenant]!;
      const nearRow = rows[Math.floor(queryRandom() * rows.length)]!;
      return { nearRow, vector: normalise(moved(vector(nearRow), QUERY_SPREAD, queryRandom)) };
    },
  };
}

/** `base` plus a random direction of length `spread`. */
function moved(base: Float32Array, spread: number, random: () => number): Float32Array {
  const noise = normalise(gaussianVector(base.length, random));
  const out = new Float32Array(base.length);
  for (let i = 0; i < base.length; i++) out[i] = base[i]! + spread * noise[i]!;
  return out;
}

/** Independent standard normal coordinates (Marsaglia's polar method, both deviates of each pair used). */
function gaussianVector(dimensions: number, random: () => number): Float32Array {
  const out = new Float32Array(dimensions);
  for (let i = 0; i < dimensions; i += 2) {
    let u: number;
    let v: number;
    let s: number;
    do {
      u = 2 * random() - 1;
      v = 2 * random() - 1;
      s = u * u + v * v;
    } while (s >= 1 || s === 0);
    const f = Math.sqrt((-2 * Math.log(s)) / s);
    out[i] = u * f;
    if (i + 1 < dimensions) out[i + 1] = v * f;
  }
  return out;
}

function normalise(v: Float32Array): Float32Array {
  let sum = 0;
  for (let i = 0; i < v.length; i++) sum += v[i]! * v[i]!;
  const norm = Math.sqrt(sum);
  for (let i = 0; i < v.length; i++) v[i] = v[i]! / norm;
  return v;
}

/** A vector as pgvector's text input, '[x,y,...]', the way src/search.ts sends a query. */
export function vectorText(v: Float32Array): string {
  return `[${Array.from(v).join(',')}]`;
}

// ---------------------------------------------------------------------------------------------
// Tenant-size buckets

export interface Bucket {
  label: string;
  /** Tenants (indexes) whose size falls in it. */
  tenants: number[];
  /** Smallest and largest tenant size in it. */
  low: number;
  high: number;
  vectors: number;
}

const RANGES: Array<[number, number]> = [[1, 9], [10, 99], [100, 999], [1_000, 9_999], [10_000, Infinity]];

/** The size buckets that hold at least one tenant, and the single largest tenant as a bucket of its own. */
export function buckets(sizes: number[]): Bucket[] {
  const make = (label: string, tenants: number[]): Bucket => ({
    label, tenants,
    low: Math.min(...tenants.map((t) => sizes[t]!)), high: Math.max(...tenants.map((t) => sizes[t]!)),
    vectors: tenants.reduce((n, t) => n + sizes[t]!, 0),
  });
  const out: Bucket[] = [];
  for (const [lo, hi] of RANGES) {
    const tenants = sizes.map((_, t) => t).filter((t) => sizes[t]! >= lo && sizes[t]! <= hi);
    const label = hi === Infinity ? `≥ ${lo.toLocaleString('en-US')}` : `${lo.toLocaleString('en-US')}–${hi.toLocaleString('en-US')}`;
    if (tenants.length) out.push(make(label, tenants));
  }
  out.push(make(`largest (${tenantName(0)})`, [0]));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Figures of one method on one bucket

export interface Sample {
  /** Client-side wall time of the search statement, ms. */
  ms: number;
  /** Client-side wall time of begin, set_tenant, the search and commit, ms: the sum of the four statements, the path probes excluded. */
  transactionMs: number;
  rows: number;
  /** Rows it should return: min(k, tenant size). */
  expected: number;
  /** |returned ∩ exact top-k| / |exact top-k|. */
  recall: number;
  /** Scans of the version's HNSW index and of the scope b-tree during the search statement (pg_stat_get_xact_numscans). */
  hnswScans: number;
  /** Scans of tenant indexes (regen.tenant_index_plan) in the search's transaction. */
  tenantScans: number;
  scopeScans: number;
}

export function mean(values: number[]): number {
  return values.reduce((a, b) => a + b, 0) / values.length;
}

export function recallOf(returned: string[], truth: string[]): number {
  if (truth.length === 0) return 1;
  const want = new Set(truth);
  return returned.filter((id) => want.has(id)).length / truth.length;
}

// ---------------------------------------------------------------------------------------------
// What one run measured

export const TAG = 'bench-search@1';
export const K = 10;
export const LOAD_BATCH = 2_000;
export const TARGET = { p99Ms: 50, ratio: 2, recallLargest: 0.98 };

/** Which path search_scoped takes, as the report needs it. */
export interface Paths {
  /** regen.search_exact_max_rows in effect: scopes up to it are searched exactly. */
  exactMax: number;
  /** The version's HNSW index. */
  indexName: string;
}

export interface Size extends CorpusShape {
  /** Timed queries per bucket, warm-up queries before them, and queries per row of the sweep. */
  queries: number;
  warmup: number;
  sweep: number;
  /** regen.search_exact_max_rows for the run; null: the function's default. */
  exactMax: number | null;
  /** Tenants of at least this many vectors get an HNSW index of their own before the queries. */
  tenantIndexMin: number;
}

export type Method = 'ours' | 'naive';
export const METHODS: Method[] = ['ours', 'naive'];

export interface Query {
  tenant: number;
  text: string;
  /** Row ids of the exact top-k, nearest first. */
  truth: string[];
  truthMs: number;
}

export interface BucketResult {
  bucket: Bucket;
  samples: Record<Method, Sample[]>;
  /** Rows returned by either method that belong to another tenant. */
  foreign: Record<Method, number>;
  naivePlan: { plan: string; unforced: string };
  truthMs: number[];
}

export interface Build {
  corpusMs: number;
  vectorMs: number;
  docsMs: number;
  registerMs: number;
  prepareMs: number;
  writeMs: number;
  indexMs: number;
  vacuumMs: number;
  indexBytes: number;
  tableBytes: number;
  indexDef: string;
  tenantIndexes: number;
  tenantIndexMin: number;
  tenantIndexMs: number;
}

export interface Settings {
  exactMax: number;
  exactMaxSource: string;
  efDefault: number;
  tenantEfDefault: number;
  naiveEf: string;
  naiveIterative: string;
  sharedBuffers: string;
}

// ---------------------------------------------------------------------------------------------
// Report: tables, targets and the setup lines of the section

export const pct = (samples: Sample[], p: number) => percentile(samples.map((s) => s.ms), p);

export function buildTable(b: Build, corpus: Corpus): Table {
  const n = corpus.shape.vectors;
  const s = (ms: number) => (ms / 1000).toFixed(1);
  return {
    title: 'Building the data (seconds)',
    headers: ['step', 'time', 'rate'],
    rows: [
      ['tenant sizes and topics, in Node', s(b.corpusMs), ''],
      ['vectors computed in Node (seeded), as they are written', s(b.vectorMs), `${fmtRate(n / (b.vectorMs / 1000))} vectors/s`],
      ['docs table: insert … unnest, analyze', s(b.docsMs), ''],
      ['regen.register_source (captures the existing rows)', s(b.registerMs), ''],
      [`regen.prepare_inputs, batches of ${fmtInt(LOAD_BATCH)}, no HNSW index`, s(b.prepareMs), `${fmtRate(n / (b.prepareMs / 1000))} rows/s`],
      [`regen.write_embeddings, batches of ${fmtInt(LOAD_BATCH)}, no HNSW index`, s(b.writeMs), `${fmtRate(n / (b.writeMs / 1000))} vectors/s`],
      ['HNSW index build (maintenance_work_mem 2GB, max_parallel_maintenance_workers 1)', s(b.indexMs), `${fmtRate(n / (b.indexMs / 1000))} vectors/s`],
      ['vacuum analyze regen._embeddings', s(b.vacuumMs), ''],
    ],
    notes: [
      `Index: \`${b.indexDef}\` (the definition regen.create_version made, dropped before loading and recreated as it was); ` +
        `${fmtInt(Math.round(b.indexBytes / 2 ** 20))} MiB, table ${fmtInt(Math.round(b.tableBytes / 2 ** 20))} MiB.`,
    ],
  };
}

export function sizeTable(results: BucketResult[], ctx: Paths): Table {
  return {
    title: 'Tenant-size buckets',
    headers: ['bucket (vectors per tenant)', 'tenants', 'sizes', 'vectors in bucket', 'queries', 'search_scoped path by size',
      'exact top-10 by brute force, p50 ms (owner)'],
    rows: results.map((r) => [
      r.bucket.label, fmtInt(r.bucket.tenants.length), `${fmtInt(r.bucket.low)}–${fmtInt(r.bucket.high)}`, fmtInt(r.bucket.vectors),
      fmtInt(r.samples.ours.length),
      r.bucket.high <= ctx.exactMax ? 'exact' : r.bucket.low > ctx.exactMax ? 'approximate' : 'mixed',
      fmtMs(percentile(r.truthMs, 50)),
    ]),
    notes: [`Each query picks a tenant of the bucket uniformly at random, then a random row of that tenant, and moves it by a random ` +
      `direction of length ${QUERY_SPREAD} (unit vectors): a query near the tenant's data.`],
  };
}

export function latencyTable(results: BucketResult[]): Table {
  const rows: string[][] = [];
  for (const r of results) {
    const ours = r.samples.ours;
    const naive = r.samples.naive;
    for (const method of METHODS) {
      const s = r.samples[method];
      const rowCounts = s.map((x) => x.rows);
      rows.push([
        r.bucket.label, method === 'ours' ? 'regen.search_scoped' : 'naive (HNSW)',
        fmtMs(pct(s, 50)), fmtMs(pct(s, 95)), fmtMs(pct(s, 99)),
        method === 'ours' ? `${(pct(ours, 50) / pct(naive, 50)).toFixed(2)}×` : '',
        fmtMs(percentile(s.map((x) => x.transactionMs), 50)),
        mean(rowCounts).toFixed(1), `${Math.min(...rowCounts)}`,
        `${s.filter((x) => x.rows < K).length}`,
        mean(s.map((x) => x.recall)).toFixed(3), Math.min(...s.map((x) => x.recall)).toFixed(1),
      ]);
    }
  }
  return {
    title: `Latency (ms), rows returned and recall@${K}, per bucket, both methods in one run`,
    headers: ['bucket', 'method', 'p50', 'p95', 'p99', 'p50 ours / naive', 'transaction p50', 'rows (mean)', 'rows (min)',
      `queries with < ${K} rows`, `recall@${K}`, 'worst query recall'],
    rows,
    notes: [
      'p50/p95/p99: client-side wall time of the search statement alone, on a warm connection of the application role, inside ' +
        '`begin; select regen.set_tenant($1); <search>; commit`. Transaction p50: begin + set_tenant + search + commit, the same way ' +
        '(the path probes, two statements around the search, excluded).',
      `recall@${K}: the share of the exact top-${K} (min(${K}, tenant size) rows; brute force as the owner) that came back, mean over the queries.`,
    ],
  };
}

export function pathTable(results: BucketResult[], ctx: Paths): Table {
  return {
    title: 'Which path each search took (counted per query with pg_stat_get_xact_numscans, in its transaction)',
    headers: ['bucket', 'search_scoped: exact', 'approximate', 'approximate, then exact (too few rows)', 'naive: scanned the HNSW index',
      'naive plan (EXPLAIN ANALYZE, first query)', 'planner\'s choice with sorts allowed', 'rows of another tenant returned (ours / naive)'],
    rows: results.map((r) => {
      const ours = r.samples.ours;
      const approx = ours.filter((s) => s.hnswScans + s.tenantScans > 0);
      const own = approx.filter((s) => s.tenantScans > 0).length;
      return [
        r.bucket.label, fmtInt(ours.length - approx.length),
        `${fmtInt(approx.filter((s) => s.scopeScans < 2).length)}${own ? ` (${fmtInt(own)} through the tenant's index)` : ''}`,
        fmtInt(approx.filter((s) => s.scopeScans >= 2).length),
        `${r.samples.naive.filter((s) => s.hnswScans === 1).length} / ${r.samples.naive.length}`, r.naivePlan.plan, r.naivePlan.unforced,
        `${r.foreign.ours} / ${r.foreign.naive}`,
      ];
    }),
    notes: [
      `A search_scoped query is approximate when it scanned the HNSW index ${ctx.indexName} or a tenant's own index ` +
        `(${ctx.indexName}_t…); it counts the scope first ` +
        '(one scan of regen._embeddings_scope) and reads it again only on the exact path, so an approximate search that also ' +
        'scanned the scope twice fell back to the exact path.',
      'The naive session runs with enable_sort = off: with the scope b-tree of sql/0008_search.sql present, the planner would ' +
        'otherwise read some tenants through the b-tree and sort them (last-but-one column), which is exact, not the HNSW ' +
        'baseline. The naive query reads the same table under the same row-level security.',
    ],
  };
}

export function judge(results: BucketResult[], ctx: Paths): Target[] {
  const targets: Target[] = [];
  const recall = (s: Sample[]) => mean(s.map((x) => x.recall));
  for (const r of results) {
    if (r.bucket.high <= ctx.exactMax) {
      const got = recall(r.samples.ours);
      const ours = r.samples.ours;
      const path = ours.every((x) => x.hnswScans + x.tenantScans === 0) ? 'exact path'
        : ours.every((x) => x.tenantScans > 0) ? 'through the tenant\'s own index' : 'exact and approximate paths';
      targets.push({ name: `recall@${K}, bucket ${r.bucket.label} (${path})`, measured: got.toFixed(3), target: '1.0', met: got === 1 });
    }
  }
  const largest = results.at(-1)!;
  const got = recall(largest.samples.ours);
  targets.push({ name: `recall@${K}, largest tenant (${fmtInt(largest.bucket.high)} vectors)`, measured: got.toFixed(3),
    target: `≥ ${TARGET.recallLargest}`, met: got >= TARGET.recallLargest });
  for (const r of results) {
    const ratio = pct(r.samples.ours, 50) / pct(r.samples.naive, 50);
    targets.push({ name: `p50 ours / naive, bucket ${r.bucket.label}`, measured: `${ratio.toFixed(2)}×`, target: `≤ ${TARGET.ratio}×`, met: ratio <= TARGET.ratio });
  }
  for (const r of results) {
    const p99 = pct(r.samples.ours, 99);
    targets.push({ name: `p99 search_scoped, bucket ${r.bucket.label}`, measured: `${fmtMs(p99)} ms`, target: `< ${TARGET.p99Ms} ms`, met: p99 < TARGET.p99Ms });
  }
  const short = results.flatMap((r) => r.samples.ours.filter((s) => s.rows < s.expected));
  const foreign = results.reduce((n, r) => n + r.foreign.ours, 0);
  targets.push({ name: `search_scoped returns min(${K}, tenant size) rows`, measured: `${short.length} queries short`, target: '0', met: short.length === 0 });
  targets.push({ name: 'rows of another tenant returned by search_scoped', measured: fmtInt(foreign), target: '0', met: foreign === 0 });
  return targets;
}

export function setupLines(size: Size, quick: boolean, origin: string, corpus: Corpus, build: Build, settings: Settings): string[] {
  const topics = corpus.topicsOf;
  return [
    ...(quick ? [`SMOKE SIZE (--quick): ${fmtInt(size.vectors)} vectors of ${size.dimensions} dimensions over ${size.tenants} tenants; ` +
      'the figures show that the benchmark runs, not how search performs'] : []),
    `database: ${origin}; shared_buffers ${settings.sharedBuffers}`,
    `data: ${fmtInt(size.vectors)} vectors of ${fmtInt(size.dimensions)} dimensions (float4), one per row of a source table ` +
      `docs (id, tenant, body), registered with regen.register_source; version ${TAG}: provider local-hash (never called), ` +
      'distance cosine',
    `tenants: ${fmtInt(size.tenants)}, sizes by Zipf's law with exponent s = ${size.zipf} (rank r holds a share ∝ r^-s, at least 1): ` +
      `largest ${fmtInt(corpus.sizes[0]!)}, then ${corpus.sizes.slice(1, 4).map(fmtInt).join(', ')}, …, smallest ${fmtInt(corpus.sizes.at(-1)!)}; ` +
      "rows of all tenants interleaved in the table (ids assigned in a shuffled order), as tenants writing at once leave them",
    `vectors (seed ${SEED}, unit length, cosine): ${GLOBAL_TOPICS} shared topics; each tenant has 1 + floor(log2(size)) topics ` +
      `(${Math.min(...topics)} to ${Math.max(...topics)}), each a shared topic moved by a random direction of length ${TOPIC_SPREAD}; ` +
      `a row is one of its tenant's topics moved by ${ROW_SPREAD}; so tenants overlap in topic and a global index mixes them`,
    `loading: the version's HNSW index dropped, every row through regen.prepare_inputs and regen.write_embeddings ` +
      `(batches of ${fmtInt(LOAD_BATCH)}; all ${fmtInt(size.vectors)} stored and current, checked), index recreated with its own definition ` +
      `(${(build.indexMs / 1000).toFixed(0)} s), then vacuum analyze`,
    `queries: as an application role (regen.grant_app; row-level security applies), one connection for search_scoped, one for the naive ` +
      `query; ${size.queries} per bucket after ${size.warmup} warm-up, the two methods interleaved per query, alternating which goes first`,
    `tenant indexes: regen.tenant_index_plan(min_rows => ${fmtInt(build.tenantIndexMin)}) run as \`pgregen tenant-indexes\` runs it ` +
      `(CREATE INDEX CONCURRENTLY, maintenance_work_mem 1GB): ${fmtInt(build.tenantIndexes)} tenants of at least ${fmtInt(build.tenantIndexMin)} ` +
      `vectors got an HNSW index of their own, in ${(build.tenantIndexMs / 1000).toFixed(0)} s`,
    `regen.search_scoped(query, ${K}): exact up to regen.search_exact_max_rows = ${fmtInt(settings.exactMax)} vectors in scope ` +
      `(${settings.exactMaxSource}), or up to regen.search_tenant_index_min_rows (default 1,000) for a tenant with its own index; ` +
      `above it an iterative HNSW scan: through the tenant's own index where it has one, with regen.search_tenant_ef_search = ${settings.tenantEfDefault}, ` +
      `else through the version's index with regen.search_ef_search = ${settings.efDefault} (the defaults)`,
    `naive: \`select row_id from regen._embeddings where version_id = V and tenant = $1 order by embedding::vector(${size.dimensions}) ` +
      `<=> $2::vector(${size.dimensions}) limit ${K}\` (the cast expression of the version's HNSW index), hnsw.ef_search ${settings.naiveEf}, ` +
      `hnsw.iterative_scan ${settings.naiveIterative} (the defaults), enable_sort off on its session so the planner takes the HNSW ` +
      'index for every tenant, and plan_cache_mode force_generic_plan so that it never uses a tenant\'s own index (the baseline is one ' +
      'global index); EXPLAIN ANALYZE shows the HNSW index scan and every query was checked to scan it and no tenant index',
    `ground truth: the exact top-${K} by \`order by embedding <=> q\` on the untyped column (no index matches; checked with EXPLAIN), as the owner`,
  ];
}

export function figures(results: BucketResult[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const r of results) {
    for (const method of METHODS) {
      const s = r.samples[method];
      for (const p of [50, 95, 99]) out[`${method} p${p} ms, bucket ${r.bucket.label}`] = pct(s, p);
      out[`${method} recall@${K}, bucket ${r.bucket.label}`] = mean(s.map((x) => x.recall));
      out[`${method} rows, bucket ${r.bucket.label}`] = mean(s.map((x) => x.rows));
    }
    out[`exact brute force p50 ms, bucket ${r.bucket.label}`] = percentile(r.truthMs, 50);
  }
  return out;
}
