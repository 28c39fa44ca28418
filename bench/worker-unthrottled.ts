// D. End-to-end worker throughput against an unthrottled, zero-latency provider: vectors/s from
// regen.rebuild() to a closed gap, 1,536 dimensions, the real `pgregen worker` binary as a child
// process. Where the time goes: the worker's per-batch log line (`ms`), pg_stat_user_functions for
// regen.prepare_inputs and regen.write_embeddings, the worker's provider-latency metric. The same
// run is repeated with the version's HNSW index dropped (a comparison only: the product always
// keeps it) to separate the index's cost from the rest of the pipeline. The write-back ceiling is
// cited from the write-back section of bench/RESULTS.md, not measured again.
//
//   node bench/worker-unthrottled.ts [--quick]
import { readFile } from 'node:fs/promises';
import { startEmbeddingServer } from '../src/provider-server.ts';
import {
  analyzeItems, autoExplain, createDocs, documentText, dropHnswIndex, fmt3, fmtInt, functionStats, headerLines, itemsAutoAnalyzedAfter, log, loopGaps, median, pct, percentile, prng, readGap,
  rebuild, registerDocs, RESULTS, slowPlans, scrapeMetrics, startCluster, startWorkerProcess, sum, table, waitForClosedGap,
  workerEnv, type BatchLine, type BenchResult, type Cluster, type SlowPlan,
} from './worker-support.ts';

const NAME = 'worker-unthrottled';
const DIMENSIONS = 1536;
const DOC_BYTES = 300;
const CONCURRENCY = 4;
const JOBS_PER_FETCH = 4;
const POLL_SECONDS = 1;  // REGEN_POLL_INTERVAL_SECONDS, the default
// pg-boss fetch loops the worker runs (src/worker/run.ts: min(4, ceil(concurrency / 2)))
const LANES = Math.max(1, Math.min(4, Math.ceil(CONCURRENCY / 2)));
const SLOW_MS = 5_000;
const SIZES = { full: { docs: 10_000 }, quick: { docs: 2_000 } };

interface Figures {
  label: string;
  index: boolean;
  docs: number;
  rebuildMs: number;
  totalMs: number;
  firstVectorMs: number;
  embeddedSpanMs: number;
  batches: number;
  batchMs: number[];
  batchLines: BatchLine[];
  storedPerBatch: number;
  providerRequests: number;
  providerMeanMs: number;
  prepareCalls: number;
  prepareMsPerCall: number;
  writeCalls: number;
  writeMsPerCall: number;
  writeMsPerVector: number;
  current: number;
  expected: number;
  failed: number;
  analyzedAfter: number | undefined;
  /** prepare_inputs' query, when it took over SLOW_MS (auto_explain; product run only). */
  slow: SlowPlan[];
  firstBatch: number;
  rssMaxKb: number;
  exitCode: number | null;
}

export async function run(options: { quick: boolean }): Promise<BenchResult> {
  const size = options.quick ? SIZES.quick : SIZES.full;
  const say = log(NAME);
  const started = new Date();
  const cluster = await startCluster(say);
  try {
    const results: Figures[] = [];
    for (const index of [true, false]) results.push(await measure(cluster, size.docs, index, say));
    return { name: NAME, markdown: report(results, await writeBackCeiling(), started, cluster, options.quick) };
  } finally {
    await cluster.stop();
  }
}

