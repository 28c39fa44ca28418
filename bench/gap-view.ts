// B. Gap-view latency: how long `select * from regen.embedding_gap` takes on a warm connection at
// growing source sizes: right after compaction, after a burst of single-row edits, and after the
// same burst while compaction cannot run (deltas pile up); the per-tenant view with 100 tenants
// alongside. Every time counts are measured they are checked against a brute-force count.
import pg from 'pg';
import {
  check, fmtInt, fmtMs, openServer, percentile, renderTable, renderTargets, serverInfo, timed,
  type BenchOptions, type BenchReport, type ServerInfo, type Table, type Target,
} from './support.ts';

const SIZES = { full: [100_000, 1_000_000], quick: [10_000, 100_000] };
const BURST = { full: 10_000, quick: 1_000 };
const RUNS = 200;
const WARMUP = 10;
const TENANTS = 100;
const TARGET_MS = 100;
const TAG = 'bench@1';
const VIEWS = ['regen.embedding_gap', 'regen.embedding_gap_by_tenant'];
const COUNTS = ['expected', 'current', 'missing', 'stale', 'outdated', 'failed', 'queued'] as const;
const SCENARIOS = {
  compacted: 'just compacted',
  burst: 'after the burst',
  blocked: 'after the burst, compaction blocked',
} as const;
type Scenario = keyof typeof SCENARIOS;

interface Latency {
  rows: number;
  view: string;
  scenario: Scenario;
  pending: number;
  p50: number;
  p95: number;
  p99: number;
  max: number;
  executionMs: number;
}

interface Build {
  rows: number;
  insertMs: number;
  registerMs: number;
  mixMs: number;
  burstMs: number;
  compactMs: number;
  folded: number;
  mix: Record<string, number>;
}

export async function run(options: BenchOptions): Promise<BenchReport> {
  const sizes = options.quick ? SIZES.quick : SIZES.full;
  const burst = options.quick ? BURST.quick : BURST.full;
  const log = (line: string) => process.stderr.write(`gap-view: ${line}\n`);
  const server = await openServer(log);
  const latencies: Latency[] = [];
  const builds: Build[] = [];
  let info: ServerInfo | undefined;
  let selfFolding = false;
  try {
    for (const rows of sizes) {
      // A database per size, so the views only ever see this size's source.
      const scratch = await server.createDatabase();
      const client = new pg.Client({ connectionString: scratch.url, application_name: 'pgregen bench gap-view' });
      const blocker = new pg.Client({ connectionString: scratch.url, application_name: 'pgregen bench gap-view blocker' });
      await client.connect();
      await blocker.connect();
      try {
        info ??= await serverInfo(client);
        selfFolding ||= (await client.query(
          `select prosrc ~ 'compact_gap' as folds from pg_proc where oid = 'regen.tg_items__count'::regproc`)).rows[0].folds;
        builds.push(await measureSize(client, blocker, rows, burst, latencies, log));
      } finally {
        await blocker.end();
        await client.end();
        await scratch.drop();
      }
    }
  } finally {
    await server.stop();
  }

  const largest = sizes[sizes.length - 1]!;
  const tables: Table[] = [buildTable(builds), latencyTable(latencies)];
  const targets: Target[] = latencies
    .filter((l) => l.rows === largest && l.view === 'regen.embedding_gap')
    .map((l) => ({
      name: `regen.embedding_gap p99 at ${fmtInt(largest)} rows, ${SCENARIOS[l.scenario]} (${fmtInt(l.pending)} deltas not folded)`,
      measured: `${fmtMs(l.p99)} ms`, target: `< ${TARGET_MS} ms`, met: l.p99 < TARGET_MS,
    }));
  tables.push(renderTargets(targets));
  for (const table of tables) console.log(`\n${renderTable(table)}`);

  const figures: Record<string, number> = {};
  for (const b of builds) figures[`register_source ms at ${b.rows}`] = b.registerMs;
  for (const l of latencies) {
    for (const p of ['p50', 'p95', 'p99'] as const) figures[`${l.view} ${p} ms at ${l.rows}, ${SCENARIOS[l.scenario]}`] = l[p];
  }
  return {
    title: 'B. Gap-view latency',
    setup: [
      `database: ${server.origin}, a fresh one per size`,
      `source table docs (id bigint primary key, tenant text, body text), ${TENANTS} tenants, filled with insert … select generate_series ` +
        'before register_source, which captures the existing rows in one pass',
      'state mix set by SQL without the provider, through the real triggers so the counters stay exact: 60% made current in ' +
        'regen._items, then 5% of all rows edited in the source (current → stale), 1% failed, 1% outdated (has_legacy), ' +
        'the rest missing; queued is whatever the schema enqueued by itself (no worker runs here)',
      `latency: client-side wall time of \`select * from …\` on a warm connection, ${RUNS} runs after ${WARMUP} warm-up runs; ` +
        'EXPLAIN (ANALYZE) execution time from one more run',
      `burst: ${fmtInt(burst)} single-row UPDATEs of current rows' text, each its own transaction (a DO block committing after each), ` +
        'then measured without calling regen.compact_gap(); each edit appends at least 2 deltas (current −1, stale +1)' +
        (selfFolding ? '. The schema folds deltas itself as it goes (regen.tg_items__count calls compact_gap), so after a plain ' +
          'burst few are left; to see the unfolded case, a second burst of other rows ran while another session held ' +
          'compact_gap\'s advisory lock (as a long transaction that is compacting would), and all its deltas stayed' : ''),
      'correctness: after compaction and after each burst, every count of both views was checked equal to a brute-force count ' +
        'over regen._items using regen._state(); all equal (the run fails otherwise)',
    ],
    tables,
    targets,
    figures,
    server: info!,
  };
}

