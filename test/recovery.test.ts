// Disaster recovery as the seeds describe it: vectors are derived data, so the normal backup leaves
// them out; restore it, measure the gap, rebuild. The gap must never claim a vector the store does
// not hold, whatever removed it (a restore without the data, a truncate, a delete by hand, a partial
// restore), and with the defaults the worker brings the vectors back by itself, hot-first.
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Db } from '../src/db.ts';
import { startEmbeddingServer, type EmbeddingServer } from '../src/provider-server.ts';
import type { RunningWorker } from '../src/worker/run.ts';
import { adminPool, freshDatabase, keepOnFailure, type TestDatabase } from './support/db.ts';
import { gap } from './support/fixtures.ts';
import { quoteIdent } from './support/url.ts';
import { assertStoreConsistent, inProcessWorker, waitFor, waitForClosedGap, workerEnv } from './support/worker.ts';

const run = promisify(execFile);
const FIND_BIN = fileURLToPath(new URL('../scripts/find-pg-bin.sh', import.meta.url));
const BIN = fileURLToPath(new URL('../bin/pgregen.js', import.meta.url));
const DIMS = 16;
const ROWS = 60;

async function pgTool(name: string): Promise<string> {
  return (await run(FIND_BIN, [name])).stdout.trim();
}

/** The source database: articles of three tenants, hot rows by views, all embedded by the real worker. */
async function seed(db: TestDatabase): Promise<void> {
  await db.query(`create table articles (id bigint primary key, tenant text not null, body text not null, views integer not null)`);
  await db.query(`insert into articles select g, 'tenant_' || (g % 3), 'article ' || g || ' about topic ' || (g % 7), g
                  from generate_series(1, ${ROWS}) g`);
  await db.query(`select regen.create_version('hash@1', 'local-hash', ${DIMS}, settings => '{"send_dimensions": true}')`);
  await db.query(`select regen.register_source('articles', 'articles', 'id', 'body', tenant_column => 'tenant',
                                               priority_expression => 'views', version => 'hash@1')`);
  await db.query('select regen.rebuild()');
}

async function vectors(db: Db): Promise<number> {
  return (await db.query<{ n: number }>(`select count(*)::int as n from regen._embeddings`)).rows[0]!.n;
}

type GapRow = { expected: number; current: number; missing: number; stale: number; outdated: number; queued: number; store_verified: boolean };

async function gapRow(db: Db): Promise<GapRow> {
  const { rows: [row] } = await db.query<GapRow>(
    `select expected::int, current::int, missing::int, stale::int, outdated::int, queued::int, store_verified
       from regen.embedding_gap where source = 'articles'`);
  return row!;
}

