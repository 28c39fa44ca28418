// M. Rebuild to a valid index (issue 13, item 4): a full rebuild of every row of a source through
// the real worker, at 1,536 dimensions, from the rebuild button to gap = 0 with a valid HNSW index.
// Two scenarios, each measured the product's way and against its baseline, the same load with no
// index at all and then a plain CREATE INDEX of the same definition on the same table:
//
//   serving version   a disaster: every row of the served version missing. The product does what
//                     `pgregen rebuild` does: regen.index_deferral_plan names the (empty) index, it
//                     is dropped concurrently, regen.rebuild(), the worker loads, and once the gap
//                     is closed the index is built with CREATE INDEX CONCURRENTLY (buildVersionIndexes).
//   building version  a migration: regen.start_migration() of a version that gets no index, the
//                     worker loads, the index is built concurrently once the gap is closed.
//
// and, once, the path before this change: the serving version rebuilt with its index in place.
// Every path runs in a database of its own on the same cluster; the four compared paths run in
// rounds, in an order rotated from round to round, and medians are compared. Every build gets the
// same maintenance_work_mem. Target: each product path within 1.3x of its baseline, and the ratio
// not growing from the smaller size to the larger.
//
//   npm run bench -- --only index-build [--quick]
import pg from 'pg';
import { startEmbeddingServer } from '../src/provider-server.ts';
import { buildVersionIndexes, deferVersionIndexes } from '../src/versions.ts';
import { median } from './support.ts';
import {
  createDocs, documentText, fmtInt, goalsTable, headerLines, log, prng, registerDocs, sleep, startCluster, startWorkerProcess,
  table, waitForClosedGap, workerEnv, type BenchResult, type Cluster, type Goal, type WorkerProcess,
} from './worker-support.ts';

const NAME = 'index-build';
const DIMENSIONS = 1536;
const DOC_BYTES = 300;
const MAINTENANCE_WORK_MEM = '2GB';
const SIZES = { full: [{ rows: 20_000, rounds: 2 }, { rows: 100_000, rounds: 1 }], quick: [{ rows: 2_000, rounds: 1 }, { rows: 5_000, rounds: 1 }] };
const TARGET = 1.3;

type Path = 'serving' | 'serving baseline' | 'building' | 'building baseline' | 'in place';
const LABELS: Record<Path, string> = {
  serving: 'serving version: deferred, loaded, CREATE INDEX CONCURRENTLY (product)',
  'serving baseline': 'serving version: loaded without an index, CREATE INDEX',
  building: 'building version: loaded, CREATE INDEX CONCURRENTLY (product)',
  'building baseline': 'building version: loaded without an index, CREATE INDEX',
  'in place': 'serving version: loaded with its index in place (before this change)',
};
const BASELINE: Record<Path, Path> = {
  serving: 'serving baseline', 'serving baseline': 'serving baseline', 'in place': 'serving baseline',
  building: 'building baseline', 'building baseline': 'building baseline',
};
const COMPARED: Path[] = ['serving baseline', 'serving', 'building baseline', 'building'];
interface Run { path: Path; rows: number; loadS: number; indexS: number; totalS: number; phases: Record<string, number> }

