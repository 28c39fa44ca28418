// A batch never outlives its jobs' heartbeat or expiry (issue 13, item 2): the worker refreshes the
// heartbeat of its jobs while their batch works, so pg-boss never takes a job back from a worker
// that is still on it; and it gives a batch up itself before the jobs expire, writing what it has
// and handing the rest back, instead of being overtaken by a second worker on the same jobs.
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startEmbeddingServer, type EmbeddingServer } from '../src/provider-server.ts';
import { readConfig } from '../src/worker/config.ts';
import { startWorker, type RunningWorker } from '../src/worker/run.ts';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { assertStoreConsistent, waitFor, waitForClosedGap, workerEnv } from './support/worker.ts';

let db: TestDatabase;
let server: EmbeddingServer;
let worker: RunningWorker | undefined;
let lines: Array<{ msg: string; err?: string; time: number }> = [];

beforeAll(async () => {
  db = await freshDatabase();
  server = await startEmbeddingServer({ dimensions: 8 });
  await db.query(`select regen.create_version('hash@1', 'local-hash', 8, settings => '{"send_dimensions": true}')`);
  await db.query(`create table notes (id int primary key, body text not null, hits int not null)`);
  await db.query(`insert into notes select g, 'note ' || g, g from generate_series(1, 128) g`);
  await db.query(`select regen.register_source('notes', 'notes', 'id', 'body', priority_expression => 'hits', version => 'hash@1')`);
});
keepOnFailure(() => db);
afterAll(async () => { await server.close(); });
beforeEach(async () => {
  await db.query(`delete from regen._embeddings`);
  await db.query(`update regen._items set embedded_hash = null, queue_job = null`);
  await db.query(`truncate regen._cache`);
  await db.query(`delete from pgboss.job where name like 'regen\\_embed\\_v%'`);
  server.resetStats();
  lines = [];
});
afterEach(async () => {
  await worker?.stop();
  worker = undefined;
  server.setLatency(0);
});

/** The worker in this process, its log lines kept for the assertions. */
async function start(extra: Record<string, string>): Promise<RunningWorker> {
  const sink = new Writable({ write(chunk, _encoding, done) {
    for (const line of String(chunk).split('\n').filter(Boolean)) lines.push(JSON.parse(line) as { msg: string; err?: string; time: number });
    done();
  } });
  return startWorker(readConfig(workerEnv(db.url, server, { REGEN_CONCURRENCY: '1', REGEN_REQUEST_TIMEOUT_MS: '60000', ...extra })), pino({ level: 'info' }, sink));
}

/** Jobs copy these settings from their queue when enqueued: call before the rebuild. */
const tuneQueue = (settings: string) => db.query(`update pgboss.queue set ${settings} where name like 'regen\\_embed\\_v%'`);

describe('a batch and its jobs', () => {
  it('a batch three times longer than the heartbeat keeps its jobs: none is taken back, no text embedded twice', async () => {
    await tuneQueue('heartbeat_seconds = 2, retry_delay = 1, retry_backoff = false');
    await db.query(`select * from regen.rebuild()`);
    server.setLatency(6_000);
    worker = await start({ REGEN_JOBS_PER_FETCH: '2' });
    await waitForClosedGap(db, 'notes', 30_000);
    // the gap closes as the vectors are written; the worker completes the jobs right after
    const rows = await waitFor('the jobs to complete', async () => {
      const { rows: jobs } = await db.query(`select state, retry_count from pgboss.job where name like 'regen\\_embed\\_v%'`);
      return jobs.every((j) => j.state !== 'active') && jobs;
    }, 10_000);
    expect(rows).toEqual([{ state: 'completed', retry_count: 0 }, { state: 'completed', retry_count: 0 }]);
    expect(server.stats.inputs).toBe(128);
    expect(lines.filter((l) => l.msg === 'batch handed back to the queue')).toEqual([]);
    await assertStoreConsistent(db);
  });

  it('a batch that would outlive its jobs\' expiry gives them back itself, before pg-boss expires them', async () => {
    await tuneQueue('expire_seconds = 4, retry_delay = 1, retry_backoff = false');
    await db.query(`select * from regen.rebuild()`);
    server.setLatency(30_000);
    worker = await start({ REGEN_JOBS_PER_FETCH: '2' });
    const handedBack = await waitFor('the batch given up', async () =>
      lines.find((l) => l.msg === 'batch handed back to the queue'), 15_000, 50);
    server.setLatency(0);
    expect(handedBack.err).toMatch(/^batch ran out of time: its jobs expire after 4 s; what was embedded is written, the rest is retried$/);
    // given up at 90% of the expiry after the jobs were fetched: before pg-boss would have expired them
    const { rows: [first] } = await db.query<{ at: Date }>(
      `select min(started_on) as at from pgboss.job where name like 'regen\\_embed\\_v%'`);
    const seconds = (handedBack.time - first!.at.getTime()) / 1000;
    expect(seconds).toBeGreaterThanOrEqual(3.5);
    expect(seconds).toBeLessThan(4);
    await waitForClosedGap(db, 'notes', 30_000);
    // the gap closes as the vectors are written; the worker completes the jobs right after
    const rows = await waitFor('the jobs to complete', async () => {
      const { rows: jobs } = await db.query(`select state, retry_count from pgboss.job where name like 'regen\\_embed\\_v%'`);
      return jobs.every((j) => j.state !== 'active') && jobs;
    }, 10_000);
    expect(rows).toEqual([{ state: 'completed', retry_count: 1 }, { state: 'completed', retry_count: 1 }]);
    await assertStoreConsistent(db);
  });
});