async function measure(cluster: Cluster, docs: number, index: boolean, say: (line: string) => void): Promise<Figures> {
  const label = index ? 'the product as is' : 'comparison: index dropped, items analyzed';
  const { url, client } = await cluster.database(index ? 'unthrottled' : 'unthrottled_noindex');
  say(`${label}: ${fmtInt(docs)} documents of ${DOC_BYTES} bytes`);
  const random = prng(7);
  await createDocs(client, Array.from({ length: docs }, (_, i) => ({
    id: i + 1, rank: i + 1, popularity: random(), body: documentText(i + 1, DOC_BYTES, random) })));
  await registerDocs(client, { tag: 'bench-unthrottled@1', dimensions: DIMENSIONS, priority: 'popularity' });
  if (!index) {
    await dropHnswIndex(client);
    await analyzeItems(client);
  } else {
    // Plans of statements over 5 s go to the server log (estimates only, no instrumentation cost).
    await autoExplain(client, 'unthrottled', SLOW_MS);
  }
  const server = await startEmbeddingServer({ dimensions: DIMENSIONS, latencyMs: 0, seed: 1 });
  // The worker is started (and idle) before the rebuild, so its start-up is not in the time.
  const worker = await startWorkerProcess(workerEnv(url, server.url, {
    REGEN_CONCURRENCY: String(CONCURRENCY), REGEN_JOBS_PER_FETCH: String(JOBS_PER_FETCH) }), say);
  let exitCode: number | null;
  let t0: number;
  let closedAt: number;
  let metrics: Map<string, number>;
  let rebuildMs: number;
  try {
    t0 = Date.now();
    const queued = await rebuild(client);
    rebuildMs = queued.ms;
    say(`rebuild(): ${fmtInt(queued.items)} items in ${fmtInt(queued.jobs)} jobs (${fmtInt(queued.ms)} ms)`);
    let lastSay = Date.now();
    closedAt = await waitForClosedGap(client, {
      timeoutMs: 15 * 60_000, everyMs: 200, worker,
      onTick: (gap, now) => {
        if (now - lastSay > 15_000) {
          lastSay = now;
          say(`${fmtInt(gap.current)} / ${fmtInt(gap.expected)} current after ${((now - t0) / 1000).toFixed(0)} s`);
        }
      },
    });
    metrics = await scrapeMetrics(worker.port);
  } finally {
    exitCode = await worker.stop();
    await server.close();
  }
  const fn = await functionStats(client);
  const gap = await readGap(client);
  const analyzedAfter = await itemsAutoAnalyzedAfter(client, t0);
  const slow = index ? (await slowPlans(client)).filter((p) => p.query.startsWith('with texts as')) : [];
  const { rows: [span] } = await client.query<{ first: number; last: number }>(
    `select extract(epoch from min(embedded_at)) * 1000 as first, extract(epoch from max(embedded_at)) * 1000 as last from regen._embeddings`);
  const stored = sum(worker.batches.map((b) => b.stored));
  return {
    label, index, docs, rebuildMs, totalMs: closedAt - t0,
    firstVectorMs: Number(span!.first) - t0, embeddedSpanMs: Number(span!.last) - Number(span!.first),
    batches: worker.batches.length, batchMs: worker.batches.map((b) => b.ms), batchLines: [...worker.batches], storedPerBatch: stored / Math.max(1, worker.batches.length),
    providerRequests: metrics.get('pgregen_provider_request_seconds_count{status="200"}') ?? NaN,
    providerMeanMs: ((metrics.get('pgregen_provider_request_seconds_sum{status="200"}') ?? NaN)
      / (metrics.get('pgregen_provider_request_seconds_count{status="200"}') ?? NaN)) * 1000,
    prepareCalls: fn.prepare_inputs.calls, prepareMsPerCall: fn.prepare_inputs.totalMs / Math.max(1, fn.prepare_inputs.calls),
    writeCalls: fn.write_embeddings.calls, writeMsPerCall: fn.write_embeddings.totalMs / Math.max(1, fn.write_embeddings.calls),
    writeMsPerVector: fn.write_embeddings.totalMs / Math.max(1, stored),
    current: gap.current, expected: gap.expected, failed: gap.failed, analyzedAfter, slow,
    firstBatch: worker.batches.length ? Math.min(...worker.batches.map((b) => b.time - b.ms)) - t0 : NaN,
    rssMaxKb: Math.max(...worker.rss.map((s) => s.kb)), exitCode,
  };
}

interface Ceiling {
  date: string;
  quick: boolean;
  rows: Array<{ path: string; perStatement: string; index: string; rate: number }>;
}

