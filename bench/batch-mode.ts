// O. Batch mode (issue 14, item 2): the same model migration built through the synchronous
// endpoint and through the Batch API, side by side in one run: what the provider embedded on each
// API (inputs, tokens, as the local server counts them), what that costs at OpenAI's prices
// (text-embedding-3-small: $0.02 per million tokens synchronous, half through the Batch API), and
// the time from start_migration to gap 0 (the local server finishes a batch at once; OpenAI's
// take up to 24 hours, which is the price of the discount).
//
//   npm run bench -- --only batch-mode [--quick]
import { startEmbeddingServer } from '../src/provider-server.ts';
import {
  documentText, fmtInt, goalsTable, headerLines, log, prng, sleep, startCluster, startWorkerProcess, table, workerEnv,
  type BenchResult, type Goal,
} from './worker-support.ts';

const NAME = 'batch-mode';
const PRICE_PER_MTOK = 0.02;
const SIZES = { full: 6_000, quick: 600 };

export async function run(options: { quick: boolean }): Promise<BenchResult> {
  const docs = options.quick ? SIZES.quick : SIZES.full;
  const say = log(NAME);
  const started = new Date();
  const cluster = await startCluster(say);
  const server = await startEmbeddingServer({ dimensions: 256 });
  const runs: Array<{ label: string; seconds: number; syncInputs: number; syncTokens: number; batchInputs: number; batchTokens: number; batches: number }> = [];
  let distinct = 0;
  try {
    const { url, client } = await cluster.database('batch_mode');
    const random = prng(41);
    // two tables of the same rows, one per migration; a tenth of the rows share their text with
    // another row: each distinct text is embedded once either way
    const ids = Array.from({ length: docs }, (_, i) => i + 1);
    const own = ids.map((id) => documentText(id, 400, random));
    const texts = ids.map((id, i) => (id % 10 === 0 ? own[i - 1]! : own[i]!));
    await client.query(`select regen.create_version('serving@1', 'local-hash', 256, settings => '{"send_dimensions": true}')`);
    for (const name of ['docs_sync', 'docs_batch']) {
      await client.query(`create table ${name} (id bigint primary key, body text not null)`);
      await client.query(`insert into ${name} select * from unnest($1::bigint[], $2::text[])`, [ids, texts]);
      await client.query(`select regen.register_source($1::text, $1::text::regclass, 'id', 'body', version => 'serving@1')`, [name]);
    }
    distinct = new Set(texts).size;
    const worker = await startWorkerProcess(workerEnv(url, server.url, {}), say);
    try {
      await client.query('select * from regen.rebuild()');
      for (const name of ['docs_sync', 'docs_batch']) await gapClosed(client, name, 'serving@1');
      for (const [name, tag, batch] of [['docs_sync', 'sync@2', false], ['docs_batch', 'batch@3', true]] as const) {
        await client.query(`select regen.create_version($1, 'local-hash', 256, settings => '{"send_dimensions": true}')`, [tag]);
        if (batch) await client.query('select regen.set_batch_mode($1, true)', [tag]);
        const before = { ...server.stats, batch: { ...server.batchStats } };
        const tokensBefore = server.stats.tokens;
        say(`migrating to ${tag} (${batch ? 'Batch API' : 'synchronous'})`);
        const t0 = Date.now();
        await client.query(`select * from regen.start_migration($1, $2)`, [name, tag]);
        await gapClosed(client, name, tag);
        runs.push({
          label: batch ? 'batch mode (regen.set_batch_mode)' : 'synchronous (the default)', seconds: (Date.now() - t0) / 1000,
          syncInputs: server.stats.inputs - before.inputs, syncTokens: server.stats.tokens - tokensBefore,
          batchInputs: server.batchStats.inputs - before.batch.inputs, batchTokens: server.batchStats.tokens - before.batch.tokens,
          batches: server.batchStats.batches - before.batch.batches,
        });
      }
    } finally {
      await worker.stop();
    }
  } finally {
    await server.close();
    await cluster.stop();
  }
  const [sync, batch] = runs as [typeof runs[0], typeof runs[0]];
  const cost = (r: typeof sync) => (r.syncTokens * PRICE_PER_MTOK + r.batchTokens * PRICE_PER_MTOK * 0.5) / 1e6;
  const goals: Goal[] = [
    { name: 'batch mode: the migration\'s texts embedded through the Batch API, none through the synchronous endpoint',
      measured: `${fmtInt(batch.batchInputs)} through batches, ${fmtInt(batch.syncInputs)} synchronous`, wanted: `${fmtInt(distinct)} and 0`,
      met: batch.batchInputs === distinct && batch.syncInputs === 0 },
    { name: 'each distinct text embedded once, either way', measured: `${fmtInt(sync.syncInputs)} / ${fmtInt(batch.batchInputs)} of ${fmtInt(distinct)}`,
      wanted: 'equal', met: sync.syncInputs === distinct && batch.batchInputs === distinct },
    { name: 'cost of the migration through batches against synchronous', measured: `${(cost(batch) / cost(sync)).toFixed(2)}×`, wanted: '0.5×',
      met: Math.abs(cost(batch) / cost(sync) - 0.5) < 0.01 },
  ];
  const markdown = [
    '## O. Batch mode: one migration through the synchronous endpoint and through the Batch API',
    '',
    ...headerLines(started, cluster.machine).map((l) => `- ${l}`),
    `- database: throwaway local cluster; two tables of the same ${fmtInt(docs)} rows of 400 bytes (a tenth share their text with ` +
      `another row: ${fmtInt(distinct)} distinct texts), embedded in a serving version first; then one migrated to a synchronous ` +
      'version and the other to a version in batch mode, one after the other (each version its own cache); one `pgregen worker` at ' +
      'its defaults; the local server ' +
      '(hashed embedder, 256 dimensions, its Batch API finishing each batch as fast as it embeds)',
    `- cost at text-embedding-3-small's price, $${PRICE_PER_MTOK} per million tokens synchronous, half that through the Batch API; tokens as the server counts them`,
    '',
    table(['migration', 'seconds to gap 0', 'synchronous inputs (tokens)', 'Batch API inputs (tokens)', 'provider batches', 'cost'],
      runs.map((r) => [r.label, r.seconds.toFixed(1), `${fmtInt(r.syncInputs)} (${fmtInt(r.syncTokens)})`,
        `${fmtInt(r.batchInputs)} (${fmtInt(r.batchTokens)})`, fmtInt(r.batches), `$${cost(r).toFixed(6)}`])),
    '',
    '**Targets**',
    '',
    goalsTable(goals),
  ].join('\n');
  return { name: NAME, markdown };
}

async function gapClosed(client: import('pg').Client, source: string, version: string): Promise<void> {
  const deadline = Date.now() + 20 * 60_000;
  for (;;) {
    const { rows: [gap] } = await client.query<{ open: number }>(
      `select (missing + stale + outdated)::int as open from regen.embedding_gap where source = $1 and version = $2`, [source, version]);
    if (gap?.open === 0) return;
    if (Date.now() > deadline) throw new Error(`the gap of ${version} did not close`);
    await sleep(250);
  }
}
