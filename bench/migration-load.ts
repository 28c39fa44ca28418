// K. A model migration under a steady stream of edits (issue 13, item 2): the application edits
// the source being migrated at 50 edits/s, one autocommit UPDATE of the text each, while one worker
// process (defaults) builds the new version. Measured side by side, in one run, on three tables of
// the same size and kind (distinct texts, so no table helps another through the cache):
//   - the migration alone, no edits (the worker's whole capacity);
//   - the migration with the edit stream, REGEN_BACKFILL_SHARE at its default (0.5);
//   - the migration with the edit stream, REGEN_BACKFILL_SHARE=0 (pg-boss's own order: every fresh
//     edit first), for comparison.
// Also the edits' latency before and during the migration, and how many rows a fresh-edit job
// carries at 50 edits/s (does one edit still make a job of its own?).
//
//   npm run bench -- --only migration-load [--quick]
import pg from 'pg';
import { startEmbeddingServer } from '../src/provider-server.ts';
import { startEditor } from './editor.ts';
import {
  documentText, fmtInt, goalsTable, headerLines, log, percentile, prng, sleep, startCluster,
  startWorkerProcess, table, workerEnv, type BenchResult, type Goal, type WorkerProcess,
} from './worker-support.ts';

const NAME = 'migration-load';
const DIMENSIONS = 1536;
const DOC_BYTES = 600;
const EDITS_PER_SECOND = 50;
const SIZES = { full: { docs: 24_000, baselineSeconds: 20 }, quick: { docs: 400, baselineSeconds: 5 } };
const LATENCY_TARGET_MS = 100;
const TABLES = ['mig_alone', 'mig_edited', 'mig_share0'] as const;

interface Phase { label: string; samples: number[]; seconds: number }
interface Migration {
  label: string;
  seconds: number;
  done: number;
  rowsPerSecond: number;
  edits?: Phase;
  jobs?: { fresh: number; backfill: number; time: number };
  freshJobs?: { jobs: number; rows: number; single: number };
  waits: Map<string, number>;
  /** What the session holding a source's applier lock was doing; '' counts the samples. */
  heldBy: Map<string, number>;
}