/** The write-back section's figures, as bench/write-back.ts wrote them (absent: undefined). */
async function writeBackCeiling(): Promise<Ceiling | undefined> {
  const text = await readFile(RESULTS, 'utf8').catch(() => '');
  const from = text.indexOf('<!-- bench:write-back:start -->');
  const to = text.indexOf('<!-- bench:write-back:end -->');
  if (from < 0 || to < from) return undefined;
  const section = text.slice(from, to).split('\n');
  const date = section.find((l) => l.startsWith('- date:'))?.slice(8).split(',')[0]?.replace('UTC', '').trim() ?? 'unknown date';
  const quick = section.some((l) => l.startsWith('## ') && l.includes('quick'));
  const rows: Ceiling['rows'] = [];
  let headers: string[] | undefined;
  for (const line of section) {
    if (!line.startsWith('|')) {
      headers = undefined;
      continue;
    }
    const cells = line.split('|').slice(1, -1).map((c) => c.trim());
    if (!headers) {
      headers = cells;
      continue;
    }
    const at = (name: string) => headers!.indexOf(name);
    if (at('write path') < 0 || at('vectors/s') < 0 || at('HNSW index') < 0 || cells[0]?.startsWith('-')) continue;
    const path = cells[at('write path')]!;
    if (path === 'regen.write_embeddings' || path.startsWith('binary COPY')) {
      rows.push({ path, perStatement: cells[at('vectors per statement')] ?? '?', index: cells[at('HNSW index')]!, rate: Number(cells[at('vectors/s')]!.replaceAll(',', '')) });
    }
  }
  return rows.length ? { date, quick, rows } : undefined;
}