async function measureSize(
  client: pg.Client, blocker: pg.Client, rows: number, burst: number, latencies: Latency[], log: (line: string) => void,
): Promise<Build> {
  log(`${fmtInt(rows)} rows: building`);
  await client.query('create table docs (id bigint primary key, tenant text, body text)');
  const insertMs = await timed(() => client.query(
    `insert into docs select g, 'tenant-' || lpad((g % $2::int)::text, 3, '0'), 'document ' || g || ': ' || md5(g::text)
       from generate_series(1, $1::int) g`, [rows, TENANTS]));
  await client.query('vacuum analyze docs');
  await client.query(`select regen.create_version($1, 'bench-model', 1536)`, [TAG]);
  const registerMs = await timed(() =>
    client.query(`select regen.register_source('docs', 'docs', 'id', 'body', 'tenant', null, 1, null, $1)`, [TAG]));
  log(`${fmtInt(rows)} rows: register_source took ${(registerMs / 1000).toFixed(1)} s`);

  // Writes go through the real triggers (regen._items' counters, the source's capture), so the
  // counts stay exact; only the provider is skipped.
  const mixMs = await timed(async () => {
    await client.query(`update regen._items set embedded_hash = content_hash, plan_hash = content_hash, chunk_hashes = array[content_hash]
                         where row_id::bigint % 20 < 12`);
    await client.query(`update docs set body = body || ' (edited)' where id % 20 = 0`);
    await client.query(`update regen._items set failed_hash = content_hash, last_error = 'bench', attempts = 1 where row_id::bigint % 100 = 99`);
    await client.query(`update regen._items set has_legacy = true where row_id::bigint % 100 = 98`);
  });
  await compact(client);
  const mix = await verifyCounts(client, rows);
  log(`${fmtInt(rows)} rows: mix ${JSON.stringify(mix)}`);
  await measureViews(client, rows, 'compacted', latencies);

  // Edits of current rows (id % 20 in 1..11) make them stale; each burst takes rows the other did not.
  await editBurst(client, burst, 0);
  await verifyCounts(client, rows);
  await measureViews(client, rows, 'burst', latencies);
  await compact(client);

  // Held by another session, the lock makes every compact_gap() return at once, as it does while a
  // long transaction that started a compaction is still open.
  await blocker.query(`select pg_advisory_lock(hashtext('regen.compact_gap'))`);
  const digest = await countsDigest(client);
  let burstMs: number;
  try {
    burstMs = await editBurst(client, burst, burst);
    const pending = await pendingDeltas(client);
    check(pending >= 2 * burst, `${pending} deltas pending after ${burst} edits with compaction blocked, expected at least ${2 * burst}`);
    check(await countsDigest(client) === digest, 'regen._gap_counts changed while compaction was blocked: the burst was folded');
    await verifyCounts(client, rows);
    await measureViews(client, rows, 'blocked', latencies);
  } finally {
    await blocker.query(`select pg_advisory_unlock(hashtext('regen.compact_gap'))`);
  }
  let folded = 0;
  const compactMs = await timed(async () => {
    folded = await compact(client);
  });
  await verifyCounts(client, rows);
  return { rows, insertMs, registerMs, mixMs, burstMs, compactMs, folded, mix };
}

