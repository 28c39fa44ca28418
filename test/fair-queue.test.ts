// Fresh edits stay ahead of backfill but cannot starve it (issue 13, item 2): under a steady stream
// of edits, REGEN_BACKFILL_SHARE of the worker's fetch loops take backfill first (here one loop, so
// every other batch). The share is read from the jobs pg-boss handed out while both kinds waited;
// REGEN_BACKFILL_SHARE=0 (fresh edits always first, pg-boss's own order) is the control that shows
// the starvation.
import pg from 'pg';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startEmbeddingServer, type EmbeddingServer } from '../src/provider-server.ts';
import { readConfig } from '../src/worker/config.ts';
import type { RunningWorker } from '../src/worker/run.ts';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { assertStoreConsistent, inProcessWorker, waitForClosedGap, workerEnv } from './support/worker.ts';

const ROWS = 3200;   // 50 backfill jobs of 64 rows
let db: TestDatabase;
let server: EmbeddingServer;
let worker: RunningWorker | undefined;

beforeAll(async () => {
  db = await freshDatabase();
  server = await startEmbeddingServer({ dimensions: 8, latencyMs: 100 });
  await db.query(`select regen.create_version('hash@1', 'local-hash', 8, settings => '{"send_dimensions": true}')`);
});
keepOnFailure(() => db);
afterAll(async () => { await server.close(); });
afterEach(async () => {
  await worker?.stop();
  worker = undefined;
});

beforeEach(async () => {
  await db.query(`select regen.unregister_source(name) from regen._sources`);
  await db.query(`drop table if exists notes`);
  await db.query(`delete from pgboss.job where name like 'regen\\_embed\\_v%'`);
  await db.query(`create table notes (id int primary key, body text not null, hits int not null)`);
  await db.query(`insert into notes select g, 'note ' || g, g from generate_series(1, ${ROWS}) g`);
  await db.query(`select regen.register_source('notes', 'notes', 'id', 'body', priority_expression => 'hits', version => 'hash@1')`);
});

/**
 * Edits one row every 10 ms for `ms` (its own connection): with the worker moving fresh edits into
 * the queue every 20 ms, about 50 fresh jobs a second, far more than the worker below can work.
 */
async function editStream(ms: number): Promise<{ from: Date; to: Date }> {
  const editor = new pg.Client({ connectionString: db.url });
  await editor.connect();
  try {
    const from = (await editor.query<{ now: Date }>('select clock_timestamp() as now')).rows[0]!.now;
    for (let i = 0; Date.now() - from.getTime() < ms; i++) {
      await editor.query(`update notes set body = 'edit ' || $1::int || ' of note ' || id where id = $2`, [i, 1 + (i * 7919) % ROWS]);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const to = (await editor.query<{ now: Date }>('select clock_timestamp() as now')).rows[0]!.now;
    return { from, to };
  } finally {
    await editor.end();
  }
}

/**
 * The jobs pg-boss handed out in a time window, fresh edits and backfill, while both kinds waited:
 * from the first fresh job started in it to the end of the window, or to the last backfill job
 * started if the backfill ran out before.
 */
async function jobsStarted(window: { from: Date; to: Date }): Promise<{ fresh: number; backfill: number }> {
  const { rows } = await db.query<{ fresh: number; backfill: number }>(
    `with jobs as (select priority >= regen.fresh_priority() as fresh, started_on from pgboss.job
                    where name like 'regen\\_embed\\_v%'),
          worked as (select * from jobs where started_on between $1 and $2),
          waited as (select (select min(started_on) from worked where fresh) as since,
                            case when exists (select 1 from jobs where not fresh and (started_on is null or started_on > $2))
                                 then $2::timestamptz
                                 else (select max(started_on) from worked where not fresh) end as until)
     select count(*) filter (where fresh)::int as fresh, count(*) filter (where not fresh)::int as backfill
       from worked, waited where started_on between waited.since and waited.until`, [window.from, window.to]);
  return rows[0]!;
}

const env = (share?: string) => workerEnv(db.url, server, {
  REGEN_JOBS_PER_FETCH: '2', REGEN_CONCURRENCY: '1', REGEN_ENQUEUE_INTERVAL_MS: '20',
  ...(share === undefined ? {} : { REGEN_BACKFILL_SHARE: share }),
});

describe('the backfill keeps its share under a steady stream of edits', () => {
  it('by default half of the jobs worked are backfill, and both make progress', async () => {
    await db.query(`select * from regen.rebuild()`);
    worker = await inProcessWorker(env());
    const window = await editStream(4_000);
    const started = await jobsStarted(window);
    // one loop, two jobs a batch, every other batch backfill first: half, and more whenever no edit
    // waits. The window starts at a fresh job and may end after one: at most one batch (two jobs)
    // more of the edits' than of the backfill's, however few batches a loaded machine fits in it.
    expect(started.fresh).toBeGreaterThan(5);
    expect(started.backfill).toBeGreaterThanOrEqual(started.fresh - 2);
    await waitForClosedGap(db, 'notes', 120_000);
    await assertStoreConsistent(db);
  }, 150_000);

  it('with REGEN_BACKFILL_SHARE=0 the edits take every job while they wait (the starvation the share prevents)', async () => {
    await db.query(`select * from regen.rebuild()`);
    worker = await inProcessWorker(env('0'));
    // a shorter stream than above: every edit is a fresh job, all of which drain before the backfill
    const window = await editStream(2_000);
    const started = await jobsStarted(window);
    expect(started.fresh).toBeGreaterThan(5);
    expect(started.backfill / (started.fresh + started.backfill)).toBeLessThan(0.2);
    await waitForClosedGap(db, 'notes', 200_000);   // once the edits stop, the backfill runs
  }, 240_000);

  it('with only backfill waiting, the backfill gets every job of a fetch', async () => {
    await db.query(`select * from regen.rebuild()`);
    worker = await inProcessWorker(env());
    await waitForClosedGap(db, 'notes', 60_000);
    // pg-boss stamps the jobs of one fetch with its transaction's time (job_now(), now() by
    // default), so the jobs started together are the jobs of one fetch. Fifty jobs: 25 fetches of two.
    const { rows } = await db.query<{ jobs: number }>(
      `select count(*)::int as jobs from pgboss.job where name like 'regen\\_embed\\_v%' group by started_on order by started_on`);
    const batches = rows.map((r) => r.jobs);
    expect(batches).toEqual(Array(25).fill(2));
  });
});

describe('REGEN_BACKFILL_SHARE', () => {
  it('is a number from 0 to 0.9, 0.5 by default', () => {
    const base = { DATABASE_URL: 'postgres://x', OPENAI_API_KEY: 'k' };
    expect(readConfig(base).backfillShare).toBe(0.5);
    expect(readConfig({ ...base, REGEN_BACKFILL_SHARE: '0.25' }).backfillShare).toBe(0.25);
    for (const bad of ['1', '-0.1', 'half']) {
      expect(() => readConfig({ ...base, REGEN_BACKFILL_SHARE: bad })).toThrow(`REGEN_BACKFILL_SHARE=${bad} is not a number >= 0 and <= 0.9`);
    }
  });
});
