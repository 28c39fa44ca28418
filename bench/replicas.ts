// L. Three worker replicas, no faults: every distinct chunk text is sent to the provider once
// (issue 13, item 2). Documents of three paragraphs (one chunk each), a quarter of the paragraphs
// drawn from a pool shared by many documents (boilerplate: the same text in many rows, spread over
// the whole queue), rebuilt at 1,536 dimensions with the version's index in place by three
// `pgregen worker` processes with the default settings. Before claims, a text wanted by two batches
// in flight at once was sent twice, and batches that outlived pg-boss's heartbeat were taken over
// and embedded again. Target: the provider's inputs equal the distinct chunk texts stored.
//
//   npm run bench -- --only replicas [--quick]
import { startEmbeddingServer } from '../src/provider-server.ts';
import {
  fmtInt, goalsTable, headerLines, log, prng, scrapeMetrics, startCluster, startWorkerProcess, table, waitForClosedGap, workerEnv,
  type BenchResult, type Goal, type WorkerProcess,
} from './worker-support.ts';

const NAME = 'replicas';
const DIMENSIONS = 1536;
const REPLICAS = 3;
const PARAGRAPHS = 3;
const SHARED_FRACTION = 0.25;
const SIZES = { full: { docs: 6_000, pool: 400 }, quick: { docs: 600, pool: 40 } };
const WORDS = 'ka lo mi ne ru sa ti vo za be da fe gi ho ju ke la mo nu pi qu re si to vu wa xe yo ze'.split(' ');

/** A paragraph of 250 to 390 characters: with chunks of 400 characters each paragraph is one chunk. */
function paragraph(label: string, random: () => number): string {
  const length = 250 + Math.floor(random() * 140);
  let text = `${label}:`;
  while (text.length < length) text += ` ${WORDS[Math.floor(random() * 30)]}${WORDS[Math.floor(random() * 30)]}`;
  return `${text.slice(0, length - 1)}.`;
}

