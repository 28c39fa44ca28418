// Freshness as a number (sql/0026_freshness.sql): regen.freshness counts the edits not yet
// searchable from the moment they were made (through the log, the apply and the fresh job), the
// backfill waiting, and the delay from edit to vector of what was settled; `pgregen status` and the
// worker's Prometheus metrics show the same figures.
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startEmbeddingServer, type EmbeddingServer } from '../src/provider-server.ts';
import { readFreshness, type FreshnessRow } from '../src/freshness.ts';
import { formatStatus } from '../src/cli/status.ts';
import { readStatus } from '../src/status.ts';
import { startMigration } from '../src/migrate.ts';
import type { RunningWorker } from '../src/worker/run.ts';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { inProcessWorker, waitFor, waitForClosedGap, workerEnv } from './support/worker.ts';

const DIMS = 8;
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
  server.setLatency(0);
});

beforeEach(async () => {
  await db.query(`select regen.unregister_source(name) from regen._sources`);
  await db.query('drop table if exists notes');
  await db.query('delete from regen._versions');
  await db.query('truncate regen._progress');
  await db.query(`delete from pgboss.job where name like 'regen\\_embed\\_v%'`);
  await db.query(`select regen.create_version('hash@1', 'local-hash', $1, settings => '{"send_dimensions": true}')`, [DIMS]);
  await db.query('create table notes (id int primary key, body text not null, hits int not null default 1)');
  await db.query(`insert into notes (id, body) select g, 'note number ' || g from generate_series(1, 20) g`);
  await db.query(`select regen.register_source('notes', 'notes', 'id', 'body', priority_expression => 'hits', version => 'hash@1')`);
});

const row = async (version = 'hash@1'): Promise<FreshnessRow> => {
  const found = (await readFreshness(db))!.find((f) => f.source === 'notes' && f.version === version);
  if (!found) throw new Error(`no freshness row for notes ${version}`);
  return found;
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('regen.freshness', () => {
  it('counts an edit from when it was made until its vector is stored, then its delay', async () => {
    await db.query('select * from regen.rebuild()');
    worker = await inProcessWorker(workerEnv(db.url, server));
    await waitForClosedGap(db, 'notes', 20_000);
    expect(await row()).toMatchObject({ edits_waiting: 0, oldest_edit_seconds: null, backfill_waiting: 0, edits_settled_5m: 0 });
    await worker.stop();
    worker = undefined;

    // with no worker running, the edits wait: logged, then applied and fresh, then in a fresh job
    const edited = performance.now();
    await db.query(`update notes set body = body || ' (edited)' where id <= 5`);
    await db.query('update notes set hits = hits + 10 where id > 15');   // the priority only: no edit to wait for
    await sleep(600);
    const logged = await row();
    expect(logged.edits_waiting).toBe(5);
    expect(logged.oldest_edit_seconds).toBeGreaterThanOrEqual(0.5);
    await db.query('select regen.apply_changes()');
    const applied = await row();
    expect(applied.edits_waiting).toBe(5);
    expect(applied.oldest_edit_seconds).toBeGreaterThanOrEqual(logged.oldest_edit_seconds!);   // counted from the edit, not the apply
    expect(Number((await db.query('select regen.enqueue_fresh() as n')).rows[0].n)).toBe(5);
    const queued = await row();
    expect(queued.edits_waiting).toBe(5);
    expect(queued.oldest_edit_seconds).toBeGreaterThanOrEqual(applied.oldest_edit_seconds!);
    expect(queued.backfill_waiting).toBe(0);   // a fresh job is not backfill

    server.setLatency(300);
    worker = await inProcessWorker(workerEnv(db.url, server));
    await waitFor('the edits to be searchable', async () => (await row()).edits_waiting === 0, 20_000);
    const elapsed = (performance.now() - edited) / 1000;
    const done = await row();
    expect(done.edits_settled_5m).toBe(5);
    expect(done.edit_delay_p50_seconds).toBeGreaterThanOrEqual(0.9);   // 0.6 s waiting + the 0.3 s provider call at least
    expect(done.edit_delay_p99_seconds).toBeLessThanOrEqual(elapsed + 0.5);
    expect(done.edit_delay_max_seconds).toBeGreaterThanOrEqual(done.edit_delay_p99_seconds!);

    // the same figures in the worker's metrics and in pgregen status
    const metrics = await (await fetch(`http://127.0.0.1:${worker.port}/metrics`)).text();
    expect(metrics).toMatch(/^pgregen_oldest_edit_seconds\{source="notes",version="hash@1"\} 0$/m);
    const p99 = metrics.match(/^pgregen_edit_delay_seconds\{source="notes",version="hash@1",quantile="0\.99"\} ([\d.]+)$/m);
    expect(Number(p99?.[1])).toBeCloseTo(done.edit_delay_p99_seconds!, 3);
    const status = await readStatus(db);
    expect(status.freshness).toEqual(await readFreshness(db));
    const section = formatStatus(status).split('\nfreshness (')[1]!.split('\n\n')[0]!;
    const cells = section.split('\n').find((l) => l.includes('notes'))!.split('│').map((c) => c.trim()).filter(Boolean);
    const secs = (v: number | null) => `${v!.toFixed(2)} s`;
    expect(cells).toEqual(['notes', 'hash@1', 'active', '0', '-', '0', '-', '5', secs(done.edit_delay_p50_seconds), secs(done.edit_delay_p99_seconds)]);
  });

  it('counts a migration\'s rows as backfill waiting, and an edit meanwhile as waiting in both versions', async () => {
    await db.query('select * from regen.rebuild()');
    worker = await inProcessWorker(workerEnv(db.url, server));
    await waitForClosedGap(db, 'notes', 20_000);
    await worker.stop();
    worker = undefined;
    await db.query(`select regen.create_version('hash@2', 'local-hash', $1, settings => '{"send_dimensions": true}')`, [DIMS]);
    await startMigration(db, 'notes', 'hash@2');
    await sleep(300);
    await db.query(`update notes set body = 'rewritten' where id = 1`);
    const [active, building] = [await row('hash@1'), await row('hash@2')];
    expect(active).toMatchObject({ role: 'active', edits_waiting: 1, backfill_waiting: 0 });
    expect(building).toMatchObject({ edits_waiting: 1, backfill_waiting: 20 });
    expect(building.oldest_backfill_seconds).toBeGreaterThanOrEqual(0.3);
    expect(building.oldest_edit_seconds).toBeLessThan(building.oldest_backfill_seconds!);
  });
});