export async function run(options: { quick: boolean }): Promise<BenchResult> {
  const plan = options.quick ? SIZES.quick : SIZES.full;
  const sizes = plan.map((p) => p.rows);
  // the compared paths rotated each round; the old path, the slow one, once at the smaller size
  const paths = (rows: number, round: number): Path[] => [...COMPARED.slice(round % 4), ...COMPARED.slice(0, round % 4),
    ...(rows === sizes[0] && round === 0 ? ['in place' as const] : [])];
  const say = log(NAME);
  const started = new Date();
  const cluster = await startCluster(say);
  const server = await startEmbeddingServer({ dimensions: DIMENSIONS, latencyMs: 0, seed: 1 });
  const runs: Run[] = [];
  try {
    let n = 0;
    for (const { rows, rounds } of plan) {
      for (let round = 0; round < rounds; round++) {
        for (const path of paths(rows, round)) {
          const result = await measure(cluster, server.url, path, rows, `index_build_${n++}`, say);
          say(`${fmtInt(rows)} rows, round ${round + 1}, ${path}: load ${result.loadS.toFixed(1)} s + index ${result.indexS.toFixed(1)} s = ` +
            `${result.totalS.toFixed(1)} s (${JSON.stringify(result.phases)})`);
          runs.push(result);
        }
      }
    }
  } finally {
    await server.close();
    await cluster.stop();
  }

  const of = (rows: number, path: Path) => runs.filter((r) => r.rows === rows && r.path === path);
  const med = (rows: number, path: Path, key: 'loadS' | 'indexS' | 'totalS') => median(of(rows, path).map((r) => r[key]));
  const ratio = (rows: number, path: Path) => med(rows, path, 'totalS') / med(rows, BASELINE[path], 'totalS');
  const all: Path[] = ['serving baseline', 'serving', 'in place', 'building baseline', 'building'];
  const rowsOut = sizes.flatMap((rows) => all.filter((path) => of(rows, path).length > 0).map((path) => [
    fmtInt(rows), LABELS[path], String(of(rows, path).length), med(rows, path, 'loadS').toFixed(1), med(rows, path, 'indexS').toFixed(1),
    med(rows, path, 'totalS').toFixed(1), of(rows, path).map((r) => r.totalS.toFixed(0)).join(', '), `${ratio(rows, path).toFixed(2)}x`]));
  // where an index build's time goes, by pg_stat_progress_create_index phase (median seconds)
  const phaseNames = [...new Set(runs.flatMap((r) => Object.keys(r.phases)))];
  const phaseRows = sizes.flatMap((rows) => COMPARED.map((path) => [fmtInt(rows), LABELS[path],
    ...phaseNames.map((ph) => { const xs = of(rows, path).map((r) => r.phases[ph] ?? 0); return median(xs) > 0 ? median(xs).toFixed(1) : '-'; })]));
  const goals: Goal[] = [];
  const [small, large] = sizes as [number, number];
  for (const path of ['serving', 'building'] as const) {
    for (const rows of sizes) {
      goals.push({ name: `${LABELS[path]}, ${fmtInt(rows)} rows: time to gap = 0 with a valid index, against its baseline`,
        measured: `${ratio(rows, path).toFixed(2)}x`, wanted: `≤ ${TARGET}x`, met: ratio(rows, path) <= TARGET });
    }
    goals.push({ name: `${LABELS[path]}: the ratio from ${fmtInt(small)} to ${fmtInt(large)} rows`,
      measured: `${ratio(small, path).toFixed(2)}x → ${ratio(large, path).toFixed(2)}x`, wanted: 'not growing', met: ratio(large, path) <= ratio(small, path) });
  }
  const markdown = [
    `## M. Rebuild to a valid index${options.quick ? ' (quick smoke size: not a result)' : ''}`,
    '',
    ...headerLines(started, cluster.machine).map((l) => `- ${l}`),
    `- database: throwaway local cluster (src/local-postgres.ts: shared_buffers 256MB, fsync off), a database of its own per run; ` +
      `docs (${sizes.map(fmtInt).join(' and ')} rows of ${DOC_BYTES} bytes), one source, versions of ${fmtInt(DIMENSIONS)} dimensions ` +
      '(cosine), the index pgregen builds (HNSW, pgvector\'s default m = 16, ef_construction = 64), PostgreSQL\'s default ' +
      `max_parallel_maintenance_workers (2), maintenance_work_mem ${MAINTENANCE_WORK_MEM} for every build; the deferral at the default ` +
      'min_rows (10,000; half the rows at the quick sizes)',
    '- the local OpenAI-compatible server (hashed embedder, no added latency) in the benchmark\'s process; one `pgregen worker` ' +
      'process with the default settings, started before the rebuild and running until the index is valid',
    '- load: from `regen.rebuild()` (the serving version, the product: from the deferral, which drops the empty index concurrently; ' +
      'the building version: from `regen.start_migration()`) until regen.embedding_gap shows nothing missing, stale or outdated for ' +
      'the version (polled every 200 ms); index: from then until the index is built, checked valid (`pg_index.indisvalid`) ' +
      'afterwards. Total = load + index.',
    `- runs: ${plan.map((p) => `${p.rounds} round(s) at ${fmtInt(p.rows)} rows`).join(', ')}; in a round the four compared paths ran ` +
      `one after the other, in an order rotated from round to round; the index-in-place path once, at ${fmtInt(small)} rows (it is the slow one)`,
    '',
    '**Time to gap = 0 with a valid index (s)**',
    '',
    table(['rows', 'path', 'runs', 'load', 'index', 'total', 'totals of the runs', 'against its baseline'], rowsOut),
    '',
    'Medians over the runs; the ratio is of the median totals, each path against the baseline of its scenario.',
    '',
    '**The index build by phase (s, median; sampled every 250 ms from pg_stat_progress_create_index)**',
    '',
    table(['rows', 'path', ...phaseNames], phaseRows),
    '',
    'A version being built is not searched before cutover, and a serving version missing most of its rows loses little by ' +
      'searching exactly for a while: so the load goes in without the index and the graph is built once, from the finished table. ' +
      'CREATE INDEX CONCURRENTLY waits for running transactions and scans the table a second time to validate the index: that is ' +
      'the difference to a plain CREATE INDEX, which would block every write to the store while it runs.',
    '',
    '**Targets**',
    '',
    goalsTable(goals),
  ].join('\n');
  return { name: NAME, markdown };
}

