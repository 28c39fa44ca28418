// The worker learns of new versions and new jobs through LISTEN/NOTIFY (sql/0025_notify.sql), not
// at its next poll: here the polls are 30 s apart (and the look for new versions 10 s), so only a
// notification can make the worker act within the few seconds these tests allow. A dropped
// notification connection comes back by itself.
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startEmbeddingServer, type EmbeddingServer } from '../src/provider-server.ts';
import { startMigration } from '../src/migrate.ts';
import type { RunningWorker } from '../src/worker/run.ts';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { inProcessWorker, waitFor, waitForClosedGap, workerEnv } from './support/worker.ts';

const DIMS = 8;
const SLOW_POLL = { REGEN_POLL_INTERVAL_SECONDS: '30' };
let db: TestDatabase;
let server: EmbeddingServer;
let worker: RunningWorker | undefined;

beforeAll(async () => {
  db = await freshDatabase();
  server = await startEmbeddingServer({ dimensions: DIMS });
});
keepOnFailure(() => db);
afterAll(async () => { await server.close(); });
afterEach(async () => {
  await worker?.stop();
  worker = undefined;
});

beforeEach(async () => {
  await db.query(`select regen.unregister_source(name) from regen._sources`);
  await db.query('drop table if exists notes');
  await db.query('delete from regen._versions');
  await db.query(`delete from pgboss.job where name like 'regen\\_embed\\_v%'`);
  await db.query(`select regen.create_version('hash@1', 'local-hash', $1, settings => '{"send_dimensions": true}')`, [DIMS]);
  await db.query('create table notes (id int primary key, body text not null)');
  await db.query(`insert into notes select g, 'note number ' || g from generate_series(1, 20) g`);
  await db.query(`select regen.register_source('notes', 'notes', 'id', 'body', version => 'hash@1')`);
  await db.query('select * from regen.rebuild()');
});

/** Seconds until the version's gap of notes is closed. */
async function secondsToCurrent(version: string, rows = 20): Promise<number> {
  const started = performance.now();
  await waitFor(`${version} current`, async () => {
    const { rows: [gap] } = await db.query(`select current::int from regen.embedding_gap where source = 'notes' and version = $1`, [version]);
    return gap?.current === rows;
  }, 8_000, 50);
  return (performance.now() - started) / 1000;
}

const listening = async () => (await db.query(`select pid from pg_stat_activity
                                               where application_name = 'pgregen worker (listen)' and datname = current_database()`)).rows;

describe('LISTEN/NOTIFY', () => {
  it('a version created while the worker runs is served at once, not at its next look for versions', async () => {
    worker = await inProcessWorker(workerEnv(db.url, server, SLOW_POLL));
    await waitForClosedGap(db, 'notes', 8_000);   // the jobs of the rebuild: fetched as the worker started
    await waitFor('the worker to listen', async () => (await listening()).length === 1, 8_000);
    await db.query(`select regen.create_version('hash@2', 'local-hash', $1, settings => '{"send_dimensions": true}')`, [DIMS]);
    await startMigration(db, 'notes', 'hash@2');
    expect(await secondsToCurrent('hash@2')).toBeLessThan(5);
  });

  it('a job enqueued while every fetch loop is idle is fetched at once, and so after the notification connection dropped', async () => {
    worker = await inProcessWorker(workerEnv(db.url, server, SLOW_POLL));
    await waitForClosedGap(db, 'notes', 8_000);
    await waitFor('the worker to listen', async () => (await listening()).length === 1, 8_000);
    await new Promise((r) => setTimeout(r, 1_500));   // every loop asleep for its 30 s poll
    await db.query(`update notes set body = body || ' (edited)' where id <= 5`);
    expect(await secondsToCurrent('hash@1')).toBeLessThan(4);   // the edits' fresh job (every 250 ms), fetched at once

    const [{ pid }] = await listening();
    await db.query('select pg_terminate_backend($1)', [pid]);
    await waitFor('the worker to listen again', async () => {
      const now = await listening();
      return now.length === 1 && now[0]!.pid !== pid;
    }, 8_000);
    await new Promise((r) => setTimeout(r, 1_500));
    await db.query(`update notes set body = body || ' (again)' where id > 15`);
    expect(await secondsToCurrent('hash@1')).toBeLessThan(4);
  });
});