export async function run(options: { quick: boolean }): Promise<BenchResult> {
  const size = options.quick ? SIZES.quick : SIZES.full;
  const say = log(NAME);
  const started = new Date();
  const cluster = await startCluster(say);
  const server = await startEmbeddingServer({ dimensions: DIMENSIONS, latencyMs: 0, seed: 1 });
  const migrations: Migration[] = [];
  let before: Phase | undefined;
  let indexState = '';
  try {
    const { url, client } = await cluster.database('migration_load');
    for (const [t, name] of TABLES.entries()) {
      const random = prng(29 + t);
      await client.query(`create table ${name} (id bigint primary key, popularity float8 not null, body text not null)`);
      const ids = Array.from({ length: size.docs }, (_, i) => i + 1);
      await client.query(`insert into ${name} select * from unnest($1::bigint[], $2::float8[], $3::text[])`,
        [ids, ids.map(() => 0), ids.map((id) => `${name} ${documentText(id, DOC_BYTES - name.length - 1, random)}`)]);
      await client.query(`analyze ${name}`);
    }
    await client.query(`select regen.create_version('bench@1', 'local-hash', $1, settings => '{"send_dimensions": true}')`, [DIMENSIONS]);
    for (const name of TABLES) {
      await client.query(`select regen.register_source(name => $1::text, relation => $1::text::regclass, id_column => 'id',
                            content_expression => 'body', priority_expression => 'popularity', version => 'bench@1')`, [name]);
    }
    // Set-up, not measured: the serving version is loaded without its HNSW index, which is built
    // afterwards (the fast way); the edits and the migrations then run with it in place.
    const { rows: indexes } = await client.query<{ name: string; def: string }>(
      `select indexname as name, indexdef as def from pg_indexes where schemaname = 'regen' and tablename = '_embeddings' and indexdef like '%USING hnsw%'`);
    for (const index of indexes) await client.query(`drop index regen.${index.name}`);
    let worker = await startWorkerProcess(workerEnv(url, server.url, {}), say);
    try {
      say(`embedding ${fmtInt(TABLES.length * size.docs)} rows in the serving version first`);
      await client.query('select * from regen.rebuild()');
      for (const name of TABLES) await waitForBacklog(client, name, 'bench@1', 0, 30 * 60_000, worker);
      for (const index of indexes) await client.query(index.def);
      await client.query('analyze regen._embeddings');
      await client.query('analyze regen._items');
      await client.query(`select regen.create_version('bench@2', 'local-hash', $1, settings => '{"send_dimensions": true}')`, [DIMENSIONS]);

      before = await editFor(url, 'mig_edited', size.docs, size.baselineSeconds * 1000, 'before: every row embedded, the edits\' own fresh jobs only');
      await waitForBacklog(client, 'mig_edited', 'bench@1', 0, 5 * 60_000, worker);

      say('migration alone');
      migrations.push(await migrate(client, url, worker, 'mig_alone', size.docs, false, 'alone, no edits', Infinity));
      say(`migration under ${EDITS_PER_SECOND} edits/s, REGEN_BACKFILL_SHARE 0.5 (default)`);
      migrations.push(await migrate(client, url, worker, 'mig_edited', size.docs, true, `${EDITS_PER_SECOND} edits/s, REGEN_BACKFILL_SHARE=0.5 (default)`, Infinity));
      await worker.stop();
      worker = await startWorkerProcess(workerEnv(url, server.url, { REGEN_BACKFILL_SHARE: '0' }), say);
      // the comparison run stops at twice the default's time: its rate is what it did by then
      const cap = 2 * migrations[1]!.seconds;
      say(`migration under ${EDITS_PER_SECOND} edits/s, REGEN_BACKFILL_SHARE 0 (at most ${cap.toFixed(0)} s)`);
      migrations.push(await migrate(client, url, worker, 'mig_share0', size.docs, true, `${EDITS_PER_SECOND} edits/s, REGEN_BACKFILL_SHARE=0 (fresh edits always first)`, cap));
      indexState = (await client.query<{ s: string }>(`select index_state as s from regen.versions where tag = 'bench@2'`)).rows[0]!.s;
    } finally {
      await worker.stop();
    }
  } finally {
    await server.close();
    await cluster.stop();
  }

  const [alone, edited, share0] = migrations as [Migration, Migration, Migration];
  const p = (s: number[], q: number) => percentile(s, q).toFixed(2);
  const latencyRows = [before!, edited.edits!, share0.edits!].map((ph) => [ph.label, fmtInt(ph.samples.length), ph.seconds.toFixed(0),
    p(ph.samples, 50), p(ph.samples, 95), p(ph.samples, 99), Math.max(...ph.samples).toFixed(1)]);
  const share = (m: Migration) => (m.jobs ? m.jobs.backfill / Math.max(1, m.jobs.fresh + m.jobs.backfill) : 1);
  const migrationRows = migrations.map((m) => [m.label, m.done < size.docs ? `${m.seconds.toFixed(1)} (stopped: ${fmtInt(m.done)} rows done)` : m.seconds.toFixed(1),
    m.rowsPerSecond.toFixed(0),
    (m.rowsPerSecond / alone.rowsPerSecond).toFixed(2),
    m.jobs ? `${fmtInt(m.jobs.fresh)} / ${fmtInt(m.jobs.backfill)} (${(100 * share(m)).toFixed(0)}% backfill)` : '—',
    m.jobs ? `${(100 * m.jobs.time).toFixed(0)}%` : '—',
    m.freshJobs ? `${fmtInt(m.freshJobs.jobs)} jobs, ${(m.freshJobs.rows / Math.max(1, m.freshJobs.jobs)).toFixed(1)} rows each, ${fmtInt(m.freshJobs.single)} of one row` : '—']);
  const delta = percentile(edited.edits!.samples, 99) - percentile(before!.samples, 99);
  const top = (m: Migration) => {
    const total = [...m.waits.values()].reduce((a, b) => a + b, 0);
    return [...m.waits].sort((a, b) => b[1] - a[1]).slice(0, 6).map(([k, n]) => `${k} ${(100 * n / Math.max(1, total)).toFixed(0)}%`).join('; ');
  };
  const holders = (m: Migration) => {
    const samples = m.heldBy.get('') ?? 0;
    const held = [...m.heldBy].filter(([k]) => k !== '').sort((a, b) => b[1] - a[1]);
    if (held.length === 0) return 'never held when sampled';
    return held.slice(0, 4).map(([k, n]) => `${k} ${(100 * n / Math.max(1, samples)).toFixed(0)}%`).join('; ');
  };
  const waitRows = migrations.map((m) => [m.label, top(m), holders(m)]);
  const ratio = edited.rowsPerSecond / alone.rowsPerSecond;
  const goals: Goal[] = [
    { name: `migration throughput under ${EDITS_PER_SECOND} edits/s against alone (defaults)`, measured: `${ratio.toFixed(2)}×`,
      wanted: '≥ 0.5× (the backfill keeps at least half)', met: ratio >= 0.5 },
    { name: 'share of the jobs worked that were backfill, during that migration', measured: `${(100 * share(edited)).toFixed(0)}%`,
      wanted: '≥ 50% while both wait', met: share(edited) >= 0.5 },
    { name: `edit p99 during the migration minus p99 before (${EDITS_PER_SECOND} edits/s, defaults)`,
      measured: `${delta >= 0 ? '+' : '−'}${Math.abs(delta).toFixed(1)} ms (${p(edited.edits!.samples, 99)} ms against ${p(before!.samples, 99)} ms)`,
      wanted: `≤ +${LATENCY_TARGET_MS} ms`, met: delta <= LATENCY_TARGET_MS },
  ];
  const markdown = [
    `## K. A model migration under a steady stream of edits${options.quick ? ' (quick smoke size: not a result)' : ''}`,
    '',
    ...headerLines(started, cluster.machine).map((l) => `- ${l}`),
    `- database: throwaway local cluster (src/local-postgres.ts); three tables of ${fmtInt(size.docs)} rows of ${DOC_BYTES} bytes ` +
      `(distinct texts), each a source of the serving version (${fmtInt(DIMENSIONS)} dimensions), embedded first; then each is ` +
      `migrated in turn to a second version of the same size (\`regen.start_migration\`; its index state at the end: ${indexState}); ` +
      'the serving version was loaded without its HNSW index, which was built before the edits began (set-up, not measured); ' +
      'the local OpenAI-compatible server (hashed embedder, no added latency); one pgregen worker process with the default settings ' +
      '(REGEN_JOBS_PER_FETCH 8, REGEN_CONCURRENCY 4, REGEN_ENQUEUE_INTERVAL_MS 250), restarted with REGEN_BACKFILL_SHARE=0 for the last run',
    `- edits: one autocommit \`UPDATE <table> set body = ... where id = $1\` at a time, on random rows of the table being migrated, ` +
      `started every ${1000 / EDITS_PER_SECOND} ms (a steady rate), client-side wall time each, from a process of its own (bench/editor.ts); each edit is a fresh edit of both versions`,
    '- a migration ends when the new version has no missing or outdated row of its table left (the edits keep making rows stale, ' +
      'which their own fresh jobs settle), the comparison run at the latest at twice the time of the default\'s; throughput = rows ' +
      'done / seconds from `start_migration` to then; jobs worked: the jobs (of both versions) that the worker started meanwhile ' +
      '(pgboss.job.started_on), fresh edits and backfill, and the backfill\'s share of their job time (fetch to completion, ' +
      'summed over jobs: the jobs of a batch share it)',
    '',
    '**Migration throughput**',
    '',
    table(['migration', 'seconds', 'rows/s', 'against alone', 'jobs worked: fresh / backfill', 'backfill\'s share of job time',
      'fresh-edit jobs of the new version'], migrationRows),
    '',
    '**What the database sessions were doing during each migration** (the worker\'s, the editor\'s and autovacuum\'s; sampled ' +
      'four times a second from `pg_stat_activity`: wait event or on CPU, and the statement; share of the samples; and the ' +
      'sessions holding a source\'s applier lock at those moments, from `pg_locks`: what they were doing, share of all samples)',
    '',
    table(['migration', 'most sampled', 'applier lock held by'], waitRows),
    '',
    '**Edit latency (ms)**',
    '',
    table(['phase', 'edits', 'seconds', 'p50', 'p95', 'p99', 'max'], latencyRows),
    '',
    `At ${EDITS_PER_SECOND} edits/s the worker's \`regen.enqueue_fresh\` (every 250 ms) gathers the edits of each interval into jobs ` +
      'of up to 64 rows per version, so an edit does not make a job of its own (the last column above). REGEN_BACKFILL_SHARE of the ' +
      'worker\'s fetch loops (2 of its 4 here) take backfill jobs first whenever backfill waits, the others fresh edits first ' +
      '(src/worker/loop.ts). `Lock advisory` in the samples is the source\'s applier lock of sql/0020 (`regen._apply_source`: one ' +
      'applier of a source at a time, the lock held until the applier\'s transaction commits; `enqueue_fresh`, `prepare_inputs` ' +
      'and the settle step of `write_embeddings` apply, only when their rows have logged changes; `write_embeddings` itself judges ' +
      'its rows by their logged changes and takes no lock). The worker applies its rows\' logged edits in a short transaction of ' +
      'their own before each prepare and each write (`regen.apply_rows`), so that these rarely take it themselves.',
    '',
    '**Targets**',
    '',
    goalsTable(goals),
  ].join('\n');
  return { name: NAME, markdown };
}

