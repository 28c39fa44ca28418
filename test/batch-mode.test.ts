// Batch mode (sql/0027_batch_mode.sql, src/worker/provider-batches.ts): a version's backfill goes
// through the provider's Batch API (the local server's), fresh edits through the synchronous
// endpoint; an edit made while its row is in a provider batch is refused as stale and embedded
// synchronously; an expired batch writes what it has and queues the rest again; a provider batch
// that a stopped worker left in flight is written back, once, by the next worker.
import OpenAI, { toFile } from 'openai';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startEmbeddingServer, type EmbeddingServer } from '../src/provider-server.ts';
import { prepareInputs } from '../src/store.ts';
import { startMigration } from '../src/migrate.ts';
import type { RunningWorker } from '../src/worker/run.ts';
import { freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { assertStoreConsistent, inProcessWorker, spawnWorker, waitFor, waitForClosedGap, workerEnv } from './support/worker.ts';

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
  server.setBatchOptions({});
});

beforeEach(async () => {
  await db.query(`select regen.unregister_source(name) from regen._sources`);
  await db.query('drop table if exists notes');
  await db.query('delete from regen._versions');
  await db.query(`delete from pgboss.job where name like 'regen\\_embed\\_v%'`);
  await db.query(`select regen.create_version('sync@1', 'local-hash', $1, settings => '{"send_dimensions": true}')`, [DIMS]);
  await db.query('create table notes (id int primary key, body text not null)');
  await db.query(`insert into notes select g, 'note number ' || g from generate_series(1, 40) g`);
  await db.query(`select regen.register_source('notes', 'notes', 'id', 'body', version => 'sync@1')`);
  await db.query('select * from regen.rebuild()');
  worker = await inProcessWorker(workerEnv(db.url, server));
  await waitForClosedGap(db, 'notes', 20_000);
  await worker.stop();
  worker = undefined;
  await db.query(`select regen.create_version('batch@2', 'local-hash', $1, settings => '{"send_dimensions": true}')`, [DIMS]);
  await db.query(`select regen.set_batch_mode('batch@2', true)`);
});

const batches = async () => (await db.query(`select state, provider_status, lines, written, requeued from regen.provider_batches order by created_at`)).rows;
const current = async (version: string) =>
  Number((await db.query(`select current from regen.embedding_gap where source = 'notes' and version = $1`, [version])).rows[0].current);