function report(results: Figures[], ceiling: Ceiling | undefined, started: Date, cluster: Cluster, quick: boolean): string {
  const main = results.find((r) => r.index)!;
  const bare = results.find((r) => !r.index)!;
  const rate = (r: Figures) => r.docs / (r.totalMs / 1000);
  const busy = (r: Figures) => sum(r.batchMs) / (LANES * r.totalMs);
  const fetchCeiling = (LANES * JOBS_PER_FETCH * 64) / POLL_SECONDS;
  const col = (f: (r: Figures) => string) => results.map(f);
  const perBatch = (r: Figures, calls: number, ms: number) => (calls / Math.max(1, r.batches)) * ms;
  const gapsOf = (r: Figures) => loopGaps(r.batchLines, LANES);
  const verdict = (r: Figures) => busy(r) > 0.8
    ? `the batches themselves (the fetch loops were inside a batch ${pct(busy(r), 0)} of the run), and in them ` +
      `regen.write_embeddings (${pct(perBatch(r, r.writeCalls, r.writeMsPerCall) / (sum(r.batchMs) / r.batches), 0)} of the mean batch time)`
    : `the fetch loops as much as the batches: the loops were inside a batch only ${pct(busy(r), 0)} of the run; between two batches ` +
      `a loop waited ${fmtInt(median(gapsOf(r)))} ms (median; batches took ${fmtInt(median(r.batchMs))} ms): pg-boss waits until ` +
      `REGEN_POLL_INTERVAL_SECONDS (${POLL_SECONDS} s) has passed since the previous fetch even when that fetch came back full, so each loop ` +
      `works at most one batch per ${POLL_SECONDS} s, ${LANES} loops × ${JOBS_PER_FETCH} jobs × 64 rows = ${fmtInt(fetchCeiling)} rows/s at most`;
  const analyzed = (r: Figures) => r.analyzedAfter === undefined ? 'not during the run'
    : r.analyzedAfter < 0 ? 'before the rebuild' : `${r.analyzedAfter.toFixed(0)} s after the rebuild`;
  const prepareText = (r: Figures) => {
    const head = `regen.prepare_inputs took ${fmt3(r.prepareMsPerCall)} ms per call on average (${fmtInt(r.prepareCalls)} calls; ` +
      `${fmt3(bare.prepareMsPerCall)} ms in the comparison run, where regen._items was analyzed). `;
    if (r.slow.length === 0) return `${head}No call of its query took over ${SLOW_MS / 1000} s; autovacuum analyzed regen._items ${analyzed(r)}. `;
    const ms = r.slow.map((p) => p.ms);
    const outer = r.slow.filter((p) => p.itemsOuterOfNestedLoop && p.itemsEstimate === 1).length;
    return `${head}${r.slow.length} calls of its query took ${fmt3(Math.min(...ms) / 1000)}–${fmt3(Math.max(...ms) / 1000)} s each ` +
      `(auto_explain, over ${SLOW_MS / 1000} s), which is why the first vector was stored only ${(r.firstVectorMs / 1000).toFixed(1)} s after ` +
      `the rebuild. In ${outer} of those plans regen._items, never analyzed since register_source filled it, is estimated at 1 row ` +
      `and is the outer side of a nested loop: all ${fmtInt(r.docs)} items of the source are read once per call, and the lookup of the ` +
      'batch\'s rows (with sha256 of their text, in the join filter) runs once per item: a call costs O(items × rows in the job) instead ' +
      `of O(rows in the job). Autovacuum analyzed regen._items ${analyzed(r)} (the run took ${(r.totalMs / 1000).toFixed(0)} s); only ` +
      'plans made after that are fast. ';
  };
  const cited = (index: string) => {
    const rates = ceiling?.rows.filter((r) => r.path === 'regen.write_embeddings' && r.index === index).map((r) => r.rate) ?? [];
    return rates.length ? `${fmtInt(Math.min(...rates))}–${fmtInt(Math.max(...rates))}` : 'n/a';
  };
  const ceilingLines = ceiling
    ? [
        `**The write-back ceiling, cited from the write-back section of bench/RESULTS.md (${ceiling.date} UTC` +
          `${ceiling.quick ? ', a quick smoke-size run' : ''}; not measured here)**`,
        '',
        table(['write path', 'vectors per statement', 'HNSW index', 'vectors/s'],
          ceiling.rows.map((r) => [r.path, r.perStatement, r.index, fmtInt(r.rate)])),
        '',
        'The with-index rates there are for a small index (see that section); here the index grows to ' +
          `${fmtInt(main.docs)} vectors, and HNSW inserts slow down as the graph grows.`,
        '',
      ]
    : ['The write-back section of bench/RESULTS.md is absent: no ceiling cited (run `npm run bench -- --only write-back`).', ''];
  const lines = [
    `## D. Worker end-to-end throughput, unthrottled provider${quick ? ' (quick smoke size: not a result)' : ''}`,
    '',
    ...headerLines(started, cluster.machine).map((l) => `- ${l}`),
    '- database: throwaway local cluster (src/local-postgres.ts), one database per run with `create extension vector` and `install()`, ' +
      '`track_functions = all` for the per-function timings',
    `- data: ${fmtInt(main.docs)} documents of exactly ${DOC_BYTES} ASCII bytes (one chunk each, ${DOC_BYTES / 3} tokens as counted for ` +
      '`local-hash`), all distinct (no cache hits); priority column = uniform random',
    `- version: \`regen.create_version('bench-unthrottled@1', 'local-hash', ${DIMENSIONS}, settings => '{"send_dimensions": true}')\` ` +
      'with its HNSW index; `regen.register_source(...)`; for the comparison run the HNSW index was dropped after create_version ' +
      'and `analyze regen._items` run before the rebuild (so that neither of the two database costs found in the product run applies)',
    `- provider: src/provider-server.ts in the benchmark process, no rate limits, 0 ms latency, ${fmtInt(DIMENSIONS)} dimensions (base64)`,
    `- worker: the real \`pgregen worker\` binary as a child process, REGEN_CONCURRENCY=${CONCURRENCY}, REGEN_JOBS_PER_FETCH=${JOBS_PER_FETCH}, ` +
      `REGEN_LOG_LEVEL=info, REGEN_PORT=0, every other variable at its default (REGEN_POLL_INTERVAL_SECONDS=${POLL_SECONDS}); ` +
      `REGEN_CONCURRENCY=${CONCURRENCY} gives ${LANES} pg-boss fetch loops (min(4, ceil(concurrency / 2))), each fetching up to ` +
      `${JOBS_PER_FETCH} jobs of 64 rows`,
    '- timing: the worker was started and idle first; the clock starts just before `select * from regen.rebuild()` and stops when ' +
      '`regen.embedding_gap` (polled every 200 ms) shows nothing missing, stale or outdated',
    '',
    '**End to end (rebuild to gap = 0)**',
    '',
    table(['figure', ...results.map((r) => r.label)], [
      ['vectors', ...col((r) => fmtInt(r.docs))],
      ['regen.rebuild() call', ...col((r) => `${fmtInt(r.rebuildMs)} ms`)],
      ['first batch fetched after (worker log: end - ms)', ...col((r) => `${(r.firstBatch / 1000).toFixed(1)} s`)],
      ['first vector stored after', ...col((r) => `${(r.firstVectorMs / 1000).toFixed(1)} s`)],
      ['autovacuum analyzed regen._items after', ...col((r) => (r.analyzedAfter === undefined ? 'not during the run'
        : r.analyzedAfter < 0 ? 'before the rebuild' : `${r.analyzedAfter.toFixed(1)} s`))],
      ['rebuild to gap = 0', ...col((r) => `${(r.totalMs / 1000).toFixed(1)} s`)],
      ['vectors/s, rebuild to gap = 0', ...col((r) => fmt3(rate(r)))],
      ['vectors/s, first to last stored (embedded_at)', ...col((r) => fmt3(r.docs / (r.embeddedSpanMs / 1000)))],
      ['end state: current of expected, failed', ...col((r) => `${fmtInt(r.current)} of ${fmtInt(r.expected)}, ${fmtInt(r.failed)}`)],
      ['worker exit code on SIGTERM; highest VmRSS', ...col((r) => `${r.exitCode}; ${fmtInt(r.rssMaxKb / 1024)} MiB`)],
    ]),
    '',
    '**Where the time goes, per batch (one fetch of up to 4 jobs = one provider request and one write_embeddings call)**',
    '',
    table(['figure', ...results.map((r) => r.label)], [
      ['batches; vectors per batch (mean)', ...col((r) => `${fmtInt(r.batches)}; ${fmt3(r.storedPerBatch)}`)],
      ['batch wall time (worker log `ms`): median / p90 / max', ...col((r) => `${fmtInt(median(r.batchMs))} / ${fmtInt(percentile(r.batchMs, 90))} / ${fmtInt(Math.max(...r.batchMs))} ms`)],
      ['regen.prepare_inputs: per call (one per job, the jobs of a batch in parallel); per batch, summed',
        ...col((r) => `${fmt3(r.prepareMsPerCall)} ms; ${fmt3(perBatch(r, r.prepareCalls, r.prepareMsPerCall))} ms`)],
      ['provider request (worker metric, 200s): mean; requests per batch', ...col((r) => `${fmt3(r.providerMeanMs)} ms; ${fmt3(r.providerRequests / Math.max(1, r.batches))}`)],
      ['regen.write_embeddings: per call; per vector', ...col((r) => `${fmt3(r.writeMsPerCall)} ms; ${fmt3(r.writeMsPerCall / Math.max(1, r.storedPerBatch))} ms`)],
      ['write_embeddings share of the mean batch time', ...col((r) => pct(perBatch(r, r.writeCalls, r.writeMsPerCall) / (sum(r.batchMs) / r.batches), 0))],
      [`share of the run the ${LANES} fetch loops were inside a batch (sum of batch ms / (${LANES} × run time))`, ...col((r) => pct(busy(r), 0))],
      ['a loop\'s wait between two batches (reconstructed from the log): median / p90', ...col((r) => `${fmtInt(median(gapsOf(r)))} / ${fmtInt(percentile(gapsOf(r), 90))} ms`)],
    ]),
    '',
    'pg_stat_user_functions times are wall times inside PostgreSQL; the 2 fetch loops, the worker, the server and PostgreSQL share 2 cores. ' +
      'The rest of a batch is worker CPU (decoding base64 vectors, building the binary vector[] parameter) and round trips.',
    '',
    ...ceilingLines,
    '**Bottleneck**',
    '',
    `- the product as is: ${fmt3(rate(main))} vectors/s from the rebuild to gap = 0, bound by the database, in two places. ` +
      `(1) ${prepareText(main)}` +
      `(2) regen.write_embeddings took ${fmt3(main.writeMsPerVector)} ms per vector, nearly all of it the HNSW insert ` +
      `(${fmt3(bare.writeMsPerVector)} ms without the index)` +
      (ceiling ? `; the cited write_embeddings rates are ${cited('no')} vectors/s without the index and ${cited('yes')} with it ` +
        '(by batch size, one session, small index)' : '') +
      `. Per batch (median ${fmtInt(median(main.batchMs))} ms): prepare_inputs ${fmtInt(perBatch(main, main.prepareCalls, main.prepareMsPerCall))} ms ` +
      `summed over the batch's jobs (they run in parallel), the provider ${fmtInt(main.providerMeanMs)} ms, write_embeddings ` +
      `${fmtInt(perBatch(main, main.writeCalls, main.writeMsPerCall))} ms; the fetch loops were inside a batch ${pct(busy(main), 0)} of the run.`,
    `- comparison (index dropped, regen._items analyzed): ${fmt3(rate(bare))} vectors/s, bound by ${verdict(bare)}`,
    '',
    '**Goals**: none set for this benchmark; the figure is reported beside the write-back ceiling.',
  ];
  return lines.join('\n');
}