describe('recovery', () => {
  let db: TestDatabase;
  let server: EmbeddingServer;
  let worker: RunningWorker | undefined;
  keepOnFailure(() => db);

  beforeAll(async () => {
    db = await freshDatabase('recovery');
    server = await startEmbeddingServer({ dimensions: DIMS });
    await seed(db);
    worker = await inProcessWorker(workerEnv(db.url, server));
    await waitForClosedGap(db, 'articles');
    expect(await vectors(db)).toBe(ROWS);
  });
  afterAll(async () => {
    await worker?.stop();
    await server?.close();
  });

  it('after pg_dump without the vectors and pg_restore: the gap shows every row missing, and the worker rebuilds them by itself', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'pgregen-dump-'));
    const dump = join(dir, 'backup.dump');
    const restored = `${db.name}_restored`;
    const admin = adminPool();
    let restoredPool: pg.Pool | undefined;
    let restoredWorker: RunningWorker | undefined;
    try {
      // the normal backup of a database with derived data: everything but the vectors
      await run(await pgTool('pg_dump'), ['--format=custom', '--file', dump,
        '--exclude-table-data=regen._embeddings', '--exclude-table-data=regen._cache', db.url]);
      await admin.query(`create database ${quoteIdent(restored)}`);
      const url = new URL(db.url);
      url.pathname = `/${restored}`;
      await run(await pgTool('pg_restore'), ['--exit-on-error', '--dbname', url.toString(), dump]);
      restoredPool = new pg.Pool({ connectionString: url.toString(), max: 4 });
      restoredPool.on('error', () => {});   // the drop below ends connections that pool.end() has let go

      // the capture function names the old table's oid (a restore gives every table a new one)
      const capture = async () => (await restoredPool!.query(`
        select pg_get_functiondef('regen.tg_articles__capture'::regproc) like '%tg_relid <> ' || s.relation::oid || '::oid%' as names_the_table,
               s.captured_relation = s.relation::oid as recorded
        from regen._sources s where s.name = 'articles'`)).rows[0];
      expect(await capture()).toEqual({ names_the_table: false, recorded: false });

      // the gap claims no vector: every row is missing, none current (judged against the empty store)
      expect(await vectors(restoredPool)).toBe(0);
      expect(await gapRow(restoredPool)).toMatchObject({ expected: ROWS, current: 0, missing: ROWS, store_verified: false });
      const byTenant = await restoredPool.query(`select sum(current)::int as current, sum(missing)::int as missing from regen.embedding_gap_by_tenant`);
      expect(byTenant.rows[0]).toEqual({ current: 0, missing: ROWS });
      // a dry run reconciles first and then sees the whole gap (it enqueues nothing)
      const dry = await restoredPool.query(`select items::int from regen.rebuild(dry_run => true)`);
      expect(dry.rows[0].items).toBe(ROWS);

      // the worker, started on the restored database, reconciles and re-enqueues hot-first by itself
      const before = server.stats.inputs;
      restoredWorker = await inProcessWorker(workerEnv(url.toString(), server));
      await waitForClosedGap(restoredPool, 'articles');
      expect(await gapRow(restoredPool)).toMatchObject({ expected: ROWS, current: ROWS, missing: 0, store_verified: true });
      // the worker's apply generated it again for the restored table
      expect(await capture()).toEqual({ names_the_table: true, recorded: true });
      await restoredWorker.stop();   // (so that no apply empties the log before it is read)
      restoredWorker = undefined;
      await restoredPool.query(`update articles set body = 'restored and edited' where id = 1`);
      const { rows: [logged] } = await restoredPool.query(`select count(*)::int as n from regen._changes where row_id = '1'`);
      expect(logged.n).toBe(1);
      expect(await vectors(restoredPool)).toBe(ROWS);
      expect(server.stats.inputs - before).toBe(ROWS);   // each text embedded once
      await assertStoreConsistent(restoredPool);
      // and a search inside a tenant finds that tenant's rows again
      const owner = await restoredPool.connect();
      try {
        await owner.query('begin');
        await owner.query(`select regen.set_tenant('tenant_1')`);
        const hits = await owner.query(`select row_id from regen.search_scoped((select embedding from regen._embeddings where row_id = '4'), 5)`);
        expect(hits.rows[0]).toEqual({ row_id: '4' });
        await owner.query('rollback');
      } finally {
        owner.release();
      }
    } finally {
      await restoredWorker?.stop();
      await restoredPool?.end();
      await admin.query(`drop database if exists ${quoteIdent(restored)} with (force)`);
      await admin.end();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('after TRUNCATE of the store: items turn missing at once and the running worker re-embeds them', async () => {
    await db.query('truncate regen._embeddings');
    expect(await gapRow(db)).toMatchObject({ expected: ROWS, current: 0, missing: ROWS, outdated: 0, store_verified: true });
    // the loss is recorded and picked up by the worker's next recovery round (every 10 s)
    const status = await db.query(`select lost_items_waiting::int as n from regen.recovery_status`);
    expect([0, ROWS]).toContain(status.rows[0].n);
    await waitForClosedGap(db, 'articles', 60_000);
    expect(await vectors(db)).toBe(ROWS);
    expect((await db.query(`select lost_items_waiting::int as n from regen.recovery_status`)).rows[0].n).toBe(0);
  });

  it('after a DELETE by hand: the rows come back from the cache without a provider call', async () => {
    const before = server.stats.inputs;
    await db.query(`delete from regen._embeddings where tenant = 'tenant_2'`);
    expect(await gapRow(db)).toMatchObject({ current: ROWS - ROWS / 3, missing: ROWS / 3 });
    await waitForClosedGap(db, 'articles', 60_000);
    expect(await vectors(db)).toBe(ROWS);
    expect(server.stats.inputs).toBe(before);
  });

  it('with auto_recover off, lost vectors wait for the rebuild button', async () => {
    await worker!.stop();
    worker = undefined;
    try {
      await db.query('select regen.set_auto_recover(false)');
      await db.query('truncate regen._embeddings');
      expect(await db.query('select * from regen.recover()').then((r) => r.rows)).toEqual([]);
      expect(await db.query(`select auto_recover, lost_items_waiting::int as n from regen.recovery_status`).then((r) => r.rows[0]))
        .toEqual({ auto_recover: false, n: ROWS });
      expect((await gapRow(db)).queued).toBe(0);
      const enqueued = await db.query(`select items::int from regen.rebuild()`);
      expect(enqueued.rows[0].items).toBe(ROWS);
      expect((await db.query(`select lost_items_waiting::int as n from regen.recovery_status`)).rows[0].n).toBe(0);
      await expect(db.query('select regen.set_auto_recover(null)')).rejects.toMatchObject({ code: 'RG003' });
    } finally {
      await db.query('select regen.set_auto_recover(true)');
    }
    worker = await inProcessWorker(workerEnv(db.url, server));
    await waitForClosedGap(db, 'articles', 60_000);
  });

  it('reconcile repairs a partial restore: vectors found stored, vectors of untracked rows, vectors under another tenant', async () => {
    await worker!.stop();
    worker = undefined;
    // what a restore of the items from one moment and the store from another leaves behind,
    // made here with the triggers off (as pg_restore --disable-triggers would)
    const client = await db.pool.connect();
    try {
      await client.query(`set session_replication_role = replica`);
      await client.query(`update regen._items set embedded_hash = null where row_id in ('1', '2', '3')`);
      await client.query(`update regen._embeddings set tenant = 'tenant_x' where row_id = '4'`);
      await client.query(`insert into regen._embeddings (version_id, source_id, row_id, chunk_no, tenant, content_hash, text_hash, embedding)
                          select version_id, source_id, '999', 1, tenant, content_hash, text_hash, embedding from regen._embeddings where row_id = '5'`);
    } finally {
      await client.query(`reset session_replication_role`);
      client.release();
    }
    const result = await db.query(`select source, version, unsettled::int, settled::int, orphans_removed::int, tenants_fixed::int from regen.reconcile()`);
    expect(result.rows).toEqual([{ source: 'articles', version: 'hash@1', unsettled: 0, settled: 3, orphans_removed: 1, tenants_fixed: 1 }]);
    expect(await gap(db, 'articles', 'hash@1')).toMatchObject({ expected: ROWS, current: ROWS, missing: 0 });
    expect((await db.query(`select tenant from regen._embeddings where row_id = '4'`)).rows[0].tenant).toBe('tenant_1');
    // the counters agree with a count of the items again
    const counted = await db.query(`select count(*)::int as n from regen._items where embedded_hash = content_hash`);
    expect(counted.rows[0].n).toBe(ROWS);
    await assertStoreConsistent(db);
    // and a second reconcile finds nothing to do
    const again = await db.query(`select unsettled::int + settled::int + orphans_removed::int + tenants_fixed::int as changes from regen.reconcile()`);
    expect(again.rows[0].changes).toBe(0);
  });

  it('VACUUM FULL gives the store a new file: the gap is judged against the store until the next reconcile', async () => {
    await db.query('vacuum full regen._embeddings');
    expect(await gapRow(db)).toMatchObject({ current: ROWS, store_verified: false });
    const done = await db.query(`select count(*)::int as n from regen.recover()`);
    expect(done.rows[0].n).toBe(0);   // reconciled, nothing lost, nothing to enqueue
    expect(await gapRow(db)).toMatchObject({ current: ROWS, store_verified: true });
    await waitFor('nothing queued', async () => (await gapRow(db)).queued === 0, 5_000);
  });

  it('pgregen status flags an unverified store and lost vectors; pgregen reconcile repairs and re-enqueues', async () => {
    const cli = (args: string[]) => run(process.execPath, [BIN, ...args], { env: { ...process.env, DATABASE_URL: db.url } });
    await db.query('vacuum full regen._embeddings');
    await db.query(`delete from regen._embeddings where row_id in ('1', '2')`);
    const status = await cli(['status']);
    expect(status.stdout).toMatch(/^store NOT VERIFIED: it changed behind pgregen's back/m);
    expect(status.stdout).toMatch(/^2 item\(s\) lost their vectors since \S+ and are not enqueued again: the worker re-enqueues them/m);
    const asJson = JSON.parse((await cli(['status', '--json'])).stdout);
    expect(asJson.recovery).toMatchObject({ storeVerified: false, autoRecover: true, lostItemsWaiting: 2 });
    const repaired = JSON.parse((await cli(['reconcile', '--json'])).stdout);
    expect(repaired).toEqual({
      reconciled: [{ source: 'articles', version: 'hash@1', unsettled: 0, settled: 0, orphansRemoved: 0, tenantsFixed: 0 }],
      enqueued: [{ source: 'articles', version: 'hash@1', items: 2, reconciled: false }],
    });
    const after = JSON.parse((await cli(['status', '--json'])).stdout);
    expect(after.recovery).toMatchObject({ storeVerified: true, lostItemsWaiting: 0 });
    expect((await gapRow(db)).queued).toBe(2);
  });
});
