// E. Time to first working answer: hot-first against id order. Query popularity follows Zipf
// (s = 1.1) over the documents; the priority expression is correlated with popularity, not equal to
// it. The real rebuild runs twice on fresh data, once hot-first (priority_expression = the
// popularity estimate) and once in id order (priority_expression = -id, ids shuffled relative to
// popularity); from the order in which items became current (regen._embeddings.embedded_at) it
// computes the share of queries whose target already had a current vector, against the share of
// the rebuild done. Writes a table and bench/time-to-answer.png.
//
//   node bench/time-to-answer.ts [--quick]
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { startEmbeddingServer } from '../src/provider-server.ts';
import {
  analyzeItems, createDocs, documentText, dropHnswIndex, fmtInt, gaussian, goalsTable, headerLines, lineChart, log, pct, prng, rebuild,
  registerDocs, startCluster, startWorkerProcess, table as markdownTable, waitForClosedGap, workerEnv,
  type BenchResult, type Cluster, type Goal,
} from './worker-support.ts';

const NAME = 'time-to-answer';
const PNG = fileURLToPath(new URL('./time-to-answer.png', import.meta.url));
const ZIPF_S = 1.1;
const NOISE_SIGMA = 0.5;    // priority = ln(1 / r^1.1) + N(0, 0.5²)
const DIMENSIONS = 64;
const DOC_BYTES = 120;
const WORKER = { REGEN_CONCURRENCY: '4', REGEN_JOBS_PER_FETCH: '8' };  // the defaults, said explicitly
const CHECKPOINTS = [0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1];
const GOAL = { done: 0.15, answerable: 0.9 };
const SIZES = { full: { docs: 100_000 }, quick: { docs: 10_000 } };

interface Order {
  label: string;
  priority: string;
  /** Ranks (1 = most popular) in the order their items became current. */
  ranks: number[];
  /** Index of each item's tie group (one write_embeddings call: same embedded_at), same order. */
  groups: number[];
  /** Milliseconds from the rebuild call to each item becoming current, same order. */
  times: number[];
  rebuildMs: number;
  totalMs: number;
  batches: number;
  exitCode: number | null;
}

