// Each distinct (version, text) is sent to the provider once, also when several batches or
// replicas want it at the same time (issue 13, item 2): regen.prepare_inputs claims the texts it
// leaves for the provider for its job; a batch that finds a text claimed by another active job
// defers those rows, and prepares them again once that job is done. A claim lapses with its job.
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startEmbeddingServer, type EmbeddingServer } from '../src/provider-server.ts';
import { prepareInputs, writeEmbeddings, type Input } from '../src/store.ts';
import type { RunningWorker } from '../src/worker/run.ts';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { embedRows, vectorOf } from './support/fixtures.ts';
import { assertStoreConsistent, inProcessWorker, spawnWorker, waitFor, waitForClosedGap, workerEnv, type SpawnedWorker } from './support/worker.ts';

let db: TestDatabase;
beforeAll(async () => {
  db = await freshDatabase();
  await db.query(`select regen.create_version('hash@1', 'local-hash', 8, settings => '{"send_dimensions": true}')`);
});
keepOnFailure(() => db);

async function reset(rows: string): Promise<void> {
  await db.query(`select regen.unregister_source(name) from regen._sources`);
  await db.query(`drop table if exists pages`);
  await db.query(`truncate regen._cache, regen._claims`);
  await db.query(`delete from pgboss.job where name like 'regen\\_embed\\_v%'`);
  await db.query(`create table pages (id int primary key, body text not null, hits int not null)`);
  await db.query(`insert into pages ${rows}`);
  await db.query(`select regen.register_source('pages', 'pages', 'id', 'body', priority_expression => 'hits', version => 'hash@1')`);
}

/** Puts the rows into a job of their own (as regen.rebuild does) and marks it taken by a worker. */
async function activeJob(rows: string[], force = false): Promise<string> {
  await db.query(`select regen._enqueue((select id from regen._sources where name = 'pages'), regen._version_id('hash@1'), $1, false, $2)`,
    [rows, force]);
  const { rows: [job] } = await db.query<{ id: string }>(`select queue_job as id from regen._items where row_id = $1`, [rows[0]]);
  await setState(job!.id, 'active');
  return job!.id;
}

const setState = (job: string, state: string) =>
  db.query(`update pgboss.job set state = $2, started_on = coalesce(started_on, now()) where id = $1`, [job, state]);
const prepare = (rows: string[], job: string, force = false) => prepareInputs(db, 'pages', 'hash@1', rows, { jobId: job, force });
const shape = (inputs: Input[]) => inputs.map((i) => ({ row: i.rowId, input: i.input, deferred: i.deferred }));

/** Writes a vector for every input that carries a text, as the worker does after the provider answered. */
async function write(inputs: Input[]): Promise<void> {
  const texts = new Map(inputs.filter((i) => i.input !== null).map((i) => [i.textHash.toString('hex'), i.input!]));
  const ready = inputs.filter((i) => texts.has(i.textHash.toString('hex')));
  await writeEmbeddings(db, 'pages', 'hash@1', ready.map((i) => ({
    rowId: i.rowId, chunkNo: i.chunkNo, contentHash: i.contentHash, embedding: vectorOf(texts.get(i.textHash.toString('hex'))!) })));
}

const current = async (row: string) =>
  (await db.query(`select embedded_hash = content_hash as current from regen._items where row_id = $1`, [row])).rows[0]?.current === true;

describe('claims, in SQL', () => {
  beforeEach(() => reset(`values (1, 'shared text', 4), (2, 'shared text', 3), (3, 'other 3', 2), (4, 'other 4', 1)`));

  it('a text claimed by an active job is deferred for another job, which then finds it in the store', async () => {
    const a = await activeJob(['1', '3']);
    const b = await activeJob(['2', '4']);
    const first = await prepare(['1', '3'], a);
    expect(shape(first)).toEqual([{ row: '1', input: 'shared text', deferred: false }, { row: '3', input: 'other 3', deferred: false }]);
    const second = await prepare(['2', '4'], b);
    expect(shape(second)).toEqual([{ row: '2', input: null, deferred: true }, { row: '4', input: 'other 4', deferred: false }]);
    await write(first);
    await write(second);
    expect(Number((await db.query(`select regen.release_claims($1) as n`, [[a]])).rows[0].n)).toBe(2);
    await setState(a, 'completed');
    // the deferred row again: a cache hit now, settled in SQL, nothing left for the provider
    expect(await prepare(['2'], b)).toEqual([]);
    for (const row of ['1', '2', '3', '4']) expect(await current(row)).toBe(true);
  });

  it('a claim lapses when its job is no longer active (a crashed worker, taken back by the heartbeat)', async () => {
    const a = await activeJob(['1']);
    const b = await activeJob(['2']);
    await prepare(['1'], a);
    expect(shape(await prepare(['2'], b))).toEqual([{ row: '2', input: null, deferred: true }]);
    await setState(a, 'retry');   // what pg-boss's supervisor does when the worker's heartbeat stops
    expect(shape(await prepare(['2'], b))).toEqual([{ row: '2', input: 'shared text', deferred: false }]);
    expect((await db.query(`select job_id from regen._claims`)).rows).toEqual([{ job_id: b }]);
    // the retried job finds the text claimed by the other one now
    await setState(a, 'active');
    expect(shape(await prepare(['1'], a))).toEqual([{ row: '1', input: null, deferred: true }]);
  });

  it('a job keeps its own claims across attempts; release_claims frees them; without a job nothing is claimed', async () => {
    const a = await activeJob(['1', '3']);
    await prepare(['1', '3'], a);
    expect(shape(await prepare(['1', '3'], a)).map((i) => i.deferred)).toEqual([false, false]);
    expect(Number((await db.query(`select count(*) as n from regen._claims where job_id = $1`, [a])).rows[0].n)).toBe(2);
    expect(Number((await db.query(`select regen.release_claims($1) as n`, [[a]])).rows[0].n)).toBe(2);
    expect(shape(await prepareInputs(db, 'pages', 'hash@1', ['2'])))
      .toEqual([{ row: '2', input: 'shared text', deferred: false }]);
    expect((await db.query(`select * from regen._claims`)).rows).toEqual([]);
  });

  it('a forced rebuild reuses a vector stored since its job was enqueued, and re-embeds older ones', async () => {
    await embedRows(db, ['1', '2', '3', '4'], 'pages', 'hash@1');
    const a = await activeJob(['1', '3'], true);
    const b = await activeJob(['2', '4'], true);
    const first = await prepare(['1', '3'], a, true);
    expect(shape(first)).toEqual([{ row: '1', input: 'shared text', deferred: false }, { row: '3', input: 'other 3', deferred: false }]);
    await write(first);
    await setState(a, 'completed');
    // 'shared text' was embedded by job a of the same rebuild; 'other 4' only before it
    expect(shape(await prepare(['2', '4'], b, true))).toEqual([{ row: '4', input: 'other 4', deferred: false }]);
  });
});