/** Missing + outdated rows of a source in a version: the backfill not yet done. */
async function backlog(client: pg.Client, source: string, version: string): Promise<number> {
  const { rows: [r] } = await client.query<{ n: string }>(
    `select missing + outdated + case when role = 'active' then stale else 0 end as n from regen.embedding_gap where source = $1 and version = $2`,
    [source, version]);
  return Number(r?.n ?? Infinity);
}

async function waitForBacklog(client: pg.Client, source: string, version: string, upTo: number, timeoutMs: number, worker: WorkerProcess): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while ((await backlog(client, source, version)) > upTo) {
    if (worker.child.exitCode !== null) throw new Error(`the worker exited with ${worker.child.exitCode}:\n${worker.tail()}`);
    if (Date.now() > deadline) throw new Error(`${source} in ${version}: backlog not down to ${upTo} within ${timeoutMs / 1000} s`);
    await sleep(200);
  }
}

/** Edits random rows of `table` at a steady rate until `until()` says stop (or for `ms`). */
async function editFor(url: string, name: string, rows: number, until: number | (() => boolean), label: string): Promise<Phase> {
  const editor = await startEditor({ url, table: name, rows, perSecond: EDITS_PER_SECOND, seed: 7 });
  const end = typeof until === 'number' ? performance.now() + until : 0;
  const going = typeof until === 'number' ? () => performance.now() < end : until;
  while (going()) await sleep(20);
  const { samples, seconds } = await editor.stop();
  return { label, samples, seconds };
}