export async function run(options: { quick: boolean }): Promise<BenchResult> {
  const n = (options.quick ? SIZES.quick : SIZES.full).docs;
  const say = log(NAME);
  const started = new Date();

  // Documents: popularity rank r (1 = most asked about), id a random permutation of the ranks,
  // priority estimate = -1.1 ln r + Gaussian noise.
  const random = prng(2024);
  const ids = Array.from({ length: n }, (_, i) => i + 1);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [ids[i], ids[j]] = [ids[j]!, ids[i]!];
  }
  const docs = Array.from({ length: n }, (_, i) => ({
    id: ids[i]!, rank: i + 1, popularity: -ZIPF_S * Math.log(i + 1) + NOISE_SIGMA * gaussian(random), body: '' }));
  for (const d of docs) d.body = documentText(d.id, DOC_BYTES, random);
  const weight = Array.from({ length: n + 1 }, (_, r) => (r === 0 ? 0 : r ** -ZIPF_S));
  const total = weight.reduce((a, b) => a + b, 0);
  const spearman = rankCorrelation(docs.map((d) => d.popularity), docs.map((d) => -d.rank));

  const cluster = await startCluster(say);
  const orders: Order[] = [];
  try {
    for (const [label, priority] of [['hot-first', 'popularity'], ['id order', '-id']] as const) {
      orders.push(await measure(cluster, label, priority, docs, say));
    }
  } finally {
    await cluster.stop();
  }

  // Share of queries answerable after the first k items became current, for every k. Items of one
  // tie group (one write_embeddings call) count with the group's mean weight: the expectation over
  // the order within the group, which the database does not record.
  const curve = (ranks: number[], groups?: number[]) => {
    const w = ranks.map((r) => weight[r]! / total);
    if (groups) {
      for (let a = 0; a < w.length;) {
        let b = a;
        while (b < w.length && groups[b] === groups[a]) b++;
        const mean = w.slice(a, b).reduce((x, y) => x + y, 0) / (b - a);
        w.fill(mean, a, b);
        a = b;
      }
    }
    const out = new Float64Array(ranks.length + 1);
    for (let k = 0; k < ranks.length; k++) out[k + 1] = out[k]! + w[k]!;
    return out;
  };
  const at = (c: Float64Array, x: number) => c[Math.round(x * (c.length - 1))]!;
  const measured = orders.map((o) => ({ ...o, curve: curve(o.ranks, o.groups) }));
  const byPriority = curve([...docs].sort((a, b) => b.popularity - a.popularity).map((d) => d.rank));
  const ideal = curve(docs.map((d) => d.rank));
  const hot = measured[0]!;
  const idOrder = measured[1]!;
  const timeTo = (o: (typeof measured)[number], share: number) => {
    const k = o.curve.findIndex((v) => v >= share);
    return k <= 0 ? NaN : o.times[k - 1]! / 1000;
  };

  // The plot: both measured curves, the two computed references dashed, the goal marked.
  const points = (c: Float64Array) => Array.from({ length: 401 }, (_, i) => [i / 400, at(c, i / 400)] as [number, number]);
  await writeFile(PNG, lineChart({
    title: `Time to answer: ${fmtInt(n)} documents, Zipf s=${ZIPF_S} queries`,
    xLabel: 'share of the rebuild done (items current)',
    yLabel: 'share of queries answerable',
    series: [
      { label: 'ideal: popularity order (computed)', color: [150, 150, 150], points: points(ideal), dash: 6, thickness: 2 },
      { label: 'hot-first (measured)', color: [0, 90, 200], points: points(hot.curve), thickness: 3 },
      { label: 'id order (measured)', color: [230, 120, 0], points: points(idOrder.curve), thickness: 3 },
    ],
    marks: [{ x: GOAL.done, y: GOAL.answerable, label: 'goal: 90% at 15%' }],
  }));
  say(`wrote ${PNG}`);

  const goals: Goal[] = [{
    name: `hot-first: queries answerable when ${pct(GOAL.done, 0)} of the rebuild is done`,
    measured: pct(at(hot.curve, GOAL.done)), wanted: `≥ ${pct(GOAL.answerable, 0)}`, met: at(hot.curve, GOAL.done) >= GOAL.answerable,
  }];
  const lines = [
    `## E. Time to first working answer: hot-first vs id order${options.quick ? ' (quick smoke size: not a result)' : ''}`,
    '',
    ...headerLines(started, cluster.machine).map((l) => `- ${l}`),
    '- database: throwaway local cluster (src/local-postgres.ts), a fresh database per run with `create extension vector` and `install()`',
    `- data: ${fmtInt(n)} documents of ${DOC_BYTES} bytes (one chunk each). Query popularity: the document of popularity rank r is the ` +
      `target of a query with probability ∝ 1/r^${ZIPF_S} (Zipf, s = ${ZIPF_S}). Ids are a random permutation of the ranks (seeded).`,
    `- priority estimate (column \`popularity\`): ln(1/r^${ZIPF_S}) + ε, ε ~ Normal(0, ${NOISE_SIGMA}²) independent per document: the ` +
      `estimate is off by a factor e^(${NOISE_SIGMA}) ≈ ${Math.exp(NOISE_SIGMA).toFixed(2)} in popularity at one standard deviation ` +
      `(Spearman correlation with the true popularity: ${spearman.toFixed(3)})`,
    `- runs: (a) hot-first, \`priority_expression => 'popularity'\`; (b) id order, \`priority_expression => '-id'\` (jobs in ascending id, ` +
      'which is random with respect to popularity). Each on a fresh database with the same documents: ' +
      `\`regen.create_version(tag, 'local-hash', ${DIMENSIONS}, settings => '{"send_dimensions": true}')\`, \`regen.register_source(...)\`, ` +
      'the worker started and idle, then `select * from regen.rebuild()` and the clock; done when regen.embedding_gap shows nothing open',
    `- provider: src/provider-server.ts, unthrottled, 0 ms latency, ${DIMENSIONS} dimensions; worker: the real \`pgregen worker\` binary, ` +
      `${Object.entries(WORKER).map(([k, v]) => `${k}=${v}`).join(', ')} (the defaults: 2 fetch loops of 8 jobs × 64 rows), every other variable at its default`,
    '- `analyze regen._items` ran after register_source in both runs: without it the first prepare_inputs calls take seconds to minutes ' +
      'until autovacuum analyzes the table (section D), which would stall the start of both runs by a chance amount',
    '- the version\'s HNSW index was dropped after create_version in both runs, to keep the two rebuilds of ' +
      `${fmtInt(n)} items within minutes (with it, inserts run at a few hundred a second here, see sections C and D). The index changes how ` +
      'fast items become current, not the order: jobs are fetched in the same priority order, so the curves below (x = share of the ' +
      'rebuild done) do not depend on it; the seconds do',
    '- measured: the order in which items became current, from regen._embeddings.embedded_at (the write transaction\'s start: every item ' +
      'of one write_embeddings call has the same time, and counts with the mean weight of its call, the expectation over the order inside ' +
      'it). The share of queries answerable after k items is the exact expectation Σ 1/r^1.1 over their ranks / Σ over all ranks ' +
      '(an infinite query stream: no sampling noise)',
    '- computed references (no database, no worker): "priority order" = the items sorted by the priority estimate, what a perfect ' +
      'queue would achieve with this estimate; "ideal" = sorted by true popularity',
    '',
    `**Share of queries answerable vs share of the rebuild done (${fmtInt(n)} items)**`,
    '',
    curveTable(CHECKPOINTS, measured, byPriority, ideal, at),
    '',
    '**Time (from the rebuild call)**',
    '',
    tableTimes(measured, timeTo),
    '',
    `Plot: [bench/time-to-answer.png](time-to-answer.png) (x = share of the rebuild done, y = share of queries answerable; ` +
      'both measured curves and the ideal, the goal marked).',
    '',
    '**Goals**',
    '',
    goalsTable(goals),
    '',
    `The id-order curve is one draw of a random order, and a lumpy one: the most popular document alone is the target of ` +
      `${pct(weight[1]! / total)} of the queries, the ten most popular ${pct(weight.slice(1, 11).reduce((a, b) => a + b, 0) / total)}; ` +
      'each jump is one of them becoming current.',
    '',
    `For reference (computed, not measured): with this noise a perfect queue in priority order reaches ${pct(at(byPriority, GOAL.done))} ` +
      `at ${pct(GOAL.done, 0)}, and exact popularity order ${pct(at(ideal, GOAL.done))}: with Zipf s = ${ZIPF_S} over ${fmtInt(n)} ` +
      `documents the top ${pct(GOAL.done, 0)} carry at most that share of the queries.`,
  ];
  return { name: NAME, markdown: lines.join('\n') };

  function curveTable(checkpoints: number[], runs: typeof measured, priorityCurve: Float64Array, idealCurve: Float64Array,
    value: (c: Float64Array, x: number) => number): string {
    return markdownTable(['rebuild done', ...runs.map((r) => `${r.label} (measured)`), 'priority order (computed)', 'ideal (computed)'],
      checkpoints.map((x) => [pct(x, 0), ...runs.map((r) => pct(value(r.curve, x))), pct(value(priorityCurve, x)), pct(value(idealCurve, x))]));
  }

  function tableTimes(runs: typeof measured, time: (o: (typeof measured)[number], share: number) => number): string {
    return markdownTable(['figure', ...runs.map((r) => r.label)], [
      ['regen.rebuild() call (enqueues every item)', ...runs.map((r) => `${(r.rebuildMs / 1000).toFixed(1)} s`)],
      ['first item current', ...runs.map((r) => `${(r.times[0]! / 1000).toFixed(1)} s`)],
      ['50% of queries answerable', ...runs.map((r) => `${time(r, 0.5).toFixed(1)} s`)],
      ['90% of queries answerable', ...runs.map((r) => `${time(r, 0.9).toFixed(1)} s`)],
      ['rebuild complete (gap = 0)', ...runs.map((r) => `${(r.totalMs / 1000).toFixed(1)} s`)],
      ['items/s, whole rebuild', ...runs.map((r) => fmtInt(r.ranks.length / (r.totalMs / 1000)))],
      ['batches (worker log); exit code on SIGTERM', ...runs.map((r) => `${fmtInt(r.batches)}; ${r.exitCode}`)],
    ]);
  }
}