async function compact(client: pg.Client): Promise<number> {
  return Number((await client.query<{ n: string }>('select regen.compact_gap() as n')).rows[0]!.n);
}

/** The folded counts as one text: compaction is the only writer of regen._gap_counts. */
async function countsDigest(client: pg.Client): Promise<string> {
  return (await client.query<{ d: string }>(`select md5(coalesce(string_agg(c::text, ',' order by c::text), '')) as d from regen._gap_counts c`))
    .rows[0]!.d;
}

async function pendingDeltas(client: pg.Client): Promise<number> {
  return (await client.query<{ n: number }>('select count(*)::int as n from regen._gap_deltas')).rows[0]!.n;
}

/** `count` single-row edits of current rows, each committed on its own; returns the milliseconds taken. */
async function editBurst(client: pg.Client, count: number, skip: number): Promise<number> {
  return timed(() => client.query(`
    do $$
    declare
      r record;
    begin
      for r in select id from docs where id % 20 between 1 and 11 order by id limit ${count} offset ${skip} loop
        update docs set body = body || ' (burst)' where id = r.id;
        commit;
      end loop;
    end
    $$`));
}

async function measureViews(client: pg.Client, rows: number, scenario: Scenario, latencies: Latency[]): Promise<void> {
  const pending = await pendingDeltas(client);
  for (const view of VIEWS) {
    const sql = `select * from ${view}`;
    for (let i = 0; i < WARMUP; i++) await client.query(sql);
    const samples: number[] = [];
    for (let i = 0; i < RUNS; i++) samples.push(await timed(() => client.query(sql)));
    const { rows: [plan] } = await client.query<{ 'QUERY PLAN': [{ 'Execution Time': number }] }>(`explain (analyze, format json) ${sql}`);
    const l: Latency = {
      rows, view, scenario, pending,
      p50: percentile(samples, 50), p95: percentile(samples, 95), p99: percentile(samples, 99), max: Math.max(...samples),
      executionMs: plan!['QUERY PLAN'][0]['Execution Time'],
    };
    latencies.push(l);
    process.stderr.write(`gap-view: ${fmtInt(rows)} rows, ${view}, ${SCENARIOS[scenario]} (${fmtInt(pending)} deltas): ` +
      `p50 ${fmtMs(l.p50)} ms, p99 ${fmtMs(l.p99)} ms\n`);
  }
}

