// N. A slow self-hosted endpoint (issue 14, item 1): the Cranfield collection (1,398 documents)
// rebuilt through the real `pgregen worker` against the local server's use-lite embedder, a real
// small model that computes one request at a time (as a model server on a CPU does), about 70 ms
// an input on this machine. The worker with its defaults (only DATABASE_URL, OPENAI_BASE_URL and
// OPENAI_API_KEY set) against the same worker hand-tuned for this endpoint, several settings, the
// best of them the baseline: from `rebuild` to gap 0, one run after another, each on a table and
// version of its own (so no run is helped by another's cache).
//
//   npm run bench -- --only slow-endpoint [--quick]
import { startEmbeddingServer } from '../src/provider-server.ts';
import { loadCranfield, registerCranfieldSource } from '../src/eval/cranfield.ts';
import {
  fmtInt, goalsTable, headerLines, log, sleep, startCluster, startWorkerProcess, table, workerEnv,
  type BenchResult, type Goal, type WorkerProcess,
} from './worker-support.ts';

const NAME = 'slow-endpoint';
const TARGET = 1.25;
interface Run { key: string; label: string; env: Record<string, string> }
const RUNS: Run[] = [
  { key: 'defaults', label: 'defaults (only the endpoint and key set)', env: {} },
  { key: 'c1i256', label: 'hand-tuned (REGEN_ADAPTIVE=false): REGEN_CONCURRENCY=1, REGEN_MAX_INPUTS_PER_REQUEST=256', env: { REGEN_ADAPTIVE: 'false', REGEN_CONCURRENCY: '1', REGEN_MAX_INPUTS_PER_REQUEST: '256' } },
  { key: 'c2i128', label: 'hand-tuned (REGEN_ADAPTIVE=false): REGEN_CONCURRENCY=2, REGEN_MAX_INPUTS_PER_REQUEST=128', env: { REGEN_ADAPTIVE: 'false', REGEN_CONCURRENCY: '2', REGEN_MAX_INPUTS_PER_REQUEST: '128' } },
  { key: 'c2i64', label: 'hand-tuned (REGEN_ADAPTIVE=false): REGEN_CONCURRENCY=2, REGEN_MAX_INPUTS_PER_REQUEST=64', env: { REGEN_ADAPTIVE: 'false', REGEN_CONCURRENCY: '2', REGEN_MAX_INPUTS_PER_REQUEST: '64' } },
];

interface Figures { run: Run; seconds: number; documents: number; requests: number; answered: number; gone: number; goneInputs: number; largest: number }

/** Polls the source's gap until nothing is missing, stale or outdated; returns when (Date.now()). */
async function closedGap(client: import('pg').Client, source: string, worker: WorkerProcess, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { rows: [gap] } = await client.query<{ open: number }>(
      'select (missing + stale + outdated)::int as open from regen.embedding_gap where source = $1', [source]);
    const now = Date.now();
    if (gap?.open === 0) return now;
    if (worker.child.exitCode !== null) throw new Error(`the worker exited with ${worker.child.exitCode}:\n${worker.tail()}`);
    if (now > deadline) throw new Error(`the gap of ${source} did not close within ${timeoutMs / 1000} s`);
    await sleep(500);
  }
}