/** One path at one size, in a new database; the database is dropped afterwards. */
async function measure(cluster: Cluster, providerUrl: string, path: Path, rows: number, database: string,
  say: (line: string) => void): Promise<Run> {
  const { url, client } = await cluster.database(database);
  const random = prng(7);
  await createDocs(client, Array.from({ length: rows }, (_, i) => ({ id: i + 1, rank: i + 1, popularity: 0, body: documentText(i + 1, DOC_BYTES, random) })));
  await registerDocs(client, { tag: 'bench@1', dimensions: DIMENSIONS, priority: 'popularity' });
  await client.query('analyze regen._items');
  const migration = path === 'building' || path === 'building baseline';
  const version = migration ? 'bench@2' : 'bench@1';
  if (migration) {
    await client.query(`select regen.create_version('bench@2', 'local-hash', $1, settings => '{"send_dimensions": true}')`, [DIMENSIONS]);
  }
  // the serving baseline loads with no index at all (the building version has none)
  if (path === 'serving baseline') await client.query(`drop index regen._embeddings_hnsw_v${await versionId(client, version)}`);
  const worker = await startWorkerProcess(workerEnv(url, providerUrl, {}), say);
  let loadS: number;
  let indexS: number;
  let phases: Record<string, number> = {};
  try {
    const t0 = performance.now();
    if (path === 'serving') {
      // the default min_rows (10,000) at the full sizes; the quick sizes are below it
      const deferred = await deferVersionIndexes(client, { source: 'docs', minRows: Math.min(10_000, rows / 2) });
      if (deferred.length !== 1) throw new Error(`expected the serving version's index to be deferred, got ${JSON.stringify(deferred)}`);
    }
    if (migration) await client.query(`select * from regen.start_migration('docs', 'bench@2')`);
    else await client.query('select * from regen.rebuild()');
    await closedGap(client, version, worker);
    const t1 = performance.now();
    const watching = watchPhases(url);
    if (path === 'serving' || path === 'building') {
      const steps = await buildVersionIndexes(client, { version, backfilledOnly: true, maintenanceWorkMem: MAINTENANCE_WORK_MEM });
      if (steps.length !== 1 || steps[0]!.action !== 'create') throw new Error(`expected one concurrent build, got ${JSON.stringify(steps)}`);
    } else if (path !== 'in place') {
      await client.query(`set maintenance_work_mem = '${MAINTENANCE_WORK_MEM}'`);
      const { rows: [ddl] } = await client.query<{ statement: string }>(
        `select replace(statement, 'create index concurrently', 'create index') as statement from regen.version_index_plan($1)`, [version]);
      await client.query(ddl!.statement);
    }
    const t2 = performance.now();
    phases = await watching.stop();
    loadS = (t1 - t0) / 1000;
    indexS = (t2 - t1) / 1000;
  } finally {
    await worker.stop();
  }
  // what was measured: every row's vector stored, the version's index there and valid
  const { rows: [state] } = await client.query<{ vectors: string; valid: boolean }>(
    `select (select count(*) from regen._embeddings e where e.version_id = v.id) as vectors,
            (select i.indisvalid from pg_index i join pg_class c on c.oid = i.indexrelid
              where c.relname = '_embeddings_hnsw_v' || v.id and c.relnamespace = 'regen'::regnamespace) as valid
       from regen._versions v where v.tag = $1`, [version]);
  if (Number(state!.vectors) !== rows || state!.valid !== true) throw new Error(`${path}: ${JSON.stringify(state)} after the run`);
  await dropDatabase(cluster, database, client);
  return { path, rows, loadS, indexS, totalS: loadS + indexS, phases };
}