describe('claims, through the worker', () => {
  let server: EmbeddingServer;
  let worker: RunningWorker | undefined;
  let spawned: SpawnedWorker | undefined;
  beforeAll(async () => { server = await startEmbeddingServer({ dimensions: 8 }); });
  afterAll(async () => { await server.close(); });
  afterEach(async () => {
    await worker?.stop();
    worker = undefined;
    spawned?.child.kill('SIGKILL');
    spawned = undefined;
    server.setLatency(0);
  });
  // 128 rows of 64 texts: the two jobs of the rebuild (rows 128-65 and 64-1) want the same 64 texts.
  beforeEach(async () => {
    await reset(`select g, 'text ' || (g % 64), g from generate_series(1, 128) g`);
    server.resetStats();
  });

  it('two batches in flight at once that want the same texts send each text once', async () => {
    server.setLatency(1_000);
    expect((await db.query(`select jobs::int from regen.rebuild()`)).rows).toEqual([{ jobs: 2 }]);
    // two fetch loops, one job each: both batches start together
    worker = await inProcessWorker(workerEnv(db.url, server, { REGEN_JOBS_PER_FETCH: '1', REGEN_CONCURRENCY: '4' }));
    await waitForClosedGap(db, 'pages');
    expect(server.stats.inputs).toBe(64);
    expect(Math.max(...server.stats.texts.values())).toBe(1);
    expect((await db.query(`select count(*)::int as n from regen._items where embedded_hash = content_hash`)).rows[0].n).toBe(128);
    await assertStoreConsistent(db);
  });

  it('a holder killed in the middle of its request: the waiting batch completes once the claim lapses', async () => {
    // a short heartbeat, so that the killed worker's job is taken back within seconds
    await db.query(`update pgboss.queue set heartbeat_seconds = 2, retry_delay = 1, retry_backoff = false where name like 'regen\\_embed\\_v%'`);
    await db.query(`select * from regen.rebuild()`);
    server.setLatency(60_000);
    spawned = spawnWorker(workerEnv(db.url, server, { OPENAI_API_KEY: 'key-a', REGEN_JOBS_PER_FETCH: '1', REGEN_CONCURRENCY: '1' }));
    await waitFor('the first worker\'s request', async () => server.stats.requests > 0);
    expect(Number((await db.query(`select count(*) as n from regen._claims`)).rows[0].n)).toBe(64);
    server.setLatency(0);
    worker = await inProcessWorker(workerEnv(db.url, server, { OPENAI_API_KEY: 'key-b', REGEN_JOBS_PER_FETCH: '1', REGEN_CONCURRENCY: '1' }));
    // the second worker takes the other job and defers every row: its texts are the first one's
    await waitFor('the second job taken', async () => (await db.query(
      `select count(*)::int as n from pgboss.job where name like 'regen\\_embed\\_v%' and state = 'active'`)).rows[0].n === 2);
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    expect(server.stats.byKey['key-b']).toBeUndefined();
    spawned.child.kill('SIGKILL');
    await waitForClosedGap(db, 'pages', 60_000);
    // the survivor embedded each text once (the killed worker's request never came back)
    expect(server.stats.byKey['key-b']?.inputs).toBe(64);
    expect((await db.query(`select count(*)::int as n from regen._items where embedded_hash = content_hash`)).rows[0].n).toBe(128);
    await assertStoreConsistent(db);
  }, 90_000);
});