async function measure(cluster: Cluster, label: string, priority: string,
  docs: Array<{ id: number; rank: number; popularity: number; body: string }>, say: (line: string) => void): Promise<Order> {
  const { url, client } = await cluster.database(label === 'hot-first' ? 'tta_hot' : 'tta_id');
  say(`${label}: ${fmtInt(docs.length)} documents, priority_expression ${priority}`);
  await createDocs(client, docs);
  await registerDocs(client, { tag: 'bench-tta@1', dimensions: DIMENSIONS, priority });
  await dropHnswIndex(client);
  await analyzeItems(client);
  const server = await startEmbeddingServer({ dimensions: DIMENSIONS, latencyMs: 0, seed: 1 });
  const worker = await startWorkerProcess(workerEnv(url, server.url, WORKER), say);
  let t0: number;
  let closedAt: number;
  let exitCode: number | null;
  let rebuildMs: number;
  try {
    const { rows: [clock] } = await client.query<{ now: number }>('select extract(epoch from clock_timestamp()) * 1000 as now');
    t0 = Number(clock!.now);
    const queued = await rebuild(client);
    rebuildMs = queued.ms;
    say(`${label}: rebuild() enqueued ${fmtInt(queued.items)} items in ${fmtInt(queued.jobs)} jobs (${fmtInt(queued.ms)} ms)`);
    let lastSay = Date.now();
    closedAt = await waitForClosedGap(client, {
      timeoutMs: 20 * 60_000, everyMs: 250, worker,
      onTick: (gap, now) => {
        if (now - lastSay > 15_000) {
          lastSay = now;
          say(`${label}: ${fmtInt(gap.current)} / ${fmtInt(gap.expected)} current`);
        }
      },
    });
  } finally {
    exitCode = await worker.stop();
    await server.close();
  }
  const { rows } = await client.query<{ rank: number; at: number }>(
    `select d.rank, extract(epoch from e.embedded_at) * 1000 as at
       from regen._embeddings e join docs d on d.id::text = e.row_id`);
  if (rows.length !== docs.length) throw new Error(`${label}: ${rows.length} vectors stored for ${docs.length} documents`);
  const { rows: firstWrites } = await client.query<{ at: number; n: string; rank: number }>(
    `select extract(epoch from e.embedded_at) * 1000 as at, count(*) as n, avg(d.rank)::float8 as rank
       from regen._embeddings e join docs d on d.id::text = e.row_id group by 1 order by 1 limit 6`);
  say(`${label}: first writes (s after the rebuild: items, mean popularity rank): ` +
    firstWrites.map((g) => `${((Number(g.at) - t0) / 1000).toFixed(1)}: ${g.n}, ${fmtInt(g.rank)}`).join('; '));
  const ordered = rows.map((r) => ({ rank: r.rank, at: Number(r.at) })).sort((a, b) => a.at - b.at);
  const groups: number[] = [];
  ordered.forEach((r, i) => groups.push(i === 0 ? 0 : r.at === ordered[i - 1]!.at ? groups[i - 1]! : groups[i - 1]! + 1));
  return {
    label, priority, ranks: ordered.map((r) => r.rank), groups, times: ordered.map((r) => r.at - t0), rebuildMs,
    totalMs: closedAt - t0, batches: worker.batches.length, exitCode,
  };
}

/** Spearman's rank correlation (no ties in practice: continuous values). */
function rankCorrelation(a: number[], b: number[]): number {
  const ranks = (v: number[]) => {
    const r = new Float64Array(v.length);
    v.map((x, i) => [x, i] as const).sort((p, q) => p[0] - q[0]).forEach(([, i], k) => { r[i] = k; });
    return r;
  };
  const ra = ranks(a);
  const rb = ranks(b);
  const n = a.length;
  let d2 = 0;
  for (let i = 0; i < n; i++) d2 += (ra[i]! - rb[i]!) ** 2;
  return 1 - (6 * d2) / (n * (n * n - 1));
}