export async function run(options: { quick: boolean }): Promise<BenchResult> {
  const size = options.quick ? SIZES.quick : SIZES.full;
  const say = log(NAME);
  const started = new Date();
  const cluster = await startCluster(say);
  const server = await startEmbeddingServer({ dimensions: DIMENSIONS, latencyMs: 0, seed: 1 });
  let figures: Record<string, number> = {};
  let longest: number[] = [];
  try {
    const { url, client } = await cluster.database('replicas');
    const random = prng(31);
    const pool = Array.from({ length: size.pool }, (_, i) => paragraph(`shared ${i}`, random));
    const bodies = Array.from({ length: size.docs }, (_, d) => Array.from({ length: PARAGRAPHS }, (_, p) =>
      (random() < SHARED_FRACTION ? pool[Math.floor(random() * size.pool)]! : paragraph(`doc ${d + 1} part ${p + 1}`, random))).join('\n\n'));
    await client.query('create table docs (id bigint primary key, popularity float8 not null, body text not null)');
    await client.query('insert into docs select * from unnest($1::bigint[], $2::float8[], $3::text[])',
      [bodies.map((_, i) => i + 1), bodies.map(() => random()), bodies]);
    await client.query('analyze docs');
    await client.query(`select regen.create_version('bench@1', 'local-hash', $1,
                          settings => '{"send_dimensions": true, "chunk_chars": 400, "chunk_overlap": 0}')`, [DIMENSIONS]);
    await client.query(`select regen.register_source(name => 'docs', relation => 'docs', id_column => 'id', content_expression => 'body',
                          priority_expression => 'popularity', version => 'bench@1')`);
    await client.query('analyze regen._items');

    const workers: WorkerProcess[] = [];
    try {
      for (let i = 0; i < REPLICAS; i++) workers.push(await startWorkerProcess(workerEnv(url, server.url, {}), say));
      say(`rebuilding ${fmtInt(size.docs)} documents with ${REPLICAS} replicas`);
      const t0 = Date.now();
      await client.query('select * from regen.rebuild()');
      const closed = await waitForClosedGap(client, { timeoutMs: 30 * 60_000, worker: workers[0] });
      const deferred = await Promise.all(workers.map(async (w) => (await scrapeMetrics(w.port)).get('pgregen_rows_deferred_total') ?? 0));
      const { rows: [store] } = await client.query<{ chunks: string; distinct: string }>(
        `select count(*) as chunks, count(distinct text_hash) as distinct from regen._embeddings`);
      const { rows: [jobs] } = await client.query<{ jobs: string; retried: string }>(
        `select count(*) as jobs, count(*) filter (where retry_count > 0) as retried from pgboss.job where name like 'regen\\_embed\\_v%'`);
      const again = [...server.stats.texts.values()].filter((n) => n > 1);
      longest = workers.flatMap((w) => w.batches.map((b) => b.ms)).sort((a, b) => b - a);
      figures = {
        seconds: (closed - t0) / 1000, chunks: Number(store!.chunks), distinct: Number(store!.distinct), inputs: server.stats.inputs,
        again: again.length, extra: again.reduce((n, k) => n + k - 1, 0), jobs: Number(jobs!.jobs), retried: Number(jobs!.retried),
        deferred: deferred.reduce((a, b) => a + b, 0), batches: longest.length, over30: longest.filter((ms) => ms > 30_000).length,
        warnings: workers.reduce((n, w) => n + w.warnings.length, 0),
      };
    } finally {
      for (const w of workers) await w.stop();
    }
  } finally {
    await server.close();
    await cluster.stop();
  }

  const f = figures;
  const goals: Goal[] = [
    { name: `provider inputs against distinct chunk texts, ${REPLICAS} replicas, no faults`, measured: `${fmtInt(f.inputs!)} against ${fmtInt(f.distinct!)}`,
      wanted: 'equal', met: f.inputs === f.distinct },
    { name: 'jobs taken back from a worker and retried (heartbeat, expiry, failures)', measured: fmtInt(f.retried!), wanted: '0', met: f.retried === 0 },
  ];
  const markdown = [
    `## L. Three worker replicas: each distinct text sent once${options.quick ? ' (quick smoke size: not a result)' : ''}`,
    '',
    ...headerLines(started, cluster.machine).map((l) => `- ${l}`),
    `- database: throwaway local cluster (src/local-postgres.ts); docs (${fmtInt(size.docs)} rows of ${PARAGRAPHS} paragraphs of 250 to 390 ` +
      `characters, one chunk each at chunk_chars 400; each paragraph with probability ${SHARED_FRACTION} one of ${fmtInt(size.pool)} shared ` +
      'paragraphs, else its own), random priorities; one version of 1,536 dimensions with its HNSW index in place (the serving ' +
      'version); the local OpenAI-compatible server (hashed embedder, no added latency, no faults), which counts the inputs of ' +
      `the requests it answers; ${REPLICAS} \`pgregen worker\` processes with the default settings (heartbeat 30 s)`,
    '- from `regen.rebuild()` to gap = 0',
    '',
    table(['', 'value'], [
      ['chunks stored', fmtInt(f.chunks!)],
      ['distinct chunk texts stored', fmtInt(f.distinct!)],
      ['inputs the provider embedded', fmtInt(f.inputs!)],
      ['texts embedded more than once (extra inputs)', `${fmtInt(f.again!)} (${fmtInt(f.extra!)})`],
      ['rows deferred: their text was being embedded by another batch (per wait)', fmtInt(f.deferred!)],
      ['jobs / retried', `${fmtInt(f.jobs!)} / ${fmtInt(f.retried!)}`],
      ['batches / longer than the 30 s heartbeat', `${fmtInt(f.batches!)} / ${fmtInt(f.over30!)}`],
      ['longest batches (s)', longest.slice(0, 3).map((ms) => (ms / 1000).toFixed(1)).join(', ')],
      ['rebuild time (s); chunks per second', `${f.seconds!.toFixed(0)}; ${(f.chunks! / f.seconds!).toFixed(0)}`],
      ['worker warnings logged', fmtInt(f.warnings!)],
    ]),
    '',
    'A batch claims the texts it sends (`regen.prepare_inputs`, table `regen._claims`); a batch that finds a text claimed by another ' +
      'job still being worked defers those rows and prepares them again when that job is done, when they are a cache hit. The ' +
      'worker refreshes the heartbeat of its jobs while their batch works and gives a batch up at 90% of its jobs\' expiry ' +
      '(src/worker/loop.ts), so no job is taken over while it is being worked.',
    '',
    '**Targets**',
    '',
    goalsTable(goals),
  ].join('\n');
  return { name: NAME, markdown };
}