export async function run(options: { quick: boolean }): Promise<BenchResult> {
  const say = log(NAME);
  const started = new Date();
  const cluster = await startCluster(say);
  const server = await startEmbeddingServer({ embedder: 'use-lite' });
  const results: Figures[] = [];
  try {
    const { url, client } = await cluster.database('slow_endpoint');
    for (const [i, spec] of RUNS.entries()) {
      const table = `public.cran_${spec.key}`;
      const version = `use-lite@${i + 1}`;
      const load = await loadCranfield(client, { table });
      if (options.quick) await client.query(`delete from ${table} where id > 200`);
      const { rows: [count] } = await client.query<{ n: number }>(`select count(*)::int as n from ${table} where body <> ''`);
      const n = count!.n;
      await client.query(`select regen.create_version($1, 'use-lite', 512, 'openai', '{"send_dimensions": false}')`, [version]);
      const worker = await startWorkerProcess(workerEnv(url, server.url, spec.env), say);
      try {
        const before = server.stats.log.length;
        say(`${spec.label}: ${fmtInt(n)} of ${fmtInt(load.documents)} documents`);
        const t0 = Date.now();
        await registerCranfieldSource(client, { source: `cran_${spec.key}`, version, table });   // registers and rebuilds
        const done = await closedGap(client, `cran_${spec.key}`, worker, 30 * 60_000);
        const log = server.stats.log.slice(before);
        const answered = log.filter((r) => r.status === 200);
        const gone = log.filter((r) => r.status === 499);
        results.push({ run: spec, seconds: (done - t0) / 1000, documents: n, requests: log.length, answered: answered.length,
          gone: gone.length, goneInputs: gone.reduce((s, r) => s + r.inputs, 0), largest: Math.max(0, ...answered.map((r) => r.inputs)) });
        say(`${spec.label}: ${((done - t0) / 1000).toFixed(1)} s`);
      } finally {
        await worker.stop();
      }
    }
  } finally {
    await server.close();
    await cluster.stop();
  }

  const defaults = results.find((r) => r.run.key === 'defaults')!;
  const tuned = results.filter((r) => r.run.key !== 'defaults');
  const best = tuned.reduce((a, b) => (b.seconds < a.seconds ? b : a));
  const ratio = defaults.seconds / best.seconds;
  const goals: Goal[] = [{
    name: 'Cranfield rebuild against use-lite, defaults against the best hand-tuned settings (time to gap 0)',
    measured: `${ratio.toFixed(2)}× (${defaults.seconds.toFixed(1)} s against ${best.seconds.toFixed(1)} s, ${best.run.label.replace('hand-tuned (REGEN_ADAPTIVE=false): ', '')})`,
    wanted: `≤ ${TARGET}×`, met: ratio <= TARGET,
  }];
  const markdown = [
    `## N. A slow self-hosted endpoint: the worker's defaults against hand-tuned settings`,
    '',
    ...headerLines(started, cluster.machine).map((l) => `- ${l}`),
    `- the local OpenAI-compatible server with the use-lite embedder (Universal Sentence Encoder Lite, 512 dimensions, in a worker thread ` +
      `of the benchmark's process), computing one request at a time in arrival order; a request whose client has gone is skipped ` +
      '(one being computed is finished and its answer dropped); the Cranfield collection' +
      `${options.quick ? ' (quick: its first 200 documents)' : ''}, one run after another, each on a table and version of its own; ` +
      'one `pgregen worker` process per run, REGEN_REQUEST_TIMEOUT_MS at its default (60 s); time from `rebuild` to gap 0',
    '',
    table(['worker settings', 'documents', 'seconds', 'against the best hand-tuned', 'requests', 'answered', 'given up by the worker (inputs)',
      'largest request answered'], results.map((r) => [r.run.label, fmtInt(r.documents), r.seconds.toFixed(1), (r.seconds / best.seconds).toFixed(2),
      fmtInt(r.requests), fmtInt(r.answered), `${fmtInt(r.gone)} (${fmtInt(r.goneInputs)})`, fmtInt(r.largest)])),
    '',
    'The defaults start at 32 inputs and one request in flight and adapt (src/worker/adaptive.ts); before that adaptation the default ' +
      'worker packed up to 512 inputs into a request and kept four in flight against this one-at-a-time endpoint: every request outlived ' +
      'the 60 s timeout and was sent again unchanged (the review measured 0 of 1,398 documents stored after 8 minutes).',
    '',
    '**Targets**',
    '',
    goalsTable(goals),
  ].join('\n');
  return { name: NAME, markdown };
}