describe('batch mode', () => {
  it('builds a migration through the Batch API; an edit meanwhile is refused as stale and embedded synchronously', async () => {
    server.setBatchOptions({ msPerLine: 40 });   // about 1.6 s for the 40 lines
    const [syncBefore, batchBefore] = [server.stats.inputs, server.batchStats.inputs];
    await startMigration(db, 'notes', 'batch@2');
    worker = await inProcessWorker(workerEnv(db.url, server));
    await waitFor('the provider batch submitted', async () => (await batches()).some((b) => b.state === 'submitted'), 20_000);
    await db.query(`update notes set body = 'edited while in the batch' where id = 7`);
    await waitFor('the batch written back', async () => (await batches()).every((b) => b.state === 'written'), 40_000, 250);
    await waitFor('batch@2 current', async () => (await current('batch@2')) === 40, 20_000);
    expect(await batches()).toEqual([{ state: 'written', provider_status: 'completed', lines: 40, written: 39, requeued: 0 }]);
    expect(server.batchStats.inputs - batchBefore).toBe(40);
    // synchronous inputs: the edit, once per version (sync@1 in service and batch@2)
    expect(server.stats.inputs - syncBefore).toBe(2);
    const { rows: [edited] } = await db.query(`select e.content_hash = sha256(convert_to(n.body, 'UTF8')) as current
      from regen._embeddings e join notes n on n.id::text = e.row_id where e.row_id = '7' and e.version_id = regen._version_id('batch@2')`);
    expect(edited.current).toBe(true);
    await assertStoreConsistent(db);
  });

  it('an expired batch writes what it embedded and queues the rest again, which the worker embeds', async () => {
    server.setBatchOptions({ msPerLine: 100, expireAfterMs: 1_200 });
    await startMigration(db, 'notes', 'batch@2');
    worker = await inProcessWorker(workerEnv(db.url, server));
    await waitFor('the batch written back', async () => (await batches()).some((b) => b.state === 'written'), 40_000, 250);
    const [first] = await batches();
    expect(first).toMatchObject({ state: 'written', provider_status: 'expired' });
    expect(first.written).toBeGreaterThan(0);
    expect(first.written).toBeLessThan(40);
    expect(first.requeued).toBe(40 - first.written);
    server.setBatchOptions({});
    await waitFor('batch@2 current', async () => (await current('batch@2')) === 40, 40_000, 250);
    await assertStoreConsistent(db);
  });

  it('a record a worker left submitting when it died: found at the provider by its metadata and written, or given up and queued again', async () => {
    await startMigration(db, 'notes', 'batch@2');
    // what a worker that died between recording and marking leaves: two records (the first also
    // created at the provider, the second not), made two minutes ago
    const ids: string[] = [];
    for (const rows of [['1', '2', '3', '4', '5'], ['6', '7', '8']]) {
      const inputs = await prepareInputs(db, 'notes', 'batch@2', rows);
      const { rows: [r] } = await db.query(`select regen.record_provider_batch('batch@2', 'notes', $1, $2, $3, $4) as id`,
        [inputs.map((i) => i.rowId), inputs.map((i) => i.chunkNo), inputs.map((i) => i.contentHash), inputs.map((i) => i.textHash)]);
      ids.push(r.id);
      if (ids.length === 1) {
        const client = new OpenAI({ apiKey: 'test-key', baseURL: server.url });
        const lines = inputs.map((i) => JSON.stringify({ custom_id: i.textHash.toString('hex'), method: 'POST', url: '/v1/embeddings',
          body: { model: 'local-hash', input: i.input, encoding_format: 'float', dimensions: DIMS } }));
        const file = await client.files.create({ file: await toFile(Buffer.from(lines.join('\n')), 'x.jsonl'), purpose: 'batch' });
        await client.batches.create({ input_file_id: file.id, endpoint: '/v1/embeddings', completion_window: '24h', metadata: { pgregen_batch: r.id } });
      }
    }
    await db.query(`update regen._provider_batches set created_at = now() - interval '2 minutes'`);
    const batchBefore = server.batchStats.batches;
    worker = await inProcessWorker(workerEnv(db.url, server));
    await waitFor('batch@2 current', async () => (await current('batch@2')) === 40, 40_000, 250);
    const { rows: ended } = await db.query(`select id, state, written, requeued, last_error from regen.provider_batches where id = any($1)`, [ids]);
    expect(ended.find((b) => b.id === ids[0])).toMatchObject({ state: 'written', written: 5, requeued: 0 });
    expect(ended.find((b) => b.id === ids[1])).toMatchObject({ state: 'abandoned', requeued: 3, last_error: expect.stringMatching(/never created/) });
    expect(server.batchStats.batches - batchBefore).toBeGreaterThanOrEqual(1);   // the rest, and the 3 given up, in a new batch
    await assertStoreConsistent(db);
  });

  it('a fresh edit whose text a provider batch in flight has claimed is embedded at once, not after the batch', async () => {
    await startMigration(db, 'notes', 'batch@2');
    // every row's text in a provider batch in flight (recorded, its claims held; never finishing here)
    const inputs = await prepareInputs(db, 'notes', 'batch@2', Array.from({ length: 40 }, (_, i) => String(i + 1)));
    const { rows: [r] } = await db.query(`select regen.record_provider_batch('batch@2', 'notes', $1, $2, $3, $4) as id`,
      [inputs.map((i) => i.rowId), inputs.map((i) => i.chunkNo), inputs.map((i) => i.contentHash), inputs.map((i) => i.textHash)]);
    await db.query(`insert into regen._claims (version_id, text_hash, job_id) select regen._version_id('batch@2'), t, $1 from unnest($2::bytea[]) t
                    on conflict do nothing`, [r.id, inputs.map((i) => i.textHash)]);
    await db.query(`select regen.provider_batch_submitted($1, 'batch_never_finishing', 'file-x', now() + interval '1 day')`, [r.id]);
    // row 2 is edited to row 1's text: a fresh edit whose text the provider batch holds
    await db.query(`update notes set body = (select body from notes where id = 1) where id = 2`);
    worker = await inProcessWorker(workerEnv(db.url, server));
    await waitFor('row 2 current in batch@2', async () => (await db.query(
      `select embedded_hash = content_hash as current from regen._items where row_id = '2' and version_id = regen._version_id('batch@2')`)).rows[0]?.current === true,
      15_000, 200);
    expect((await batches())[0]).toMatchObject({ state: 'submitted' });   // still in flight
  });

  it('kill -9 of the worker while its provider batch is in flight: the next worker writes it back, once', async () => {
    server.setBatchOptions({ msPerLine: 60 });
    const syncBefore = server.stats.inputs;
    await startMigration(db, 'notes', 'batch@2');
    const killed = spawnWorker(workerEnv(db.url, server));
    try {
      await waitFor('the provider batch submitted', async () => (await batches()).some((b) => b.state === 'submitted'), 30_000);
    } finally {
      killed.child.kill('SIGKILL');
      await killed.exited;
    }
    const batchBefore = server.batchStats.batches;
    worker = await inProcessWorker(workerEnv(db.url, server));
    await waitFor('batch@2 current', async () => (await current('batch@2')) === 40, 40_000, 250);
    expect(await batches()).toEqual([{ state: 'written', provider_status: 'completed', lines: 40, written: 40, requeued: 0 }]);
    expect(server.batchStats.batches).toBe(batchBefore);   // nothing submitted again
    expect(server.stats.inputs - syncBefore).toBe(0);      // nothing of the migration went synchronous
    await assertStoreConsistent(db);
  }, 90_000);

  it('a provider batch a stopped worker left in flight is written back once by the next worker', async () => {
    server.setBatchOptions({ msPerLine: 60 });
    await startMigration(db, 'notes', 'batch@2');
    worker = await inProcessWorker(workerEnv(db.url, server));
    await waitFor('the provider batch submitted', async () => (await batches()).some((b) => b.state === 'submitted'), 20_000);
    await worker.stop();
    worker = undefined;
    await new Promise((r) => setTimeout(r, 3_000));   // the batch finishes while no worker runs
    expect((await batches())[0].state).toBe('submitted');
    const batchBefore = server.batchStats.batches;
    worker = await inProcessWorker(workerEnv(db.url, server));
    await waitFor('batch@2 current', async () => (await current('batch@2')) === 40, 30_000, 250);
    expect(await batches()).toEqual([{ state: 'written', provider_status: 'completed', lines: 40, written: 40, requeued: 0 }]);
    expect(server.batchStats.batches).toBe(batchBefore);   // nothing submitted again
    await assertStoreConsistent(db);
  });
});