async function migrate(client: pg.Client, url: string, worker: WorkerProcess, name: string, rows: number, edits: boolean,
  label: string, capSeconds: number): Promise<Migration> {
  const at = (await client.query<{ at: Date }>('select clock_timestamp() as at')).rows[0]!.at;
  const t0 = performance.now();
  await client.query(`select * from regen.start_migration($1, 'bench@2')`, [name]);
  let done = false;
  let left = rows;
  const finished = (async () => {
    while ((left = await backlog(client, name, 'bench@2')) > 0 && (performance.now() - t0) / 1000 < capSeconds) {
      if (worker.child.exitCode !== null) throw new Error(`the worker exited with ${worker.child.exitCode}:\n${worker.tail()}`);
      await sleep(200);
    }
    done = true;
  })();
  // what the database's sessions are doing, four times a second: the wait event (or on CPU) and the statement
  const waits = new Map<string, number>();
  const heldBy = new Map<string, number>();
  const sampling = (async () => {
    const sampler = new pg.Client({ connectionString: url, application_name: 'pgregen bench sampler' });
    await sampler.connect();
    try {
      while (!done) {
        const { rows: active } = await sampler.query<{ k: string }>(
          `select coalesce(wait_event_type || ' ' || wait_event, 'on CPU') || ': ' || coalesce(substring(query from 'regen\\.[a-z_]+'), substring(query from '^\\s*(\\S+\\s+\\S+)')) as k
             from pg_stat_activity where datname = current_database() and state = 'active' and pid <> pg_backend_pid()
              and application_name not like 'pgregen bench%'`);
        for (const { k } of active) waits.set(k, (waits.get(k) ?? 0) + 1);
        // who holds a source's applier lock (sql/0020's two-key advisory lock), and what it is doing
        const { rows: holders } = await sampler.query<{ k: string }>(
          `select case when a.state = 'active' then coalesce(a.wait_event_type || ' ' || a.wait_event, 'on CPU') else a.state end
                  || ': ' || coalesce(substring(a.query from 'regen\\.[a-z_]+'), substring(a.query from '^\\s*(\\S+\\s+\\S+)')) as k
             from pg_locks l join pg_stat_activity a on a.pid = l.pid
            where l.locktype = 'advisory' and l.objsubid = 2 and l.granted and l.database = (select oid from pg_database where datname = current_database())`);
        for (const { k } of holders) heldBy.set(k, (heldBy.get(k) ?? 0) + 1);
        heldBy.set('', (heldBy.get('') ?? 0) + 1);   // the samples taken
        await sleep(250);
      }
    } finally {
      await sampler.end();
    }
  })();
  const phase = edits ? await editFor(url, name, rows, () => !done, `during the migration, ${label}`) : undefined;
  await finished;
  await sampling;
  const seconds = (performance.now() - t0) / 1000;
  // the new version's fresh-edit jobs; the jobs the worker started meanwhile, of both versions
  const { rows: [fresh] } = await client.query<{ jobs: number; rows: number; single: number }>(
    `select count(*)::int as jobs, coalesce(sum(jsonb_array_length(data->'rows')), 0)::int as rows,
            count(*) filter (where jsonb_array_length(data->'rows') = 1)::int as single
       from pgboss.job where name = (select queue from regen.version_queues(array['bench@2']))
        and priority >= regen.fresh_priority() and created_on >= $1`, [at]);
  // job time: from a job's fetch to its completion, which the jobs of a batch share
  const { rows: [worked] } = await client.query<{ fresh: number; backfill: number; time: number }>(
    `select count(*) filter (where priority >= regen.fresh_priority())::int as fresh,
            count(*) filter (where priority < regen.fresh_priority())::int as backfill,
            (sum(extract(epoch from completed_on - started_on)) filter (where priority < regen.fresh_priority())
              / nullif(sum(extract(epoch from completed_on - started_on)), 0))::float8 as time
       from pgboss.job where name like 'regen\\_embed\\_v%' and started_on between $1 and $2`,
    [at, new Date(at.getTime() + seconds * 1000)]);
  // the edits' last fresh jobs, before the next run
  await waitForBacklog(client, name, 'bench@1', 0, 5 * 60_000, worker);
  return { label, seconds, done: rows - left, rowsPerSecond: (rows - left) / seconds, waits, heldBy, edits: phase, jobs: edits ? worked : undefined,
    freshJobs: edits ? fresh : undefined };
}