/** Seconds spent in each phase of the index build running meanwhile, sampled every 250 ms over a connection of its own. */
function watchPhases(url: string): { stop(): Promise<Record<string, number>> } {
  const seconds: Record<string, number> = {};
  let running = true;
  const done = (async () => {
    const client = new pg.Client({ connectionString: url, application_name: 'pgregen bench index progress' });
    await client.connect();
    try {
      let last = performance.now();
      while (running) {
        await sleep(250);
        const { rows: [p] } = await client.query<{ phase: string }>(
          `select phase from pg_stat_progress_create_index where relid = 'regen._embeddings'::regclass`);
        const now = performance.now();
        if (p) seconds[p.phase] = (seconds[p.phase] ?? 0) + (now - last) / 1000;
        last = now;
      }
    } finally {
      await client.end();
    }
  })();
  return { stop: async () => { running = false; await done; return seconds; } };
}

async function versionId(client: pg.Client, tag: string): Promise<number> {
  return (await client.query<{ id: number }>('select id from regen._versions where tag = $1', [tag])).rows[0]!.id;
}

/** Polls the version's gap every 200 ms until nothing is missing, stale or outdated. */
async function closedGap(client: pg.Client, version: string, worker: WorkerProcess): Promise<void> {
  if (version === 'bench@1') {
    await waitForClosedGap(client, { timeoutMs: 120 * 60_000, worker });
    return;
  }
  const deadline = Date.now() + 120 * 60_000;
  for (;;) {
    const { rows: [g] } = await client.query<{ open: string }>(
      `select missing + stale + outdated as open from regen.embedding_gap where source = 'docs' and version = $1`, [version]);
    if (Number(g!.open) === 0) return;
    if (worker.child.exitCode !== null) throw new Error(`the worker exited:\n${worker.tail()}`);
    if (Date.now() > deadline) throw new Error(`the gap of ${version} did not close`);
    await sleep(200);
  }
}

async function dropDatabase(cluster: Cluster, database: string, client: pg.Client): Promise<void> {
  await client.end();
  const admin = new pg.Client({ connectionString: cluster.pg.url });
  await admin.connect();
  try {
    await admin.query(`drop database if exists ${database} with (force)`);
  } finally {
    await admin.end();
  }
}