/** Both views against a brute-force count over every item; throws on any difference. Returns the totals. */
async function verifyCounts(client: pg.Client, rows: number): Promise<Record<string, number>> {
  const queued = await queuedExpression(client);
  const brute = (key: string) => `
    select ${key}, count(*) as expected,
           count(*) filter (where st = 'current') as current, count(*) filter (where st = 'missing') as missing,
           count(*) filter (where st = 'stale') as stale, count(*) filter (where st = 'outdated') as outdated,
           count(*) filter (where st = 'failed') as failed, count(*) filter (where q and st <> 'current') as queued
    from (select it.tenant, s.name as source, v.tag as version, ${queued} as q,
                 regen._state(it.content_hash, it.embedded_hash, it.failed_hash, it.has_legacy) as st
            from regen._items it join regen._sources s on s.id = it.source_id join regen._versions v on v.id = it.version_id) i
    group by ${key}`;
  const compare = async (view: string, key: string) => {
    const keyOf = (r: Record<string, unknown>) => key.split(', ').map((k) => String(r[k])).join('/');
    const counts = (r: Record<string, unknown>) => COUNTS.map((c) => `${c}=${Number(r[c])}`).join(' ');
    const bruteRows = (await client.query(brute(key))).rows;
    const want = new Map(bruteRows.map((r) => [keyOf(r), counts(r)]));
    const got = new Map((await client.query(`select * from ${view}`)).rows.map((r) => [keyOf(r), counts(r)]));
    check(got.size === want.size, `${view} has ${got.size} rows, brute force ${want.size}`);
    for (const [k, v] of want) check(got.get(k) === v, `${view} for ${k}: ${got.get(k)}; brute force: ${v}`);
    return bruteRows;
  };
  await compare('regen.embedding_gap_by_tenant', 'source, version, tenant');
  const [total] = await compare('regen.embedding_gap', 'source, version');
  check(Number(total!.expected) === rows, `embedding_gap expects ${total!.expected} rows, the source has ${rows}`);
  return Object.fromEntries(COUNTS.map((c) => [c, Number(total![c])]));
}

/** How an item's queued flag is stored; it has changed as the queue was built, so it is looked up. */
async function queuedExpression(client: pg.Client): Promise<string> {
  const { rows } = await client.query<{ column_name: string }>(
    `select column_name from information_schema.columns
      where table_schema = 'regen' and table_name = '_items' and column_name in ('queue_job', 'queued')`);
  const columns = rows.map((r) => r.column_name);
  if (columns.includes('queue_job')) return 'it.queue_job is not null';
  check(columns.includes('queued'), 'regen._items has neither queue_job nor queued: teach bench/gap-view.ts the new queue column');
  return 'it.queued';
}

function buildTable(builds: Build[]): Table {
  return {
    title: 'Building the data (seconds unless marked)',
    headers: ['source rows', 'insert … generate_series', 'register_source', 'register rows/s', 'state mix',
      'burst (compaction blocked)', 'compact_gap after it', 'current / stale / missing / failed / outdated (queued)'],
    rows: builds.map((b) => [
      fmtInt(b.rows), (b.insertMs / 1000).toFixed(1), (b.registerMs / 1000).toFixed(1), fmtInt(Math.round(b.rows / (b.registerMs / 1000))),
      (b.mixMs / 1000).toFixed(1), (b.burstMs / 1000).toFixed(1), `${fmtMs(b.compactMs)} ms (${fmtInt(b.folded)} deltas)`,
      `${['current', 'stale', 'missing', 'failed', 'outdated'].map((k) => fmtInt(b.mix[k]!)).join(' / ')} (${fmtInt(b.mix.queued!)})`,
    ]),
  };
}

function latencyTable(latencies: Latency[]): Table {
  return {
    title: `Gap-view latency (ms, client-side, ${RUNS} runs on a warm connection)`,
    headers: ['source rows', 'view', 'when', 'deltas not folded', 'p50', 'p95', 'p99', 'max', 'EXPLAIN ANALYZE execution'],
    rows: latencies.map((l) => [
      fmtInt(l.rows), l.view, SCENARIOS[l.scenario], fmtInt(l.pending),
      fmtMs(l.p50), fmtMs(l.p95), fmtMs(l.p99), fmtMs(l.max), fmtMs(l.executionMs),
    ]),
  };
}
